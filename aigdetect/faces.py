"""Face detection and native-pixel face crops (the faces method, arXiv 2501.02207).

The detector is OpenCV's Viola-Jones Haar cascades. Their weights are XML files
inside the ``opencv-python-headless`` wheel (``cv2.data.haarcascades``), so
detection needs no download at run time and works offline, and the results are
deterministic for given pixels (no GPU, no threads that change the answer).
OpenCV 5 no longer ships ``CascadeClassifier`` nor the cascade files in its
wheels (5.0.0.93 checked: ``cv2.data.haarcascades`` holds no XML), hence the
``<5`` pin in ``pyproject.toml``.

facenet-pytorch (MTCNN, a better detector with five landmarks) was considered.
Its 2.6.0 wheel's METADATA says ``Requires-Dist: torch <2.3.0,>=2.2.0``,
``torchvision <0.18.0,>=0.17.0``, ``numpy <2.0.0,>=1.24.0`` and
``Pillow <10.3.0,>=10.2.0`` (and ``requests``, ``tqdm``): it would downgrade this
project's torch (>=2.1, 2.14 in use), numpy 2 and Pillow, so it is not used.

A Haar cascade finds frontal and near-frontal faces; profiles and small faces
(under :data:`MIN_FACE` pixels) are missed, which costs recall, never a wrong
crop size. Landmarks are approximate: the eye cascade inside the upper half of
the face box when it finds one eye on each side, else fixed proportions of the
box (``Face.landmarks_from`` says which). They only place the manipulation
regions of :mod:`aigdetect.manipulations`, which need no more precision.

Crops are slices of the decoded array: no resampling, so camera traces survive
(``face_crop``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

import numpy as np

FACE_CASCADE = "haarcascade_frontalface_alt2.xml"
"""Frontal-face cascade. ``alt2`` gives fewer false detections on texture and
foliage than ``default`` at the same recall on portraits."""

EYE_CASCADE = "haarcascade_eye.xml"

SCALE_FACTOR = 1.1
"""Step between pyramid scales: 10 %, OpenCV's usual value. Smaller steps find a
few more faces at several times the cost; larger ones miss faces between scales."""

MIN_NEIGHBORS = 5
"""Overlapping raw detections needed to keep a face. 5 suppresses the isolated
hits that texture (leaves, fabric, noise) produces; 3 (OpenCV's default) lets
some of them through."""

#: Note that caps an ``--aligned`` image's verdict at ``uncertain`` (``scanning.capped``):
#: the face finder sees no face in what was given as a face crop.
NO_FACE_SEEN = "no face seen:"

MIN_FACE = 48
"""Smallest face kept, in native pixels (box side). Below about 48 px a face
crop holds too few pixels for the network's camera traces (FDF faces are
128 px), and the cascade's false detections are mostly that small."""

MAX_DETECT_SIDE = 1024
"""Detection runs on a grey copy whose longer side is at most this (area
averaging), so a 12 MP photo costs what a 1 MP one does; boxes are mapped back to
native pixels and crops are always cut from the native array."""

EYE_SCALE_FACTOR = 1.1
EYE_MIN_NEIGHBORS = 5
"""The eye cascade runs only inside the upper half of a face box; 5 neighbours
keep eyebrows and glasses frames from counting as eyes most of the time."""

# Fallback landmarks as fractions (x, y) of the face box.
LEFT_EYE_AT = (0.3, 0.4)
RIGHT_EYE_AT = (0.7, 0.4)
MOUTH_AT = (0.5, 0.78)

ENLARGE = 1.3
"""Face crops are the detected box enlarged x1.3 about its centre (as FDF)."""

Point = tuple[float, float]


@dataclass(frozen=True)
class Landmarks:
    """Approximate landmarks in the coordinates of some array (an image or a
    crop): eye centres (``left_eye`` is the one at smaller x, the person's right
    eye), mouth centre, and the face box ``(x, y, w, h)`` that sizes the regions."""

    left_eye: Point
    right_eye: Point
    mouth: Point
    box: tuple[int, int, int, int]

    def shifted(self, dx: float, dy: float) -> Landmarks:
        """The same landmarks in an array whose origin lies at ``(dx, dy)``."""
        x, y, w, h = self.box

        def move(p: Point) -> Point:
            return (p[0] - dx, p[1] - dy)

        return Landmarks(move(self.left_eye), move(self.right_eye), move(self.mouth),
                         (round(x - dx), round(y - dy), w, h))


@dataclass(frozen=True)
class Face:
    """A detected face: box in native pixels, how many raw detections support it
    (``neighbors``; 0 for an aligned input), and approximate landmarks in native
    pixels. ``landmarks_from`` is ``"eye_cascade"`` (eyes found by the eye
    cascade, mouth by proportion) or ``"proportions"`` (all three by proportion)."""

    x: int
    y: int
    w: int
    h: int
    neighbors: int
    left_eye: Point
    right_eye: Point
    mouth: Point
    landmarks_from: str

    @property
    def box(self) -> tuple[int, int, int, int]:
        return (self.x, self.y, self.w, self.h)

    @property
    def landmarks(self) -> Landmarks:
        return Landmarks(self.left_eye, self.right_eye, self.mouth, self.box)


@cache
def _cascade(name: str):
    import cv2

    classifier = cv2.CascadeClassifier(cv2.data.haarcascades + name)
    if classifier.empty():
        raise RuntimeError(f"OpenCV cascade {name} could not be loaded from "
                           f"{cv2.data.haarcascades}")
    return classifier


def _grey(pixels: np.ndarray) -> tuple[np.ndarray, float]:
    """Equalised grey copy for detection, and its scale (detection px per native px)."""
    import cv2

    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        raise ValueError(f"expected H x W x 3 uint8 pixels, got {pixels.shape} {pixels.dtype}")
    grey = cv2.cvtColor(np.ascontiguousarray(pixels), cv2.COLOR_RGB2GRAY)
    height, width = grey.shape
    scale = min(1.0, MAX_DETECT_SIDE / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    return cv2.equalizeHist(grey), scale


def _proportional(x: float, y: float, w: float, h: float) -> tuple[Point, Point, Point]:
    def at(fx: float, fy: float) -> Point:
        return (x + fx * w, y + fy * h)

    return at(*LEFT_EYE_AT), at(*RIGHT_EYE_AT), at(*MOUTH_AT)


def _eyes(grey: np.ndarray, box: tuple[int, int, int, int]) -> tuple[Point, Point] | None:
    """Eye centres (detection-image px) from the eye cascade in the upper half of
    ``box``: the largest eye left of the box's centre line and the largest right
    of it, at similar heights; None when that pair is not found."""
    x, y, w, h = box
    upper = grey[y : y + h // 2, x : x + w]
    if upper.size == 0:
        return None
    min_eye = max(8, w // 10)
    eyes = _cascade(EYE_CASCADE).detectMultiScale(
        upper, scaleFactor=EYE_SCALE_FACTOR, minNeighbors=EYE_MIN_NEIGHBORS,
        minSize=(min_eye, min_eye), maxSize=(w // 2, w // 2))
    centres = [(x + ex + ew / 2, y + ey + eh / 2, ew * eh) for ex, ey, ew, eh in eyes]
    left = [c for c in centres if c[0] < x + w / 2]
    right = [c for c in centres if c[0] >= x + w / 2]
    if not left or not right:
        return None
    lx, ly, _ = max(left, key=lambda c: c[2])
    rx, ry, _ = max(right, key=lambda c: c[2])
    if abs(ly - ry) > 0.15 * h or not 0.25 * w <= rx - lx <= 0.65 * w:
        return None
    return (lx, ly), (rx, ry)


def _face(grey: np.ndarray, scale: float, box, neighbors: int) -> Face:
    """A Face in native pixels from a box in the detection image."""
    found = _eyes(grey, tuple(int(v) for v in box))
    bx, by, bw, bh = (float(v) / scale for v in box)
    left, right, mouth = _proportional(bx, by, bw, bh)
    source = "proportions"
    if found is not None:
        left, right = ((float(px) / scale, float(py) / scale) for px, py in found)
        source = "eye_cascade"
    return Face(round(bx), round(by), round(bw), round(bh), int(neighbors),
                left, right, mouth, source)


def find_faces(pixels: np.ndarray, aligned: bool = False) -> list[Face]:
    """Frontal faces in H x W x 3 uint8 RGB ``pixels``, most supported first.

    ``aligned=True`` treats the whole image as one face (for inputs that are
    already face crops); the eye cascade still places the eyes when it finds them,
    else the fixed proportions do. Its ``neighbors`` then count the support of the
    best face the detector finds in the image: 0 says it found none, so the image
    may not be a face crop at all (a landscape judged "as a face" means nothing).
    """
    grey, scale = _grey(pixels)
    faces = _detected(grey, scale)
    if aligned:
        height, width = grey.shape
        whole = _face(grey, scale, (0, 0, width, height), 0)
        return [replace(whole, x=0, y=0, w=pixels.shape[1], h=pixels.shape[0],
                        neighbors=max((f.neighbors for f in faces), default=0))]
    return faces


def _detected(grey: np.ndarray, scale: float) -> list[Face]:
    """The cascade's faces of at least ``MIN_FACE`` native pixels, most supported first."""
    min_side = max(20, round(MIN_FACE * scale))
    boxes, neighbors = _cascade(FACE_CASCADE).detectMultiScale2(
        grey, scaleFactor=SCALE_FACTOR, minNeighbors=MIN_NEIGHBORS, minSize=(min_side, min_side))
    faces = [_face(grey, scale, box, n) for box, n in zip(boxes, neighbors, strict=True)]
    faces = [f for f in faces if min(f.w, f.h) >= MIN_FACE]
    return sorted(faces, key=lambda f: (-f.neighbors, -f.w * f.h, f.y, f.x))


def region_box(centre: tuple[float, float], size: tuple[float, float],
               shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of a ``size`` (w, h) box about ``centre``, clipped to
    an array of ``shape``; empty (x1 <= x0 or y1 <= y0) when it falls outside."""
    height, width = shape[:2]
    cx, cy = centre
    half_w, half_h = size[0] / 2, size[1] / 2
    x0, y0 = max(0, round(cx - half_w)), max(0, round(cy - half_h))
    x1, y1 = min(width, round(cx + half_w)), min(height, round(cy + half_h))
    return x0, y0, x1, y1


def crop_box(
    shape: tuple[int, ...], face: Face, enlarge: float = ENLARGE
) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of the face box enlarged ``enlarge`` times about its
    centre, clipped to an image of ``shape`` (H, W, ...)."""
    x0, y0, x1, y1 = region_box((face.x + face.w / 2, face.y + face.h / 2),
                                (face.w * enlarge, face.h * enlarge), shape)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"face box {face.box} lies outside a {shape[1]}x{shape[0]} image")
    return x0, y0, x1, y1


def face_crop(pixels: np.ndarray, face: Face, enlarge: float = ENLARGE) -> np.ndarray:
    """The face box enlarged ``enlarge`` times about its centre, clipped to the
    image, cut out of the native pixels without resampling (a copy)."""
    x0, y0, x1, y1 = crop_box(pixels.shape, face, enlarge)
    return pixels[y0:y1, x0:x1].copy()


def crop_landmarks(shape: tuple[int, ...], face: Face, enlarge: float = ENLARGE) -> Landmarks:
    """The face's landmarks in the coordinates of ``face_crop(pixels, face, enlarge)``."""
    x0, y0, _, _ = crop_box(shape, face, enlarge)
    return face.landmarks.shifted(x0, y0)
