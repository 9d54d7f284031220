"""The training engine shared by every training task (EXIF pretext, binary detector, faces).

A *task* knows its data, its model and its losses; the engine knows everything
else: distributed data parallel under ``torchrun`` (only rank 0 validates, logs
and writes checkpoints), mixed precision on CUDA, warm-up then cosine schedule,
stop rules (epochs, ``--max-steps``, ``--max-minutes``), an atomic checkpoint
every epoch with ``--resume``, the best epoch kept as ``<output>.best.pt``, a
JSON-lines log and rich progress on stderr.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .checkpoint import ModelMeta, load_model, read_checkpoint, save_checkpoint
from .runtime import Distributed


class TrainingError(Exception):
    """A problem with the training inputs that the user must fix."""


@dataclass(kw_only=True)
class EngineConfig:
    """Settings every training task shares (saved in the checkpoint)."""

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
    max_steps: int | None = None
    max_minutes: float | None = None

    @property
    def best_output(self) -> Path:
        """Where the epoch with the best validation score is kept (``model.best.pt``)."""
        return self.output.with_name(f"{self.output.stem}.best{self.output.suffix}")

    @property
    def log_file(self) -> Path:
        return self.output.with_name(self.output.name + ".log.jsonl")

    def to_dict(self) -> dict[str, Any]:
        return {key: str(value) if isinstance(value, Path) else value
                for key, value in asdict(self).items()}


class TrainingTask(Protocol):
    """What a task gives the engine. Batches are tuples whose last element counts,
    per sample, the files that failed to decode and were replaced."""

    #: the checkpoint task it writes (``checkpoint.PRETEXT``, ``BINARY``, ``FACES``):
    #: ``--resume`` refuses a checkpoint another kind of training wrote
    kind: str

    def prepare(self, console: Console, dist: Distributed) -> None:
        """Find and label the data, split off validation; raise TrainingError if unusable."""

    def new_model(self) -> tuple[nn.Module, ModelMeta]:
        """A freshly initialised model and its metadata (not called on --resume)."""

    def configure(self, model: nn.Module, device: torch.device) -> None:
        """Adjust a new or resumed model before training (e.g. freeze a part, put a
        teacher on the training device)."""

    def datasets(self, meta: ModelMeta) -> tuple[Dataset, Dataset | None]:
        """Training set (with ``set_epoch``) and validation set (None if no split)."""

    def describe(self) -> str:
        """One line printed when training starts."""

    def losses(self, network: nn.Module, batch: tuple, device: torch.device,
               amp: torch.autocast) -> dict[str, torch.Tensor]:
        """Every loss of one batch, by name (logged separately)."""

    def weight(self, name: str) -> float:
        """Weight of one loss in the optimised sum (logged with it)."""

    def training_info(self) -> dict[str, Any]:
        """Counts (photos, classes...) saved in the checkpoint beside the settings."""

    def validate(self, model: nn.Module, loader: DataLoader,
                 device: torch.device) -> dict[str, dict[str, float]]:
        """Metrics on the validation set."""

    def validation_score(self, metrics: dict[str, dict[str, float]]) -> float | None:
        """One number, higher is better, to keep the best epoch."""

    def metrics_table(self, metrics: dict[str, dict[str, float]],
                      losses: dict[str, float], title: str) -> Table:
        """The per-epoch table printed on stderr."""

    def finish(self, console: Console, best_score: float | None) -> None:
        """Last words: e.g. a warning when no epoch beat chance."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def cosine_with_warmup(total_steps: int, warmup_fraction: float):
    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def run_training(task: TrainingTask, config: EngineConfig,
                 console: Console | None = None) -> dict[str, Any]:
    """Train (or resume) ``task``'s model; returns the last validation metrics."""
    console = console or Console(stderr=True)
    dist = Distributed.from_environment()
    device = dist.start(config.device)
    try:
        return _run(task, config, console, dist, device)
    finally:
        dist.stop()


def _resumed_model(task: TrainingTask, config: EngineConfig, console: Console,
                   quiet: bool) -> tuple[nn.Module, ModelMeta, dict[str, Any]] | None:
    """With ``--resume``, the checkpoint at ``config.output`` with its optimiser state;
    None for a new run. Read before the data, so that a checkpoint of another kind is
    refused before anything (a label cache) is written beside it."""
    if not config.resume:
        return None
    if not config.output.exists():
        if not quiet:
            console.print(f"[yellow]warning:[/] --resume: {config.output} does not exist "
                          "yet; starting a new run")
        return None
    model, meta = load_model(config.output, task=task.kind)
    _, payload = read_checkpoint(config.output)
    if not quiet:
        console.print(f"Resuming from {config.output} (epochs done: {meta.epoch}, "
                      f"step {meta.step})")
    return model, meta, payload.get("training_state", {})


#: Settings a resumed run may change without changing what it learns: its budget and
#: where it runs.
RUN_BUDGET = frozenset({"output", "epochs", "max_steps", "max_minutes", "workers", "device",
                        "resume"})
#: Where the weights came from when the run began: a resumed run keeps that record (it
#: starts from its checkpoint whatever --init says).
STARTING_POINT = ("init",)


def warn_changed_settings(before: dict[str, Any], now: dict[str, Any],
                          console: Console) -> None:
    """--resume continues a run as it began; a setting or data set that differs from
    the checkpoint's (another --lr, --alpha, other folders) is said, with both values,
    so that a mixed run is never a surprise. The run goes on with the new values."""
    now = json.loads(json.dumps(now, default=str))  # as the checkpoint stores it
    changed = [key for key in sorted(before.keys() & now.keys() - RUN_BUDGET)
               if before[key] != now[key]]
    for key in changed:
        console.print(f"[yellow]warning:[/] --resume: {key} was {_shown(before[key])}, now "
                      f"{_shown(now[key])}; the run goes on with the new value",
                      highlight=False, soft_wrap=True)


def _shown(value: Any, limit: int = 120) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class _Optimisation:
    """What one optimisation step needs: the network (wrapped for DDP under torchrun),
    AdamW, the warm-up + cosine schedule and mixed precision (bf16 where the GPU has
    it, else fp16 with loss scaling; full precision on the CPU)."""

    network: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype
    use_amp: bool

    def step(self, task: TrainingTask, batch: Any) -> tuple[dict[str, torch.Tensor],
                                                            torch.Tensor]:
        """One step on ``batch``: the task's losses and their weighted total."""
        amp = torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.use_amp)
        losses = task.losses(self.network, batch, self.device, amp)
        total = sum(task.weight(name) * loss for name, loss in losses.items())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return losses, total

    def state(self) -> dict[str, Any]:
        """What ``--resume`` restores besides the weights."""
        return {"optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict()}  # fp16: the loss scale it found


@dataclass
class _Progress:
    """Where a run stands: steps, the stop rules' verdict, the best validation score."""

    step: int
    best_score: float | None
    metrics: dict[str, Any]
    started: float
    skipped: int = 0
    stop: bool = False


def _run(task: TrainingTask, config: EngineConfig, console: Console, dist: Distributed,
         device: torch.device) -> dict[str, Any]:
    seed_everything(config.seed)
    quiet = not dist.is_main
    resumed = _resumed_model(task, config, console, quiet)
    task.prepare(console, dist)
    model, meta, resume_state = resumed or (*task.new_model(), {})
    training = config.to_dict() | task.training_info()
    if resumed:
        training |= {key: meta.training[key] for key in STARTING_POINT if key in meta.training}
        if not quiet:
            warn_changed_settings(meta.training, training, console)
    meta.training = training
    task.configure(model, device)
    model.to(device).train()

    train_set, val_set = task.datasets(meta)
    train_loader, val_loader, sampler = _loaders(train_set, val_set, config, dist, device)
    steps_per_epoch = max(1, len(train_loader))
    total_steps = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    optimisation = _optimisation(model, config, total_steps, resume_state, dist, device)

    if not quiet:
        console.print(f"Training on {device}, {dist.world_size} process(es): {task.describe()}")
    state = _Progress(step=meta.step, best_score=resume_state.get("best_score"),
                      metrics=dict(meta.metrics), started=time.monotonic())
    first_step = state.step
    progress = Progress(
        TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TextColumn("{task.fields[losses]}"),
        console=console, disable=quiet, transient=False,
    )
    with progress:
        for epoch in range(meta.epoch, config.epochs):
            if state.stop:
                break
            train_set.set_epoch(epoch)
            if sampler is not None:
                sampler.set_epoch(epoch)
            bar = progress.add_task("train", total=steps_per_epoch,
                                    epoch=f"{epoch + 1}/{config.epochs}", losses="")
            sums, batches = _train_epoch(task, train_loader, optimisation, config, state,
                                         dist, partial(progress.update, bar, advance=1))
            if batches == 0:
                break  # nothing was trained (the step budget was already spent)
            whole = not state.stop or batches == steps_per_epoch
            if dist.is_main:
                _end_epoch(task, model, meta, val_loader, optimisation, config, state,
                           epoch, epoch + 1 if whole else epoch,
                           {name: value / batches for name, value in sums.items()},
                           progress.console, device)
            dist.barrier()
    if not quiet and state.step == first_step:  # a --resume of a finished run
        console.print(f"Nothing to train: {config.output} has its {state.step} steps already "
                      "(--epochs or --max-steps reached); left unchanged")
        return state.metrics
    if not quiet:
        console.print(f"Saved {config.output} after {state.step} steps "
                      f"({time.monotonic() - state.started:.0f} s)")
        if state.skipped:
            console.print(f"[yellow]warning:[/] {state.skipped} samples failed to decode and "
                          "were replaced by other files")
        task.finish(console, state.best_score)
    return state.metrics


def _loaders(train_set: Dataset, val_set: Dataset | None, config: EngineConfig,
             dist: Distributed, device: torch.device
             ) -> tuple[DataLoader, DataLoader | None, DistributedSampler | None]:
    """Training loader (each process its share under torchrun), validation loader."""
    sampler = (DistributedSampler(train_set, seed=config.seed, drop_last=True)
               if dist.enabled else None)
    per_process_batch = max(2, config.batch_size)
    train_loader = DataLoader(
        train_set, batch_size=per_process_batch, shuffle=sampler is None, sampler=sampler,
        num_workers=config.workers,
        drop_last=len(train_set) // dist.world_size >= per_process_batch,
        generator=torch.Generator().manual_seed(config.seed),
        pin_memory=device.type == "cuda",
    )
    val_loader = (DataLoader(val_set, batch_size=per_process_batch, num_workers=config.workers)
                  if val_set is not None and len(val_set) else None)
    return train_loader, val_loader, sampler


def _optimisation(model: nn.Module, config: EngineConfig, total_steps: int,
                  resume_state: dict[str, Any], dist: Distributed,
                  device: torch.device) -> _Optimisation:
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    schedule = cosine_with_warmup(total_steps, config.warmup_fraction)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    use_amp = device.type == "cuda"
    # emulated bf16 (GPUs before Ampere) is slower than fp16 with loss scaling
    native_bf16 = use_amp and torch.cuda.is_bf16_supported(including_emulation=False)
    amp_dtype = torch.bfloat16 if native_bf16 else torch.float16
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp and amp_dtype == torch.float16)
    if resume_state:
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        # the rate at this step on this run's schedule: a larger --epochs or --max-steps
        # stretches it, and the saved rate is the old schedule's (0 at its end)
        for group, base_lr in zip(optimizer.param_groups, scheduler.base_lrs, strict=True):
            group["lr"] = base_lr * schedule(scheduler.last_epoch)
        if resume_state.get("scaler"):  # absent from checkpoints of earlier releases
            scaler.load_state_dict(resume_state["scaler"])
    device_ids = [device] if device.type == "cuda" else None
    network = DistributedDataParallel(model, device_ids=device_ids) if dist.enabled else model
    return _Optimisation(network, optimizer, scheduler, scaler, device, amp_dtype, use_amp)


def _train_epoch(task: TrainingTask, loader: DataLoader, optimisation: _Optimisation,
                 config: EngineConfig, state: _Progress, dist: Distributed,
                 advance: Callable[..., None]) -> tuple[Counter, int]:
    """One pass over ``loader``, or less when a stop rule fires (``state.stop``):
    the summed losses and the number of batches trained. ``advance(losses=...)``
    moves the progress bar."""
    sums: Counter = Counter()
    batches = 0
    for batch in loader:
        if config.max_steps is not None and state.step >= config.max_steps:
            state.stop = True  # e.g. --resume of a run that already reached --max-steps
            break
        state.skipped += int((batch[-1] > 0).sum())
        losses, total = optimisation.step(task, batch)
        state.step += 1
        batches += 1
        sums.update({name: loss.item() for name, loss in losses.items()})
        sums["total"] += total.item()
        advance(losses=_short_losses(sums, batches))
        out_of_time = config.max_minutes is not None and dist.any_rank(
            time.monotonic() - state.started > 60 * config.max_minutes, optimisation.device)
        if (config.max_steps is not None and state.step >= config.max_steps) or out_of_time:
            state.stop = True
            break
    return sums, batches


def _end_epoch(task: TrainingTask, model: nn.Module, meta: ModelMeta,
               val_loader: DataLoader | None, optimisation: _Optimisation,
               config: EngineConfig, state: _Progress, epoch: int, finished_epoch: int,
               mean_losses: dict[str, float], console: Console,
               device: torch.device) -> None:
    """Rank 0's work after an epoch: validate, keep the best checkpoint, write the
    last one (with what --resume needs), log, and print the metrics table."""
    if val_loader is not None:
        model.eval()
        state.metrics = task.validate(model, val_loader, device)
        model.train()
    meta.epoch, meta.step, meta.metrics = finished_epoch, state.step, state.metrics
    score = task.validation_score(state.metrics) if val_loader is not None else None
    if score is not None and (state.best_score is None or score > state.best_score):
        state.best_score = score
        save_checkpoint(config.best_output, model, meta)
        console.print(f"new best validation score {score:+.4f} -> {config.best_output}")
    save_checkpoint(config.output, model, meta,
                    {**optimisation.state(), "best_score": state.best_score})
    _append_log(config.log_file, {
        "epoch": epoch + 1, "step": state.step, "lr": optimisation.scheduler.get_last_lr()[0],
        "seconds": round(time.monotonic() - state.started, 1), "train_loss": mean_losses,
        "loss_weights": {n: task.weight(n) for n in mean_losses if n != "total"},
        "validation": state.metrics, "validation_score": score,
        "skipped_unreadable": state.skipped,
    })
    console.print(task.metrics_table(state.metrics, mean_losses,
                                     f"epoch {epoch + 1}: validation"))


def _short_losses(sums: Counter, batches: int) -> str:
    """Running mean of the total and of every loss, for the progress bar."""
    parts = " ".join(f"{name[:8]} {value / batches:.2f}"
                     for name, value in sums.items() if name != "total")
    return f"loss {sums['total'] / batches:.3f} | {parts}"


def _append_log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")
