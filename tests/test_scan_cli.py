"""``aigdetect scan`` end to end with the shipped detector.

The default weights may be retrained at any time, so nothing here depends on a
score value: only on structure, and on the consistency of each record with the
detector's own threshold, spread and calibration scores.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers_images import (
    BAD_NAMES,
    ODD_NAMES,
    invoke,
    make_good_folder,
    make_zoo,
    noise_jpeg,
    parse_json_stdout,
    smooth_png,
    snapshot,
    tree_snapshot,
)
from PIL import Image
from typer.testing import CliRunner

from aigdetect.calibration import Calibration
from aigdetect.checkpoint import read_checkpoint
from aigdetect.cli import (
    EXIT_BROKEN_PIPE,
    EXIT_CLEAN,
    EXIT_FLAGGED,
    EXIT_INTERNAL_ERROR,
    EXIT_UNREADABLE,
    EXIT_USAGE,
    run,
)
from aigdetect.detectors import EXTRACTOR_FILE, DetectorFolder, default_model_dir
from aigdetect.features import MAX_TILES
from aigdetect.patches import tile_count

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FAST = ["--workers", "0", "--patches", "4"]
VERDICTS = {"ai", "real", "uncertain"}
RECORD_KEYS = {
    "path", "sha256", "format", "width", "height", "score", "raw_score", "threshold",
    "verdict", "percentile", "log_likelihood", "patches", "elapsed_ms", "detector",
    "components", "model", "notes", "error",
}


def expected_exit(records: list[dict[str, Any]]) -> int:
    flagged = any(r["verdict"] == "ai" for r in records)
    unreadable = any(r["verdict"] == "error" for r in records)
    if unreadable:
        return 4 if flagged else 3
    return EXIT_FLAGGED if flagged else EXIT_CLEAN


@pytest.fixture(scope="module")
def shipped() -> DetectorFolder:
    """The shipped detector folder, read directly (to check records against it)."""
    return DetectorFolder.open(None)


@pytest.fixture(scope="module")
def calibration(shipped: DetectorFolder) -> Calibration:
    """The calibration of the shipped default detector."""
    return shipped.build(None, torch.device("cpu")).calibration


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("scan_images")
    good = make_good_folder(root / "good")
    zoo = make_zoo(root / "zoo")
    return {"root": root, "good": good, "zoo": zoo, "all": [*good, *zoo.values()]}


@pytest.fixture(scope="module")
def zoo_scan(runner: CliRunner, images: dict[str, Any]) -> dict[str, Any]:
    """One JSON scan of the good images plus the bad-input zoo, with snapshots around it."""
    before = snapshot(images["all"]), tree_snapshot(images["root"])
    result = invoke(runner, ["scan", images["root"], "--format", "json", *FAST])
    after = snapshot(images["all"]), tree_snapshot(images["root"])
    document = parse_json_stdout(result.stdout)
    by_name = {Path(r["path"]).name: r for r in document["results"]}
    return {"result": result, "document": document, "by_name": by_name,
            "before": before, "after": after}


# ---------------------------------------------------------------------------
# the zoo: every file accounted for, errors as records, no traceback
# ---------------------------------------------------------------------------

def test_every_file_gets_exactly_one_record(zoo_scan, images) -> None:
    results = zoo_scan["document"]["results"]
    paths = [Path(r["path"]).resolve() for r in results]
    assert len(paths) == len(set(paths)) == len(images["all"])
    assert set(paths) == {p.resolve() for p in images["all"]}
    assert all(set(r) >= RECORD_KEYS for r in results)  # new fields may be added


def test_unreadable_files_are_error_records(zoo_scan) -> None:
    for name in BAD_NAMES:
        record = zoo_scan["by_name"][name]
        assert record["verdict"] == "error", name
        assert isinstance(record["error"], str) and record["error"].strip(), name
        assert record["score"] is None and record["raw_score"] is None, name
        assert record["patches"] == 0
    by_name = zoo_scan["by_name"]
    assert "empty" in by_name["empty.jpg"]["error"]
    assert "too large" in by_name["bomb.png"]["error"]
    # the file could be hashed even though it could not be decoded
    assert by_name["corrupt.jpg"]["sha256"] is not None


def test_readable_files_are_scored(zoo_scan, images) -> None:
    readable = [p.name for p in images["good"]] + list(ODD_NAMES)
    for name in readable:
        record = zoo_scan["by_name"][name]
        assert record["error"] is None, (name, record["error"])
        assert record["verdict"] in VERDICTS, name
        assert 0.0 <= record["score"] <= 1.0
        assert math.isfinite(record["raw_score"])
        assert 0.0 <= record["percentile"] <= 100.0
        assert 1 <= record["patches"] <= 4
        assert record["elapsed_ms"] > 0
    notes = {name: " ".join(zoo_scan["by_name"][name]["notes"]) for name in ODD_NAMES}
    assert "CMYK" in notes["cmyk.jpg"]
    assert "8 bits" in notes["sixteen.png"]
    assert "frame" in notes["animated.gif"]
    assert "upscaled" in notes["tiny.png"]
    # interpolated pixels are no evidence either way
    assert zoo_scan["by_name"]["tiny.png"]["verdict"] == "uncertain"


def test_record_metadata_matches_files(zoo_scan, images) -> None:
    for path in images["all"]:
        record = zoo_scan["by_name"][path.name]
        # hashed even when it cannot be decoded (evidence is identified either way)
        assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        if record["verdict"] != "error":
            with Image.open(path) as image:
                assert (record["width"], record["height"]) == image.size
                assert record["format"] == image.format


def test_records_consistent_with_detector(zoo_scan, shipped: DetectorFolder,
                                         calibration: Calibration) -> None:
    model_dir = default_model_dir()
    identity = {"name": "default", **{
        key: hashlib.sha256((model_dir / name).read_bytes()).hexdigest()
        for key, name in (("extractor_sha256", EXTRACTOR_FILE), ("density_sha256", "density.npz"))
    }}
    spread = calibration.spread
    for record in zoo_scan["document"]["results"]:
        assert record["detector"] == shipped.default
        assert {k: record["model"][k] for k in identity} == identity
        assert record["model"]["version"]
        if record["verdict"] == "error":
            continue
        assert record["threshold"] == pytest.approx(calibration.threshold, abs=1e-4)
        margin = (record["raw_score"] - record["threshold"]) / spread
        assert record["score"] == pytest.approx(1 / (1 + math.exp(-margin)), abs=1e-4)
        assert (record["score"] > 0.5) == (record["raw_score"] > record["threshold"]) or \
            abs(margin) < 1e-3
        low, high = calibration.band(record["threshold"])
        if any(note.startswith(("damaged:", "too small:")) for note in record["notes"]):
            assert record["verdict"] == "uncertain"  # capped whatever the score
        elif record["raw_score"] > high + 1e-3:
            assert record["verdict"] == "ai" and record["score"] > 0.5
        elif record["raw_score"] < low - 1e-3:
            assert record["verdict"] == "real"
        elif low + 1e-3 < record["raw_score"] < high - 1e-3:
            assert record["verdict"] == "uncertain"
        real = calibration.real_scores
        expected_pct = 100.0 * np.mean(real >= record["raw_score"])
        assert record["percentile"] == pytest.approx(expected_pct, abs=0.01 + 1e-9) or \
            abs(record["raw_score"] - real).min() < 1e-3
        assert record["detector"] in record["components"] or len(record["components"]) >= 2


def test_results_ranked_by_raw_score(zoo_scan) -> None:
    results = zoo_scan["document"]["results"]
    scored = [r["raw_score"] for r in results if r["verdict"] != "error"]
    assert scored == sorted(scored, reverse=True)
    verdicts = [r["verdict"] for r in results]
    first_error = verdicts.index("error")
    assert all(v == "error" for v in verdicts[first_error:])
    assert zoo_scan["document"]["summary"]["files"] == len(results)
    assert zoo_scan["document"]["summary"]["error"] == len(BAD_NAMES)


def test_exit_code_with_unreadable_files(zoo_scan) -> None:
    result = zoo_scan["result"]
    results = zoo_scan["document"]["results"]
    assert result.exit_code in (3, 4)
    assert result.exit_code == expected_exit(results)
    # progress and summary on stderr, never on stdout
    assert f"exit code {result.exit_code}" in result.stderr
    assert f"{len(BAD_NAMES)} unreadable" in result.stderr


def test_files_unchanged_by_scan(zoo_scan) -> None:
    assert zoo_scan["after"] == zoo_scan["before"]


# ---------------------------------------------------------------------------
# exit codes and options
# ---------------------------------------------------------------------------

def test_all_readable_exit_code_and_table(runner, images) -> None:
    result = invoke(runner, ["scan", images["root"] / "good", *FAST])
    assert result.exit_code in (EXIT_CLEAN, EXIT_FLAGGED)
    # the summary (on stderr, never among the results) says how many were flagged: the
    # exit code must agree
    assert " files: " not in result.stdout
    summary_line = next(line for line in result.stderr.splitlines() if " files: " in line)
    flagged = int(summary_line.split("files: ")[1].split(" ai")[0])
    assert summary_line.startswith(f"{len(images['good'])} files: ")
    assert result.exit_code == (EXIT_FLAGGED if flagged else EXIT_CLEAN)
    assert "aigdetect scan" in result.stdout
    for path in images["good"]:
        assert path.name in result.stdout


def test_jpeg_cut_short_is_scored_but_never_decides(runner, tmp_path) -> None:
    whole = noise_jpeg(tmp_path / "whole.jpg", seed=5).read_bytes()
    cut = tmp_path / "carved.jpg"
    cut.write_bytes(whole[: len(whole) * 2 // 3])
    result = invoke(runner, ["scan", cut, "-f", "json", *FAST])
    record = parse_json_stdout(result.stdout)["results"][0]
    assert record["verdict"] == "uncertain" and record["raw_score"] is not None
    assert any(note.startswith("damaged:") for note in record["notes"])


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_a_device_this_machine_lacks_is_a_usage_error(runner, images, device) -> None:
    from aigdetect.runtime import mps_available
    if (torch.cuda.is_available() if device == "cuda" else mps_available()):
        pytest.skip(f"this machine has {device}")
    result = invoke(runner, ["scan", images["good"][0], "--device", device, *FAST])
    assert result.exit_code == EXIT_USAGE
    assert f"--device {device}" in result.stderr and "--device cpu" in result.stderr
    assert result.stdout == ""


def test_missing_path_becomes_error_record(runner, images, tmp_path) -> None:
    missing = tmp_path / "not-there.jpg"
    result = invoke(runner, ["scan", images["good"][0], missing, "--format", "json", *FAST])
    document = parse_json_stdout(result.stdout)
    assert len(document["results"]) == 2
    record = next(r for r in document["results"] if r["path"] == str(missing))
    assert record["verdict"] == "error"
    assert "no such file" in record["error"]
    assert result.exit_code in (3, 4)
    assert result.exit_code == expected_exit(document["results"])


@pytest.mark.parametrize("bad", [
    ["--format", "xml"],
    ["--patches", "zero"],
    ["--patches", "0"],
    ["--patches", "-3"],
    ["--fpr", "2"],
    ["--fpr", "0"],
    ["--fpr", "0.1", "--threshold", "-10"],
    ["--workers", "-1"],
    ["--model", "does-not-exist"],
])
def test_bad_options_exit_2(runner, images, bad: list[str]) -> None:
    args = ["scan", images["good"][0], *bad]
    if "--workers" not in bad:
        args += ["--workers", "0"]
    result = invoke(runner, args)
    assert result.exit_code == EXIT_USAGE, result.stderr
    assert result.stdout == ""
    assert result.stderr.strip()


def test_no_paths_is_usage_error(runner) -> None:
    result = invoke(runner, ["scan"])
    assert result.exit_code == EXIT_USAGE


def test_an_empty_folder_is_scanned_clean_and_said(runner, tmp_path) -> None:
    """Not an error (a watched folder may be empty), but said on stderr; the table
    still names the detector that would have judged."""
    (tmp_path / "empty").mkdir()
    result = invoke(runner, ["scan", tmp_path / "empty", *FAST])
    assert result.exit_code == EXIT_CLEAN
    assert "no image files among the inputs" in result.stderr
    assert "aigdetect scan, detector residual" in " ".join(result.stdout.split())


def test_output_file(runner, images, tmp_path) -> None:
    out = tmp_path / "results.json"
    result = invoke(runner, ["scan", images["root"] / "good", "--format", "json",
                             "--output", out, *FAST])
    assert result.stdout == ""
    document = json.loads(out.read_text())
    assert len(document["results"]) == len(images["good"])
    assert result.exit_code == expected_exit(document["results"])

    out_csv = tmp_path / "results.csv"
    result = invoke(runner, ["scan", images["good"][0], "-f", "csv", "-o", out_csv, *FAST])
    assert result.stdout == ""
    rows = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert [row["path"] for row in rows] == [str(images["good"][0])]


def test_output_in_missing_folder_is_usage_error(runner, images, tmp_path) -> None:
    out = tmp_path / "no-such-folder" / "results.json"
    result = invoke(runner, ["scan", images["good"][0], "-f", "json", "-o", out, *FAST])
    # a clean usage error, not a traceback (whose exit code 1 would read as "flagged")
    assert result.exit_code == EXIT_USAGE
    assert "error" in result.stderr
    assert result.stdout == ""
    assert not out.exists()


def test_paths_from_stdin(runner, images) -> None:
    chosen = [images["good"][0], images["zoo"]["tiny.png"], images["good"][0]]
    text = "".join(f"{p}\n" for p in chosen) + "\n"
    result = invoke(runner, ["scan", "-", "--format", "jsonl", *FAST], input=text)
    lines = result.stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["path"] for r in records] == [str(images["good"][0]),
                                            str(images["zoo"]["tiny.png"])]
    assert all(r["verdict"] in VERDICTS for r in records)
    assert result.exit_code == expected_exit(records)


def test_jsonl_includes_problems(runner, images, tmp_path) -> None:
    missing = tmp_path / "gone"
    result = invoke(runner, ["scan", missing, images["good"][1], images["zoo"]["empty.jpg"],
                             "-f", "jsonl", *FAST])
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(r["path"]).name for r in records] == ["gone", "photo_1.jpg", "empty.jpg"]
    assert [r["verdict"] == "error" for r in records] == [True, False, True]
    assert result.exit_code == expected_exit(records)


def test_threshold_override(runner, images) -> None:
    readable = [images["good"][0], images["good"][-1], images["zoo"]["palette.png"]]
    # the threshold is on the raw score (higher = more AI-like): a very low one flags all
    low = invoke(runner, ["scan", *readable, "-f", "json", "--threshold", "-1e9", *FAST])
    records = parse_json_stdout(low.stdout)["results"]
    assert [r["verdict"] for r in records] == ["ai"] * 3
    assert all(r["threshold"] == -1e9 and r["score"] == pytest.approx(1.0) for r in records)
    assert low.exit_code == EXIT_FLAGGED

    high = invoke(runner, ["scan", *readable, "-f", "json", "--threshold", "1e9", *FAST])
    records_low = parse_json_stdout(high.stdout)["results"]
    assert [r["verdict"] for r in records_low] == ["real"] * 3
    assert all(r["score"] == pytest.approx(0.0) for r in records_low)
    assert high.exit_code == EXIT_CLEAN
    # the threshold moves the verdict, never the raw score
    assert sorted(r["raw_score"] for r in records) == sorted(r["raw_score"] for r in records_low)


def test_fpr_resets_threshold(runner, images, calibration: Calibration) -> None:
    for fpr in (0.5, 0.9):
        result = invoke(runner, ["scan", images["good"][0], "-f", "json", "--fpr", str(fpr),
                                 *FAST])
        record = parse_json_stdout(result.stdout)["results"][0]
        # the strictest of the pooled and the per-kind (camera, processed) thresholds
        expected = max(float(np.quantile(scores, 1 - fpr, method="inverted_cdf"))
                       for scores in (calibration.real_scores, *calibration.groups.values()))
        assert record["threshold"] == pytest.approx(expected, abs=1e-4)
        assert (record["score"] > 0.5) == (record["raw_score"] > record["threshold"])


def scan_jsonl(runner, paths, *extra) -> list[dict[str, Any]]:
    result = invoke(runner, ["scan", *paths, "-f", "jsonl", "--patches", "4", *extra])
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_deterministic_across_runs_workers_and_order(runner, images) -> None:
    paths = [*images["good"], images["zoo"]["corrupt.jpg"], images["zoo"]["cmyk.jpg"]]

    def key(records):
        return [(r["path"], r["raw_score"], r["score"], r["verdict"], r["sha256"],
                 r["patches"]) for r in records]

    first = scan_jsonl(runner, paths, "--workers", "0")
    second = scan_jsonl(runner, paths, "--workers", "0")
    parallel = scan_jsonl(runner, paths, "--workers", "2")
    assert [r["path"] for r in first] == [str(p) for p in paths]  # input order
    assert key(first) == key(second) == key(parallel)
    # same image, same score: whatever the other files and their order
    backwards = scan_jsonl(runner, paths[::-1], "--workers", "0")
    assert sorted(key(backwards)) == sorted(key(first))
    alone = scan_jsonl(runner, [paths[2]], "--workers", "0")
    assert key(alone) == [key(first)[2]]


def test_deterministic_across_batch_sizes(runner, images) -> None:
    """--batch-size changes how tiles are grouped, never the scores (the fused detector:
    its networks batch tiles, padded to at least 8; the default residual one has none)."""
    paths = images["good"][:2]
    results = [
        [(r["path"], r["raw_score"], r["score"])
         for r in scan_jsonl(runner, paths, "--workers", "0", "--patches", "12",
                             "--detector", "fused", "--batch-size", size)]
        for size in ("8", "9", "256")
    ]
    assert results[0] == results[1] == results[2]
    assert all(value is not None for _, value, _ in results[0])


def test_patches_all_and_counts(runner, images) -> None:
    photo = images["good"][0]  # 256 x 192: a 4 x 3 grid of 64 px tiles
    meta, _ = read_checkpoint(default_model_dir() / EXTRACTOR_FILE)
    grid = tile_count(192, 256, meta.config.patch_size)
    counts, short, asked = {}, {}, {}
    for patches in ("all", "ALL", "4", "1", "500"):
        result = invoke(runner, ["scan", photo, "-f", "json", "--workers", "0",
                                 "--patches", patches])
        output = parse_json_stdout(result.stdout)
        record = output["results"][0]
        assert record["verdict"] in VERDICTS
        counts[patches] = record["patches"]
        asked[patches] = output["run"]["settings"]["patches"]
        short[patches] = any(note.startswith("only ") for note in record["notes"])
    assert counts == {"all": grid, "ALL": grid, "4": min(4, grid), "1": 1, "500": grid}
    assert asked == {"all": "all", "ALL": "all", "4": 4, "1": 1, "500": 500}  # the run header
    # "fewer tiles than asked" is said when a number was asked for, not for "all"
    assert short == {"all": False, "ALL": False, "4": False, "1": False, "500": True}


def test_all_tiles_stop_at_the_cap(shipped: DetectorFolder) -> None:
    """'--patches all' on a 250 MP image would give about 61,000 tiles; attention over
    them grows with the square, so 'all' means every tile up to MAX_TILES."""
    assert shipped.tiles(0).max_tiles == MAX_TILES
    assert shipped.tiles(7).max_tiles == 7


def test_default_patches_come_from_detector(runner, tmp_path: Path) -> None:
    """The shipped detector.json says 16 tiles: an image holding 36 is read at 16, not
    at every tile nor at another built-in default."""
    meta, _ = read_checkpoint(default_model_dir() / EXTRACTOR_FILE)
    big = noise_jpeg(tmp_path / "big.jpg", size=(384, 384), seed=6)
    assert tile_count(384, 384, meta.config.patch_size) == 36
    assert json.loads((default_model_dir() / "detector.json").read_text())["tiles"] == 16
    result = invoke(runner, ["scan", big, "-f", "json", "--workers", "0"])
    assert parse_json_stdout(result.stdout)["results"][0]["patches"] == 16


def test_max_pixels_guard(runner, tmp_path) -> None:
    big = smooth_png(tmp_path / "big.png", size=(1100, 1000))  # 1.1 MP, compresses well
    guarded = invoke(runner, ["scan", big, "-f", "json", "--max-pixels", "1", *FAST])
    record = parse_json_stdout(guarded.stdout)["results"][0]
    assert record["verdict"] == "error"
    assert "too large" in record["error"]
    assert guarded.exit_code in (3, 4)
    allowed = invoke(runner, ["scan", big, "-f", "json", "--max-pixels", "2", *FAST])
    assert parse_json_stdout(allowed.stdout)["results"][0]["verdict"] in VERDICTS


def test_quiet_leaves_stderr_empty(runner, images) -> None:
    loud = invoke(runner, ["scan", images["good"][0], "-f", "json", *FAST])
    assert "1 file: " in loud.stderr
    quiet = invoke(runner, ["scan", images["good"][0], "-f", "json", "--quiet", *FAST])
    assert quiet.stderr == ""
    parse_json_stdout(quiet.stdout)
    assert quiet.exit_code == loud.exit_code


def test_include_filters_folders_only(runner, images) -> None:
    result = invoke(runner, ["scan", images["root"] / "good", images["zoo"]["tiny.png"],
                             "--include", "png", "-f", "json", *FAST])
    names = sorted(Path(r["path"]).name for r in parse_json_stdout(result.stdout)["results"])
    assert names == ["render.png", "tiny.png"]


# ---------------------------------------------------------------------------
# a real process: stdout carries JSON only, stderr the summary
# ---------------------------------------------------------------------------

def test_subprocess_stdout_is_pure_json(images, subprocess_env) -> None:
    args = [sys.executable, "-m", "aigdetect", "scan", str(images["root"] / "good"),
            str(images["zoo"]["text.png"]), "--format", "json", *FAST]
    done = subprocess.run(args, capture_output=True, text=True, env=subprocess_env,
                          timeout=300, check=False)
    document = json.loads(done.stdout)  # the whole of stdout is one JSON document
    records = document["results"]
    assert len(records) == len(images["good"]) + 1
    assert done.returncode == expected_exit(records)
    assert done.returncode in (3, 4)
    assert "files:" in done.stderr and f"exit code {done.returncode}" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_closed_output_pipe_is_not_read_as_flagged(images, subprocess_env) -> None:
    """`scan ... | head` closes stdout early: exit 141, as shells report SIGPIPE, never
    1 ("an image was flagged"), and no traceback."""
    args = [sys.executable, "-m", "aigdetect", "scan", *map(str, images["good"]),
            "-f", "jsonl", *FAST]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=subprocess_env)
    process.stdout.close()  # the reader is gone before the first record
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == EXIT_BROKEN_PIPE
    assert b"Traceback" not in stderr


def test_a_bug_exits_70_with_its_traceback(images, monkeypatch, capsys) -> None:
    """An unexpected exception is a bug: exit 70 (EX_SOFTWARE) with the traceback and a
    line saying so, never 1, which scan gives for a flagged image."""
    def broken(*args, **kwargs):
        raise ValueError("planted bug")

    monkeypatch.setattr("aigdetect.cli.scan.run_header", broken)
    with pytest.raises(SystemExit) as ended:
        run(["scan", str(images["good"][0]), "-f", "json", *FAST])
    assert ended.value.code == EXIT_INTERNAL_ERROR
    stderr = capsys.readouterr().err
    assert "ValueError: planted bug" in stderr and "internal error" in stderr


def test_the_entry_point_keeps_every_other_exit_code(images, capsys) -> None:
    with pytest.raises(SystemExit) as ended:
        run(["scan", str(images["good"][0]), "-f", "json", *FAST])
    records = json.loads(capsys.readouterr().out)["results"]
    assert ended.value.code == expected_exit(records)  # 0 or 1: as scan decided
    with pytest.raises(SystemExit) as ended:
        run(["scan", str(images["good"][0]), "--format", "yaml"])
    assert ended.value.code == EXIT_USAGE


# ---------------------------------------------------------------------------
# the shared corpus (skipped when absent)
# ---------------------------------------------------------------------------

def _manifest_rows() -> list[dict[str, str]]:
    manifest = SHARED_DATA / "manifest.csv"
    if not manifest.is_file():
        pytest.skip(f"shared data not available ({manifest} missing)")
    with open(manifest, newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if (SHARED_DATA / row["path"]).is_file()]


def _smallest(rows: list[dict[str, str]], prefix: str, count: int) -> list[dict[str, str]]:
    chosen = sorted((r for r in rows if r["path"].startswith(prefix)),
                    key=lambda r: ((SHARED_DATA / r["path"]).stat().st_size, r["path"]))
    if len(chosen) < count:
        pytest.skip(f"shared data has fewer than {count} files under {prefix}")
    return chosen[:count]


def test_shared_photos_and_ai_faces(runner, tmp_path) -> None:
    rows = _manifest_rows()
    chosen = _smallest(rows, "photos/", 3) + _smallest(rows, "faces/ai/", 3)
    folder = tmp_path / "shared"
    folder.mkdir()
    for number, row in enumerate(chosen):
        source = SHARED_DATA / row["path"]
        os.symlink(source, folder / f"{number:02d}_{source.name}")
    result = invoke(runner, ["scan", folder, "-f", "json", *FAST])
    records = parse_json_stdout(result.stdout)["results"]
    assert len(records) == len(chosen)
    assert result.exit_code == expected_exit(records)
    by_number = {int(Path(r["path"]).name[:2]): r for r in records}
    for number, row in enumerate(chosen):
        record = by_number[number]
        assert record["verdict"] in VERDICTS, (row["path"], record["error"])
        assert 0.0 <= record["score"] <= 1.0
        assert record["sha256"] == row["sha256"]
        width, height = (int(v) for v in row["size"].lower().split("x"))
        assert (record["width"], record["height"]) == (width, height)


def test_links_to_folders_inside_the_input_read_each_file_once(runner, images,
                                                              tmp_path) -> None:
    """A loop, and a link to a sibling folder (sorting before it): every file is read
    once under its own name, and nothing reads as unreadable (exit 3 would say so)."""
    folder = tmp_path / "case"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.jpg").write_bytes(images["good"][0].read_bytes())
    (folder / "sub" / "b.jpg").write_bytes(images["good"][1].read_bytes())
    os.symlink(folder, folder / "loop")
    os.symlink(folder / "sub", folder / "inside")
    result = invoke(runner, ["scan", folder, "-f", "json", *FAST])
    records = parse_json_stdout(result.stdout)["results"]
    assert sorted(Path(r["path"]).relative_to(folder).as_posix() for r in records) == [
        "a.jpg", "sub/b.jpg"]
    assert all(r["verdict"] != "error" for r in records)
    assert result.exit_code == expected_exit(records) and result.exit_code in (0, 1)


def test_a_linked_file_is_read_and_its_target_named(runner, images, tmp_path) -> None:
    """A folder of links is scanned (sets are built that way), and each record says
    which file was really read: the link's name alone would misattribute it."""
    outside = tmp_path / "elsewhere" / "real.jpg"
    outside.parent.mkdir()
    outside.write_bytes(images["good"][0].read_bytes())
    folder = tmp_path / "case"
    folder.mkdir()
    os.symlink(outside, folder / "evidence.jpg")
    os.symlink(outside.parent, folder / "linked-folder")
    result = invoke(runner, ["scan", folder, "-f", "json", *FAST])
    records = {Path(r["path"]).name: r for r in parse_json_stdout(result.stdout)["results"]}
    assert records["evidence.jpg"]["verdict"] != "error"
    assert f"a symlink to {outside.resolve()}" in records["evidence.jpg"]["notes"][0]
    assert records["linked-folder"]["verdict"] == "error"
    assert "leads outside the input folder" in records["linked-folder"]["error"]


def test_a_dangling_link_is_not_said_to_have_been_read(runner, tmp_path) -> None:
    folder = tmp_path / "case"
    folder.mkdir()
    os.symlink(tmp_path / "gone.jpg", folder / "dangling.jpg")
    record = parse_json_stdout(invoke(runner, ["scan", folder, "-f", "json", *FAST]).stdout)[
        "results"][0]
    assert record["verdict"] == "error"
    assert record["notes"][0] == f"a symlink to {os.path.realpath(tmp_path / 'gone.jpg')}"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_named_pipe_is_an_error_record_not_a_hang(runner, tmp_path) -> None:
    pipe = tmp_path / "evidence.jpg"
    os.mkfifo(pipe)  # reading it would block forever
    result = invoke(runner, ["scan", pipe, "-f", "json", "--workers", "0"])
    assert result.exit_code == EXIT_UNREADABLE
    (record,) = parse_json_stdout(result.stdout)["results"]
    assert record["verdict"] == "error" and "not a regular file" in record["error"]


@pytest.mark.parametrize(("command", "switch"), [
    ("scan", "--resume"), ("explain", "--faces"), ("evaluate", "--matched-processing"),
    ("train", "--binary"), ("fit-gmm", "--no-cache"), ("fit-residual", "--coding-costs")])
def test_switches_show_no_value_label(runner: CliRunner, command: str, switch: str) -> None:
    """Typer labels booleans '<bool>', as if they took a value: our switches carry none
    (only Typer's own --help keeps it)."""
    result = invoke(runner, [command, "--help"], env={"COLUMNS": "200"})
    lines = result.stdout.splitlines()
    assert result.exit_code == 0 and any(switch in line for line in lines)
    labelled = [line for line in lines if "<bool>" in line]
    assert all("--help" in line for line in labelled), labelled


def test_a_loop_of_file_links_names_the_next_link(runner, tmp_path) -> None:
    """a.jpg -> b.jpg -> a.jpg: there is no final target, so the note names the one the
    link gives (realpath would name a.jpg itself)."""
    folder = tmp_path / "case"
    folder.mkdir()
    os.symlink("b.jpg", folder / "a.jpg")
    os.symlink("a.jpg", folder / "b.jpg")
    result = invoke(runner, ["scan", folder / "a.jpg", "-f", "json", *FAST])
    (record,) = parse_json_stdout(result.stdout)["results"]
    assert record["verdict"] == "error"
    assert record["notes"][0] == "a symlink to b.jpg (a loop of symlinks)"
