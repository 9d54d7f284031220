"""Calibration: threshold at a false-positive rate, score, verdict, percentile, round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aigdetect.calibration import UNCERTAIN_FPR_FACTOR, Calibration


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


def test_verdict_ai_above_threshold_uncertain_in_band_below(calibration: Calibration) -> None:
    low, high = calibration.band()
    assert high == calibration.threshold and low < high
    assert calibration.verdict(high + 1e-9) == "ai"
    assert calibration.verdict(high) == "uncertain"
    assert calibration.verdict(low + 1e-9) == "uncertain"
    assert calibration.verdict(low) == "real"


@pytest.mark.parametrize("fpr", [0.01, 0.05, 0.1])
def test_verdict_shares_keep_the_calibrated_rates(fpr: float) -> None:
    """At most fpr of each group's real photos are called ai, at most
    UNCERTAIN_FPR_FACTOR x fpr ai or uncertain."""
    rng = np.random.default_rng(1)
    groups = {"camera": rng.normal(size=300), "processed": rng.normal(1.0, 2.0, size=60)}
    calibration = Calibration.fit(np.concatenate(list(groups.values())), fpr, groups)
    for scores in groups.values():
        verdicts = [calibration.verdict(x) for x in scores]
        assert verdicts.count("ai") <= fpr * len(scores)
        assert len(scores) - verdicts.count("real") <= UNCERTAIN_FPR_FACTOR * fpr * len(scores)
    strictest = [calibration.verdict(x) for x in groups["processed"]]
    assert strictest.count("uncertain") >= (UNCERTAIN_FPR_FACTOR - 1) * fpr * 60 - 2


def test_own_threshold_keeps_the_band_width(calibration: Calibration) -> None:
    low, high = calibration.band()
    assert calibration.band(3.0) == pytest.approx((3.0 - (high - low), 3.0))
    assert calibration.verdict(3.1, threshold=3.0) == "ai"
    assert calibration.verdict(3.0 - (high - low) / 2, threshold=3.0) == "uncertain"


def test_band_narrows_with_the_calibrated_rate(calibration: Calibration) -> None:
    wide = calibration.uncertain_width
    calibration.set_fpr(0.01)
    assert calibration.uncertain_width > 0
    assert calibration.band()[0] > calibration.real_scores[int(0.9 * len(calibration.real_scores))]
    calibration.set_fpr(0.5)
    assert calibration.uncertain_width == 0.0 and wide > 0


def test_percentile_counts_real_photos_at_least_as_suspicious(calibration: Calibration) -> None:
    assert calibration.percentile(1e9) == 0.0
    assert calibration.percentile(-1e9) == 100.0
    assert calibration.percentile(calibration.centre) == pytest.approx(50.0, abs=0.5)
    grid = np.linspace(-5, 5, 51)
    assert np.all(np.diff([calibration.percentile(x) for x in grid]) <= 0)
    # ties count as at least as suspicious
    assert Calibration.fit(np.array([0.0, 1.0, 1.0, 2.0]), 0.25).percentile(1.0) == 75.0


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


def test_the_band_starts_exactly_at_a_calibration_photo() -> None:
    """Rebuilt as threshold - width, the band's floor fell one ulp below the photo it
    stands on, letting that photo (and its ties) into ``uncertain``: 5 of 20 at 5 %."""
    for seed in range(300):
        rng = np.random.default_rng(seed)
        groups = {"a": rng.normal(size=20).round(1), "b": rng.normal(size=31).round(1)}
        calibration = Calibration.fit(np.concatenate(list(groups.values())), 0.05, groups)
        for scores in groups.values():
            reviewed = sum(calibration.verdict(x) != "real" for x in scores)
            assert reviewed <= UNCERTAIN_FPR_FACTOR * 0.05 * len(scores), seed
