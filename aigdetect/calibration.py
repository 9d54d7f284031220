"""Calibration: from a detector's raw statistic to a threshold, a score and a verdict.

Every detector gives a raw statistic, higher = more AI-like (the one-class
detector's atypicality, the binary detector's logit, the residual detector's
log-odds). Its scores on held-out real photos (never trained on) set the
threshold at a stated false-positive rate, give any image a percentile among
real photos, and give the spread that turns a distance from the threshold into
a 0..1 score.

The verdict keeps the promise the threshold makes: ``ai`` above the threshold (at
most ``fpr`` of each kind of real photo scores that high), ``uncertain`` below it
down to the threshold at ``UNCERTAIN_FPR_FACTOR`` times ``fpr`` (so at most that
share of each kind is sent for a closer look), ``real`` below that. A band counted
in real photos, not in raw units, means the same on every detector however its
real scores are spread. Both hold per kind (group), while the percentile pools
every kind: an image unusual among camera originals but common among processed
web photos keeps a low percentile and the verdict ``real``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: "uncertain" reaches down to the threshold at this many times the calibrated FPR.
UNCERTAIN_FPR_FACTOR = 4.0


@dataclass
class Calibration:
    """Held-out real scores (sorted) and the threshold at ``fpr`` among them.

    ``groups`` are the same scores by kind of real photo (camera originals, processed
    web photos...): the threshold is then the strictest of the groups' ``1 - fpr``
    quantiles, so the promised rate holds on each kind, not only on their mix (where
    a few processed photos among many originals could be flagged far more often).
    """

    real_scores: np.ndarray
    fpr: float
    threshold: float
    groups: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def fit(cls, real_scores: np.ndarray, fpr: float,
            groups: Mapping[str, np.ndarray] | None = None) -> Calibration:
        """Threshold = the (1 - fpr) quantile of the real photos' raw scores (the
        highest of each group's, when grouped): at most ``fpr`` of them lie above."""
        scores = _finite_sorted(real_scores)
        calibration = cls(scores, fpr, float("nan"),
                          {name: _finite_sorted(g) for name, g in (groups or {}).items()})
        calibration.set_fpr(fpr)
        return calibration

    def set_fpr(self, fpr: float) -> None:
        """Move the threshold to another false-positive rate on the same photos."""
        if not 0.0 < fpr < 1.0:
            raise ValueError(f"fpr must be between 0 and 1, not {fpr}")
        self.fpr = float(fpr)
        self.threshold = self.threshold_at(fpr)

    def threshold_at(self, fpr: float) -> float:
        """The lowest raw score above which at most ``fpr`` of each group's photos lie.

        The empirical quantile, never interpolated (linear interpolation let 3 of 24
        through at 10 %)."""
        return max(float(np.quantile(scores, 1.0 - fpr, method="inverted_cdf"))
                   for scores in (self.real_scores, *self.groups.values()))

    @property
    def uncertain_floor(self) -> float:
        """Where ``uncertain`` starts (raw units): the threshold at
        ``UNCERTAIN_FPR_FACTOR`` x ``fpr`` (capped at half the photos)."""
        looser = min(UNCERTAIN_FPR_FACTOR * self.fpr, 0.5)
        return min(self.threshold_at(looser), self.threshold)

    @property
    def uncertain_width(self) -> float:
        """How far below the threshold (raw units) ``uncertain`` reaches."""
        return self.threshold - self.uncertain_floor

    def band(self, threshold: float | None = None) -> tuple[float, float]:
        """Raw scores above the first and up to the second give ``uncertain``. The
        calibrated band starts exactly at a calibration photo's score (rebuilt as
        threshold - width, rounding put it one ulp lower and let that photo, and its
        ties, into the band); with a threshold of the user's own, the band keeps its
        calibrated width."""
        if threshold is None:
            return self.uncertain_floor, self.threshold
        return threshold - self.uncertain_width, threshold

    @property
    def centre(self) -> float:
        return float(np.median(self.real_scores))

    @property
    def spread(self) -> float:
        """Robust scale of real-photo scores (IQR / 1.349 ~ one sigma)."""
        q1, q3 = np.quantile(self.real_scores, [0.25, 0.75])
        return float(max((q3 - q1) / 1.349, 1e-6))

    def standardise(self, raw: float) -> float:
        """Distance from the real photos' median in spreads: comparable across detectors."""
        return (raw - self.centre) / self.spread

    def margin(self, raw: float, threshold: float | None = None) -> float:
        """Distance above the threshold in spreads (positive = flagged)."""
        threshold = self.threshold if threshold is None else threshold
        return (raw - threshold) / self.spread

    def suspicion(self, raw: float, threshold: float | None = None) -> float:
        """0..1, higher = more likely AI, exactly 0.5 at the threshold."""
        return float(1.0 / (1.0 + np.exp(-np.clip(self.margin(raw, threshold), -500, 500))))

    def percentile(self, raw: float) -> float:
        """Share (%) of held-out real photos at least as suspicious as ``raw`` (each
        photo's scores under every calibrated processing counted): 0 means stranger
        than every real photo in calibration."""
        below = np.searchsorted(self.real_scores, raw, side="left")
        return float(100.0 * (len(self.real_scores) - below) / len(self.real_scores))

    def verdict(self, raw: float, threshold: float | None = None) -> str:
        """``ai`` above the threshold, ``uncertain`` in the band below it, else ``real``."""
        low, high = self.band(threshold)
        if raw > high:
            return "ai"
        return "uncertain" if raw > low else "real"

    def to_dict(self) -> dict[str, Any]:
        return {"fpr": self.fpr, "threshold": self.threshold,
                "real_scores": [float(s) for s in self.real_scores],
                "groups": {name: [float(s) for s in g] for name, g in self.groups.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        scores = _finite_sorted(data["real_scores"])
        groups = {str(name): _finite_sorted(g) for name, g in data.get("groups", {}).items()}
        fpr, threshold = float(data["fpr"]), float(data["threshold"])
        if not (0.0 < fpr < 1.0 and np.isfinite(threshold)):
            raise ValueError(f"fpr {fpr} and threshold {threshold} must be finite, fpr in (0, 1)")
        return cls(scores, fpr, threshold, groups)


def _finite_sorted(values: Any) -> np.ndarray:
    scores = np.sort(np.asarray(values, dtype=np.float64))
    if scores.ndim != 1 or len(scores) == 0 or not np.isfinite(scores).all():
        raise ValueError("calibration scores must be a non-empty list of finite numbers")
    return scores
