"""Shared fixtures: synthetic photos with EXIF written by piexif, and (when the
machine has it) the shared corpus of real photos at ``../shared/data``.

Fixtures here are generic on purpose so that later test files (scan, gmm...)
can reuse them:

* ``make_jpeg(path, size=(W, H), exif=..., seed=...)`` writes one image (JPEG by
  default; the suffix picks PNG / WebP / TIFF) of noise plus a gradient, with
  EXIF from a flat ``{"TagName": value}`` dict or a piexif ``{"0th": ..., "Exif": ...}``
  dict.
* ``photo_folder`` / ``session_photo_folder``: 12 small JPEGs from 4 cameras.
* ``shared_manifest`` / ``shared_photos``: rows and paths of real photos; these
  skip cleanly when ``../shared/data`` is absent.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import piexif
import pytest
from PIL import Image
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

#: Corpus of real photos and AI images shared between projects on this machine.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

#: Size of the synthetic photos (width, height): holds a 2 x 2 grid of 64 px tiles.
PHOTO_SIZE = (160, 128)

#: The 4 synthetic cameras: IFD0 tags, then per-photo Exif tags (3 photos each).
CAMERAS: list[dict[str, Any]] = [
    {
        "Make": "Canon", "Model": "Canon EOS 5D",
        "shots": [
            {"FNumber": (28, 10), "ExposureTime": (1, 250), "ISOSpeedRatings": 100,
             "FocalLength": (50, 1), "Flash": 16, "ExposureProgram": 3, "MeteringMode": 5},
            {"FNumber": (80, 10), "ExposureTime": (1, 60), "ISOSpeedRatings": 400,
             "FocalLength": (85, 1), "Flash": 25, "ExposureProgram": 2, "MeteringMode": 5},
            {"FNumber": (40, 10), "ExposureTime": (1, 1000), "ISOSpeedRatings": 200,
             "FocalLength": (24, 1), "Flash": 16, "ExposureProgram": 1, "MeteringMode": 2},
        ],
    },
    {
        "Make": "NIKON CORPORATION", "Model": "NIKON D90",
        "shots": [
            {"FNumber": (56, 10), "ExposureTime": (1, 125), "ISOSpeedRatings": 200,
             "FocalLength": (35, 1), "Flash": 16, "ExposureProgram": 2, "MeteringMode": 5},
            {"FNumber": (110, 10), "ExposureTime": (1, 30), "ISOSpeedRatings": 800,
             "FocalLength": (18, 1), "Flash": 16, "ExposureProgram": 2, "MeteringMode": 5},
            {"FNumber": (35, 10), "ExposureTime": (1, 500), "ISOSpeedRatings": 100,
             "FocalLength": (55, 1), "Flash": 9, "ExposureProgram": 3, "MeteringMode": 3},
        ],
    },
    {
        "Make": "Apple", "Model": "iPhone 6s",
        "shots": [
            {"FNumber": (22, 10), "ExposureTime": (1, 120), "ISOSpeedRatings": 25,
             "FocalLength": (415, 100), "Flash": 16, "ExposureProgram": 2, "MeteringMode": 5,
             "FocalLengthIn35mmFilm": 29},
            {"FNumber": (22, 10), "ExposureTime": (1, 15), "ISOSpeedRatings": 1000,
             "FocalLength": (415, 100), "Flash": 24, "ExposureProgram": 2, "MeteringMode": 5,
             "FocalLengthIn35mmFilm": 29},
            {"FNumber": (22, 10), "ExposureTime": (1, 2000), "ISOSpeedRatings": 32,
             "FocalLength": (415, 100), "Flash": 16, "ExposureProgram": 2, "MeteringMode": 5,
             "FocalLengthIn35mmFilm": 29},
        ],
    },
    {
        "Make": "FUJIFILM", "Model": "X-T2",
        "shots": [
            {"FNumber": (20, 10), "ExposureTime": (1, 4000), "ISOSpeedRatings": 200,
             "FocalLength": (23, 1), "Flash": 16, "ExposureProgram": 3, "MeteringMode": 5,
             "WhiteBalance": 0},
            {"FNumber": (160, 10), "ExposureTime": (2, 1), "ISOSpeedRatings": 200,
             "FocalLength": (56, 1), "Flash": 16, "ExposureProgram": 1, "MeteringMode": 5,
             "WhiteBalance": 1},
            {"FNumber": (28, 10), "ExposureTime": (1, 60), "ISOSpeedRatings": 3200,
             "FocalLength": (90, 1), "Flash": 16, "ExposureProgram": 4, "MeteringMode": 5,
             "WhiteBalance": 0},
        ],
    },
]


def noise_pixels(size: tuple[int, int], seed: int = 0) -> np.ndarray:
    """H x W x 3 uint8 pixels: a colour gradient plus per-pixel noise."""
    width, height = size
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    gradient = np.stack(
        [xs / max(1, width - 1), ys / max(1, height - 1), (xs + ys) / max(1, width + height - 2)],
        axis=2,
    ) * 160.0
    noise = rng.normal(0.0, 25.0, size=(height, width, 3))
    return np.clip(gradient + noise + 40.0, 0, 255).astype(np.uint8)


def exif_bytes(exif: Mapping[str, Any]) -> bytes:
    """piexif-dump a flat ``{"Make": ..., "FNumber": (28, 10)}`` dict (tag names
    from piexif.ImageIFD / piexif.ExifIFD) or a ready piexif ``{"0th": ...}`` dict."""
    if any(key in exif for key in ("0th", "Exif", "GPS", "1st", "Interop")):
        return piexif.dump(dict(exif))
    ifds: dict[str, dict[int, Any]] = {"0th": {}, "Exif": {}}
    for name, value in exif.items():
        if isinstance(value, str):
            value = value.encode("ascii")
        if hasattr(piexif.ImageIFD, name):
            ifds["0th"][getattr(piexif.ImageIFD, name)] = value
        elif hasattr(piexif.ExifIFD, name):
            ifds["Exif"][getattr(piexif.ExifIFD, name)] = value
        else:
            raise KeyError(f"unknown EXIF tag name {name!r}")
    return piexif.dump(ifds)


def write_image(
    path: str | Path,
    size: tuple[int, int] = PHOTO_SIZE,
    exif: Mapping[str, Any] | None = None,
    seed: int = 0,
    quality: int = 92,
) -> Path:
    """Write a noise-plus-gradient image with optional EXIF; format from the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(noise_pixels(size, seed))
    suffix = path.suffix.lower()
    options: dict[str, Any] = {}
    if exif is not None:
        options["exif"] = exif_bytes(exif)
    if suffix in (".jpg", ".jpeg", ".jpe"):
        image.save(path, "JPEG", quality=quality, **options)
    elif suffix == ".webp":
        image.save(path, "WEBP", quality=quality, **options)
    elif suffix == ".png":
        image.save(path, "PNG", **options)
    elif suffix in (".tif", ".tiff"):
        image.save(path, "TIFF", **options)
    else:
        raise ValueError(f"write_image: unsupported suffix {suffix!r}")
    return path


def write_photo_folder(folder: Path) -> Path:
    """12 small JPEGs from the 4 :data:`CAMERAS`, in one sub-folder per camera."""
    seed = 0
    for camera in CAMERAS:
        sub = folder / camera["Model"].replace(" ", "_")
        for number, shot in enumerate(camera["shots"]):
            tags = {"Make": camera["Make"], "Model": camera["Model"], **shot}
            write_image(sub / f"IMG_{number:04d}.jpg", PHOTO_SIZE, tags, seed=seed)
            seed += 1
    return folder


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """A background job shares the CPU: keep in-process torch to one thread."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def make_jpeg() -> Callable[..., Path]:
    """``make_jpeg(path, size=(W, H), exif=dict | None, seed=0, quality=92)`` -> path."""
    return write_image


@pytest.fixture
def photo_folder(tmp_path: Path) -> Path:
    """A fresh folder of 12 JPEGs (160x128) from 4 camera models, 3 photos each."""
    return write_photo_folder(tmp_path / "photos")


@pytest.fixture(scope="session")
def session_photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Like ``photo_folder`` but built once per session: do not modify it."""
    return write_photo_folder(tmp_path_factory.mktemp("session_photos"))


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """Environment for child Python processes: one thread each, no colour codes."""
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NO_COLOR": "1",
                "COLUMNS": "200", "PYTHONWARNINGS": "ignore"})
    return env


@pytest.fixture(scope="session")
def shared_manifest() -> list[dict[str, str]]:
    """Rows of ``../shared/data/manifest.csv`` for real photos (``photos/...``)
    whose file exists, each with an added ``"file"`` key (absolute path); skips
    when the shared corpus is absent."""
    manifest = SHARED_DATA / "manifest.csv"
    if not manifest.is_file():
        pytest.skip(f"shared data not available ({manifest} missing)")
    with open(manifest, newline="", encoding="utf-8") as handle:
        rows = [
            row for row in csv.DictReader(handle)
            if row.get("path", "").startswith("photos/") and (SHARED_DATA / row["path"]).is_file()
        ]
    if not rows:
        pytest.skip("shared data has no photos/ entries")
    for row in rows:
        row["file"] = str(SHARED_DATA / row["path"])
    return rows


@pytest.fixture(scope="session")
def shared_photos(shared_manifest: list[dict[str, str]]) -> list[Path]:
    """Six real camera photos with a make and model, from distinct cameras where
    possible, smallest files first (fast to decode). Deterministic."""
    rows = sorted(
        (r for r in shared_manifest if r.get("Model") and r.get("Make")),
        key=lambda r: ((SHARED_DATA / r["path"]).stat().st_size, r["path"]),
    )
    chosen: list[dict[str, str]] = []
    cameras: set[str] = set()
    for row in rows:
        if row["Model"] not in cameras:
            cameras.add(row["Model"])
            chosen.append(row)
        if len(chosen) == 6:
            break
    for row in rows:  # fewer than 6 cameras: fill with other photos
        if len(chosen) == 6:
            break
        if row not in chosen:
            chosen.append(row)
    if len(chosen) < 2:
        pytest.skip("shared data has too few photos with a camera model")
    return [SHARED_DATA / r["path"] for r in chosen]


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    """Keep scikit-learn's BLAS to one thread too (the CPU is shared)."""
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    """In-process CLI runner; this Click keeps stdout and stderr apart."""
    return CliRunner()
