"""The ``aigdetect`` command: a thin layer over the package's modules.

Results go to stdout; progress, warnings and errors go to stderr.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from . import __version__
from .checkpoint import CheckpointError
from .training import TrainConfig, TrainingError, train

EXIT_USAGE = 2

app = typer.Typer(
    name="aigdetect",
    help=(
        "Tell camera photographs from AI-generated images.\n\n"
        "The detector learns camera traces from real photos only (by predicting their "
        "EXIF tags from pixels), then flags images whose traces do not look like any camera's."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


def fail(message: str, hint: str | None = None, code: int = EXIT_USAGE) -> None:
    """Print an error (and what to do about it) to stderr and exit."""
    err.print(f"[bold red]error:[/] {message}")
    if hint:
        err.print(f"  [dim]hint:[/] {hint}")
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"aigdetect {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Tell camera photographs from AI-generated images."""


@app.command("train")
def train_command(
    photos: Path = typer.Argument(..., help="Folder of real camera photos with EXIF (searched "
                                  "recursively).", exists=True, file_okay=False),
    output: Path = typer.Option(Path("model.pt"), "-o", "--output",
                                help="Checkpoint to write (rewritten atomically every epoch)."),
    epochs: int = typer.Option(20, min=1, help="Passes over the training photos."),
    batch_size: int = typer.Option(16, min=2, help="Photos per step and per process; ranking "
                                   "losses compare every pair in a batch."),
    patches: int = typer.Option(16, min=1, help="Random crops per photo per step."),
    patch_size: int = typer.Option(64, min=16, help="Crop side in pixels (native resolution, "
                                   "never resized). A multiple of 8."),
    lr: float = typer.Option(3e-4, help="Peak learning rate (AdamW, warm-up then cosine)."),
    weight_decay: float = typer.Option(0.05, help="AdamW weight decay."),
    workers: int = typer.Option(2, min=0, help="Image-decoding worker processes."),
    seed: int = typer.Option(0, help="Random seed (crops, split, initialisation)."),
    device: str = typer.Option("auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, "
                               "cuda:1, mps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from --output's checkpoint "
                                "(weights, optimiser, schedule, epoch)."),
    val_fraction: float = typer.Option(0.15, min=0.0, max=0.9, help="Share of photos held out "
                                       "for validation, split by camera model."),
    ranking_loss: str = typer.Option("fidelity", help="Pairwise ranking loss for ordinal tags: "
                                     "fidelity (bounded, robust) or bce."),
    min_class_count: int = typer.Option(3, min=1, help="Categorical values seen fewer times "
                                        "fold into 'other'."),
    max_steps: int | None = typer.Option(None, min=1, help="Stop after this many steps "
                                         "(checkpoint saved)."),
    max_minutes: float | None = typer.Option(None, help="Stop after this much wall time "
                                             "(checkpoint saved; --resume continues)."),
    head_weight: list[str] = typer.Option([], help="Loss weight of one head, TAG=W (e.g. "
                                          "model=0.5); repeatable. Default 1 for every head."),
) -> None:
    """Train the EXIF-pretext feature extractor on a folder of camera photos.

    Each photo's own EXIF is the label: the network classifies make, model, flash,
    metering, white balance... and ranks aperture, exposure time, ISO and focal length
    between photos. Validation holds out whole camera models. For several GPUs or
    machines run the same command under [bold]torchrun[/].
    """
    if patch_size % 8:
        fail(f"--patch-size {patch_size} is not a multiple of 8", "try 64 (the default)")
    weights: dict[str, float] = {}
    for item in head_weight:
        tag, _, value = item.partition("=")
        try:
            weights[tag.strip()] = float(value)
        except ValueError:
            fail(f"--head-weight {item!r} is not TAG=NUMBER", "e.g. --head-weight model=0.5")
    config = TrainConfig(
        photos=photos, output=output, epochs=epochs, batch_size=batch_size, patches=patches,
        patch_size=patch_size, lr=lr, weight_decay=weight_decay, workers=workers, seed=seed,
        device=device, resume=resume, val_fraction=val_fraction, ranking_loss=ranking_loss,
        min_class_count=min_class_count, max_steps=max_steps, max_minutes=max_minutes,
        head_weights=weights,
    )
    try:
        train(config, err)
    except (TrainingError, CheckpointError, ValueError) as error:
        fail(str(error))


def _later(command: str) -> None:
    fail(f"'aigdetect {command}' arrives in a later release")


@app.command("fit-gmm")
def fit_gmm_command() -> None:
    """Fit the one-class density model of real-photo features (arrives in a later release)."""
    _later("fit-gmm")


@app.command("scan")
def scan_command() -> None:
    """Score images: how likely each is AI-generated (arrives in a later release)."""
    _later("scan")


@app.command("explain")
def explain_command() -> None:
    """Show why an image was scored as it was (arrives in a later release)."""
    _later("explain")
