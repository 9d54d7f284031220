"""Continuing a JSONL scan (``scan -f jsonl -o FILE --resume``) after it stopped.

A long scan over evidence may be killed (Ctrl-C, a reboot, an out-of-memory
kill). JSONL results are written and flushed one line per file, so the file holds
every finished record and at most one half-written last line. Resuming appends
to it and skips each file already recorded with the same path, size and
modification time: a file that changed since is scanned again.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .files import file_sha256, unicode_safe

Key = tuple[str, int, int]
#: Records keep thresholds to 4 decimals: a difference below this is rounding.
THRESHOLD_ROUNDING = 1e-4
#: How every record line starts (``path`` is the first field of a ScanRecord).
RECORD_START = b'{"path": '


@dataclass
class Previous:
    """What earlier runs recorded in a results file."""

    #: (absolute path, size, mtime_ns) -> the record of a file that was scanned
    scanned: dict[Key, dict[str, Any]] = field(default_factory=dict)
    #: (path, error) of inputs that were never files (missing, unreadable folder...)
    problems: set[tuple[str, str]] = field(default_factory=set)
    #: lines that are not records (e.g. cut short by a kill): their files are rescanned
    ignored: int = 0
    #: lines that are not even the start of a record: this is someone else's file
    foreign: int = 0
    #: an unfinished last line to cut before appending (its offset), or None
    cut_at: int | None = None
    #: the last line is a whole record without its newline: add one before appending
    needs_newline: bool = False
    #: the models (weights' identities, as sorted JSON) that wrote the records
    models: set[str] = field(default_factory=set)
    #: (detector, threshold) that decided each scored record's verdict
    deciders: set[tuple[str, float]] = field(default_factory=set)


def key_of(path: str | Path, size: int, mtime_ns: int) -> Key:
    """Records hold ``unicode_safe`` paths; compare files in the same form."""
    return (recorded_name(path), size, mtime_ns)


def recorded_name(path: str | Path) -> str:
    """A file's absolute path as records hold it (undecodable bytes as ``\\xNN``)."""
    return os.path.abspath(unicode_safe(path))


def names_shown_alike(files: list[Path]) -> set[Path]:
    """Files whose names records cannot tell apart: undecodable bytes are recorded as
    ``\\xNN`` text, which another file may hold literally. An earlier record cannot say
    which of them it was, so none of them is skipped."""
    names = {file: recorded_name(file) for file in files}
    shown = Counter(names.values())
    return {file for file, name in names.items() if shown[name] > 1}


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except ValueError:  # also UnicodeDecodeError
        return None
    if not isinstance(record, dict) or not isinstance(record.get("path"), str):
        return None
    return record


def _starts_like_record(line: bytes) -> bool:
    """A record, or the start of one cut anywhere (even inside ``{"path": ``)."""
    return RECORD_START.startswith(line[: len(RECORD_START)])


def read_previous(path: Path) -> Previous:
    """Read a JSONL results file line by line (it may be large); tolerate damage."""
    previous = Previous()
    offset = 0
    with open(path, "rb") as handle:
        for line in handle:
            record = _parse(line)
            complete = line.endswith(b"\n")
            if record is None and line.strip():
                previous.ignored += 1
                previous.foreign += not _starts_like_record(line)
                if not complete:
                    previous.cut_at = offset
            elif record is not None:
                previous.needs_newline = not complete
                _remember(previous, record)
            offset += len(line)
    return previous


def _remember(previous: Previous, record: dict[str, Any]) -> None:
    if isinstance(record.get("model"), dict) and record["model"]:
        previous.models.add(json.dumps(record["model"], sort_keys=True))
    detector, threshold = record.get("detector"), record.get("threshold")
    if isinstance(detector, str) and isinstance(threshold, int | float):
        previous.deciders.add((detector, float(threshold)))
    size, mtime_ns = record.get("size"), record.get("mtime_ns")
    if isinstance(size, int) and isinstance(mtime_ns, int):
        previous.scanned[key_of(record["path"], size, mtime_ns)] = record
    elif isinstance(record.get("error"), str):
        previous.problems.add((record["path"], record["error"]))


def prepare_append(path: Path, previous: Previous) -> None:
    """Make the file end with a whole line before new records are appended.

    An unfinished last line is a fragment of a record that a killed run was writing;
    its file is scanned again, so cutting the fragment loses nothing and keeps
    every line of the file valid JSON.
    """
    if previous.cut_at is not None:
        os.truncate(path, previous.cut_at)
    elif previous.needs_newline:
        with open(path, "ab") as handle:
            handle.write(b"\n")


def recorded(file: Path, previous: Previous, verify_hash: bool = False) -> dict[str, Any] | None:
    """The earlier record of ``file`` if it still holds (same size and mtime, and with
    ``verify_hash`` the same sha256), else None: the file must be scanned."""
    try:
        stat = os.stat(file)
    except OSError:
        return None
    record = previous.scanned.get(key_of(file, stat.st_size, stat.st_mtime_ns))
    if record is None or not verify_hash:
        return record
    try:
        return record if file_sha256(file) == record.get("sha256") else None
    except OSError:
        return None


def judged_otherwise(previous: Previous, identity: dict[str, str],
                     deciders: dict[str, float]) -> str | None:
    """How the recorded verdicts were reached otherwise than this run would reach them
    (another model, detector or threshold), or None when alike. Appending then would
    mix two judges' verdicts in one file under one summary: evidence must not."""
    for earlier in sorted(previous.models):
        recorded = json.loads(earlier)
        differs = sorted(key for key in recorded.keys() | identity.keys()
                         if recorded.get(key) != identity.get(key))
        if differs:
            return (f"other weights or face settings (the records' 'model' differs from "
                    f"this run's in {', '.join(differs)})")
    for detector, threshold in sorted(previous.deciders):
        if detector not in deciders:
            return f"the {detector} detector (this run: {', '.join(sorted(deciders))})"
        if abs(threshold - deciders[detector]) > THRESHOLD_ROUNDING:
            return (f"the {detector} detector at threshold {threshold:g} (this run: "
                    f"{deciders[detector]:g})")
    return None
