"""The pretrained backbone: its shipped weights, the tile mosaics and the pooled features."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers_images import noise_array, smooth_array

from aigdetect import backbone
from aigdetect.backbone import (
    FEATURE_DIM,
    MAX_MOSAICS,
    MOSAIC_SIDE,
    BackboneError,
    EfficientNetLite0,
    backbone_features,
    features_of_sets,
    load_backbone,
    mosaics,
)


def numbered_tiles(count: int, size: int = 8) -> np.ndarray:
    """Tiles whose every pixel holds the tile's number (mod 256), to follow them."""
    return (np.arange(count, dtype=np.int64)[:, None, None, None] % 256
            * np.ones((1, 3, size, size), np.int64)).astype(np.uint8)


def tiles_in(mosaic: np.ndarray, size: int = 8) -> list[int]:
    """The tile numbers of one (3, side*size, side*size) mosaic, row by row."""
    return [int(mosaic[0, r * size, c * size])
            for r in range(mosaic.shape[1] // size) for c in range(mosaic.shape[2] // size)]


def tiles_of(pixels: np.ndarray, size: int = 64) -> np.ndarray:
    rows, cols = pixels.shape[0] // size, pixels.shape[1] // size
    return np.stack([pixels[r * size:(r + 1) * size, c * size:(c + 1) * size].transpose(2, 0, 1)
                     for r in range(rows) for c in range(cols)])


def test_sixteen_tiles_make_one_mosaic_in_their_order() -> None:
    tiles = numbered_tiles(16)
    laid = mosaics(tiles)
    assert laid.shape == (1, 3, MOSAIC_SIDE * 8, MOSAIC_SIDE * 8)
    assert tiles_in(laid[0]) == list(range(16))
    # each tile is copied whole, pixel for pixel
    np.testing.assert_array_equal(laid[0, :, 8:16, 16:24], tiles[6])


def test_a_small_tile_set_repeats_from_its_first_tile() -> None:
    assert tiles_in(mosaics(numbered_tiles(5))[0]) == [0, 1, 2, 3, 4] * 3 + [0]
    assert tiles_in(mosaics(numbered_tiles(1))[0]) == [0] * 16


def test_a_larger_set_loses_no_tile_up_to_the_mosaic_limit() -> None:
    laid = mosaics(numbered_tiles(40))
    assert len(laid) == 3
    seen = [n for mosaic in laid for n in tiles_in(mosaic)]
    assert set(seen) == set(range(40))


def test_a_huge_set_is_read_from_tiles_spread_over_all_of_it() -> None:
    count = MAX_MOSAICS * 16 * 3
    laid = mosaics(numbered_tiles(count))
    assert len(laid) == MAX_MOSAICS
    seen = [n for mosaic in laid for n in tiles_in(mosaic)]
    # numbers are mod 256: the first and the last tile (count - 1) are both read
    assert seen[0] == 0 and seen[-1] == (count - 1) % 256


def test_the_shipped_weights_are_what_the_network_runs() -> None:
    model = load_backbone()
    with np.load(backbone.weights_path(), allow_pickle=False) as stored:
        for key in ("_conv_stem.weight", "_blocks.15._project_conv.weight", "_bn1.running_var"):
            np.testing.assert_array_equal(model.state_dict()[key].numpy(),
                                          stored[key].astype(np.float32))
    assert not model.training


def test_features_have_a_fixed_length_and_tell_textures_apart() -> None:
    noise, smooth = (tiles_of(array(seed=1)) for array in (noise_array, smooth_array))
    features = {name: backbone_features(tiles) for name, tiles in
                [("noise", noise), ("smooth", smooth), ("noise again", noise.copy()),
                 ("one tile", noise[:1])]}
    for values in features.values():
        assert values.shape == (FEATURE_DIM,) and values.dtype == np.float32
        assert np.isfinite(values).all()
    np.testing.assert_array_equal(features["noise"], features["noise again"])
    # one tile of the same noise reads closer to the noise than the smooth image does
    apart = np.linalg.norm(features["noise"] - features["smooth"])
    assert apart > 2 * np.linalg.norm(features["noise"] - features["one tile"])


def test_sets_read_together_give_each_set_s_own_features(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Batching mosaics of several sets (across batch boundaries, sets of one and of
    several mosaics) changes no set's features beyond float rounding."""
    monkeypatch.setattr(backbone, "BATCH", 2)
    tiles = tiles_of(noise_array((256, 512), 3))  # 32 tiles: two mosaics
    sets = [tiles[:1], tiles, tiles[5:9], tiles[::-1]]
    together = features_of_sets(sets)
    assert together.shape == (len(sets), FEATURE_DIM) and together.dtype == np.float32
    for row, tile_set in zip(together, sets, strict=True):
        np.testing.assert_allclose(row, backbone_features(tile_set), rtol=1e-4, atol=1e-5)


def test_pretrained_features_differ_from_an_untrained_network_s() -> None:
    """The loaded weights change what the network says: a guard against a load that
    silently left the random initialisation in place."""
    tiles = tiles_of(noise_array(seed=2))
    images = np.ascontiguousarray(mosaics(tiles))
    with torch.no_grad():
        trained = load_backbone().feature_maps(torch.from_numpy(images).float() / 255)[-1]
        untrained = EfficientNetLite0().eval().feature_maps(
            torch.from_numpy(images).float() / 255)[-1]
    assert not torch.allclose(trained, untrained, atol=1e-3)


@pytest.fixture
def fresh_backbone_cache() -> Iterator[None]:
    load_backbone.cache_clear()
    yield
    load_backbone.cache_clear()


def test_missing_or_damaged_weights_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           fresh_backbone_cache: None) -> None:
    monkeypatch.setattr(backbone, "weights_path", lambda: tmp_path / "gone.npz")
    with pytest.raises(BackboneError, match="missing; reinstall"):
        load_backbone()
    np.savez(tmp_path / "other.npz", something=np.zeros(3))
    monkeypatch.setattr(backbone, "weights_path", lambda: tmp_path / "other.npz")
    with pytest.raises(BackboneError, match="not the backbone's weights"):
        load_backbone()
