"""``aigdetect evaluate`` end to end, and the metrics of aigdetect.evaluation on
hand-made records (where the right answers are known exactly)."""

from __future__ import annotations

import json
import os
import re
import shutil
import threading
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from helpers_images import invoke, load_benchmark, noise_jpeg, smooth_png
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from aigdetect.cli import EXIT_CLEAN, EXIT_UNREADABLE, EXIT_USAGE, app
from aigdetect.detectors import DetectorFolder
from aigdetect.evaluation import (
    AI_LABEL,
    REAL_LABEL,
    evaluate_groups,
    group_metrics,
    labelled_sets,
    mean_pair_auc,
    pair_metrics,
    paired_difference,
    rank_auc,
)
from aigdetect.labelled import (
    AI,
    PREFIX_BYTES,
    REAL,
    LabelledFile,
    each_once,
    files_from_csv,
)
from aigdetect.patches import CONDITIONS
from aigdetect.scanning import ScanRecord

FAST = ["--workers", "0", "--patches", "4"]
GROUP_KEYS = {"name", "label", "n_real", "n_ai", "errors", "auc", "average_precision",
              "accuracy", "fpr", "tpr", "review_fpr", "review_tpr"}


@pytest.fixture(scope="module")
def sets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """real/ = 3 noisy JPEGs + 1 empty file; fake/ = 3 smooth PNGs."""
    root = tmp_path_factory.mktemp("evaluate")
    real, fake = root / "real", root / "fake"
    for i in range(3):
        noise_jpeg(real / f"r{i}.jpg", seed=100 + i)
        smooth_png(fake / f"f{i}.png", seed=200 + i)
    (real / "broken.jpg").write_bytes(b"")
    return {"root": root, "real": real, "fake": fake}


@pytest.fixture(scope="module")
def evaluation(runner: CliRunner, sets: dict[str, Path]) -> dict[str, Any]:
    result = invoke(runner, ["evaluate", "--real", sets["real"], "--fake", sets["fake"],
                             "--format", "json", *FAST])
    return {"result": result, "document": json.loads(result.stdout)}


def test_json_document(evaluation: dict[str, Any], sets: dict[str, Path]) -> None:
    result, document = evaluation["result"], evaluation["document"]
    assert result.exit_code == EXIT_CLEAN, result.stderr
    assert document["positive_class"] == "ai"
    assert document["matched_processing"] is False
    assert isinstance(document["schema_version"], int)
    assert set(document["model"]) >= {"name", "extractor_sha256", "density_sha256"}
    folder = DetectorFolder.open(None)
    detector = folder.build(None, torch.device("cpu"))
    assert document["detector"] == folder.default
    assert document["threshold"] == pytest.approx(detector.calibration.threshold)
    groups = {g["name"]: g for g in document["groups"]}
    assert list(groups) == [str(sets["real"]), str(sets["fake"]), "overall"]
    assert all(set(g) >= GROUP_KEYS for g in groups.values())

    real, fake, overall = groups[str(sets["real"])], groups[str(sets["fake"])], groups["overall"]
    assert (real["label"], fake["label"], overall["label"]) == ("real", "ai", "all")
    assert (real["n_real"], real["n_ai"], real["errors"]) == (3, 0, 1)
    assert real["auc"] is None and real["tpr"] is None
    assert 0.0 <= real["fpr"] <= 1.0
    # each fake folder is measured against all real images
    assert (fake["n_real"], fake["n_ai"], fake["errors"]) == (3, 3, 0)  # its own errors only
    assert (overall["n_real"], overall["n_ai"], overall["errors"]) == (3, 3, 1)
    for row in (fake, overall):
        for key in ("auc", "average_precision", "accuracy", "fpr", "tpr"):
            assert 0.0 <= row[key] <= 1.0, key
    assert fake["auc"] == overall["auc"]
    mean = evaluation["document"]["mean_pair_auc"]
    assert mean["pairs"] == 1 and mean["value"] == pytest.approx(fake["auc"])
    assert mean["ci95"][0] <= mean["value"] <= mean["ci95"][1]


def test_metrics_agree_with_scan(runner: CliRunner, evaluation: dict[str, Any],
                                 sets: dict[str, Path]) -> None:
    """The AUC, FPR and TPR of evaluate are those of scan's raw scores, the review
    shares those of its verdicts."""
    raw, reviewed = {}, {}
    threshold = None
    for kind in ("real", "fake"):
        scanned = invoke(runner, ["scan", sets[kind], "-f", "json", *FAST])
        records = [r for r in json.loads(scanned.stdout)["results"] if r["verdict"] != "error"]
        raw[kind] = np.array([r["raw_score"] for r in records])
        reviewed[kind] = np.mean([r["verdict"] in ("ai", "uncertain") for r in records])
        threshold = records[0]["threshold"]
    labels = np.array([0] * len(raw["real"]) + [1] * len(raw["fake"]))
    expected_auc = roc_auc_score(labels, np.concatenate([raw["real"], raw["fake"]]))
    overall = evaluation["document"]["groups"][-1]
    assert overall["auc"] == pytest.approx(expected_auc)
    assert overall["fpr"] == pytest.approx(float(np.mean(raw["real"] > threshold)))
    assert overall["tpr"] == pytest.approx(float(np.mean(raw["fake"] > threshold)))
    assert overall["review_fpr"] == pytest.approx(reviewed["real"])
    assert overall["review_tpr"] == pytest.approx(reviewed["fake"])
    assert overall["review_fpr"] >= overall["fpr"] and overall["review_tpr"] >= overall["tpr"]


def test_table(runner: CliRunner, sets: dict[str, Path]) -> None:
    result = invoke(runner, ["evaluate", "--real", sets["real"], "--fake", sets["fake"],
                             "--quiet", *FAST])
    assert result.exit_code == EXIT_CLEAN, result.stderr
    for column in ("AUC", "AP", "FPR", "TPR", "FPR+unc.", "errors"):
        assert column in result.stdout
    assert "AI = positive" in result.stdout
    assert "95 % bootstrap interval" in result.stdout
    # --quiet: no progress, only the warning naming the empty file it could not score
    assert result.stderr.startswith("warning: 1 file(s) could not be scored")
    assert result.stderr.count("warning:") == 1 and "broken.jpg" in result.stderr


def test_table_shows_group_names_in_full(runner: CliRunner, sets: dict[str, Path],
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    result = invoke(runner, ["evaluate", "--real", sets["real"], "--fake", sets["fake"],
                             "--quiet", *FAST])
    assert result.exit_code == EXIT_CLEAN
    for name in (str(sets["real"]), str(sets["fake"]), "overall", "accuracy"):
        assert name in result.stdout, name


def test_label_csv(runner: CliRunner, sets: dict[str, Path]) -> None:
    labels = sets["root"] / "labels.csv"
    rows = ["path,label"]
    rows += [f"real/r{i}.jpg,0" for i in range(3)]  # relative to the CSV's folder
    rows += [f"{sets['fake'] / f'f{i}.png'},ai" for i in range(2)]
    labels.write_text("\n".join(rows) + "\n")
    result = invoke(runner, ["evaluate", "--csv", labels, "-f", "json", "-q", *FAST])
    assert result.exit_code == EXIT_CLEAN, result.stderr
    groups = {g["name"]: g for g in json.loads(result.stdout)["groups"]}
    assert set(groups) == {"labels.csv:real", "labels.csv:ai", "overall"}
    assert groups["overall"]["n_real"] == 3
    assert groups["overall"]["n_ai"] == 2
    assert groups["overall"]["errors"] == 0
    assert 0.0 <= groups["overall"]["auc"] <= 1.0

    # a CSV can complete folders; the CSV's real rows are the folder's own files, and
    # each file counts once
    mixed = invoke(runner, ["evaluate", "--real", sets["real"], "--csv", labels, "-f", "json",
                            "-q", *FAST])
    assert mixed.exit_code == EXIT_CLEAN
    overall = json.loads(mixed.stdout)["groups"][-1]
    assert (overall["n_real"], overall["n_ai"], overall["errors"]) == (3, 2, 1)


def test_a_folder_given_twice_counts_once_and_overlapping_classes_are_refused(
        runner: CliRunner, sets: dict[str, Path], tmp_path: Path) -> None:
    twice = invoke(runner, ["evaluate", "--real", sets["real"], "--real", sets["real"],
                            "--fake", sets["fake"], "-f", "json", "-q", *FAST])
    once = invoke(runner, ["evaluate", "--real", sets["real"], "--fake", sets["fake"],
                           "-f", "json", "-q", *FAST])
    assert json.loads(twice.stdout)["groups"][-1] == json.loads(once.stdout)["groups"][-1]
    assert "same image" not in twice.stderr  # the same names twice: nothing to tell
    copies = tmp_path / "copies"
    copies.mkdir()
    first = sets["real"] / "r0.jpg"
    os.link(first, copies / "renamed.jpg")
    (copies / "copied.jpg").write_bytes(first.read_bytes())
    noise_jpeg(copies / "new.jpg", seed=77)
    with_copies = invoke(runner, ["evaluate", "--real", sets["real"], "--real", copies,
                                  "--fake", sets["fake"], "-f", "json", "-q", *FAST])
    assert with_copies.exit_code == EXIT_CLEAN, with_copies.stderr
    assert "2 file(s) are the same image as another input" in " ".join(
        with_copies.stderr.split())
    overall = json.loads(with_copies.stdout)["groups"][-1]
    assert overall["n_real"] + overall["errors"] == (
        json.loads(once.stdout)["groups"][-1]["n_real"] + 1 + json.loads(
            once.stdout)["groups"][-1]["errors"])
    overlap = invoke(runner, ["evaluate", "--real", sets["root"], "--fake", sets["fake"], *FAST])
    assert overlap.exit_code == EXIT_USAGE
    assert "is the same image as" in overlap.stderr and overlap.stdout == ""


def test_files_alike_only_in_their_first_bytes_are_two_images(tmp_path: Path) -> None:
    """The dedupe compares a prefix first to save time; only whole files decide."""
    head = bytes(PREFIX_BYTES)
    files = []
    for name, tail in (("a.png", b"A" * 100), ("b.png", b"B" * 100)):
        (tmp_path / name).write_bytes(head + tail)
        files.append(LabelledFile(str(tmp_path / name), REAL, "g"))
    assert each_once(files) == files


def test_links_and_copies_of_one_image_count_once(tmp_path: Path) -> None:
    """A hard link or a byte-identical copy under another name is the same image: it
    must not weigh double or sit on both sides of a split; across classes it is refused."""
    original = tmp_path / "a.jpg"
    original.write_bytes(b"same bytes")
    os.link(original, tmp_path / "hard.jpg")
    (tmp_path / "copy.jpg").write_bytes(b"same bytes")
    (tmp_path / "other.jpg").write_bytes(b"same size!")  # same size, other bytes
    files = [LabelledFile(str(tmp_path / name), REAL, "g")
             for name in ("a.jpg", "hard.jpg", "copy.jpg", "other.jpg", "missing.jpg")]
    assert [Path(f.path).name for f in each_once(files)] == ["a.jpg", "other.jpg", "missing.jpg"]
    with pytest.raises(ValueError, match=r"copy\.jpg \(AI, in g\) is the same image as .*a\.jpg"):
        each_once([files[0], LabelledFile(files[2].path, AI, "g")])
    os.symlink(original, tmp_path / "link.jpg")
    said: list[str] = []
    each_once([files[0], LabelledFile(str(tmp_path / "link.jpg"), REAL, "g"), files[0]],
              on_copies=said.append)
    assert said == [f"1 file(s) are the same image as another input under another name (a "
                    f"link or identical bytes), e.g. {tmp_path / 'link.jpg'} = {original}: "
                    "each image counts once"]  # the link only: the same name is no copy


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_empty_files_and_pipes_are_never_taken_for_one_image(tmp_path: Path) -> None:
    """Two empty placeholders are not one image (one per class must not stop the run),
    and a FIFO named like an image is never opened (reading it would block for ever)."""
    (tmp_path / "a.jpg").write_bytes(b"")
    (tmp_path / "b.jpg").write_bytes(b"")
    os.mkfifo(tmp_path / "pipe.jpg")
    os.mkfifo(tmp_path / "pipe2.jpg")
    files = [LabelledFile(str(tmp_path / "a.jpg"), REAL, "r"),
             LabelledFile(str(tmp_path / "b.jpg"), AI, "f"),
             LabelledFile(str(tmp_path / "pipe.jpg"), REAL, "r"),
             LabelledFile(str(tmp_path / "pipe2.jpg"), REAL, "r")]
    kept: list = []
    worker = threading.Thread(target=lambda: kept.extend(each_once(files)), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "each_once opened a FIFO"
    assert kept == files


def test_plot(runner: CliRunner, sets: dict[str, Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    plot = tmp_path / "roc.png"
    result = invoke(runner, ["evaluate", "--real", sets["real"], "--fake", sets["fake"],
                             "--plot", plot, "-f", "json", *FAST])
    assert result.exit_code == EXIT_CLEAN, result.stderr
    json.loads(result.stdout)  # the plot message goes to stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ROC" in result.stderr


def test_plot_without_matplotlib_is_refused_before_scoring(
        runner: CliRunner, sets: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else find_spec(name, *a))
    result = invoke(runner, ["evaluate", "--real", sets["real"], "--fake", sets["fake"],
                             "--plot", tmp_path / "roc.png", *FAST])
    assert result.exit_code == EXIT_USAGE
    assert "aigdetect[plot]" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("target", ["an input image", "an existing file", "an input folder"])
def test_plot_never_replaces_a_file_or_lands_among_the_images(
        runner: CliRunner, sets: dict[str, Path], tmp_path: Path, target: str) -> None:
    image = next(p for p in sorted(sets["real"].iterdir()) if p.is_file())
    existing = tmp_path / "old.png"
    existing.write_bytes(b"earlier work")
    plot = {"an input image": image, "an existing file": existing,
            "an input folder": sets["real"] / "roc.png"}[target]
    before = plot.read_bytes() if plot.exists() else None
    result = invoke(runner, ["evaluate", "--real", sets["real"], "--fake", sets["fake"],
                             "--plot", plot, *FAST])
    assert result.exit_code == EXIT_USAGE
    assert result.stdout == ""  # refused before any scoring
    assert (plot.read_bytes() if plot.exists() else None) == before


@pytest.mark.parametrize("name", ["no-such-folder/roc.png", "roc.unknown-format"])
def test_bad_plot_path_is_usage_error(runner: CliRunner, sets: dict[str, Path],
                                      tmp_path: Path, name: str) -> None:
    pytest.importorskip("matplotlib")
    result = runner.invoke(app, ["evaluate", "--real", str(sets["real"]), "--fake",
                                 str(sets["fake"]), "--plot", str(tmp_path / name), "-q",
                                 *FAST])
    assert not isinstance(result.exception, Exception), repr(result.exception)
    assert result.exit_code == EXIT_USAGE
    assert "error" in result.stderr
    assert "(-o)" not in result.stderr and "-o folder" not in result.stderr  # it has no -o


def test_matched_processing(runner: CliRunner, sets: dict[str, Path],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    from aigdetect.cli import evaluate as evaluate_cli
    asked: list[str] = []

    def spy(*args: Any, **kwargs: Any) -> Any:
        loaded = load_detector(*args, **kwargs)
        asked.append(loaded.tiles.processing)
        return loaded

    load_detector = evaluate_cli.load_detector
    monkeypatch.setattr(evaluate_cli, "load_detector", spy)
    result = invoke(runner, ["evaluate", "--real", sets["real"], "--fake", sets["fake"],
                             "--matched-processing", "-f", "json", "-q", *FAST])
    assert result.exit_code == EXIT_CLEAN, result.stderr
    assert asked == [CONDITIONS["matched"]]  # the images are scored after the processing
    document = json.loads(result.stdout)
    assert document["matched_processing"] is True
    overall = document["groups"][-1]
    assert overall["name"] == "overall"
    assert (overall["n_real"], overall["n_ai"]) == (3, 3)
    assert 0.0 <= overall["auc"] <= 1.0


@pytest.mark.parametrize("case", ["missing_fake", "only_real", "empty_fake", "bad_format",
                                  "bad_csv_label", "missing_csv"])
def test_usage_errors(runner: CliRunner, sets: dict[str, Path], tmp_path: Path,
                      case: str) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text(f"{sets['real'] / 'r0.jpg'},maybe\n")
    args = {
        "missing_fake": ["--real", sets["real"], "--fake", tmp_path / "no-such-folder"],
        "only_real": ["--real", sets["real"]],
        "empty_fake": ["--real", sets["real"], "--fake", empty],
        "bad_format": ["--real", sets["real"], "--fake", sets["fake"], "--format", "csv"],
        "bad_csv_label": ["--real", sets["real"], "--csv", bad_csv],
        "missing_csv": ["--real", sets["real"], "--csv", tmp_path / "nope.csv"],
    }[case]
    result = invoke(runner, ["evaluate", *args, *FAST])
    assert result.exit_code == EXIT_USAGE, result.stderr
    assert result.stdout == ""
    assert "error" in result.stderr


# ---------------------------------------------------------------------------
# metrics on hand-made records
# ---------------------------------------------------------------------------

def rec(log_likelihood: float | None, threshold: float = -5.0) -> ScanRecord:
    """A one-class record: raw score = the negated log-likelihood, threshold likewise."""
    if log_likelihood is None:
        return ScanRecord(path="broken.jpg", error="empty file (0 bytes)")
    verdict = "ai" if -log_likelihood > -threshold else "real"
    return ScanRecord(path=f"{log_likelihood}.jpg", log_likelihood=log_likelihood,
                      raw_score=-log_likelihood, threshold=-threshold, verdict=verdict)


def test_group_metrics_perfect_separation() -> None:
    real = [rec(-1.0), rec(-2.0), rec(-3.0)]
    ai = [rec(-10.0), rec(-11.0)]
    metrics = group_metrics("fakes", AI_LABEL, real, ai)
    assert metrics.auc == 1.0
    assert metrics.average_precision == 1.0
    assert metrics.accuracy == 1.0
    assert metrics.fpr == 0.0
    assert metrics.tpr == 1.0
    assert (metrics.n_real, metrics.n_ai, metrics.errors) == (3, 2, 0)


def test_group_metrics_reversed() -> None:
    real = [rec(-10.0), rec(-11.0)]
    ai = [rec(-1.0), rec(-2.0), rec(-3.0)]
    metrics = group_metrics("fakes", AI_LABEL, real, ai)
    assert metrics.auc == 0.0
    assert metrics.fpr == 1.0
    assert metrics.tpr == 0.0
    assert metrics.accuracy == 0.0


def test_group_metrics_rates_at_threshold_and_errors() -> None:
    real = [rec(-1.0), rec(-2.0), rec(-6.0), rec(None)]   # one of 3 below -5: FPR 1/3
    ai = [rec(-10.0), rec(-4.0), rec(None), rec(None)]     # one of 2 below -5: TPR 1/2
    metrics = group_metrics("mixed", AI_LABEL, real, ai)
    assert metrics.fpr == pytest.approx(1 / 3)
    assert metrics.tpr == pytest.approx(1 / 2)
    assert metrics.accuracy == pytest.approx(3 / 5)  # 2 real right + 1 ai right
    assert (metrics.n_real, metrics.n_ai, metrics.errors) == (3, 2, 3)
    # AUC: share of (ai, real) pairs where the AI image is less likely than the real one:
    # -10 is below all 3 real, -4 below -1 and -2 only
    assert metrics.auc == pytest.approx(5 / 6)
    # the threshold is each record's own (a --threshold scan carries its value)
    strict = group_metrics("strict", AI_LABEL, [rec(-1.0, threshold=0.0)],
                           [rec(-4.0, threshold=-3.0)])
    assert (strict.fpr, strict.tpr) == (1.0, 1.0)


def test_group_metrics_count_what_the_verdict_says() -> None:
    """Rates count ``ai`` verdicts: a score a hair above its threshold is rounded equal
    to it in the record yet called ai, and a damaged file's capped verdict is not ai."""
    hair_above = ScanRecord(path="a.jpg", raw_score=2.0, threshold=2.0, verdict="ai")
    damaged = ScanRecord(path="d.jpg", raw_score=9.0, threshold=2.0, verdict="uncertain",
                         notes=["damaged: truncated"])
    metrics = group_metrics("reals", REAL_LABEL, [hair_above, damaged], [])
    assert metrics.fpr == 0.5
    assert metrics.review_fpr == 1.0


def test_group_metrics_one_sided() -> None:
    only_real = group_metrics("reals", REAL_LABEL, [rec(-1.0), rec(-9.0)], [])
    assert only_real.auc is None and only_real.average_precision is None
    assert only_real.tpr is None
    assert only_real.fpr == 0.5
    nothing = group_metrics("none", AI_LABEL, [rec(None)], [])
    assert nothing.accuracy is None and nothing.fpr is None and nothing.errors == 1


def test_evaluate_groups_rows() -> None:
    results = {
        "real-a": (REAL_LABEL, [rec(-1.0), rec(-2.0)]),
        "real-b": (REAL_LABEL, [rec(-3.0), rec(None)]),
        "fake-x": (AI_LABEL, [rec(-10.0), rec(-12.0)]),
        "fake-y": (AI_LABEL, [rec(-0.5)]),
    }
    rows = evaluate_groups(results)
    assert [r.name for r in rows] == ["real-a", "real-b", "fake-x", "fake-y", "overall"]
    assert [r.label for r in rows] == ["real", "real", "ai", "ai", "all"]
    by_name = {r.name: r for r in rows}
    assert by_name["fake-x"].auc == 1.0  # against all 3 scored real images
    assert by_name["fake-x"].n_real == 3
    assert by_name["fake-y"].auc == 0.0
    assert by_name["real-b"].errors == 1
    overall = by_name["overall"]
    assert (overall.n_real, overall.n_ai, overall.errors) == (3, 3, 1)
    assert overall.auc == pytest.approx(6 / 9)


@pytest.mark.parametrize("text, says", [
    ("path,label\na.jpg,reel\n", "2: unknown label 'reel'"),
    ("file,label\na.jpg,real\n", "1: neither the header 'path,label,group'"),
    ("only-a-path\n", "1: one column ('only-a-path')")])
def test_a_bad_csv_row_is_named_in_its_own_words(tmp_path: Path, text: str, says: str) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text(text)
    with pytest.raises(ValueError, match="expected 'path,label") as error:
        files_from_csv(labels)
    assert says in str(error.value)


def test_a_group_name_given_to_both_labels_keeps_both(tmp_path: Path) -> None:
    """A CSV's ``faces`` group for real and for AI faces: keyed by name alone, one class
    replaced the other and its images vanished from every number, without a word."""
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label,group\nr1.jpg,real,faces\na1.png,ai,faces\n"
                      "r2.jpg,real,photos\na2.png,ai,faces\n")
    sets = labelled_sets(files_from_csv(labels))
    assert [(s.name, s.label, len(s.paths)) for s in sets] == [
        ("labels.csv:faces (real)", REAL_LABEL, 1), ("labels.csv:faces (ai)", AI_LABEL, 2),
        ("labels.csv:photos", REAL_LABEL, 1)]


def test_read_label_csv(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("a.jpg,real\nsub/b.png,1\n/abs/c.jpg,FAKE\n\nd.jpg,0\ne.png,Generated\n"
                      "f.png,ai\n")
    groups = {g.label: g for g in labelled_sets(files_from_csv(labels))}
    assert groups[REAL_LABEL].paths == [tmp_path / "a.jpg", tmp_path / "d.jpg"]
    assert groups[AI_LABEL].paths == [tmp_path / "sub" / "b.png", Path("/abs/c.jpg"),
                                      tmp_path / "e.png", tmp_path / "f.png"]
    assert groups[REAL_LABEL].name == "labels.csv:real"
    bad = tmp_path / "bad.csv"
    bad.write_text("only-a-path\n")
    with pytest.raises(ValueError):
        files_from_csv(bad)
    excel = tmp_path / "excel.csv"  # Excel's "CSV UTF-8": a byte-order mark, CRLF
    excel.write_bytes("path,label\r\nä.jpg,real\r\n".encode("utf-8-sig"))
    assert files_from_csv(excel) == [LabelledFile(str(tmp_path / "ä.jpg"), REAL, "excel.csv:real")]


@pytest.mark.parametrize(("content", "said"), [
    ("path,label\na.jpg,real\ncaf\xe9.jpg,ai\n".encode("latin-1"),
     "bad.csv:3: not UTF-8 (byte 0xe9); save the CSV as UTF-8"),
    (b"path,label\na.jpg,real\n\x00\x00", "bad.csv:3: a NUL byte"),
    (b"path,label\na.jpg,real\nsub,ai\n", "bad.csv:3: sub is a folder"),
])
def test_a_label_csv_that_cannot_be_read_says_where(tmp_path: Path, content: bytes,
                                                    said: str) -> None:
    """Named by file and line, in words that say what to do; not a codec's message."""
    (tmp_path / "sub").mkdir()
    bad = tmp_path / "bad.csv"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match=re.escape(said)):
        files_from_csv(bad)


def test_rank_auc_is_roc_auc() -> None:
    rng = np.random.default_rng(0)
    positive, negative = rng.normal(1, 1, 40).round(1), rng.normal(0, 1, 60).round(1)
    labels = np.r_[np.ones(40), np.zeros(60)]
    assert rank_auc(positive, negative) == pytest.approx(
        roc_auc_score(labels, np.r_[positive, negative]))


def test_mean_pair_auc_interval_holds_the_value_and_narrows_with_more_images() -> None:
    def results(n: int) -> dict[str, tuple[str, list[ScanRecord]]]:
        rng = np.random.default_rng(n)

        def records(mean: float) -> list[ScanRecord]:
            return [ScanRecord(path=f"{i}.png", raw_score=float(x))
                    for i, x in enumerate(rng.normal(mean, 1, n))]
        return {"cams": (REAL_LABEL, records(0.0)), "web": (REAL_LABEL, records(0.5)),
                "gen": (AI_LABEL, records(1.0)), "empty": (AI_LABEL, [])}

    small, large = mean_pair_auc(results(30)), mean_pair_auc(results(600))
    assert small["pairs"] == 2 and small["resamples"] > 0
    for mean in (small, large):
        low, high = mean["ci95"]
        assert low < mean["value"] < high
    assert large["ci95"][1] - large["ci95"][0] < small["ci95"][1] - small["ci95"][0]
    assert mean_pair_auc(results(30)) == small  # seeded: the same interval every run
    assert mean_pair_auc({"cams": (REAL_LABEL, [])}) is None


def test_the_interval_resamples_every_group_at_the_stated_percentiles() -> None:
    """Against one real image only the AI images can vary (and the reverse): each side
    must be resampled. The interval is the 2.5th and 97.5th percentiles of the means."""
    rng = np.random.default_rng(5)
    many = list(rng.normal(0, 1, 30))
    for one_side in (AI_LABEL, REAL_LABEL):
        other = REAL_LABEL if one_side == AI_LABEL else AI_LABEL
        results = {"one": (one_side, scored("o", [0.1])), "many": (other, scored("m", many))}
        low, high = mean_pair_auc(results)["ci95"]
        assert high - low > 0.1, one_side
    results = {"cams": (REAL_LABEL, scored("c", many[:12])),
               "web": (REAL_LABEL, scored("w", many[12:])),
               "gen": (AI_LABEL, scored("g", list(rng.normal(0.7, 1, 9))))}
    real = [np.array(many[:12]), np.array(many[12:])]
    ai = [np.array([r.raw_score for r in results["gen"][1]])]
    draws, draw = [], np.random.default_rng(0)  # mean_pair_auc's seed and order of draws
    for _ in range(1000):
        ais = [draw.choice(a, len(a)) for a in ai]
        reals = [draw.choice(r, len(r)) for r in real]
        draws.append(np.mean([rank_auc(a, r) for a in ais for r in reals]))
    assert mean_pair_auc(results)["ci95"] == pytest.approx(list(np.percentile(draws, [2.5, 97.5])))


def test_the_paired_interval_resamples_the_real_images_too() -> None:
    """One AI image, thirty real ones scored differently by the two detectors: only
    resampling the real images can move the difference."""
    rng = np.random.default_rng(6)
    real = list(rng.normal(0, 1, 30))
    first = {"cams": (REAL_LABEL, scored("c", real)), "gen": (AI_LABEL, scored("g", [0.0]))}
    second = {"cams": (REAL_LABEL, scored("c", list(np.array(real) + rng.normal(0, 1, 30)))),
              "gen": (AI_LABEL, scored("g", [0.0]))}
    low, high = paired_difference(first, second)["ci95"]
    assert high - low > 0.05


def test_review_rates_count_uncertain_and_pairs_use_their_own_real_group() -> None:
    uncertain = ScanRecord(path="u.png", raw_score=1.0, threshold=2.0, verdict="uncertain")
    row = group_metrics("gen", AI_LABEL, [rec(-1.0)], [uncertain])
    assert (row.tpr, row.review_tpr) == (0.0, 1.0)
    real_side = group_metrics("cams", REAL_LABEL, [uncertain], [])
    assert (real_side.fpr, real_side.review_fpr) == (0.0, 1.0)
    results = {"real-a": (REAL_LABEL, [rec(-1.0), rec(-2.0)]),
               "real-b": (REAL_LABEL, [rec(-3.0)]),
               "fake-y": (AI_LABEL, [rec(-2.5)])}
    pairs = {(p["ai"], p["real"]): p for p in pair_metrics(results)}
    # raw scores: real-a 1 and 2, real-b 3, fake-y 2.5
    assert (pairs[("fake-y", "real-a")]["n_real"], pairs[("fake-y", "real-a")]["auc"]) == (2, 1.0)
    assert (pairs[("fake-y", "real-b")]["n_real"], pairs[("fake-y", "real-b")]["auc"]) == (1, 0.0)


def scored(prefix: str, scores: list[float | None]) -> list[ScanRecord]:
    """Records of files ``prefix0.png``, ``prefix1.png``... with these raw scores."""
    return [ScanRecord(path=f"{prefix}{i}.png", raw_score=score)
            for i, score in enumerate(scores)]


def test_paired_difference_of_a_detector_with_itself_is_exactly_zero() -> None:
    rng = np.random.default_rng(1)
    results = {"cams": (REAL_LABEL, scored("c", list(rng.normal(0, 1, 40)))),
               "gen": (AI_LABEL, scored("g", list(rng.normal(0.5, 1, 40))))}
    same = paired_difference(results, results)
    assert same["value"] == 0.0 and same["ci95"] == [0.0, 0.0]
    assert same["images"] == 80
    # separately each interval is wide; paired, what both share cancels
    alone = mean_pair_auc(results)
    assert alone["ci95"][1] - alone["ci95"][0] > 0.1


def test_paired_difference_tells_a_small_consistent_gain() -> None:
    """A detector that ranks like the baseline plus a little more signal: the
    separate intervals overlap, the paired one lies above zero."""
    rng = np.random.default_rng(2)
    noise_real, noise_ai = rng.normal(0, 1, 150), rng.normal(0, 1, 150)
    baseline = {"cams": (REAL_LABEL, scored("c", list(noise_real))),
                "gen": (AI_LABEL, scored("g", list(noise_ai + 0.5)))}
    better = {"cams": (REAL_LABEL, scored("c", list(noise_real))),
              "gen": (AI_LABEL, scored("g", list(noise_ai + 0.5 + 0.3 * (noise_ai < 0))))}
    difference = paired_difference(better, baseline)
    expected = mean_pair_auc(better)["value"] - mean_pair_auc(baseline)["value"]
    assert difference["value"] == pytest.approx(expected)
    low, high = difference["ci95"]
    assert 0 < low <= difference["value"] <= high
    assert mean_pair_auc(better)["ci95"][0] < mean_pair_auc(baseline)["ci95"][1]
    assert paired_difference(baseline, better)["value"] == pytest.approx(-expected)


def test_paired_difference_counts_only_files_both_scored() -> None:
    results = {"cams": (REAL_LABEL, scored("c", [0.0, 1.0, 2.0])),
               "gen": (AI_LABEL, scored("g", [3.0, 0.5, None]))}
    baseline = {"cams": (REAL_LABEL, scored("c", [0.0, 1.0, None])),
                "gen": (AI_LABEL, scored("g", [3.0, 0.5, 9.0])),
                "other": (AI_LABEL, scored("o", [1.0]))}
    difference = paired_difference(results, baseline)
    assert difference["images"] == 4  # c0, c1, g0, g1: scored by both
    # on those four files both detectors give the same scores
    assert difference["value"] == 0.0
    assert paired_difference({"cams": (REAL_LABEL, scored("c", [1.0]))}, baseline) is None


def test_an_evaluation_of_nothing_exits_3(runner: CliRunner, tmp_path: Path) -> None:
    """Every listed file missing: no metric exists, and a pipeline must not read exit 0."""
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\nmoved-1.jpg,real\nmoved-2.jpg,ai\n")
    result = invoke(runner, ["evaluate", "--csv", labels, "-f", "json", *FAST])
    assert result.exit_code == EXIT_UNREADABLE
    assert "moved-1.jpg" in result.stderr and "nothing was measured" in result.stderr


def test_benchmark_counts_each_unreadable_file_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every AI row holds all the real records: summing the rows' errors counted one
    unreadable real photo once per AI family, plus its own row."""
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))  # detection.py imports shared_splits
    detection = load_benchmark("detection")
    results = {"real-a": (REAL_LABEL, [rec(-1.0), rec(None)]),
               "real-b": (REAL_LABEL, [rec(-3.0)]),
               "fake-x": (AI_LABEL, [rec(-10.0)]), "fake-y": (AI_LABEL, [rec(-0.5)]),
               "fake-z": (AI_LABEL, [rec(2.0)])}
    groups = [asdict(row) for row in evaluate_groups(results)]
    summary = detection.summarise({"groups": groups, "mean_pair_auc": None, "pairs": []})
    assert summary["errors"] == 1


def test_benchmark_lists_images_by_absolute_path(monkeypatch: pytest.MonkeyPatch,
                                                 tmp_path: Path) -> None:
    """The image list is a CSV that evaluate reads relative to its own folder: a relative
    --test-dir with --out elsewhere named files that did not exist there."""
    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))
    detection = load_benchmark("detection")
    for label, group in (("real", "cams"), ("ai", "gen")):
        (tmp_path / "td" / label / group).mkdir(parents=True)
        (tmp_path / "td" / label / group / "x.jpg").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    rows = detection.test_sets(Path("td"), None, 0)
    assert [(Path(path), label, group) for path, label, group in rows] == [
        (tmp_path / "td" / "real" / "cams" / "x.jpg", "real", "cams"),
        (tmp_path / "td" / "ai" / "gen" / "x.jpg", "ai", "gen")]


def test_quiet_still_names_a_file_it_could_not_score(runner: CliRunner,
                                                     sets: dict[str, Path]) -> None:
    """-q hides progress, not the one line that says which input the metrics lack."""
    result = invoke(runner, ["evaluate", "--real", sets["real"], "--fake", sets["fake"],
                             "-f", "json", "-q", *FAST])
    assert result.exit_code == EXIT_CLEAN, result.stderr
    assert "broken.jpg" in result.stderr


def test_decoding_limits_are_options_as_in_scan(runner: CliRunner, sets: dict[str, Path],
                                                tmp_path: Path) -> None:
    """The error of an image over a limit names the option that raises it, and evaluate
    has that option (a panorama over the default 250 MP can be measured)."""
    real = tmp_path / "real"
    shutil.copytree(sets["real"], real)
    noise_jpeg(real / "big.jpg", size=(1600, 1000), seed=7)  # 1.6 MP
    args = ["evaluate", "--real", real, "--fake", sets["fake"], "-f", "json", *FAST]
    capped = invoke(runner, [*args, "--max-pixels", "1"])
    assert capped.exit_code == EXIT_CLEAN, capped.stderr
    assert json.loads(capped.stdout)["groups"][0]["errors"] == 2  # broken.jpg and big.jpg
    raised = invoke(runner, [*args, "--max-pixels", "2"])
    assert json.loads(raised.stdout)["groups"][0]["errors"] == 1  # broken.jpg only
