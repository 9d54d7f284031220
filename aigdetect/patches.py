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
import math
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

#: Default decompression-bomb guard: 250 megapixels (the largest phone sensors
#: are about 200 MP); more is refused before a single pixel is decoded.
DEFAULT_MAX_PIXELS = 250_000_000

#: Default memory ceiling of one decode (MB): a 200 MP 8-bit photo needs about 1.4 GB.
DEFAULT_MAX_DECODE_MB = 2048

#: Default most scans in a progressive JPEG: cameras and encoders write about 10; a
#: crafted file with thousands makes libjpeg re-decode the image thousands of times.
DEFAULT_MAX_SCANS = 100

#: The only formats Pillow may open (its format IDs). Pillow also reads EPS (through
#: Ghostscript, an interpreter), PDF, PSD, ICO and dozens more; none of them is a
#: camera or generator output, and each is attack surface. A file is matched by its
#: content, never its name: an EPS named ``.jpg`` is still refused.
#: MPO (multi-picture JPEG) is no entry: Pillow's JPEG opener returns it.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")
#: Read too when a plugin is registered (pillow-heif for HEIF; AVIF needs libavif).
OPTIONAL_FORMATS = ("HEIF", "AVIF")

#: Notes that cap a verdict at ``uncertain`` (see ``scanning.capped``): pixels partly
#: filled in by the decoder, or too few to hold one tile, so interpolated ones decide.
DAMAGED, TOO_SMALL = "damaged:", "too small:"

#: Magic bytes of formats that are refused, to say which one a file is.
_MAGIC = (
    (b"%!PS", "EPS/PostScript"), (b"\xc5\xd0\xd3\xc6", "EPS/PostScript"),
    (b"%PDF", "PDF"), (b"<svg", "SVG"), (b"<?xml", "XML (SVG?)"),
    (b"\x00\x00\x01\x00", "ICO"), (b"\x00\x00\x02\x00", "CUR"), (b"8BPS", "PSD"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"icns", "ICNS"), (b"qoif", "QOI"), (b"DDS ", "DDS"), (b"gimp xcf", "XCF"),
    (b"SIMPLE  =", "FITS"), (b"\x89HDF", "HDF5"),
)
_HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis")

#: Bytes of decoder output kept per file (a damaged file can make libjpeg warn per block).
MAX_DECODER_OUTPUT = 8192
#: Distinct decoder messages kept as notes per file.
MAX_DAMAGE_NOTES = 5
#: Decoder messages that mean damaged data: libjpeg's corrupt-data warnings.
_DAMAGE = ("corrupt jpeg data", "premature end of jpeg file")

# Our own guard replaces Pillow's warning-then-error, which would print to stderr.
Image.MAX_IMAGE_PIXELS = None


class ImageReadError(Exception):
    """A file that cannot be used as an image; the message says why."""


@dataclass(frozen=True)
class DecodeLimits:
    """What decoding one file may cost. A file over a limit is refused before its
    pixels are decoded, so one crafted file cannot exhaust a scan's memory or time."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_decode_mb: int = DEFAULT_MAX_DECODE_MB
    max_scans: int = DEFAULT_MAX_SCANS


@dataclass
class DecodedImage:
    """Pixels as stored (H x W x 3, uint8) and what was done to get them."""

    pixels: np.ndarray
    format: str | None
    width: int
    height: int
    notes: list[str] = field(default_factory=list)


@cache
def image_formats() -> tuple[str, ...]:
    """The Pillow formats evidence may be opened as: :data:`IMAGE_FORMATS`, plus
    HEIF and AVIF when a plugin for them is installed (pillow-heif is registered
    here if present)."""
    try:
        from pillow_heif import register_heif_opener  # optional dependency
    except ImportError:
        pass
    else:
        register_heif_opener()
    Image.init()
    return IMAGE_FORMATS + tuple(f for f in OPTIONAL_FORMATS if f in Image.OPEN)


def unsupported_format(head: bytes) -> str:
    """The error for a file no allowed format accepts, naming its format when the
    first bytes tell it; nothing of the file is decoded to find out."""
    if head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        return ("unsupported format: HEIF/AVIF image, but no decoder for it is installed "
                "(pip install pillow-heif)")
    stripped = head.lstrip()
    for magic, name in _MAGIC:
        if head.startswith(magic) or (magic[:1] == b"<" and stripped.startswith(magic)):
            return f"unsupported format: {name} is not an image format aigdetect judges"
    return "not an image (format not recognised)"


def load_image(path: str | Path, limits: DecodeLimits | None = None) -> DecodedImage:
    """Decode an image file read-only into 8-bit RGB without resampling.

    Palette, greyscale, CMYK, alpha and 16-bit images are converted to 8-bit RGB
    (noted); an animation gives its first frame (noted); a file cut short gives
    what it holds (noted as damaged). Raises :class:`ImageReadError` for empty,
    corrupt, non-image and oversized files, files cut short with no pixel left,
    and files over ``limits``. What the decoders report
    about damaged data (Pillow's warnings, libjpeg's messages on stderr) becomes
    a ``damaged: ...`` note, never a line on the terminal.
    """
    limits = limits or DecodeLimits()
    path = Path(path)
    try:
        with open(path, "rb") as handle, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            check_file_size(handle.seek(0, 2), limits)
            handle.seek(0)
            with _open(handle) as image:
                check_limits(image, handle, limits)
                # what Pillow warns of while reading the header is about metadata
                # (a malformed MPF or EXIF segment), not the pixels: noted, never capping
                header = len(caught)
                notes = _frames_notes(image) + _sample_depth_notes(image) + [
                    f"metadata: {message}"
                    for message in dict.fromkeys(_pillow_warnings(caught[:header]))]
                with decoder_output() as printed:
                    pixels, cut_short = _decode(handle, image)
                notes += damage_notes(_pillow_warnings(caught[header:]), printed) + cut_short
                if pixels is None:
                    pixels = _to_rgb8(image, notes)
                return DecodedImage(pixels, image.format, image.size[0], image.size[1], notes)
    except ImageReadError:
        raise
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


def _open(handle: BinaryIO) -> Image.Image:
    """``Image.open`` restricted to :func:`image_formats`; other formats are named. A
    file that ends inside its header (a large metadata segment, say) holds no pixel
    to recover, and is told apart from one cut inside its pixel data."""
    try:
        return Image.open(handle, formats=image_formats())
    except UnidentifiedImageError:
        handle.seek(0)
        raise ImageReadError(unsupported_format(handle.read(64))) from None
    except OSError as error:
        if "truncated" not in str(error).lower():
            raise
        raise ImageReadError(f"the file ends inside its header or metadata, before any "
                             f"pixel data ({error})") from None


def check_file_size(size: int, limits: DecodeLimits) -> None:
    """Refuse an empty file, and one whose bytes alone exceed the decoding budget (the
    JPEG decoder holds the whole file in memory; a small image padded with gigabytes
    of trailing data would otherwise pass every header check)."""
    if size == 0:
        raise ImageReadError("empty file (0 bytes)")
    if size > limits.max_decode_mb * 1_000_000:
        raise ImageReadError(f"file of {size / 1e6:,.0f} MB, over --max-decode-mb "
                             f"{limits.max_decode_mb}")


def check_limits(image: Image.Image, handle: BinaryIO, limits: DecodeLimits) -> None:
    """Refuse, from the header alone, a file whose decoding would exceed ``limits``."""
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageReadError(
            f"image too large: {width}x{height} = {width * height / 1e6:.2f} MP "
            f"exceeds the {limits.max_pixels / 1e6:.2f} MP guard (raise it with --max-pixels)")
    needed = width * height * decode_bytes_per_pixel(image.mode)
    if needed > limits.max_decode_mb * 1_000_000:
        raise ImageReadError(
            f"decoding would need {needed / 1e6:,.0f} MB ({width}x{height} {image.mode}), "
            f"over --max-decode-mb {limits.max_decode_mb}")
    if image.format in ("JPEG", "MPO") and image.info.get("progressive"):
        # SOS markers: coded data stuffs every 0xFF with 0x00, so 0xFFDA starts a scan (or
        # one of an embedded EXIF thumbnail: a few more, never a hundred)
        scans = count_marker(handle, b"\xff\xda")
        if scans > limits.max_scans:
            raise ImageReadError(
                f"progressive JPEG with {scans} scans, over --max-scans {limits.max_scans} "
                "(each scan re-decodes the image)")


def count_marker(handle: BinaryIO, marker: bytes, chunk: int = 1 << 20) -> int:
    """Occurrences of a two-byte ``marker`` in the whole file, read a chunk at a time."""
    handle.seek(0)
    count, last = 0, b""  # the previous chunk's last byte: a marker may straddle two
    while block := handle.read(chunk):
        count += (last + block).count(marker)
        last = block[-1:]
    return count


def decode_bytes_per_pixel(mode: str) -> int:
    """Approximate peak memory per pixel of decoding an image of ``mode`` to 8-bit RGB:
    Pillow's buffer (1 byte a pixel for L/P/1, 2 for 16-bit, else 4), the working
    copies of the conversion, and the RGB array."""
    if mode.startswith("I;16"):
        return 2 + 2 + 4 + 1 + 3  # buffer, its array copy, uint32 scaling, grey, RGB
    if mode in ("I", "F"):
        return 4 + 4 + 8 + 1 + 3  # buffer, its array copy, float64 scaling, grey, RGB
    stored = 1 if mode in ("1", "L", "P") else 4
    return stored + (0 if mode == "RGB" else 4) + 3


def _frames_notes(image: Image.Image) -> list[str]:
    """A note for an animation (only its first frame is decoded). GIF and TIFF are
    not counted: counting walks the whole file, which a huge animation makes slow."""
    if image.format in ("GIF", "TIFF"):
        return ["several frames: first frame used"] if getattr(image, "is_animated", False) \
            else []
    count = getattr(image, "n_frames", 1)
    return [f"{count} frames: first frame used"] if count > 1 else []


def _sample_depth_notes(image: Image.Image) -> list[str]:
    """A note for 16-bit colour samples that Pillow decodes straight to 8-bit RGB (a
    16-bit RGB PNG or TIFF opens as mode RGB; only its raw mode, known before loading,
    tells). 16-bit grey opens as I;16 and is noted on conversion."""
    raw_modes = [tile.args if isinstance(tile.args, str) else (tile.args or ("",))[0]
                 for tile in image.tile]
    if image.mode.startswith("I;16") or not any(";16" in str(raw) for raw in raw_modes):
        return []
    return [f"16-bit {image.mode} samples reduced to 8 bits"]


def _decode(handle: BinaryIO, image: Image.Image) -> tuple[np.ndarray | None, list[str]]:
    """Decode the pixels: JPEG's fast path returns them; else Pillow loads ``image``.
    Also returns the notes of a file cut short, whose pixels are recovered as far as
    it goes (carved and partly copied evidence often lacks only its last bytes)."""
    pixels = _decode_jpeg(handle, image) if image.format in ("JPEG", "MPO") else None
    if pixels is not None:
        return pixels, []
    try:
        image.load()
    except (OSError, ValueError) as error:
        if not image.tile:  # Pillow empties it once every pixel is decoded
            return None, [f"unreadable metadata after the image data ({error}); the pixels "
                          "are whole"]
        if isinstance(error, ValueError) or "truncated" not in str(error).lower():
            raise
        _load_truncated(image)
        return None, [f"{DAMAGED} the file ends early ({error}); what is missing is "
                      "filled by the decoder"]
    return None, []


def _load_truncated(image: Image.Image) -> None:
    """Load what a cut-short file holds (Pillow's switch is global: set for this call)."""
    allowed = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        image.load()
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = allowed


@contextmanager
def decoder_output() -> Iterator[list[str]]:
    """Catch what C decoders print on stderr (file descriptor 2) while decoding:
    libjpeg writes "Corrupt JPEG data: ..." there itself, bypassing Python. The
    lines are filled into the yielded list on exit, to become the file's notes.

    Only safe where nothing else writes to stderr meanwhile: decoding workers, or
    the main process between progress-bar refreshes (see ``cli.progress_bar``).
    """
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield lines
            finally:
                os.dup2(saved, 2)
                sink.seek(0)
                text = sink.read(MAX_DECODER_OUTPUT).decode("utf-8", "replace")
                lines.extend(line.strip() for line in text.splitlines() if line.strip())
    finally:
        os.close(saved)


def _pillow_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    """Pillow's warnings about the file (others, such as torchvision's deprecation
    notice, say nothing about it)."""
    return [str(w.message) for w in caught
            if Path(w.filename).parent.name == "PIL" and not issubclass(w.category,
                                                                      DeprecationWarning)]


def damage_notes(warned: list[str], printed: list[str]) -> list[str]:
    """Notes from what decoding reported: Pillow's warnings (malformed structure) and
    libjpeg's corrupt-data messages are ``damaged: ...`` (see ``scanning``: such a file
    is never judged ai or real); other decoder output is kept as ``decoder: ...``."""
    notes = []
    for message in dict.fromkeys(warned):
        notes.append(f"{DAMAGED} {message}")
    for message in dict.fromkeys(printed):
        damaged = message.lower().startswith(_DAMAGE)
        notes.append(f"{DAMAGED if damaged else 'decoder:'} {message}")
    return notes[:MAX_DAMAGE_NOTES]



@cache
def jpeg_decoder() -> tuple[Any, Callable[..., torch.Tensor]]:
    """torchvision's ``(ImageReadMode, decode_jpeg)``, imported on first use: the import
    costs about a second, which ``--help`` should not pay. A decoding pool loads it
    before it forks its workers, so that second is not charged to the first file's
    ``--timeout`` (where workers are spawned, not forked, each still pays it once)."""
    from torchvision.io import ImageReadMode, decode_jpeg
    return ImageReadMode, decode_jpeg


def _decode_jpeg(handle: BinaryIO, image: Image.Image) -> np.ndarray | None:
    """Decode an RGB or greyscale JPEG with torchvision's libjpeg-turbo binding.

    It gives the same pixels as Pillow (same library, same IDCT) in about 60 %
    of the time, since it skips Pillow's extra copies; decoding is the floor of
    a scan's speed. Unlike Pillow's, its libjpeg reports corrupt data (on stderr,
    caught by :func:`decoder_output`), so other modes (CMYK) are decoded here too,
    to check them, and then by Pillow. Returns None for Pillow to decode.
    """
    read_mode, decode_jpeg = jpeg_decoder()
    fast = image.mode in ("RGB", "L")
    try:
        data = bytearray(handle.seek(0, 2))  # one copy of the file, filled in place
        handle.seek(0)
        handle.readinto(data)
        data = torch.frombuffer(data, dtype=torch.uint8)
        decoded = decode_jpeg(data, mode=read_mode.RGB if fast else read_mode.UNCHANGED)
    except (RuntimeError, ValueError):
        return None
    if not fast or tuple(decoded.shape[1:]) != (image.size[1], image.size[0]):
        return None
    return decoded.permute(1, 2, 0).numpy()


def _to_rgb8(image: Image.Image, notes: list[str]) -> np.ndarray:
    """Convert any Pillow mode to H x W x 3 uint8, noting lossy conversions."""
    mode = image.mode
    if mode.startswith("I;16"):
        notes.append(f"{mode} image reduced to 8 bits")
        wide = np.asarray(image, dtype=np.uint32)  # integer rounding: a quarter of float64's memory
        wide *= 255
        wide += 32767
        wide //= 65535
        return np.repeat(wide.astype(np.uint8)[:, :, None], 3, axis=2)
    if mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        notes.append(f"{mode} image reduced to 8 bits")
        grey = np.clip(np.round(array / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        notes.append("alpha channel dropped")
    elif mode == "P":  # few colours: the residual statistics see quantised pixels
        notes.append("palette image converted to RGB")
    elif mode == "1":
        notes.append("1-bit (black and white) image converted to RGB")
    elif mode not in ("RGB", "L"):  # CMYK, LAB, YCbCr, HSV: colour spaces a camera's
        notes.append(f"{mode} converted to RGB")  # noise reaches RGB through a conversion
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
        image = reencoded(image, "JPEG", processing.quality)
    return np.asarray(image, dtype=np.uint8)


def reencoded(image: Image.Image, format: str, quality: int) -> Image.Image:
    """``image`` saved in ``format`` (JPEG, WEBP) at ``quality`` (Pillow's defaults
    otherwise) and decoded again as RGB."""
    buffer = io.BytesIO()
    image.save(buffer, format=format, quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


#: The widest image libjpeg encodes, in pixels.
JPEG_MAX_SIDE = 65_500


def recompressed_tiles(tiles: np.ndarray, quality: int) -> np.ndarray:
    """An (N, 3, P, P) uint8 tile set re-encoded as JPEG at ``quality``: the same last
    compression for every image, whatever its file's own storage was.

    The tiles go side by side in one strip, or in several when they are more than a
    JPEG can hold in width (1,023 tiles of 64 px: ``--patches all`` on a large photo)."""
    per_strip = JPEG_MAX_SIDE // tiles.shape[-1]
    return np.concatenate([_recompressed_strip(tiles[start : start + per_strip], quality)
                           for start in range(0, len(tiles), per_strip)])


def _recompressed_strip(tiles: np.ndarray, quality: int) -> np.ndarray:
    count, _, size, _ = tiles.shape
    strip = np.ascontiguousarray(np.concatenate(list(tiles.transpose(0, 2, 3, 1)), axis=1))
    decoded = np.asarray(reencoded(Image.fromarray(strip), "JPEG", quality), dtype=np.uint8)
    return np.ascontiguousarray(decoded.reshape(size, count, size, 3).transpose(1, 3, 0, 2))


#: Longest side an upscaled image may reach (:func:`ensure_min_size`): a 1 x 1,000,000
#: PNG of a few kilobytes would otherwise become 64 x 64,000,000 pixels.
MAX_UPSCALED_SIDE = 16_384


def ensure_min_size(pixels: np.ndarray, size: int, notes: list[str] | None = None) -> np.ndarray:
    """Upscale an image whose shorter side is under ``size`` so one patch fits.

    This is the one place we resample, as the reference does: such a tiny image
    carries little camera trace either way, and scoring it beats refusing it. A
    very thin image keeps the centre of its long side only, so that the upscaled
    one stays within ``MAX_UPSCALED_SIDE``: the decoding limits were checked on the
    stored size, and resampling must not get round them.
    """
    height, width = pixels.shape[:2]
    if min(height, width) >= size:
        return pixels
    scale = size / min(height, width)
    keep = max(1, int(MAX_UPSCALED_SIDE / scale))
    if max(height, width) > keep:
        top, left = max(0, (height - keep) // 2), max(0, (width - keep) // 2)
        pixels = pixels[top:top + keep, left:left + keep]
        if notes is not None:
            notes.append(f"{width}x{height} is too thin to upscale whole: the centre "
                         f"{keep} px of its long side kept")
        height, width = pixels.shape[:2]
    new_size = (max(size, round(width * scale)), max(size, round(height * scale)))
    if notes is not None:
        notes.append(f"{TOO_SMALL} smaller than one {size}px patch, upscaled from "
                     f"{width}x{height}")
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


def fixed_grid_tiles(pixels: np.ndarray, size: int, count: int) -> np.ndarray:
    """Exactly ``count`` grid tiles: the grid's (see :func:`grid_tiles`), repeated in
    order when a small image holds fewer, so that every validation batch is full."""
    tiles = grid_tiles(pixels, size, count)
    return np.resize(tiles, (count, *tiles.shape[1:]))


def evenly_spread(count: int, keep: int) -> np.ndarray:
    """Indices of ``keep`` of ``count`` items, evenly spread and always the same (all of
    them when there are no more than ``keep``)."""
    if count <= keep:
        return np.arange(count)
    return np.linspace(0, count - 1, keep).round().astype(int)


def spread_over_grid(rows: int, cols: int, keep: int) -> np.ndarray:
    """Row-major indices of ``keep`` cells of a ``rows`` x ``cols`` grid, spread over
    both directions (all of them when there are no more than ``keep``).

    Spreading the flat index instead puts the cells on a diagonal whenever the step
    is close to a multiple of the row length: a heat map then shows a line. Here the
    grid is cut into a lattice of equal bands with the grid's own aspect, just large
    enough, and the cell at the centre of each band is kept: every kept tile stands
    for an equal share of the image, the centre as much as the borders.
    """
    if rows * cols <= keep:
        return np.arange(rows * cols)
    lattice_rows = min(rows, keep, math.ceil(np.sqrt(keep * rows / cols)))
    while lattice_rows * cols < keep:  # a short, wide grid: more rows of it
        lattice_rows += 1
    lattice_cols = min(cols, -(-keep // lattice_rows))
    cells = (band_centres(rows, lattice_rows)[:, None] * cols
             + band_centres(cols, lattice_cols)[None, :]).ravel()
    return cells[evenly_spread(len(cells), keep)]


def band_centres(count: int, bands: int) -> np.ndarray:
    """The middle index of each of ``bands`` equal bands of ``count`` items."""
    return ((np.arange(bands) + 0.5) * count / bands).astype(int)


def grid_tiles(
    pixels: np.ndarray, size: int, max_tiles: int | None = None, notes: list[str] | None = None
) -> np.ndarray:
    """Non-overlapping tiles of the centre crop, as (n, 3, size, size) uint8 (see
    :func:`grid_tiles_at`, which also says where each tile lies)."""
    return grid_tiles_at(pixels, size, max_tiles, notes)[0]


def grid_tiles_at(
    pixels: np.ndarray, size: int, max_tiles: int | None = None, notes: list[str] | None = None,
    over_grid: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping tiles of the centre crop, as (n, 3, size, size) uint8, and
    their top-left corners as (n, 2) ``(x, y)`` pixel positions.

    When the grid holds more than ``max_tiles``, a deterministic subset is kept, so
    the same image always gives the same tiles and score: evenly spread over the
    grid's row-major order for a score (the subset every detector was fitted,
    selected and calibrated on; a lattice measured no better, see the model card),
    or ``over_grid`` (:func:`spread_over_grid`) for a map, where that order can
    draw a diagonal. An upscaled tiny image is noted in ``notes`` (its positions are
    then in the upscaled grid). The positions let ``explain`` put each tile's
    evidence where it came from.
    """
    pixels = ensure_min_size(pixels, size, notes)
    height, width = pixels.shape[:2]
    rows, cols = height // size, width // size
    top, left = (height - rows * size) // 2, (width - cols * size) // 2
    budget = rows * cols if max_tiles is None else max_tiles
    keep = (spread_over_grid(rows, cols, budget) if over_grid
            else evenly_spread(rows * cols, budget))
    positions = np.stack([left + (keep % cols) * size, top + (keep // cols) * size], axis=1)
    # copy only the kept tiles: a 12 MP grid holds ~3000, a scan typically keeps 16
    tiles = np.empty((len(keep), 3, size, size), dtype=np.uint8)
    for out, (x, y) in enumerate(positions):
        tiles[out] = pixels[y : y + size, x : x + size].transpose(2, 0, 1)
    return tiles, positions
