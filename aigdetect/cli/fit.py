"""``aigdetect fit-gmm``, ``fit-residual`` and ``calibrate``: make and calibrate a detector
folder."""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import typer
from rich.markup import escape

from ..calibrating import calibrate_folder
from ..checkpoint import CheckpointError
from ..density import DensityError
from ..detectors import (
    DENSITY_FILE,
    DETECTOR_NAMES,
    EXTRACTOR_FILE,
    FACES_DIR,
    LOAD_ERRORS,
    RESIDUAL_FILE,
    default_model_dir,
    missing_oneclass_files,
)
from ..features import FaceSettings
from ..files import parse_extensions, walk_folder
from ..labelled import AI, REAL, each_once, files_from_folders, labelled_files
from ..oneclass import fit_detector
from ..patches import CONDITIONS
from ..residual_model import (
    DEFAULT_PRETRAINED_FEATURES,
    DEFAULT_RECOMPRESS_QUALITY,
    DEFAULT_REGULARISATION,
    ResidualFitConfig,
    ResidualModelError,
    fit_residual,
)
from ..runtime import pick_device
from .common import (
    ALIGNED_OPTION,
    BATCH_OPTION,
    DEVICE_OPTION,
    OVERWRITE_MODEL_OPTION,
    WORKERS_OPTION,
    check_face_options,
    check_fpr,
    check_not_negative,
    err,
    fail,
    fake_folders_option,
    flag,
    folders_holding,
    interrupted,
    labels_csv_option,
    progress_bar,
    real_folders_option,
    refuse_inside_inputs,
    refuse_replacing,
    report_skipped,
    warn,
)

#: Fewer real photos than this above a threshold make its false-positive rate a guess.
FEW_ABOVE_THRESHOLD = 10


def fit_gmm_command(
    real: Path = typer.Argument(..., exists=True, file_okay=False,
                                help="Folder of real camera photos (searched recursively)."),
    output: Path = typer.Option(Path("detector"), "-o", "--output",
                                help="Detector folder to write (extractor.pt + density.npz)."),
    extractor: Path | None = typer.Option(
        None, help="Extractor checkpoint from 'aigdetect train'. Default: the shipped one."),
    components: str = typer.Option("auto", help="Gaussian components, or 'auto' to choose "
                                   "by BIC among 1, 2, 3, 4, 5, 6 and 8."),
    covariance: str = typer.Option("full", help="Covariance type: full, diag, tied, spherical."),
    pca_dim: int = typer.Option(32, min=1, help="Features are whitened to this many principal "
                                "components first (a full covariance of 528 dimensions needs "
                                "far more photos than most sets have)."),
    reg_covar: float = typer.Option(1e-3, help="Added to covariance diagonals "
                                    "(regularisation); 0 or more."),
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
        "with other GMM settings skips the network; never inside the photo folder."),
    no_cache: bool = flag("--no-cache", help="Neither read nor write the "
                          "feature cache."),
    include: str | None = typer.Option(None, help="Extensions to read, e.g. 'jpg,png'."),
    faces: bool = flag("--faces", help="Model the faces found in the photos "
                       "(a face detector folder). Default extractor: the shipped "
                       "face extractor."),
    aligned: bool = ALIGNED_OPTION,
    overwrite: bool = OVERWRITE_MODEL_OPTION,
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
    check_face_options(faces, aligned, None, None)
    if components != "auto" and not (components.isdigit() and int(components) >= 1):
        fail(f"--components {components!r} is neither a number of 1 or more nor 'auto'",
             "e.g. --components auto (BIC chooses), or --components 2")
    check_not_negative("--reg-covar", reg_covar, "e.g. --reg-covar 1e-3 (the default)")
    if covariance not in ("full", "diag", "tied", "spherical"):
        fail(f"--covariance {covariance!r} is not one of full, diag, tied, spherical")
    check_fpr(fpr, 0.02)
    if output.exists() and not output.is_dir():
        fail(f"--output {output} is a file; fit-gmm writes a detector folder")
    refuse_inside_inputs(output, "--output", [real])
    model_files, hint = replaced_by_fit_gmm(output, extractor)
    refuse_replacing(model_files, overwrite, hint)
    if not no_cache:
        refuse_inside_inputs(cache_dir, "--cache-dir", [real],
                             "give a --cache-dir outside the photo folder, or --no-cache")
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
        except KeyboardInterrupt:
            interrupted(f"nothing was written to {output}; run the command again")
    report_skipped(folder.errors)
    info = density.info
    unit = f"faces of {len(set(folder.paths))} photos" if faces else "photos"
    err.print(
        f"Fitted {info['components']} components on {info['n_train']} {unit} "
        f"(PCA {info['pca_dim']} dims, {info['explained_variance']:.0%} of variance); "
        f"atypicality threshold {density.threshold:.2f} = {fpr:.1%} of "
        f"{len(density.calibration_scores)} held-out {'faces' if faces else 'photos'}; "
        f"{len(folder.errors)} unreadable. Wrote {output}/", markup=False, highlight=False)
    if components != "auto" and info["components"] != int(components):
        err.print(f"[yellow]warning:[/] {components} components asked for, "
                  f"{info['components']} fitted: a mixture needs more photos than components",
                  highlight=False)
    held_out = len(density.calibration_scores)
    if held_out * fpr < FEW_ABOVE_THRESHOLD:
        err.print(f"[yellow]warning:[/] the threshold rests on {held_out} held-out "
                  f"{'faces' if faces else 'photos'}: at {fpr:.1%} about {held_out * fpr:.1f} "
                  f"of them lie above it, so its false-positive rate is a guess. Give at least "
                  f"{math.ceil(FEW_ABOVE_THRESHOLD / fpr / calibration_fraction)} photos, or "
                  "calibrate the folder on held-out photos ('aigdetect calibrate')",
                  highlight=False)


def replaced_by_fit_gmm(output: Path, extractor: Path) -> tuple[list[Path], str | None]:
    """The files fit-gmm writes into ``output`` (the density, and a copy of the extractor
    unless the extractor already is the folder's own), and what to do if the extractor
    copy exists (None: :func:`refuse_replacing`'s usual hint)."""
    copy = output / EXTRACTOR_FILE
    if copy.exists() and not (extractor.exists() and copy.samefile(extractor)):
        return [output / DENSITY_FILE, copy], (
            f"to fit on the folder's own extractor, give --extractor "
            f"{shlex.quote(str(copy))}; to replace its files, --overwrite")
    return [output / DENSITY_FILE], None


def calibrate_command(
    folder: Path = typer.Argument(..., exists=True, file_okay=False,
                                  help="Detector folder from 'aigdetect fit-gmm' (not "
                                  "inside a --real or --fake folder)."),
    real: list[Path] = typer.Option(..., "--real", exists=True, file_okay=False,
                                    help="Folder of held-out real photos (never trained or "
                                    "fitted on); repeatable. Give camera originals and "
                                    "processed (web, edited) photos in separate folders: "
                                    "the --fpr then holds on each folder."),
    binary: Path | None = typer.Option(None, exists=True, dir_okay=False, help="Binary "
                                       "detector checkpoint from 'aigdetect train --binary' "
                                       "to add to the folder (as its binary.pt, replacing "
                                       "one it has: naming it is the request)."),
    fpr: float = typer.Option(0.05, help="Target false-positive rate on the real photos of "
                              "each --real folder under each --processing (the strictest "
                              "threshold is kept): at most this share of each is called "
                              "ai, at most 4 x this share ai or uncertain."),
    default: str | None = typer.Option(None, help="Detector 'scan' uses by default "
                                       "(fused, binary, residual or oneclass). Unset: with "
                                       "--fake, the one that ranks those AI images best (the "
                                       "fusion by its cross-validated AUC); without, fused "
                                       "when a supervised detector is present."),
    device: str = DEVICE_OPTION,
    workers: int = WORKERS_OPTION,
    batch_size: int = BATCH_OPTION,
    include: str | None = typer.Option(None, help="Extensions to read, e.g. 'jpg,png'."),
    fake: list[Path] = typer.Option(
        [], "--fake", exists=True, file_okay=False, help="Folder of held-out AI images "
        "(never trained on); repeatable. Weights the fused detector's components by how "
        "well each separates them from the real photos (default: equal weights)."),
    processing: str = typer.Option(
        ",".join(CONDITIONS), help="Processings under which the --fpr must hold, comma-"
        "separated; every photo is scored under each and the strictest threshold is kept. "
        "asis: the file as it is; matched: 256 px centre crop, JPEG q90; web: short side "
        "512 px, JPEG q75. 'asis' alone is three times faster, but cropped or recompressed "
        "real photos are then flagged more often than --fpr."),
) -> None:
    """Set every detector's threshold at one false-positive rate on held-out real photos.

    Scores the photos with every detector the folder holds (one-class; binary if it has
    one or --binary adds it; residual after 'aigdetect fit-residual') and their fusion,
    and writes calibration.json and detector.json into the folder. Example:
    `aigdetect calibrate my-detector/ --binary binary.pt --real held-out/ --real web/
    --fake held-out-ai/`
    """
    check_fpr(fpr, 0.05)
    if default is not None and default not in DETECTOR_NAMES:
        fail(f"--default {default!r} is not one of {', '.join(DETECTOR_NAMES)}")
    refuse_inside_inputs(folder, "the detector folder", [*real, *fake],
                         "keep detector folders out of the photo folders: move it, or "
                         "give held-out photos from elsewhere")
    processings = [name.strip() for name in processing.split(",") if name.strip()]
    unknown = [name for name in processings if name not in CONDITIONS]
    if unknown or not processings:
        fail(f"--processing {processing!r}: choose among {', '.join(CONDITIONS)}",
             "e.g. --processing asis,matched,web")
    try:  # each photo once: a folder given twice must not pass the minimum counts
        found = each_once(files_from_folders(real, fake, parse_extensions(include)),
                          on_copies=warn)
    except ValueError as error:
        fail(str(error))
    paths = [Path(f.path) for f in found if f.label == REAL]
    kinds = [f.group for f in found if f.label == REAL]
    fakes = [Path(f.path) for f in found if f.label == AI]
    if not paths:
        fail("no images found in the --real folders")
    if fake and not fakes:
        fail("no images found in the --fake folders")
    with progress_bar((len(paths) + len(fakes)) * len(processings), "calibrating") as advance:
        try:
            written = calibrate_folder(folder, paths, fpr, pick_device(device), binary=binary,
                                       default=default, workers=workers,
                                       batch_size=batch_size, on_image=advance,
                                       fake_paths=fakes, real_groups=kinds,
                                       processings=processings)
        except (*LOAD_ERRORS, ValueError, OSError) as error:
            fail(str(error))
        except KeyboardInterrupt:
            interrupted(f"{folder} is as it was before calibrate ran")
    thresholds = ", ".join(f"{n} {t:.3f}" for n, t in written["thresholds"].items())
    weights = written["fusion_weights"]
    weighting = ("equal fusion weights" if weights is None else "fusion weights " + ", ".join(
        f"{n} {w:.2f}" for n, w in weights.items()) + " (validation AUC " + ", ".join(
        f"{n.replace('_', ' ')} {a:.3f}"
        for n, a in written["fusion_validation"]["auc"].items()) + ")")
    for kind, size in written["group_sizes"].items():
        if size * fpr < FEW_ABOVE_THRESHOLD:
            err.print(f"[yellow]warning:[/] {escape(kind)}: {size} photos, so the {fpr:.0%} "
                      f"threshold rests on about {size * fpr:.0f} of them; on new photos of "
                      f"that kind the false-positive rate can be several times {fpr:.0%}. "
                      f"Give at least {math.ceil(FEW_ABOVE_THRESHOLD / fpr)} per --real "
                      "folder.", highlight=False)
    err.print(f"Calibrated on {written['real_photos']} real photos ({written['unreadable']} "
              f"unreadable; {', '.join(processings)}) at {fpr:.1%} FPR: thresholds "
              f"{thresholds}; {weighting}; default "
              f"detector {written['default']}. Wrote {folder}/calibration.json and "
              "detector.json", markup=False, highlight=False)


def fit_residual_command(
    output: Path = typer.Argument(..., file_okay=False, help="Detector folder to add "
                                  "residual.npz to (made if missing); never among the "
                                  "training images, nor in the folder of a file --csv "
                                  "lists."),
    real: list[Path] = real_folders_option("Training data: "),
    fake: list[Path] = fake_folders_option("Training data: "),
    labels: Path | None = labels_csv_option("Training data: "),
    regularisation: float = typer.Option(
        DEFAULT_REGULARISATION, "--c", min=1e-6, help="Inverse regularisation strength of "
        "the logistic regression (smaller = simpler model)."),
    variants: int = typer.Option(2, min=1, help="Augmented copies of each training image "
                                 "(random WebP, rescaling, blur, sharpening, JPEG; both "
                                 "classes alike)."),
    val_fraction: float = typer.Option(0.15, min=0.0, max=0.9, help="Share of every group "
                                       "held out for validation (the split 'train --binary' "
                                       "holds out, so the two agree on what is unseen)."),
    seed: int = typer.Option(0, help="Random seed (split, augmentation)."),
    recompress_quality: int = typer.Option(
        DEFAULT_RECOMPRESS_QUALITY, min=0, max=100, help="Re-encode each image's tiles as "
        "JPEG at this quality before the statistics, in training and in every scan, so that "
        "the file's own storage (lossless PNG, camera JPEG, WebP) does not decide. 0: read "
        "the tiles as decoded (the previous behaviour)."),
    coding_costs: bool = flag(
        "--coding-costs/--no-coding-costs", help="Add coding costs: the bits the "
        "image's pixels cost under a pixel-prediction model of your real photos, against the "
        "bits it expected (ZED-like). Measured with the default re-encoding: better when "
        "the AI images span many generators (leave-one-generator-out mean AUC +0.03 / +0.01 "
        "/ +0.01 as-is / matched / web), no different for the shipped model's few training "
        "generators (paired difference -0.004 / -0.004 / -0.001): off there."),
    pretrained_features: bool = typer.Option(
        DEFAULT_PRETRAINED_FEATURES, "--pretrained-features/--no-pretrained-features",
        metavar="", help="Read the pooled features of a pretrained ImageNet network "
        "(EfficientNet-lite0, shipped) beside the statistics: on unseen generators they "
        "ranked better (mean AUC matched 0.73 against 0.60, web 0.70 against 0.61). They "
        "read content too: give the real side the content of the AI side (without real "
        "portraits, 14-25 % of real face photos were called AI; weights/MODEL_CARD.md). "
        "Slower: a scan of 12 MP JPEGs on 2 cores runs at 6 images/s instead of 18."),
    workers: int = WORKERS_OPTION,
    overwrite: bool = OVERWRITE_MODEL_OPTION,
) -> None:
    """Fit the residual detector: a linear classifier on hand-crafted residual statistics.

    Co-occurrences of high-pass residuals, their spectrum (upsampling peaks) and colour
    correlations (demosaicing) are pooled over the image's 64 px tiles (with
    --pretrained-features, also a shipped ImageNet network's pooled features of those
    tiles); a regularised logistic regression tells real from AI on them. It fits in
    minutes on a CPU and errs differently from the trained networks: calibrate the
    folder afterwards to use it alone or in the fused detector. Example:
    `aigdetect fit-residual my-detector/ --real photos/ --real web/ --fake sdxl/ --fake mj/`
    then `aigdetect calibrate my-detector/ --real held-out/ --fake held-out-ai/`
    """
    refuse_inside_inputs(output, "the detector folder", [*real, *fake])
    refuse_replacing([output / RESIDUAL_FILE], overwrite)
    try:
        files = labelled_files(real, fake, labels, on_copies=warn)
    except OSError as error:
        fail(f"--csv: {error}")
    except ValueError as error:
        fail(str(error))
    if not files:
        fail("no training images: give --real and --fake folders, or --csv",
             "aigdetect fit-residual my-detector/ --real photos/ --fake generated/")
    refuse_inside_inputs(output, "the detector folder",
                         folders_holding(Path(f.path) for f in files))
    config = ResidualFitConfig(regularisation=regularisation, variants=variants,
                               val_fraction=val_fraction, seed=seed, workers=workers,
                               recompress_quality=recompress_quality or None,
                               coding_costs=coding_costs,
                               pretrained_features=pretrained_features)
    with progress_bar(len(files), "fitting residual detector") as advance:
        try:
            model = fit_residual(files, config, on_image=advance)
        except (ResidualModelError, ValueError) as error:
            fail(str(error))
        except KeyboardInterrupt:
            interrupted(f"nothing was written to {output}; run the command again")
    report_skipped(model.provenance["unreadable_files"])
    output.mkdir(parents=True, exist_ok=True)
    model.save(output / RESIDUAL_FILE)
    validation = model.provenance["validation"]
    auc = validation["auc_matched"]
    err.print(f"Fitted on {model.provenance['train_images']} images "
              f"({model.provenance['unreadable']} unreadable) in "
              f"{len(model.provenance['groups'])} groups; validation AUC (matched processing) "
              f"{'n/a' if auc is None else f'{auc:.3f}'} on {validation['images']} held-out "
              f"images. Wrote {output / RESIDUAL_FILE}; {next_step(output)}", markup=False,
              highlight=False)


def next_step(folder: Path) -> str:
    """What makes a folder with a fresh residual.npz usable: calibration, and before it
    the one-class detector every folder rests on, if it lacks one."""
    quoted = shlex.quote(str(folder))  # a command to paste into a shell
    calibrate = f"calibrate it with 'aigdetect calibrate {quoted} --real HELD_OUT_PHOTOS'"
    missing = missing_oneclass_files(folder)
    if not missing:
        return calibrate
    own = ("" if EXTRACTOR_FILE in missing  # keep the extractor the folder already has
           else f" --extractor {shlex.quote(str(folder / EXTRACTOR_FILE))}")
    return (f"{folder} has no one-class detector yet, which every detector folder needs: "
            f"add one with 'aigdetect fit-gmm PHOTOS -o {quoted}{own}', then {calibrate}")
