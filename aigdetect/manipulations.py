"""Manipulated negatives made from a real face (the faces paper's pretext task).

The binary pretext head learns "original face vs artificially manipulated face"
from pairs made here (arXiv 2501.02207): half the samples are original crops,
the other half one of four manipulations of the same crop, which keeps its
photo's EXIF labels:

- ``mouth_vflip``: the mouth region flipped upside down;
- ``mouth_hflip``: the mouth region flipped left-right;
- ``eye_hflip``: one eye region (left or right, at random) flipped left-right;
- ``warp``: a global piecewise-affine warp.

The three region flips are pasted back through a soft mask: a rectangle blurred
with a Gaussian, blend ratio 1 at its centre, falling to exactly 0 at the edges
of the region box (the kernel is truncated at 3 sigma), so every pixel outside
the box is the original. The warp moves the inner points of a coarse grid of
control points by normal displacements of standard deviation 0.04-0.05 of the
crop's size (the paper's ``scale``), keeps the border points fixed (no empty
borders to fill), maps each pixel through the affine map of its grid triangle,
and samples bilinearly (numpy only).

Regions come from :class:`aigdetect.faces.Landmarks` in crop coordinates
(:func:`aigdetect.faces.crop_landmarks`). Every function takes an H x W x 3
uint8 crop and returns a new array of the same shape and dtype; the input is
never modified. Randomness comes only from the ``rng`` passed in, so a seed
gives the same result every time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .faces import Landmarks, region_box

MOUTH_SIZE = (1.25, 0.75)
"""Mouth region (width, height) in units of the distance between the eyes:
covers the lips and the mouth corners with some cheek and chin around them."""

EYE_SIZE = (0.8, 0.55)
"""Eye region (width, height) in inter-eye distances: the eye and its lids,
short of the other eye and of the nose bridge."""

FEATHER = 0.15
"""Width of the soft edge as a fraction of the region's shorter side: the
Gaussian kernel's radius (3 sigma). The mask is 1 inside the rectangle shrunk by
this margin and blurred, 0 at the box edge."""

WARP_SCALE = (0.04, 0.05)
"""Standard deviation of the control points' displacements, as a fraction of the
crop's height (rows) and width (columns), drawn uniformly in this range."""

WARP_POINTS = 5
"""Control points per side of the warp grid (5 x 5: the 3 x 3 inner ones move)."""

Manipulation = Callable[[np.ndarray, Landmarks, np.random.Generator], np.ndarray]


def _check(crop: np.ndarray) -> None:
    if crop.ndim != 3 or crop.shape[2] != 3 or crop.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 crop, got {crop.shape} {crop.dtype}")


def _eye_distance(landmarks: Landmarks) -> float:
    """Distance between the eyes, kept within 0.25-0.6 of the face box width so a
    wrong eye detection cannot make the regions absurd."""
    (lx, ly), (rx, ry) = landmarks.left_eye, landmarks.right_eye
    width = landmarks.box[2]
    return float(np.clip(np.hypot(rx - lx, ry - ly), 0.25 * width, 0.6 * width))


def mouth_box(landmarks: Landmarks, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    d = _eye_distance(landmarks)
    return region_box(landmarks.mouth, (MOUTH_SIZE[0] * d, MOUTH_SIZE[1] * d), shape)


def eye_box(landmarks: Landmarks, shape: tuple[int, ...], which: str) -> tuple[int, int, int, int]:
    d = _eye_distance(landmarks)
    centre = landmarks.left_eye if which == "left" else landmarks.right_eye
    return region_box(centre, (EYE_SIZE[0] * d, EYE_SIZE[1] * d), shape)


def _gaussian_1d(radius: int) -> np.ndarray:
    sigma = max(radius / 3.0, 1e-6)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def soft_mask(height: int, width: int) -> np.ndarray:
    """A height x width float mask: the rectangle shrunk by the feather radius,
    blurred with a Gaussian truncated at 3 sigma; 0 at the edges, 1 at the centre."""
    radius = max(1, round(FEATHER * min(height, width)))
    inner = np.zeros((height, width), dtype=np.float64)
    inner[radius : height - radius, radius : width - radius] = 1.0
    if not inner.any():  # a region too small for a soft edge: a single centre pixel
        inner[height // 2, width // 2] = 1.0
    kernel = _gaussian_1d(radius)
    padded = np.pad(inner, radius)
    rows = np.apply_along_axis(np.convolve, 0, padded, kernel, mode="valid")
    mask = np.apply_along_axis(np.convolve, 1, rows, kernel, mode="valid")
    mask[[0, -1], :] = 0.0  # the box edge itself keeps the original pixels
    mask[:, [0, -1]] = 0.0
    peak = mask.max()
    return mask / peak if peak > 0 else mask


def paste_flipped(crop: np.ndarray, box: tuple[int, int, int, int], axis: int) -> np.ndarray:
    """``crop`` with the region ``box`` flipped (axis 0: upside down, 1: left-right)
    and blended back through :func:`soft_mask`; pixels outside ``box`` untouched."""
    _check(crop)
    out = crop.copy()
    x0, y0, x1, y1 = box
    if x1 - x0 < 3 or y1 - y0 < 3:
        return out
    region = crop[y0:y1, x0:x1].astype(np.float64)
    flipped = np.flip(region, axis=axis)
    mask = soft_mask(y1 - y0, x1 - x0)[..., None]
    blended = mask * flipped + (1.0 - mask) * region
    out[y0:y1, x0:x1] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


def mouth_vflip(crop: np.ndarray, landmarks: Landmarks, rng: np.random.Generator) -> np.ndarray:
    """The mouth region flipped upside down, pasted back through a soft mask."""
    return paste_flipped(crop, mouth_box(landmarks, crop.shape), axis=0)


def mouth_hflip(crop: np.ndarray, landmarks: Landmarks, rng: np.random.Generator) -> np.ndarray:
    """The mouth region flipped left-right, pasted back through a soft mask."""
    return paste_flipped(crop, mouth_box(landmarks, crop.shape), axis=1)


def eye_hflip(crop: np.ndarray, landmarks: Landmarks, rng: np.random.Generator) -> np.ndarray:
    """One eye region (left or right, drawn from ``rng``) flipped left-right."""
    which = "left" if rng.random() < 0.5 else "right"
    return paste_flipped(crop, eye_box(landmarks, crop.shape, which), axis=1)


def warp_field(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Source positions (H x W x 2, as (y, x)) of a piecewise-affine warp: a
    :data:`WARP_POINTS` grid whose inner points move by N(0, scale x size), each
    pixel mapped by the affine map of the grid triangle it lies in."""
    n = WARP_POINTS
    scale = rng.uniform(*WARP_SCALE)
    shift = rng.normal(0.0, scale, size=(n, n, 2)) * np.array([height - 1, width - 1])
    shift[[0, -1], :, :] = 0.0
    shift[:, [0, -1], :] = 0.0
    ys, xs = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64),
                         indexing="ij")
    gy = ys / max(height - 1, 1) * (n - 1)
    gx = xs / max(width - 1, 1) * (n - 1)
    iy, ix = np.minimum(gy.astype(int), n - 2), np.minimum(gx.astype(int), n - 2)
    v, u = gy - iy, gx - ix
    d00, d10 = shift[iy, ix], shift[iy, ix + 1]
    d01, d11 = shift[iy + 1, ix], shift[iy + 1, ix + 1]
    lower = (u + v <= 1.0)[..., None]  # each cell is split along its anti-diagonal
    u, v = u[..., None], v[..., None]
    first = d00 + u * (d10 - d00) + v * (d01 - d00)
    second = d11 + (1 - u) * (d01 - d11) + (1 - v) * (d10 - d11)
    return np.stack([ys, xs], axis=-1) + np.where(lower, first, second)


def bilinear(image: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``image`` (H x W x C) sampled at float ``positions`` (..., 2 as (y, x)),
    clamped to the image, with bilinear interpolation; float64 result."""
    height, width = image.shape[:2]
    y = np.clip(positions[..., 0], 0, height - 1)
    x = np.clip(positions[..., 1], 0, width - 1)
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    y1, x1 = np.minimum(y0 + 1, height - 1), np.minimum(x0 + 1, width - 1)
    wy, wx = (y - y0)[..., None], (x - x0)[..., None]
    pixels = image.astype(np.float64)
    top = pixels[y0, x0] * (1 - wx) + pixels[y0, x1] * wx
    bottom = pixels[y1, x0] * (1 - wx) + pixels[y1, x1] * wx
    return top * (1 - wy) + bottom * wy


def warp(crop: np.ndarray, landmarks: Landmarks, rng: np.random.Generator) -> np.ndarray:
    """A global piecewise-affine warp of the whole crop (landmarks unused)."""
    _check(crop)
    field = warp_field(crop.shape[0], crop.shape[1], rng)
    return np.clip(np.rint(bilinear(crop, field)), 0, 255).astype(np.uint8)


MANIPULATIONS: dict[str, Manipulation] = {
    "mouth_vflip": mouth_vflip,
    "mouth_hflip": mouth_hflip,
    "eye_hflip": eye_hflip,
    "warp": warp,
}


def manipulate(crop: np.ndarray, landmarks: Landmarks,
               rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """One of :data:`MANIPULATIONS`, drawn uniformly from ``rng``, applied to
    ``crop``: the manipulated crop and the manipulation's name.

    A region flip whose region lies outside the crop (or is too small to flip) changes
    nothing; the global warp is used instead, or an untouched face would be taught as
    a manipulated one."""
    names = sorted(MANIPULATIONS)
    name = names[int(rng.integers(len(names)))]
    manipulated = MANIPULATIONS[name](crop, landmarks, rng)
    if name != "warp" and np.array_equal(manipulated, crop):
        name, manipulated = "warp", warp(crop, landmarks, rng)
    return manipulated, name


def _outline(crop: np.ndarray, landmarks: Landmarks) -> np.ndarray:
    """A copy of ``crop`` with the mouth and eye boxes drawn in (debug only)."""
    out = crop.copy()
    boxes = [mouth_box(landmarks, crop.shape), eye_box(landmarks, crop.shape, "left"),
             eye_box(landmarks, crop.shape, "right")]
    for x0, y0, x1, y1 in boxes:
        if x1 <= x0 or y1 <= y0:
            continue
        out[y0, x0:x1] = out[y1 - 1, x0:x1] = (255, 0, 255)
        out[y0:y1, x0] = out[y0:y1, x1 - 1] = (255, 0, 255)
    return out


def save_debug(folder: str | Path, crops: Sequence[np.ndarray], landmarks: Sequence[Landmarks],
               seed: int = 0) -> list[Path]:
    """Write one PNG per crop to ``folder`` (created if needed): the crop with its
    regions outlined, the original, then each manipulation, side by side and
    labelled. The caller picks the folder; never pass an input folder. Returns
    the paths written."""
    from PIL import Image, ImageDraw

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for index, (crop, marks) in enumerate(zip(crops, landmarks, strict=True)):
        panels = [("regions", _outline(crop, marks)), ("original", crop)]
        panels += [(name, fn(crop, marks, rng)) for name, fn in MANIPULATIONS.items()]
        height, width = crop.shape[:2]
        label = 14
        sheet = Image.new("RGB", (width * len(panels), height + label), "white")
        draw = ImageDraw.Draw(sheet)
        for column, (name, panel) in enumerate(panels):
            sheet.paste(Image.fromarray(panel), (column * width, label))
            draw.text((column * width + 2, 1), name, fill="black")
        path = folder / f"face_{index:03d}_manipulations.png"
        sheet.save(path)
        written.append(path)
    return written
