"""Training data for the EXIF pretext: labels parsed once, split by camera, served as patches."""

from __future__ import annotations

import json
import os
import random
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .exif import CATEGORICAL_TAGS, ORDINAL_TAGS, ExifLabels, Vocabulary, read_labels
from .files import atomic_write
from .patches import (
    ImageReadError,
    fixed_grid_tiles,
    image_formats,
    load_image,
    random_crops,
)

CACHE_VERSION = 2  # 2: one "value" per entry (cached_per_file)


@dataclass(frozen=True)
class Photo:
    """One training photo and its normalised EXIF labels."""

    path: str
    labels: ExifLabels


def file_signature(path: Path) -> list[int]:
    """Size and modification time: a cache entry with another signature is stale."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns]


def read_cache(cache_file: Path | None, header: dict[str, Any]) -> dict[str, dict]:
    """The entries of a JSON cache written by :func:`write_cache` with the same
    ``header`` (format version, settings); empty when there is none, it is
    unreadable, or it was made with another header."""
    if cache_file is None or not cache_file.exists():
        return {}
    try:
        stored = json.loads(cache_file.read_text())
        if all(stored.get(key) == value for key, value in header.items()):
            return stored["entries"]
    except (OSError, ValueError, KeyError):
        pass
    return {}


def write_cache(cache_file: Path, header: dict[str, Any], entries: dict[str, dict]) -> None:
    """Atomically replace ``cache_file`` with ``header`` and ``entries``."""
    with atomic_write(cache_file) as temporary:
        temporary.write_text(json.dumps({**header, "entries": entries}))


def opens_as_image(path: Path) -> bool:
    """Cheap header check so unreadable files are skipped once, not every epoch."""
    try:
        with open(path, "rb") as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(handle, formats=image_formats()) as image:
                return image.size[0] > 0 and image.size[1] > 0
    except Exception:
        return False


def cached_per_file(
    paths: Sequence[Path],
    cache_file: Path | None,
    header: dict[str, Any],
    compute: Callable[[Path], Any],
    on_progress: Callable[[int, int], None] | None = None,
) -> list[Any]:
    """``compute(path)`` for every path (None: the file cannot be used), reusing a JSON
    cache keyed by path, size and modification time, so a large set is read once and
    a changed file alone again. ``header`` holds what the values depend on besides the
    files (format version, settings): a cache made with another one is rebuilt."""
    cache = read_cache(cache_file, header)
    values, changed = [], False
    for number, path in enumerate(paths, 1):
        try:
            signature = file_signature(path)
        except OSError:
            values.append(None)
            continue
        key = os.path.realpath(path)  # unlike Path.resolve, never raises on a link loop
        entry = cache.get(key)
        if entry is None or entry["signature"] != signature:
            entry = cache[key] = {"signature": signature, "value": compute(path)}
            changed = True
        values.append(entry["value"])
        if on_progress is not None:
            on_progress(number, len(paths))
    if changed and cache_file is not None:
        write_cache(cache_file, header, cache)
    return values


def load_labels(
    paths: Sequence[Path],
    cache_file: Path | None,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Photo], list[str]]:
    """Parse the EXIF labels of ``paths`` once per file version (a JSON cache, see
    :func:`cached_per_file`). Returns the usable photos and the paths of unreadable
    files (skipped)."""
    labels = cached_per_file(paths, cache_file, {"version": CACHE_VERSION}, _labels_of,
                             on_progress)
    photos = [Photo(str(path), ExifLabels.from_dict(found))
              for path, found in zip(paths, labels, strict=True) if found is not None]
    unreadable = [str(path) for path, found in zip(paths, labels, strict=True) if found is None]
    return photos, unreadable


def _labels_of(path: Path) -> dict[str, Any] | None:
    """A photo's labels as cached, or None when it does not open as an image."""
    return read_labels(path).to_dict() if opens_as_image(path) else None


def split_by_camera(
    photos: Sequence[Photo], val_fraction: float, seed: int
) -> tuple[list[Photo], list[Photo]]:
    """Hold out whole cameras (make + model) for validation, so no camera is on
    both sides and validation measures what transfers to unseen cameras.
    Photos without a camera model are their own group."""
    if val_fraction <= 0:
        return list(photos), []
    groups: dict[str, list[Photo]] = {}
    for photo in photos:
        groups.setdefault(photo.labels.camera or f"file:{photo.path}", []).append(photo)
    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    target = max(1, round(val_fraction * len(photos)))
    val_keys: set[str] = set()
    held = 0
    for key in keys:  # take whole cameras while they fit in the target share
        if held + len(groups[key]) <= target and len(val_keys) < len(keys) - 1:
            val_keys.add(key)
            held += len(groups[key])
    if not val_keys and len(keys) > 1:  # every camera is larger than the share: take the smallest
        val_keys.add(min(keys, key=lambda k: len(groups[k])))
    train = [p for p in photos if (p.labels.camera or f"file:{p.path}") not in val_keys]
    val = [p for p in photos if (p.labels.camera or f"file:{p.path}") in val_keys]
    return train, val


def encode_targets(
    labels: ExifLabels, vocabularies: dict[str, Vocabulary]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class indices (-1 unknown) and ordinal values (NaN unknown) of one photo."""
    classes = torch.tensor(
        [vocabularies[tag].index(getattr(labels, tag)) for tag in CATEGORICAL_TAGS],
        dtype=torch.long,
    )
    values = [getattr(labels, tag) for tag in ORDINAL_TAGS]
    ordinal = torch.tensor([float("nan") if v is None else v for v in values])
    return classes, ordinal


class PretextDataset(Dataset):
    """Patches of a photo with its EXIF targets.

    Training draws ``patches`` random crops per photo, seeded by (seed, epoch,
    index) so a run is reproducible whatever the worker count; evaluation takes
    a fixed, evenly spread grid of tiles. A file that fails to decode mid-run is
    replaced by another photo and counted, rather than ending the run.
    """

    def __init__(
        self,
        photos: Sequence[Photo],
        vocabularies: dict[str, Vocabulary],
        patches: int,
        patch_size: int,
        train: bool,
        seed: int = 0,
    ) -> None:
        self.photos = list(photos)
        self.vocabularies = vocabularies
        self.patches = patches
        self.patch_size = patch_size
        self.train = train
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, index: int):
        for attempt in range(len(self.photos)):
            photo = self.photos[(index + attempt) % len(self.photos)]
            try:
                pixels = load_image(photo.path).pixels
            except ImageReadError:
                continue
            if self.train:
                rng = np.random.default_rng([self.seed, self.epoch, index])
                crops = random_crops(pixels, self.patches, self.patch_size, rng)
            else:
                crops = fixed_grid_tiles(pixels, self.patch_size, self.patches)
            classes, ordinal = encode_targets(photo.labels, self.vocabularies)
            return torch.from_numpy(crops), classes, ordinal, attempt
        raise RuntimeError("no photo in the training set could be decoded")
