"""The residual detector: its statistics, its classifier, and fit-residual -> calibrate ->
scan / explain through the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_images import (
    BENCHMARKS,
    assert_scored_by,
    invoke,
    load_benchmark,
    noise_array,
    noise_jpeg,
    smooth_png,
    tree_snapshot,
)
from rich.console import Console
from typer.testing import CliRunner

from aigdetect import residual_model
from aigdetect import weights as shipped_weights
from aigdetect.backbone import FEATURE_DIM, backbone_features
from aigdetect.binary_data import split_for_validation
from aigdetect.binary_training import present
from aigdetect.cli import EXIT_USAGE
from aigdetect.coding_cost import COUNTS_SIZE
from aigdetect.detectors import DENSITY_FILE, EXTRACTOR_FILE, RESIDUAL_FILE, DetectorFolder
from aigdetect.files import file_sha256
from aigdetect.labelled import AI, REAL, LabelledFile
from aigdetect.patches import recompressed_tiles
from aigdetect.residual_model import (
    FORMAT,
    LEGACY_INPUTS,
    MAX_POOLED_TILES,
    ResidualClassifier,
    ResidualFitConfig,
    ResidualInputs,
    ResidualModelError,
    fit_residual,
    group_weights,
)
from aigdetect.residuals import (
    block_energy_spread,
    channel_correlations,
    coarse_cooccurrences,
    log_power_spectrum,
    pair_histogram,
    quantise,
    residual_statistics,
    square_residual,
    upsampling_peaks,
)

TEACHER = Path(shipped_weights.__file__).parent / EXTRACTOR_FILE


def tiles_of(pixels: np.ndarray, size: int = 64) -> np.ndarray:
    """Non-overlapping (N, 3, size, size) tiles of an H x W x 3 array."""
    rows, cols = pixels.shape[0] // size, pixels.shape[1] // size
    return np.stack([pixels[r * size:(r + 1) * size, c * size:(c + 1) * size].transpose(2, 0, 1)
                     for r in range(rows) for c in range(cols)])


def test_statistics_have_a_fixed_length_and_stay_finite_on_flat_tiles() -> None:
    noisy = tiles_of(noise_array((256, 128), 0))
    flat = np.full((3, 3, 64, 64), 128, np.uint8)
    for tiles in (noisy, flat, noisy[:1]):
        vector = residual_statistics(tiles)
        assert vector.shape == (LEGACY_INPUTS.dim(64),) and vector.dtype == np.float32
        assert np.isfinite(vector).all()


def test_statistics_pool_the_tile_set_whatever_its_order_and_count() -> None:
    tiles = tiles_of(noise_array((256, 128), 1))
    vector = residual_statistics(tiles)
    np.testing.assert_allclose(residual_statistics(tiles[::-1]), vector, atol=1e-5)
    np.testing.assert_allclose(residual_statistics(np.concatenate([tiles, tiles])), vector,
                               atol=1e-5)


def test_statistics_ignore_brightness() -> None:
    """High-pass residuals cancel content: a uniform brightness shift changes nothing."""
    pixels = np.random.default_rng(2).integers(40, 200, (128, 128, 3)).astype(np.uint8)
    np.testing.assert_allclose(residual_statistics(tiles_of(pixels + 30)),
                               residual_statistics(tiles_of(pixels)), atol=1e-4)


def test_coarse_cooccurrences_see_the_image_before_a_2x_enlargement() -> None:
    """After 2x2 averaging, a nearest-neighbour 2x enlargement is undone: the coarse
    histograms at factor 2 are the pixel-level first-order ones of the original."""
    small = np.random.default_rng(6).normal(128, 3, (2, 32, 32))
    enlarged = small.repeat(2, axis=1).repeat(2, axis=2)
    expected = []
    for axis in (2, 1):
        for step in (1, 2):
            histogram = pair_histogram(quantise(np.diff(small, axis=axis), step), axis)
            expected.append(np.sqrt(histogram / histogram.sum()))
    factor_two = coarse_cooccurrences(enlarged)[:sum(len(h) for h in expected)]
    np.testing.assert_allclose(factor_two, np.concatenate(expected), atol=1e-12)


def test_block_energy_spread_tells_a_noise_floor_from_clean_flat_regions() -> None:
    """Noise everywhere puts every 8x8 block near the median block (the middle bins);
    a half-clean plane puts half its blocks far below it (the lowest bin)."""
    rng = np.random.default_rng(7)
    everywhere = rng.normal(0, 4, (2, 64, 64))
    half_clean = everywhere.copy()
    half_clean[:, :, :32] *= 0.01
    lowest_bin = 0
    floor, clean = block_energy_spread(everywhere), block_energy_spread(half_clean)
    assert floor[lowest_bin] == 0 and clean[lowest_bin] ** 2 == pytest.approx(0.5)
    assert clean[8] < floor[8] - 5  # the 5th percentile of log energy: the clean blocks


def test_upsampling_marks_the_period_two_frequencies() -> None:
    """Nearest-neighbour x2 upsampling cancels the residual's power at half the
    sampling rate (pairs of equal pixels), far below white noise's."""
    noise = np.random.default_rng(3).normal(0, 20, (4, 32, 32))
    upsampled = noise.repeat(2, axis=1).repeat(2, axis=2)
    white = np.random.default_rng(4).normal(0, 20, (4, 64, 64))
    horizontal_vertical = slice(9, 11)  # period 2 px, along rows and along columns
    gap = (upsampling_peaks(log_power_spectrum(square_residual(white)))[horizontal_vertical]
           - upsampling_peaks(log_power_spectrum(square_residual(upsampled)))[
               horizontal_vertical])
    assert (gap > 5.0).all()


def test_group_weights_balance_classes_and_shrink_big_groups() -> None:
    labels = np.array([REAL] * 10 + [AI] * 100 + [AI] * 4)
    groups = np.array(["photos"] * 10 + ["big"] * 100 + ["small"] * 4)
    weights = group_weights(labels, groups)
    assert weights[labels == REAL].sum() == pytest.approx(weights[labels == AI].sum())
    big, small = weights[groups == "big"].sum(), weights[groups == "small"].sum()
    assert big / small == pytest.approx(np.sqrt(100 / 4))


@pytest.mark.parametrize("inputs", [LEGACY_INPUTS, ResidualInputs(90, coding_costs=False),
                                    ResidualInputs(90, coding_costs=True),
                                    ResidualInputs(90, pretrained_features=True)])
def test_classifier_learns_saves_and_loads(tmp_path: Path, inputs: ResidualInputs) -> None:
    rng = np.random.default_rng(5)
    shift = np.array([2.0, 0, 0, 0, 0, 0])
    features = np.vstack([rng.normal(0, 1, (60, 6)), rng.normal(0, 1, (60, 6)) + shift])
    features[:, 5] = 3.0  # a constant column must not break the standardisation
    if inputs.coding_costs:  # prediction-error counts follow the statistics
        features = np.hstack([features, rng.poisson(3.0, (120, COUNTS_SIZE))])
    labels = np.array([REAL] * 60 + [AI] * 60)
    model = ResidualClassifier(regularisation=1.0, inputs=inputs).fit(features, labels)
    scores = model.decision_function(features)
    assert scores[labels == AI].mean() > scores[labels == REAL].mean() + 1
    model.provenance = {"note": "test"}
    model.save(tmp_path / "residual.npz")
    loaded = ResidualClassifier.load(tmp_path / "residual.npz")
    np.testing.assert_allclose(loaded.decision_function(features), scores)
    assert loaded.provenance == {"note": "test"} and loaded.input_dim == features.shape[1]
    assert loaded.inputs == inputs
    # the lowest format that holds the inputs: tiles read as decoded, without coding
    # costs, stay format 1, which older aigdetects read; pretrained features need 3, which
    # aigdetects that cannot compute them refuse as "newer"
    with np.load(tmp_path / "residual.npz") as stored:
        version = json.loads(str(stored["header"]))["format_version"]
    expected = 3 if inputs.pretrained_features else 1 if inputs == LEGACY_INPUTS else 2
    assert version == expected


@pytest.mark.parametrize("inputs", [{"recompress_quality": "90"},
                                    {"recompress_quality": 0, "coding_costs": False},
                                    {"coding_costs": "yes"}, {"pretrained_features": 1},
                                    {"unknown": 1}])
def test_a_residual_file_that_says_nonsense_about_its_inputs_is_refused(
        tmp_path: Path, inputs: dict[str, Any]) -> None:
    header = {"format": "aigdetect.residual-detector", "format_version": 2, "inputs": inputs,
              "regularisation": 0.03, "intercept": 0.0, "provenance": {}}
    np.savez(tmp_path / "odd.npz", header=np.array(json.dumps(header)), mean=np.zeros(3),
             scale=np.ones(3), coef=np.zeros(3))
    with pytest.raises(ResidualModelError, match="not a residual detector file"):
        ResidualClassifier.load(tmp_path / "odd.npz")


def test_a_residual_file_with_misshapen_coding_tables_is_refused(tmp_path: Path) -> None:
    header = {"format": "aigdetect.residual-detector", "format_version": 2,
              "inputs": {"recompress_quality": 90, "coding_costs": True},
              "regularisation": 0.03, "intercept": 0.0, "provenance": {}}
    np.savez(tmp_path / "odd.npz", header=np.array(json.dumps(header)), mean=np.zeros(3),
             scale=np.ones(3), coef=np.zeros(3), coding_bits=np.zeros((2, 2)),
             coding_entropy=np.zeros(2))
    with pytest.raises(ResidualModelError, match="wrong shape"):
        ResidualClassifier.load(tmp_path / "odd.npz")


def test_recompression_makes_the_last_storage_matter_less() -> None:
    """The same tiles, as decoded from a lossless file or after a JPEG q90 round trip:
    re-encoded at q90 first, their statistics differ far less than as decoded."""
    tiles = tiles_of(noise_array((256, 256), 9))
    stored_as_jpeg = recompressed_tiles(tiles, 90)
    for_reading = {read: np.linalg.norm(read(tiles) - read(stored_as_jpeg))
                   for read in (ResidualInputs(None), ResidualInputs(90))}
    assert for_reading[ResidualInputs(90)] < 0.5 * for_reading[ResidualInputs(None)]


def test_pretrained_features_follow_the_statistics_of_the_same_re_encoded_tiles() -> None:
    tiles = tiles_of(noise_array((256, 256), 4))
    inputs = ResidualInputs(90, pretrained_features=True)
    row = inputs(tiles)
    statistics = ResidualInputs(90)(tiles)
    assert len(row) == inputs.dim(64) == len(statistics) + FEATURE_DIM
    np.testing.assert_array_equal(row[:len(statistics)], statistics)
    np.testing.assert_allclose(row[len(statistics):],
                               backbone_features(recompressed_tiles(tiles, 90)), rtol=1e-6)


@pytest.mark.parametrize("inputs", [ResidualInputs(90, pretrained_features=True),
                                    ResidualInputs(None, coding_costs=True)])
def test_each_tile_reads_every_tile_alone(inputs: ResidualInputs) -> None:
    """The heat map's rows: each tile as if it were the whole set, in one batched call."""
    tiles = tiles_of(noise_array((128, 192), 5))
    each = inputs.each_tile(tiles)
    assert each.shape == (len(tiles), inputs.dim(64))
    np.testing.assert_allclose(each, np.stack([inputs(tiles[i:i + 1])
                                               for i in range(len(tiles))]),
                               rtol=1e-4, atol=1e-5)


def test_classifier_refuses_what_is_not_its_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "other.npz", header=np.array("{}"))
    (tmp_path / "text.npz").write_text("not an archive")
    np.savez(tmp_path / "objects.npz", header=np.array([{"a": 1}], dtype=object))
    for name in ("other.npz", "text.npz", "objects.npz", "missing.npz"):
        with pytest.raises(ResidualModelError):
            ResidualClassifier.load(tmp_path / name)
    with pytest.raises(ResidualModelError, match="not fitted"):
        ResidualClassifier().decision_function(np.zeros((1, 3)))


class _Planted:
    """An object whose unpickling makes a folder: what a crafted model file could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.mkdir, (str(self.marker),)


def test_loading_a_model_file_never_unpickles(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    header = {"format": FORMAT, "format_version": 1}  # a header that lets it read on
    np.savez(tmp_path / "planted.npz", header=np.array(json.dumps(header)),
             mean=np.array([_Planted(marker)], dtype=object))
    with pytest.raises(ResidualModelError):
        ResidualClassifier.load(tmp_path / "planted.npz")
    assert not marker.exists()


def test_a_model_file_of_a_newer_format_is_refused(tmp_path: Path) -> None:
    header = {"format": FORMAT, "format_version": 99}
    np.savez(tmp_path / "newer.npz", header=np.array(json.dumps(header)))
    with pytest.raises(ResidualModelError, match="newer aigdetect"):
        ResidualClassifier.load(tmp_path / "newer.npz")


def test_a_huge_tile_set_is_pooled_from_an_evenly_spread_share() -> None:
    """'--patches all' on a large photo: the statistics pool MAX_POOLED_TILES tiles
    spread over the whole set (first and last included), not all 20,000 (12 GB)."""
    tiles = np.random.default_rng(5).integers(0, 256, (MAX_POOLED_TILES + 300, 3, 16, 16),
                                                dtype=np.uint8)
    spread = np.linspace(0, len(tiles) - 1, MAX_POOLED_TILES).round().astype(int)
    assert spread[0] == 0 and spread[-1] == len(tiles) - 1
    inputs = ResidualInputs(recompress_quality=None)
    np.testing.assert_array_equal(inputs(tiles), residual_statistics(tiles[spread]))
    few = tiles[:40]
    np.testing.assert_array_equal(inputs(few), residual_statistics(few))  # all of them


def test_channel_correlations_name_their_pairs() -> None:
    """R-G, G-B, R-B: with blue a copy of red and green independent, only R-B is 1."""
    rng = np.random.default_rng(0)
    red, green = rng.normal(128, 30, (2, 4, 64, 64))
    pixels = np.stack([red, green, red], axis=1)
    np.testing.assert_allclose(channel_correlations(pixels), [0, 0, 1], atol=0.1)


# ---------------------------------------------------------------------------
# end to end through the CLI
# ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def folder(runner: CliRunner, session_photo_folder: Path,
           tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """fit-gmm, fit-residual and calibrate (with held-out AI images) on small images."""
    work = tmp_path_factory.mktemp("residual")
    fake, held_real, held_fake = work / "fake", work / "held_real", work / "held_fake"
    for i in range(8):
        smooth_png(fake / f"f{i}.png", seed=300 + i)
    for i in range(24):
        noise_jpeg(held_real / f"h{i}.jpg", seed=500 + i)
    for i in range(12):
        smooth_png(held_fake / f"a{i}.png", seed=700 + i)
    detector = work / "detector"
    fit = invoke(runner, ["fit-gmm", session_photo_folder, "-o", detector, "--extractor",
                          TEACHER, "--patches", "4", "--components", "1", "--pca-dim", "4",
                          "--workers", "0", "--no-cache"])
    assert fit.exit_code == 0, fit.stderr
    residual = invoke(runner, ["fit-residual", detector, "--real", session_photo_folder,
                               "--fake", fake, "--val-fraction", "0.25", "--workers", "0"])
    calibrate = invoke(runner, ["calibrate", detector, "--real", held_real, "--fake",
                                held_fake, "--fpr", "0.1", "--workers", "0"])
    return {"residual": residual, "calibrate": calibrate, "folder": detector, "fake": fake,
            "real": session_photo_folder, "work": work}


def test_fit_residual_writes_a_model_with_its_provenance(folder: dict[str, Any]) -> None:
    result = folder["residual"]
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert "validation AUC" in result.stderr
    model = ResidualClassifier.load(folder["folder"] / RESIDUAL_FILE)
    provenance = model.provenance
    assert provenance["config"]["variants"] == 2
    assert sum(provenance["groups"].values()) == provenance["train_images"]
    assert provenance["validation"]["images"] > 0
    # the files it was fitted on are recorded, as plain digests: the training share only
    fitted_on = model.trained_on()
    assert len(fitted_on) == provenance["train_images"]
    inputs = {file_sha256(f) for f in [*folder["real"].rglob("*"), *folder["fake"].iterdir()]
              if f.is_file()}
    assert fitted_on < inputs


def test_calibrate_refuses_images_the_residual_detector_was_fitted_on(
    runner: CliRunner, folder: dict[str, Any], tmp_path: Path
) -> None:
    """Thresholds set on training images promise fewer false alarms than new photos get."""
    copy = tmp_path / "detector"
    shutil.copytree(folder["folder"], copy)
    before = tree_snapshot(copy)
    result = invoke(runner, ["calibrate", copy, "--real", folder["work"] / "held_real",
                             "--real", folder["real"], "--workers", "0"])
    assert result.exit_code == EXIT_USAGE
    assert "were fitted on by the residual detector" in " ".join(result.stderr.split())
    assert tree_snapshot(copy) == before


def test_evaluate_warns_when_it_measures_training_images(runner: CliRunner,
                                                         folder: dict[str, Any]) -> None:
    result = invoke(runner, ["evaluate", "--model", folder["folder"], "--real", folder["real"],
                             "--fake", folder["fake"], "-f", "json", "-q", "--workers", "0",
                             "--detector", "residual"])
    assert result.exit_code == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert "were fitted on by the residual detector" in said and "flatter it" in said
    held_out = invoke(runner, ["evaluate", "--model", folder["folder"], "--real",
                               folder["work"] / "held_real", "--fake", folder["work"] /
                               "held_fake", "-f", "json", "-q", "--workers", "0"])
    assert held_out.exit_code == 0 and "fitted on" not in held_out.stderr


def test_a_residual_file_without_a_training_record_checks_nothing(tmp_path: Path) -> None:
    """Files written before the record existed (the shipped one of 0.1.0) still load."""
    features = np.random.default_rng(0).normal(size=(20, 3))
    labels = np.array([REAL, AI] * 10)
    ResidualClassifier(inputs=LEGACY_INPUTS).fit(features, labels).save(tmp_path / "r.npz")
    assert ResidualClassifier.load(tmp_path / "r.npz").trained_on() == set()


def test_calibrate_weights_every_component(folder: dict[str, Any]) -> None:
    result = folder["calibrate"]
    assert result.exit_code == 0, result.stderr
    # 24 photos at 10 %: the threshold rests on about 2 of them, and the user is told
    said = " ".join(result.stderr.split())  # rich wraps long lines
    assert "rests on about 2 of them" in said and "at least 100 per --real folder" in said
    stored = json.loads((folder["folder"] / "calibration.json").read_text())
    assert set(stored["detectors"]) == {"oneclass", "residual", "fused"}
    assert set(stored["fusion_weights"]) == {"oneclass", "residual"}
    assert "residual_sha256" in stored["weights"]
    assert DetectorFolder.open(folder["folder"]).available == ["oneclass", "residual", "fused"]


@pytest.mark.parametrize("detector", ["residual", "fused"])
def test_scan_with_the_residual_detector(runner: CliRunner, folder: dict[str, Any],
                                         detector: str) -> None:
    images = [folder["fake"] / "f0.png", next(folder["real"].rglob("*.jpg"))]
    result = invoke(runner, ["scan", *images, "--model", folder["folder"], "--detector",
                             detector, "-f", "json", "-q", "--workers", "0"])
    assert result.exit_code in (0, 1), result.stderr
    records = json.loads(result.stdout)["results"]
    expected = {"residual": {"residual"}, "fused": {"oneclass", "residual"}}[detector]
    for record in records:
        assert record["detector"] == detector and set(record["components"]) == expected
        assert (record["raw_score"] > record["threshold"]) == (record["score"] > 0.5)
        assert "residual_sha256" in record["model"]
        assert_scored_by(record, DetectorFolder.open(folder["folder"]))
    csv_out = invoke(runner, ["scan", *images, "--model", folder["folder"], "--detector",
                              detector, "-f", "csv", "-q", "--workers", "0"])
    header, *rows = csv_out.stdout.splitlines()
    column = header.split(",").index("residual_score")
    assert all(row.split(",")[column] for row in rows)


def test_explain_maps_the_residual_detector_per_tile(runner: CliRunner, folder: dict[str, Any],
                                                     tmp_path: Path) -> None:
    result = invoke(runner, ["explain", folder["fake"] / "f1.png", "--model", folder["folder"],
                             "-o", tmp_path / "out", "-f", "json", "-q"])
    assert result.exit_code in (0, 1), result.stderr
    heatmap = json.loads(result.stdout)["images"][0]["heatmap"]
    assert "residual" in heatmap["meanings"]
    assert all("residual_logit" in tile for tile in heatmap["tiles"])


def test_a_residual_model_added_after_calibration_waits_for_it(
    runner: CliRunner, folder: dict[str, Any], tmp_path: Path
) -> None:
    """Until 'calibrate' runs again, the new component has no threshold: the folder keeps
    offering what was calibrated and says how to add the rest."""
    copy = tmp_path / "copy"
    shutil.copytree(folder["folder"], copy)
    (copy / RESIDUAL_FILE).unlink()
    stored = json.loads((copy / "calibration.json").read_text())
    del stored["detectors"]["residual"], stored["weights"]["residual_sha256"]
    stored["detectors"].pop("fused")
    stored["fusion_weights"] = None
    (copy / "calibration.json").write_text(json.dumps(stored))
    shutil.copy(folder["folder"] / RESIDUAL_FILE, copy / RESIDUAL_FILE)
    assert DetectorFolder.open(copy).available == ["oneclass"]
    result = invoke(runner, ["scan", folder["fake"] / "f0.png", "--model", copy, "--detector",
                             "residual", "-q"])
    assert result.exit_code == EXIT_USAGE and "calibrate" in result.stderr


def test_a_calibrated_weight_file_gone_is_named_missing(
    runner: CliRunner, folder: dict[str, Any], tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(folder["folder"], copy)
    (copy / RESIDUAL_FILE).unlink()
    result = invoke(runner, ["scan", folder["fake"] / "f0.png", "--model", copy, "-q"])
    assert result.exit_code == EXIT_USAGE
    assert f"{RESIDUAL_FILE} is missing" in " ".join(result.stderr.split())


@pytest.mark.parametrize("reads", ["coding_costs", "pretrained_features"])
def test_refit_then_calibrate_again(runner: CliRunner, folder: dict[str, Any],
                                    tmp_path: Path, reads: str) -> None:
    """After a refit (here with the coding costs, or the pretrained features) the stored
    thresholds are stale: scan refuses the folder until 'calibrate' runs again, and
    calibrate itself accepts it (it replaces them); then scan and explain read the
    refitted model."""
    copy = tmp_path / "copy"
    shutil.copytree(folder["folder"], copy)
    before = json.loads((copy / "calibration.json").read_text())["weights"]["residual_sha256"]
    args = ["fit-residual", copy, "--real", folder["real"], "--fake", folder["fake"],
            "--val-fraction", "0", "--c", "1", f"--{reads.replace('_', '-')}",
            "--workers", "0"]
    refused = invoke(runner, args)  # an existing model is never replaced by accident
    assert refused.exit_code == EXIT_USAGE and "--overwrite" in refused.stderr
    assert file_sha256(copy / RESIDUAL_FILE) == before
    refit = invoke(runner, [*args, "--overwrite"])
    assert refit.exit_code == 0, refit.stderr
    assert getattr(ResidualClassifier.load(copy / RESIDUAL_FILE).inputs, reads)
    stale = invoke(runner, ["scan", folder["fake"] / "f0.png", "--model", copy, "-q"])
    assert stale.exit_code == EXIT_USAGE and "calibrate" in stale.stderr
    again = invoke(runner, ["calibrate", copy, "--real", folder["work"] / "held_real",
                            "--fpr", "0.1", "--workers", "0", "--processing", "asis"])
    assert again.exit_code == 0, again.stderr
    stored = json.loads((copy / "calibration.json").read_text())
    assert stored["weights"]["residual_sha256"] == file_sha256(copy / RESIDUAL_FILE) != before
    scan = invoke(runner, ["scan", folder["fake"] / "f0.png", "--model", copy, "-q",
                           "--detector", "residual", "--workers", "0"])
    assert scan.exit_code in (0, 1), scan.stderr  # a verdict, whichever it is
    explain = invoke(runner, ["explain", folder["fake"] / "f1.png", "--model", copy, "-o",
                              tmp_path / "out", "-f", "json", "-q"])
    assert explain.exit_code in (0, 1), explain.stderr
    tiles = json.loads(explain.stdout)["images"][0]["heatmap"]["tiles"]
    assert all(np.isfinite(tile["residual_logit"]) for tile in tiles)


@pytest.mark.parametrize("args", [[], ["--fake", "FAKE"], ["--csv", "BAD_CSV"]])
def test_fit_residual_usage_errors(runner: CliRunner, folder: dict[str, Any], tmp_path: Path,
                                   args: list[str]) -> None:
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("path,label\nx.jpg,maybe\n")
    args = [{"FAKE": str(folder["fake"]), "BAD_CSV": str(bad_csv)}.get(a, a) for a in args]
    result = invoke(runner, ["fit-residual", tmp_path / "out", *args, "--workers", "0"])
    assert result.exit_code == EXIT_USAGE
    assert "error" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / RESIDUAL_FILE).exists()


def test_model_files_stay_out_of_the_folders_of_their_images(
        runner: CliRunner, folder: dict[str, Any], tmp_path: Path) -> None:
    """A detector folder is never written among the images it was fitted or calibrated
    on: inside a --real/--fake folder, or the folder of a file a --csv lists."""
    listed = tmp_path / "listed"
    shutil.copytree(folder["real"], listed / "real")
    shutil.copytree(folder["fake"], listed / "ai")
    rows = [f"{p.relative_to(listed)},{p.relative_to(listed).parts[0]}"
            for p in sorted(listed.rglob("*.*"))]
    (listed / "train.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    among_images = next((listed / "real").rglob("*.jpg")).parent / "det"
    by_csv = invoke(runner, ["fit-residual", among_images, "--csv", listed / "train.csv",
                             "--workers", "0"])
    assert by_csv.exit_code == EXIT_USAGE and "inside the input folder" in by_csv.stderr
    assert not among_images.exists()
    linked = tmp_path / "linked"  # a listed link: its target's folder counts too
    linked.mkdir()
    os.symlink(next(folder["real"].rglob("*.jpg")), linked / "r.jpg")
    (linked / "list.csv").write_text(
        f"path,label\n{linked / 'r.jpg'},real\n{next(folder['fake'].glob('*.png'))},ai\n")
    target_folder = next(folder["real"].rglob("*.jpg")).parent / "det"
    via_link = invoke(runner, ["fit-residual", target_folder, "--csv", linked / "list.csv",
                               "--workers", "0"])
    assert via_link.exit_code == EXIT_USAGE and "inside the input folder" in via_link.stderr
    assert not target_folder.exists()
    copy = tmp_path / "copy"
    shutil.copytree(folder["folder"], copy)
    calibration = (copy / "calibration.json").read_bytes()
    inside = invoke(runner, ["calibrate", copy, "--real", tmp_path, "--workers", "0",
                             "--processing", "asis"])
    assert inside.exit_code == EXIT_USAGE and "inside the input folder" in inside.stderr
    assert (copy / "calibration.json").read_bytes() == calibration


def test_fit_residual_skips_an_unreadable_file_and_names_it(
    runner: CliRunner, folder: dict[str, Any], tmp_path: Path
) -> None:
    fake = tmp_path / "fake"
    shutil.copytree(folder["fake"], fake)
    (fake / "broken.png").write_bytes(b"not an image at all")
    result = invoke(runner, ["fit-residual", tmp_path / "out", "--real", folder["real"],
                             "--fake", fake, "--val-fraction", "0", "--workers", "0"])
    assert result.exit_code == 0, result.stderr
    assert "skipped" in result.stderr and "broken.png" in result.stderr
    provenance = ResidualClassifier.load(tmp_path / "out" / RESIDUAL_FILE).provenance
    assert provenance["unreadable"] == 1
    assert list(provenance["unreadable_files"]) == [str(fake / "broken.png")]


def test_a_residual_model_of_another_statistics_count_is_refused(
    runner: CliRunner, folder: dict[str, Any], tmp_path: Path
) -> None:
    """A model fitted by an aigdetect that computed other statistics would score nonsense:
    scan refuses it and says how to refit."""
    copy = tmp_path / "copy"
    shutil.copytree(folder["folder"], copy)
    model = ResidualClassifier.load(copy / RESIDUAL_FILE)
    model.mean_, model.scale_, model.coef_ = (np.append(a, 0.0) for a in
                                              (model.mean_, model.scale_, model.coef_))
    model.save(copy / RESIDUAL_FILE)
    stored = json.loads((copy / "calibration.json").read_text())
    stored["weights"]["residual_sha256"] = file_sha256(copy / RESIDUAL_FILE)
    (copy / "calibration.json").write_text(json.dumps(stored))
    result = invoke(runner, ["scan", folder["fake"] / "f0.png", "--model", copy, "--detector",
                             "residual", "-q"])
    assert result.exit_code == EXIT_USAGE, result.stderr
    said = " ".join(result.stderr.split())
    assert f"{model.input_dim} residual inputs" in said
    assert "fit-residual" in said


# ---------------------------------------------------------------------------
# benchmarks/residual_selection.py: the cross-validation that chooses the statistics
# ---------------------------------------------------------------------------

SELECTION = BENCHMARKS / "residual_selection.py"


def test_selection_deals_whole_repositories_into_balanced_folds() -> None:
    selection = load_benchmark("residual_selection")
    sources = ["real:a"] * 5 + ["real:b"] * 4 + ["real:c"] * 3 + ["real:d"] * 2 + ["ai:x"] * 9
    folds = selection.real_folds(sources + ["face:e"] * 2, 3)
    assert sorted(set().union(*folds)) == ["real:a", "real:b", "real:c", "real:d"]
    assert sum(len(f) for f in folds) == 4  # each repository in exactly one fold
    sizes = sorted(sum(sources.count(s) for s in fold) for fold in folds)
    assert sizes == [4, 5, 5]
    assert selection.real_folds(sources + ["face:e"] * 2, 3, "face") == [{"face:e"}, set(), set()]


@pytest.mark.parametrize(("coding_costs", "pretrained"), [(False, True), (True, False)])
def test_selection_runs_on_a_tiny_manifest(tmp_path: Path, subprocess_env: dict[str, str],
                                           coding_costs: bool, pretrained: bool) -> None:
    """Held-out repositories and families through the script, end to end (the default
    inputs with the face photos trained on, then the statistics with coding costs
    alone); a second run with the same --cache reads the inputs instead of computing
    them, and says the same."""
    rows = []
    for repo in range(3):
        for i in range(3):
            path = noise_jpeg(tmp_path / "photos" / f"r{repo}_{i}.jpg", seed=40 * repo + i)
            rows.append([path.relative_to(tmp_path), "real", f"repo{repo}", ""])
        path = noise_jpeg(tmp_path / "faces" / "real" / f"f{repo}.jpg", seed=70 + repo)
        rows.append([path.relative_to(tmp_path), "real", f"faces{repo}", ""])
    for family in ("sd-1.x", "sd-1.5-finetunes"):
        for i in range(3):
            path = smooth_png(tmp_path / "ai" / f"{family}_{i}.png", seed=900 + i)
            rows.append([path.relative_to(tmp_path), "ai", "gen", family])
    (tmp_path / "manifest.csv").write_text("path,kind,source_repo,family,ship_ok\n" + "".join(
        f"{p},{k},{r},{f},yes\n" for p, k, r, f in rows))
    out, cache = tmp_path / "selection.json", tmp_path / "inputs.npz"
    command = [sys.executable, SELECTION, "--manifest", tmp_path / "manifest.csv",
               "--regularisation", "0.1,1", "--workers", "1", "--out", out, "--cache", cache,
               *(["--coding-costs"] if coding_costs else []),
               *(["--train-faces"] if pretrained else ["--no-pretrained-features"])]

    def selection() -> dict:
        done = subprocess.run(command, capture_output=True, text=True, env=subprocess_env,
                              timeout=600)
        assert done.returncode == 0, done.stderr
        return json.loads(out.read_text())

    stored = [selection()]
    written = cache.stat().st_mtime_ns
    stored.append(selection())
    assert cache.stat().st_mtime_ns == written  # read, not computed and written again
    assert stored[0] == stored[1]
    assert stored[0]["read"] == {"recompress_quality": 90, "coding_costs": coding_costs,
                                 "pretrained_features": pretrained}
    assert stored[0]["files"] == 18
    assert stored[0]["train_faces"] is pretrained
    assert stored[0]["inputs"] == (LEGACY_INPUTS.dim(64) + (COUNTS_SIZE if coding_costs else 0)
                                   + (FEATURE_DIM if pretrained else 0))
    for result in stored[0]["results"].values():
        assert set(result) == {"matched", "web", "small-web", "faces", "faces-fpr", "mean"}
        assert all(0.0 <= value <= 1.0 for value in result.values())


def test_no_readable_image_of_one_class_is_a_clear_error(tmp_path: Path) -> None:
    """Every AI file junk: scikit-learn would say it needs two classes; we say which."""
    files = []
    for i in range(8):
        photo = tmp_path / f"r{i}.jpg"
        noise_jpeg(photo, seed=i)
        files.append(LabelledFile(str(photo), REAL, "r"))
        junk = tmp_path / f"a{i}.png"
        junk.write_bytes(f"not an image {i}".encode())
        files.append(LabelledFile(str(junk), AI, "a"))
    with pytest.raises(ResidualModelError, match="no AI readable training images"):
        fit_residual(files, ResidualFitConfig(workers=0, val_fraction=0.0))


def test_a_missing_file_does_not_shift_the_held_out_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The binary trainer drops files that do not open before its split; the residual
    fit must split the same list, or a missing CSV row makes the two hold out different
    images and one trains on what the other (and the fusion weights) treat as unseen."""
    files = [LabelledFile(str(noise_jpeg(tmp_path / f"ai{i}.jpg", size=(96, 96), seed=i)), AI,
                          "gen") for i in range(12)]
    files += [LabelledFile(str(noise_jpeg(tmp_path / f"r{i}.jpg", size=(96, 96), seed=50 + i)),
                           REAL, "cam") for i in range(12)]
    files.insert(3, LabelledFile(str(tmp_path / "gone.jpg"), AI, "gen"))
    held: list[list[str]] = []
    monkeypatch.setattr(residual_model, "validate",
                        lambda model, files, *args: held.append([f.path for f in files]) or {})
    config = ResidualFitConfig(variants=1, workers=0, val_fraction=0.25)
    model = residual_model.fit_residual(files, config)
    _, binary_held = split_for_validation(present(files, Console(quiet=True)), 0.25, config.seed)
    assert held == [[f.path for f in binary_held]]
    assert model.provenance["unreadable"] == 1
    assert model.provenance["train_images"] == 24 - len(binary_held)


def test_next_step_is_a_command_that_works(tmp_path: Path) -> None:
    """The suggested fit-gmm keeps an extractor the folder has (else it would be refused
    for replacing it), and paths with spaces are quoted for the shell."""
    from aigdetect.cli.fit import next_step
    folder = tmp_path / "my detector"
    folder.mkdir()
    bare = next_step(folder)
    assert f"-o '{folder}'" in bare and "--extractor" not in bare
    (folder / EXTRACTOR_FILE).write_bytes(b"x")
    assert f"--extractor '{folder / EXTRACTOR_FILE}'" in next_step(folder)
    (folder / DENSITY_FILE).write_bytes(b"x")
    assert next_step(folder).startswith(f"calibrate it with 'aigdetect calibrate '{folder}'")
