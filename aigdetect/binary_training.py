"""Binary detector training: real vs AI, regularised by the EXIF-trained extractor.

A fresh extractor of the pretext architecture plus a 2-way head learns to tell
real photos from AI images on native-resolution patches taken as an unordered
set. Its loss is cross-entropy plus ``alpha`` times the feature distillation
loss towards the frozen EXIF-trained extractor (f1..f5): the EXIF extractor
knows what cameras leave in pixels, and staying close to it keeps the binary
detector from latching onto whatever separates the few training generators.
:class:`BinaryTask` is run by the shared :mod:`aigdetect.engine`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import DataLoader

from .binary_data import Augmentation, BinaryDataset, split_for_validation, usable_files
from .checkpoint import BINARY, PRETEXT, TRAINED_SHA256, ModelMeta, load_model
from .engine import EngineConfig, TrainingError, run_training
from .files import file_sha256
from .labelled import AI, REAL, LabelledFile, labelled_files
from .losses import feature_distillation_loss
from .network import ExifExtractor, stage_features
from .runtime import Distributed

#: A best validation AUC at or below this is chance within what a few dozen held-out
#: images can tell: the run is said to have learned nothing.
CHANCE_AUC = 0.55


@dataclass(kw_only=True)
class BinaryConfig(EngineConfig):
    """Settings of a binary run: the engine's plus the labelled data and the teacher."""

    real: list[Path] = field(default_factory=list)
    fake: list[Path] = field(default_factory=list)
    labels_csv: Path | None = None
    teacher: Path
    alpha: float = 0.05
    #: train the head only, on the teacher's own (frozen) features: the limit of
    #: ever stronger distillation, for training sets too small to move a network
    freeze_extractor: bool = False
    augmentation: Augmentation = field(default_factory=Augmentation)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["real"] = [str(p) for p in self.real]
        data["fake"] = [str(p) for p in self.fake]
        data["labels_csv"] = str(self.labels_csv) if self.labels_csv else None
        data["augmentation"] = {k: list(v) if isinstance(v, tuple) else v
                                for k, v in data["augmentation"].items()}
        return data


def detection_metrics(labels: np.ndarray, p_ai: np.ndarray,
                      groups: list[str]) -> dict[str, dict[str, float]]:
    """AUC (AI positive) overall, and per group the share called AI at p = 0.5."""
    metrics: dict[str, dict[str, float]] = {}
    if len(set(labels.tolist())) == 2:
        metrics["auc"] = {"value": float(roc_auc_score(labels, p_ai)), "chance": 0.5,
                          "n": len(labels)}
    metrics["accuracy"] = {"value": float(((p_ai > 0.5) == (labels == AI)).mean()),
                           "chance": float(max(labels.mean(), 1 - labels.mean())),
                           "n": len(labels)}
    for group in sorted(set(groups)):
        rows = np.array([g == group for g in groups])
        metrics[f"called ai: {group}"] = {"value": float((p_ai[rows] > 0.5).mean()),
                                          "n": int(rows.sum())}
    return metrics


def present(files: list[LabelledFile], console: Console) -> list[LabelledFile]:
    """The files that exist and open as images; the others (CSV rows naming moved or
    deleted files, junk named .jpg) are said and left out, rather than silently stood
    in for by another image, or found only by a data-loading worker mid-training."""
    kept, left_out = usable_files(files)
    if left_out:
        console.print(f"[yellow]warning:[/] {len(left_out)} listed file(s) are missing or not "
                      f"images and are left out, e.g. {escape(left_out[0].path)}",
                      highlight=False)
    return kept


class BinaryTask:
    """Real vs AI with cross-entropy + alpha x feature distillation to a frozen teacher."""

    kind = BINARY

    def __init__(self, config: BinaryConfig) -> None:
        self.config = config
        self.train_files: list[LabelledFile] = []
        self.val_files: list[LabelledFile] = []
        self.teacher: ExifExtractor | None = None
        self.teacher_meta: ModelMeta | None = None

    def prepare(self, console: Console, dist: Distributed) -> None:
        c = self.config
        def warn(message: str) -> None:
            if dist.is_main:
                console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False)

        try:
            files = labelled_files(c.real, c.fake, c.labels_csv, on_copies=warn)
        except OSError as error:
            raise TrainingError(f"cannot read {c.labels_csv}: {error.strerror}") from None
        except ValueError as error:
            raise TrainingError(str(error)) from None
        files = present(files, console)
        for label, words in ((REAL, "real (--real DIR)"), (AI, "AI (--fake DIR)")):
            if sum(f.label == label for f in files) < 2:
                raise TrainingError(f"fewer than 2 {words} images: the binary detector needs "
                                    "both classes")
        self.train_files, self.val_files = split_for_validation(files, c.val_fraction, c.seed)
        teacher, self.teacher_meta = load_model(c.teacher, task=PRETEXT)
        self.teacher = teacher.extractor.eval().requires_grad_(False)

    def new_model(self) -> tuple[nn.Module, ModelMeta]:
        meta = ModelMeta(config=self.teacher_meta.config, task=BINARY)
        model = meta.build_model()
        if self.config.freeze_extractor:
            model.extractor.load_state_dict(self.teacher.state_dict())
        return model, meta

    def configure(self, model: nn.Module, device: torch.device) -> None:
        self.teacher.to(device)
        if self.config.freeze_extractor:
            model.extractor.requires_grad_(False)

    def datasets(self, meta: ModelMeta) -> tuple[BinaryDataset, BinaryDataset]:
        c = self.config
        patch_size = meta.config.patch_size
        return (BinaryDataset(self.train_files, c.patches, patch_size, train=True, seed=c.seed,
                              augmentation=c.augmentation),
                BinaryDataset(self.val_files, c.patches, patch_size, train=False))

    def training_info(self) -> dict[str, Any]:
        def count(files: list[LabelledFile]) -> dict[str, int]:
            groups: dict[str, int] = {}
            for f in files:
                groups[f.group] = groups.get(f.group, 0) + 1
            return groups

        return {"train_files": count(self.train_files), "val_files": count(self.val_files),
                "teacher_sha256": file_sha256(self.config.teacher),
                TRAINED_SHA256: sorted(file_sha256(f.path) for f in self.train_files)}

    def describe(self) -> str:
        real = sum(f.label == REAL for f in self.train_files)
        groups = len({f.group for f in self.train_files if f.label == AI})
        return (f"binary detector on {real} real and {len(self.train_files) - real} AI images "
                f"({groups} AI groups), validating on {len(self.val_files)}; "
                + ("extractor frozen to the teacher's, head only" if self.config.freeze_extractor
                   else f"distillation alpha {self.config.alpha:g}"))

    def losses(self, network: nn.Module, batch: tuple, device: torch.device,
               amp: torch.autocast) -> dict[str, torch.Tensor]:
        patches, labels, _ = batch
        patches, labels = patches.to(device, non_blocking=True), labels.to(device)
        with amp:
            logits, features = network(patches)
        losses = {"ce": F.cross_entropy(logits.float(), labels)}
        if self.config.alpha > 0 and not self.config.freeze_extractor:
            with torch.no_grad(), amp:
                targets = stage_features(self.teacher, patches)
            losses["distill"] = feature_distillation_loss(features, targets)
        return losses

    def weight(self, name: str) -> float:
        return self.config.alpha if name == "distill" else 1.0

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: DataLoader,
                 device: torch.device) -> dict[str, dict[str, float]]:
        p_ai, labels = [], []
        for patches, batch_labels, _ in loader:
            logits, _ = model(patches.to(device))
            p_ai.append(logits.float().softmax(-1)[:, AI].cpu())
            labels.append(batch_labels)
        groups = [f.group for f in loader.dataset.epoch_files]
        return detection_metrics(torch.cat(labels).numpy(), torch.cat(p_ai).numpy(), groups)

    def validation_score(self, metrics: dict[str, dict[str, float]]) -> float | None:
        return metrics["auc"]["value"] if "auc" in metrics else None

    def metrics_table(self, metrics: dict[str, dict[str, float]], losses: dict[str, float],
                      title: str) -> Table:
        table = Table(title=title + " (held-out cameras and files; 256 px crop, JPEG q90)")
        for column in ("measure", "value", "chance", "n"):
            table.add_column(column, justify="left" if column == "measure" else "right")
        for name, loss in losses.items():
            table.add_row(f"train loss {name}", f"{loss:.4f}", "-", "-")
        for name, m in metrics.items():
            chance = f"{m['chance']:.3f}" if "chance" in m else "-"
            table.add_row(name, f"{m['value']:.3f}", chance, str(m["n"]))
        return table

    def finish(self, console: Console, best_score: float | None) -> None:
        if best_score is not None and best_score <= CHANCE_AUC:
            console.print(f"[yellow]warning:[/] validation AUC never passed {CHANCE_AUC}: "
                          "the binary detector has not learned to separate the held-out "
                          "images. Train on more real photos and more generators.")


def train_binary(config: BinaryConfig, console: Console | None = None) -> dict[str, Any]:
    """Train (or resume) the binary detector; returns the last validation metrics."""
    if config.alpha < 0:
        raise TrainingError(f"--alpha {config.alpha} must be 0 or more")
    if not config.real and not config.fake and config.labels_csv is None:
        raise TrainingError("no training data: give --real DIR and --fake DIR, or --csv FILE")
    return run_training(BinaryTask(config), config, console)
