"""What the commands share: exit codes, errors, options, detector loading, progress."""

from __future__ import annotations

import io
import math
import os
from collections import Counter
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import replace
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

from ..detectors import (
    DETECTOR_NAMES,
    FACES_DIR,
    LOAD_ERRORS,
    DetectorFolder,
    default_model_dir,
)
from ..features import MAX_TILES
from ..patches import (
    CONDITIONS,
    DEFAULT_MAX_DECODE_MB,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SCANS,
    DecodeLimits,
)
from ..report import printable
from ..residual_model import MAX_POOLED_TILES
from ..runtime import pick_device
from ..scanning import LoadedDetector

EXIT_CLEAN = 0
EXIT_FLAGGED = 1
EXIT_USAGE = 2
EXIT_UNREADABLE = 3
EXIT_FLAGGED_AND_UNREADABLE = 4
#: After Ctrl-C, as shells report a process ended by SIGINT (128 + 2).
EXIT_INTERRUPTED = 130
#: A bug (sysexits' EX_SOFTWARE): the traceback is on stderr.
EXIT_INTERNAL_ERROR = 70
#: The reader of stdout went away (``| head``), as shells report SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141

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


def interrupted(what_was_kept: str) -> NoReturn:
    """After Ctrl-C: say what the run leaves behind (so nobody has to guess whether a
    half-written folder is usable), then exit 130."""
    err.print(f"interrupted: {what_was_kept}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_INTERRUPTED)


def flag(*names: str, **options: Any) -> Any:
    """A switch (off unless given), shown without a value label: Typer labels every
    boolean ``<bool>``, which reads as if it took a value, and ``--resume true`` would
    take ``true`` as an input path."""
    return typer.Option(False, *names, metavar="", **options)


# ---------------------------------------------------------------------------
# Options shared by the commands that score images
# ---------------------------------------------------------------------------

MODEL_OPTION = typer.Option(
    None, "--model", help="Detector folder (weights, calibration.json, detector.json) from "
    "'aigdetect fit-gmm' and 'aigdetect calibrate'. Default: the one shipped with aigdetect.")
DETECTOR_OPTION = typer.Option(
    None, "--detector", "-d", help="oneclass, binary, residual or fused (every one the "
    "folder holds, each standardised on real photos, then a weighted mean). Default: the "
    "model folder's default.")
PATCHES_OPTION = typer.Option(
    None, "--patches", help="64px tiles per image: a number, or 'all' for the most careful "
    f"(slowest) scan, up to {MAX_TILES}; the residual detector pools at most "
    f"{MAX_POOLED_TILES} of them, evenly spread (its statistics are averages). Default: the "
    "count the detector was calibrated with; other counts shift the scores a little "
    "(recalibrate to use them).")
FACES_OPTION = flag(
    "--faces", help="Judge faces: find every frontal face, cut it out without "
    "resampling and score it with the face detector. The image takes its most suspicious "
    "face's score and verdict ('no-face' when none is found); each face has its own entry "
    "in 'faces', and the general detector's opinion of the whole image is kept in 'image' "
    "(the table's 'whole image' column): the summary and exit code count the face verdicts. "
    "The shipped face detector ranks AI faces below real ones on the benchmark (see the "
    "model card): read its verdicts as a lead only.")
ALIGNED_OPTION = flag("--aligned", help="With --faces: every input is already "
                      "one face crop (no face detection); an image in which no face is seen "
                      "is noted 'no face seen:' and its verdict capped at uncertain.")
FACE_MODEL_OPTION = typer.Option(
    None, "--face-model", help="With --faces: face detector folder from 'aigdetect fit-gmm "
    "--faces'. Default: the one shipped with aigdetect.")
DEVICE_OPTION = typer.Option("auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps.")
WORKERS_OPTION = typer.Option(2, min=0, help="Decoding worker processes (0 = decode in the "
                              "main process).")
BATCH_OPTION = typer.Option(256, min=8, help="Tiles per forward pass: memory and speed, "
                            "not scores.")


TIMEOUT_OPTION = typer.Option(
    120.0, "--timeout", min=0.001,
    help="Seconds one file may take to decode before it is stopped and recorded as an "
    "error (not enforced with --workers 0).")


# The labelled training data of the supervised detectors (train --binary, fit-residual).
def real_folders_option(prefix: str = "") -> Any:
    return typer.Option([], "--real", exists=True, file_okay=False, help=f"{prefix}folder of "
                        "real photos, repeatable. Put processed photos (resized, "
                        "recompressed, edited) here too.")


def fake_folders_option(prefix: str = "") -> Any:
    return typer.Option([], "--fake", exists=True, file_okay=False, help=f"{prefix}folder of "
                        "AI images, repeatable; each folder is a generator group, balanced "
                        "against the others.")


def labels_csv_option(prefix: str = "") -> Any:
    return typer.Option(None, "--csv", exists=True, dir_okay=False, help=f"{prefix}CSV of "
                        "path,label[,group] (label real or ai; 0/1 and fake/generated are "
                        "read too) instead of, or besides, folders; relative paths are read "
                        "from the CSV's own folder.")


# Decoding limits (scan, explain, evaluate): what an evidence file may cost to decode.
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


def decode_limits(max_pixels_mp: int, max_decode_mb: int, max_scans: int) -> DecodeLimits:
    """The limits the three options above set."""
    return DecodeLimits(max_pixels_mp * 1_000_000, max_decode_mb, max_scans)


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


def check_face_options(faces: bool, aligned: bool, face_model: Path | None,
                       threshold: float | None) -> None:
    """Face options need --faces; a raw --threshold belongs to one detector's scale."""
    given = [option for option, used in (("--aligned", aligned),
                                         ("--face-model", face_model is not None)) if used]
    if given and not faces:
        verb = "needs" if len(given) == 1 else "need"
        fail(f"{' and '.join(given)} {verb} --faces", "add --faces")
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
                                      for key, value in folder.weights().items()},
                # whole images as face crops or faces found: two judges, never one file's
                "faces_crops": "aligned" if aligned else "detected"}
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


def warn(message: str | None) -> None:
    """A warning on stderr, if there is one; the command goes on."""
    if message:
        err.print(f"[yellow]warning:[/] {escape(printable(message))}", highlight=False)


def first_line(error: BaseException, limit: int = 300) -> str:
    """The gist of an error in one line: torch and numpy messages can run to pages."""
    text = " ".join(str(error).split("\n", 1)[0].split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def exit_code(verdicts: Counter) -> int:
    """0 clean, 1 flagged, 3 unreadable files (none flagged), 4 flagged and unreadable."""
    flagged, unreadable = verdicts["ai"] > 0, verdicts["error"] > 0
    if unreadable:
        return EXIT_FLAGGED_AND_UNREADABLE if flagged else EXIT_UNREADABLE
    return EXIT_FLAGGED if flagged else EXIT_CLEAN


def input_folder_holding(path: Path, folders: Iterable[str | Path]) -> str | Path | None:
    """The searched input folder that ``path`` lies in (symlinks resolved), or None."""
    real = Path(os.path.realpath(path))  # unlike Path.resolve, never raises on a link loop
    for folder in folders:
        if real.is_relative_to(os.path.realpath(folder)):
            return folder
    return None


def folders_holding(files: Iterable[Path]) -> set[str]:
    """The folders of files named one by one (by a list, a glob or the shell), resolved,
    and for a linked file its target's folder too: writing beside evidence mixes output
    with it, as writing inside a searched folder does."""
    folders = set()
    for file in files:
        folders.add(os.path.realpath(os.path.dirname(os.path.abspath(file))))
        folders.add(os.path.dirname(os.path.realpath(file)))
    return folders


def refuse_beside_inputs(output: Path, option: str, holding: set[str],
                        hint: str = "write it outside the evidence folder") -> None:
    """An output directly in a folder of named evidence files (``holding``, from
    :func:`folders_holding`), or an output folder that is one, is refused (exit 2)."""
    if os.path.realpath(output) in holding:
        fail(f"{option} {output} is the folder of files it reads: what it writes would lie "
             "beside the evidence", hint)
    if os.path.realpath(os.path.dirname(os.path.abspath(output))) in holding:
        fail(f"{option} {output} lies beside the files it reads (a folder of evidence, "
             "e.g. files from a list or a shell glob)", hint)


def refuse_inside_inputs(output: Path, option: str, folders: Iterable[str | Path],
                         hint: str = "write it outside the folders of images") -> None:
    """What a command writes never goes into a folder it reads images from: the next
    walk of that folder would take it for data (or evidence)."""
    inside = input_folder_holding(output, folders)
    if inside is not None:
        fail(f"{option} {output} is inside the input folder {inside}", hint)


def check_not_negative(option: str, value: float, hint: str) -> None:
    """A finite number of 0 or more (NaN and infinity are refused too)."""
    if not (math.isfinite(value) and value >= 0):
        fail(f"{option} {value} must be a number of 0 or more", hint)


def options_apply(options: list[str]) -> str:
    """``--a, --b apply`` or ``--a applies``: the start of a refusal of options that
    another mode of the command would ignore."""
    return f"{', '.join(options)} {'apply' if len(options) > 1 else 'applies'}"


def check_fpr(fpr: float | None, example: float) -> None:
    """A false-positive rate strictly between 0 and 1 (which also refuses NaN)."""
    if fpr is not None and not 0 < fpr < 1:
        fail(f"--fpr {fpr} must be between 0 and 1",
             f"e.g. --fpr {example:g} for {example * 100:g} %")


def report_skipped(errors: dict[str, str], shown: int = 5) -> None:
    """Name the first few files a fit left out, and why, on stderr."""
    for path, error in list(errors.items())[:shown]:
        err.print(f"[yellow]skipped[/] {escape(printable(path))}: {escape(error)}",
                  highlight=False)


def refuse_replacing(model_files: Iterable[Path], overwrite: bool,
                     hint: str | None = None) -> None:
    """A fitted model is replaced only knowingly (``--overwrite``), as ``train`` does:
    a second fit into the same folder must not silently lose the first."""
    existing = [path for path in model_files if path.exists()]
    if existing and not overwrite:
        fail(f"{existing[0]} already exists; it is never replaced without --overwrite",
             hint or "write another detector folder, or give --overwrite to replace it")


OVERWRITE_MODEL_OPTION = typer.Option(
    False, "--overwrite", metavar="", help="Replace the model files the folder already "
    "holds (without it, an existing one stops the command before any work; fit-gmm's "
    "--extractor FOLDER/extractor.pt keeps the folder's extractor as it is).")


def check_new_file(path: Path, option: str, folders: Iterable[str | Path],
                   output_dir: Path | None = None) -> None:
    """A report file must be new, outside the evidence, and in an existing folder or
    in ``output_dir`` (a folder the command creates before the report is written)."""
    try:
        os.lstat(path)  # a dangling symlink counts: it would be written through
    except FileNotFoundError:
        pass
    except OSError as error:  # e.g. a name longer than the file system allows
        fail(f"cannot write {option} {path}: {error.strerror}")
    else:
        fail(f"{option} {path} already exists; it is never replaced",
             "give a new file name")
    if not Path(os.path.abspath(path)).parent.is_dir() and not directly_in(path, output_dir):
        fail(f"cannot write {option} {path}: its folder does not exist",
             "create it first" + ("" if output_dir is None else
                                  f", or write it directly into {output_dir}/ (-o)"))
    refuse_inside_inputs(path, option, folders)


def directly_in(path: Path | None, folder: Path | None) -> bool:
    """Whether ``path`` names a file directly inside ``folder`` (neither need exist)."""
    return (path is not None and folder is not None
            and Path(os.path.abspath(path)).parent == Path(os.path.abspath(folder)))


def survive_any_text(stream: TextIO) -> None:
    """Never crash on a character the terminal's encoding lacks: escape it instead."""
    if isinstance(stream, io.TextIOWrapper):
        stream.reconfigure(errors="backslashreplace")


@contextmanager
def progress_bar(total: int, label: str, disable: bool = False):
    """A progress bar on stderr when it is a terminal (a log file or pipe would get a
    stray line from it, nothing useful); yields a function that advances it."""
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn())
    # redrawn as files finish, not from a timer thread: with --workers 0 a redraw during
    # a decode would land in the decoder's captured stderr (see patches.decoder_output)
    with Progress(*columns, console=err, disable=disable or not err.is_terminal, transient=True,
                  auto_refresh=False) as progress:
        task = progress.add_task(label, total=total)

        def advance(n: int = 1) -> None:
            progress.advance(task, n)
            progress.refresh()

        yield advance
