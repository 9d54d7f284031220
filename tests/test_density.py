"""The one-class density model (aigdetect.density.RealPhotoDensity) on synthetic features."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from aigdetect.calibration import Calibration
from aigdetect.density import AUTO_COMPONENTS, FORMAT, DensityError, RealPhotoDensity

N, DIM = 300, 40


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    """A background job shares the CPU: BLAS threads only fight over it."""
    with threadpool_limits(1):
        yield


def _gaussian(rows: int, seed: int) -> np.ndarray:
    """Correlated Gaussian features (fixed mixing matrix, draws from ``seed``)."""
    mixing = np.random.default_rng(0).normal(size=(DIM, DIM)) / math.sqrt(DIM)
    return np.random.default_rng(seed).normal(size=(rows, DIM)) @ mixing + 3.0


@pytest.fixture(scope="module")
def features() -> np.ndarray:
    """Training features: 300 x 40."""
    return _gaussian(N, seed=10)


@pytest.fixture(scope="module")
def held_out() -> np.ndarray:
    """Other draws of the same distribution, for calibration."""
    return _gaussian(N, seed=11)


@pytest.fixture(scope="module")
def fitted(features: np.ndarray, held_out: np.ndarray) -> RealPhotoDensity:
    density = RealPhotoDensity(components=2, pca_dim=8, seed=0).fit(features)
    return density.calibrate(held_out, fpr=0.05)


def test_fit_records_info(fitted: RealPhotoDensity) -> None:
    info = fitted.info
    assert info["n_train"] == N
    assert info["feature_dim"] == DIM
    assert info["pca_dim"] == 8
    assert info["components"] == 2 == fitted.mixture.n_components
    assert set(info["bic"]) == {"2"}
    assert 0.0 < info["explained_variance"] <= 1.0 + 1e-9


def test_auto_components_chosen_by_bic() -> None:
    rng = np.random.default_rng(5)
    # three well-separated clusters in 10 dimensions
    centres = rng.normal(scale=30.0, size=(3, 10))
    data = np.concatenate([c + rng.normal(size=(100, 10)) for c in centres])
    density = RealPhotoDensity(components="auto", pca_dim=4, seed=0).fit(data)
    bic = density.info["bic"]
    assert set(bic) == {str(k) for k in AUTO_COMPONENTS}
    best = min(bic, key=bic.get)
    assert density.info["components"] == int(best) == density.mixture.n_components
    assert density.info["components"] >= 2, bic  # one Gaussian cannot fit 3 clusters

    unimodal = RealPhotoDensity(components="auto", pca_dim=4, seed=0).fit(
        rng.normal(size=(300, 10)))
    ubic = unimodal.info["bic"]
    assert unimodal.info["components"] == int(min(ubic, key=ubic.get))


def test_auto_candidates_limited_by_sample_count() -> None:
    data = np.random.default_rng(2).normal(size=(5, 6))
    density = RealPhotoDensity(components="auto", pca_dim=3).fit(data)
    assert all(int(k) <= 5 for k in density.info["bic"])
    assert density.info["pca_dim"] <= 4  # at most n - 1 principal components


def test_calibrate_threshold_is_fpr_quantile_of_atypicality(
    fitted: RealPhotoDensity, held_out: np.ndarray
) -> None:
    scores = fitted.score_samples(held_out)
    assert fitted.fpr == 0.05
    assert np.array_equal(fitted.calibration_scores, np.sort(scores))
    assert fitted.typical_log_likelihood == pytest.approx(float(np.median(scores)))
    atypicality = fitted.atypicality(held_out)
    np.testing.assert_allclose(atypicality, np.abs(scores - np.median(scores)))
    above = float(np.mean(atypicality > fitted.threshold))
    assert above <= 0.05  # the empirical quantile: never more than the rate
    assert fitted.threshold == pytest.approx(
        float(np.quantile(atypicality, 0.95, method="inverted_cdf")))


def test_the_threshold_follows_the_shared_calibration_rule(
        features: np.ndarray, held_out: np.ndarray) -> None:
    """One rule for every detector: a folder made by fit-gmm alone gets the threshold
    that calibrate would give, and scan --fpr at the fitted rate moves nothing."""
    density = RealPhotoDensity(components=1, pca_dim=8).fit(features).calibrate(held_out, 0.02)
    atypicality = density.atypicality(held_out)
    assert density.threshold == Calibration.fit(atypicality, 0.02).threshold
    calibration = density.calibration
    thresholds = []
    for fpr in (0.02, 0.01, 0.1, 0.5):
        calibration.set_fpr(fpr)
        thresholds.append(calibration.threshold)
    assert thresholds[0] == density.threshold
    assert thresholds[1] > thresholds[2] > thresholds[3]  # more false alarms, lower bar


def test_atypicality_flags_both_far_and_too_likely(
    fitted: RealPhotoDensity, features: np.ndarray
) -> None:
    centre = features.mean(axis=0)
    direction = np.random.default_rng(3).normal(size=DIM)
    direction /= np.linalg.norm(direction)
    points = np.stack([centre + t * 10.0 * direction for t in range(5)])
    scores = fitted.score_samples(points)
    assert scores.shape == (5,)
    assert np.all(np.isfinite(scores))
    assert np.all(np.diff(scores) < 0), scores
    # far away: unlikely, flagged; the mode itself is likelier than real photos
    # ever are (their typical point lies off the mode in many dimensions): flagged too
    atypicality = fitted.atypicality(points)
    assert atypicality[-1] > fitted.threshold
    assert scores[0] > fitted.typical_log_likelihood and atypicality[0] > 0
    assert fitted.score_samples(centre).shape == (1,)  # a single vector is accepted too


def test_calibration_is_the_atypicality(fitted: RealPhotoDensity, held_out: np.ndarray) -> None:
    calibration = fitted.calibration
    assert calibration.threshold == fitted.threshold and calibration.fpr == fitted.fpr
    np.testing.assert_allclose(calibration.real_scores, np.sort(fitted.atypicality(held_out)))
    # a percentile among real photos: the typical photo is the least atypical
    assert calibration.percentile(0.0) == 100.0 and calibration.percentile(1e12) == 0.0


@pytest.mark.parametrize("covariance", ["full", "diag", "tied", "spherical"])
def test_save_load_round_trip(
    tmp_path: Path, features: np.ndarray, held_out: np.ndarray, covariance: str
) -> None:
    density = RealPhotoDensity(components=2, covariance_type=covariance, pca_dim=6, seed=1)
    density.fit(features).calibrate(held_out, 0.1)
    density.provenance = {"extractor_sha256": "ab" * 32, "patches": 8}
    path = tmp_path / "sub" / "density.npz"
    density.save(path)

    loaded = RealPhotoDensity.load(path)
    probe = np.concatenate([features[:20], held_out[:20] * 3.0])
    assert np.array_equal(loaded.score_samples(probe), density.score_samples(probe))
    assert loaded.threshold == density.threshold
    assert loaded.fpr == density.fpr
    assert np.array_equal(loaded.calibration_scores, density.calibration_scores)
    assert loaded.covariance_type == covariance
    assert loaded.components == 2
    assert loaded.pca_dim == 6
    assert loaded.info == json.loads(json.dumps(density.info))
    assert loaded.provenance == density.provenance
    assert loaded.calibration.spread == density.calibration.spread
    assert np.array_equal(loaded.score_samples(probe), density.score_samples(probe))
    # another rate still works after loading (calibration scores were saved)
    calibration = loaded.calibration
    calibration.set_fpr(0.5)
    assert calibration.threshold == pytest.approx(float(np.quantile(
        np.abs(density.calibration_scores - density.typical_log_likelihood), 0.5,
        method="inverted_cdf")))


def test_saved_file_has_no_pickle(tmp_path: Path, fitted: RealPhotoDensity) -> None:
    path = tmp_path / "density.npz"
    fitted.save(path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}  # raises if anything is an object
    assert all(array.dtype != object for array in arrays.values())
    header = json.loads(str(arrays["header"]))
    assert header["format"] == FORMAT
    assert header["threshold"] == fitted.threshold


def test_load_rejects_garbage(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file at all" * 10)
    with pytest.raises(DensityError):
        RealPhotoDensity.load(garbage)
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    with pytest.raises(DensityError):
        RealPhotoDensity.load(empty)
    with pytest.raises(DensityError, match="no such file"):
        RealPhotoDensity.load(tmp_path / "missing.npz")


def test_load_rejects_foreign_npz(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.ones(3), means=np.zeros((3, 2)))
    with pytest.raises(DensityError, match="not an aigdetect density"):
        RealPhotoDensity.load(foreign)
    other_format = tmp_path / "other.npz"
    np.savez(other_format, header=np.array(json.dumps({"format": "something.else"})))
    with pytest.raises(DensityError, match="not an aigdetect density"):
        RealPhotoDensity.load(other_format)
    not_json = tmp_path / "notjson.npz"
    np.savez(not_json, header=np.array("{not json"))
    with pytest.raises(DensityError):
        RealPhotoDensity.load(not_json)


@pytest.mark.parametrize("missing", ["covariance_type", "means"])
def test_load_incomplete_file_raises_density_error(
    tmp_path: Path, fitted: RealPhotoDensity, missing: str
) -> None:
    complete = tmp_path / "complete.npz"
    fitted.save(complete)
    with np.load(complete, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    header = json.loads(str(arrays["header"]))
    if missing in header:
        del header[missing]
        arrays["header"] = np.array(json.dumps(header))
    else:
        del arrays[missing]
    broken = tmp_path / "broken.npz"
    np.savez(broken, **arrays)
    with pytest.raises(DensityError):
        RealPhotoDensity.load(broken)


class _Planted:
    """An object whose unpickling makes a folder: what a crafted density file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.mkdir, (str(self.marker),)


def test_load_never_unpickles(tmp_path: Path) -> None:
    pickled, marker = tmp_path / "pickled.npz", tmp_path / "ran"
    np.savez(pickled, header=np.array([_Planted(marker)], dtype=object))
    with pytest.raises(DensityError):
        RealPhotoDensity.load(pickled)
    assert not marker.exists()  # refused before any object was built


def test_a_density_file_of_a_newer_format_is_refused(fitted: RealPhotoDensity,
                                                      tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    fitted.save(path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    header = json.loads(str(arrays["header"]))
    arrays["header"] = np.array(json.dumps({**header, "format_version": 99}))
    np.savez(path, **arrays)
    with pytest.raises(DensityError, match="newer"):
        RealPhotoDensity.load(path)


def test_misuse_raises_density_error(features: np.ndarray) -> None:
    with pytest.raises(DensityError):
        RealPhotoDensity().score_samples(features)
    with pytest.raises(DensityError):
        RealPhotoDensity().fit(features[:1])
    with pytest.raises(DensityError):
        RealPhotoDensity().fit(features[0])  # 1-D: not a set of vectors
    density = RealPhotoDensity(components=1, pca_dim=4).fit(features)
    assert math.isnan(density.threshold)  # not calibrated yet
    for bad in (0.0, 1.0, -0.1, 2.0):
        with pytest.raises(DensityError):
            density.calibrate(features, bad)
    with pytest.raises(DensityError):
        RealPhotoDensity().save(Path("never-written.npz"))
