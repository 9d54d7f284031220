"""``aigdetect evaluate``: measure a detector on labelled images."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import typer

from ..detectors import Detector, DetectorFolder
from ..evaluation import (
    AI_LABEL,
    REAL_LABEL,
    GroupMetrics,
    LabelledSet,
    baseline_comparison,
    evaluate_groups,
    labelled_sets,
    plot_format_known,
    plot_roc,
    summarise,
)
from ..files import parse_extensions
from ..labelled import labelled_files
from ..patches import CONDITIONS
from ..report import printable, write_evaluation
from ..scanning import NO_FACE, LoadedDetector, ScanRecord, decider_name, scan
from .common import (
    ALIGNED_OPTION,
    BATCH_OPTION,
    DETECTOR_OPTION,
    DEVICE_OPTION,
    EXIT_UNREADABLE,
    FACE_MODEL_OPTION,
    MAX_DECODE_OPTION,
    MAX_PIXELS_OPTION,
    MAX_SCANS_OPTION,
    MODEL_OPTION,
    PATCHES_OPTION,
    TIMEOUT_OPTION,
    WORKERS_OPTION,
    check_face_options,
    check_new_file,
    decode_limits,
    detector_errors,
    err,
    fail,
    flag,
    folders_holding,
    labels_csv_option,
    load_detector,
    progress_bar,
    warn,
    with_faces,
)


def evaluate_command(
    real: list[Path] = typer.Option([], "--real", exists=True, file_okay=False,
                                    help="Folder of real photos; repeatable (each is "
                                    "reported on its own)."),
    fake: list[Path] = typer.Option([], "--fake", exists=True, file_okay=False,
                                    help="Folder of AI-generated images; repeatable (each "
                                    "is reported on its own)."),
    labels: Path | None = labels_csv_option(),
    output_format: str = typer.Option("table", "--format", "-f", help="table or json."),
    plot: Path | None = typer.Option(None, help="Draw ROC curves to this new image (PNG, "
                                     "SVG...): never an existing file, nor one among the "
                                     "images scored."),
    condition: str = typer.Option(
        "asis", help="Processing applied alike to every image before scoring: asis; matched "
        "(256 px centre crop, no resampling, JPEG q90: format and size cannot decide); web "
        "(short side 512 bicubic, JPEG q75)."),
    matched: bool = flag("--matched-processing",
                                 help="Shorthand for --condition matched."),
    detector_name: str | None = DETECTOR_OPTION,
    patches: str | None = PATCHES_OPTION,
    model: Path | None = MODEL_OPTION,
    baseline: Path | None = typer.Option(
        None, help="A second detector folder, or 'shipped' for the one shipped with "
        "aigdetect, scored on the same images with the same --detector (else its own "
        "default): adds the difference in mean pair AUC with a paired bootstrap interval, "
        "which tells smaller differences apart than the two separate intervals can."),
    device: str = DEVICE_OPTION,
    batch_size: int = BATCH_OPTION,
    workers: int = WORKERS_OPTION,
    timeout: float = TIMEOUT_OPTION,
    max_pixels: int = MAX_PIXELS_OPTION,
    max_decode_mb: int = MAX_DECODE_OPTION,
    max_scans: int = MAX_SCANS_OPTION,
    include: str | None = typer.Option(None, help="Extensions to read from the folders, "
                                       "e.g. 'jpg,png' (a --csv's rows are read as listed)."),
    quiet: bool = flag("--quiet", "-q", help="No progress bar on stderr."),
    faces: bool = flag(
        "--faces", help="Measure the face detector: each image counts as its most "
        "suspicious face (found without resampling and scored alone); images without a "
        "face are counted among the errors and listed in the JSON's 'no_face'."),
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
    Exit codes: 0 measured (files that could not be scored are counted, and one is
    named on stderr), 2 usage error, 3 no real or no AI image could be scored.
    """
    if output_format not in ("table", "json"):
        fail(f"--format {output_format!r} is not table or json")
    if matched and condition not in ("asis", "matched"):
        fail(f"--matched-processing and --condition {condition} name two processings",
             "give one of them")
    condition = "matched" if matched else condition
    if condition not in CONDITIONS:
        fail(f"--condition {condition!r} is not one of {', '.join(CONDITIONS)}")
    try:
        files = labelled_files(real, fake, labels, parse_extensions(include), on_copies=warn)
    except OSError as error:
        fail(f"--csv: {error}")
    except ValueError as error:
        fail(str(error))
    groups = labelled_sets(files)
    for folder in (*real, *fake):
        if not any(g.name == str(folder) for g in groups):
            fail(f"no images found in {folder} (or each is in an earlier folder already)")
    if plot is not None:  # a new file, never one of the images or beside them
        check_new_file(plot, "--plot", [*real, *fake,
                                        *folders_holding(Path(f.path) for f in files)])
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        fail("--plot needs matplotlib, which is not installed",
             "pip install 'aigdetect[plot]', or leave out --plot")
    if plot is not None and not plot_format_known(plot):  # before minutes of scoring
        fail(f"--plot {plot}: not an image format matplotlib writes", "e.g. roc.png or roc.svg")
    missing = {REAL_LABEL, AI_LABEL} - {g.label for g in groups}
    if missing:
        fail(f"evaluate needs real and AI images, and has no {' and no '.join(sorted(missing))} "
             "image", "give --real DIR and --fake DIR (or a --csv labelling both)")
    check_face_options(faces, aligned, face_model, None)
    if faces and baseline is not None:
        fail("--baseline compares general detectors; with --faces the face detector judges",
             "leave out --faces, or compare face detectors with --face-model one at a time")
    limits = decode_limits(max_pixels, max_decode_mb, max_scans)
    loaded = load_detector(model, detector_name, device, patches, batch_size, limits,
                           condition=condition)
    if faces:
        loaded = with_faces(loaded, face_model, device, batch_size, aligned)
    judge = loaded.face_detector or loaded.detector
    compared = None if baseline is None else load_detector(
        None if is_shipped(baseline) else baseline, detector_name, device, patches,
        batch_size, limits, condition=condition)
    runs = 1 if compared is None else 2
    with progress_bar(runs * sum(len(g.paths) for g in groups), "evaluating",
                      disable=quiet) as advance:
        results = score_groups(groups, loaded, workers, timeout, advance)
        baseline_results = None if compared is None else score_groups(
            groups, compared, workers, timeout, advance)
    warn_trained_on(trained_on(model, loaded.detector), results)
    rows = evaluate_groups(results)
    calibration = judge.calibration
    name = decider_name(loaded.detector, loaded.face_detector)
    note = (f"detector {name}, threshold {calibration.threshold:.3f} = "
            f"{calibration.fpr:.1%} FPR on held-out real photos; "
            f"{CONDITIONS[condition].describe()}")
    write_evaluation(rows, output_format, sys.stdout, note, {
        "detector": name, "threshold": calibration.threshold,
        "calibrated_fpr": calibration.fpr, "condition": condition,
        "processing": CONDITIONS[condition].describe(),
        "matched_processing": condition == "matched", "model": loaded.identity,
        **summarise(results, judge.name, faces),
        "baseline": None if compared is None else baseline_comparison(
            results, baseline_results, compared.detector.name, compared.identity),
    })
    if plot is not None:
        try:
            plot_roc(results, plot)
        except (RuntimeError, OSError, ValueError) as error:
            fail(f"--plot {plot}: {error}")
        err.print(f"ROC curves written to {printable(str(plot))}", markup=False)
    report_unreadable(results, rows[-1])


def report_unreadable(results: dict[str, tuple[str, list[ScanRecord]]],
                      overall: GroupMetrics) -> None:
    """Say which files could not be scored (a warning, so also under --quiet: the
    output only counts them); exit 3 when a class has none left, so a pipeline never
    takes an evaluation of nothing for a result."""
    failed = [r for _, records in results.values() for r in records if r.verdict == "error"]
    if failed:
        err.print(f"warning: {len(failed)} file(s) could not be scored, e.g. "
                  f"{printable(failed[0].path)}: {printable(failed[0].error or '')}",
                  markup=False, highlight=False)
    faceless = [r for _, records in results.values() for r in records if r.verdict == NO_FACE]
    if faceless:
        err.print(f"warning: {len(faceless)} image(s) hold no face the face finder sees, e.g. "
                  f"{printable(faceless[0].path)}: left out of every number (listed in the "
                  "JSON's 'no_face')", markup=False, highlight=False)
    if not overall.n_real or not overall.n_ai:
        fail("no real or no AI image could be scored: nothing was measured",
             code=EXIT_UNREADABLE)


def trained_on(model: Path | None, detector: Detector) -> dict[str, set[str]]:
    """What the measured detector's components were fitted on, where their weights say."""
    with detector_errors(model):
        names = [part.name for part in (detector.parts or [detector])]
        return DetectorFolder.open(model).trained_on(names)


def warn_trained_on(trained_on: dict[str, set[str]],
                    results: dict[str, tuple[str, list[ScanRecord]]]) -> None:
    """Say when images a detector was fitted on are among those measured: its numbers
    on them flatter it, and a benchmark must hold them out."""
    for name, hashes in trained_on.items():
        seen = [r for _, records in results.values() for r in records if r.sha256 in hashes]
        if seen:
            err.print(f"warning: {len(seen)} of the images measured were fitted on by the "
                      f"{name} detector, e.g. {printable(seen[0].path)}: its numbers on them "
                      "flatter it (hold them out to measure it)", markup=False,
                      highlight=False)


def score_groups(groups: list[LabelledSet], loaded: LoadedDetector, workers: int,
                 timeout: float, advance: Callable[[int], None]
                 ) -> dict[str, tuple[str, list[ScanRecord]]]:
    """Every group's scan records by one detector: group name -> (label, records)."""
    results = {}
    for group in groups:
        records = []
        for record in scan(group.paths, loaded.detector, loaded.identity, loaded.tiles,
                           workers, timeout=timeout, face_detector=loaded.face_detector):
            records.append(record)
            advance(1)
        results[group.name] = (group.label, records)
    return results


def is_shipped(baseline: Path) -> bool:
    """``--baseline shipped`` names the shipped detector, unless a folder of that name
    is here."""
    return baseline == Path("shipped") and not baseline.exists()
