"""The ``aigdetect`` command: a thin layer over the package's modules.

Results go to stdout; progress, warnings and errors go to stderr.
"""

from __future__ import annotations

import sys
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from . import __version__
from .binary_training import BinaryConfig, train_binary
from .calibrating import calibrate_folder
from .checkpoint import CheckpointError
from .density import DensityError
from .detectors import (
    DETECTOR_NAMES,
    EXTRACTOR_FILE,
    LOAD_ERRORS,
    Detector,
    DetectorFolder,
    default_model_dir,
)
from .evaluation import AI, REAL, evaluate_groups, labelled_sets, pair_metrics, plot_roc
from .features import TileSettings
from .files import IMAGE_EXTENSIONS, iter_inputs, parse_extensions, walk_folder
from .labelled import files_from_csv, files_from_folders
from .oneclass import fit_detector
from .patches import CONDITIONS, DEFAULT_MAX_PIXELS
from .report import FORMATS, write_evaluation, write_jsonl_record, write_scan
from .runtime import pick_device
from .scanning import MAX_TILES, ScanRecord, scan
from .training import TrainConfig, TrainingError, train

EXIT_CLEAN = 0
EXIT_FLAGGED = 1
EXIT_USAGE = 2
EXIT_UNREADABLE = 3
EXIT_FLAGGED_AND_UNREADABLE = 4

app = typer.Typer(
    name="aigdetect",
    help=(
        "Tell camera photographs from AI-generated images.\n\n"
        "The detector learns camera traces from real photos only (by predicting their "
        "EXIF tags from pixels), then flags images whose traces do not look like any camera's."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


def fail(message: str, hint: str | None = None, code: int = EXIT_USAGE) -> NoReturn:
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
    photos: Path | None = typer.Argument(
        None, help="Folder of real camera photos with EXIF (searched recursively), for the "
        "EXIF pretext. Not used with --binary.", exists=True, file_okay=False),
    output: Path = typer.Option(Path("model.pt"), "-o", "--output",
                                help="Checkpoint to write (rewritten atomically every epoch)."),
    binary: bool = typer.Option(False, "--binary", help="Train the binary detector (real vs "
                                "AI) instead of the EXIF pretext: needs --real and --fake, or "
                                "--csv."),
    real: list[Path] = typer.Option([], "--real", exists=True, file_okay=False, help="--binary: "
                                    "folder of real photos, repeatable. Put processed photos "
                                    "(resized, recompressed, edited) here too."),
    fake: list[Path] = typer.Option([], "--fake", exists=True, file_okay=False, help="--binary: "
                                    "folder of AI images, repeatable; each folder is a "
                                    "generator group, balanced against the others."),
    labels: Path | None = typer.Option(None, "--csv", exists=True, dir_okay=False, help="--binary:"
                                       " CSV of path,label[,group] (label real/ai) instead of, "
                                       "or besides, folders."),
    teacher: Path | None = typer.Option(None, help="--binary: the EXIF-trained extractor that "
                                        "regularises the detector. Default: the shipped one."),
    alpha: float = typer.Option(0.05, min=0.0, help="--binary: weight of the feature "
                                "distillation loss (f1..f5) towards the teacher; 0 turns it off."),
    epochs: int = typer.Option(20, min=1, help="Passes over the training photos."),
    batch_size: int = typer.Option(16, min=2, help="Photos per step and per process; ranking "
                                   "losses compare every pair in a batch."),
    patches: int = typer.Option(16, min=1, help="Random crops per photo per step."),
    patch_size: int = typer.Option(64, min=16, help="Crop side in pixels (native resolution, "
                                   "never resized). A multiple of 8. --binary takes the "
                                   "teacher's."),
    lr: float = typer.Option(3e-4, help="Peak learning rate (AdamW, warm-up then cosine)."),
    weight_decay: float = typer.Option(0.05, help="AdamW weight decay."),
    workers: int = typer.Option(2, min=0, help="Image-decoding worker processes."),
    seed: int = typer.Option(0, help="Random seed (crops, split, initialisation)."),
    device: str = typer.Option("auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, "
                               "cuda:1, mps."),
    resume: bool = typer.Option(False, "--resume", help="Continue from --output's checkpoint "
                                "(weights, optimiser, schedule, epoch)."),
    val_fraction: float = typer.Option(0.15, min=0.0, max=0.9, help="Share of photos held out "
                                       "for validation: whole camera models; --binary also "
                                       "holds out that share of every AI group."),
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
    """Train the EXIF-pretext feature extractor, or (--binary) the binary detector.

    **Pretext** (default): each photo's own EXIF is the label: the network classifies make,
    model, flash, metering, white balance... and ranks aperture, exposure time, ISO and
    focal length between photos. Validation holds out whole camera models.

    **--binary**: a fresh extractor of the same architecture plus a real/AI head, on
    scrambled native-resolution patches; loss = cross-entropy + alpha x feature distillation
    towards the frozen EXIF-trained extractor. Both classes are augmented alike (downscale,
    blur, JPEG q60-100, crops) so format and size cannot decide; AI groups are balanced.

    For several GPUs or machines run the same command under **torchrun**.

    Examples: `aigdetect train photos/ -o extractor.pt` ·
    `aigdetect train --binary --real photos/ --fake sdxl/ --fake mj/ -o binary.pt`
    """
    common = {"output": output, "epochs": epochs, "batch_size": batch_size, "patches": patches,
              "patch_size": patch_size, "lr": lr, "weight_decay": weight_decay,
              "workers": workers, "seed": seed, "device": device, "resume": resume,
              "val_fraction": val_fraction, "max_steps": max_steps, "max_minutes": max_minutes}
    if patch_size % 8:
        fail(f"--patch-size {patch_size} is not a multiple of 8", "try 64 (the default)")
    try:
        if binary:
            if photos is not None:
                fail("--binary takes --real/--fake folders (or --csv), not a PHOTOS argument",
                     f"aigdetect train --binary --real {photos} --fake generated/")
            train_binary(BinaryConfig(real=real, fake=fake, labels_csv=labels, alpha=alpha,
                                      teacher=teacher or default_model_dir() / EXTRACTOR_FILE,
                                      **common), err)
        else:
            if photos is None:
                fail("give a folder of camera photos to train on",
                     "aigdetect train photos/ -o extractor.pt   (or --binary --real/--fake)")
            train(TrainConfig(photos=photos, ranking_loss=ranking_loss,
                              min_class_count=min_class_count,
                              head_weights=parse_head_weights(head_weight), **common), err)
    except (TrainingError, CheckpointError, ValueError) as error:
        fail(str(error))


def parse_head_weights(items: list[str]) -> dict[str, float]:
    """``["model=0.5"]`` -> ``{"model": 0.5}``."""
    weights: dict[str, float] = {}
    for item in items:
        tag, _, value = item.partition("=")
        try:
            weights[tag.strip()] = float(value)
        except ValueError:
            fail(f"--head-weight {item!r} is not TAG=NUMBER", "e.g. --head-weight model=0.5")
    return weights


# ---------------------------------------------------------------------------
# Options shared by the commands that score images
# ---------------------------------------------------------------------------

MODEL_OPTION = typer.Option(
    None, "--model", help="Detector folder (weights, calibration.json, detector.json) from "
    "'aigdetect fit-gmm' and 'aigdetect calibrate'. Default: the one shipped with aigdetect.")
DETECTOR_OPTION = typer.Option(
    None, "--detector", "-d", help="binary, oneclass or fused (both, each standardised on "
    "real photos, then averaged). Default: the model folder's default.")
PATCHES_OPTION = typer.Option(
    None, "--patches", help="64px tiles per image: a number, or 'all' for the most careful "
    f"(slowest) scan, up to {MAX_TILES}. Default: the count the detector was calibrated with; "
    "other counts shift the scores a little (recalibrate to use them).")
DEVICE_OPTION = typer.Option("auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps.")
WORKERS_OPTION = typer.Option(2, min=0, help="Decoding worker processes (0 = decode in the "
                              "main process).")
BATCH_OPTION = typer.Option(256, min=8, help="Tiles per forward pass: memory and speed, "
                            "not scores.")
MAX_PIXELS_OPTION = typer.Option(
    DEFAULT_MAX_PIXELS // 1_000_000, "--max-pixels", min=1,
    help="Refuse images larger than this many megapixels (decompression-bomb guard).")


def parse_patches(text: str | None) -> int | None:
    """``None`` keeps the detector's setting, ``all`` is 0 (every tile), else a count."""
    if text is None:
        return None
    if text.strip().lower() == "all":
        return 0
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 1:
        fail(f"--patches {text!r} is neither a positive number nor 'all'", "e.g. --patches 64")
    return count


@dataclass
class LoadedDetector:
    """A ready detector with what every record and report names about it."""

    detector: Detector
    identity: dict[str, str]
    tiles: TileSettings


def load_detector(model: Path | None, name: str | None, device: str, patches: str | None,
                  batch_size: int, max_pixels: int = DEFAULT_MAX_PIXELS // 1_000_000,
                  condition: str = "asis") -> LoadedDetector:
    """Open a detector folder and build one of its detectors; any problem is exit 2."""
    if name is not None and name not in DETECTOR_NAMES:
        fail(f"--detector {name!r} is not one of {', '.join(DETECTOR_NAMES)}")
    try:
        folder = DetectorFolder.open(model)
        detector = folder.build(name, pick_device(device), batch_size)
        tiles = folder.tiles(parse_patches(patches), max_pixels=max_pixels * 1_000_000,
                             processing=CONDITIONS[condition])
        return LoadedDetector(detector, folder.identity(), tiles)
    except (*LOAD_ERRORS, ValueError, OSError) as error:
        fail(str(error))


# ---------------------------------------------------------------------------
# fit-gmm
# ---------------------------------------------------------------------------

@app.command("fit-gmm")
def fit_gmm_command(
    real: Path = typer.Argument(..., exists=True, file_okay=False,
                                help="Folder of real camera photos (searched recursively)."),
    output: Path = typer.Option(Path("detector"), "-o", "--output",
                                help="Detector folder to write (extractor.pt + density.npz)."),
    extractor: Path | None = typer.Option(
        None, help="Extractor checkpoint from 'aigdetect train'. Default: the shipped one."),
    components: str = typer.Option("auto", help="Gaussian components, or 'auto' to choose "
                                   "by BIC among 1-8."),
    covariance: str = typer.Option("full", help="Covariance type: full, diag, tied, spherical."),
    pca_dim: int = typer.Option(32, min=1, help="Features are whitened to this many principal "
                                "components first (a full covariance of 528 dimensions needs "
                                "far more photos than most sets have)."),
    reg_covar: float = typer.Option(1e-3, help="Added to covariance diagonals (regularisation)."),
    fpr: float = typer.Option(0.02, help="Target false-positive rate on held-out real photos; "
                              "sets the threshold."),
    calibration_fraction: float = typer.Option(
        0.25, min=0.05, max=0.9, help="Share of photos held out (by camera) to calibrate."),
    patches: int = typer.Option(16, min=1, help="Tiles per image; scan uses the same. More "
                                "is steadier and slower."),
    seed: int = typer.Option(0, help="Random seed (split, k-means++ initialisation)."),
    device: str = DEVICE_OPTION,
    workers: int = WORKERS_OPTION,
    cache_dir: Path = typer.Option(
        Path.home() / ".cache" / "aigdetect", help="Feature cache (plain .npz), so a refit "
        "with other GMM settings skips the network."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the "
                                  "feature cache."),
    include: str | None = typer.Option(None, help="Extensions to read, e.g. 'jpg,png'."),
) -> None:
    """Fit the one-class density model of real-photo features, and calibrate its threshold.

    Features of the real photos are whitened and modelled by a Gaussian mixture; part of
    the photos (whole cameras) is held out to set the threshold at the --fpr false-positive
    rate. Writes a detector folder for **aigdetect scan --model**.
    """
    extractor = extractor or default_model_dir() / EXTRACTOR_FILE
    if components != "auto" and not components.isdigit():
        fail(f"--components {components!r} is neither a number nor 'auto'")
    if covariance not in ("full", "diag", "tied", "spherical"):
        fail(f"--covariance {covariance!r} is not one of full, diag, tied, spherical")
    if not 0 < fpr < 1:
        fail(f"--fpr {fpr} must be between 0 and 1", "e.g. --fpr 0.02 for 2 %")
    if output.exists() and not output.is_dir():
        fail(f"--output {output} is a file; fit-gmm writes a detector folder")
    paths = list(walk_folder(real, parse_extensions(include)))
    if not paths:
        fail(f"no images found under {real}")
    with progress_bar(len(paths), "features") as advance:
        try:
            density, folder = fit_detector(
                paths, extractor, output, patches=patches,
                components=components if components == "auto" else int(components),
                covariance_type=covariance, pca_dim=pca_dim, reg_covar=reg_covar, fpr=fpr,
                calibration_fraction=calibration_fraction, seed=seed, device=device,
                workers=workers, cache_dir=None if no_cache else cache_dir,
                on_image=advance,
            )
        except (DensityError, CheckpointError, ValueError, OSError) as error:
            fail(str(error))
    for path, error in list(folder.errors.items())[:5]:
        err.print(f"[yellow]skipped[/] {path}: {error}")
    info = density.info
    err.print(
        f"Fitted {info['components']} components on {info['n_train']} photos "
        f"(PCA {info['pca_dim']} dims, {info['explained_variance']:.0%} of variance); "
        f"threshold {density.threshold:.2f} = {fpr:.1%} of "
        f"{len(density.calibration_scores)} held-out photos; "
        f"{len(folder.errors)} unreadable. Wrote {output}/")


# ---------------------------------------------------------------------------
# calibrate
# ---------------------------------------------------------------------------

@app.command("calibrate")
def calibrate_command(
    folder: Path = typer.Argument(..., exists=True, file_okay=False,
                                  help="Detector folder from 'aigdetect fit-gmm'."),
    real: list[Path] = typer.Option(..., "--real", exists=True, file_okay=False,
                                    help="Folder of held-out real photos (never trained or "
                                    "fitted on); repeatable. Give camera originals and "
                                    "processed (web, edited) photos."),
    binary: Path | None = typer.Option(None, exists=True, dir_okay=False, help="Binary "
                                       "detector checkpoint from 'aigdetect train --binary' "
                                       "to add to the folder."),
    fpr: float = typer.Option(0.05, help="Target false-positive rate on the real photos."),
    default: str | None = typer.Option(None, help="Detector 'scan' uses by default: fused "
                                       "(when a binary detector is present), binary or "
                                       "oneclass."),
    device: str = DEVICE_OPTION,
    workers: int = WORKERS_OPTION,
    batch_size: int = BATCH_OPTION,
    include: str | None = typer.Option(None, help="Extensions to read, e.g. 'jpg,png'."),
) -> None:
    """Set every detector's threshold at one false-positive rate on held-out real photos.

    Scores the photos with the one-class detector, the binary detector (if the folder has
    one, or --binary adds it) and their fusion, and writes calibration.json and
    detector.json into the folder. Example:
    `aigdetect calibrate my-detector/ --binary binary.pt --real held-out/ --real web/`
    """
    if not 0 < fpr < 1:
        fail(f"--fpr {fpr} must be between 0 and 1", "e.g. --fpr 0.05 for 5 %")
    if default is not None and default not in DETECTOR_NAMES:
        fail(f"--default {default!r} is not one of {', '.join(DETECTOR_NAMES)}")
    paths = [p for d in real for p in walk_folder(d, parse_extensions(include))]
    if not paths:
        fail("no images found in the --real folders")
    with progress_bar(len(paths), "calibrating") as advance:
        try:
            written = calibrate_folder(folder, paths, fpr, pick_device(device), binary=binary,
                                       default=default, workers=workers,
                                       batch_size=batch_size, on_image=advance)
        except (*LOAD_ERRORS, ValueError, OSError) as error:
            fail(str(error))
    thresholds = ", ".join(f"{n} {t:.3f}" for n, t in written["thresholds"].items())
    err.print(f"Calibrated on {written['real_photos']} real photos ({written['unreadable']} "
              f"unreadable) at {fpr:.1%} FPR: thresholds {thresholds}; default detector "
              f"{written['default']}. Wrote {folder}/calibration.json and detector.json")


# ---------------------------------------------------------------------------
# scan
# ---------------------------------------------------------------------------

def exit_code(verdicts: Counter) -> int:
    """0 clean, 1 flagged, 3 unreadable files (none flagged), 4 flagged and unreadable."""
    flagged, unreadable = verdicts["ai"] > 0, verdicts["error"] > 0
    if unreadable:
        return EXIT_FLAGGED_AND_UNREADABLE if flagged else EXIT_UNREADABLE
    return EXIT_FLAGGED if flagged else EXIT_CLEAN


@app.command("scan")
def scan_command(
    paths: list[str] = typer.Argument(
        ..., help="Files, folders (recursive), globs ('shots/**/*.jpg'), or '-' to read "
        "paths from stdin, one per line."),
    output_format: str = typer.Option("table", "--format", "-f",
                                      help="table (for people), json, jsonl (streamed), csv."),
    output: Path | None = typer.Option(None, "--output", "-o",
                                       help="Write results to this file instead of stdout."),
    include: str | None = typer.Option(
        None, help="Extensions to take from folders and globs, e.g. 'jpg,png' "
        f"(default: {','.join(IMAGE_EXTENSIONS)}). Files named explicitly are always read."),
    threshold: float | None = typer.Option(
        None, help="Decision threshold on the detector's raw score (raw_score; overrides the "
        "calibrated one)."),
    fpr: float | None = typer.Option(
        None, help="Re-set the threshold to this false-positive rate on the detector's "
        "held-out real photos, e.g. 0.01."),
    detector_name: str | None = DETECTOR_OPTION,
    patches: str | None = PATCHES_OPTION,
    model: Path | None = MODEL_OPTION,
    device: str = DEVICE_OPTION,
    batch_size: int = BATCH_OPTION,
    workers: int = WORKERS_OPTION,
    max_pixels: int = MAX_PIXELS_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary on "
                               "stderr."),
) -> None:
    """Score images: how likely each is AI-generated.

    **score** is in 0..1, higher = more likely AI-generated, 0.5 at the threshold: the
    logistic of how far the detector's raw score lies above the threshold, in units of the
    real photos' spread. **verdict** is ai, real, uncertain (within half a spread of the
    threshold) or error (unreadable). **real pct** is the share of held-out real photos
    that score at least as suspicious. The default detector is **fused**: the binary
    detector and the one-class (camera-trace) detector, each record keeping both scores.

    Exit codes: 0 nothing flagged; 1 at least one image flagged 'ai'; 2 usage error;
    3 some files could not be read (none flagged); 4 flagged and some unreadable.

    Examples: `aigdetect scan evidence/` ·
    `find /cases -name '*.jpg' | aigdetect scan - -f jsonl` ·
    `aigdetect scan shots/ --detector oneclass`
    """
    if output_format not in FORMATS:
        fail(f"--format {output_format!r} is not one of {', '.join(FORMATS)}")
    if fpr is not None and threshold is not None:
        fail("give --threshold or --fpr, not both")
    if fpr is not None and not 0 < fpr < 1:
        fail(f"--fpr {fpr} must be between 0 and 1", "e.g. --fpr 0.01 for 1 %")
    loaded = load_detector(model, detector_name, device, patches, batch_size, max_pixels)
    if fpr is not None:
        loaded.detector.calibration.set_fpr(fpr)
    problems: list[ScanRecord] = []

    def on_problem(path: str, message: str) -> None:
        problems.append(ScanRecord(path=path, error=message, model=loaded.identity,
                                   detector=loaded.detector.name))

    files = list(iter_inputs(paths, parse_extensions(include), on_problem))
    streaming = output_format == "jsonl"  # records are written, not kept: memory stays flat
    records: list[ScanRecord] = [] if streaming else list(problems)
    verdicts = Counter(r.verdict for r in problems)
    try:
        stream = open(output, "w") if output else sys.stdout  # noqa: SIM115 (closed below)
    except OSError as error:
        fail(f"cannot write --output {output}: {error.strerror}")
    try:
        if streaming:
            for record in problems:
                write_jsonl_record(record, stream)
        with progress_bar(len(files), "scanning", disable=quiet) as advance:
            for record in scan(files, loaded.detector, loaded.identity, loaded.tiles, workers,
                               threshold):
                verdicts[record.verdict] += 1
                if streaming:
                    write_jsonl_record(record, stream)
                else:
                    records.append(record)
                advance(1)
        if not streaming:
            write_scan(records, output_format, stream)
    finally:
        if output:
            stream.close()
    code = exit_code(verdicts)
    if not quiet and output_format != "table":  # the table prints its own summary
        err.print(f"[dim]{verdicts.total()} files: {verdicts['ai']} ai, "
                  f"{verdicts['uncertain']} uncertain, {verdicts['real']} real, "
                  f"{verdicts['error']} unreadable; exit code {code}[/]")
    raise typer.Exit(code)


# ---------------------------------------------------------------------------
# evaluate
# ---------------------------------------------------------------------------

@app.command("evaluate")
def evaluate_command(
    real: list[Path] = typer.Option([], "--real", help="Folder of real photos; repeatable "
                                    "(each is reported on its own)."),
    fake: list[Path] = typer.Option([], "--fake", help="Folder of AI-generated images; "
                                    "repeatable (each is reported on its own)."),
    labels: Path | None = typer.Option(None, "--csv", help="CSV of path,label[,group] (label "
                                       "real/ai or 0/1) instead of, or besides, folders."),
    output_format: str = typer.Option("table", "--format", "-f", help="table or json."),
    plot: Path | None = typer.Option(None, help="Draw ROC curves to this image (PNG, SVG...)."),
    condition: str = typer.Option(
        "asis", help="Processing applied alike to every image before scoring: asis; matched "
        "(256 px centre crop, no resampling, JPEG q90: format and size cannot decide); web "
        "(short side 512 bicubic, JPEG q75)."),
    matched: bool = typer.Option(False, "--matched-processing",
                                 help="Shorthand for --condition matched."),
    detector_name: str | None = DETECTOR_OPTION,
    patches: str | None = PATCHES_OPTION,
    model: Path | None = MODEL_OPTION,
    device: str = DEVICE_OPTION,
    batch_size: int = BATCH_OPTION,
    workers: int = WORKERS_OPTION,
    include: str | None = typer.Option(None, help="Extensions to read, e.g. 'jpg,png'."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar on stderr."),
) -> None:
    """Measure a detector on labelled images: AUC, average precision, accuracy, FPR, TPR.

    AI-generated is the positive class. Each AI group is measured against all real
    images, each real group reports its false-positive rate, and 'overall' pools
    everything; the JSON also has the AUC of every (AI group, real group) pair.
    Accuracy, FPR and TPR use the detector's calibrated threshold.
    """
    if output_format not in ("table", "json"):
        fail(f"--format {output_format!r} is not table or json")
    condition = "matched" if matched else condition
    if condition not in CONDITIONS:
        fail(f"--condition {condition!r} is not one of {', '.join(CONDITIONS)}")
    try:
        files = files_from_folders(real, [], parse_extensions(include))
        files += files_from_folders([], fake, parse_extensions(include))
        files += files_from_csv(labels) if labels is not None else []
    except (OSError, ValueError) as error:
        fail(f"--csv: {error}")
    groups = labelled_sets(files)
    for folder in (*real, *fake):
        if not any(g.name == str(folder) for g in groups):
            fail(f"no images found in {folder}")
    if plot is not None and not plot.parent.is_dir():
        fail(f"--plot {plot}: folder {plot.parent} does not exist")
    if not any(g.label == REAL for g in groups) or not any(g.label == AI for g in groups):
        fail("evaluate needs real and AI images", "give --real DIR and --fake DIR (or --csv)")
    loaded = load_detector(model, detector_name, device, patches, batch_size,
                           condition=condition)
    results: dict[str, tuple[str, list[ScanRecord]]] = {}
    with progress_bar(sum(len(g.paths) for g in groups), "evaluating", disable=quiet) as advance:
        for group in groups:
            records = []
            for record in scan(group.paths, loaded.detector, loaded.identity, loaded.tiles,
                               workers):
                records.append(record)
                advance(1)
            results[group.name] = (group.label, records)
    rows = evaluate_groups(results)
    calibration = loaded.detector.calibration
    note = (f"detector {loaded.detector.name}, threshold {calibration.threshold:.3f} = "
            f"{calibration.fpr:.1%} FPR on held-out real photos; "
            f"{CONDITIONS[condition].describe()}")
    write_evaluation(rows, output_format, sys.stdout, note, {
        "detector": loaded.detector.name, "threshold": calibration.threshold,
        "calibrated_fpr": calibration.fpr, "condition": condition,
        "processing": CONDITIONS[condition].describe(),
        "matched_processing": condition == "matched", "model": loaded.identity,
        "pairs": pair_metrics(results),
    })
    if plot is not None:
        try:
            plot_roc(results, plot)
        except (RuntimeError, OSError, ValueError) as error:
            fail(f"--plot {plot}: {error}")
        err.print(f"ROC curves written to {plot}")


# ---------------------------------------------------------------------------
# explain
# ---------------------------------------------------------------------------

@app.command("explain")
def explain_command() -> None:
    """Show why an image was scored as it was (arrives in a later release)."""
    fail("'aigdetect explain' arrives in a later release")


@contextmanager
def progress_bar(total: int, label: str, disable: bool = False):
    """A progress bar on stderr; yields a function that advances it."""
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=err, disable=disable, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda n=1: progress.advance(task, n)
