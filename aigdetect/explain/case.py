"""One image's case: verdict, where the evidence lies, what the pixels say about
the camera, what the metadata says. The same data feeds the table, the JSON and
the HTML report, so the three never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..calibration import Calibration
from ..detectors import Detector, Judgement
from ..features import PreparedFace, TileSettings, prepare_image
from ..files import unicode_safe
from ..patches import DecodeLimits
from ..provenance import read_provenance
from ..scanning import (
    capped,
    face_decider_name,
    face_verdict,
    judge_face,
    judge_or_error,
    most_suspicious_face,
)
from .consistency import PretextReader
from .heatmap import draw_faces, draw_heatmap, tile_evidence

#: Version of the explain JSON document (``aigdetect explain --format json``).
EXPLAIN_SCHEMA_VERSION = 1


def unexplained_case(path: str | Path, error: str | None,
                     limits: DecodeLimits) -> dict[str, Any]:
    """A case with nothing read yet: what an input that is not a readable image (a
    missing file, an empty folder) gets, so that it is reported and counted. Its
    metadata is read within ``limits`` (``--max-decode-mb``)."""
    return {"path": unicode_safe(path), "sha256": None, "size": None, "format": None,
            "width": None, "height": None, "notes": [],
            "error": error and unicode_safe(error), "verdict": None, "heatmap": None,
            "camera_traces": None, "faces": None,
            "provenance": read_provenance(path, limits.max_decode_mb * 1_000_000)}


@dataclass
class Explainer:
    """What explaining needs: the detector, its tiles, the pretext model, the map."""

    detector: Detector
    tiles: TileSettings
    pretext: PretextReader | None
    map_tiles: int
    #: ``explain --faces``: judges each face (``tiles.faces`` says how they are cut)
    face_detector: Detector | None = None

    def explain(self, path: Path, heatmap: Path) -> dict[str, Any]:
        """The case of one file; an unreadable file gives a case with ``error``."""
        prepared = prepare_image(path, self.tiles, keep_pixels=True)
        case = unexplained_case(path, prepared.error, self.tiles.limits)
        case |= {"sha256": prepared.sha256, "size": prepared.size, "format": prepared.format,
                 "width": prepared.width, "height": prepared.height,
                 "notes": [unicode_safe(n) for n in prepared.notes]}
        if prepared.tiles is None:
            return case
        judgement, error = judge_or_error(self.detector, prepared.tiles)
        if judgement is None:
            return case | {"error": unicode_safe(error)}
        case["verdict"] = {**self.verdict(judgement, prepared.notes),
                           "patches": len(prepared.tiles)}
        pixels = prepared.pixels  # the pixels judged, for every drawing
        case["heatmap"] = self.where(pixels, path, heatmap, case["verdict"], case["notes"])
        case["camera_traces"] = self.camera(prepared.tiles, path)
        if self.face_detector is not None:
            faces_png = heatmap.with_name(heatmap.name.replace(".heatmap.png", ".faces.png"))
            case["faces"] = faces_case(self.face_detector, pixels, path.name,
                                       prepared.faces or [], faces_png, case["notes"])
        return case

    def verdict(self, judgement: Judgement, notes: list[str]) -> dict[str, Any]:
        """The detector's opinion and each component's, with threshold, uncertain
        band and calibrated false-positive rate."""
        parts = {p.name: p.calibration for p in self.detector.parts}
        components = judgement.components or {self.detector.name: judgement.summary()}
        return {
            "detector": self.detector.name,
            **opinion(judgement.summary(), self.detector.calibration),
            "verdict": capped(judgement.verdict, notes),
            "components": {name: opinion(summary, parts.get(name, self.detector.calibration))
                           for name, summary in components.items()},
        }

    def where(self, pixels: np.ndarray, path: Path, heatmap: Path, verdict: dict[str, Any],
              notes: list[str]) -> dict[str, Any]:
        """Per-tile evidence at native resolution, and the PNG map drawn from it, with
        the image's ``verdict`` and ``notes`` on it (the PNG may travel alone)."""
        evidence = tile_evidence(self.detector, pixels, self.tiles.patch_size, self.map_tiles)
        draw_heatmap(pixels, evidence, heatmap, f"aigdetect explain: {unicode_safe(path.name)}",
                     verdict, notes)
        return {"file": str(heatmap), **evidence.to_dict()}

    def camera(self, tiles: Any, path: Path) -> dict[str, Any]:
        """The pretext heads' reading of the pixels beside the file's EXIF claims."""
        if self.pretext is None:
            return {"status": "unavailable", "tags": [],
                    "note": "the model folder has no EXIF-pretext extractor"}
        return {"status": "ok", "tags": self.pretext.read(tiles, path),
                "note": ("Each head is shown with its accuracy or ranking concordance on "
                         "cameras held out of training, beside chance. Only a head that "
                         "beats chance by 0.1 or more can raise a flag. For ISO, aperture, "
                         "exposure time and focal length the pixels' rank and the claimed "
                         "value's rank are percentiles among the calibration photos; they "
                         "disagree when 50 or more points apart.")}


def faces_case(detector: Detector, pixels: np.ndarray, name: str, faces: list[PreparedFace],
               drawing: Path, notes: list[str]) -> dict[str, Any]:
    """Each face's box and opinion, the image's face verdict (as ``scan --faces``: its
    most suspicious face's, capped by the file's ``notes``) and a PNG of ``pixels`` with
    the boxes drawn."""
    entries = [judge_face(face, detector) for face in faces]
    verdict = face_verdict(entries, notes)
    draw_faces(pixels, entries, drawing, f"aigdetect explain --faces: {unicode_safe(name)}",
               verdict, notes)
    return {"file": str(drawing), "detector": face_decider_name(detector), "verdict": verdict,
            "faces": entries}


def opinion(summary: dict[str, Any], calibration: Calibration) -> dict[str, Any]:
    """A judgement's summary plus the uncertain band (raw units) and calibrated FPR."""
    low, high = calibration.band(summary["threshold"])
    return {**summary, "uncertain_band": [round(low, 4), round(high, 4)],
            "calibrated_fpr": calibration.fpr}


def verdict_rows(verdict: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The rows of a verdict table: the detector's own opinion first (its verdict
    capped by the file's notes, as scan's), then each component of another name (a
    single detector's one component is itself, uncapped, so it is left out)."""
    return [(verdict["detector"], verdict)] + [
        (name, component) for name, component in verdict["components"].items()
        if name != verdict["detector"]]


def deciding_verdict(case: dict[str, Any]) -> dict[str, Any]:
    """The verdict that decides the case (and the exit code): with --faces the most
    suspicious face's (score and percentile too), else the whole image's."""
    faces = case.get("faces")
    if faces is None:
        return case["verdict"] or {}
    worst = most_suspicious_face(faces["faces"]) or {}
    return {"verdict": faces["verdict"], "score": worst.get("score"),
            "percentile": worst.get("percentile")}
