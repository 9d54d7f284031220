"""Pretext training: learn camera traces by predicting EXIF from pixels.

:class:`PretextTask` is the task (data, model, losses, validation) that the
shared :mod:`aigdetect.engine` runs; :func:`train` is the entry point.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import PRETEXT, CheckpointError, ModelMeta, load_model
from .dataset import Photo, PretextDataset, load_labels, split_by_camera
from .engine import EngineConfig, TrainingError, run_training
from .exif import CATEGORICAL_TAGS, ORDINAL_TAGS, build_vocabularies
from .files import IMAGE_EXTENSIONS, walk_folder
from .losses import RANKING_LOSSES, RankingLoss, masked_cross_entropy, pairwise_concordance
from .network import ExifPretextModel, ExtractorConfig
from .runtime import Distributed

__all__ = ["PretextTask", "TrainConfig", "TrainingError", "train"]

T = TypeVar("T")
#: Every head of the EXIF pretext: categorical tags, then ordinal ones.
PRETEXT_HEADS = (*CATEGORICAL_TAGS, *ORDINAL_TAGS)


@dataclass(kw_only=True)
class PhotoTrainingConfig(EngineConfig):
    """Settings of a training on camera photos and their EXIF (the pretext and the
    faces pretext): the engine's plus the photos and each head's loss weight."""

    photos: Path
    head_weights: dict[str, float] = field(default_factory=dict)
    #: a checkpoint whose extractor (not its heads) the new model starts from; None: random
    init: Path | None = None

    @property
    def label_cache(self) -> Path:
        """The photos' EXIF labels, parsed once (beside the checkpoint)."""
        return self.output.with_name(self.output.name + ".labels.json")

    def weight(self, head: str) -> float:
        return self.head_weights.get(head, 1.0)


@dataclass(kw_only=True)
class TrainConfig(PhotoTrainingConfig):
    """Settings of a pretext run: the photos' plus how the heads are built and ranked."""

    ranking_loss: RankingLoss = "fidelity"
    min_class_count: int = 3


#: a new model's extractor settings and starting weights (None: random)
InitialExtractor = tuple[ExtractorConfig, dict | None]


def initial_extractor(config: PhotoTrainingConfig) -> InitialExtractor:
    """The new model's extractor settings and starting weights: random at the configured
    patch size, or ``config.init``'s extractor (a checkpoint of any task; its heads are
    not taken). The faces paper starts from a network trained on camera photos; a camera-
    trained extractor is the closest this package has."""
    if config.init is None:
        return ExtractorConfig(patch_size=config.patch_size), None
    try:
        model, meta = load_model(config.init)
    except CheckpointError as error:
        raise TrainingError(f"--init: {error}") from None
    if meta.config.patch_size != config.patch_size:
        raise TrainingError(f"--init {config.init} was trained on {meta.config.patch_size} px "
                            f"patches, not {config.patch_size}: give --patch-size "
                            f"{meta.config.patch_size}")
    return meta.config, model.extractor.state_dict()


def new_photo_model(meta: ModelMeta, weights: dict | None) -> nn.Module:
    """``meta``'s model, its extractor loaded with ``weights`` when there are any."""
    model = meta.build_model()
    if weights is not None:
        model.extractor.load_state_dict(weights)
    return model


def main_first(dist: Distributed, work: Callable[[], T]) -> T:
    """``work()`` in the main process, then in the others: the main process fills a
    cache (labels, faces) that the others then only read, so no file is parsed by
    every process at once and no two processes write the cache."""
    if dist.is_main:
        result = work()
    dist.barrier()
    if not dist.is_main:
        result = work()
    return result


def read_photos(folder: Path, label_cache: Path, console: Console,
                dist: Distributed) -> list[Photo]:
    """Every readable image below ``folder`` with its EXIF labels (parsed once, then
    reused from ``label_cache``), whether or not any tag is usable."""
    paths = list(walk_folder(folder, IMAGE_EXTENSIONS))
    if not paths:
        raise TrainingError(f"no images found under {folder}")
    if dist.is_main:
        console.print(f"Reading EXIF of {len(paths)} files (cached in {label_cache})")
    photos, unreadable = main_first(dist, lambda: load_labels(paths, label_cache))
    if dist.is_main and unreadable:
        console.print(f"[yellow]warning:[/] skipped {len(unreadable)} unreadable files, "
                      f"e.g. {unreadable[0]}")
    return photos


def gather_photos(config: TrainConfig, console: Console, dist: Distributed) -> list[Photo]:
    """Find the photos, parse (or reuse cached) EXIF labels, drop the unusable."""
    photos = read_photos(config.photos, config.label_cache, console, dist)
    usable = [p for p in photos if p.labels.known_count() > 0]
    if dist.is_main and len(usable) < len(photos):
        console.print(f"[yellow]warning:[/] skipped {len(photos) - len(usable)} photos "
                      "without any usable EXIF tag")
    if len(usable) < 2:
        raise TrainingError("fewer than 2 photos with usable EXIF: nothing to learn from")
    return usable

def pretext_losses(
    model_output, classes: torch.Tensor, ordinal: torch.Tensor, ranking_loss: str
) -> dict[str, torch.Tensor]:
    """One loss per head, unknown labels masked."""
    logits, scores = model_output
    rank = RANKING_LOSSES[ranking_loss]
    losses = {tag: masked_cross_entropy(logits[tag], classes[:, i])
              for i, tag in enumerate(CATEGORICAL_TAGS) if tag in logits}
    losses.update({tag: rank(scores[tag], ordinal[:, i])
                   for i, tag in enumerate(ORDINAL_TAGS) if tag in scores})
    return losses

@torch.no_grad()
def validate(
    model: ExifPretextModel,
    loader: DataLoader,
    device: torch.device,
    majority: dict[str, int],
) -> dict[str, dict[str, float]]:
    """Per tag on held-out cameras: ranking concordance (chance 0.5) for ordinal
    tags, top-1 accuracy beside the majority-class rate for categorical ones."""
    all_logits: dict[str, list] = {t: [] for t in model.heads.categorical}
    all_scores: dict[str, list] = {t: [] for t in model.heads.ranking}
    all_classes, all_ordinal = [], []
    for patches, classes, ordinal, _ in loader:
        logits, scores = model(patches.to(device))
        for tag in all_logits:
            all_logits[tag].append(logits[tag].float().cpu())
        for tag in all_scores:
            all_scores[tag].append(scores[tag].float().cpu())
        all_classes.append(classes)
        all_ordinal.append(ordinal)
    classes, ordinal = torch.cat(all_classes), torch.cat(all_ordinal)
    metrics: dict[str, dict[str, float]] = {}
    for i, tag in enumerate(CATEGORICAL_TAGS):
        known = classes[:, i] >= 0
        single_class = model.heads.categorical[tag].out_features < 2
        if tag not in all_logits or not bool(known.any()) or single_class:
            continue  # nothing to measure: no labels, or a head with a single class
        predicted = torch.cat(all_logits[tag]).argmax(1)[known]
        truth = classes[known, i]
        metrics[tag] = {
            "accuracy": float((predicted == truth).float().mean()),
            "chance": float((truth == majority.get(tag, -1)).float().mean()),
            "n": int(known.sum()),
        }
    for i, tag in enumerate(ORDINAL_TAGS):
        if tag not in all_scores:
            continue
        concordance, pairs = pairwise_concordance(torch.cat(all_scores[tag]), ordinal[:, i])
        if pairs:
            metrics[tag] = {"concordance": concordance, "chance": 0.5, "n": pairs}
    return metrics

def validation_score(metrics: dict[str, dict[str, float]]) -> float | None:
    """One number to pick the best epoch: the mean margin over chance across tags
    (concordance - 0.5 for ordinal tags, accuracy - majority rate for categorical)."""
    margins = [m.get("concordance", m.get("accuracy", 0.0)) - m["chance"]
               for m in metrics.values()]
    return sum(margins) / len(margins) if margins else None

def majority_classes(dataset: PretextDataset) -> dict[str, int]:
    """Most frequent training class per categorical tag (the chance baseline)."""
    counts: dict[str, Counter] = {tag: Counter() for tag in CATEGORICAL_TAGS}
    for photo in dataset.photos:
        for tag in CATEGORICAL_TAGS:
            index = dataset.vocabularies[tag].index(getattr(photo.labels, tag))
            if index >= 0:
                counts[tag][index] += 1
    return {tag: c.most_common(1)[0][0] for tag, c in counts.items() if c}

def metrics_table(metrics: dict[str, dict[str, float]], losses: dict[str, float],
                  weight: Callable[[str], float], title: str,
                  heads: Sequence[str] = PRETEXT_HEADS) -> Table:
    """One row per trained head of ``heads``: its loss weight, mean training loss,
    and validation accuracy (categorical tags) or concordance (ranking heads)."""
    table = Table(title=title)
    for column in ("head", "weight", "train loss", "validation", "chance", "n"):
        table.add_column(column, justify="left" if column == "head" else "right")
    for tag in heads:
        if tag not in losses:
            continue
        m = metrics.get(tag, {})
        kind = "accuracy" if tag in CATEGORICAL_TAGS else "concordance"
        value = f"{m[kind]:.3f} {kind[:4]}" if kind in m else "-"
        chance = f"{m['chance']:.3f}" if "chance" in m else "-"
        table.add_row(tag, f"{weight(tag):g}", f"{losses[tag] + 0.0:.4f}", value, chance,
                      str(m.get("n", "-")))
    return table


class PretextTask:
    """EXIF pretext: classify categorical tags, rank ordinal ones, on held-out cameras."""

    kind = PRETEXT

    def __init__(self, config: TrainConfig) -> None:
        self.config = config
        self.train_photos: list[Photo] = []
        self.val_photos: list[Photo] = []
        self.majority: dict[str, int] = {}
        #: the new model's extractor: read first, so a bad --init stops before the data
        self.initial: InitialExtractor = initial_extractor(config)

    def prepare(self, console: Console, dist: Distributed) -> None:
        photos = gather_photos(self.config, console, dist)
        self.train_photos, self.val_photos = split_by_camera(
            photos, self.config.val_fraction, self.config.seed)

    def new_model(self) -> tuple[nn.Module, ModelMeta]:
        config, weights = self.initial
        meta = ModelMeta(
            config=config,
            vocabularies=build_vocabularies((p.labels for p in self.train_photos),
                                            self.config.min_class_count),
        )
        return new_photo_model(meta, weights), meta

    def configure(self, model: nn.Module, device: torch.device) -> None:
        """Every parameter trains."""

    def datasets(self, meta: ModelMeta) -> tuple[PretextDataset, PretextDataset]:
        c = self.config
        patch_size = meta.config.patch_size  # the model's, also on --resume
        train_set = PretextDataset(self.train_photos, meta.vocabularies, c.patches,
                                   patch_size, train=True, seed=c.seed)
        self.majority = majority_classes(train_set)
        val_set = PretextDataset(self.val_photos, meta.vocabularies, c.patches,
                                 patch_size, train=False)
        return train_set, val_set

    def training_info(self) -> dict[str, Any]:
        return {"train_photos": len(self.train_photos), "val_photos": len(self.val_photos)}

    def describe(self) -> str:
        cameras = len({p.labels.camera for p in self.train_photos})
        return (f"{len(self.train_photos)} photos ({cameras} cameras), validating on "
                f"{len(self.val_photos)} photos of other cameras; {self.config.patches} "
                f"patches of {self.config.patch_size}px per photo")

    def losses(self, network: nn.Module, batch: tuple, device: torch.device,
               amp: torch.autocast) -> dict[str, torch.Tensor]:
        patches, classes, ordinal, _ = batch
        with amp:
            output = network(patches.to(device, non_blocking=True))
        return pretext_losses(output, classes.to(device), ordinal.to(device),
                              self.config.ranking_loss)

    def weight(self, name: str) -> float:
        return self.config.weight(name)

    def validate(self, model: nn.Module, loader: DataLoader,
                 device: torch.device) -> dict[str, dict[str, float]]:
        return validate(model, loader, device, self.majority)

    def validation_score(self, metrics: dict[str, dict[str, float]]) -> float | None:
        return validation_score(metrics)

    def metrics_table(self, metrics: dict[str, dict[str, float]], losses: dict[str, float],
                      title: str) -> Table:
        return metrics_table(metrics, losses, self.config.weight,
                             title + " (held-out cameras)")

    def finish(self, console: Console, best_score: float | None) -> None:
        if best_score is not None and best_score <= 0:
            console.print("[yellow]warning:[/] no epoch beat chance on held-out cameras: the "
                          "extractor has not learned camera traces that transfer. Train on more "
                          "photos and cameras (the method was published at ~900,000 photos).")


def train(config: TrainConfig, console: Console | None = None) -> dict[str, Any]:
    """Train (or resume) the EXIF-pretext model; returns the last validation metrics."""
    if config.ranking_loss not in RANKING_LOSSES:
        raise TrainingError(f"unknown ranking loss {config.ranking_loss!r}; "
                            f"choose one of {', '.join(RANKING_LOSSES)}")
    return run_training(PretextTask(config), config, console)
