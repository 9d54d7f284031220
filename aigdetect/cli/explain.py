"""``aigdetect explain``: heat maps and a case report for each image."""

from __future__ import annotations

import os
import re
import sys
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from .. import __version__
from ..detectors import (
    EXTRACTOR_FILE,
    LOAD_ERRORS,
    Detector,
    DetectorFolder,
    default_model_dir,
    oneclass_features,
)
from ..explain.case import EXPLAIN_SCHEMA_VERSION, Explainer, deciding_verdict, unexplained_case
from ..explain.consistency import PretextReader
from ..explain.console import print_document
from ..explain.html import render as render_html
from ..files import IMAGE_EXTENSIONS, iter_inputs, unicode_safe
from ..report import dumps, printable
from ..runtime import pick_device
from .common import (
    ALIGNED_OPTION,
    DETECTOR_OPTION,
    DEVICE_OPTION,
    FACE_MODEL_OPTION,
    MAX_DECODE_OPTION,
    MAX_PIXELS_OPTION,
    MAX_SCANS_OPTION,
    MODEL_OPTION,
    check_face_options,
    check_new_file,
    decode_limits,
    directly_in,
    err,
    exit_code,
    fail,
    first_line,
    flag,
    folders_holding,
    load_detector,
    progress_bar,
    refuse_beside_inputs,
    refuse_inside_inputs,
    survive_any_text,
    with_faces,
)


def explain_command(
    paths: list[str] = typer.Argument(..., help="Image files, folders (recursive) or globs."),
    output_dir: Path | None = typer.Option(
        None, "--output", "-o", help="Folder for the heat maps (created if needed; existing "
        "files are never replaced). Default: a new explain-YYYYMMDDTHHMMSSZ/ here (UTC)."),
    output_format: str = typer.Option("table", "--format", "-f", help="table or json."),
    html_report: Path | None = typer.Option(
        None, "--html", help="Also write a self-contained HTML case report to this new file."),
    map_tiles: int = typer.Option(256, "--tiles", min=1, help="64px tiles scored one by one "
                                  "for the heat map (an evenly spread subset of the grid)."),
    detector_name: str | None = DETECTOR_OPTION,
    model: Path | None = MODEL_OPTION,
    device: str = DEVICE_OPTION,
    max_pixels: int = MAX_PIXELS_OPTION,
    max_decode_mb: int = MAX_DECODE_OPTION,
    max_scans: int = MAX_SCANS_OPTION,
    quiet: bool = flag("--quiet", "-q", help="No progress bar, and no closing line "
                       "naming the heat-map folder, on stderr."),
    faces: bool = flag("--faces", help="Also judge every face alone and draw "
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

    Example: `aigdetect explain evidence/suspect.jpg --html case-17.html`
    """
    if output_format not in ("table", "json"):
        fail(f"--format {output_format!r} is not table or json")
    found: list[tuple[str, str]] = []  # inputs that are not files: error cases, as in scan
    searched: list[Path] = []  # folders the inputs search: outputs stay out of them
    files = list(iter_inputs(paths, IMAGE_EXTENSIONS, lambda p, m: found.append((p, m)),
                             on_folder=searched.append))
    if not files and not found:
        fail("no image files among the inputs", "give image files or folders holding some")
    started = datetime.now(timezone.utc)
    beside = folders_holding(files)  # outputs stay out of these and of searched folders
    if html_report is not None:
        check_new_file(html_report, "--html", searched, output_dir)
        refuse_beside_inputs(html_report, "--html", beside)
    check_face_options(faces, aligned, face_model, None)
    folder = explain_folder(output_dir, started, searched, beside)
    limits = decode_limits(max_pixels, max_decode_mb, max_scans)
    loaded = load_detector(model, detector_name, device, None, 256, limits)
    if faces:
        loaded = with_faces(loaded, face_model, device, 256, aligned)
    created = make_folder(folder, output_dir is not None)
    explainer = Explainer(loaded.detector, loaded.tiles,
                          load_pretext(model, device, loaded.detector), map_tiles,
                          loaded.face_detector)
    cases = [unexplained_case(path, message, limits) for path, message in found]
    with progress_bar(len(files), "explaining", disable=quiet) as advance:
        for index, path in enumerate(files, start=1):
            cases.append(explainer.explain(path, new_file(folder, index, path)))
            advance(1)
    if created and not any(folder.iterdir()) and not directly_in(html_report, folder):
        folder.rmdir()  # no readable image: leave no empty folder behind
        folder = None
    document = {"schema_version": EXPLAIN_SCHEMA_VERSION, "kind": "aigdetect.explain",
                "aigdetect_version": __version__,
                "analysed_at": started.isoformat(timespec="seconds"),
                "command": [unicode_safe(arg) for arg in sys.argv],
                "detector": loaded.detector.name, "model": loaded.identity,
                "output_dir": None if folder is None else unicode_safe(folder), "images": cases}
    survive_any_text(sys.stdout)
    if output_format == "json":
        sys.stdout.write(dumps(document, indent=2) + "\n")
    else:
        print_document(document, Console(file=sys.stdout, width=None if sys.stdout.isatty()
                                         else 160))
    if html_report is not None:
        with open(html_report, "x", encoding="utf-8") as stream:
            stream.write(render_html(document))
        err.print(f"HTML report written to {escape(printable(str(html_report)))}")
    verdicts = Counter(deciding_verdict(case).get("verdict", "error") for case in cases)
    if not quiet and folder is not None:
        err.print(f"[dim]heat maps in {escape(printable(str(folder)))}/[/]", highlight=False)
    raise typer.Exit(exit_code(verdicts))


def explain_folder(output_dir: Path | None, started: datetime, searched: list[Path],
                   beside: set[str]) -> Path:
    """The folder for heat maps, checked before anything loads: never inside a folder
    searched for images nor directly beside a file named alone (a later walk of that
    folder would take the heat maps for evidence); the default one (``explain-<UTC
    time>``, here) must not exist yet."""
    if str(output_dir) == "-":
        fail("-o takes a folder for the heat maps; the table or JSON always goes to stdout",
             "give -o DIR")
    if output_dir is not None and os.path.lexists(output_dir) and not output_dir.is_dir():
        fail(f"{output_dir} is a file, not a folder", "give -o a new or an existing folder")
    folder = output_dir or Path(f"explain-{started.strftime('%Y%m%dT%H%M%SZ')}")
    if output_dir is None and os.path.realpath(os.getcwd()) in beside:
        fail(f"the heat maps would go into {folder}/ here, beside the evidence",
             "run explain from another folder, or give -o DIR outside the evidence folder")
    refuse_inside_inputs(folder, "--output", searched)
    refuse_beside_inputs(folder, "--output", beside)
    if output_dir is None and os.path.lexists(folder):
        fail(f"{folder} already exists", "give -o DIR, or run again in a second")
    return folder


def make_folder(folder: Path, may_exist: bool) -> bool:
    """Create the heat-map folder; True when this run created it (and so may remove
    it again when no heat map was drawn)."""
    existed = may_exist and folder.is_dir()
    try:
        folder.mkdir(parents=True, exist_ok=may_exist)
    except FileExistsError:
        fail(f"{folder} already exists", "give -o DIR, or run again in a second")
    except OSError as error:
        fail(f"cannot create {folder}: {error.strerror}")
    return not existed


def new_file(folder: Path, index: int, image: Path) -> Path:
    """A heat map name that does not exist yet: ``<index>-<safe stem>.heatmap.png``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", unicode_safe(image.stem))[:60]
    for attempt in range(1000):
        suffix = f"-{attempt}" if attempt else ""
        path = folder / f"{index:03d}-{stem}{suffix}.heatmap.png"
        if not os.path.lexists(path):  # a dangling link is taken too: never written through
            return path
    fail(f"{folder} holds too many heat maps of {image.name}", "give another -o DIR")


def load_pretext(model: Path | None, device: str, detector: Detector) -> PretextReader | None:
    """The folder's EXIF-pretext model with its heads and the calibration photos'
    ranking reference, or None (said in the report). It shares the detector's
    one-class extractor (the same weights) when there is one."""
    path = (model or default_model_dir()) / EXTRACTOR_FILE
    try:
        reference = DetectorFolder.open(model).pretext_reference
        return PretextReader.load(path, pick_device(device), reference,
                                  oneclass_features(detector))
    except (*LOAD_ERRORS, OSError, ValueError, RuntimeError) as error:
        err.print(f"[yellow]warning:[/] no camera-trace reading: {escape(first_line(error))}",
                  highlight=False)
        return None
