"""``aigdetect scan``: score images, stream the records, resume, write the run header."""

from __future__ import annotations

import math
import os
import sys
from contextlib import closing
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NoReturn, TextIO

import typer
from rich.markup import escape

from ..custody import ScanTally, deciders, run_header
from ..files import (
    IMAGE_EXTENSIONS,
    file_identity,
    iter_inputs,
    parse_extensions,
    unicode_safe,
)
from ..report import (
    FORMATS,
    printable,
    read_run_file,
    run_file,
    write_jsonl_record,
    write_run_file,
    write_scan,
)
from ..resume import (
    Previous,
    judged_otherwise,
    names_shown_alike,
    prepare_append,
    read_previous,
    recorded,
)
from ..runtime import interrupt_deferred
from ..scanning import NO_FACE, LoadedDetector, ScanRecord, decider_name, scan
from .common import (
    ALIGNED_OPTION,
    BATCH_OPTION,
    DETECTOR_OPTION,
    DEVICE_OPTION,
    EXIT_INTERRUPTED,
    FACE_MODEL_OPTION,
    FACES_OPTION,
    MAX_DECODE_OPTION,
    MAX_PIXELS_OPTION,
    MAX_SCANS_OPTION,
    MODEL_OPTION,
    PATCHES_OPTION,
    TIMEOUT_OPTION,
    WORKERS_OPTION,
    check_face_options,
    check_fpr,
    decode_limits,
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
from .common import interrupted as stop_interrupted  # 'interrupted' names scan's flag


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
    check_fpr(fpr, 0.01)
    if resume and (output_format != "jsonl" or output is None):
        fail("--resume continues a JSONL results file", "use -f jsonl -o results.jsonl --resume")
    if verify_hash and not resume:
        fail("--verify-hash applies to --resume", "add --resume -f jsonl -o results.jsonl")
    if null and "-" not in paths:
        fail("--null reads NUL-separated paths from stdin", "give '-' as the input, e.g. "
             "find /cases -print0 | aigdetect scan -0 -")
    if output is not None:
        try:
            folder_exists, is_folder = (Path(os.path.abspath(output)).parent.is_dir(),
                                        output.is_dir())
        except OSError as error:  # e.g. a name longer than the file system allows
            fail(f"cannot write --output {output}: {error.strerror}")
        if not folder_exists:
            fail(f"cannot write --output {output}: its folder does not exist")
        if is_folder:
            fail(f"--output {output} is a folder", "give a file name, e.g. -o results.jsonl")


def check_outputs(outputs: list[Path], searched: list[Path], files: list[Path], force: bool,
                  overwrite: bool, resume: bool) -> None:
    """Refuse an --output (or its sidecar) that would destroy evidence or earlier results.

    Writing truncates: ``scan photo.jpg -o photo.jpg`` (a slip in the shell history)
    would wipe the evidence itself, and results written inside a scanned folder mix
    output with evidence. The same file is found by inode, so hard links and
    symlinks to an input count too. The scanned files' folders are listed once for
    all the outputs (a batch may hold a hundred thousand files).
    """
    beside = set() if force else folders_holding(files)
    for output in outputs:
        check_output(output, searched, files, beside, force, overwrite, resume)


OUTSIDE_THE_EVIDENCE = "write results outside the evidence (or --force)"


def check_output(output: Path, searched: list[Path], files: list[Path], beside: set[str],
                 force: bool, overwrite: bool, resume: bool) -> None:
    """One output file: see :func:`check_outputs`; ``beside``: the scanned files' folders."""
    target = Path(os.path.abspath(output))
    identity = file_identity(target)  # never, not even with --force: output never replaces input
    if identity is not None and any(file_identity(file) == identity for file in files):
        fail(f"--output {output} is one of the input files: writing it would destroy "
             "evidence", "choose a results path that is not an input file")
    if not force:
        refuse_inside_inputs(output, "--output", searched, OUTSIDE_THE_EVIDENCE)
        refuse_beside_inputs(output, "--output", beside, OUTSIDE_THE_EVIDENCE)
    try:  # only a regular file holds earlier results: /dev/null or a pipe loses nothing
        holds_results = target.is_file()
    except OSError as error:  # e.g. a name longer than the file system allows
        fail(f"cannot write --output {output}: {error.strerror}")
    if holds_results and not (overwrite or resume):
        fail(f"--output {output} already exists; its results would be lost",
             "give --overwrite to replace it, or --resume (with -f jsonl) to continue it")


def open_results(output: Path, append: bool = False) -> TextIO:
    """The --output file, UTF-8 whatever the locale (names are made valid Unicode)."""
    try:
        return open(output, "a" if append else "w", encoding="utf-8", newline="")
    except OSError as error:
        fail(f"cannot write --output {output}: {error.strerror}")


def skip_recorded(files: list[Path], output: Path, verify_hash: bool, tally: ScanTally,
                  loaded: LoadedDetector, threshold: float | None) -> tuple[list[Path], Previous]:
    """Files still to scan after an earlier run recorded some in ``output``; the
    skipped ones count towards the summary and exit code as they were recorded.
    The earlier records must have been judged as this run judges (same weights,
    detector and threshold), or the file would mix two judges' verdicts."""
    if not output.is_file():
        return files, Previous()
    try:
        previous = read_previous(output)
    except OSError as error:
        fail(f"cannot read --output {output} to resume: {error.strerror}")
    if previous.foreign:
        fail(f"--output {output} is not a JSONL results file of aigdetect; --resume would "
             "append to it", "choose another -o, or --overwrite to replace it")
    otherwise = judged_otherwise(previous, loaded.identity, deciders(loaded, threshold))
    if otherwise is not None:
        fail(f"--output {output} holds verdicts reached by {otherwise}; resuming would mix "
             "two judges' verdicts in one file",
             "resume with the options of the first run (--model, --detector, --threshold, "
             "--fpr, --faces), or write a new -o file")
    try:
        prepare_append(output, previous)
    except OSError as error:
        fail(f"cannot write --output {output}: {error.strerror}")
    if previous.ignored:
        err.print(f"[yellow]warning:[/] {previous.ignored} line(s) of "
                  f"{escape(printable(str(output)))} are not records; their files are "
                  "scanned again", highlight=False)
    todo = []
    ambiguous = names_shown_alike(files)
    for file in files:
        record = None if file in ambiguous else recorded(file, previous, verify_hash)
        if record is None:
            todo.append(file)
        else:
            tally.skipped += 1
            tally.add(str(record.get("verdict", "error")))
    return todo, previous


def scan_command(
    paths: list[str] = typer.Argument(
        ..., help="Files, folders (recursive), globs ('shots/**/*.jpg'), or '-' to read "
        "paths from stdin, one per line (NUL-separated with --null)."),
    output_format: str = typer.Option("table", "--format", "-f",
                                      help="table (for people), json, jsonl (streamed), csv."),
    output: Path | None = typer.Option(
        None, "--output", "-o", help="Write results to this file instead of stdout ('-': "
        "stdout). An existing file is never replaced without --overwrite (or continued: "
        "--resume)."),
    overwrite: bool = flag("--overwrite", help="Replace an existing --output "
                           "file."),
    resume: bool = flag(
        "--resume", help="With -f jsonl -o FILE: append to FILE and skip files it "
        "already records with the same path, size and modification time."),
    verify_hash: bool = flag("--verify-hash", help="With --resume: also "
                             "re-hash skipped files; rescan any whose sha256 changed."),
    force: bool = flag("--force", help="Allow --output to lie inside an input folder "
                       "or beside a scanned file (never to be an input file)."),
    null: bool = flag("--null", "-0", help="Paths on stdin ('-') are "
                      "separated by NUL bytes, as find -print0 writes them."),
    include: str | None = typer.Option(
        None, help="Extensions to take from folders and globs, e.g. 'jpg,png' "
        f"(default: {', '.join(IMAGE_EXTENSIONS)}). Files named explicitly are always read."),
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
    quiet: bool = flag("--quiet", "-q", help="No progress bar or summary on "
                       "stderr."),
    provenance: bool = flag(
        "--provenance", help="Also read each file's metadata (C2PA, XMP "
        "DigitalSourceType, generator text chunks, EXIF software, camera EXIF) into the "
        "record's 'provenance' and a table column. Metadata only: a lead, not proof."),
    faces: bool = FACES_OPTION,
    aligned: bool = ALIGNED_OPTION,
    face_model: Path | None = FACE_MODEL_OPTION,
) -> None:
    """Score images: how likely each is AI-generated.

    **score** is in 0..1, higher = more likely AI-generated, 0.5 at the threshold: the
    logistic of how far the detector's raw score lies above the threshold, in units of the
    real photos' spread. **verdict** is ai (score above 0.5: at most the calibrated FPR of
    held-out real photos of each kind score that high), uncertain (below the threshold but
    above the one at 4 x FPR, or a damaged file), real, or error
    (unreadable, or over a limit). **real pct** is the
    share of held-out real photos that score at least as suspicious. The shipped default
    detector is **residual** (hand-crafted noise statistics and a pretrained ImageNet
    network's features, read by a linear classifier); --detector fused adds the binary
    and the one-class (camera-trace) detectors, each record keeping every component's
    score. On generators and cameras it never saw it ranks AI images above chance but
    far from reliably (mean AUC 0.64-0.67 in the model card's benchmark); its
    thresholds call 0-2 % of unseen camera, processed and face photos ai, and catch
    16-27 % of the images of diffusion generators it never saw and no GAN face: read
    weights/MODEL_CARD.md before relying on a verdict.

    Exit codes: 0 nothing flagged; 1 at least one image flagged 'ai'; 2 usage error;
    3 some files could not be read (none flagged); 4 flagged and some unreadable;
    130 interrupted (Ctrl-C): what was scanned is written; 141 stdout closed (| head);
    70 a bug (traceback on stderr).

    Examples: `aigdetect scan evidence/` ·
    `find /cases -name '*.jpg' -print0 | aigdetect scan -0 - -f jsonl -o out.jsonl` ·
    `aigdetect scan shots/ --detector oneclass` · `aigdetect scan portraits/ --faces`
    """
    started = datetime.now(timezone.utc)
    if output is not None and str(output) == "-":  # the shell's usual name for stdout
        output = None
    check_scan_options(output_format, output, threshold, fpr, resume, verify_hash, null, paths)
    check_face_options(faces, aligned, face_model, threshold)
    tally = ScanTally()
    found: list[tuple[str, str]] = []  # inputs that are not files: error records below
    try:  # Ctrl-C before scanning: nothing is written, and no traceback
        searched: list[Path] = []  # folders the inputs search: results stay out of them
        files = list(iter_inputs(paths, parse_extensions(include),
                                 lambda path, message: found.append((path, message)),
                                 null=null, on_folder=searched.append))
        if output is not None:
            check_outputs([output, *([run_file(output)] if sidecar_wanted(output, output_format)
                                     else [])], searched, files, force, overwrite, resume)
        tally.total = len(files)
        if not files and not found:  # not an error (a watched folder may be empty), but said
            err.print("[yellow]warning:[/] no image files among the inputs", highlight=False)
        limits = decode_limits(max_pixels, max_decode_mb, max_scans)
        loaded = load_detector(model, detector_name, device, patches, batch_size, limits)
        if faces:
            loaded = with_faces(loaded, face_model, device, batch_size, aligned)
        if provenance:  # read in the decoding workers, under --timeout
            loaded = replace(loaded, tiles=replace(loaded.tiles, provenance=True))
        for detector in (loaded.detector, loaded.face_detector):
            if fpr is not None and detector is not None:
                detector.calibration.set_fpr(fpr)
        previous = Previous()
        if resume:
            files, previous = skip_recorded(files, output, verify_hash, tally, loaded,
                                            threshold)
            tally.done = tally.skipped
    except KeyboardInterrupt:
        err.print("interrupted before scanning; nothing written", markup=False)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    problems = []
    for path, message in found:
        tally.add("error")
        if (unicode_safe(path), unicode_safe(message)) not in previous.problems:
            problems.append(ScanRecord(
                path=path, error=message, model=loaded.identity,
                detector=decider_name(loaded.detector, loaded.face_detector)))
    streaming = output_format == "jsonl"  # records are written, not kept: memory stays flat
    stream = open_results(output, append=resume) if output and streaming else sys.stdout
    survive_any_text(sys.stdout)
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
                with interrupt_deferred():  # a record is kept and counted, or neither
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
    report_scan(tally, quiet, interrupted, printable(str(output)) if output else "stdout")


def write_results(records: list[ScanRecord], output_format: str, output: Path | None,
                  interrupted: bool, run: dict[str, Any]) -> None:
    """Table, JSON and CSV are written when scanning ends, so an earlier results file
    given with --overwrite survives a run that is killed before then."""
    if output is None:
        write_scan(records, output_format, sys.stdout, interrupted=interrupted, run=run)
        return
    with open_results(output) as stream:
        write_scan(records, output_format, stream, interrupted=interrupted, run=run)


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


def report_scan(tally: ScanTally, quiet: bool, interrupted: bool, where: str) -> NoReturn:
    """The summary line on stderr, then exit with the documented code."""
    if interrupted:  # always said, even with --quiet: the results are incomplete
        stop_interrupted(f"{tally.done}/{tally.total} files done; results in {where}")
    code = exit_code(tally.verdicts)
    verdicts = tally.verdicts
    skipped = f" ({tally.skipped} already recorded, skipped)" if tally.skipped else ""
    if not quiet:  # stderr in every format: stdout carries only the results
        faceless = f", {verdicts[NO_FACE]} without a face" if verdicts[NO_FACE] else ""
        files = "file" if verdicts.total() == 1 else "files"
        err.print(f"[dim]{verdicts.total()} {files}{skipped}: {verdicts['ai']} ai, "
                  f"{verdicts['uncertain']} uncertain, {verdicts['real']} real, "
                  f"{verdicts['error']} unreadable{faceless}; exit code {code}[/]",
                  soft_wrap=True)
    raise typer.Exit(code)
