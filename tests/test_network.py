"""The EXIF-pretext network, one module at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aigdetect.exif import CATEGORICAL_TAGS, ORDINAL_TAGS
from aigdetect.features import FeatureExtractor
from aigdetect.network import (
    CLIP_STD,
    CovariancePooling,
    ExifExtractor,
    ExifPretextModel,
    ExtractorConfig,
    PatchEncoder,
    PatchSetTransformer,
    SRMResiduals,
    srm_kernels,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def random_patches(batch: int, count: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, count, 3, size, size), dtype=torch.uint8,
                         generator=generator)


def test_srm_kernels_are_30_distinct_high_pass_filters():
    kernels = srm_kernels()
    assert kernels.shape == (30, 5, 5)
    assert kernels.dtype.name == "float32"
    sums = kernels.reshape(30, -1).sum(axis=1)
    assert abs(sums).max() < 1e-6  # high-pass: constant content cancels
    assert (abs(kernels).reshape(30, -1).max(axis=1) > 0).all()
    assert len({k.tobytes() for k in kernels}) == 30


def test_srm_residuals_of_a_constant_image_vanish():
    srm = SRMResiduals()
    assert srm.out_channels == 90
    constant = torch.full((2, 3, 24, 24), 128, dtype=torch.uint8)
    residuals = srm(constant)
    assert residuals.shape == (2, 90, 24, 24)
    assert residuals[:, :, 2:-2, 2:-2].abs().max() < 1e-5  # away from the zero padding
    noisy = srm(torch.randint(0, 256, (1, 3, 24, 24), dtype=torch.uint8))
    assert noisy[:, :, 2:-2, 2:-2].abs().mean() > 0.1


def test_srm_residuals_group_by_colour_channel():
    srm = SRMResiduals()
    base = torch.randint(0, 256, (1, 3, 20, 20), dtype=torch.uint8)
    changed = base.clone()
    changed[0, 1] = torch.randint(0, 256, (20, 20), dtype=torch.uint8)  # green only
    delta = (srm(changed) - srm(base)).abs().flatten(2).amax(dim=2)[0]
    assert delta[:30].max() == 0 and delta[60:].max() == 0
    assert (delta[30:60] > 0).all()


def test_srm_residuals_uint8_equals_unit_float():
    srm = SRMResiduals()
    patches = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(srm(patches), srm(patches.float() / 255.0))


def test_srm_filters_are_fixed():
    srm = SRMResiduals()
    assert list(srm.parameters()) == []
    assert len(srm.state_dict()) == 0  # rebuilt, never loaded from a file


def test_patch_encoder_feature_map_shapes():
    encoder = PatchEncoder(width=32)
    maps = encoder(random_patches(2, 1).flatten(0, 1))
    assert [tuple(m.shape) for m in maps] == [
        (2, 32, 32, 32), (2, 32, 16, 16), (2, 32, 8, 8), (2, 32, 8, 8),
    ]
    assert all(torch.isfinite(m).all() for m in maps)


def test_covariance_pooling_output_is_upper_triangle_of_a_symmetric_root():
    pooling = CovariancePooling(32)
    maps = torch.randn(3, 32, 8, 8)
    vector = pooling(maps)
    assert vector.shape == (3, 528)
    assert torch.isfinite(vector).all()
    # reassemble the symmetric matrix and compare with the unpooled root
    x = maps.flatten(2)
    x = x - x.mean(dim=2, keepdim=True)
    root = pooling._sqrtm(x @ x.transpose(1, 2) / x.shape[2])
    torch.testing.assert_close(vector, root[:, pooling.rows, pooling.cols])
    torch.testing.assert_close(root, root.transpose(1, 2), atol=1e-5, rtol=1e-4)


def spd_matrix(size: int, low: float, high: float, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(size, size, dtype=torch.float64, generator=generator))
    eigenvalues = torch.linspace(low, high, size, dtype=torch.float64)
    return ((q * eigenvalues) @ q.T).float()


def test_newton_schulz_square_root_squares_back():
    cov = spd_matrix(6, 1.0, 2.5)[None]
    root = CovariancePooling(6)._sqrtm(cov)
    error = torch.linalg.matrix_norm(root @ root - cov) / torch.linalg.matrix_norm(cov)
    assert float(error) < 1e-2
    # with enough iterations the same routine is accurate at the network's width
    cov32 = spd_matrix(32, 0.5, 3.0, seed=1)[None]
    root32 = CovariancePooling(32, iterations=20)._sqrtm(cov32)
    error32 = torch.linalg.matrix_norm(root32 @ root32 - cov32) / torch.linalg.matrix_norm(cov32)
    assert float(error32) < 1e-3


def test_set_transformer_is_permutation_invariant():
    transformer = PatchSetTransformer(dim=528, depth=2, heads=4, head_dim=16, mlp_dim=128).eval()
    tokens = torch.randn(2, 7, 528)
    order = torch.randperm(7)
    with torch.no_grad():
        original = transformer(tokens)
        shuffled = transformer(tokens[:, order])
    assert original.shape == (2, 528)
    torch.testing.assert_close(original, shuffled, atol=1e-5, rtol=1e-5)
    # but it does look at the content: changing one token changes the feature
    changed = tokens.clone()
    changed[:, 0] = torch.randn(2, 528)  # (a constant shift would vanish in LayerNorm)
    with torch.no_grad():
        assert (transformer(changed) - original).abs().max() > 1e-4


def test_extractor_feature_from_uint8_patches():
    extractor = ExifExtractor().eval()
    assert extractor.feature_dim == 528 == ExtractorConfig().feature_dim
    patches = random_patches(2, 3)
    with torch.no_grad():
        features = extractor(patches)
        shuffled = extractor(patches[:, torch.tensor([2, 0, 1])])
        alone = extractor(patches[:1])
    assert features.shape == (2, 528)
    assert features.dtype == torch.float32
    assert torch.isfinite(features).all()
    torch.testing.assert_close(features, shuffled, atol=1e-4, rtol=1e-4)  # patch order is moot
    torch.testing.assert_close(features[:1], alone, atol=1e-4, rtol=1e-4)  # images independent
    assert (features[0] - features[1]).abs().max() > 1e-4


def test_extractor_works_at_other_patch_sizes():
    extractor = ExifExtractor(ExtractorConfig(width=8, patch_size=32)).eval()
    with torch.no_grad():
        features = extractor(random_patches(1, 2, size=32))
    assert features.shape == (1, 8 * 9 // 2)


def test_pretext_model_head_shapes_and_gradients():
    counts = {tag: n for tag, n in zip(CATEGORICAL_TAGS, range(2, 10), strict=False)}
    model = ExifPretextModel(ExtractorConfig(), counts, list(ORDINAL_TAGS))
    logits, scores = model(random_patches(3, 2))
    assert set(logits) == set(counts)
    for tag, n in counts.items():
        assert logits[tag].shape == (3, n)
    assert set(scores) == set(ORDINAL_TAGS)
    for tag in ORDINAL_TAGS:
        assert scores[tag].shape == (3,)
    total = sum(v.sum() for v in logits.values()) + sum(v.sum() for v in scores.values())
    total.backward()
    first_conv = model.extractor.encoder.stage1[0][0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def test_config_round_trip():
    config = ExtractorConfig(width=16, patch_size=48)
    assert ExtractorConfig(**config.to_dict()) == config
    assert config.feature_dim == 136


def test_feature_extractor_reads_the_same_tile_set_once() -> None:
    """The one-class detector and the pretext heads share one extractor: a second call
    with the very same tile array returns the kept feature without a forward pass."""
    features = FeatureExtractor(ExifExtractor(ExtractorConfig(width=8, patch_size=32)),
                                torch.device("cpu"))
    passes = []
    run = features._patch_vectors
    features._patch_vectors = lambda tiles: passes.append(1) or run(tiles)
    tiles = np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    first = features(tiles)
    assert features(tiles) is first and len(passes) == 1
    again = features(tiles.copy())  # equal pixels, another array: computed again
    assert len(passes) == 2 and np.allclose(again, first)


def test_srm_filters_see_clip_normalised_pixels() -> None:
    """A ramp rising one grey level per column: the horizontal first-order filter (map 3
    of each colour's 30) reads one level in CLIP units, 1 / 255 / std of that colour."""
    ramp = torch.arange(64, dtype=torch.uint8).repeat(64, 1)
    maps = SRMResiduals()(ramp.expand(1, 3, 64, 64).contiguous())
    for colour in range(3):
        assert maps[0, 30 * colour + 3, 10, 10].item() == pytest.approx(
            1 / 255 / CLIP_STD[colour], rel=1e-4)
