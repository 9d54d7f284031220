"""Faces pretext training (arXiv 2501.02207): camera traces learned from face crops.

The network sees native-pixel patches of a face and ranks four EXIF tags of the
photo it comes from (ISO, aperture, exposure time, focal length), as the EXIF
pretext does with whole photos, plus one more ranking head, ``original``: half
of the faces are replaced by a manipulation of themselves (a flipped mouth or
eye, a warp), and the head learns to score originals higher. Every head uses the
fidelity ranking loss (the paper's). Validation holds out whole cameras: per tag
the ranking concordance, and for ``original`` the concordance on 0/1 labels,
which is the AUC of original against manipulated faces.

:class:`FaceTask` is the task the shared :mod:`aigdetect.engine` runs;
:func:`train_faces` is the entry point.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader

from .checkpoint import FACE_HEADS, FACES, ModelMeta
from .dataset import Photo, split_by_camera
from .engine import TrainingError, run_training
from .face_data import FaceDataset, FaceSample, detect_faces
from .faces import ENLARGE, crop_landmarks, face_crop
from .losses import fidelity_ranking_loss, pairwise_concordance
from .manipulations import save_debug
from .patches import ImageReadError, load_image
from .runtime import Distributed
from .training import (
    InitialExtractor,
    PhotoTrainingConfig,
    initial_extractor,
    main_first,
    metrics_table,
    new_photo_model,
    read_photos,
    validation_score,
)

__all__ = ["FaceTask", "FaceTrainConfig", "train_faces"]

DEBUG_FACES = 8
"""Training faces drawn with every manipulation by ``--debug-dir``: enough to
judge the landmarks and the regions, few enough to look at."""


@dataclass(kw_only=True)
class FaceTrainConfig(PhotoTrainingConfig):
    """Settings of a faces run: the photos' plus how faces are found."""

    #: the files are already face crops: each whole image is one face, no detection
    aligned: bool = False
    enlarge: float = ENLARGE
    #: where to draw a few training faces with every manipulation (never an input folder)
    debug_dir: Path | None = None

    @property
    def face_cache(self) -> Path:
        return self.output.with_name(self.output.name + ".faces.json")


def _find_faces(photos: list[Photo], config: FaceTrainConfig, console: Console,
                quiet: bool) -> tuple[list[FaceSample], list[str]]:
    """:func:`detect_faces` with a progress bar (a large folder takes a while once)."""
    columns = (TextColumn("finding faces"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True,
                  disable=quiet or not console.is_terminal) as progress:
        bar = progress.add_task("faces", total=len(photos))
        return detect_faces(photos, config.face_cache, config.aligned,
                            lambda done, _: progress.update(bar, completed=done))


def _report(samples: list[FaceSample], photos: list[Photo], unreadable: list[str],
            console: Console) -> None:
    with_faces = len({s.photo.path for s in samples})
    without_exif = sum(s.photo.labels.known_count() == 0 for s in samples)
    console.print(f"Found {len(samples)} faces in {with_faces} of {len(photos)} photos")
    if without_exif:
        console.print(f"{without_exif} of these faces come from photos without usable EXIF: "
                      "they train the 'original' head only")
    if unreadable:
        console.print(f"[yellow]warning:[/] {len(unreadable)} files could not be decoded, "
                      f"e.g. {unreadable[0]}")


def write_debug_sheets(samples: list[FaceSample], config: FaceTrainConfig,
                       console: Console) -> None:
    """Draw the first :data:`DEBUG_FACES` training faces with their regions and every
    manipulation into ``config.debug_dir``, to check them by eye before a long run."""
    crops, landmarks = [], []
    for sample in samples[:DEBUG_FACES]:
        try:
            pixels = load_image(sample.photo.path).pixels
        except ImageReadError:
            continue
        crops.append(face_crop(pixels, sample.face, config.enlarge))
        landmarks.append(crop_landmarks(pixels.shape, sample.face, config.enlarge))
    written = save_debug(config.debug_dir, crops, landmarks, seed=config.seed)
    console.print(f"Wrote {len(written)} manipulation sheets to {config.debug_dir}")


class FaceTask:
    """Faces pretext: rank four EXIF tags and 'original vs manipulated' on face crops."""

    kind = FACES

    def __init__(self, config: FaceTrainConfig) -> None:
        self.config = config
        self.train_samples: list[FaceSample] = []
        self.val_samples: list[FaceSample] = []
        #: the new model's extractor: read first, so a bad --init stops before the data
        self.initial: InitialExtractor = initial_extractor(config)

    def prepare(self, console: Console, dist: Distributed) -> None:
        c = self.config
        photos = read_photos(c.photos, c.label_cache, console, dist)
        if dist.is_main:
            console.print(f"Finding faces in {len(photos)} photos (cached in {c.face_cache})")
        samples, unreadable = main_first(
            dist, lambda: _find_faces(photos, c, console, quiet=not dist.is_main))
        if dist.is_main:
            _report(samples, photos, unreadable, console)
        if len(samples) < 2:
            raise TrainingError(
                f"found {len(samples)} face(s) in {len(photos)} photos under {c.photos}: the "
                "faces pretext needs at least 2. The detector finds frontal faces of at least "
                "48 px; add photos of people, or pass --aligned if the files are face crops "
                "already")
        self._split(samples)
        if c.debug_dir is not None and dist.is_main:
            write_debug_sheets(self.train_samples, c, console)

    def _split(self, samples: list[FaceSample]) -> None:
        """Hold out whole cameras; every face goes where its photo goes."""
        photos = list({s.photo.path: s.photo for s in samples}.values())
        train_photos, _ = split_by_camera(photos, self.config.val_fraction, self.config.seed)
        train_paths = {p.path for p in train_photos}
        self.train_samples = [s for s in samples if s.photo.path in train_paths]
        self.val_samples = [s for s in samples if s.photo.path not in train_paths]

    def new_model(self) -> tuple[nn.Module, ModelMeta]:
        config, weights = self.initial
        meta = ModelMeta(config=config, task=FACES, ordinal_tags=list(FACE_HEADS))
        return new_photo_model(meta, weights), meta

    def configure(self, model: nn.Module, device: torch.device) -> None:
        """Every parameter trains."""

    def datasets(self, meta: ModelMeta) -> tuple[FaceDataset, FaceDataset]:
        c = self.config
        patch_size = meta.config.patch_size
        return (FaceDataset(self.train_samples, c.patches, patch_size, train=True,
                            seed=c.seed, enlarge=c.enlarge),
                FaceDataset(self.val_samples, c.patches, patch_size, train=False,
                            seed=c.seed, enlarge=c.enlarge))

    def training_info(self) -> dict[str, Any]:
        def photos(samples: list[FaceSample]) -> int:
            return len({s.photo.path for s in samples})

        return {"train_faces": len(self.train_samples), "val_faces": len(self.val_samples),
                "train_photos": photos(self.train_samples),
                "val_photos": photos(self.val_samples)}

    def describe(self) -> str:
        cameras = len({s.photo.labels.camera for s in self.train_samples} - {None})
        held_out = "of other cameras" if cameras else "of other photos (no camera EXIF)"
        return (f"faces pretext on {len(self.train_samples)} faces ({cameras} cameras), "
                f"validating on {len(self.val_samples)} faces {held_out}; "
                f"{self.config.patches} patches of {self.config.patch_size}px per face, "
                "half of the faces manipulated")

    def losses(self, network: nn.Module, batch: tuple, device: torch.device,
               amp: torch.autocast) -> dict[str, torch.Tensor]:
        patches, targets, _ = batch
        with amp:
            _, scores = network(patches.to(device, non_blocking=True))
        targets = targets.to(device)
        return {head: fidelity_ranking_loss(scores[head], targets[:, i])
                for i, head in enumerate(FACE_HEADS)}

    def weight(self, name: str) -> float:
        return self.config.weight(name)

    @torch.no_grad()
    def validate(self, model: nn.Module, loader: DataLoader,
                 device: torch.device) -> dict[str, dict[str, float]]:
        """Per head, the concordance of its scores with the targets on held-out cameras
        (chance 0.5); for ``original`` that is the AUC of original vs manipulated."""
        scores: dict[str, list[torch.Tensor]] = {head: [] for head in FACE_HEADS}
        targets = []
        for patches, batch_targets, _ in loader:
            _, batch_scores = model(patches.to(device))
            for head in FACE_HEADS:
                scores[head].append(batch_scores[head].float().cpu())
            targets.append(batch_targets)
        all_targets = torch.cat(targets)
        metrics: dict[str, dict[str, float]] = {}
        for i, head in enumerate(FACE_HEADS):
            concordance, pairs = pairwise_concordance(torch.cat(scores[head]), all_targets[:, i])
            if pairs:
                metrics[head] = {"concordance": concordance, "chance": 0.5, "n": pairs}
        return metrics

    def validation_score(self, metrics: dict[str, dict[str, float]]) -> float | None:
        return validation_score(metrics)

    def metrics_table(self, metrics: dict[str, dict[str, float]], losses: dict[str, float],
                      title: str) -> Table:
        return metrics_table(metrics, losses, self.config.weight,
                             title + " (held-out cameras; original: AUC)",
                             heads=FACE_HEADS)

    def finish(self, console: Console, best_score: float | None) -> None:
        if best_score is not None and best_score <= 0:
            console.print("[yellow]warning:[/] no epoch beat chance on held-out cameras: the "
                          "extractor has learned nothing about faces that transfers. Train on "
                          "more faces from more cameras (the paper used Flickr faces).")


def check_config(config: FaceTrainConfig) -> None:
    """Refuse settings that cannot work, before any file is read."""
    if config.enlarge < 1.0:
        raise TrainingError(f"enlarge {config.enlarge} would cut into the face: use 1 or more "
                            f"(the paper's {ENLARGE})")
    debug = config.debug_dir
    # realpath: unlike Path.resolve, never raises on a link loop
    if debug is not None and Path(os.path.realpath(debug)).is_relative_to(
            os.path.realpath(config.photos)):
        raise TrainingError(f"--debug-dir {debug} lies inside the photos folder "
                            f"{config.photos}: aigdetect never writes into an input folder; "
                            "choose a folder elsewhere")


def train_faces(config: FaceTrainConfig, console: Console | None = None) -> dict[str, Any]:
    """Train (or resume) the faces-pretext model; returns the last validation metrics."""
    check_config(config)
    return run_training(FaceTask(config), config, console)
