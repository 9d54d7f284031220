"""``aigdetect fit-gmm``: fit a detector folder on small synthetic photos, scan with it,
reuse the feature cache, refuse mismatched or bad inputs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_images import invoke, noise_jpeg, tree_snapshot
from PIL import Image
from typer.testing import CliRunner

from aigdetect import weights as shipped_weights
from aigdetect.checkpoint import load_model, read_checkpoint, save_checkpoint
from aigdetect.cli import EXIT_CLEAN, EXIT_USAGE, app
from aigdetect.density import RealPhotoDensity
from aigdetect.detectors import DENSITY_FILE, EXTRACTOR_FILE
from aigdetect.patches import tile_count

EXTRACTOR = Path(shipped_weights.__file__).parent / EXTRACTOR_FILE
FIT_FAST = ["--patches", "4", "--components", "1", "--pca-dim", "4", "--workers", "0"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def photos(session_photo_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private copy of the 12 synthetic photos (4 cameras x 3) from conftest."""
    folder = tmp_path_factory.mktemp("fit") / "photos"
    shutil.copytree(session_photo_folder, folder)
    assert len(list(folder.rglob("*.jpg"))) == 12
    return folder


@pytest.fixture(scope="module")
def fitted(runner: CliRunner, photos: Path) -> dict[str, Any]:
    work = photos.parent
    cache = work / "cache"
    output = work / "detector"
    result = invoke(runner, ["fit-gmm", photos, "-o", output, "--extractor", EXTRACTOR,
                             *FIT_FAST, "--cache-dir", cache])
    return {"result": result, "output": output, "cache": cache, "work": work}


def test_fit_writes_detector_folder(fitted: dict[str, Any]) -> None:
    result, output = fitted["result"], fitted["output"]
    assert result.exit_code == EXIT_CLEAN, result.stderr
    assert result.stdout == ""  # everything for people goes to stderr
    assert "Fitted" in result.stderr
    assert {p.name for p in output.iterdir()} >= {EXTRACTOR_FILE, DENSITY_FILE}
    with np.load(output / DENSITY_FILE, allow_pickle=False) as data:  # no pickle inside
        header = json.loads(str(data["header"]))
    assert header["format"] == "aigdetect.density"

    density = RealPhotoDensity.load(output / DENSITY_FILE)
    assert density.info["components"] == 1
    assert density.info["pca_dim"] <= 4
    assert density.fpr == pytest.approx(0.02)
    provenance = density.provenance
    assert provenance["patches"] == 4
    assert provenance["extractor_sha256"] == sha256(output / EXTRACTOR_FILE)
    assert provenance["fit_photos"] + provenance["calibration_photos"] == 12
    assert provenance["unreadable"] == 0
    # calibration holds out whole cameras (3 photos each)
    assert provenance["calibration_photos"] > 0
    assert provenance["calibration_photos"] % 3 == 0
    assert len(density.calibration_scores) == provenance["calibration_photos"]
    assert density.info["n_train"] == provenance["fit_photos"]
    typical = np.median(density.calibration_scores)
    assert density.threshold == pytest.approx(float(np.quantile(
        np.abs(density.calibration_scores - typical), 0.98, method="inverted_cdf")))


def test_scan_with_fitted_detector(runner: CliRunner, fitted: dict[str, Any],
                                   photos: Path, tmp_path: Path) -> None:
    output = fitted["output"]
    # an image of 16 tiles is read at the 4 the detector was fitted with
    big = noise_jpeg(tmp_path / "big.jpg", size=(256, 256), seed=3)
    for extra in ([], ["--patches", "4"]):
        result = invoke(runner, ["scan", big, "--model", output, "-f", "json",
                                 "--workers", "0", *extra])
        assert json.loads(result.stdout)["results"][0]["patches"] == 4
    density = RealPhotoDensity.load(output / DENSITY_FILE)
    some = sorted(photos.rglob("*.jpg"))[:4]
    meta, _ = read_checkpoint(EXTRACTOR)
    with Image.open(some[0]) as image:
        width, height = image.size
    tiles = min(4, tile_count(height, width, meta.config.patch_size))
    for extra in ([], ["--patches", "4"]):
        result = invoke(runner, ["scan", *some, "--model", output, "-f", "json",
                                 "--workers", "0", *extra])
        document = json.loads(result.stdout)
        records = document["results"]
        assert len(records) == 4
        for record in records:
            assert record["verdict"] in {"ai", "real", "uncertain"}
            assert 0.0 <= record["score"] <= 1.0
            # the tile count the detector was fitted with (4) is the default
            assert record["patches"] == tiles
            # the raw score is the atypicality, the threshold likewise
            assert record["threshold"] == pytest.approx(density.threshold, abs=1e-4)
            assert record["detector"] == "oneclass"
            assert record["model"]["name"] == output.name
            assert record["model"]["extractor_sha256"] == sha256(output / EXTRACTOR_FILE)
            assert record["model"]["density_sha256"] == sha256(output / DENSITY_FILE)
        flagged = any(r["verdict"] == "ai" for r in records)
        assert result.exit_code == (1 if flagged else 0)


def test_second_fit_reuses_feature_cache(runner: CliRunner, fitted: dict[str, Any],
                                         photos: Path) -> None:
    cache = fitted["cache"]
    files = sorted(cache.glob("features-*.npz"))
    assert len(files) == 1
    with np.load(files[0], allow_pickle=False) as data:
        features = data["features"]
        assert len(data["paths"]) == 12
    assert features.ndim == 2 and features.shape[0] == 12
    stamp = files[0].stat().st_mtime_ns
    content = files[0].read_bytes()

    # other GMM settings, same photos, extractor and tiles: the features come from the cache
    second = fitted["work"] / "detector2"
    result = invoke(runner, ["fit-gmm", photos, "-o", second, "--extractor", EXTRACTOR,
                             "--patches", "4", "--components", "2", "--pca-dim", "3",
                             "--covariance", "diag", "--workers", "0", "--cache-dir", cache])
    assert result.exit_code == EXIT_CLEAN, result.stderr
    assert sorted(cache.glob("features-*.npz")) == files
    assert files[0].stat().st_mtime_ns == stamp
    assert files[0].read_bytes() == content
    refit = RealPhotoDensity.load(second / DENSITY_FILE)
    assert refit.info["components"] == 2
    assert refit.covariance_type == "diag"

    # other tile settings: another cache entry
    third = fitted["work"] / "detector3"
    result = invoke(runner, ["fit-gmm", photos, "-o", third, "--extractor", EXTRACTOR,
                             "--patches", "2", "--components", "1", "--pca-dim", "3",
                             "--workers", "0", "--cache-dir", cache])
    assert result.exit_code == EXIT_CLEAN, result.stderr
    assert len(list(cache.glob("features-*.npz"))) == 2


def test_no_cache_writes_nothing(runner: CliRunner, photos: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    result = invoke(runner, ["fit-gmm", photos, "-o", tmp_path / "det", "--extractor",
                             EXTRACTOR, *FIT_FAST, "--cache-dir", cache, "--no-cache"])
    assert result.exit_code == EXIT_CLEAN, result.stderr
    assert not cache.exists() or not any(cache.iterdir())


def test_mismatched_extractor_refused_by_scan(runner: CliRunner, fitted: dict[str, Any],
                                              photos: Path, tmp_path: Path) -> None:
    folder = tmp_path / "mismatched"
    shutil.copytree(fitted["output"], folder)
    _model, meta = load_model(EXTRACTOR)
    fresh = meta.build_model()  # freshly initialised weights, same architecture
    save_checkpoint(folder / EXTRACTOR_FILE, fresh, meta)
    assert sha256(folder / EXTRACTOR_FILE) != sha256(fitted["output"] / EXTRACTOR_FILE)
    result = invoke(runner, ["scan", next(photos.rglob("*.jpg")), "--model", folder,
                             "-f", "json", "--workers", "0"])
    assert result.exit_code == EXIT_USAGE
    assert result.stdout == ""
    message = " ".join(result.stderr.split())
    assert "error" in message
    assert "fitted on another extractor" in message


def test_detector_folder_missing_density(runner: CliRunner, fitted: dict[str, Any],
                                         tmp_path: Path, photos: Path) -> None:
    folder = tmp_path / "half"
    folder.mkdir()
    shutil.copy(fitted["output"] / EXTRACTOR_FILE, folder / EXTRACTOR_FILE)
    result = invoke(runner, ["scan", next(photos.rglob("*.jpg")), "--model", folder,
                             "--workers", "0"])
    assert result.exit_code == EXIT_USAGE
    assert DENSITY_FILE in " ".join(result.stderr.split())


@pytest.mark.parametrize("bad", [
    ["--fpr", "2"],
    ["--fpr", "0"],
    ["--components", "many"],
    ["--components", "0"],
    ["--covariance", "bogus"],
    ["--patches", "0"],
    ["--reg-covar", "-1"],
    ["--reg-covar", "nan"],
    ["--reg-covar", "inf"],
])
def test_bad_options_rejected(runner: CliRunner, photos: Path, tmp_path: Path,
                              bad: list[str]) -> None:
    """Refused before the network reads a photo (which can take hours), by option name."""
    output = tmp_path / "det"
    args = ["fit-gmm", photos, "-o", output, "--extractor", EXTRACTOR, "--workers", "0",
            "--cache-dir", tmp_path / "cache", *bad]
    result = invoke(runner, args)
    assert result.exit_code == EXIT_USAGE, result.stderr
    assert result.stdout == ""
    assert bad[0] in result.stderr and "GaussianMixture" not in result.stderr
    assert not (output / DENSITY_FILE).exists() and not (tmp_path / "cache").exists()


def test_a_calibration_share_that_leaves_nothing_to_fit_says_so(runner: CliRunner,
                                                                tmp_path: Path) -> None:
    for seed in range(5):  # no EXIF: each photo is a camera of its own
        noise_jpeg(tmp_path / "photos" / f"{seed}.jpg", seed=seed)
    result = invoke(runner, ["fit-gmm", tmp_path / "photos", "-o", tmp_path / "det",
                             "--extractor", EXTRACTOR, "--calibration-fraction", "0.9",
                             "--no-cache", *FIT_FAST])
    assert result.exit_code == EXIT_USAGE, result.stderr
    said = " ".join(result.stderr.split())
    assert "--calibration-fraction 0.9 holds out 4 of 5 photos" in said
    assert "lower it" in said


def test_folder_problems(runner: CliRunner, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    result = invoke(runner, ["fit-gmm", empty, "-o", tmp_path / "det", "--workers", "0",
                             "--cache-dir", tmp_path / "cache"])
    assert result.exit_code == EXIT_USAGE
    assert "no images" in result.stderr

    missing = invoke(runner, ["fit-gmm", tmp_path / "missing", "-o", tmp_path / "det"])
    assert missing.exit_code == EXIT_USAGE

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    few = tmp_path / "few"
    for i in range(2):
        noise_jpeg(few / f"{i}.jpg", size=(128, 128), seed=i)
    bad_extractor = invoke(runner, ["fit-gmm", few, "-o", tmp_path / "det", "--extractor",
                                    garbage, "--workers", "0", "--no-cache"])
    assert bad_extractor.exit_code == EXIT_USAGE
    assert "checkpoint" in bad_extractor.stderr

    too_few = invoke(runner, ["fit-gmm", few, "-o", tmp_path / "det", "--extractor", EXTRACTOR,
                              *FIT_FAST, "--no-cache"])
    assert too_few.exit_code == EXIT_USAGE
    assert "readable" in too_few.stderr
    assert not (tmp_path / "det" / DENSITY_FILE).exists()

    cache_inside = invoke(runner, ["fit-gmm", few, "-o", tmp_path / "det", "--cache-dir",
                                   few / "cache", *FIT_FAST])
    assert cache_inside.exit_code == EXIT_USAGE and "inside the input folder" in cache_inside.stderr
    assert sorted(p.name for p in few.iterdir()) == ["0.jpg", "1.jpg"]


def test_unreadable_photo_skipped(runner: CliRunner, photos: Path, tmp_path: Path) -> None:
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    (folder / "broken.jpg").write_bytes(b"")
    output = tmp_path / "det"
    result = invoke(runner, ["fit-gmm", folder, "-o", output, "--extractor", EXTRACTOR,
                             *FIT_FAST, "--no-cache"])
    assert result.exit_code == EXIT_CLEAN, result.stderr
    assert "broken.jpg" in result.stderr
    provenance = RealPhotoDensity.load(output / DENSITY_FILE).provenance
    assert provenance["unreadable"] == 1
    assert provenance["fit_photos"] + provenance["calibration_photos"] == 12


def test_truncated_cache_is_recomputed(runner: CliRunner, photos: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    args = ["fit-gmm", photos, "-o", tmp_path / "det", "--extractor", EXTRACTOR, *FIT_FAST,
            "--cache-dir", cache]
    assert invoke(runner, args).exit_code == EXIT_CLEAN
    (entry,) = cache.glob("features-*.npz")
    entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    result = runner.invoke(app, [str(a) for a in [*args, "--overwrite"]])
    assert not isinstance(result.exception, Exception), repr(result.exception)
    assert result.exit_code == EXIT_CLEAN


def test_cache_hit_from_other_directory_gives_same_detector(
    runner: CliRunner, photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    monkeypatch.chdir(photos.parent)  # fill the cache with a relative spelling
    first = invoke(runner, ["fit-gmm", photos.name, "-o", tmp_path / "relative", "--extractor",
                            EXTRACTOR, *FIT_FAST, "--cache-dir", cache])
    assert first.exit_code == EXIT_CLEAN, first.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    fresh = invoke(runner, ["fit-gmm", photos, "-o", tmp_path / "fresh", "--extractor",
                            EXTRACTOR, *FIT_FAST, "--no-cache"])
    cached = invoke(runner, ["fit-gmm", photos, "-o", tmp_path / "cached", "--extractor",
                             EXTRACTOR, *FIT_FAST, "--cache-dir", cache])
    assert fresh.exit_code == cached.exit_code == EXIT_CLEAN
    # paths are stored as typed, so another spelling is its own entry, never a stale hit
    assert len(list(cache.glob("features-*.npz"))) == 2
    expected = RealPhotoDensity.load(tmp_path / "fresh" / DENSITY_FILE)
    got = RealPhotoDensity.load(tmp_path / "cached" / DENSITY_FILE)
    assert np.allclose(got.calibration_scores, expected.calibration_scores)
    assert got.threshold == pytest.approx(expected.threshold)


def test_output_that_is_a_file_is_usage_error(runner: CliRunner, photos: Path,
                                              tmp_path: Path) -> None:
    output = tmp_path / "a-file"
    output.write_text("not a folder")
    result = runner.invoke(app, ["fit-gmm", str(photos), "-o", str(output), "--extractor",
                                 str(EXTRACTOR), *FIT_FAST, "--no-cache"])
    assert not isinstance(result.exception, Exception), repr(result.exception)
    assert result.exit_code == EXIT_USAGE
    assert "error" in result.stderr
    assert output.read_text() == "not a folder"


def test_existing_density_replaced_only_with_overwrite(runner: CliRunner, fitted: dict[str, Any],
                                                      photos: Path, tmp_path: Path) -> None:
    folder = tmp_path / "detector"
    shutil.copytree(fitted["output"], folder)
    before = (folder / DENSITY_FILE).read_bytes()
    args = ["fit-gmm", photos, "-o", folder, "--extractor", folder / EXTRACTOR_FILE,
            "--patches", "4", "--components", "2", "--pca-dim", "3", "--covariance", "diag",
            "--workers", "0", "--cache-dir", fitted["cache"]]
    refused = invoke(runner, args)
    assert refused.exit_code == EXIT_USAGE
    assert "already exists" in refused.stderr and "--overwrite" in refused.stderr
    assert (folder / DENSITY_FILE).read_bytes() == before
    # the shipped extractor would replace the folder's own copy: the hint says how to keep it
    shipped = invoke(runner, [*args[:5], EXTRACTOR, *args[6:]])
    assert shipped.exit_code == EXIT_USAGE
    assert f"--extractor {folder / EXTRACTOR_FILE}" in " ".join(shipped.stderr.split())
    # a hard link to the folder's extractor is that extractor: kept, not rewritten
    linked = tmp_path / "linked.pt"
    os.link(folder / EXTRACTOR_FILE, linked)
    inode = (folder / EXTRACTOR_FILE).stat().st_ino
    replaced = invoke(runner, [*args[:5], linked, *args[6:], "--overwrite"])
    assert replaced.exit_code == EXIT_CLEAN, replaced.stderr
    assert RealPhotoDensity.load(folder / DENSITY_FILE).info["components"] == 2
    assert (folder / EXTRACTOR_FILE).stat().st_ino == inode


@pytest.mark.parametrize(("command", "interrupted_call", "said"), [
    ("fit-gmm", "fit_detector", "nothing was written to"),
    ("fit-residual", "fit_residual", "nothing was written to"),
    ("calibrate", "calibrate_folder", "is as it was before calibrate ran"),
])
def test_ctrl_c_says_what_was_left(runner: CliRunner, photos: Path, fitted: dict[str, Any],
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   command: str, interrupted_call: str, said: str) -> None:
    """Ctrl-C exits 130 with one line saying what the run left, as scan and train do;
    the detector folder is as it was."""
    def stopped(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    folder = tmp_path / "detector"
    shutil.copytree(fitted["output"], folder)
    before = tree_snapshot(folder)
    monkeypatch.setattr(f"aigdetect.cli.fit.{interrupted_call}", stopped)
    args = {"fit-gmm": ["fit-gmm", photos, "-o", tmp_path / "new", "--extractor", EXTRACTOR,
                        "--no-cache", *FIT_FAST],
            "fit-residual": ["fit-residual", folder, "--real", photos / "Canon_EOS_5D",
                             "--fake", photos / "X-T2", "--workers", "0"],
            "calibrate": ["calibrate", folder, "--real", photos, "--workers", "0"]}[command]
    result = invoke(runner, args)
    assert result.exit_code == 130, result.stderr
    assert "interrupted: " in result.stderr and said in " ".join(result.stderr.split())
    assert tree_snapshot(folder) == before and not (tmp_path / "new").exists()
