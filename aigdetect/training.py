"""Pretext training: learn camera traces by predicting EXIF from pixels.

One function, :func:`train`, runs the whole loop. It works alone or as one of
several processes under ``torchrun`` (DistributedDataParallel; only rank 0
validates, logs and writes checkpoints).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler

from .checkpoint import ModelMeta, load_model, read_checkpoint, save_checkpoint
from .dataset import Photo, PretextDataset, load_labels, split_by_camera
from .exif import CATEGORICAL_TAGS, ORDINAL_TAGS, build_vocabularies
from .files import IMAGE_EXTENSIONS, walk_folder
from .losses import RANKING_LOSSES, masked_cross_entropy, pairwise_concordance
from .network import ExifPretextModel, ExtractorConfig
from .runtime import Distributed


class TrainingError(Exception):
    """A problem with the training inputs that the user must fix."""


@dataclass
class TrainConfig:
    """Every setting of a training run (saved in the checkpoint)."""

    photos: Path
    output: Path
    epochs: int = 20
    batch_size: int = 16
    patches: int = 16
    patch_size: int = 64
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    val_fraction: float = 0.15
    ranking_loss: str = "fidelity"
    min_class_count: int = 3
    max_steps: int | None = None
    max_minutes: float | None = None
    head_weights: dict[str, float] = field(default_factory=dict)

    @property
    def label_cache(self) -> Path:
        return self.output.with_name(self.output.name + ".labels.json")

    @property
    def best_output(self) -> Path:
        """Where the epoch with the best validation score is kept (``model.best.pt``)."""
        return self.output.with_name(f"{self.output.stem}.best{self.output.suffix}")

    @property
    def log_file(self) -> Path:
        return self.output.with_name(self.output.name + ".log.jsonl")

    def weight(self, tag: str) -> float:
        return self.head_weights.get(tag, 1.0)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["photos"], data["output"] = str(self.photos), str(self.output)
        return data


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def gather_photos(config: TrainConfig, console: Console, dist: Distributed) -> list[Photo]:
    """Find the photos, parse (or reuse cached) EXIF labels, drop the unusable."""
    paths = list(walk_folder(config.photos, IMAGE_EXTENSIONS))
    if not paths:
        raise TrainingError(f"no images found under {config.photos}")
    if dist.is_main:
        console.print(f"Reading EXIF of {len(paths)} files (cached in {config.label_cache})")
        photos, unreadable = load_labels(paths, config.label_cache)
    dist.barrier()
    if not dist.is_main:
        photos, unreadable = load_labels(paths, config.label_cache)
    usable = [p for p in photos if p.labels.known_count() > 0]
    if dist.is_main:
        if unreadable:
            console.print(f"[yellow]warning:[/] skipped {len(unreadable)} unreadable files, "
                          f"e.g. {unreadable[0]}")
        if len(usable) < len(photos):
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


def cosine_with_warmup(total_steps: int, warmup_fraction: float):
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


@torch.no_grad()
def validate(
    model: ExifPretextModel,
    loader: DataLoader,
    device: torch.device,
    majority: dict[str, int],
) -> dict[str, dict[str, float]]:
    """Per tag on held-out cameras: ranking concordance (chance 0.5) for ordinal
    tags, top-1 accuracy beside the majority-class rate for categorical ones."""
    model.eval()
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
    model.train()
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
                  config: TrainConfig, title: str) -> Table:
    table = Table(title=title)
    for column in ("head", "weight", "train loss", "validation", "chance", "n"):
        table.add_column(column, justify="left" if column == "head" else "right")
    for tag in (*CATEGORICAL_TAGS, *ORDINAL_TAGS):
        if tag not in losses:
            continue
        m = metrics.get(tag, {})
        kind = "accuracy" if tag in CATEGORICAL_TAGS else "concordance"
        value = f"{m[kind]:.3f} {kind[:4]}" if kind in m else "-"
        chance = f"{m['chance']:.3f}" if "chance" in m else "-"
        table.add_row(tag, f"{config.weight(tag):g}", f"{losses[tag] + 0.0:.4f}", value, chance,
                      str(m.get("n", "-")))
    return table


def train(config: TrainConfig, console: Console | None = None) -> dict[str, Any]:
    """Train (or resume) the EXIF-pretext model; returns the last validation metrics."""
    console = console or Console(stderr=True)
    if config.ranking_loss not in RANKING_LOSSES:
        raise TrainingError(f"unknown ranking loss {config.ranking_loss!r}; "
                            f"choose one of {', '.join(RANKING_LOSSES)}")
    dist = Distributed.from_environment()
    device = dist.start(config.device)
    try:
        return _train(config, console, dist, device)
    finally:
        dist.stop()


def _train(config: TrainConfig, console: Console, dist: Distributed,
           device: torch.device) -> dict[str, Any]:
    seed_everything(config.seed)
    quiet = not dist.is_main
    photos = gather_photos(config, console, dist)
    train_photos, val_photos = split_by_camera(photos, config.val_fraction, config.seed)

    resume_state: dict[str, Any] = {}
    if config.resume and config.output.exists():
        model, meta = load_model(config.output)
        _, payload = read_checkpoint(config.output)
        resume_state = payload.get("training_state", {})
        if not quiet:
            console.print(f"Resuming from {config.output} (epoch {meta.epoch}, step {meta.step})")
    else:
        if config.resume and not quiet:
            console.print(f"[yellow]warning:[/] --resume: {config.output} does not exist yet; "
                          "starting a new run")
        meta = ModelMeta(
            config=ExtractorConfig(patch_size=config.patch_size),
            vocabularies=build_vocabularies((p.labels for p in train_photos),
                                            config.min_class_count),
        )
        model = meta.build_model()
    meta.training = config.to_dict() | {
        "train_photos": len(train_photos), "val_photos": len(val_photos),
    }
    model.to(device).train()

    train_set = PretextDataset(train_photos, meta.vocabularies, config.patches,
                               config.patch_size, train=True, seed=config.seed)
    val_set = PretextDataset(val_photos, meta.vocabularies, config.patches,
                             config.patch_size, train=False)
    sampler = (DistributedSampler(train_set, seed=config.seed, drop_last=True)
               if dist.enabled else None)
    per_process_batch = max(2, config.batch_size)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(
        train_set, batch_size=per_process_batch, shuffle=sampler is None, sampler=sampler,
        num_workers=config.workers,
        drop_last=len(train_set) // dist.world_size >= per_process_batch,
        generator=generator, pin_memory=device.type == "cuda",
    )
    val_loader = DataLoader(val_set, batch_size=per_process_batch, num_workers=config.workers)

    steps_per_epoch = max(1, len(train_loader))
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, cosine_with_warmup(total_steps, config.warmup_fraction))
    if resume_state:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
    use_amp = device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    device_ids = [device] if device.type == "cuda" else None
    network = DistributedDataParallel(model, device_ids=device_ids) if dist.enabled else model
    majority = majority_classes(train_set)

    if not quiet:
        console.print(
            f"Training on {device}: {len(train_photos)} photos "
            f"({len({p.labels.camera for p in train_photos})} cameras), validating on "
            f"{len(val_photos)} photos of other cameras; {config.patches} patches of "
            f"{config.patch_size}px per photo, {dist.world_size} process(es)")
    started = time.monotonic()
    step, metrics, stop = meta.step, dict(meta.metrics), False
    best_score = resume_state.get("best_score")
    skipped = 0
    progress = Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("{task.fields[losses]}"),
        console=console, disable=quiet, transient=False,
    )
    with progress:
        for epoch in range(meta.epoch, config.epochs):
            if stop:
                break
            train_set.set_epoch(epoch)
            if sampler is not None:
                sampler.set_epoch(epoch)
            task = progress.add_task("train", total=steps_per_epoch,
                                     epoch=f"{epoch + 1}/{config.epochs}", losses="")
            sums: Counter = Counter()
            batches = 0
            for patches, classes, ordinal, attempts in train_loader:
                if config.max_steps is not None and step >= config.max_steps:
                    stop = True  # e.g. --resume of a run that already reached --max-steps
                    break
                skipped += int((attempts > 0).sum())
                with torch.autocast(device.type, dtype=amp_dtype, enabled=use_amp):
                    output = network(patches.to(device, non_blocking=True))
                losses = pretext_losses(output, classes.to(device), ordinal.to(device),
                                        config.ranking_loss)
                total = sum(config.weight(tag) * loss for tag, loss in losses.items())
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(total).backward()
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                step += 1
                batches += 1
                sums.update({tag: loss.item() for tag, loss in losses.items()})
                sums["total"] += total.item()
                progress.update(task, advance=1, losses=_short_losses(sums, batches))
                out_of_time = (config.max_minutes is not None
                               and time.monotonic() - started > 60 * config.max_minutes)
                if (config.max_steps is not None and step >= config.max_steps) or out_of_time:
                    stop = True
                    break
            if batches == 0:
                break  # nothing was trained (the step budget was already spent)
            finished_epoch = epoch + 1 if not stop or batches == steps_per_epoch else epoch
            mean_losses = {tag: value / max(1, batches) for tag, value in sums.items()}
            if dist.is_main:
                if val_photos:
                    metrics = validate(model, val_loader, device, majority)
                meta.epoch, meta.step, meta.metrics = finished_epoch, step, metrics
                score = validation_score(metrics) if val_photos else None
                if score is not None and (best_score is None or score > best_score):
                    best_score = score
                    save_checkpoint(config.best_output, model, meta)
                    progress.console.print(f"new best validation score {score:+.4f} "
                                           f"(mean margin over chance) -> {config.best_output}")
                save_checkpoint(config.output, model, meta, {
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "best_score": best_score,
                })
                _append_log(config.log_file, {
                    "epoch": epoch + 1, "step": step, "lr": scheduler.get_last_lr()[0],
                    "seconds": round(time.monotonic() - started, 1), "train_loss": mean_losses,
                    "head_weights": {t: config.weight(t) for t in mean_losses if t != "total"},
                    "validation": metrics, "skipped_unreadable": skipped,
                })
                progress.console.print(metrics_table(
                    metrics, mean_losses, config, f"epoch {epoch + 1}: held-out cameras"))
            dist.barrier()
    if not quiet:
        console.print(f"Saved {config.output} after {step} steps "
                      f"({time.monotonic() - started:.0f} s)")
        if skipped:
            console.print(f"[yellow]warning:[/] {skipped} samples failed to decode and were "
                          "replaced by other photos")
        if best_score is not None and best_score <= 0:
            console.print("[yellow]warning:[/] no epoch beat chance on held-out cameras: the "
                          "extractor has not learned camera traces that transfer. Train on more "
                          "photos and cameras (the method was published at ~900,000 photos).")
    return metrics


def _short_losses(sums: Counter, batches: int) -> str:
    """Running mean of the total and of every head's loss, for the progress bar."""
    heads = " ".join(f"{tag[:8]} {value / batches:.2f}"
                     for tag, value in sums.items() if tag != "total")
    return f"loss {sums['total'] / batches:.3f} | {heads}"


def _append_log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
