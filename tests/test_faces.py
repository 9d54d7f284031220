"""Face detection, native-pixel crops and the manipulated negatives of the faces
pretext (aigdetect.faces, aigdetect.manipulations).

Synthetic fixtures are made here; the tests on real faces use ``../shared/data``
and skip cleanly when it is absent.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import SHARED_DATA
from PIL import Image

from aigdetect import faces
from aigdetect.faces import Face, Landmarks, crop_box, crop_landmarks, face_crop, find_faces
from aigdetect.manipulations import (
    MANIPULATIONS,
    eye_box,
    manipulate,
    mouth_box,
    save_debug,
    soft_mask,
)

REAL_FACES = SHARED_DATA / "faces" / "real"
#: Single frontal portraits (by their content: one person facing the camera).
PORTRAITS = (
    "justadudewhohacks__face-api.js__examples__images__surprised.jpg",
    "cleardusk__3DDFA_V2__examples__inputs__JianzhuGuo.jpg",
    "ageitgey__face_recognition__examples__knn_examples__train__rose_leslie__img2.jpg",
)


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture
def crop() -> np.ndarray:
    """A 160 x 160 noise 'face crop' (noise, so every flip changes its region)."""
    return _noise(160, 160, seed=1)


@pytest.fixture
def marks() -> Landmarks:
    """Landmarks of a face box (12, 12, 136, 136) inside the crop, by proportion."""
    return Landmarks(left_eye=(52.8, 66.4), right_eye=(107.2, 66.4), mouth=(80.0, 118.1),
                     box=(12, 12, 136, 136))


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a != b).any(axis=2)


def _outside(shape: tuple[int, ...], *boxes: tuple[int, int, int, int]) -> np.ndarray:
    outside = np.ones(shape[:2], dtype=bool)
    for x0, y0, x1, y1 in boxes:
        outside[y0:y1, x0:x1] = False
    return outside


# --- detection -------------------------------------------------------------------


def test_no_face_in_a_synthetic_landscape():
    rng = np.random.default_rng(0)
    height, width = 480, 640
    yy, xx = np.mgrid[0:height, 0:width]
    sky_to_ground = np.stack([80 + 100 * yy / height, 120 + 60 * xx / width,
                              200 - 120 * yy / height], axis=-1)
    landscape = np.clip(sky_to_ground + rng.normal(0, 8, (height, width, 3)), 0, 255)
    assert find_faces(landscape.astype(np.uint8)) == []


def test_no_face_in_a_plain_texture():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:400, 0:400]
    waves = (np.sin(xx / 3.0) + np.sin(yy / 5.0)) * 50 + 128
    texture = np.clip(waves[..., None] + rng.normal(0, 20, (400, 400, 3)), 0, 255)
    assert find_faces(texture.astype(np.uint8)) == []
    assert find_faces(np.full((300, 300, 3), 127, dtype=np.uint8)) == []


def test_detector_settings_are_fixed_constants():
    assert faces.MIN_FACE == 48 and faces.SCALE_FACTOR == 1.1 and faces.MIN_NEIGHBORS == 5
    with pytest.raises(ValueError, match="uint8"):
        find_faces(np.zeros((64, 64), dtype=np.uint8))


def test_aligned_input_is_one_face_covering_the_image():
    pixels = _noise(120, 100)
    (face,) = find_faces(pixels, aligned=True)
    assert face.box == (0, 0, 100, 120)
    assert face.landmarks_from in ("eye_cascade", "proportions")
    # enlarging a whole-image box clips back to the whole image
    assert np.array_equal(face_crop(pixels, face), pixels)


@pytest.mark.skipif(not REAL_FACES.is_dir(), reason="../shared/data/faces/real is absent")
@pytest.mark.parametrize("name", PORTRAITS)
def test_finds_the_face_in_a_real_portrait(name):
    from aigdetect.patches import load_image

    path = REAL_FACES / name
    if not path.is_file():
        pytest.skip(f"{name} is not in ../shared/data")
    pixels = load_image(path).pixels
    found = find_faces(pixels)
    assert len(found) >= 1
    face = found[0]
    assert face.neighbors >= faces.MIN_NEIGHBORS and min(face.w, face.h) >= faces.MIN_FACE
    assert face.landmarks_from in ("eye_cascade", "proportions")
    # landmarks inside the box, eyes above the mouth, left eye left of the right one
    for px, py in (face.left_eye, face.right_eye, face.mouth):
        assert face.x <= px <= face.x + face.w and face.y <= py <= face.y + face.h
    assert face.left_eye[0] < face.right_eye[0]
    assert max(face.left_eye[1], face.right_eye[1]) < face.mouth[1]
    x0, y0, x1, y1 = crop_box(pixels.shape, face)
    assert np.array_equal(face_crop(pixels, face), pixels[y0:y1, x0:x1])


@pytest.mark.skipif(not REAL_FACES.is_dir(), reason="../shared/data/faces/real is absent")
def test_faces_come_most_supported_first_and_in_native_pixels_of_large_images():
    """Several faces: ordered by the detector's support. An image over the detection
    side (found on a reduced copy) gives its boxes in its own pixels: the portrait
    enlarged 3x gives about 3x the box."""
    from aigdetect.patches import load_image

    several = REAL_FACES / ("ageitgey__face_recognition__examples__knn_examples__test__"
                            "kit_with_rose.jpg")
    portrait = REAL_FACES / PORTRAITS[0]
    if not (several.is_file() and portrait.is_file()):
        pytest.skip("the portraits are not in ../shared/data")
    found = find_faces(load_image(several).pixels)
    assert len(found) >= 2
    assert [f.neighbors for f in found] == sorted((f.neighbors for f in found), reverse=True)
    pixels = load_image(portrait).pixels
    (small, *_), height, width = find_faces(pixels), *pixels.shape[:2]
    large = np.asarray(Image.fromarray(pixels).resize((width * 3, height * 3)))
    assert max(large.shape[:2]) > faces.MAX_DETECT_SIDE
    big = find_faces(large)[0]
    assert big.w == pytest.approx(3 * small.w, rel=0.2)
    assert big.x == pytest.approx(3 * small.x, abs=0.1 * big.w)
    assert big.x + big.w <= large.shape[1] and big.y + big.h <= large.shape[0]


# --- crops -----------------------------------------------------------------------


def _face(x, y, w, h) -> Face:
    return Face(x, y, w, h, 10, (x + 0.3 * w, y + 0.4 * h), (x + 0.7 * w, y + 0.4 * h),
                (x + 0.5 * w, y + 0.78 * h), "proportions")


def test_face_crop_is_the_enlarged_box_in_native_pixels():
    pixels = _noise(300, 400)
    face = _face(150, 100, 60, 80)
    crop = face_crop(pixels, face)
    # centre (180, 140); half sizes 39 x 52 after x1.3
    assert crop_box(pixels.shape, face) == (141, 88, 219, 192)
    assert np.array_equal(crop, pixels[88:192, 141:219])
    crop[:] = 0  # a copy: the image is untouched
    assert pixels[88:192, 141:219].any()
    assert face_crop(pixels, face, enlarge=1.0).shape == (80, 60, 3)


def test_face_crop_is_clipped_at_the_borders():
    pixels = _noise(200, 300)
    corner = _face(0, 0, 60, 60)  # centre (30, 30), half size 39
    assert crop_box(pixels.shape, corner) == (0, 0, 69, 69)
    assert np.array_equal(face_crop(pixels, corner), pixels[:69, :69])
    far = _face(250, 150, 50, 50)  # centre (275, 175), half size 32.5
    x0, y0, x1, y1 = crop_box(pixels.shape, far)
    assert (x1, y1) == (300, 200) and x0 == round(275 - 32.5) and y0 == round(175 - 32.5)
    assert np.array_equal(face_crop(pixels, far), pixels[y0:, x0:])


def test_crop_landmarks_are_relative_to_the_crop():
    pixels = _noise(300, 400)
    face = _face(150, 100, 60, 80)
    marks = crop_landmarks(pixels.shape, face)
    assert marks.left_eye == pytest.approx((face.left_eye[0] - 141, face.left_eye[1] - 88))
    assert marks.mouth == pytest.approx((face.mouth[0] - 141, face.mouth[1] - 88))
    assert marks.box == (9, 12, 60, 80)


# --- manipulations ---------------------------------------------------------------


def test_soft_mask_is_one_at_the_centre_and_zero_at_the_edge():
    mask = soft_mask(40, 60)
    assert mask.shape == (40, 60)
    assert mask[20, 30] == pytest.approx(1.0)
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    assert not mask[[0, -1], :].any() and not mask[:, [0, -1]].any()
    assert 0.0 < mask[20, 2] < 1.0  # soft, not a hard rectangle


@pytest.mark.parametrize("name", ["mouth_vflip", "mouth_hflip"])
def test_mouth_flips_change_only_the_mouth_region(crop, marks, name):
    before = crop.copy()
    out = MANIPULATIONS[name](crop, marks, np.random.default_rng(0))
    assert out.shape == crop.shape and out.dtype == np.uint8
    assert np.array_equal(crop, before)  # input untouched
    box = mouth_box(marks, crop.shape)
    x0, y0, x1, y1 = box
    assert x1 - x0 > 20 and y1 - y0 > 10
    assert x0 < marks.mouth[0] < x1 and y0 < marks.mouth[1] < y1
    changed = _changed(crop, out)
    assert not changed[_outside(crop.shape, box)].any()
    assert changed[(y0 + y1) // 2, (x0 + x1) // 2 + 1]  # the centre is replaced
    centre = ((y0 + y1) // 2, (x0 + x1) // 2 + 3)
    flipped = (np.flip(crop[y0:y1, x0:x1], axis=0 if name == "mouth_vflip" else 1))
    assert np.array_equal(out[centre], flipped[centre[0] - y0, centre[1] - x0])


def test_eye_flip_changes_only_one_eye_region(crop, marks):
    boxes = {side: eye_box(marks, crop.shape, side) for side in ("left", "right")}
    sides_seen = set()
    for seed in range(8):
        out = MANIPULATIONS["eye_hflip"](crop, marks, np.random.default_rng(seed))
        changed = _changed(crop, out)
        assert not changed[_outside(crop.shape, *boxes.values())].any()
        hit = [side for side, (x0, y0, x1, y1) in boxes.items() if changed[y0:y1, x0:x1].any()]
        assert len(hit) == 1
        assert not changed[_outside(crop.shape, boxes[hit[0]])].any()
        sides_seen.add(hit[0])
    assert sides_seen == {"left", "right"}


def test_region_flips_handle_regions_cut_by_the_border(marks):
    """A crop cut off above the mouth: the eye flip still works, the mouth flips find
    nothing to flip, and ``manipulate`` then warps instead of passing an untouched face
    off as a manipulated one."""
    small = _noise(90, 150, seed=3)  # the mouth (y 118) lies below the bottom edge
    for name in ("mouth_vflip", "mouth_hflip", "eye_hflip"):
        out = MANIPULATIONS[name](small, marks, np.random.default_rng(0))
        assert out.shape == small.shape and out.dtype == np.uint8
        assert np.array_equal(out, small) == name.startswith("mouth"), name
    names = set()
    for seed in range(24):
        out, name = manipulate(small, marks, np.random.default_rng(seed))
        assert not np.array_equal(out, small), name
        names.add(name)
    assert names == {"eye_hflip", "warp"}


def test_warp_changes_the_interior_and_is_deterministic(crop, marks):
    out = MANIPULATIONS["warp"](crop, marks, np.random.default_rng(5))
    assert out.shape == crop.shape and out.dtype == np.uint8
    assert _changed(crop, out)[20:-20, 20:-20].mean() > 0.5
    # border control points are fixed: the outer frame of pixels is kept
    assert np.array_equal(out[0], crop[0]) and np.array_equal(out[:, -1], crop[:, -1])
    again = MANIPULATIONS["warp"](crop, marks, np.random.default_rng(5))
    other = MANIPULATIONS["warp"](crop, marks, np.random.default_rng(6))
    assert np.array_equal(out, again)
    assert not np.array_equal(out, other)


def test_warp_of_a_smooth_image_is_a_small_displacement(marks):
    yy, xx = np.mgrid[0:160, 0:160]
    ramp = np.stack([xx, yy, xx // 2 + yy // 2], axis=-1).astype(np.uint8)
    out = MANIPULATIONS["warp"](ramp, marks, np.random.default_rng(0)).astype(int)
    shift = np.abs(out[..., 0] - ramp[..., 0])
    assert shift.max() <= 0.05 * 160 * 5  # within a few standard deviations
    assert shift.mean() > 0.5


def test_manipulate_covers_all_four_and_is_reproducible(crop, marks):
    seen = {}
    for seed in range(40):
        out, name = manipulate(crop, marks, np.random.default_rng(seed))
        assert name in MANIPULATIONS and out.shape == crop.shape and out.dtype == np.uint8
        assert not np.array_equal(out, crop)
        seen[name] = seen.get(name, 0) + 1
    assert set(seen) == set(MANIPULATIONS)
    first, name = manipulate(crop, marks, np.random.default_rng(123))
    second, again = manipulate(crop, marks, np.random.default_rng(123))
    assert name == again and np.array_equal(first, second)


def test_manipulations_refuse_what_is_not_an_rgb_crop(marks):
    with pytest.raises(ValueError, match="uint8"):
        MANIPULATIONS["warp"](np.zeros((50, 50, 3), dtype=np.float32), marks,
                              np.random.default_rng(0))


def test_save_debug_writes_side_by_side_pngs(tmp_path, crop, marks):
    folder = tmp_path / "debug"
    paths = save_debug(folder, [crop, crop[:100, :120]], [marks, marks], seed=0)
    assert [p.parent for p in paths] == [folder, folder] and all(p.suffix == ".png" for p in paths)
    with Image.open(paths[0]) as sheet:
        # regions, original and the four manipulations, under a label strip
        assert sheet.size[0] == 6 * 160 and sheet.size[1] > 160
        panel = np.asarray(sheet.convert("RGB"))[-160:, 160:320]
    assert np.array_equal(panel, crop)  # the original panel is the crop itself


@pytest.mark.skipif(not REAL_FACES.is_dir(), reason="../shared/data/faces/real is absent")
def test_manipulations_of_a_real_face_crop(tmp_path):
    from aigdetect.patches import load_image

    path = REAL_FACES / PORTRAITS[0]
    if not path.is_file():
        pytest.skip(f"{PORTRAITS[0]} is not in ../shared/data")
    pixels = load_image(path).pixels
    face = find_faces(pixels)[0]
    crop, marks = face_crop(pixels, face), crop_landmarks(pixels.shape, face)
    for name, fn in MANIPULATIONS.items():
        out = fn(crop, marks, np.random.default_rng(0))
        assert out.shape == crop.shape and not np.array_equal(out, crop), name
    assert len(save_debug(tmp_path, [crop], [marks])) == 1
