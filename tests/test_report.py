"""Output formats of aigdetect.report on hand-made records (no network involved)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from aigdetect.evaluation import GroupMetrics
from aigdetect.report import (
    CSV_COLUMNS,
    FORMATS,
    SCHEMA_VERSION,
    ranked,
    summary,
    write_evaluation,
    write_jsonl_record,
    write_scan,
)
from aigdetect.scanning import ScanRecord

#: Every key of a scan record, as documented (README JSON schema).
RECORD_KEYS = {
    "path", "sha256", "format", "width", "height", "score", "raw_score", "threshold",
    "verdict", "percentile", "log_likelihood", "patches", "elapsed_ms", "detector",
    "components", "model", "notes", "error",
}
MODEL_KEYS = {"name", "version", "extractor_sha256", "density_sha256"}
MODEL = {"name": "default", "version": "0.1.0", "extractor_sha256": "e" * 64,
         "density_sha256": "d" * 64}


def scored(path: str, log_likelihood: float, verdict: str, score: float) -> ScanRecord:
    """A one-class record (raw score = the negated log-likelihood)."""
    return ScanRecord(path=path, sha256="a" * 64, format="JPEG", width=256, height=192,
                      score=score, raw_score=-log_likelihood, log_likelihood=log_likelihood,
                      threshold=50.0, verdict=verdict, percentile=12.5, patches=4,
                      elapsed_ms=3.2, detector="oneclass", model=dict(MODEL),
                      notes=["a note", "another"])


@pytest.fixture
def records() -> list[ScanRecord]:
    return [
        scored("b.jpg", -40.0, "real", 0.2),
        ScanRecord(path="zz_broken.jpg", error="empty file (0 bytes)", model=dict(MODEL)),
        scored("a.jpg", -90.0, "ai", 0.99),
        ScanRecord(path="aa_missing.jpg", error="no such file or folder"),
        scored("c.png", -50.5, "uncertain", 0.55),
        scored("d.png", -90.0, "ai", 0.99),  # ties with a.jpg: broken by path
    ]


def test_ranked_highest_raw_score_first_errors_last(records: list[ScanRecord]) -> None:
    order = [r.path for r in ranked(records)]
    assert order == ["a.jpg", "d.png", "c.png", "b.jpg", "aa_missing.jpg", "zz_broken.jpg"]
    # scores saturate far above the threshold; the raw score still ranks
    saturated = [ScanRecord(path="a.jpg", score=0.999999, raw_score=5.0),
                 ScanRecord(path="b.jpg", score=0.999999, raw_score=9.0)]
    assert [r.path for r in ranked(saturated)] == ["b.jpg", "a.jpg"]
    no_face = ScanRecord(path="zz_no_face.jpg", verdict="no-face")  # --faces: read, unscored
    order = [r.path for r in ranked([*records, no_face])]
    assert order[-3:] == ["zz_no_face.jpg", "aa_missing.jpg", "zz_broken.jpg"]
    assert len(ranked(records)) == len(records)
    assert ranked([]) == []


def test_summary_counts(records: list[ScanRecord]) -> None:
    assert summary(records) == {"files": 6, "ai": 2, "uncertain": 1, "real": 1, "error": 2,
                                "no-face": 0}
    assert summary([]) == {"files": 0, "ai": 0, "uncertain": 0, "real": 0, "error": 0,
                           "no-face": 0}


def test_record_defaults() -> None:
    record = ScanRecord(path="x.jpg")
    assert record.verdict == "error"
    assert record.detector is None and record.components == {}
    assert set(record.to_dict()) >= RECORD_KEYS


def test_json_document(records: list[ScanRecord]) -> None:
    stream = io.StringIO()
    write_scan(records, "json", stream)
    document = json.loads(stream.getvalue())
    assert document["schema_version"] == SCHEMA_VERSION
    assert isinstance(document["aigdetect_version"], str)
    assert document["summary"] == summary(records)
    results = document["results"]
    assert [r["path"] for r in results] == [r.path for r in ranked(records)]
    for result in results:
        assert set(result) >= RECORD_KEYS  # new fields may be added
        assert isinstance(result["model"], dict)
        assert isinstance(result["notes"], list)
    first = results[0]
    assert set(first["model"]) == MODEL_KEYS
    assert first["model"] == MODEL
    assert (first["width"], first["height"], first["patches"]) == (256, 192, 4)
    assert first["log_likelihood"] == -90.0
    assert first["error"] is None
    broken = results[-1]
    assert broken["verdict"] == "error"
    assert broken["error"] == "empty file (0 bytes)"
    assert broken["score"] is None and broken["log_likelihood"] is None


def test_csv_cells_are_never_spreadsheet_formulas() -> None:
    """A file may be named like a formula; its cell must stay text, its numbers numbers."""
    records = [ScanRecord(path="=HYPERLINK(\"http://x\").jpg", raw_score=-2.5, score=0.1,
                          verdict="real", notes=["@import"],
                          model={"faces_density_sha256": "f" * 64}),
               ScanRecord(path="-rf.png", error="+1 formula")]
    stream = io.StringIO()
    write_scan(records, "csv", stream)
    rows = {row["path"]: row for row in csv.DictReader(io.StringIO(stream.getvalue()))}
    formula = rows["'=HYPERLINK(\"http://x\").jpg"]
    assert formula["notes"] == "'@import" and formula["raw_score"] == "-2.5"
    assert formula["faces_density_sha256"] == "f" * 64
    assert rows["'-rf.png"]["error"] == "'+1 formula"


def test_csv(records: list[ScanRecord]) -> None:
    stream = io.StringIO()
    write_scan(records, "csv", stream)
    text = stream.getvalue()
    rows = list(csv.reader(io.StringIO(text)))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 1 + len(records)
    table = list(csv.DictReader(io.StringIO(text)))
    assert [row["path"] for row in table] == [r.path for r in ranked(records)]
    first = table[0]
    assert first["model_name"] == "default"
    assert first["extractor_sha256"] == "e" * 64
    assert first["density_sha256"] == "d" * 64
    assert first["notes"] == "a note; another"
    assert float(first["log_likelihood"]) == -90.0
    assert table[-1]["verdict"] == "error"
    assert table[-1]["error"] == "empty file (0 bytes)"
    assert table[-1]["score"] == ""
    # a record without model information still gives a full row
    missing = next(row for row in table if row["path"] == "aa_missing.jpg")
    assert missing["model_name"] == ""


def test_jsonl_one_object_per_line(records: list[ScanRecord]) -> None:
    stream = io.StringIO()
    for record in records:
        write_jsonl_record(record, stream)
    lines = stream.getvalue().splitlines()
    assert len(lines) == len(records)
    objects = [json.loads(line) for line in lines]
    # streamed: input order, not ranked
    assert [o["path"] for o in objects] == [r.path for r in records]
    assert all(set(o) >= RECORD_KEYS for o in objects)
    single = io.StringIO()
    write_jsonl_record(records[0], single)
    assert single.getvalue().endswith("\n")
    assert single.getvalue().count("\n") == 1
    assert json.loads(single.getvalue()) == records[0].to_dict()


def test_table(records: list[ScanRecord]) -> None:
    stream = io.StringIO()
    write_scan(records, "table", stream)
    text = stream.getvalue()
    for needle in ("path", "score", "verdict", "a.jpg", "zz_broken.jpg", "empty file (0 bytes)"):
        assert needle in text
    assert "files:" not in text  # the counts are a summary: stderr's, not the results'
    partial = io.StringIO()
    write_scan(records, "table", partial, interrupted=True)
    assert partial.getvalue().rstrip().endswith("interrupted: partial results")
    assert text.index("a.jpg") < text.index("b.jpg") < text.index("zz_broken.jpg")


def test_face_table_shows_the_whole_images_verdict() -> None:
    """--faces: the summary counts face verdicts, so the table must show where the general
    detector calls the whole image ai while its face looks real."""
    record = scored("portrait.jpg", -40.0, "real", 0.07)
    record.faces = [{"box": [0, 0, 64, 64], "score": 0.07, "verdict": "real"}]
    record.image = {"score": 0.501, "verdict": "ai", "detector": "residual"}
    stream = io.StringIO()
    write_scan([record], "table", stream)
    row = next(line for line in stream.getvalue().splitlines() if "portrait.jpg" in line)
    assert "0.501 ai" in row


def test_unknown_format_rejected(records: list[ScanRecord]) -> None:
    assert set(FORMATS) == {"table", "json", "jsonl", "csv"}
    with pytest.raises(ValueError):
        write_scan(records, "xml", io.StringIO())


def test_write_evaluation_json_and_table() -> None:
    rows = [
        GroupMetrics("fakes", "ai", 3, 2, 0, 1.0, 1.0, 0.8, 0.0, 0.5),
        GroupMetrics("reals", "real", 3, 0, 1, None, None, 1.0, 0.0, None),
        GroupMetrics("overall", "all", 3, 2, 1, 1.0, 1.0, 0.8, 0.0, 0.5),
    ]
    stream = io.StringIO()
    write_evaluation(rows, "json", stream, "note", {"threshold": -5.0,
                                                    "matched_processing": False})
    document = json.loads(stream.getvalue())
    assert document["positive_class"] == "ai"
    assert document["schema_version"] == SCHEMA_VERSION
    assert document["threshold"] == -5.0
    assert document["matched_processing"] is False
    assert [g["name"] for g in document["groups"]] == ["fakes", "reals", "overall"]
    assert document["groups"][1]["auc"] is None
    assert set(document["groups"][0]) >= {
        "name", "label", "n_real", "n_ai", "errors", "auc", "average_precision", "accuracy",
        "fpr", "tpr"}
    table = io.StringIO()
    write_evaluation(rows, "table", table, "threshold note", {})
    text = table.getvalue()
    for needle in ("AUC", "AP", "FPR", "TPR", "fakes", "reals", "1.000", "0.500"):
        assert needle in text
    # (full group names in a narrow table: see test_evaluate_cli.py)


def test_evaluation_table_shows_group_names_literally() -> None:
    """Group names are folder names or CSV cells: never markup, never raw escapes."""
    rows = [GroupMetrics("grp[/]", "real", 3, 0, 0, None, None, 1.0, 0.0, None),
            GroupMetrics("[bold]x\x1b[31m", "ai", 3, 2, 0, 1.0, 1.0, 0.8, 0.0, 0.5),
            GroupMetrics("overall", "all", 3, 2, 0, 1.0, 1.0, 0.8, 0.0, 0.5)]
    table = io.StringIO()
    write_evaluation(rows, "table", table, "model [red]m[/]", {})
    text = table.getvalue()
    assert "grp[/]" in text and "[bold]x\\x1b[31m" in text and "[red]m[/]" in text
    assert "\x1b" not in text
