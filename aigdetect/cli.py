"""The ``aigdetect`` command: a thin layer over the package's modules.

Results go to stdout; progress, warnings and errors go to stderr.
"""

from __future__ import annotations

import io
import math
import os
import re
import socket
import sys
from collections import Counter
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn, TextIO

import typer
from rich.console import Console
from rich.markup import escape
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
    FACES_DIR,
    LOAD_ERRORS,
    Detector,
    DetectorFolder,
    default_model_dir,
)
from .evaluation import (
    AI,
    REAL,
    component_results,
    evaluate_groups,
    labelled_sets,
    pair_metrics,
    plot_roc,
)
from .explain.case import EXPLAIN_SCHEMA_VERSION, Explainer
from .explain.consistency import PretextReader
from .explain.console import print_document
from .explain.html import render as render_html
from .face_training import FaceTrainConfig, train_faces
from .features import FaceSettings, TileSettings
from .files import IMAGE_EXTENSIONS, iter_inputs, parse_extensions, unicode_safe, walk_folder
from .labelled import files_from_csv, files_from_folders
from .oneclass import fit_detector
from .patches import (
    CONDITIONS,
    DEFAULT_MAX_DECODE_MB,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SCANS,
    DecodeLimits,
)
from .provenance import read_provenance
from .report import (
    FORMATS,
    VERDICTS,
    dumps,
    printable,
    read_run_file,
    run_file,
    write_evaluation,
    write_jsonl_record,
    write_run_file,
    write_scan,
)
from .resume import Previous, prepare_append, read_previous, recorded
from .runtime import pick_device
from .scanning import MAX_TILES, NO_FACE, ScanRecord, scan
from .training import TrainConfig, TrainingError, train

EXIT_CLEAN = 0
EXIT_FLAGGED = 1
EXIT_USAGE = 2
EXIT_UNREADABLE = 3
EXIT_FLAGGED_AND_UNREADABLE = 4
#: After Ctrl-C, as shells report a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="aigdetect",
    help=(
        "Tell camera photographs from AI-generated images.\n\n"
        "An extractor learns camera traces by predicting real photos' EXIF tags from their "
        "pixels. The default detector fuses a one-class model of those traces (images that "
        "fit no camera) with a binary real/AI classifier regularised by the same extractor."
    ),
    no_args_is_help=True,
    rich_markup_mode="markdown",
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


def fail(message: str, hint: str | None = None, code: int = EXIT_USAGE) -> NoReturn:
    """Print an error (and what to do about it) to stderr and exit.

    The texts are escaped: they quote paths and options, which may hold '[' (rich
    markup) or control characters.
    """
    err.print(f"[bold red]error:[/] {escape(printable(message))}", highlight=False,
              soft_wrap=True)
    if hint:
        err.print(f"  [dim]hint:[/] {escape(printable(hint))}", highlight=False,
                  soft_wrap=True)
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
        "EXIF pretext or --faces. Not used with --binary.", exists=True, file_okay=False),
    output: Path = typer.Option(Path("model.pt"), "-o", "--output",
                                help="Checkpoint to write (rewritten atomically every epoch)."),
    binary: bool = typer.Option(False, "--binary", help="Train the binary detector (real vs "
                                "AI) instead of the EXIF pretext: needs --real and --fake, or "
                                "--csv."),
    faces: bool = typer.Option(False, "--faces", help="Train the faces pretext instead: on the "
                               "faces found in PHOTOS, rank ISO, aperture, exposure time and "
                               "focal length, and tell original faces from manipulated ones."),
    aligned: bool = typer.Option(False, "--aligned", help="--faces: the files are face crops "
                                 "already; each whole image is one face (no detection)."),
    debug_dir: Path | None = typer.Option(
        None, "--debug-dir", file_okay=False, help="--faces: draw 8 training faces with their "
        "regions and every manipulation as PNGs here (not inside PHOTOS), to check by eye."),
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
    freeze_extractor: bool = typer.Option(
        False, "--freeze-extractor", help="--binary: keep the teacher's extractor as it is "
        "and train the real/AI head only (the limit of strong distillation; for small "
        "training sets)."),
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
                                          "model=0.5, or with --faces original=2); "
                                          "repeatable. Default 1 for every head."),
) -> None:
    """Train the EXIF-pretext feature extractor, the faces pretext (--faces), or (--binary)
    the binary detector.

    **Pretext** (default): each photo's own EXIF is the label: the network classifies make,
    model, flash, metering, white balance... and ranks aperture, exposure time, ISO and
    focal length between photos. Validation holds out whole camera models.

    **--faces** (arXiv 2501.02207): the same network on native crops of the frontal faces
    found in PHOTOS (found once, cached beside -o): it ranks ISO, aperture, exposure time and
    focal length, and an 'original' head scores faces above copies of themselves with a
    flipped mouth or eye or a slight warp (half the samples). Photos without EXIF still
    train that head. Check the manipulations first with --debug-dir.

    **--binary**: a fresh extractor of the same architecture plus a real/AI head, on
    scrambled native-resolution patches; loss = cross-entropy + alpha x feature distillation
    towards the frozen EXIF-trained extractor. Both classes are augmented alike (down- and
    upscaling, blur, sharpening, JPEG q60-100, crops) so format and size cannot decide; AI
    groups are balanced.

    For several GPUs or machines run the same command under **torchrun**.

    Examples: `aigdetect train photos/ -o extractor.pt` ·
    `aigdetect train --faces photos/ -o faces.pt --debug-dir faces-debug/` ·
    `aigdetect train --binary --real photos/ --fake sdxl/ --fake mj/ -o binary.pt`
    """
    common = {"output": output, "epochs": epochs, "batch_size": batch_size, "patches": patches,
              "patch_size": patch_size, "lr": lr, "weight_decay": weight_decay,
              "workers": workers, "seed": seed, "device": device, "resume": resume,
              "val_fraction": val_fraction, "max_steps": max_steps, "max_minutes": max_minutes}
    if patch_size % 8:
        fail(f"--patch-size {patch_size} is not a multiple of 8", "try 64 (the default)")
    if faces and binary:
        fail("--faces and --binary are two different trainings: choose one",
             "aigdetect train --faces photos/ -o faces.pt")
    if not faces and (aligned or debug_dir is not None):
        fail("--aligned and --debug-dir apply to --faces only",
             "aigdetect train --faces photos/ --debug-dir faces-debug/ -o faces.pt")
    try:
        if binary:
            if photos is not None:
                fail("--binary takes --real/--fake folders (or --csv), not a PHOTOS argument",
                     f"aigdetect train --binary --real {photos} --fake generated/")
            train_binary(BinaryConfig(real=real, fake=fake, labels_csv=labels, alpha=alpha,
                                      freeze_extractor=freeze_extractor,
                                      teacher=teacher or default_model_dir() / EXTRACTOR_FILE,
                                      **common), err)
        elif photos is None:
            fail("give a folder of camera photos to train on",
                 "aigdetect train photos/ -o extractor.pt   (or --faces, or --binary "
                 "--real/--fake)")
        elif faces:
            train_faces(FaceTrainConfig(photos=photos, aligned=aligned, debug_dir=debug_dir,
                                        head_weights=parse_head_weights(head_weight),
                                        **common), err)
        else:
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
FACES_OPTION = typer.Option(
    False, "--faces", help="Judge faces: find every frontal face, cut it out without "
    "resampling and score it with the face detector. The image takes its most suspicious "
    "face's score and verdict ('no-face' when none is found); each face has its own entry "
    "in 'faces', and the general detector's opinion of the whole image is kept in 'image'.")
ALIGNED_OPTION = typer.Option(False, "--aligned", help="With --faces: every input is already "
                              "one face crop (no face detection).")
FACE_MODEL_OPTION = typer.Option(
    None, "--face-model", help="With --faces: face detector folder from 'aigdetect fit-gmm "
    "--faces'. Default: the one shipped with aigdetect.")
DEVICE_OPTION = typer.Option("auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps.")
WORKERS_OPTION = typer.Option(2, min=0, help="Decoding worker processes (0 = decode in the "
                              "main process).")
BATCH_OPTION = typer.Option(256, min=8, help="Tiles per forward pass: memory and speed, "
                            "not scores.")
MAX_PIXELS_OPTION = typer.Option(
    DEFAULT_MAX_PIXELS // 1_000_000, "--max-pixels", min=1,
    help="Refuse images larger than this many megapixels (decompression-bomb guard).")
MAX_DECODE_OPTION = typer.Option(
    DEFAULT_MAX_DECODE_MB, "--max-decode-mb", min=1,
    help="Refuse an image whose decoding would need more memory than this (MB), judged "
    "from its header: size, channels and bit depth.")
MAX_SCANS_OPTION = typer.Option(
    DEFAULT_MAX_SCANS, "--max-scans", min=1,
    help="Refuse a progressive JPEG with more scans than this (each re-decodes the image).")
TIMEOUT_OPTION = typer.Option(
    120.0, "--timeout", min=0.001,
    help="Seconds one file may take to decode before it is stopped and recorded as an "
    "error (not enforced with --workers 0).")


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
    #: ``--faces``: the detector that judges each face (``tiles.faces`` says how they are cut)
    face_detector: Detector | None = None


def check_face_options(faces: bool, aligned: bool, face_model: Path | None,
                       threshold: float | None) -> None:
    """Face options need --faces; a raw --threshold belongs to one detector's scale."""
    if (aligned or face_model is not None) and not faces:
        fail("--aligned and --face-model go with --faces", "add --faces")
    if faces and threshold is not None:
        fail("--threshold is a raw score of one detector; with --faces two detectors judge",
             "use --fpr, which sets both at one false-positive rate")


def load_detector(model: Path | None, name: str | None, device: str, patches: str | None,
                  batch_size: int, limits: DecodeLimits | None = None,
                  condition: str = "asis") -> LoadedDetector:
    """Open a detector folder and build one of its detectors, or exit 2 with one line
    saying what is wrong with it (:func:`detector_errors`)."""
    if name is not None and name not in DETECTOR_NAMES:
        fail(f"--detector {name!r} is not one of {', '.join(DETECTOR_NAMES)}")
    tiles = parse_patches(patches)  # its usage error must not be caught below
    try:
        torch_device = pick_device(device)
    except (ValueError, RuntimeError) as error:
        fail(f"--device {device}: {error}", "try --device cpu")
    with detector_errors(model):
        folder = DetectorFolder.open(model)
        detector = folder.build(name, torch_device, batch_size)
        settings = folder.tiles(tiles, limits=limits or DecodeLimits(),
                                processing=CONDITIONS[condition])
    return LoadedDetector(detector, folder.identity(), settings)


def with_faces(loaded: LoadedDetector, face_model: Path | None, device: str,
               batch_size: int, aligned: bool) -> LoadedDetector:
    """``--faces``: add the face detector, from --face-model or the shipped ``faces/``."""
    path = face_model or default_model_dir() / FACES_DIR
    if not path.is_dir():
        fail(f"no face detector folder at {path}",
             "make one: 'aigdetect train --faces PHOTOS -o faces.pt', then 'aigdetect fit-gmm "
             "PHOTOS --faces --extractor faces.pt -o FACE_DETECTOR', and pass --face-model "
             "FACE_DETECTOR")
    with detector_errors(path):
        folder = DetectorFolder.open(path)
        detector = folder.build(None, pick_device(device), batch_size)
        faces = folder.face_settings(aligned)
    identity = {**loaded.identity, **{f"faces_{key}": value
                                      for key, value in folder.weights().items()}}
    return LoadedDetector(loaded.detector, identity, replace(loaded.tiles, faces=faces),
                          detector)


@contextmanager
def detector_errors(model: Path | None):
    """Exit 2 with one line saying what is wrong with a detector folder.

    A --model folder is user input like any image: a damaged checkpoint or density
    file can make torch, numpy or the model constructors raise almost anything, and
    a traceback (exit 1) would read as "flagged".
    """
    try:
        yield
    except (*LOAD_ERRORS, ValueError) as error:
        fail(first_line(error))
    except OSError as error:
        fail(f"cannot read the detector in {model or 'the package'}: {first_line(error)}")
    except Exception as error:  # anything else a malformed file provokes
        fail(f"{model or 'the shipped detector'} is not a usable detector folder "
             f"({type(error).__name__}: {first_line(error)})",
             "make one with 'aigdetect fit-gmm', or leave out --model for the shipped one")


def first_line(error: BaseException, limit: int = 300) -> str:
    """The gist of an error in one line: torch and numpy messages can run to pages."""
    text = " ".join(str(error).split("\n", 1)[0].split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    faces: bool = typer.Option(False, "--faces", help="Model the faces found in the photos "
                               "(a face detector folder). Default extractor: the shipped "
                               "face extractor."),
    aligned: bool = ALIGNED_OPTION,
) -> None:
    """Fit the one-class density model of real-photo features, and calibrate its threshold.

    Features of the real photos are whitened and modelled by a Gaussian mixture; part of
    the photos (whole cameras) is held out to set the threshold at the --fpr false-positive
    rate. Writes a detector folder for **aigdetect scan --model**.

    **--faces**: the features of every face found in the photos, for a face detector
    folder (**aigdetect scan --faces --face-model**). The faces paper fits 12 components
    on 25,000 real faces with the threshold at 5 % (--components 12 --fpr 0.05); with a
    few hundred faces, let BIC choose.
    """
    shipped = default_model_dir() / FACES_DIR if faces else default_model_dir()
    extractor = extractor or shipped / EXTRACTOR_FILE
    if aligned and not faces:
        fail("--aligned goes with --faces", "add --faces")
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
                on_image=advance, faces=FaceSettings(aligned=aligned) if faces else None,
            )
        except (DensityError, CheckpointError, ValueError, OSError) as error:
            fail(str(error))
    for path, error in list(folder.errors.items())[:5]:
        err.print(f"[yellow]skipped[/] {path}: {error}")
    info = density.info
    unit = f"faces of {len(set(folder.paths))} photos" if faces else "photos"
    err.print(
        f"Fitted {info['components']} components on {info['n_train']} {unit} "
        f"(PCA {info['pca_dim']} dims, {info['explained_variance']:.0%} of variance); "
        f"atypicality threshold {density.threshold:.2f} = {fpr:.1%} of "
        f"{len(density.calibration_scores)} held-out {'faces' if faces else 'photos'}; "
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
    fake: list[Path] = typer.Option(
        [], "--fake", exists=True, file_okay=False, help="Folder of held-out AI images "
        "(never trained on); repeatable. Weights the fused detector's components by how "
        "well each separates them from the real photos (default: equal weights)."),
) -> None:
    """Set every detector's threshold at one false-positive rate on held-out real photos.

    Scores the photos with the one-class detector, the binary detector (if the folder has
    one, or --binary adds it) and their fusion, and writes calibration.json and
    detector.json into the folder. Example:
    `aigdetect calibrate my-detector/ --binary binary.pt --real held-out/ --real web/
    --fake held-out-ai/`
    """
    if not 0 < fpr < 1:
        fail(f"--fpr {fpr} must be between 0 and 1", "e.g. --fpr 0.05 for 5 %")
    if default is not None and default not in DETECTOR_NAMES:
        fail(f"--default {default!r} is not one of {', '.join(DETECTOR_NAMES)}")
    paths = [p for d in real for p in walk_folder(d, parse_extensions(include))]
    fakes = [p for d in fake for p in walk_folder(d, parse_extensions(include))]
    if not paths:
        fail("no images found in the --real folders")
    if fake and not fakes:
        fail("no images found in the --fake folders")
    with progress_bar(len(paths) + len(fakes), "calibrating") as advance:
        try:
            written = calibrate_folder(folder, paths, fpr, pick_device(device), binary=binary,
                                       default=default, workers=workers,
                                       batch_size=batch_size, on_image=advance,
                                       fake_paths=fakes)
        except (*LOAD_ERRORS, ValueError, OSError) as error:
            fail(str(error))
    thresholds = ", ".join(f"{n} {t:.3f}" for n, t in written["thresholds"].items())
    weights = written["fusion_weights"]
    weighting = ("equal fusion weights" if weights is None else "fusion weights " + ", ".join(
        f"{n} {w:.2f}" for n, w in weights.items()) + " (validation AUC " + ", ".join(
        f"{n} {a:.3f}" for n, a in written["fusion_validation"]["auc"].items()) + ")")
    err.print(f"Calibrated on {written['real_photos']} real photos ({written['unreadable']} "
              f"unreadable) at {fpr:.1%} FPR: thresholds {thresholds}; {weighting}; default "
              f"detector {written['default']}. Wrote {folder}/calibration.json and "
              "detector.json")


# ---------------------------------------------------------------------------
# scan
# ---------------------------------------------------------------------------

def exit_code(verdicts: Counter) -> int:
    """0 clean, 1 flagged, 3 unreadable files (none flagged), 4 flagged and unreadable."""
    flagged, unreadable = verdicts["ai"] > 0, verdicts["error"] > 0
    if unreadable:
        return EXIT_FLAGGED_AND_UNREADABLE if flagged else EXIT_UNREADABLE
    return EXIT_FLAGGED if flagged else EXIT_CLEAN


def check_scan_options(output_format: str, output: Path | None, threshold: float | None,
                       fpr: float | None, resume: bool, verify_hash: bool, null: bool,
                       paths: list[str]) -> None:
    """Usage errors, found before the detector loads or any file is read."""
    if output_format not in FORMATS:
        fail(f"--format {output_format!r} is not one of {', '.join(FORMATS)}")
    if fpr is not None and threshold is not None:
        fail("give --threshold or --fpr, not both")
    if threshold is not None and not math.isfinite(threshold):
        fail(f"--threshold {threshold} is not a finite number",
             "a raw score such as --threshold 1.5 (see raw_score in the records), or --fpr 0.01")
    if fpr is not None and not 0 < fpr < 1:  # also refuses nan
        fail(f"--fpr {fpr} must be between 0 and 1", "e.g. --fpr 0.01 for 1 %")
    if resume and (output_format != "jsonl" or output is None):
        fail("--resume continues a JSONL results file", "use -f jsonl -o results.jsonl --resume")
    if verify_hash and not resume:
        fail("--verify-hash applies to --resume", "add --resume -f jsonl -o results.jsonl")
    if null and "-" not in paths:
        fail("--null reads NUL-separated paths from stdin", "give '-' as the input, e.g. "
             "find /cases -print0 | aigdetect scan -0 -")
    if output is not None and not Path(os.path.abspath(output)).parent.is_dir():
        fail(f"cannot write --output {output}: its folder does not exist")
    if output is not None and output.is_dir():
        fail(f"--output {output} is a folder", "give a file name, e.g. -o results.jsonl")


def check_output(output: Path, inputs: list[str], files: list[Path], force: bool,
                 overwrite: bool, resume: bool) -> None:
    """Refuse an --output that would destroy evidence or earlier results.

    Writing truncates: ``scan photo.jpg -o photo.jpg`` (a slip in the shell history)
    would wipe the evidence itself, and results written inside a scanned folder mix
    output with evidence. The same file is found by inode, so hard links and
    symlinks to an input count too.
    """
    target = Path(os.path.abspath(output))
    if not force:
        identity = _inode(target)
        if identity is not None and any(_inode(file) == identity for file in files):
            fail(f"--output {output} is one of the input files: writing it would destroy "
                 "evidence", "choose a results path outside the inputs (or --force)")
        inside = input_folder_holding(target, inputs)
        if inside is not None:
            fail(f"--output {output} is inside the input folder {inside}",
                 "write results outside the evidence (or --force)")
    # only a regular file holds earlier results: /dev/null or a pipe loses nothing
    if target.is_file() and not (overwrite or resume):
        fail(f"--output {output} already exists; its results would be lost",
             "give --overwrite to replace it, or --resume (with -f jsonl) to continue it")


def input_folder_holding(path: Path, inputs: list[str]) -> Path | None:
    """The input folder that ``path`` lies in (symlinks resolved), or None."""
    real = Path(os.path.abspath(path)).resolve()
    for folder in (Path(item) for item in inputs if item != "-" and Path(item).is_dir()):
        if real.is_relative_to(folder.resolve()):
            return folder
    return None


def _inode(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def open_results(output: Path, append: bool = False) -> TextIO:
    """The --output file, UTF-8 whatever the locale (names are made valid Unicode)."""
    try:
        return open(output, "a" if append else "w", encoding="utf-8", newline="")
    except OSError as error:
        fail(f"cannot write --output {output}: {error.strerror}")


def _survive_any_text(stream: TextIO) -> None:
    """Never crash on a character the terminal's encoding lacks: escape it instead."""
    if isinstance(stream, io.TextIOWrapper):
        stream.reconfigure(errors="backslashreplace")


@dataclass
class ScanTally:
    """What a scan has done so far: the exit code, and the line printed on Ctrl-C."""

    total: int = 0
    done: int = 0
    skipped: int = 0
    verdicts: Counter = field(default_factory=Counter)

    def add(self, verdict: str) -> None:
        self.verdicts[verdict] += 1


def skip_recorded(files: list[Path], output: Path, verify_hash: bool,
                  tally: ScanTally) -> tuple[list[Path], Previous]:
    """Files still to scan after an earlier run recorded some in ``output``; the
    skipped ones count towards the summary and exit code as they were recorded."""
    if not output.is_file():
        return files, Previous()
    try:
        previous = read_previous(output)
    except OSError as error:
        fail(f"cannot read --output {output} to resume: {error.strerror}")
    if previous.foreign:
        fail(f"--output {output} is not a JSONL results file of aigdetect; --resume would "
             "append to it", "choose another -o, or --overwrite to replace it")
    try:
        prepare_append(output, previous)
    except OSError as error:
        fail(f"cannot write --output {output}: {error.strerror}")
    if previous.ignored:
        err.print(f"[yellow]warning:[/] {previous.ignored} line(s) of "
                  f"{escape(printable(str(output)))} are not records; their files are "
                  "scanned again", highlight=False)
    todo = []
    for file in files:
        record = recorded(file, previous, verify_hash)
        if record is None:
            todo.append(file)
        else:
            tally.skipped += 1
            tally.add(str(record.get("verdict", "error")))
    return todo, previous


@app.command("scan")
def scan_command(
    paths: list[str] = typer.Argument(
        ..., help="Files, folders (recursive), globs ('shots/**/*.jpg'), or '-' to read "
        "paths from stdin, one per line (NUL-separated with --null)."),
    output_format: str = typer.Option("table", "--format", "-f",
                                      help="table (for people), json, jsonl (streamed), csv."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write results to this file instead of stdout. An "
        "existing file is never replaced without --overwrite (or continued: --resume)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output "
                                   "file."),
    resume: bool = typer.Option(
        False, "--resume", help="With -f jsonl -o FILE: append to FILE and skip files it "
        "already records with the same path, size and modification time."),
    verify_hash: bool = typer.Option(False, "--verify-hash", help="With --resume: also "
                                     "re-hash skipped files; rescan any whose sha256 changed."),
    force: bool = typer.Option(False, "--force", help="Allow --output to be an input file "
                               "or to lie inside an input folder."),
    null: bool = typer.Option(False, "--null", "-0", help="Paths on stdin ('-') are "
                              "separated by NUL bytes, as find -print0 writes them."),
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
    max_decode_mb: int = MAX_DECODE_OPTION,
    max_scans: int = MAX_SCANS_OPTION,
    timeout: float = TIMEOUT_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary on "
                               "stderr."),
    provenance: bool = typer.Option(
        False, "--provenance", help="Also read each file's metadata (C2PA, XMP "
        "DigitalSourceType, generator text chunks, EXIF software, camera EXIF) into the "
        "record's 'provenance' and a table column. Metadata only: a lead, not proof."),
    faces: bool = FACES_OPTION,
    aligned: bool = ALIGNED_OPTION,
    face_model: Path | None = FACE_MODEL_OPTION,
) -> None:
    """Score images: how likely each is AI-generated.

    **score** is in 0..1, higher = more likely AI-generated, 0.5 at the threshold: the
    logistic of how far the detector's raw score lies above the threshold, in units of the
    real photos' spread. **verdict** is ai, real, uncertain (within half a spread of the
    threshold, or a damaged file) or error (unreadable, or over a limit). **real pct** is the
    share of held-out real photos that score at least as suspicious. The default detector is
    **fused**: the binary detector and the one-class (camera-trace) detector, each record
    keeping both scores.

    Exit codes: 0 nothing flagged; 1 at least one image flagged 'ai'; 2 usage error;
    3 some files could not be read (none flagged); 4 flagged and some unreadable;
    130 interrupted (Ctrl-C): what was scanned is written.

    Examples: `aigdetect scan evidence/` ·
    `find /cases -name '*.jpg' -print0 | aigdetect scan -0 - -f jsonl -o out.jsonl` ·
    `aigdetect scan shots/ --detector oneclass` · `aigdetect scan portraits/ --faces`
    """
    started = datetime.now(timezone.utc)
    check_scan_options(output_format, output, threshold, fpr, resume, verify_hash, null, paths)
    check_face_options(faces, aligned, face_model, threshold)
    tally = ScanTally()
    found: list[tuple[str, str]] = []  # inputs that are not files: error records below
    try:  # Ctrl-C before scanning: nothing is written, and no traceback
        files = list(iter_inputs(paths, parse_extensions(include),
                                 lambda path, message: found.append((path, message)),
                                 null=null))
        if output is not None:
            check_output(output, paths, files, force, overwrite, resume)
            if sidecar_wanted(output, output_format):
                check_output(run_file(output), paths, files, force, overwrite, resume)
        tally.total = len(files)
        limits = DecodeLimits(max_pixels * 1_000_000, max_decode_mb, max_scans)
        loaded = load_detector(model, detector_name, device, patches, batch_size, limits)
        if faces:
            loaded = with_faces(loaded, face_model, device, batch_size, aligned)
        for detector in (loaded.detector, loaded.face_detector):
            if fpr is not None and detector is not None:
                detector.calibration.set_fpr(fpr)
        previous = Previous()
        if resume:
            files, previous = skip_recorded(files, output, verify_hash, tally)
            tally.done = tally.skipped
    except KeyboardInterrupt:
        err.print("interrupted before scanning; nothing written", markup=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    problems = []
    for path, message in found:
        tally.add("error")
        if (unicode_safe(path), unicode_safe(message)) not in previous.problems:
            problems.append(ScanRecord(path=path, error=message, model=loaded.identity,
                                       detector=loaded.detector.name))
    streaming = output_format == "jsonl"  # records are written, not kept: memory stays flat
    stream = open_results(output, append=resume) if output and streaming else sys.stdout
    _survive_any_text(sys.stdout)
    records: list[ScanRecord] = [] if streaming else list(problems)
    interrupted = False
    try:
        if streaming:
            for record in problems:
                write_jsonl_record(record, stream)
        with progress_bar(len(files), "scanning", disable=quiet) as advance, \
                closing(scan(files, loaded.detector, loaded.identity, loaded.tiles, workers,
                             threshold, timeout, loaded.face_detector)) as results:
            for record in results:
                if provenance:
                    record.provenance = read_provenance(record.path)
                tally.add(record.verdict)
                if streaming:
                    write_jsonl_record(record, stream)
                else:
                    records.append(record)
                tally.done += 1
                advance(1)
    except KeyboardInterrupt:  # stop cleanly: keep every finished record
        interrupted = True
    finally:
        if output and streaming:
            stream.close()
    run = run_header(started, loaded, threshold, tally, interrupted,
                     {"workers": workers, "timeout_s": timeout if workers > 0 else None,
                      "max_pixels_mp": max_pixels, "max_decode_mb": max_decode_mb,
                      "max_scans": max_scans})
    if not streaming:
        write_results(records, output_format, output, interrupted, run)
    if output is not None and sidecar_wanted(output, output_format):
        save_run_file(output, run, resume)
    report_scan(tally, output_format, quiet, interrupted,
                printable(str(output)) if output else "stdout")


def write_results(records: list[ScanRecord], output_format: str, output: Path | None,
                  interrupted: bool, run: dict[str, Any]) -> None:
    """Table, JSON and CSV are written when scanning ends, so an earlier results file
    given with --overwrite survives a run that is killed before then."""
    if output is None:
        write_scan(records, output_format, sys.stdout, interrupted=interrupted, run=run)
        return
    with open_results(output) as stream:
        write_scan(records, output_format, stream, interrupted=interrupted, run=run)


def run_header(started: datetime, loaded: LoadedDetector, threshold: float | None,
               tally: ScanTally, interrupted: bool, settings: dict[str, Any]) -> dict[str, Any]:
    """Who scanned what, how and when: the chain-of-custody record of one run."""
    detector = loaded.detector
    parts = getattr(detector, "parts", [])
    verdicts = tally.verdicts
    return {
        "aigdetect_version": __version__,
        "command": [unicode_safe(arg) for arg in sys.argv],
        "host": unicode_safe(socket.gethostname()),
        "started": started.isoformat(timespec="milliseconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
        **({"interrupted": True} if interrupted else {}),
        "detector": detector.name,
        "threshold": detector.calibration.threshold if threshold is None else threshold,
        "calibrated_fpr": None if threshold is not None else detector.calibration.fpr,
        "component_thresholds": {part.name: part.calibration.threshold for part in parts},
        "model": loaded.identity,
        "settings": {"patches": loaded.tiles.max_tiles or "all", **settings},
        "counts": {"files": verdicts.total(), **{v: verdicts[v] for v in VERDICTS},
                   "skipped": tally.skipped},
    }


def sidecar_wanted(output: Path, output_format: str) -> bool:
    """JSONL and CSV have no room for the run header: it goes beside them, in
    ``FILE.run.json``, when FILE is a regular file (not /dev/null or a pipe)."""
    return output_format in ("jsonl", "csv") and (output.is_file() or not output.exists())


def save_run_file(output: Path, run: dict[str, Any], resume: bool) -> None:
    """Write ``FILE.run.json`` atomically; a resumed run keeps the earlier runs' headers."""
    path = run_file(output)
    earlier = []
    if resume and path.is_file():
        try:
            earlier = read_run_file(path)
        except (OSError, ValueError) as error:
            err.print(f"[yellow]warning:[/] {escape(printable(str(path)))} is unreadable "
                      f"({escape(first_line(error))}); the earlier runs' headers are lost",
                      highlight=False)
    try:
        write_run_file(path, run, earlier)
    except OSError as error:
        err.print(f"[yellow]warning:[/] cannot write {escape(printable(str(path)))}: "
                  f"{error.strerror}", highlight=False)


def report_scan(tally: ScanTally, output_format: str, quiet: bool, interrupted: bool,
                where: str) -> NoReturn:
    """The summary line on stderr, then exit with the documented code."""
    if interrupted:  # always said, even with --quiet: the results are incomplete
        err.print(f"interrupted: {tally.done}/{tally.total} files done; results in {where}",
                  markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_INTERRUPTED)
    code = exit_code(tally.verdicts)
    verdicts = tally.verdicts
    skipped = f" ({tally.skipped} already recorded, skipped)" if tally.skipped else ""
    if not quiet and output_format != "table":  # the table prints its own summary
        err.print(f"[dim]{verdicts.total()} files{skipped}: {verdicts['ai']} ai, "
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
    faces: bool = FACES_OPTION,
    aligned: bool = ALIGNED_OPTION,
    face_model: Path | None = FACE_MODEL_OPTION,
) -> None:
    """Measure a detector on labelled images: AUC, average precision, accuracy, FPR, TPR.

    AI-generated is the positive class. Each AI group is measured against all real
    images, each real group reports its false-positive rate, and 'overall' pools
    everything; the JSON also has the AUC of every (AI group, real group) pair.
    Accuracy, FPR and TPR use the detector's calibrated threshold. With --faces each
    image is its most suspicious face (the condition's processing is applied to each
    face crop); images without a face are counted as errors and listed in 'no_face'.
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
    check_face_options(faces, aligned, face_model, None)
    loaded = load_detector(model, detector_name, device, patches, batch_size,
                           condition=condition)
    if faces:
        loaded = with_faces(loaded, face_model, device, batch_size, aligned)
    judge = loaded.face_detector or loaded.detector
    results: dict[str, tuple[str, list[ScanRecord]]] = {}
    with progress_bar(sum(len(g.paths) for g in groups), "evaluating", disable=quiet) as advance:
        for group in groups:
            records = []
            for record in scan(group.paths, loaded.detector, loaded.identity, loaded.tiles,
                               workers, face_detector=loaded.face_detector):
                records.append(record)
                advance(1)
            results[group.name] = (group.label, records)
    rows = evaluate_groups(results)
    calibration = judge.calibration
    name = f"faces:{judge.name}" if faces else judge.name
    note = (f"detector {name}, threshold {calibration.threshold:.3f} = "
            f"{calibration.fpr:.1%} FPR on held-out real photos; "
            f"{CONDITIONS[condition].describe()}")
    components = [] if faces else sorted(
        {n for _, records in results.values() for r in records for n in r.components}
        - {judge.name})
    write_evaluation(rows, output_format, sys.stdout, note, {
        "detector": name, "threshold": calibration.threshold,
        "no_face": {group: sum(r.verdict == NO_FACE for r in records)
                    for group, (_, records) in results.items()} if faces else None,
        "calibrated_fpr": calibration.fpr, "condition": condition,
        "processing": CONDITIONS[condition].describe(),
        "matched_processing": condition == "matched", "model": loaded.identity,
        "pairs": pair_metrics(results),
        "components": {name: {"groups": [g.to_dict() for g in evaluate_groups(view)],
                              "pairs": pair_metrics(view)}
                       for name in components
                       for view in [component_results(results, name)]},
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
def explain_command(
    paths: list[str] = typer.Argument(..., help="Image files, folders (recursive) or globs."),
    output_dir: Path | None = typer.Option(
        None, "--output", "-o", help="Folder for the heat maps (created if needed; existing "
        "files are never replaced). Default: a new explain-<UTC time>/ here."),
    output_format: str = typer.Option("table", "--format", "-f", help="table or json."),
    html_report: Path | None = typer.Option(
        None, "--html", help="Also write a self-contained HTML case report to this new file."),
    map_tiles: int = typer.Option(256, "--tiles", min=1, help="64px tiles scored one by one "
                                  "for the heat map (an evenly spread subset of the grid)."),
    detector_name: str | None = DETECTOR_OPTION,
    model: Path | None = MODEL_OPTION,
    device: str = DEVICE_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar on stderr."),
    faces: bool = typer.Option(False, "--faces", help="Also judge every face alone and draw "
                               "the boxes, coloured by verdict, in a .faces.png beside the "
                               "heat map; the exit code then follows the faces, as scan "
                               "--faces."),
    aligned: bool = ALIGNED_OPTION,
    face_model: Path | None = FACE_MODEL_OPTION,
) -> None:
    """Explain each image's score: where the evidence lies, how unusual it is, what its
    pixels say about the camera, and what its metadata says.

    Writes a heat map PNG per image (each tile scored alone: a guide to where to look,
    not a segmentation; the verdict comes from the whole tile set) and prints the case
    as a table or JSON. **--html** writes one self-contained report (images embedded,
    no network). Evidence is opened read-only. Exit codes as for scan: 0 nothing
    flagged, 1 flagged, 2 usage error, 3 unreadable (4 both).

    Example: `aigdetect explain suspect.jpg --html case-17.html`
    """
    if output_format not in ("table", "json"):
        fail(f"--format {output_format!r} is not table or json")
    found: list[tuple[str, str]] = []
    files = list(iter_inputs(paths, IMAGE_EXTENSIONS, lambda p, m: found.append((p, m))))
    for path, message in found:
        err.print(f"[yellow]skipped[/] {escape(printable(path))}: {escape(message)}",
                  highlight=False)
    if not files:
        fail("no image files among the inputs", "give image files or folders holding some")
    started = datetime.now(timezone.utc)
    if html_report is not None:
        check_new_file(html_report, "--html", paths, files)
    check_face_options(faces, aligned, face_model, None)
    folder = explain_folder(output_dir, started, paths)
    loaded = load_detector(model, detector_name, device, None, 256)
    if faces:
        loaded = with_faces(loaded, face_model, device, 256, aligned)
    explainer = Explainer(loaded.detector, loaded.tiles, load_pretext(model, device), map_tiles,
                          loaded.face_detector)
    cases = []
    with progress_bar(len(files), "explaining", disable=quiet) as advance:
        for index, path in enumerate(files, start=1):
            cases.append(explainer.explain(path, new_file(folder, index, path)))
            advance(1)
    document = {"schema_version": EXPLAIN_SCHEMA_VERSION, "kind": "aigdetect.explain",
                "aigdetect_version": __version__,
                "analysed_at": started.isoformat(timespec="seconds"),
                "command": [unicode_safe(arg) for arg in sys.argv],
                "detector": loaded.detector.name, "model": loaded.identity,
                "output_dir": unicode_safe(folder), "images": cases}
    _survive_any_text(sys.stdout)
    if output_format == "json":
        sys.stdout.write(dumps(document, indent=2) + "\n")
    else:
        print_document(document, Console(file=sys.stdout, width=None if sys.stdout.isatty()
                                         else 160))
    if html_report is not None:
        with open(html_report, "x", encoding="utf-8") as stream:
            stream.write(render_html(document))
        err.print(f"HTML report written to {escape(printable(str(html_report)))}")
    verdicts = Counter(case_verdict(case) for case in cases)
    if not quiet:
        err.print(f"[dim]heat maps in {escape(printable(str(folder)))}/[/]", highlight=False)
    raise typer.Exit(exit_code(verdicts))


def case_verdict(case: dict[str, Any]) -> str:
    """What decides the exit code: the faces' verdict with --faces, else the image's."""
    if case["verdict"] is None:
        return "error"
    return case["faces"]["verdict"] if case["faces"] is not None else case["verdict"]["verdict"]


def explain_folder(output_dir: Path | None, started: datetime, inputs: list[str]) -> Path:
    """The folder for heat maps: never inside an input folder; the default one is new."""
    folder = output_dir or Path(f"explain-{started.strftime('%Y%m%dT%H%M%SZ')}")
    inside = input_folder_holding(folder, inputs)
    if inside is not None:
        fail(f"--output {folder} is inside the input folder {inside}",
             "write outputs outside the evidence, e.g. -o ~/cases/explain")
    try:
        folder.mkdir(parents=True, exist_ok=output_dir is not None)
    except FileExistsError:
        fail(f"{folder} already exists", "give -o DIR, or run again in a second")
    except OSError as error:
        fail(f"cannot create {folder}: {error.strerror}")
    return folder


def new_file(folder: Path, index: int, image: Path) -> Path:
    """A heat map name that does not exist yet: ``<index>-<safe stem>.heatmap.png``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", unicode_safe(image.stem))[:60]
    for attempt in range(1000):
        suffix = f"-{attempt}" if attempt else ""
        path = folder / f"{index:03d}-{stem}{suffix}.heatmap.png"
        if not path.exists():
            return path
    fail(f"{folder} holds too many heat maps of {image.name}", "give another -o DIR")


def check_new_file(path: Path, option: str, inputs: list[str], files: list[Path]) -> None:
    """A report file must be new, in an existing folder, and outside the evidence."""
    if path.exists() or path.is_symlink():
        fail(f"{option} {path} already exists; it is never replaced",
             "give a new file name")
    if not Path(os.path.abspath(path)).parent.is_dir():
        fail(f"cannot write {option} {path}: its folder does not exist")
    inside = input_folder_holding(path, inputs)
    if inside is not None:
        fail(f"{option} {path} is inside the input folder {inside}",
             "write reports outside the evidence")


def load_pretext(model: Path | None, device: str) -> PretextReader | None:
    """The folder's EXIF-pretext model with its heads and the calibration photos'
    ranking reference, or None (said in the report)."""
    path = (model or default_model_dir()) / EXTRACTOR_FILE
    try:
        reference = DetectorFolder.open(model).pretext_reference
        return PretextReader.load(path, pick_device(device), reference)
    except (*LOAD_ERRORS, OSError, ValueError, RuntimeError) as error:
        err.print(f"[yellow]warning:[/] no camera-trace reading: {escape(first_line(error))}",
                  highlight=False)
        return None


@contextmanager
def progress_bar(total: int, label: str, disable: bool = False):
    """A progress bar on stderr; yields a function that advances it."""
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    # redrawn as files finish, not from a timer thread: with --workers 0 a redraw during
    # a decode would land in the decoder's captured stderr (see patches.decoder_output)
    with Progress(*columns, console=err, disable=disable, transient=True,
                  auto_refresh=False) as progress:
        task = progress.add_task(label, total=total)

        def advance(n: int = 1) -> None:
            progress.advance(task, n)
            progress.refresh()

        yield advance
