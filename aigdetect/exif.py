"""EXIF labels: the pretext targets, read from a photo's own metadata.

The network learns camera traces by predicting these tags from pixels, so every
value is normalised to something a loss can use: ordinal tags become positive
floats in natural units (seconds, mm, f-stops, ISO), categorical tags become
short readable strings. A tag that is missing, malformed (zero denominator,
wrong type) or absurd becomes ``None`` for that tag only: it is masked out of
its loss, and the photo is still used for every other tag.
"""

from __future__ import annotations

import math
import re
import struct
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import piexif
from PIL import ExifTags, Image, PngImagePlugin

from .patches import image_formats

#: Ordinal tags, ranked pairwise. Value ranges outside which a reading is absurd.
ORDINAL_TAGS: dict[str, tuple[float, float]] = {
    "fnumber": (0.5, 128.0),
    "exposure_time": (1e-6, 3600.0),
    "iso": (1.0, 1_000_000.0),
    "focal_length": (0.5, 5000.0),
    "focal_length_35mm": (1.0, 10000.0),
}

#: Categorical tags, classified with cross-entropy.
CATEGORICAL_TAGS: tuple[str, ...] = (
    "make",
    "model",
    "exposure_program",
    "metering_mode",
    "flash",
    "white_balance",
    "exposure_mode",
    "scene_capture_type",
)

# EXIF enumerations, by the EXIF 2.32 standard. Code 0 means "not defined" for
# ExposureProgram and "unknown" for MeteringMode, so those become None.
_EXPOSURE_PROGRAM = {
    1: "manual", 2: "normal", 3: "aperture priority", 4: "shutter priority",
    5: "creative", 6: "action", 7: "portrait", 8: "landscape",
}
_METERING_MODE = {
    1: "average", 2: "center weighted", 3: "spot", 4: "multi-spot",
    5: "pattern", 6: "partial", 255: "other",
}
_WHITE_BALANCE = {0: "auto", 1: "manual"}
_EXPOSURE_MODE = {0: "auto", 1: "manual", 2: "auto bracket"}
_SCENE_CAPTURE_TYPE = {0: "standard", 1: "landscape", 2: "portrait", 3: "night"}

# Vendor names as cameras write them, folded to one name per vendor.
_MAKE_ALIASES = {
    "eastman kodak": "kodak",
    "kodak": "kodak",
    "hewlett-packard": "hp",
    "hewlett packard": "hp",
    "nikon": "nikon",
    "olympus": "olympus",
    "om digital": "olympus",
    "konica minolta": "konica minolta",
    "minolta": "minolta",
    "konica": "konica",
    "canon": "canon",
    "sony": "sony",
    "fujifilm": "fujifilm",
    "fuji photo film": "fujifilm",
    "panasonic": "panasonic",
    "samsung": "samsung",
    "pentax": "pentax",
    "asahi optical": "pentax",
    "ricoh": "ricoh",
    "casio": "casio",
    "sanyo": "sanyo",
    "lge": "lg",
    "lg electronics": "lg",
    "sony ericsson": "sony ericsson",
    "leica": "leica",
    "sigma": "sigma",
    "huawei": "huawei",
    "xiaomi": "xiaomi",
    "apple": "apple",
    "google": "google",
    "motorola": "motorola",
    "nokia": "nokia",
    "htc": "htc",
    "gopro": "gopro",
    "dji": "dji",
}
_CORPORATE_SUFFIX = re.compile(
    r"[\s,.]*(corporation|corp|company|co|ltd|inc|imaging|optical|electric|"
    r"computer|digital|camera|gmbh|ag|s\.a|limited)\.?$"
)


@dataclass(frozen=True)
class ExifLabels:
    """The normalised pretext labels of one photo; ``None`` means unknown."""

    make: str | None = None
    model: str | None = None
    exposure_program: str | None = None
    metering_mode: str | None = None
    flash: str | None = None
    white_balance: str | None = None
    exposure_mode: str | None = None
    scene_capture_type: str | None = None
    fnumber: float | None = None
    exposure_time: float | None = None
    iso: float | None = None
    focal_length: float | None = None
    focal_length_35mm: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ExifLabels:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def camera(self) -> str | None:
        """Camera identity used to split train/validation (no camera on both sides)."""
        if self.model is None:
            return None
        return f"{self.make or '?'} | {self.model}"

    def known_count(self) -> int:
        return sum(v is not None for v in asdict(self).values())


# ---------------------------------------------------------------------------
# Reading raw tags
# ---------------------------------------------------------------------------

def read_raw_exif(path: str | Path) -> dict[str, Any]:
    """Return EXIF tags by name (IFD0 and Exif sub-IFD), or ``{}`` if there are none.

    Pillow finds the EXIF block in any container (JPEG, MPO, WebP, a PNG's eXIf chunk,
    a TIFF's own directory) and parses it; piexif parses the block again where it is
    sound (see :func:`plausible_exif`) and keeps rationals exact. The file is only
    ever opened for reading.
    """
    try:
        pillow, block = _read_with_pillow(path)
    except Exception:
        pillow, block = {}, None
    raw = None
    if block is not None and plausible_exif(block):
        try:
            raw = _read_with_piexif(block)
        except Exception:
            raw = None
    if raw is None:
        return pillow
    # piexif assumes every ASCII value ends in NUL and drops the last byte, so a
    # camera that writes "HTC" without one would read as "HT": take text from Pillow.
    raw.update({k: v for k, v in pillow.items() if k in _TEXT_TAGS and isinstance(v, str)})
    return raw


_TEXT_TAGS = ("Make", "Model")


def _read_with_piexif(block: bytes) -> dict[str, Any]:
    data = piexif.load(block)
    raw: dict[str, Any] = {}
    for ifd in ("0th", "Exif"):
        for tag, value in data.get(ifd, {}).items():
            info = piexif.TAGS[ifd].get(tag)
            if info is not None:
                raw[info["name"]] = value
    if not raw:
        raise ValueError("no EXIF")
    return raw


def _read_with_pillow(path: str | Path) -> tuple[dict[str, Any], bytes | None]:
    """Tags by name, and the raw EXIF block (``Exif`` header + TIFF data) where the
    container holds one (a TIFF file's directory is the file itself: None)."""
    with open(path, "rb") as handle, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns on damaged EXIF; we mask what it misses
        with Image.open(handle, formats=image_formats()) as image:
            if image.format == "PNG":  # getexif() would decode the pixels to find eXIf
                block = png_metadata(handle).exif
                exif = Image.Exif()
                exif.load(block or b"")
            else:
                block = image.info.get("exif")
                exif = image.getexif()
            raw: dict[str, Any] = {ExifTags.TAGS.get(t, str(t)): v for t, v in exif.items()}
            sub = exif.get_ifd(ExifTags.IFD.Exif)
            raw.update({ExifTags.TAGS.get(t, str(t)): v for t, v in sub.items()})
    if isinstance(block, bytes) and not block.startswith(b"Exif\x00\x00"):
        block = b"Exif\x00\x00" + block  # WebP's chunk holds the TIFF data alone
    return raw, block if isinstance(block, bytes) else None


#: Bytes per value of each TIFF field type (BYTE, ASCII, SHORT, LONG, RATIONAL, ...).
_TIFF_UNIT = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8}
#: Tags whose value points to another directory (Exif, GPS, Interoperability).
_IFD_POINTERS = (0x8769, 0x8825, 0xA005)


def plausible_exif(block: bytes) -> bool:
    """Whether every directory entry of an EXIF block fits inside it.

    piexif builds a struct format of one character per declared value before it
    reads any, so a tag declaring 2^29 values in a 2 KB file costs gigabytes; such a
    block is left to Pillow, which checks the data is there first."""
    tiff = block[6:]
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return False
    order = "<" if tiff[:2] == b"II" else ">"
    pending, seen = [struct.unpack_from(order + "L", tiff, 4)[0]], set()
    while pending:
        offset = pending.pop()
        if offset in seen or offset == 0:
            continue
        seen.add(offset)
        if offset + 2 > len(tiff):
            return False
        (entries,) = struct.unpack_from(order + "H", tiff, offset)
        end = offset + 2 + 12 * entries
        if end > len(tiff):
            return False
        for index in range(entries):
            tag, kind, count, value = struct.unpack_from(order + "HHLL", tiff,
                                                         offset + 2 + 12 * index)
            if count * _TIFF_UNIT.get(kind, 1) > len(tiff):
                return False
            if tag in _IFD_POINTERS:
                pending.append(value)
        if end + 4 <= len(tiff):  # the next directory (a thumbnail's); some writers omit it
            pending.append(struct.unpack_from(order + "L", tiff, end)[0])
    return True


@dataclass
class PngMetadata:
    """A PNG's text chunks (tEXt, zTXt, iTXt) and EXIF (eXIf), wherever they stand."""

    text: dict[str, str]
    exif: bytes | None


def png_metadata(handle: BinaryIO) -> PngMetadata:
    """The metadata chunks of the PNG open in ``handle``, with no pixel decoded.

    Pillow reads the chunks that follow the image data (text, eXIf) only by
    decoding it, so a few kilobytes declaring 40000 x 40000 pixels would take
    gigabytes just to show its metadata. Here Pillow's own chunk reader (with its
    limits on decompressed text) walks the file and seeks past the image data. A
    chunk Pillow refuses (text that inflates past its limit) is skipped; a damaged
    file gives what was read before the damage.
    """
    handle.seek(8)  # past the PNG signature
    stream = PngImagePlugin.PngStream(handle)
    try:
        while True:
            cid, pos, length = stream.read()
            if cid == b"IEND":
                break
            if cid in (b"tEXt", b"zTXt", b"iTXt", b"eXIf"):
                # a chunk Pillow refuses ("Decompressed data too large"): on to the next
                with suppress(ValueError):
                    stream.call(cid, pos, length)
            handle.seek(pos + length + 4)  # past the data and its CRC
    except (EOFError, OSError, SyntaxError, ValueError, struct.error):
        pass
    exif = stream.im_info.get("exif")
    return PngMetadata({str(k): str(v) for k, v in stream.im_text.items()},
                       exif if isinstance(exif, bytes) else None)


# ---------------------------------------------------------------------------
# Normalising values
# ---------------------------------------------------------------------------

def to_number(value: Any) -> float | None:
    """Read an EXIF number exactly: ints, floats, (num, den) rationals, Pillow
    ``IFDRational``s, strings such as ``"1/60"`` (= 0.0167 s, never 60) and
    one-element sequences. Zero denominators, NaN and junk give ``None``."""
    if isinstance(value, bool):
        return None
    if isinstance(value, bytes):
        value = value.decode("ascii", "ignore").strip("\x00 ")
    if isinstance(value, str):
        try:
            number = float(Fraction(value.strip()))
        except (ValueError, ZeroDivisionError):
            return None
    elif isinstance(value, (int, float)):
        number = float(value)
    elif hasattr(value, "numerator") and hasattr(value, "denominator"):
        if not value.denominator:
            return None
        number = float(value.numerator) / float(value.denominator)
    elif isinstance(value, (tuple, list)):
        if len(value) == 2 and all(isinstance(v, int) for v in value):
            return None if value[1] == 0 else value[0] / value[1]
        if len(value) >= 1:
            return to_number(value[0])
        return None
    else:
        return None
    return number if math.isfinite(number) else None


def _in_range(value: float | None, tag: str) -> float | None:
    low, high = ORDINAL_TAGS[tag]
    return value if value is not None and low <= value <= high else None


def to_text(value: Any) -> str | None:
    """Decode an ASCII tag, strip padding and collapse whitespace; empty gives ``None``."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "ignore")
    if not isinstance(value, str):
        return None
    value = value.split("\x00", 1)[0]  # a value ends at its NUL; what follows is junk
    text = " ".join("".join(c for c in value if c.isprintable()).split())
    return text or None


def normalise_make(value: Any) -> str | None:
    """Fold vendor spellings ("NIKON CORPORATION", "Eastman Kodak Company") to one name."""
    text = to_text(value)
    if text is None:
        return None
    lowered = text.lower()
    for prefix, vendor in sorted(_MAKE_ALIASES.items(), key=lambda kv: -len(kv[0])):
        if lowered.startswith(prefix):
            return vendor
    previous = None
    while previous != lowered:
        previous, lowered = lowered, _CORPORATE_SUFFIX.sub("", lowered).strip()
    return lowered or None


def normalise_model(value: Any) -> str | None:
    text = to_text(value)
    return text.lower() if text else None


def _enum(value: Any, names: Mapping[int, str]) -> str | None:
    number = to_number(value)
    if number is None or number != int(number):
        return None
    return names.get(int(number))


def _flash(value: Any) -> str | None:
    """Flash is reduced to whether it fired (bit 0); the other bits vary by vendor."""
    number = to_number(value)
    if number is None or number != int(number) or not 0 <= number < 2**16:
        return None
    return "fired" if int(number) & 1 else "not fired"


def labels_from_raw(raw: Mapping[str, Any]) -> ExifLabels:
    """Normalise raw tags (as :func:`read_raw_exif` returns them) to labels."""
    iso = raw.get("ISOSpeedRatings", raw.get("PhotographicSensitivity"))
    if isinstance(iso, (tuple, list)) and iso and isinstance(iso[0], int):
        iso = iso[0]  # the tag may hold several values (SHORT count > 1), not a ratio
    return ExifLabels(
        make=normalise_make(raw.get("Make")),
        model=normalise_model(raw.get("Model")),
        exposure_program=_enum(raw.get("ExposureProgram"), _EXPOSURE_PROGRAM),
        metering_mode=_enum(raw.get("MeteringMode"), _METERING_MODE),
        flash=_flash(raw.get("Flash")),
        white_balance=_enum(raw.get("WhiteBalance"), _WHITE_BALANCE),
        exposure_mode=_enum(raw.get("ExposureMode"), _EXPOSURE_MODE),
        scene_capture_type=_enum(raw.get("SceneCaptureType"), _SCENE_CAPTURE_TYPE),
        fnumber=_in_range(to_number(raw.get("FNumber")), "fnumber"),
        exposure_time=_in_range(to_number(raw.get("ExposureTime")), "exposure_time"),
        iso=_in_range(to_number(iso), "iso"),
        focal_length=_in_range(to_number(raw.get("FocalLength")), "focal_length"),
        focal_length_35mm=_in_range(
            to_number(raw.get("FocalLengthIn35mmFilm")), "focal_length_35mm"
        ),
    )


def read_labels(path: str | Path) -> ExifLabels:
    """Read and normalise the pretext labels of one image file (never raises)."""
    return labels_from_raw(read_raw_exif(path))


# ---------------------------------------------------------------------------
# Vocabularies of categorical tags
# ---------------------------------------------------------------------------

OTHER = "other"


@dataclass
class Vocabulary:
    """Classes of one categorical tag. Rare values fold into ``"other"`` so the
    heads do not chase classes seen once; values unseen in training (a new
    camera at validation or test time) map to ``"other"`` too."""

    classes: list[str]

    def __post_init__(self) -> None:
        self._lookup = {name: i for i, name in enumerate(self.classes)}

    @classmethod
    def build(cls, values: Iterable[str | None], min_count: int) -> Vocabulary:
        counts = Counter(v for v in values if v is not None)
        frequent = sorted(v for v, n in counts.items() if n >= min_count and v != OTHER)
        return cls([*frequent, OTHER])

    def index(self, value: str | None) -> int:
        """Class index, ``-1`` for unknown (masked out of the loss)."""
        if value is None:
            return -1
        return self._lookup.get(value, self._lookup.get(OTHER, -1))

    def __len__(self) -> int:
        return len(self.classes)


def build_vocabularies(labels: Iterable[ExifLabels], min_count: int = 3) -> dict[str, Vocabulary]:
    """One vocabulary per categorical tag, from the training photos."""
    labels = list(labels)
    return {
        tag: Vocabulary.build((getattr(lab, tag) for lab in labels), min_count)
        for tag in CATEGORICAL_TAGS
    }
