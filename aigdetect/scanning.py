"""Scanning: score image files with a detector, one record per file.

The detector comes from a detector folder (:mod:`aigdetect.detectors`); the
default one ships in the package. Decoding runs in worker processes, scoring
in this one, and records come back in input order.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .detectors import Detector, Judgement
from .features import PreparedImage, TileSettings, prepare_stream

#: Most tiles an "all tiles" scan uses (attention over the tile set grows with its square).
MAX_TILES = 20_000


@dataclass
class ScanRecord:
    """One line of scan output (the JSON schema documented in the README)."""

    path: str
    sha256: str | None = None
    #: size and modification time when hashed: ``scan --resume`` skips a file only
    #: when both still match (and, with --verify-hash, the sha256 too)
    size: int | None = None
    mtime_ns: int | None = None
    format: str | None = None
    width: int | None = None
    height: int | None = None
    score: float | None = None
    raw_score: float | None = None
    threshold: float | None = None
    verdict: str = "error"
    percentile: float | None = None
    log_likelihood: float | None = None
    patches: int = 0
    elapsed_ms: float = 0.0
    detector: str | None = None
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    model: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    #: ``scan --provenance``: what the metadata says (``aigdetect.provenance``), else None
    provenance: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_prepared(prepared: PreparedImage, detector: Detector, identity: dict[str, str],
                   threshold: float | None = None) -> ScanRecord:
    """Turn one decoded image into a record (errors included)."""
    started = time.perf_counter()
    record = ScanRecord(
        path=prepared.path, sha256=prepared.sha256, size=prepared.size,
        mtime_ns=prepared.mtime_ns, format=prepared.format, width=prepared.width,
        height=prepared.height, notes=prepared.notes,
        error=prepared.error, model=identity, detector=detector.name,
    )
    if prepared.tiles is not None:
        try:
            judgement = detector.judge(prepared.tiles, threshold)
        except RuntimeError as error:  # e.g. out of memory on a huge "all tiles" scan
            record.error = f"network failed: {error}"
        else:
            _fill_scores(record, judgement, detector.name)
            record.patches = len(prepared.tiles) if record.error is None else 0
    record.elapsed_ms = round(prepared.decode_ms + (time.perf_counter() - started) * 1000, 1)
    return record


def _fill_scores(record: ScanRecord, judgement: Judgement, name: str) -> None:
    """Fill the score fields, or an error when any of them is not a finite number.

    NaN or infinity is no evidence (a damaged model or a degenerate feature can give
    one), and it would make the JSON output invalid: such a file is an error record.
    """
    values = (judgement.raw, judgement.score, judgement.threshold, judgement.percentile)
    if not all(math.isfinite(v) for v in values):
        record.error = "the detector gave a non-finite score (damaged model folder?)"
        return
    record.raw_score = round(judgement.raw, 4)
    record.score = round(judgement.score, 6)
    record.threshold = round(judgement.threshold, 4)
    record.percentile = round(judgement.percentile, 2)
    record.verdict = capped(judgement.verdict, record.notes)
    record.components = judgement.components or {name: judgement.summary()}
    record.log_likelihood = _log_likelihood(record.components)


def capped(verdict: str, notes: list[str]) -> str:
    """``uncertain`` instead of ``ai`` or ``real`` for a damaged file (a ``damaged:``
    note): its pixels are partly the decoder's filler or garbage, so the score is
    kept for what it is worth but never decides. Components keep their own verdicts."""
    if verdict in ("ai", "real") and any(note.startswith("damaged:") for note in notes):
        return "uncertain"
    return verdict


def _log_likelihood(components: dict[str, dict[str, Any]]) -> float | None:
    """The one-class component's log-likelihood, when it ran (kept as a top-level field)."""
    value = components.get("oneclass", {}).get("log_likelihood")
    return None if value is None else round(value, 4)


def scan(
    paths: Iterable[str | Path],
    detector: Detector,
    identity: dict[str, str],
    tiles: TileSettings,
    workers: int = 2,
    threshold: float | None = None,
    timeout: float | None = None,
) -> Iterator[ScanRecord]:
    """Score files in input order; unreadable files give ``verdict="error"`` records,
    and so does a file whose decoding takes over ``timeout`` seconds (with workers)."""
    for prepared in prepare_stream(paths, tiles, workers, timeout):
        yield score_prepared(prepared, detector, identity, threshold)
