"""Training data for the faces pretext (arXiv 2501.02207): faces found once, served
as native-pixel crops, half of them manipulated.

Face detection costs far more than reading EXIF, so every photo is searched once,
by the main process, and the boxes and landmarks are cached as JSON keyed by path,
size and modification time (a changed file is searched again) and by the
detector's settings (a cache made with other settings is not reused). Each item is
one face: its crop, cut from the stored pixels without resampling, replaced half of
the time by one manipulation of itself (:mod:`aigdetect.manipulations`), then cut
into native patches: three about the eyes and the mouth, where the manipulations
are, the rest random, as the EXIF pretext cuts whole photos (a crop
smaller than one patch, a small face at the border, is upscaled to fit by
:func:`~aigdetect.patches.ensure_min_size`, the one resampling). A
manipulated face keeps its photo's EXIF targets: only the ``original`` head learns
the difference.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from . import faces
from .checkpoint import FACE_TAGS
from .dataset import Photo, cached_per_file
from .exif import ExifLabels
from .faces import ENLARGE, Face, Landmarks, crop_landmarks, face_crop, find_faces
from .manipulations import manipulate
from .patches import ImageReadError, fixed_grid_tiles, load_image, random_crops

CACHE_VERSION = 2  # 2: one "value" per entry (dataset.cached_per_file)

MANIPULATED_SHARE = 0.5
"""Share of items replaced by a manipulation of their face: half, as in the paper,
so the ``original`` head starts from balanced classes."""


@dataclass(frozen=True)
class FaceSample:
    """One face of one photo: the photo (path and EXIF labels) and where the face is."""

    photo: Photo
    face: Face


@dataclass
class FaceItem:
    """What the dataset serves for one index, before it becomes tensors: kept
    apart so that tests and ``--debug-dir`` can see the crop the patches came from."""

    sample: FaceSample
    crop: np.ndarray
    manipulation: str | None  # None: the original face
    patches: np.ndarray
    attempt: int


def cache_header(aligned: bool) -> dict[str, Any]:
    """Everything detection depends on besides the pixels, so that a cache made with
    other settings (or by ``--aligned``) is searched again rather than trusted."""
    settings = {name: getattr(faces, name) for name in (
        "FACE_CASCADE", "EYE_CASCADE", "SCALE_FACTOR", "MIN_NEIGHBORS", "MIN_FACE",
        "MAX_DETECT_SIDE", "EYE_SCALE_FACTOR", "EYE_MIN_NEIGHBORS")}
    return {"version": CACHE_VERSION, "aligned": aligned, "detector": settings}


def _face_from_dict(data: dict[str, Any]) -> Face:
    points = {key: tuple(data[key]) for key in ("left_eye", "right_eye", "mouth")}
    return Face(**{**data, **points})


def _search(path: Path, aligned: bool) -> list[dict[str, Any]] | None:
    """The faces of one file as JSON-ready dictionaries; None when it cannot be decoded."""
    try:
        pixels = load_image(path).pixels
    except ImageReadError:
        return None
    return [asdict(face) for face in find_faces(pixels, aligned=aligned)]


def detect_faces(
    photos: Sequence[Photo],
    cache_file: Path | None,
    aligned: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[FaceSample], list[str]]:
    """Every face of ``photos`` (with ``aligned``, each whole image is one face),
    reusing the JSON cache at ``cache_file``. Returns the faces, in photo order,
    and the paths of the files that could not be decoded."""
    found = cached_per_file([Path(photo.path) for photo in photos], cache_file,
                            cache_header(aligned), partial(_search, aligned=aligned),
                            on_progress)
    samples = [FaceSample(photo, _face_from_dict(face))
               for photo, faces in zip(photos, found, strict=True) if faces is not None
               for face in faces]
    unreadable = [photo.path for photo, faces in zip(photos, found, strict=True) if faces is None]
    return samples, unreadable


def face_targets(labels: ExifLabels, original: bool) -> torch.Tensor:
    """Targets in the order of :data:`~aigdetect.checkpoint.FACE_HEADS`: the photo's
    four tag values (NaN when unknown: the ranking losses mask them, as in the EXIF
    pretext), then 1 for an original face and 0 for a manipulated one."""
    values = [getattr(labels, tag) for tag in FACE_TAGS]
    return torch.tensor([float("nan") if v is None else v for v in values] + [float(original)])


class FaceDataset(Dataset):
    """One item per face: ``(patches, targets, attempts)``, patches as
    (N, 3, P, P) uint8 like :class:`~aigdetect.dataset.PretextDataset`.

    Training draws the manipulation and the patch positions from (seed, epoch,
    index), so a run is reproducible whatever the worker count; validation draws
    them from (seed, index) and takes a fixed grid of tiles, so every epoch is
    measured on the same items. A file that fails to decode mid-run is replaced by
    the next face and counted, rather than ending the run.
    """

    def __init__(self, samples: Sequence[FaceSample], patches: int, patch_size: int,
                 train: bool, seed: int = 0, enlarge: float = ENLARGE) -> None:
        self.samples = list(samples)
        self.patches = patches
        self.patch_size = patch_size
        self.train = train
        self.seed = seed
        self.enlarge = enlarge
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        item = self.item(index)
        targets = face_targets(item.sample.photo.labels, item.manipulation is None)
        return torch.from_numpy(item.patches), targets, item.attempt

    def item(self, index: int) -> FaceItem:
        """The face at ``index``: its crop, original or manipulated, and its patches."""
        for attempt in range(len(self.samples)):
            sample = self.samples[(index + attempt) % len(self.samples)]
            try:
                pixels = load_image(sample.photo.path).pixels
            except ImageReadError:
                continue
            rng = np.random.default_rng(
                [self.seed, self.epoch, index] if self.train else [self.seed, index])
            crop = face_crop(pixels, sample.face, self.enlarge)
            landmarks = crop_landmarks(pixels.shape, sample.face, self.enlarge)
            manipulation = None
            if rng.random() < MANIPULATED_SHARE:
                crop, manipulation = manipulate(crop, landmarks, rng)
            return FaceItem(sample, crop, manipulation, self._patches(crop, landmarks, rng),
                            attempt)
        raise RuntimeError("no face in the training set could be decoded")

    def _patches(self, crop: np.ndarray, landmarks: Landmarks,
                 rng: np.random.Generator) -> np.ndarray:
        if not self.train:
            return fixed_grid_tiles(crop, self.patch_size, self.patches)
        on_features = landmark_crops(crop, landmarks, min(3, self.patches), self.patch_size, rng)
        if len(on_features) == self.patches:
            return on_features
        anywhere = random_crops(crop, self.patches - len(on_features), self.patch_size, rng)
        return np.concatenate([on_features, anywhere])


def landmark_crops(crop: np.ndarray, landmarks: Landmarks, count: int, size: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Up to ``count`` native ``size`` crops about the eyes and the mouth (jittered by
    up to a quarter patch), for original and manipulated faces alike.

    The eye and mouth manipulations change 4-8 % of a crop: random patches of a
    400 px face missed them up to 31 % of the time, so a face labelled manipulated
    was often shown only untouched pixels. Both classes get these crops, so where a
    patch lies tells nothing. A crop smaller than a patch gets none (it is upscaled,
    which would move the landmarks)."""
    height, width = crop.shape[:2]
    if height < size or width < size:
        return np.zeros((0, 3, size, size), np.uint8)
    out = []
    for x, y in (landmarks.left_eye, landmarks.right_eye, landmarks.mouth)[:count]:
        dx, dy = rng.integers(-(size // 4), size // 4 + 1, size=2)
        left = int(np.clip(round(x + dx) - size // 2, 0, width - size))
        top = int(np.clip(round(y + dy) - size // 2, 0, height - size))
        out.append(crop[top:top + size, left:left + size])
    return np.ascontiguousarray(np.stack(out).transpose(0, 3, 1, 2))
