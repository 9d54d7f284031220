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
from .faces import NO_FACE_SEEN
from .features import PreparedFace, PreparedImage, TileSettings, prepare_stream
from .patches import DAMAGED, TOO_SMALL

#: Face mode's verdict for a readable image in which no face was found.
NO_FACE = "no-face"
#: The error of a file the detector scored NaN or infinity: no evidence, and invalid JSON.
NON_FINITE = "the detector gave a non-finite score (damaged model folder?)"


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
    #: ``scan --faces``: one entry per face found (box, crop, score, verdict, components);
    #: the record's own score and verdict are then its most suspicious face's
    faces: list[dict[str, Any]] | None = None
    #: ``scan --faces``: the general detector's opinion of the whole image
    image: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_prepared(prepared: PreparedImage, detector: Detector, identity: dict[str, str],
                   threshold: float | None = None,
                   face_detector: Detector | None = None) -> ScanRecord:
    """Turn one decoded image into a record (errors included); with a
    ``face_detector``, the record judges the image by its faces."""
    started = time.perf_counter()
    record = ScanRecord(
        path=prepared.path, sha256=prepared.sha256, size=prepared.size,
        mtime_ns=prepared.mtime_ns, format=prepared.format, width=prepared.width,
        height=prepared.height, notes=prepared.notes,
        error=prepared.error, model=identity, detector=detector.name,
        provenance=prepared.provenance,
    )
    if prepared.tiles is not None:
        judgement, error = judge_or_error(detector, prepared.tiles, threshold)
        if judgement is None:
            record.error = error
        else:
            _fill_scores(record, judgement, detector.name)
            record.patches = len(prepared.tiles)
    if face_detector is not None and record.error is None:
        _judge_by_faces(record, prepared.faces or [], face_detector)
    record.detector = decider_name(detector, face_detector)  # unreadable files too
    record.elapsed_ms = round(prepared.decode_ms + (time.perf_counter() - started) * 1000, 1)
    return record


def judge_or_error(detector: Detector, tiles: Any,
                   threshold: float | None = None) -> tuple[Judgement | None, str | None]:
    """The detector's judgement of ``tiles``, or why there is none: the network failed
    (e.g. out of memory on a huge "all tiles" scan), or it gave NaN or infinity, which
    is no evidence (a damaged model or a degenerate feature) and would make the JSON
    output invalid. Such a file or face becomes an error, never a verdict, and the
    batch goes on."""
    try:
        judgement = detector.judge(tiles, threshold)
    except (RuntimeError, MemoryError) as error:
        return None, f"network failed: {error or type(error).__name__}"
    except OSError as error:  # an encoder's limit (the residual detector re-encodes)
        return None, f"scoring failed: {error}"
    values = (judgement.raw, judgement.score, judgement.threshold, judgement.percentile)
    if not all(math.isfinite(value) for value in values):
        return None, NON_FINITE
    return judgement, None


def decider_name(detector: Detector, face_detector: Detector | None = None) -> str:
    """The name every record of a run gives the detector that decides its verdicts."""
    return detector.name if face_detector is None else face_decider_name(face_detector)


def face_decider_name(face_detector: Detector) -> str:
    """How records name a face detector that decides (``faces:oneclass``)."""
    return f"faces:{face_detector.name}"


def _judge_by_faces(record: ScanRecord, faces: list[PreparedFace], detector: Detector) -> None:
    """Face mode: each face is judged alone and the image takes its most suspicious
    face's score and verdict (one generated face makes a forged image); the general
    detector's opinion of the whole image moves to ``record.image``."""
    record.image = {"detector": record.detector, "score": record.score,
                    "raw_score": record.raw_score, "threshold": record.threshold,
                    "verdict": record.verdict, "percentile": record.percentile,
                    "patches": record.patches, "components": record.components}
    record.faces = [judge_face(face, detector) for face in faces]
    record.score = record.raw_score = record.threshold = record.percentile = None
    record.log_likelihood, record.components, record.patches = None, {}, 0
    record.verdict = face_verdict(record.faces, record.notes)
    worst = most_suspicious_face(record.faces)
    if worst is None:
        record.notes.append("no face found: nothing for the face detector to judge (the "
                            "general detector's opinion is in 'image')" if not faces else
                            "no face could be scored")
        return
    record.score, record.raw_score = worst["score"], worst["raw_score"]
    record.threshold, record.percentile = worst["threshold"], worst["percentile"]
    record.patches = worst["patches"]
    record.components = worst["components"]
    record.log_likelihood = _log_likelihood(record.components)


def most_suspicious_face(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The judged face entry with the highest score (it decides an image's face
    verdict), or None when no face could be scored."""
    return max((face for face in entries if "score" in face),
               # scores saturate at 1: the raw score tells such faces apart
               key=lambda face: (face["score"], face.get("raw_score", -math.inf)),
               default=None)


def face_verdict(entries: list[dict[str, Any]], notes: list[str]) -> str:
    """An image's face-mode verdict (``scan`` and ``explain`` alike): its most suspicious
    face's, capped for a damaged file; ``no-face`` when no face was found, ``error``
    when faces were found but none could be scored."""
    worst = most_suspicious_face(entries)
    if worst is None:
        return NO_FACE if not entries else "error"
    return capped(worst["verdict"], notes)


def judge_face(face: PreparedFace, detector: Detector) -> dict[str, Any]:
    """One face's entry: where it is, and the face detector's opinion (or an error)."""
    entry: dict[str, Any] = {"box": list(face.box), "crop": list(face.crop),
                             "patches": len(face.tiles), "notes": face.notes}
    judgement, error = judge_or_error(detector, face.tiles)
    if judgement is None:
        return {**entry, "error": error}
    summary = judgement.summary()
    return {**entry, **summary, "components": judgement.components or {detector.name: summary}}


def _fill_scores(record: ScanRecord, judgement: Judgement, name: str) -> None:
    """Fill the score fields from a finite judgement (:func:`judge_or_error`)."""
    record.raw_score = round(judgement.raw, 4)
    record.score = round(judgement.score, 6)
    record.threshold = round(judgement.threshold, 4)
    record.percentile = round(judgement.percentile, 2)
    record.verdict = capped(judgement.verdict, record.notes)
    record.components = judgement.components or {name: judgement.summary()}
    record.log_likelihood = _log_likelihood(record.components)


def capped(verdict: str, notes: list[str]) -> str:
    """``uncertain`` instead of ``ai`` or ``real`` for a damaged file (a ``damaged:``
    note: its pixels are partly the decoder's filler or garbage), one smaller than a
    tile (``too small:``: upscaled, so interpolation, not the file's pixel grid, is
    read) or an ``--aligned`` image with no face in it (``no face seen:``). The score
    is kept for what it is worth but never decides. Components keep their own
    verdicts."""
    if verdict in ("ai", "real") and any(note.startswith((DAMAGED, TOO_SMALL, NO_FACE_SEEN))
                                         for note in notes):
        return "uncertain"
    return verdict


def _log_likelihood(components: dict[str, dict[str, Any]]) -> float | None:
    """The one-class component's log-likelihood, when it ran (kept as a top-level field)."""
    value = components.get("oneclass", {}).get("log_likelihood")
    return None if value is None else round(value, 4)


@dataclass
class LoadedDetector:
    """A ready detector with what every record and report names about it."""

    detector: Detector
    identity: dict[str, str]
    tiles: TileSettings
    #: ``--faces``: the detector that judges each face (``tiles.faces`` says how they are cut)
    face_detector: Detector | None = None


def scan(
    paths: Iterable[str | Path],
    detector: Detector,
    identity: dict[str, str],
    tiles: TileSettings,
    workers: int = 2,
    threshold: float | None = None,
    timeout: float | None = None,
    face_detector: Detector | None = None,
) -> Iterator[ScanRecord]:
    """Score files in input order; unreadable files give ``verdict="error"`` records,
    and so does a file whose decoding takes over ``timeout`` seconds (with workers).

    Face mode takes ``tiles.faces`` (how faces are cut out) and a ``face_detector``.
    """
    for prepared in prepare_stream(paths, tiles, workers, timeout):
        yield score_prepared(prepared, detector, identity, threshold, face_detector)
