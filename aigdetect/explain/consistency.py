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


@dataclass
class PretextReader:
    """The full pretext model (extractor and heads) and its validation metrics."""

    model: ExifPretextModel
    meta: ModelMeta
    features: FeatureExtractor

    @classmethod
    def load(cls, path: Path, device: torch.device) -> PretextReader:
        model, meta = load_model(path, task=PRETEXT)
        return cls(model, meta, FeatureExtractor(model.extractor, device))

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
        """A raw ranking score: without reference photos it cannot be turned into a
        value, so it is shown, never compared with the claim."""
        return {"tag": tag, "kind": "ordinal", "ranking_score": round(score, 4),
                "claimed": claim, **reliability(self.meta.metrics.get(tag), "concordance"),
                "agrees": None, "flag": False}


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
