"""The coding-cost model: LOCO-I prediction, error counts, costs against expectations."""

from __future__ import annotations

import numpy as np
import pytest

from aigdetect.coding_cost import (
    COUNTS_SHAPE,
    MAX_ERROR,
    SCALES,
    STATISTICS,
    CodingCostModel,
    error_counts,
    med_prediction,
)


def noisy_tiles(sigma: float, seed: int, count: int = 4) -> np.ndarray:
    """(count, 3, 64, 64) uint8 grey tiles: a smooth ramp plus Gaussian noise."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(60, 180, 64)[None, :] + np.zeros((64, 1))
    grey = np.clip(ramp + rng.normal(0, sigma, (count, 64, 64)), 0, 255).astype(np.uint8)
    return np.repeat(grey[:, None], 3, axis=1)


def test_med_predicts_edges_from_the_right_side_and_planes_through_the_rest() -> None:
    west, north = np.array([10.0, 10.0, 10.0]), np.array([50.0, 50.0, 20.0])
    north_west = np.array([60.0, 5.0, 12.0])
    # NW above both: an edge, take the smaller; below both: the larger; else W + N - NW
    np.testing.assert_array_equal(med_prediction(west, north, north_west), [10.0, 50.0, 18.0])


def test_counts_cover_every_predicted_pixel_at_every_scale() -> None:
    tiles = noisy_tiles(3.0, 0, count=2)
    counts = error_counts(tiles)
    assert counts.shape == COUNTS_SHAPE
    for scale, per_scale in zip(SCALES, counts, strict=True):
        side = 64 // scale
        assert per_scale.sum() == 2 * (side - 1) * (side - 2)


def test_a_flat_tile_predicts_perfectly() -> None:
    counts = error_counts(np.full((1, 3, 64, 64), 90, np.uint8))
    lowest_activity, zero_error = 0, MAX_ERROR
    assert counts[:, lowest_activity, zero_error].sum() == counts.sum()


def test_images_like_the_real_photos_cost_what_the_model_expects() -> None:
    """Fitted on images of one noise level, the model expects their cost: a gap near
    zero for fresh images of that level, below zero for smoother images (more
    predictable than real), above it for noisier ones."""
    model = CodingCostModel().fit(np.stack([error_counts(noisy_tiles(3.0, s)) for s in range(4)]))
    gap_at_full_scale = 2 * len(SCALES)
    gaps = {sigma: model.statistics(error_counts(noisy_tiles(sigma, 10)).ravel())[
        gap_at_full_scale] for sigma in (1.0, 3.0, 8.0)}
    assert abs(gaps[3.0]) < 0.02
    assert gaps[1.0] < -0.1 and gaps[8.0] > 0.1


def test_statistics_are_finite_for_rows_of_flattened_counts() -> None:
    model = CodingCostModel().fit(error_counts(noisy_tiles(3.0, 1))[None])
    rows = np.stack([error_counts(noisy_tiles(2.0, 5)).ravel(),
                     np.zeros(int(np.prod(COUNTS_SHAPE)))])  # no pixel at all: still finite
    statistics = model.statistics(rows)
    assert statistics.shape == (2, STATISTICS) and np.isfinite(statistics).all()
    assert statistics[1] == pytest.approx(np.zeros(STATISTICS))
