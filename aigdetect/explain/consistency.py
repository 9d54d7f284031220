"""What the pixels say about the camera, beside what the file's EXIF claims.

The EXIF-pretext extractor was trained to predict each photo's own EXIF tags
from its pixels: its categorical heads give the likely make, flash, exposure
program...; its ranking heads give a score that rises with ISO, aperture,
exposure time or focal length. Each head is only as good as its validation on
held-out cameras (stored in the checkpoint with a ``chance`` value), so a head
at or below chance is shown as *not informative*, never as evidence, and a
consistency flag is raised only where a head that clearly beats chance strongly
disagrees with the claim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import PRETEXT, ModelMeta, load_model
from ..exif import read_labels
from ..features import FeatureExtractor
from ..network import ExifPretextModel

#: A head is informative when its held-out metric beats chance by at least this.
INFORMATIVE_MARGIN = 0.1
#: A claim "strongly disagrees" with an informative categorical head when the head
#: gives the claimed value at most this probability and its own top class at least
#: ``CONFIDENT``.
IMPLAUSIBLE = 0.05
CONFIDENT = 0.5
#: An informative ranking head disagrees with the claim when the pixels and the
#: claimed value rank this many percentile points apart among the calibration photos.
RANK_GAP = 50.0


@dataclass
class PretextReader:
    """The full pretext model (extractor and heads) and its validation metrics."""

    model: ExifPretextModel
    meta: ModelMeta
    features: FeatureExtractor
    #: ranking scores and EXIF values of the calibration photos (``calibrate``)
    reference: dict[str, dict[str, list[float]]] | None = None

    @classmethod
    def load(cls, path: Path, device: torch.device,
             reference: dict[str, dict[str, list[float]]] | None = None,
             features: FeatureExtractor | None = None) -> PretextReader:
        """``features``: a running extractor of the same weights (the one-class
        detector's) to share, so each image's feature is computed once."""
        model, meta = load_model(path, task=PRETEXT)
        return cls(model, meta, features or FeatureExtractor(model.extractor, device), reference)

    @torch.inference_mode()
    def read(self, tiles: np.ndarray, image: Path) -> list[dict[str, Any]]:
        """One row per head: prediction, the file's claim, the head's reliability, flag."""
        feature = torch.from_numpy(self.features(tiles))[None]
        logits, scores = self.model.heads(feature)
        claims = read_labels(image)
        rows = [self._categorical(tag, value[0].softmax(-1).numpy(), getattr(claims, tag))
                for tag, value in logits.items()]
        rows += [self._ordinal(tag, float(value[0]), getattr(claims, tag))
                 for tag, value in scores.items()]
        for row in rows:  # a head at chance says nothing, agreeing or not
            if row["status"] == "not informative":
                row["agrees"] = None
        return rows

    def _categorical(self, tag: str, probabilities: np.ndarray,
                     claim: str | None) -> dict[str, Any]:
        vocabulary = self.meta.vocabularies[tag]
        top = int(probabilities.argmax())
        row = {"tag": tag, "kind": "categorical",
               "predicted": vocabulary.classes[top],
               "probability": round(float(probabilities[top]), 4),
               "claimed": claim, **reliability(self.meta.metrics.get(tag), "accuracy")}
        claimed_p = None if claim is None else float(probabilities[vocabulary.index(claim)])
        row["claimed_probability"] = None if claimed_p is None else round(claimed_p, 4)
        row["agrees"] = None if claim is None else vocabulary.index(claim) == top
        row["flag"] = bool(row["status"] == "informative" and claimed_p is not None
                           and claimed_p <= IMPLAUSIBLE and probabilities[top] >= CONFIDENT)
        return row

    def _ordinal(self, tag: str, score: float, claim: float | None) -> dict[str, Any]:
        """Where the pixels rank among the calibration photos (their ranking scores),
        beside where the claimed value ranks (their own EXIF values). Without that
        reference the raw score is shown and never compared with the claim."""
        reference = self.reference or {}
        pixels = rank(score, reference.get("scores", {}).get(tag))
        claimed = None if claim is None else rank(claim, reference.get("values", {}).get(tag))
        row = {"tag": tag, "kind": "ordinal", "ranking_score": round(score, 4),
               "pixels_percentile": pixels, "claimed": claim, "claimed_percentile": claimed,
               **reliability(self.meta.metrics.get(tag), "concordance")}
        gap = None if pixels is None or claimed is None else abs(pixels - claimed)
        row["agrees"] = None if gap is None else gap < RANK_GAP
        row["flag"] = bool(row["status"] == "informative" and gap is not None
                           and gap >= RANK_GAP)
        return row


def rank(value: float, among: list[float] | None) -> float | None:
    """Percentile of ``value`` among ``among`` (ties count half); None without them."""
    if not among:
        return None
    ordered = np.asarray(among, dtype=np.float64)
    below = np.sum(ordered < value) + 0.5 * np.sum(ordered == value)
    return round(float(100.0 * below / len(ordered)), 1)


def reliability(metrics: dict[str, Any] | None, name: str) -> dict[str, Any]:
    """The head's held-out metric, chance and status: ``informative`` (beats chance
    by at least :data:`INFORMATIVE_MARGIN`), ``weak`` (beats it by less: shown, never
    flagged) or ``not informative`` (at or below chance, or never measured)."""
    if not metrics or name not in metrics or "chance" not in metrics:
        return {"metric": name, "value": None, "chance": None, "margin": None,
                "status": "not informative"}
    value, chance = float(metrics[name]), float(metrics["chance"])
    margin = value - chance
    status = ("informative" if margin >= INFORMATIVE_MARGIN
              else "weak" if margin > 0 else "not informative")
    return {"metric": name, "value": round(value, 4), "chance": round(chance, 4),
            "margin": round(margin, 4), "status": status}


def describe_prediction(row: dict[str, Any]) -> str:
    """What the pixels suggest, in words: the top class, or the rank among the
    calibration photos (raw score when there is no reference)."""
    if row["kind"] == "categorical":
        return f"{row['predicted']} (p {row['probability']:.2f})"
    if row.get("pixels_percentile") is None:
        return f"rank score {row['ranking_score']}"
    return f"percentile {row['pixels_percentile']:.0f} of real photos"


def describe_check(row: dict[str, Any]) -> str:
    """How the pixels and the claim compare: ``disagrees`` (flagged), ``agrees``,
    ``differs`` (not flagged), or nothing where no comparison is shown."""
    if row["flag"]:
        return "disagrees"
    return "" if row["agrees"] is None else "agrees" if row["agrees"] else "differs"


def exposure_text(seconds: float) -> str:
    """An exposure time as photographers write it: ``1/250 s`` below a second."""
    if not 0 < seconds < 1:
        return f"{seconds:g} s"
    speed = 1 / seconds
    return f"1/{speed:.0f} s" if speed >= 10 else f"1/{speed:.2g} s"


def focal_text(millimetres: float) -> str:
    """A focal length to a tenth of a millimetre (``5.4 mm``, ``50 mm``)."""
    return f"{millimetres:.1f}".removesuffix(".0") + " mm"


#: Claimed values shown in photographers' units (the JSON keeps the raw numbers).
CLAIM_UNITS: dict[str, Callable[[float], str]] = {
    "exposure_time": exposure_text, "focal_length": focal_text, "focal_length_35mm": focal_text}


def describe_claim(row: dict[str, Any]) -> str | None:
    """The file's claim, exposure time and focal length in photographers' units, with
    its percentile among the calibration photos' own EXIF (the JSON keeps the raw
    numbers)."""
    claimed, percentile = row["claimed"], row.get("claimed_percentile")
    if claimed is None:
        return None
    unit = CLAIM_UNITS.get(row["tag"])
    if unit is not None:
        shown = unit(float(claimed))
    else:
        shown = str(claimed) if percentile is None else f"{claimed:g}"
    return shown if percentile is None else f"{shown} (percentile {percentile:.0f})"
