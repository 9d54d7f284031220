"""Checkpoints that are safe to load.

A checkpoint is a ``torch.save`` dictionary holding only tensors, numbers and
one JSON string of metadata (configuration, vocabularies, training state), and
is always read with ``torch.load(weights_only=True)``: a file a user hands us
is never unpickled into arbitrary objects. Writes go to a temporary file that
is renamed into place, so an interrupted run never leaves a broken checkpoint.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .exif import ORDINAL_TAGS, Vocabulary
from .files import atomic_write
from .network import BinaryClassifier, ExifPretextModel, ExtractorConfig

FORMAT = "aigdetect.exif-extractor"
FORMAT_VERSION = 1
#: What a checkpoint's network was trained for; all carry an ``extractor``.
#: ``faces`` is the face-manipulation pretext (arXiv 2501.02207): ranking heads only.
PRETEXT, BINARY, FACES = "pretext", "binary", "faces"
TASKS = (PRETEXT, BINARY, FACES)

#: The faces pretext's EXIF tags: the four the paper ranks (ISO, aperture, exposure
#: time, focal length); camera make and model are not learned from faces.
FACE_TAGS = ("iso", "fnumber", "exposure_time", "focal_length")
#: The faces pretext's manipulation head: a higher score means an original face.
ORIGINAL = "original"
#: Every ranking head of a ``faces`` model, in the order of its training targets.
FACE_HEADS = (*FACE_TAGS, ORIGINAL)


class CheckpointError(Exception):
    """A file that is not a usable aigdetect checkpoint; the message says why."""


@dataclass
class ModelMeta:
    """Everything needed to rebuild the model, plus how it was trained."""

    config: ExtractorConfig
    vocabularies: dict[str, Vocabulary] = field(default_factory=dict)
    task: str = PRETEXT
    ordinal_tags: list[str] = field(default_factory=lambda: list(ORDINAL_TAGS))
    epoch: int = 0
    step: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "task": self.task,
            "config": self.config.to_dict(),
            "vocabularies": {t: v.classes for t, v in self.vocabularies.items()},
            "ordinal_tags": self.ordinal_tags,
            "epoch": self.epoch,
            "step": self.step,
            "training": self.training,
            "metrics": self.metrics,
        })

    @classmethod
    def from_json(cls, text: str) -> ModelMeta:
        data = json.loads(text)
        if data.get("format") != FORMAT:
            raise CheckpointError("not an aigdetect extractor checkpoint")
        if data.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError("checkpoint written by a newer aigdetect; upgrade to read it")
        if data.get("task", PRETEXT) not in TASKS:
            raise CheckpointError(f"unknown checkpoint task {data.get('task')!r}")
        return cls(
            task=data.get("task", PRETEXT),
            config=ExtractorConfig(**data["config"]),
            vocabularies={t: Vocabulary(c) for t, c in data["vocabularies"].items()},
            ordinal_tags=list(data["ordinal_tags"]),
            epoch=data.get("epoch", 0),
            step=data.get("step", 0),
            training=data.get("training", {}),
            metrics=data.get("metrics", {}),
        )

    def build_model(self) -> ExifPretextModel | BinaryClassifier:
        if self.task == BINARY:
            return BinaryClassifier(self.config)
        if self.task == FACES:  # no categorical heads: faces do not tell the camera model
            return ExifPretextModel(self.config, {}, self.ordinal_tags)
        counts = {tag: len(vocab) for tag, vocab in self.vocabularies.items()}
        return ExifPretextModel(self.config, counts, self.ordinal_tags)


def save_checkpoint(
    path: str | Path,
    model: ExifPretextModel | BinaryClassifier,
    meta: ModelMeta,
    training_state: dict[str, Any] | None = None,
) -> None:
    """Atomically write model weights, metadata and (optionally) optimiser state.

    Serialised in memory first: ``torch.save`` names the archive inside the file after
    the file, and the temporary name differs per process, so the same weights written
    twice (``calibrate`` copying a binary detector) would get another SHA-256 each time,
    and every hash recorded of them (model card, ``calibration.json``) with it."""
    payload = {"meta": meta.to_json(), "model": model.state_dict()}
    if training_state:
        payload["training_state"] = training_state
    serialised = io.BytesIO()
    torch.save(payload, serialised)
    with atomic_write(path) as temporary:
        temporary.write_bytes(serialised.getvalue())


def read_checkpoint(path: str | Path) -> tuple[ModelMeta, dict[str, Any]]:
    """Read a checkpoint safely; returns its metadata and the raw payload."""
    try:
        payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as error:  # torch's own message runs to many lines of unsafe advice
        detail = str(error).splitlines()[0].split(". ")[0][:160] if str(error) else ""
        raise CheckpointError(f"{path}: damaged or incomplete, not a readable checkpoint "
                              f"({type(error).__name__}{': ' + detail if detail else ''})"
                              ) from None
    if not isinstance(payload, dict) or "meta" not in payload or "model" not in payload:
        raise CheckpointError(f"{path}: not an aigdetect checkpoint")
    try:
        return ModelMeta.from_json(payload["meta"]), payload
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    except (TypeError, ValueError, KeyError, AttributeError) as error:  # a damaged header
        raise CheckpointError(f"{path}: damaged checkpoint header "
                              f"({type(error).__name__}: {error})") from None


#: The ``training`` entry of a binary checkpoint listing the SHA-256 of its training files.
TRAINED_SHA256 = "train_sha256"


def trained_on(path: str | Path) -> set[str]:
    """SHA-256 of the files a checkpoint was trained on, where it records them (binary
    detectors trained since the record exists); empty otherwise."""
    meta, _ = read_checkpoint(path)
    return set(meta.training.get(TRAINED_SHA256, []))


def load_model(
    path: str | Path, task: str | None = None
) -> tuple[ExifPretextModel | BinaryClassifier, ModelMeta]:
    """Rebuild a model (extractor + its heads) from a checkpoint, on the CPU;
    ``task`` refuses a checkpoint trained for another task."""
    meta, payload = read_checkpoint(path)
    if task is not None and meta.task != task:
        raise CheckpointError(f"{path}: a {meta.task} checkpoint, where a {task} one is needed")
    try:
        model = meta.build_model()
        model.load_state_dict(payload["model"])
    except (RuntimeError, TypeError, ValueError, AttributeError) as error:
        raise CheckpointError(
            f"{path}: weights do not match their configuration: "
            f"{str(error).splitlines()[0][:300]}") from None
    model.eval()
    return model, meta
