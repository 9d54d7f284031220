"""Output: rich tables for people, JSON / JSONL / CSV for machines.

Only results go to the stream given here (stdout by default); the CLI keeps
progress and logs on stderr, so ``aigdetect scan ... --format json | jq`` works.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__
from .detectors import WEIGHT_FILES
from .evaluation import GroupMetrics
from .files import atomic_write, unicode_safe
from .provenance import short_summary
from .scanning import NO_FACE, ScanRecord

SCHEMA_VERSION = 2
FORMATS = ("table", "json", "jsonl", "csv")
#: Weight hashes of a record's model, flattened into CSV columns.
MODEL_HASHES = tuple(WEIGHT_FILES)
#: The face detector's weights (``scan --faces``; empty otherwise), after every other
#: column so that the earlier ones keep their places.
FACE_MODEL_HASHES = tuple(f"faces_{key}" for key in WEIGHT_FILES)
CSV_COLUMNS = (
    "path", "sha256", "format", "width", "height", "score", "raw_score", "threshold",
    "verdict", "percentile", "log_likelihood", "oneclass_score", "binary_score", "residual_score",
    "patches",
    "elapsed_ms", "detector", "model_name", "model_version", *MODEL_HASHES, "notes", "error",
    "size", "mtime_ns", "provenance", "faces", "image_score", *FACE_MODEL_HASHES,
)
#: A cell starting so is run as a formula by spreadsheets (CSV injection): such text
#: gets a leading apostrophe, which spreadsheets show as text and do not display.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_VERDICT_STYLE = {"ai": "bold red", "uncertain": "yellow", "real": "green", "error": "magenta",
                  NO_FACE: "dim"}
VERDICTS = tuple(_VERDICT_STYLE)
#: C0 and C1 control characters (terminal escape sequences start with one) and the
#: bidirectional overrides that can make a name display as another.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` safe to show: undecodable bytes as ``\\xNN`` (see ``unicode_safe``)
    and control characters visibly escaped (``\\x1b``, ``\\u202e``).

    File names are attacker-controlled: a name holding an escape sequence must not
    reach a terminal raw (through the table, or ``cat results.csv``).
    """
    return _UNPRINTABLE.sub(_escape_char, unicode_safe(text))


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def record_json(record: ScanRecord) -> dict[str, Any]:
    """A record as JSON-ready data: text fields made valid Unicode (``unicode_safe``;
    JSON itself escapes control characters), so strict parsers accept every line."""
    data = record.to_dict()
    for key in ("path", "error"):
        if data[key] is not None:
            data[key] = unicode_safe(data[key])
    data["notes"] = [unicode_safe(note) for note in data["notes"]]
    return data


def dumps(data: Any, **options: Any) -> str:
    """``json.dumps`` that refuses NaN and infinity (which are not JSON) rather than
    writing a file other tools cannot read."""
    return json.dumps(data, allow_nan=False, **options)


def ranked(records: Sequence[ScanRecord]) -> list[ScanRecord]:
    """Most suspicious first (highest raw score); then the unscored by path: images
    without a face (``--faces``), and unreadable files last."""
    scored = sorted((r for r in records if r.raw_score is not None),
                    key=lambda r: (-r.raw_score, r.path))
    unscored = sorted((r for r in records if r.raw_score is None),
                      key=lambda r: (r.verdict == "error", r.path))
    return scored + unscored


def summary(records: Sequence[ScanRecord]) -> dict[str, Any]:
    counts = Counter(r.verdict for r in records)
    return {"files": len(records), **{v: counts.get(v, 0) for v in VERDICTS}}


def _size(record: ScanRecord) -> str:
    return f"{record.width}x{record.height}" if record.width else "-"


def scan_table(records: Sequence[ScanRecord], detector: str | None = None) -> Table:
    """Ranked table; a fused scan adds one column per component's score. ``detector``
    (the run's) names it when no record does: an empty folder was still scanned by one."""
    detectors = sorted({r.detector for r in records if r.detector}) or [detector or "-"]
    title = f"aigdetect scan, detector {', '.join(detectors)} (most suspicious first)"
    table = Table(title=title, title_justify="left")
    components = sorted({name for r in records if len(r.components) > 1 for name in r.components})
    table.add_column("path", overflow="fold")
    table.add_column("score", justify="right")
    table.add_column("verdict")
    for name in components:
        table.add_column(name, justify="right")
    table.add_column("real pct", justify="right")
    face_mode = any(r.faces is not None for r in records)
    if face_mode:
        table.add_column("faces", justify="right")
        table.add_column("whole image", justify="right")
    table.add_column("size", justify="right")
    table.add_column("note", overflow="fold")
    metadata = any(r.provenance is not None for r in records)
    if metadata:
        table.add_column("metadata (a lead, not proof)", overflow="fold")
    for r in ranked(records):
        verdict = Text(r.verdict, style=_VERDICT_STYLE.get(r.verdict, ""))
        parts = [_fmt(r.components.get(name, {}).get("score")) for name in components]
        percentile = f"{r.percentile:.1f}" if r.percentile is not None else "-"
        note = r.error or "; ".join(r.notes)
        # Text, not str: a name like "a[/b].jpg" is not rich markup
        faces = [_face_count(r), _whole_image(r)] if face_mode else []
        table.add_row(Text(printable(r.path)), _fmt(r.score), verdict, *parts, percentile,
                      *faces, _size(r), Text(printable(note)),
                      *([Text(printable(_provenance(r) or "-"))] if metadata else []))
    return table


def _face_count(record: ScanRecord) -> str:
    return "-" if record.faces is None else str(len(record.faces))


def _image_score(record: ScanRecord) -> float | None:
    """Face mode: the general detector's score of the whole image."""
    return None if record.image is None else record.image.get("score")


def _whole_image(record: ScanRecord) -> Text:
    """Face mode: the general detector's score and verdict of the whole image, so that
    an image it calls ``ai`` is seen even where no face is suspicious."""
    verdict = None if record.image is None else record.image.get("verdict")
    if verdict is None:
        return Text(_fmt(_image_score(record)))
    return Text.assemble(f"{_fmt(_image_score(record))} ",
                         (verdict, _VERDICT_STYLE.get(verdict, "")))


def _provenance(record: ScanRecord) -> str | None:
    """The metadata findings in one cell (``scan --provenance``), or None."""
    return None if record.provenance is None else short_summary(record.provenance)


def _csv_row(record: ScanRecord) -> dict[str, Any]:
    data = record.to_dict()
    model = data.pop("model") or {}
    components = data.pop("components") or {}
    data.update(model_name=model.get("name"), model_version=model.get("version"),
                **{key: model.get(key) for key in (*MODEL_HASHES, *FACE_MODEL_HASHES)},
                oneclass_score=components.get("oneclass", {}).get("score"),
                binary_score=components.get("binary", {}).get("score"),
                residual_score=components.get("residual", {}).get("score"),
                notes="; ".join(record.notes), provenance=_provenance(record),
                faces=None if record.faces is None else len(record.faces),
                image_score=_image_score(record))
    row = {column: data.get(column) for column in CSV_COLUMNS}
    return {key: spreadsheet_safe(printable(value)) if isinstance(value, str) else value
            for key, value in row.items()}


def spreadsheet_safe(text: str) -> str:
    """``text`` as a CSV cell no spreadsheet runs as a formula (a file named
    ``=HYPERLINK(...).jpg`` is evidence, not a command)."""
    return f"'{text}" if text.startswith(_FORMULA_START) else text


def write_jsonl_record(record: ScanRecord, stream: IO[str]) -> None:
    """One record per line, written as soon as it is scored (streaming)."""
    stream.write(dumps(record_json(record)) + "\n")
    stream.flush()


def write_scan(records: Sequence[ScanRecord], fmt: str, stream: IO[str],
               interrupted: bool = False, run: dict[str, Any] | None = None) -> None:
    """Write all records in one of the non-streaming formats (table, JSON, CSV), ranked;
    JSONL streams record by record (:func:`write_jsonl_record`).

    ``interrupted`` (Ctrl-C) marks the results as partial in the table and in JSON
    (``"interrupted": true``), so a file read later does not pass for a whole scan.
    ``run`` (the run header, see :func:`aigdetect.custody.run_header`) goes into JSON as ``"run"``.
    """
    if fmt == "table":
        # a pipe or file gets wide rows rather than folded paths
        console = Console(file=stream, width=None if stream.isatty() else 200)
        console.print(scan_table(records, run["detector"] if run is not None else None))
        if interrupted:  # the file must not pass for a whole scan; the counts go to stderr
            console.print("interrupted: partial results")
    elif fmt == "json":
        document = {"schema_version": SCHEMA_VERSION, "aigdetect_version": __version__,
                    **({"interrupted": True} if interrupted else {}),
                    **({"run": run} if run is not None else {}),
                    "summary": summary(records),
                    "results": [record_json(r) for r in ranked(records)]}
        stream.write(dumps(document, indent=2))
        stream.write("\n")
    elif fmt == "csv":
        writer = csv.DictWriter(stream, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for record in ranked(records):
            writer.writerow(_csv_row(record))
    else:
        raise ValueError(f"not a format written at the end: {fmt!r}; choose table, json or csv")


def run_file(output: Path) -> Path:
    """Where the run header of a JSONL or CSV results file goes: ``FILE.run.json``."""
    return output.with_name(output.name + ".run.json")


def write_run_file(path: Path, run: dict[str, Any], earlier: list[dict[str, Any]]) -> None:
    """Write a run header file atomically: a kill leaves the old one or none."""
    document = {"schema_version": SCHEMA_VERSION, "run": run, "earlier_runs": earlier}
    with atomic_write(path) as temporary:
        temporary.write_text(dumps(document, indent=2) + "\n", encoding="utf-8")


def read_run_file(path: Path) -> list[dict[str, Any]]:
    """The run headers a run file holds, oldest first (for a resumed run to keep)."""
    document = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or not isinstance(document.get("run"), dict):
        raise ValueError("not an aigdetect run file")
    return [*document.get("earlier_runs", []), document["run"]]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def evaluation_table(rows: Sequence[GroupMetrics], threshold_note: str) -> Table:
    # group names and model paths come from the user's files: shown, never interpreted
    table = Table(title=Text(printable(f"aigdetect evaluate (AI = positive class; "
                                       f"{threshold_note})")), title_justify="left")
    for column in ("group", "label", "real", "ai", "errors", "AUC", "AP", "accuracy",
                   "FPR", "TPR", "FPR+unc.", "TPR+unc."):
        table.add_column(column, justify="left" if column in ("group", "label") else "right",
                         overflow="fold")
    for row in rows:
        table.add_row(Text(printable(row.name)), row.label, str(row.n_real), str(row.n_ai),
                      str(row.errors),
                      _fmt(row.auc), _fmt(row.average_precision), _fmt(row.accuracy),
                      _fmt(row.fpr), _fmt(row.tpr), _fmt(row.review_fpr),
                      _fmt(row.review_tpr), end_section=row.name == rows[-2].name
                      if len(rows) > 1 else False)
    return table


def baseline_line(compared: dict[str, Any]) -> str:
    """One line saying how the evaluated detector compares with ``--baseline``'s."""
    difference, base = compared["difference"], compared["mean_pair_auc"]
    low, high = difference["ci95"]
    verdict = ("better" if low > 0 else "worse" if high < 0
               else "no difference these images can tell")
    return (f"against the baseline {compared['model']['name']} ({compared['detector']}, mean "
            f"pair AUC {base['value']:.3f}): {difference['value']:+.3f} (95 % paired bootstrap "
            f"interval {low:+.3f} to {high:+.3f}; {verdict})")


def write_evaluation(rows: Sequence[GroupMetrics], fmt: str, stream: IO[str],
                     threshold_note: str, extra: dict[str, Any]) -> None:
    if fmt == "json":
        stream.write(dumps({"schema_version": SCHEMA_VERSION, "aigdetect_version": __version__,
                            "positive_class": "ai", **extra,
                            "groups": [row.to_dict() for row in rows]}, indent=2))
        stream.write("\n")
    else:
        console = Console(file=stream, width=None if stream.isatty() else 200)
        console.print(evaluation_table(rows, threshold_note))
        mean = extra.get("mean_pair_auc")
        if mean:
            low, high = mean["ci95"]
            console.print(f"mean AUC over the {mean['pairs']} (AI group, real group) pairs: "
                          f"{mean['value']:.3f} (95 % bootstrap interval {low:.3f}-{high:.3f})",
                          markup=False)
        compared = extra.get("baseline")
        if compared and compared["difference"]:
            console.print(printable(baseline_line(compared)), markup=False)
