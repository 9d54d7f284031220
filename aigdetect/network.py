"""The EXIF-pretext network: one small ``nn.Module`` per idea.

Data flow for one image given as a set of N native-resolution patches::

    patches (B, N, 3, P, P) uint8
      -> SRMResiduals      fixed high-pass filters: 90 noise-residual maps
      -> PatchEncoder      conv stack -> f1..f4 (f4: 32 x P/8 x P/8)
      -> CovariancePooling second-order statistics of f4 -> 528-d per patch (f5)
      -> PatchSetTransformer  attention over the unordered patch set
      -> mean over patches    one feature per image (528-d)
      -> ExifHeads            categorical logits + one ranking score per ordinal tag
                              (pretext), or a 2-way AI/real head (binary detector)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# CLIP's normalisation, as the reference applies it before the residual filters.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ExtractorConfig:
    """Shape of the extractor; saved with every checkpoint."""

    width: int = 32
    patch_size: int = 64
    transformer_depth: int = 2
    transformer_heads: int = 4
    transformer_head_dim: int = 16
    transformer_mlp_dim: int = 128

    @property
    def feature_dim(self) -> int:
        return self.width * (self.width + 1) // 2

    def to_dict(self) -> dict:
        return asdict(self)


def srm_kernels() -> np.ndarray:
    """The 30 SRM high-pass kernels of Fridrich & Kodovsky's rich model, 5x5 each.

    1st order (8 directions), 2nd order (4 lines), 3rd order (8 directions),
    SQUARE 3x3 and 5x5, EDGE 3x3 and 5x5 (4 rotations each). Each predicts a
    pixel from its neighbours, so the output is the residual where image content
    cancels and acquisition noise remains.
    """
    kernels: list[np.ndarray] = []
    centre = 2
    directions = [(-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1)]
    for dy, dx in directions:  # first order: x[n] - x[centre]
        k = np.zeros((5, 5))
        k[centre, centre], k[centre + dy, centre + dx] = -1, 1
        kernels.append(k)
    for dy, dx in directions[:4]:  # second order: (x[-d] - 2 x + x[d]) / 2
        k = np.zeros((5, 5))
        k[centre, centre] = -2
        k[centre + dy, centre + dx] = k[centre - dy, centre - dx] = 1
        kernels.append(k / 2)
    for dy, dx in directions:  # third order: (x[-d] - 3x + 3x[d] - x[2d]) / 3
        k = np.zeros((5, 5))
        for step, weight in zip((-1, 0, 1, 2), (1, -3, 3, -1), strict=True):
            k[centre + step * dy, centre + step * dx] = weight
        kernels.append(k / 3)
    square3 = np.array([[-1, 2, -1], [2, -4, 2], [-1, 2, -1]]) / 4
    square5 = np.array(
        [[-1, 2, -2, 2, -1], [2, -6, 8, -6, 2], [-2, 8, -12, 8, -2],
         [2, -6, 8, -6, 2], [-1, 2, -2, 2, -1]]
    ) / 12
    kernels.append(np.pad(square3, 1))
    kernels.append(square5)
    edge3 = np.pad(np.vstack([square3[:2], np.zeros((1, 3))]), 1)
    edge5 = np.vstack([square5[:3], np.zeros((2, 5))])
    for edge in (edge3, edge5):
        kernels.extend(np.rot90(edge, turns) for turns in range(4))
    return np.stack(kernels).astype(np.float32)


class SRMResiduals(nn.Module):
    """Fixed (non-trainable) SRM filters applied to each colour channel: 3 -> 90 maps."""

    def __init__(self) -> None:
        super().__init__()
        kernels = torch.from_numpy(srm_kernels())  # (30, 5, 5)
        weight = kernels[:, None].repeat(3, 1, 1, 1)  # (90, 1, 5, 5), grouped by channel
        self.register_buffer("weight", weight, persistent=False)
        self.register_buffer("mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)

    @property
    def out_channels(self) -> int:
        return self.weight.shape[0]

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        if patches.dtype == torch.uint8:
            patches = patches.float() / 255.0
        patches = (patches - self.mean) / self.std
        return F.conv2d(patches, self.weight, padding=2, groups=3)


def conv_norm_act(in_ch: int, out_ch: int, act: nn.Module | None = None) -> nn.Sequential:
    """3x3 conv, normalisation over (C, H, W), activation.

    ``GroupNorm(1, C)`` normalises over channels and space like the reference's
    ``LayerNorm([C, H, W])`` but with per-channel affine weights, so the network
    works for any patch size and carries far fewer parameters.
    """
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False),
        nn.GroupNorm(1, out_ch),
        act if act is not None else nn.ReLU(inplace=True),
    )


class PatchEncoder(nn.Module):
    """SRM residuals then a conv stack; returns the feature maps f1..f4.

    The intermediate maps are returned too because the binary detector regularises
    its own copy of this encoder towards the EXIF-trained one at every stage.
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.residuals = SRMResiduals()
        self.stage1 = nn.Sequential(
            conv_norm_act(self.residuals.out_channels, width, nn.Hardtanh(-5.0, 5.0)),
            *[conv_norm_act(width, width) for _ in range(4)],
            nn.AvgPool2d(3, stride=2, padding=1),
        )
        self.stage2 = nn.Sequential(
            *[conv_norm_act(width, width) for _ in range(2)], nn.AvgPool2d(3, stride=2, padding=1)
        )
        self.stage3 = nn.Sequential(
            *[conv_norm_act(width, width) for _ in range(2)], nn.AvgPool2d(3, stride=2, padding=1)
        )
        self.stage4 = nn.Sequential(*[conv_norm_act(width, width) for _ in range(2)])

    def forward(self, patches: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.stage1(self.residuals(patches))
        f2 = self.stage2(f1)
        f3 = self.stage3(f2)
        f4 = self.stage4(f3)
        return [f1, f2, f3, f4]


class CovariancePooling(nn.Module):
    """Second-order pooling: channel covariance over positions, its matrix square
    root by Newton-Schulz iterations, then the upper triangle as a vector.

    Covariances describe how noise residuals co-vary across channels: texture
    statistics that survive the loss of position. The square root tames their
    dynamic range. Runs in float32 even under mixed precision.
    """

    def __init__(self, channels: int, iterations: int = 5, eps: float = 1e-5) -> None:
        super().__init__()
        self.iterations = iterations
        self.eps = eps
        rows, cols = torch.triu_indices(channels, channels)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=maps.device.type, enabled=False):
            x = maps.float().flatten(2)  # (B, C, M)
            x = x - x.mean(dim=2, keepdim=True)
            cov = x @ x.transpose(1, 2) / x.shape[2]
            root = self._sqrtm(cov)
            return root[:, self.rows, self.cols]

    def _sqrtm(self, cov: torch.Tensor) -> torch.Tensor:
        channels = cov.shape[1]
        eye = torch.eye(channels, device=cov.device, dtype=cov.dtype).expand_as(cov)
        trace = cov.diagonal(dim1=1, dim2=2).sum(-1).view(-1, 1, 1) + self.eps
        y = cov / trace
        z = eye
        for _ in range(self.iterations):
            t = 0.5 * (3.0 * eye - z @ y)
            y, z = y @ t, t @ z
        return y * trace.sqrt()


class SetAttention(nn.Module):
    """Multi-head self-attention with a narrow inner width (heads x head_dim)."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.out = nn.Linear(heads * head_dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, count, _ = tokens.shape
        qkv = self.qkv(tokens).view(batch, count, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.out(attended.transpose(1, 2).reshape(batch, count, -1))


class SetTransformerBlock(nn.Module):
    """Pre-norm transformer block without positions: permutation-equivariant."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = SetAttention(dim, heads, head_dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = tokens + self.attention(self.norm1(tokens))
        return tokens + self.mlp(self.norm2(tokens))


class PatchSetTransformer(nn.Module):
    """Lets each patch vector see the others, then averages them into one feature.

    There is no positional embedding: the patches are an unordered ("scrambled")
    set, so semantic layout cannot leak in. We average the output tokens rather
    than take token 0 as the reference does, so the feature does not depend on
    which tile happens to come first.
    """

    def __init__(self, dim: int, depth: int, heads: int, head_dim: int, mlp_dim: int) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[SetTransformerBlock(dim, heads, head_dim, mlp_dim) for _ in range(depth)]
        )
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(tokens)).mean(dim=1)


class ExifExtractor(nn.Module):
    """Image feature from a set of native-resolution patches: (B, N, 3, P, P) -> (B, D)."""

    def __init__(self, config: ExtractorConfig | None = None) -> None:
        super().__init__()
        self.config = config or ExtractorConfig()
        c = self.config
        self.encoder = PatchEncoder(c.width)
        self.pooling = CovariancePooling(c.width)
        self.set_transformer = PatchSetTransformer(
            c.feature_dim, c.transformer_depth, c.transformer_heads,
            c.transformer_head_dim, c.transformer_mlp_dim,
        )

    @property
    def feature_dim(self) -> int:
        return self.config.feature_dim

    def patch_vectors(self, patches: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-patch 528-d vectors (f5) and the encoder maps f1..f4 of (B, N, 3, P, P)."""
        batch, count = patches.shape[:2]
        maps = self.encoder(patches.flatten(0, 1))
        vectors = self.pooling(maps[-1]).view(batch, count, -1)
        return vectors, maps

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        vectors, _ = self.patch_vectors(patches)
        return self.set_transformer(vectors)


class ExifHeads(nn.Module):
    """Pretext heads on the image feature: logits per categorical tag and one
    scalar score per ordinal tag (higher score = larger tag value)."""

    def __init__(self, dim: int, class_counts: dict[str, int], ordinal_tags: list[str]) -> None:
        super().__init__()
        self.categorical = nn.ModuleDict({t: nn.Linear(dim, n) for t, n in class_counts.items()})
        self.ranking = nn.ModuleDict({t: nn.Linear(dim, 1) for t in ordinal_tags})

    def forward(
        self, features: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        logits = {tag: head(features) for tag, head in self.categorical.items()}
        scores = {tag: head(features).squeeze(-1) for tag, head in self.ranking.items()}
        return logits, scores


class ExifPretextModel(nn.Module):
    """Extractor plus pretext heads: what ``aigdetect train`` optimises."""

    def __init__(
        self,
        config: ExtractorConfig,
        class_counts: dict[str, int],
        ordinal_tags: list[str],
    ) -> None:
        super().__init__()
        self.extractor = ExifExtractor(config)
        self.heads = ExifHeads(config.feature_dim, class_counts, ordinal_tags)

    def forward(self, patches: torch.Tensor):
        return self.heads(self.extractor(patches))


class BinaryClassifier(nn.Module):
    """The binary detector: an extractor of the same architecture plus a 2-way head.

    ``forward`` returns the logits (real, AI) and the stage features f1..f5 that
    feature distillation compares with the frozen EXIF-trained extractor.
    """

    def __init__(self, config: ExtractorConfig) -> None:
        super().__init__()
        self.extractor = ExifExtractor(config)
        self.head = nn.Linear(config.feature_dim, 2)

    def forward(self, patches: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = stage_features(self.extractor, patches)
        return self.head(self.extractor.set_transformer(features[-1])), features


def stage_features(extractor: ExifExtractor, patches: torch.Tensor) -> list[torch.Tensor]:
    """f1..f4 (encoder maps) and f5 (per-patch covariance vectors) of ``patches``."""
    vectors, maps = extractor.patch_vectors(patches)
    return [*maps, vectors]
