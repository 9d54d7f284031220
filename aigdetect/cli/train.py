"""``aigdetect train``: the EXIF pretext, the faces pretext or the binary detector."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from ..binary_training import BinaryConfig, train_binary
from ..checkpoint import (
    BINARY,
    FACE_HEADS,
    FACES,
    PRETEXT,
    CheckpointError,
    read_checkpoint,
)
from ..detectors import EXTRACTOR_FILE, default_model_dir
from ..engine import EngineConfig
from ..face_training import FaceTrainConfig, train_faces
from ..labelled import files_from_csv
from ..training import PRETEXT_HEADS, TrainConfig, TrainingError, train
from .common import (
    check_not_negative,
    err,
    fail,
    fake_folders_option,
    flag,
    folders_holding,
    interrupted,
    labels_csv_option,
    options_apply,
    real_folders_option,
    refuse_inside_inputs,
    warn,
)


def train_command(
    photos: Path | None = typer.Argument(
        None, help="Folder of real camera photos with EXIF (searched recursively), for the "
        "EXIF pretext or --faces. Not used with --binary.", exists=True, file_okay=False),
    output: Path = typer.Option(Path("model.pt"), "-o", "--output",
                                help="Checkpoint to write (rewritten atomically every epoch)."),
    binary: bool = flag("--binary", help="Train the binary detector (real vs "
                        "AI) instead of the EXIF pretext: needs --real and --fake, or "
                        "--csv."),
    faces: bool = flag("--faces", help="Train the faces pretext instead: on the "
                       "faces found in PHOTOS, rank ISO, aperture, exposure time and "
                       "focal length, and tell original faces from manipulated ones."),
    aligned: bool = flag("--aligned", help="--faces: the files are face crops "
                         "already; each whole image is one face (no detection)."),
    debug_dir: Path | None = typer.Option(
        None, "--debug-dir", file_okay=False, help="--faces: draw 8 training faces with their "
        "regions and every manipulation as PNGs here (not inside PHOTOS), to check by eye."),
    real: list[Path] = real_folders_option("--binary: "),
    fake: list[Path] = fake_folders_option("--binary: "),
    labels: Path | None = labels_csv_option("--binary: "),
    teacher: Path | None = typer.Option(None, help="--binary: the EXIF-trained extractor that "
                                        "regularises the detector. Default: the shipped one."),
    alpha: float = typer.Option(0.05, min=0.0, help="--binary: weight of the feature "
                                "distillation loss (f1..f5) towards the teacher; 0 turns it off."),
    freeze_extractor: bool = flag(
        "--freeze-extractor", help="--binary: keep the teacher's extractor as it is "
        "and train the real/AI head only (the limit of strong distillation; for small "
        "training sets)."),
    init: Path | None = typer.Option(
        None, "--init", exists=True, dir_okay=False, help="Pretext and --faces: start the "
        "extractor from this checkpoint's (its heads are not taken), e.g. the shipped "
        "weights/extractor.pt; the faces paper starts from a network trained on camera "
        "photos. Default: random weights."),
    epochs: int = typer.Option(20, min=1, help="Passes over the training photos."),
    batch_size: int = typer.Option(16, min=2, help="Photos per step and per process; ranking "
                                   "losses compare every pair in a batch."),
    patches: int = typer.Option(16, min=1, help="Random crops per photo per step."),
    patch_size: int = typer.Option(64, min=16, help="Crop side in pixels (native resolution, "
                                   "never resized). A multiple of 8. --binary takes the "
                                   "teacher's."),
    lr: float = typer.Option(3e-4, help="Peak learning rate (AdamW, warm-up then cosine); "
                             "above 0."),
    weight_decay: float = typer.Option(0.05, help="AdamW weight decay; 0 or more."),
    workers: int = typer.Option(2, min=0, help="Image-decoding worker processes."),
    seed: int = typer.Option(0, help="Random seed (crops, split, initialisation)."),
    device: str = typer.Option("auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, "
                               "cuda:1, mps."),
    resume: bool = flag("--resume", help="Continue from --output's checkpoint "
                        "(weights, optimiser, schedule, epoch)."),
    overwrite: bool = flag("--overwrite", help="Start a new training over an "
                           "existing --output (without it, or --resume, an existing "
                           "checkpoint is never replaced)."),
    val_fraction: float = typer.Option(0.15, min=0.0, max=0.9, help="Share of photos held out "
                                       "for validation: whole camera models; --binary also "
                                       "holds out that share of every AI group."),
    ranking_loss: str = typer.Option("fidelity", help="Pairwise ranking loss for ordinal tags: "
                                     "fidelity (bounded, robust) or bce."),
    min_class_count: int = typer.Option(3, min=1, help="Categorical values seen fewer times "
                                        "fold into 'other'."),
    max_steps: int | None = typer.Option(None, min=1, help="Stop after this many steps "
                                         "(checkpoint saved)."),
    max_minutes: float | None = typer.Option(None, min=0.01, help="Stop after this much wall "
                                             "time (checkpoint saved; --resume continues)."),
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
    towards the frozen EXIF-trained extractor. Both classes are augmented alike (WebP
    q50-95, down- and upscaling, blur, sharpening, JPEG q60-100, crops) so format and size
    cannot decide; AI
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
    check_optimiser(lr, weight_decay)
    if faces and binary:
        fail("--faces and --binary are two different trainings: choose one",
             "aigdetect train --faces photos/ -o faces.pt")
    if not faces and (aligned or debug_dir is not None):
        fail("--aligned and --debug-dir apply to --faces only",
             "aigdetect train --faces photos/ --debug-dir faces-debug/ -o faces.pt")
    binary_only = [option for option, given in (
        ("--real", real), ("--fake", fake), ("--csv", labels), ("--teacher", teacher),
        ("--alpha", alpha != BinaryConfig.alpha), ("--freeze-extractor", freeze_extractor))
        if given]
    if binary_only and not binary:
        fail(f"{options_apply(binary_only)} to --binary only",
             "aigdetect train --binary --real photos/ --fake generated/ -o binary.pt")
    if binary and init is not None:
        fail("--init applies to the pretext and --faces trainings; --binary starts fresh, "
             "as the paper's does", "use --freeze-extractor to build on the teacher")
    if binary and head_weight:
        fail("--head-weight weighs the pretext and --faces heads; --binary has one head")
    if freeze_extractor and alpha != BinaryConfig.alpha:
        fail("--alpha weighs the distillation towards the teacher; with --freeze-extractor the "
             "extractor is the teacher's, frozen, so there is nothing to distil",
             "leave --alpha out, or train the extractor (without --freeze-extractor)")
    check_pretext_only(binary, faces, ranking_loss, min_class_count)
    if binary and patch_size != EngineConfig.patch_size:
        fail("--binary takes its teacher's patch size; --patch-size applies to the pretext "
             "and --faces trainings", "leave --patch-size out (or train a teacher with it)")
    check_checkpoint_target(output, resume, overwrite)
    teacher = teacher or default_model_dir() / EXTRACTOR_FILE
    refuse_replacing_inputs(output, {"--teacher": teacher if binary else None, "--init": init})
    if resume and output.is_file():
        check_resume(output, BINARY if binary else FACES if faces else PRETEXT, patch_size,
                     init)
    refuse_inside_inputs(output, "-o", [*real, *fake, *([photos] if photos else []),
                                        *folders_listed_in(labels)])
    try:
        if binary:
            if photos is not None:
                fail("--binary takes --real/--fake folders (or --csv), not a PHOTOS argument",
                     f"aigdetect train --binary --real {photos} --fake generated/")
            train_binary(BinaryConfig(real=real, fake=fake, labels_csv=labels, alpha=alpha,
                                      freeze_extractor=freeze_extractor,
                                      teacher=teacher,
                                      **common), err)
        elif photos is None:
            fail("give a folder of camera photos to train on",
                 "aigdetect train photos/ -o extractor.pt   (or --faces, or --binary "
                 "--real/--fake)")
        elif faces:
            train_faces(FaceTrainConfig(photos=photos, aligned=aligned, debug_dir=debug_dir,
                                        init=init,
                                        head_weights=parse_head_weights(head_weight,
                                                                        FACE_HEADS),
                                        **common), err)
        else:
            train(TrainConfig(photos=photos, ranking_loss=ranking_loss, init=init,
                              min_class_count=min_class_count,
                              head_weights=parse_head_weights(head_weight, PRETEXT_HEADS),
                              **common), err)
    except (TrainingError, CheckpointError, ValueError) as error:
        fail(str(error))
    except KeyboardInterrupt:  # said, as scan says it: the run is not finished
        interrupted(f"{output} holds the last finished epoch: continue with --resume"
                    if output.exists() else "no epoch finished, nothing was saved")


def check_pretext_only(binary: bool, faces: bool, ranking_loss: str,
                       min_class_count: int) -> None:
    """The EXIF pretext's own options are refused elsewhere: the faces pretext ranks with
    the fidelity loss and has no categorical heads, the binary detector neither."""
    given = [option for option, changed in (
        ("--ranking-loss", ranking_loss != TrainConfig.ranking_loss),
        ("--min-class-count", min_class_count != TrainConfig.min_class_count)) if changed]
    if given and (binary or faces):
        fail(f"{options_apply(given)} to the EXIF pretext only, not to "
             f"{'--binary' if binary else '--faces'}",
             f"leave {' and '.join(given)} out, or train the EXIF pretext: "
             "aigdetect train photos/ -o extractor.pt")


def check_optimiser(lr: float, weight_decay: float) -> None:
    """Refused before any photo is read: AdamW would only say so after the data."""
    if not (math.isfinite(lr) and lr > 0):
        fail(f"--lr {lr} must be a number above 0", "e.g. --lr 3e-4 (the default)")
    check_not_negative("--weight-decay", weight_decay,
                       "e.g. --weight-decay 0.05 (the default), or 0 for none")


def refuse_replacing_inputs(output: Path, inputs: dict[str, Path | None]) -> None:
    """-o is rewritten every epoch: it must not be a checkpoint the run reads
    (--overwrite replaces an earlier output, never an input)."""
    for option, path in inputs.items():
        if path is not None and output.exists() and path.exists() and output.samefile(path):
            fail(f"-o {output} is the {option} checkpoint this training reads: training "
                 "would replace it", "give another -o")


def folders_listed_in(labels: Path | None) -> set[str]:
    """The folders of the images a --csv lists, and of their targets where they are links
    (the checkpoint stays out of them, as out of --real/--fake); none for no CSV or one
    that cannot be read, which training then reports in full."""
    if labels is None:
        return set()
    try:
        return folders_holding(Path(f.path) for f in files_from_csv(labels))
    except (OSError, ValueError):
        return set()


#: the option that trains each kind of checkpoint
KIND_OPTIONS = {PRETEXT: "neither --binary nor --faces", BINARY: "--binary", FACES: "--faces"}


def check_resume(output: Path, kind: str, patch_size: int, init: Path | None) -> None:
    """--resume continues a run as it began: the same kind of training, on its patch
    size (the binary detector's is its teacher's), from its own weights (so --init no
    longer applies)."""
    if init is not None:
        warn(f"--init {init} is not used: --resume continues {output} from its own weights")
    try:
        meta, _ = read_checkpoint(output)
    except CheckpointError:
        return  # the training says what is wrong with it
    if meta.task != kind:
        fail(f"--resume: {output} is a {meta.task} checkpoint, where a {kind} one is needed",
             f"continue it with {KIND_OPTIONS.get(meta.task, 'the command that wrote it')}, "
             "or give another -o")
    if kind != BINARY and meta.config.patch_size != patch_size:
        fail(f"--resume continues {output}, trained on {meta.config.patch_size} px patches, "
             f"not {patch_size}", f"give --patch-size {meta.config.patch_size}")


def check_checkpoint_target(output: Path, resume: bool, overwrite: bool) -> None:
    """A checkpoint is hours of work: an existing one is continued (--resume) or
    knowingly replaced (--overwrite), never lost to a forgotten flag."""
    if resume and overwrite:
        fail("--resume continues --output, --overwrite starts over it: choose one")
    if output.is_dir():
        fail(f"-o {output} is a folder; training writes a checkpoint file",
             f"e.g. -o {output / 'extractor.pt'}")
    if output.exists() and not (resume or overwrite):
        fail(f"-o {output} already exists; it is never replaced without --overwrite",
             "continue it with --resume, or start again with --overwrite")


def parse_head_weights(items: list[str], heads: tuple[str, ...]) -> dict[str, float]:
    """``["model=0.5"]`` -> ``{"model": 0.5}``; a head the training lacks is refused."""
    weights: dict[str, float] = {}
    for item in items:
        tag, _, value = item.partition("=")
        tag = tag.strip()
        try:
            weights[tag] = float(value)
        except ValueError:
            fail(f"--head-weight {item!r} is not TAG=NUMBER", "e.g. --head-weight model=0.5")
        if not (math.isfinite(weights[tag]) and weights[tag] >= 0):
            fail(f"--head-weight {item!r}: a weight is a number of 0 or more (0 turns the "
                 "head off)", "e.g. --head-weight model=0.5")
        if tag not in heads:
            fail(f"--head-weight {item!r}: no head {tag!r} in this training",
                 f"heads: {', '.join(heads)}")
    return weights
