"""Calibration: threshold at a false-positive rate, score, verdict, percentile, round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aigdetect.calibration import UNCERTAIN_BAND, Calibration


@pytest.fixture
def calibration() -> Calibration:
    return Calibration.fit(np.random.default_rng(0).normal(size=400), fpr=0.05)


def test_threshold_flags_the_target_share_of_real_photos(calibration: Calibration) -> None:
    flagged = np.mean(calibration.real_scores > calibration.threshold)
    assert flagged == pytest.approx(0.05, abs=0.005)
    calibration.set_fpr(0.2)
    assert np.mean(calibration.real_scores > calibration.threshold) == pytest.approx(0.2, abs=0.005)


def test_score_is_half_at_threshold_and_rises_with_raw(calibration: Calibration) -> None:
    assert calibration.suspicion(calibration.threshold) == 0.5
    grid = np.linspace(-10, 10, 101)
    scores = [calibration.suspicion(x) for x in grid]
    assert np.all(np.diff(scores) >= 0) and scores[0] < 0.01 and scores[-1] > 0.99
    assert calibration.suspicion(3.0, threshold=3.0) == 0.5


def test_verdict_band(calibration: Calibration) -> None:
    t, s = calibration.threshold, calibration.spread
    assert calibration.verdict(t + 0.9 * UNCERTAIN_BAND * s) == "uncertain"
    assert calibration.verdict(t + 2 * UNCERTAIN_BAND * s) == "ai"
    assert calibration.verdict(t - 2 * UNCERTAIN_BAND * s) == "real"


def test_percentile_counts_real_photos_at_least_as_suspicious(calibration: Calibration) -> None:
    assert calibration.percentile(1e9) == 0.0
    assert calibration.percentile(-1e9) == 100.0
    assert calibration.percentile(calibration.centre) == pytest.approx(50.0, abs=0.5)
    grid = np.linspace(-5, 5, 51)
    assert np.all(np.diff([calibration.percentile(x) for x in grid]) <= 0)


def test_standardise_is_zero_at_median_one_per_spread(calibration: Calibration) -> None:
    assert calibration.standardise(calibration.centre) == 0.0
    assert calibration.standardise(calibration.centre + calibration.spread) == pytest.approx(1.0)


def test_round_trip_through_json(calibration: Calibration) -> None:
    loaded = Calibration.from_dict(json.loads(json.dumps(calibration.to_dict())))
    assert np.array_equal(loaded.real_scores, calibration.real_scores)
    assert loaded.threshold == calibration.threshold and loaded.fpr == calibration.fpr


@pytest.mark.parametrize("scores", [[], [float("nan")], [1.0, float("inf")]])
def test_rejects_empty_or_non_finite_scores(scores: list[float]) -> None:
    with pytest.raises(ValueError):
        Calibration.fit(np.array(scores), 0.05)
    with pytest.raises(ValueError):
        Calibration.from_dict({"fpr": 0.05, "threshold": 0.0, "real_scores": scores})


@pytest.mark.parametrize("fpr", [0.0, 1.0, float("nan")])
def test_rejects_impossible_fpr(fpr: float) -> None:
    with pytest.raises(ValueError):
        Calibration.fit(np.arange(10.0), fpr)


def test_grouped_threshold_holds_on_each_kind_of_real_photo() -> None:
    rng = np.random.default_rng(3)
    originals, processed = rng.normal(0, 1, 400), rng.normal(1.5, 1, 40)
    pooled = Calibration.fit(np.concatenate([originals, processed]), 0.05)
    grouped = Calibration.fit(np.concatenate([originals, processed]), 0.05,
                              {"photos": originals, "processed": processed})
    # pooled: the few processed photos are flagged far more often than promised
    assert np.mean(processed > pooled.threshold) > 0.2
    assert np.mean(processed > grouped.threshold) <= 0.05
    assert np.mean(originals > grouped.threshold) <= 0.05
    empirical = float(np.quantile(processed, 0.95, method="inverted_cdf"))
    assert grouped.threshold == pytest.approx(empirical)
    grouped.set_fpr(0.2)  # the groups are kept for a new rate too
    empirical = float(np.quantile(processed, 0.8, method="inverted_cdf"))
    assert grouped.threshold == pytest.approx(empirical)
    again = Calibration.from_dict(grouped.to_dict())
    assert again.threshold == grouped.threshold
    assert set(again.groups) == {"photos", "processed"}
    np.testing.assert_array_equal(again.groups["processed"], np.sort(processed))


@pytest.mark.parametrize("count", [19, 24, 31, 200])
def test_threshold_never_lets_more_than_fpr_of_the_photos_through(count: int) -> None:
    scores = np.random.default_rng(count).normal(0, 1, count)
    for fpr in (0.01, 0.05, 0.1, 0.2):
        calibration = Calibration.fit(scores, fpr)
        above = int(np.sum(scores > calibration.threshold))
        assert above <= fpr * count
        assert above >= fpr * count - 1  # and no stricter than the photos require
