"""Training data for the binary detector: labelled files, balanced, augmented alike.

Three rules keep the detector from learning shortcuts that say nothing about
generation:

* **Both classes are augmented alike** (random downscale, blur, JPEG at a random
  quality, crops at native resolution), so file format, size and compression
  history cannot separate them: most AI images arrive as PNG or WebP, most
  camera photos as JPEG.
* **Generators are balanced**: each group (a generator family, a folder) is
  drawn with probability proportional to the square root of its size, so one
  big family does not define "AI" and a handful of images is not repeated to
  death.
* **Processed real photos belong on the real side** (give them as a ``--real``
  folder): resizing and editing must not read as "AI".
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch.utils.data import Dataset

from .dataset import Photo, opens_as_image, split_by_camera
from .exif import ExifLabels, read_labels
from .labelled import AI, LABEL_NAMES, REAL, LabelledFile
from .patches import (
    CONDITIONS,
    ImageReadError,
    apply_processing,
    fixed_grid_tiles,
    load_image,
    random_crops,
    reencoded,
)


def usable_files(files: Sequence[LabelledFile]) -> tuple[list[LabelledFile],
                                                          list[LabelledFile]]:
    """(the files that exist and open as images, the others). Every trainer filters
    with this before :func:`split_for_validation`: the split is drawn from the list,
    so one missing file filtered by one trainer and not another gives them different
    held-out sets, and an image one holds out could train the other."""
    usable = [os.path.isfile(f.path) and opens_as_image(Path(f.path)) for f in files]
    return ([f for f, ok in zip(files, usable, strict=True) if ok],
            [f for f, ok in zip(files, usable, strict=True) if not ok])


def split_for_validation(
    files: Sequence[LabelledFile], fraction: float, seed: int
) -> tuple[list[LabelledFile], list[LabelledFile]]:
    """Hold out ``fraction`` of every group; real photos by whole camera (EXIF make
    and model), so validation measures what transfers to cameras not trained on.

    A camera held out in one group is held out in every group (``--real phones/
    --real edited/`` may hold the same camera twice): otherwise its photos in the
    other group would train what its held-out photos validate."""
    if fraction <= 0:
        return list(files), []
    camera_of: dict[str, str | None] = {}
    held_paths: set[str] = set()
    for group in sorted({f.group for f in files}):
        members = [f for f in files if f.group == group]
        photos = [Photo(f.path, read_labels(f.path) if f.label == REAL else ExifLabels())
                  for f in members]
        camera_of.update((p.path, p.labels.camera) for p in photos)
        _, held = split_by_camera(photos, fraction, seed) if len(members) > 1 else (photos, [])
        held_paths.update(p.path for p in held)
    held_cameras = {camera_of[path] for path in held_paths} - {None}
    held_paths.update(path for path, camera in camera_of.items() if camera in held_cameras)
    in_group_order = sorted(files, key=lambda f: f.group)  # stable: as the groups were read
    return ([f for f in in_group_order if f.path not in held_paths],
            [f for f in in_group_order if f.path in held_paths])


@dataclass(frozen=True)
class Augmentation:
    """Random processing applied to real and AI images alike, in this order."""

    #: work on a random native-resolution region of at most this side (speed)
    region: int = 512
    #: once saved as WebP (what web servers and CDNs deliver): without it, WebP's
    #: smoothing reads as "AI" (220 of the 318 shipped AI images are WebP previews, no
    #: real photo is; a real photo saved at WebP q80 scored 3.5 logits more AI-like)
    webp_p: float = 0.25
    webp_quality: tuple[int, int] = (50, 95)
    downscale_p: float = 0.3
    downscale_min: float = 0.5
    #: web images are often enlarged too (a small AI image upscaled for a post): without
    #: upscaled examples of both classes, interpolation itself reads as "real"
    upscale_p: float = 0.15
    upscale_max: float = 2.0
    blur_p: float = 0.1
    blur_sigma_max: float = 1.0
    #: editors sharpen exports; unseen, sharpening halos can read as "AI"
    sharpen_p: float = 0.1
    jpeg_p: float = 0.9
    jpeg_quality: tuple[int, int] = (60, 100)

    def __call__(self, pixels: np.ndarray, rng: np.random.Generator,
                 patch_size: int) -> np.ndarray:
        image = Image.fromarray(_random_region(pixels, self.region, rng))
        if rng.random() < self.webp_p:
            image = reencoded(image, "WEBP", _quality(self.webp_quality, rng))
        if rng.random() < self.downscale_p:
            image = _rescale(image, rng.uniform(self.downscale_min, 1.0), patch_size, rng)
        elif rng.random() < self.upscale_p:
            image = _rescale(image, rng.uniform(1.0, self.upscale_max), patch_size, rng)
        if rng.random() < self.blur_p:
            image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.1, self.blur_sigma_max)))
        if rng.random() < self.sharpen_p:
            image = image.filter(ImageFilter.UnsharpMask(radius=rng.uniform(0.5, 2.0),
                                                         percent=int(rng.integers(50, 151)),
                                                         threshold=int(rng.integers(0, 4))))
        if rng.random() < self.jpeg_p:
            image = reencoded(image, "JPEG", _quality(self.jpeg_quality, rng))
        return np.asarray(image, dtype=np.uint8)


def _quality(bounds: tuple[int, int], rng: np.random.Generator) -> int:
    low, high = bounds
    return int(rng.integers(low, high + 1))


#: Resampling filters drawn for rescaling: editors and browsers use all of them.
RESAMPLERS = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS)


def _rescale(image: Image.Image, scale: float, patch_size: int,
             rng: np.random.Generator) -> Image.Image:
    """``image`` resized by ``scale`` with a random filter; unchanged if too small then."""
    size = (round(image.width * scale), round(image.height * scale))
    if min(size) < patch_size:
        return image
    return image.resize(size, RESAMPLERS[int(rng.integers(len(RESAMPLERS)))])


def _random_region(pixels: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    height, width = pixels.shape[:2]
    top = int(rng.integers(0, max(1, height - side + 1)))
    left = int(rng.integers(0, max(1, width - side + 1)))
    return np.ascontiguousarray(pixels[top : top + side, left : left + side])


def balanced_draw(files: Sequence[LabelledFile], count: int,
                  rng: np.random.Generator) -> list[int]:
    """``count`` indices into ``files``: a group with probability proportional to
    the square root of its size, then a member uniformly."""
    groups: dict[str, list[int]] = {}
    for index, file in enumerate(files):
        groups.setdefault(file.group, []).append(index)
    names = sorted(groups)
    weights = np.sqrt([len(groups[n]) for n in names])
    chosen = rng.choice(len(names), size=count, p=weights / weights.sum())
    return [int(rng.choice(groups[names[g]])) for g in chosen]


class BinaryDataset(Dataset):
    """Patches of labelled images: ``(patches, label, attempts)``.

    Training: every epoch draws, per class, as many images as there are real
    ones, group-balanced (see :func:`balanced_draw`), augments them and takes
    ``patches`` random native-resolution crops: an unordered set, no positions.
    Validation: every file once, deterministic, after a 256 px centre crop and
    JPEG q90 (the benchmark's "matched" processing), so format cannot flatter it.
    """

    def __init__(self, files: Sequence[LabelledFile], patches: int, patch_size: int,
                 train: bool, seed: int = 0, augmentation: Augmentation | None = None) -> None:
        self.files = list(files)
        self.patches = patches
        self.patch_size = patch_size
        self.train = train
        self.seed = seed
        self.augmentation = augmentation or Augmentation()
        self.by_label = {label: [f for f in self.files if f.label == label] for label in (REAL, AI)}
        self.per_class = len(self.by_label[REAL]) if train else 0
        self.epoch_files = self.files
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if not self.train:
            return
        rng = np.random.default_rng([self.seed, epoch, 7])
        self.epoch_files = []
        for label in (REAL, AI):
            pool = self.by_label[label]
            self.epoch_files += [pool[i] for i in balanced_draw(pool, self.per_class, rng)]
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.epoch_files)

    def __getitem__(self, index: int):
        file = self.epoch_files[index]
        pool = self.by_label[file.label]
        for attempt in range(len(pool)):
            candidate = file if attempt == 0 else pool[(index + attempt) % len(pool)]
            try:
                pixels = load_image(candidate.path).pixels
            except ImageReadError:
                continue
            return torch.from_numpy(self._patches(pixels, index)), file.label, attempt
        raise RuntimeError(f"no {LABEL_NAMES[file.label]} image could be decoded")

    def _patches(self, pixels: np.ndarray, index: int) -> np.ndarray:
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            pixels = self.augmentation(pixels, rng, self.patch_size)
            return random_crops(pixels, self.patches, self.patch_size, rng)
        pixels = apply_processing(pixels, CONDITIONS["matched"])
        return fixed_grid_tiles(pixels, self.patch_size, self.patches)
