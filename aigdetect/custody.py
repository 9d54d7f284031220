"""The chain-of-custody header of a scan run: who scanned what, how and when, and which
detector at which threshold reached the verdicts. JSON output carries it as ``run``;
JSONL and CSV get it beside them, in ``FILE.run.json``."""

from __future__ import annotations

import socket
import sys
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from . import __version__
from .detectors import Detector
from .features import MAX_TILES
from .files import unicode_safe
from .report import VERDICTS
from .scanning import LoadedDetector, face_decider_name


@dataclass
class ScanTally:
    """What a scan has done so far: the exit code, and the line printed on Ctrl-C."""

    total: int = 0
    done: int = 0
    skipped: int = 0
    verdicts: Counter = field(default_factory=Counter)

    def add(self, verdict: str) -> None:
        self.verdicts[verdict] += 1


def deciders(loaded: LoadedDetector, threshold: float | None) -> dict[str, float]:
    """Detector name -> threshold, for every detector whose verdict a record of this
    run can carry (the general one, and with --faces the face detector)."""
    judges = [judge_description(loaded.detector, threshold)]
    if loaded.face_detector is not None:
        judges.append(judge_description(loaded.face_detector, None, face=True))
    return {judge["detector"]: judge["threshold"] for judge in judges}


def patches_setting(max_tiles: int) -> int | str:
    """Tiles per image as the user would ask for them: ``all`` for every tile."""
    return "all" if max_tiles >= MAX_TILES else max_tiles


def run_header(started: datetime, loaded: LoadedDetector, threshold: float | None,
               tally: ScanTally, interrupted: bool, settings: dict[str, Any]) -> dict[str, Any]:
    """Who scanned what, how and when: the chain-of-custody record of one run. Its
    detector and threshold are those that decided the verdicts, as in the records:
    with --faces the face detector's, the general detector's under ``image``."""
    verdicts = tally.verdicts
    general = judge_description(loaded.detector, threshold)
    decider = general if loaded.face_detector is None else {
        **judge_description(loaded.face_detector, None, face=True), "image": general}
    return {
        "aigdetect_version": __version__,
        "command": [unicode_safe(arg) for arg in sys.argv],
        "host": unicode_safe(socket.gethostname()),
        "started": started.isoformat(timespec="milliseconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        **({"interrupted": True} if interrupted else {}),
        **decider,
        "model": loaded.identity,
        "settings": {"patches": patches_setting(loaded.tiles.max_tiles), **settings},
        "counts": {"files": verdicts.total(), **{v: verdicts[v] for v in VERDICTS},
                   "skipped": tally.skipped},
    }


def judge_description(detector: Detector, threshold: float | None,
                      face: bool = False) -> dict[str, Any]:
    """A detector's name as records give it (``face``: it judges faces), its threshold
    (a --threshold replaces the calibrated one, whose false-positive rate then no
    longer holds) and its parts'."""
    return {"detector": face_decider_name(detector) if face else detector.name,
            "threshold": detector.calibration.threshold if threshold is None else threshold,
            "calibrated_fpr": None if threshold is not None else detector.calibration.fpr,
            "component_thresholds": {part.name: part.calibration.threshold
                                     for part in detector.parts}}
