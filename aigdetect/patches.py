"""Image I/O and native-resolution patches.

Camera traces (demosaicing, sensor noise, the JPEG 8x8 grid) live in the pixel
grid, and any resampling smears them, so images are never resized: the network
sees crops of the stored pixels. For the same reason the EXIF Orientation tag is
*ignored*: we read the pixel grid as the camera stored it. Rotating a portrait
shot upright would present its sensor pattern transposed, making the same
camera look like two; an AI image has no orientation to honour at all.

Evidence files are opened read-only, and every way a file can fail to decode
becomes an :class:`ImageReadError` with a message an analyst can act on.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

#: Default decompression-bomb guard: 250 megapixels (the largest phone sensors
#: are about 200 MP); more is refused before a single pixel is decoded.
DEFAULT_MAX_PIXELS = 250_000_000

# Our own guard replaces Pillow's warning-then-error, which would print to stderr.
Image.MAX_IMAGE_PIXELS = None


class ImageReadError(Exception):
    """A file that cannot be used as an image; the message says why."""


@dataclass
class DecodedImage:
    """Pixels as stored (H x W x 3, uint8) and what was done to get them."""

    pixels: np.ndarray
    format: str | None
    width: int
    height: int
    notes: list[str] = field(default_factory=list)


def load_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode an image file read-only into 8-bit RGB without resampling.

    Palette, greyscale, CMYK, alpha and 16-bit images are converted to 8-bit RGB
    (noted); an animation gives its first frame (noted). Raises
    :class:`ImageReadError` for empty, truncated, corrupt, non-image and
    oversized files.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if handle.seek(0, 2) == 0:
                raise ImageReadError("empty file (0 bytes)")
            handle.seek(0)
            with Image.open(handle) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageReadError(
                        f"image too large: {width}x{height} = {width * height / 1e6:.1f} MP "
                        f"exceeds the {max_pixels / 1e6:.1f} MP guard (raise it with --max-pixels)"
                    )
                notes = []
                if getattr(image, "n_frames", 1) > 1:
                    notes.append(f"{image.n_frames} frames: first frame used")
                pixels = _decode_jpeg_fast(handle, image) if image.format == "JPEG" else None
                if pixels is None:
                    image.load()
                    pixels = _to_rgb8(image, notes)
                return DecodedImage(pixels, image.format, width, height, notes)
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError("not an image (format not recognised)") from None
    except IsADirectoryError:
        raise ImageReadError("is a directory") from None
    except PermissionError:
        raise ImageReadError("permission denied") from None
    except FileNotFoundError:
        raise ImageReadError("file not found") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        text = str(error) or type(error).__name__
        if "truncated" in text.lower() or isinstance(error, EOFError):
            text = f"truncated or corrupt image data ({text})"
        raise ImageReadError(text) from None
    except Exception as error:  # a decoder bug must not end a batch
        raise ImageReadError(f"decoder failed: {type(error).__name__}: {error}") from None


def _decode_jpeg_fast(handle, image: Image.Image) -> np.ndarray | None:
    """Decode an RGB or greyscale JPEG with torchvision's libjpeg-turbo binding.

    It gives the same pixels as Pillow (same library, same IDCT) in about 60 %
    of the time, since it skips Pillow's extra copies; decoding is the floor of
    a scan's speed. Returns None (Pillow takes over) for anything unusual.
    """
    if image.mode not in ("RGB", "L"):
        return None
    # imported here: torchvision's package import costs seconds that --help should not pay
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        handle.seek(0)
        data = torch.frombuffer(bytearray(handle.read()), dtype=torch.uint8)
        decoded = decode_jpeg(data, mode=ImageReadMode.RGB)
    except (RuntimeError, ValueError):
        return None
    if tuple(decoded.shape[1:]) != (image.size[1], image.size[0]):
        return None
    return decoded.permute(1, 2, 0).numpy()


def _to_rgb8(image: Image.Image, notes: list[str]) -> np.ndarray:
    """Convert any Pillow mode to H x W x 3 uint8, noting lossy conversions."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0
        notes.append(f"{mode} image reduced to 8 bits")
        grey = np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "CMYK":
        notes.append("CMYK converted to RGB")
    elif mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        notes.append("alpha channel dropped")
    if mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


@dataclass(frozen=True)
class Processing:
    """Processing applied alike to every image of an evaluation, in this order."""

    crop: int | None = None  # centre crop to this side, no resampling
    short_side: int | None = None  # bicubic resize so the shorter side is this
    quality: int | None = None  # re-encode as JPEG at this quality

    def describe(self) -> str:
        steps = ([f"{self.crop}px centre crop"] if self.crop else []) + (
            [f"short side {self.short_side}px bicubic"] if self.short_side else []) + (
            [f"JPEG q{self.quality}"] if self.quality else [])
        return ", ".join(steps) or "as is"


#: The benchmark's conditions. ``matched`` takes size and format out of the
#: comparison (a detector cannot win by spotting PNGs or odd sizes); ``web`` is
#: what a photo goes through on its way to a social network.
CONDITIONS = {
    "asis": Processing(),
    "matched": Processing(crop=256, quality=90),
    "web": Processing(short_side=512, quality=75),
}


def apply_processing(pixels: np.ndarray, processing: Processing) -> np.ndarray:
    """Crop, resize and re-encode ``pixels`` as ``processing`` says."""
    if processing.crop:
        height, width = pixels.shape[:2]
        side_h, side_w = min(processing.crop, height), min(processing.crop, width)
        top, left = (height - side_h) // 2, (width - side_w) // 2
        pixels = pixels[top : top + side_h, left : left + side_w]
    image = Image.fromarray(np.ascontiguousarray(pixels))
    if processing.short_side:
        scale = processing.short_side / min(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BICUBIC)
    if processing.quality:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=processing.quality)
        buffer.seek(0)
        image = Image.open(buffer).convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def ensure_min_size(pixels: np.ndarray, size: int, notes: list[str] | None = None) -> np.ndarray:
    """Upscale an image whose shorter side is under ``size`` so one patch fits.

    This is the one place we resample, as the reference does: such a tiny image
    carries little camera trace either way, and scoring it beats refusing it.
    """
    height, width = pixels.shape[:2]
    if min(height, width) >= size:
        return pixels
    scale = size / min(height, width)
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    if notes is not None:
        notes.append(f"smaller than one {size}px patch: upscaled from {width}x{height}")
    return np.asarray(Image.fromarray(pixels).resize(new_size, Image.Resampling.BICUBIC))


def random_crops(
    pixels: np.ndarray, count: int, size: int, rng: np.random.Generator
) -> np.ndarray:
    """``count`` random ``size`` x ``size`` crops, as (count, 3, size, size) uint8."""
    pixels = ensure_min_size(pixels, size)
    height, width = pixels.shape[:2]
    tops = rng.integers(0, height - size + 1, size=count)
    lefts = rng.integers(0, width - size + 1, size=count)
    crops = np.stack([pixels[t : t + size, x : x + size] for t, x in zip(tops, lefts, strict=True)])
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2))


def tile_count(height: int, width: int, size: int) -> int:
    """How many non-overlapping tiles the centre crop of an image holds."""
    return max(1, height // size) * max(1, width // size)


def grid_tiles(
    pixels: np.ndarray, size: int, max_tiles: int | None = None, notes: list[str] | None = None
) -> np.ndarray:
    """Non-overlapping tiles of the centre crop, as (n, 3, size, size) uint8.

    When the grid holds more than ``max_tiles``, an evenly spread, deterministic
    subset is kept, so the same image always gives the same tiles and score.
    An upscaled tiny image is noted in ``notes``.
    """
    pixels = ensure_min_size(pixels, size, notes)
    height, width = pixels.shape[:2]
    rows, cols = height // size, width // size
    top, left = (height - rows * size) // 2, (width - cols * size) // 2
    keep = np.arange(rows * cols)
    if max_tiles is not None and len(keep) > max_tiles:
        keep = np.linspace(0, len(keep) - 1, max_tiles).round().astype(int)
    # copy only the kept tiles: a 12 MP grid holds ~3000, a scan typically keeps 16
    tiles = np.empty((len(keep), 3, size, size), dtype=np.uint8)
    for out, index in enumerate(keep):
        y, x = top + (index // cols) * size, left + (index % cols) * size
        tiles[out] = pixels[y : y + size, x : x + size].transpose(2, 0, 1)
    return tiles
