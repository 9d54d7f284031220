"""Coding cost under a real-photo model: how predictable an image's pixels are,
against how predictable a real photo's pixels of the same local texture are.

The idea of zero-shot entropy detection (ZED; Cozzolino et al., ECCV 2024): a
model of real images predicts each pixel from its causal neighbours; a
generated image's pixels surprise it differently than a real photo's do. Here
the model is small and classical, so it fits on a CPU from a few hundred
photos: the luma's prediction error under the median edge detector of lossless
JPEG-LS (LOCO-I), histogrammed by a local-activity context, at 1x, 2x and 4x
averaging. Fitted on the real training photos, it gives each image its coding
cost (bits per pixel), the cost it expected (the entropy of its predictions) and
their gap, per scale and per context.

Opt-in (``fit-residual --coding-costs``), because the measurements disagree:

* as a zero-shot score the gap does not separate AI from real here (mean AUC
  0.52 on the selection protocol);
* as extra inputs of the residual detector, the selection protocol's mean AUC
  rose 0.873 -> 0.883 and 0.885 -> 0.893 (two augmentation draws; 0.871 -> 0.877
  with ``benchmarks/residual_selection.py``), and leave-one-generator-out over
  all six families (trained on every other family, many formats) 0.688 / 0.659 /
  0.688 -> 0.719 / 0.666 / 0.699 (as-is / matched / web);
* but the shipped model, trained on the few ``ship_ok`` generators (mostly WebP
  previews), fell on its unseen generators: 0.655 / 0.654 / 0.615 -> 0.608 /
  0.641 / 0.615 (paired bootstrap as-is -0.046, 95 % -0.062..-0.031), so it
  ships without them.

The same histograms without the real-photo model (per-context error magnitude
or entropy) lowered the selection's AUC (0.860-0.873): the reference is what helps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .residuals import block_mean, luma_planes

#: Averaging factors of the luma planes whose pixels are predicted.
SCALES = (1, 2, 4)
#: Upper edges of the local-activity contexts (sum of three neighbour gradients).
ACTIVITY_EDGES = np.array([1, 2, 3, 4, 6, 8, 11, 15, 20, 27, 36, 48, 64, 90, 128])
#: Prediction errors are clipped to -MAX_ERROR..MAX_ERROR.
MAX_ERROR = 32
CONTEXTS = len(ACTIVITY_EDGES) + 1
ERRORS = 2 * MAX_ERROR + 1
#: Shape of one tile set's error histograms: (scale, context, error).
COUNTS_SHAPE = (len(SCALES), CONTEXTS, ERRORS)
COUNTS_SIZE = int(np.prod(COUNTS_SHAPE))
#: Statistics per image: cost, expected cost and gap per scale, then the gap per
#: scale and context (its share of the bits per pixel).
STATISTICS = 3 * len(SCALES) + len(SCALES) * CONTEXTS
#: Pseudo-count of every (context, error) cell, so an unseen error costs finite bits.
_PRIOR = 0.5


def error_counts(tiles: np.ndarray) -> np.ndarray:
    """(scale, context, error) counts of the luma's prediction errors over an
    (N, 3, P, P) uint8 tile set, at each of :data:`SCALES`."""
    luma = luma_planes(tiles)
    return np.stack([_scale_counts(luma if factor == 1 else block_mean(luma, factor))
                     for factor in SCALES])


def _scale_counts(planes: np.ndarray) -> np.ndarray:
    """Counts of (context, error) over every pixel with a west, north-west, north and
    north-east neighbour."""
    x = np.round(planes)
    west, north_west = x[:, 1:, :-2], x[:, :-1, :-2]
    north, north_east = x[:, :-1, 1:-1], x[:, :-1, 2:]
    error = x[:, 1:, 1:-1] - med_prediction(west, north, north_west)
    activity = np.abs(west - north_west) + np.abs(north - north_west) + np.abs(north - north_east)
    cells = (np.digitize(activity, ACTIVITY_EDGES) * ERRORS
             + np.clip(error, -MAX_ERROR, MAX_ERROR).astype(np.int64) + MAX_ERROR)
    return np.bincount(cells.ravel(), minlength=CONTEXTS * ERRORS).reshape(CONTEXTS, ERRORS)


def med_prediction(west: np.ndarray, north: np.ndarray, north_west: np.ndarray) -> np.ndarray:
    """LOCO-I's median edge detector: the smaller neighbour above an edge, the larger
    below it, else the plane through the three neighbours."""
    high, low = np.maximum(west, north), np.minimum(west, north)
    return np.where(north_west >= high, low,
                    np.where(north_west <= low, high, west + north - north_west))


@dataclass
class CodingCostModel:
    """p(error | scale, context) of real photos; ``statistics`` scores images under it."""

    bits_: np.ndarray | None = None  # (scale, context, error): -log2 p
    entropy_: np.ndarray | None = None  # (scale, context): expected bits

    def fit(self, counts: np.ndarray) -> CodingCostModel:
        """Pool the (..., scale, context, error) counts of real photos."""
        pooled = counts.reshape(-1, *COUNTS_SHAPE).sum(axis=0) + _PRIOR
        probability = pooled / pooled.sum(axis=-1, keepdims=True)
        self.bits_ = -np.log2(probability)
        self.entropy_ = (probability * self.bits_).sum(axis=-1)
        return self

    def statistics(self, counts: np.ndarray) -> np.ndarray:
        """(..., :data:`STATISTICS`) per tile set: bits per pixel spent, expected and
        their gap at each scale, then each context's share of the gap."""
        counts = counts.reshape(*counts.shape[:-1], *COUNTS_SHAPE).astype(np.float64)
        per_context = counts.sum(axis=-1)
        spent = (counts * self.bits_).sum(axis=-1)
        expected = per_context * self.entropy_
        pixels = np.maximum(per_context.sum(axis=-1, keepdims=True), 1.0)
        cost, expectation = spent.sum(-1) / pixels[..., 0], expected.sum(-1) / pixels[..., 0]
        gaps = ((spent - expected) / pixels).reshape(*counts.shape[:-3], -1)
        return np.concatenate([cost, expectation, cost - expectation, gaps], axis=-1)
