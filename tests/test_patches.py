"""Image decoding (read-only, every failure an ImageReadError) and native-resolution patches."""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers_images import png_chunk
from PIL import Image

from aigdetect.patches import (
    CONDITIONS,
    MAX_UPSCALED_SIDE,
    DecodedImage,
    DecodeLimits,
    ImageReadError,
    apply_processing,
    ensure_min_size,
    grid_tiles,
    grid_tiles_at,
    load_image,
    random_crops,
    recompressed_tiles,
    spread_over_grid,
    tile_count,
)


def digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


def positional_pixels(height: int, width: int) -> np.ndarray:
    """Pixels that encode their own position: R = row, G = column, B = row + column."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([ys % 256, xs % 256, (ys + xs) % 256], axis=2).astype(np.uint8)


def random_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ---------------------------------------------------------------------------
# load_image
# ---------------------------------------------------------------------------

def test_rgb_jpeg(tmp_path, make_jpeg):
    path = make_jpeg(tmp_path / "a.jpg", size=(96, 72))
    decoded = load_image(path)
    assert isinstance(decoded, DecodedImage)
    assert decoded.pixels.shape == (72, 96, 3)
    assert decoded.pixels.dtype == np.uint8
    assert (decoded.width, decoded.height, decoded.format) == (96, 72, "JPEG")
    assert decoded.notes == []
    with Image.open(path) as image:  # no resampling: the stored pixels, exactly
        np.testing.assert_array_equal(decoded.pixels, np.asarray(image.convert("RGB")))


def test_lossless_png_pixels_are_exact(tmp_path):
    pixels = random_rgb(33, 47)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_image(tmp_path / "a.png").pixels, pixels)


def test_palette_png(tmp_path):
    image = Image.fromarray(random_rgb(40, 50)).convert("P")
    image.save(tmp_path / "p.png")
    decoded = load_image(tmp_path / "p.png")
    assert decoded.pixels.shape == (40, 50, 3)
    np.testing.assert_array_equal(decoded.pixels, np.asarray(image.convert("RGB")))
    assert decoded.notes == ["palette image converted to RGB"]


@pytest.mark.parametrize(("mode", "suffix", "note"), [
    ("LAB", "tif", "LAB converted to RGB"),
    ("YCbCr", "tif", "YCbCr converted to RGB"),
    ("CMYK", "jpg", "CMYK converted to RGB"),
    ("1", "png", "1-bit (black and white) image converted to RGB"),
    ("RGBA", "png", "alpha channel dropped"),
    ("L", "png", None),  # grey to RGB copies the plane: nothing is lost
])
def test_colour_conversions_are_noted(tmp_path, mode, suffix, note):
    """Every conversion that changes the pixels the detector reads is said."""
    path = tmp_path / f"image.{suffix}"
    Image.fromarray(random_rgb(40, 50)).convert(mode).save(path)
    decoded = load_image(path)
    assert decoded.pixels.shape == (40, 50, 3) and decoded.pixels.dtype == np.uint8
    assert decoded.notes == ([note] if note else [])


def test_greyscale_png(tmp_path):
    grey = random_rgb(40, 50)[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "l.png")
    decoded = load_image(tmp_path / "l.png")
    assert decoded.pixels.shape == (40, 50, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded.pixels[:, :, channel], grey)


def test_rgba_png_drops_alpha_with_a_note(tmp_path):
    rgb = random_rgb(40, 50)
    alpha = np.full((40, 50, 1), 7, dtype=np.uint8)
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA").save(tmp_path / "a.png")
    decoded = load_image(tmp_path / "a.png")
    np.testing.assert_array_equal(decoded.pixels, rgb)
    assert any("alpha" in note for note in decoded.notes)


def test_cmyk_jpeg(tmp_path):
    Image.fromarray(random_rgb(40, 50)).convert("CMYK").save(tmp_path / "c.jpg")
    with Image.open(tmp_path / "c.jpg") as image:
        assert image.mode == "CMYK"
    decoded = load_image(tmp_path / "c.jpg")
    assert decoded.pixels.shape == (40, 50, 3)
    assert decoded.pixels.dtype == np.uint8
    assert any("CMYK" in note for note in decoded.notes)


def test_16_bit_png_reduced_to_8_bits(tmp_path):
    values = (np.arange(40 * 50, dtype=np.uint32).reshape(40, 50) * 32).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as image:
        assert image.mode == "I;16"
    decoded = load_image(tmp_path / "deep.png")
    expected = np.round(values / 65535.0 * 255.0).astype(np.uint8)
    assert decoded.pixels.shape == (40, 50, 3)
    np.testing.assert_array_equal(decoded.pixels[:, :, 0], expected)
    np.testing.assert_array_equal(decoded.pixels[:, :, 2], expected)
    assert decoded.pixels.max() > 200  # the full 16-bit range maps to the full 8-bit range
    assert any("8 bits" in note for note in decoded.notes)


def test_16_bit_rgb_png_is_noted(tmp_path):
    """Pillow opens a 16-bit RGB PNG as plain RGB (its high bytes): only the raw mode
    tells, and the reduction must still be noted."""
    samples = np.full((8, 8, 3), 0xAB12, dtype=">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in samples)

    header = struct.pack(">IIBBBBB", 8, 8, 16, 2, 0, 0, 0)  # 16 bits, truecolour
    (tmp_path / "deep.png").write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
                                        + png_chunk(b"IDAT", zlib.compress(rows))
                                        + png_chunk(b"IEND", b""))
    decoded = load_image(tmp_path / "deep.png")
    assert (decoded.pixels == 0xAB).all()
    assert decoded.notes == ["16-bit RGB samples reduced to 8 bits"]
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "plain.png")
    assert load_image(tmp_path / "plain.png").notes == []


def test_sixteen_bit_rounding_is_exact_for_every_value(tmp_path):
    """The integer scaling (a quarter of float64's memory) gives round(v / 65535 * 255)."""
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    Image.fromarray(values).save(tmp_path / "all.png")
    expected = np.round(values / 65535.0 * 255.0).astype(np.uint8)
    np.testing.assert_array_equal(load_image(tmp_path / "all.png").pixels[:, :, 0], expected)


def test_animated_gif_gives_first_frame_with_a_note(tmp_path):
    frames = [Image.fromarray(np.full((30, 40, 3), value, dtype=np.uint8)).convert("P")
              for value in (10, 120, 250)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    decoded = load_image(tmp_path / "anim.gif")
    assert decoded.pixels.shape == (30, 40, 3)
    np.testing.assert_array_equal(decoded.pixels, np.asarray(frames[0].convert("RGB")))
    # frames are not counted: counting would walk the whole file
    assert "several frames: first frame used" in decoded.notes


def test_empty_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty file"):
        load_image(tmp_path / "empty.jpg")


def test_truncated_jpeg(tmp_path, make_jpeg):
    """A file cut short gives what it holds, noted as damaged (the note caps its
    verdict); one cut inside its headers holds no pixel and is an error."""
    whole = make_jpeg(tmp_path / "whole.jpg", size=(96, 96)).read_bytes()
    complete = load_image(tmp_path / "whole.jpg").pixels
    for kept in (len(whole) - 2, len(whole) // 2):  # no end marker; half the data
        path = tmp_path / f"cut{kept}.jpg"
        path.write_bytes(whole[:kept])
        before = digest(path)
        decoded = load_image(path)
        assert decoded.pixels.shape == complete.shape
        assert any(n.startswith("damaged:") for n in decoded.notes)
        assert np.array_equal(decoded.pixels[:16], complete[:16])  # the rows it holds
        assert digest(path) == before
    headers_only = tmp_path / "headers.jpg"
    headers_only.write_bytes(whole[:300])
    with pytest.raises(ImageReadError, match="ends inside its header or metadata"):
        load_image(headers_only)


def test_text_file_is_not_an_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("this is not an image\n")
    with pytest.raises(ImageReadError, match="not an image"):
        load_image(tmp_path / "notes.jpg")


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageReadError, match="directory"):
        load_image(tmp_path)


def test_oversized_image_refused_before_decoding(tmp_path, make_jpeg):
    path = make_jpeg(tmp_path / "big.jpg", size=(100, 80))
    with pytest.raises(ImageReadError, match="too large") as caught:
        load_image(path, DecodeLimits(max_pixels=100 * 80 - 1))
    assert "100x80" in str(caught.value)
    assert "--max-pixels" in str(caught.value)
    assert load_image(path, DecodeLimits(max_pixels=100 * 80)).pixels.shape == (80, 100, 3)


def test_loading_is_read_only(tmp_path, make_jpeg):
    path = make_jpeg(tmp_path / "evidence.jpg", size=(64, 64), exif={"Make": "Canon"})
    path.chmod(0o444)  # a write-protected evidence file still loads
    before = digest(path)
    load_image(path)
    assert digest(path) == before


# ---------------------------------------------------------------------------
# Crops and tiles
# ---------------------------------------------------------------------------

def test_random_crops_shape_dtype_and_content():
    pixels = positional_pixels(130, 200)
    crops = random_crops(pixels, 5, 64, np.random.default_rng(3))
    assert crops.shape == (5, 3, 64, 64)
    assert crops.dtype == np.uint8
    assert crops.flags["C_CONTIGUOUS"]
    for crop in crops:  # every crop is an unresampled window of the image
        top, left = int(crop[0, 0, 0]), int(crop[1, 0, 0])
        np.testing.assert_array_equal(
            crop, pixels[top : top + 64, left : left + 64].transpose(2, 0, 1)
        )


def test_random_crops_deterministic_given_seed():
    pixels = random_rgb(130, 200)
    first = random_crops(pixels, 4, 32, np.random.default_rng(42))
    second = random_crops(pixels, 4, 32, np.random.default_rng(42))
    other = random_crops(pixels, 4, 32, np.random.default_rng(43))
    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_random_crops_of_exact_size_image():
    pixels = random_rgb(64, 64)
    crops = random_crops(pixels, 2, 64, np.random.default_rng(0))
    np.testing.assert_array_equal(crops[0], pixels.transpose(2, 0, 1))


def test_grid_tiles_count_and_centre_crop():
    pixels = positional_pixels(130, 200)  # H=130, W=200
    tiles = grid_tiles(pixels, 64)
    assert tile_count(130, 200, 64) == 6
    assert tiles.shape == (6, 3, 64, 64)
    assert tiles.dtype == np.uint8
    top, left = (130 - 128) // 2, (200 - 192) // 2  # centred: 1 px and 4 px margins
    for index, tile in enumerate(tiles):  # row-major order
        row, col = divmod(index, 3)
        y, x = top + row * 64, left + col * 64
        np.testing.assert_array_equal(tile, pixels[y : y + 64, x : x + 64].transpose(2, 0, 1))


def test_grid_tiles_subset_is_spread_and_deterministic():
    pixels = random_rgb(130, 200)
    full = grid_tiles(pixels, 64)
    subset = grid_tiles(pixels, 64, max_tiles=4)
    assert subset.shape == (4, 3, 64, 64)
    np.testing.assert_array_equal(subset, grid_tiles(pixels, 64, max_tiles=4))
    positions = [next(i for i, t in enumerate(full) if np.array_equal(t, s)) for s in subset]
    assert positions == sorted(set(positions))  # distinct, in order
    assert positions[0] == 0 and positions[-1] == len(full) - 1  # spread over the grid
    np.testing.assert_array_equal(grid_tiles(pixels, 64, max_tiles=10), full)


@pytest.mark.parametrize("rows, cols, keep", [(16, 16, 16), (46, 62, 16), (8, 8, 16),
                                               (1, 300, 16), (300, 1, 16), (3, 7, 5)])
def test_the_kept_tiles_cover_both_directions_of_the_grid(rows, cols, keep):
    """A flat-index spread put 16 of a 16 x 16 grid on its diagonal: a heat map showed a
    line and a scan read one stripe of the photo."""
    cells = spread_over_grid(rows, cols, keep)
    assert len(cells) == keep == len(set(cells.tolist()))
    kept_rows, kept_cols = set((cells // cols).tolist()), set((cells % cols).tolist())
    assert len(kept_rows) * len(kept_cols) <= 2 * keep  # a lattice, not a diagonal
    for kept, size in ((kept_rows, rows), (kept_cols, cols)):  # each band's middle
        assert min(kept) < size / 2 <= max(kept) + 1 and max(kept) < size
    if rows == cols == 16:
        assert kept_rows == kept_cols == {2, 6, 10, 14}
    if rows == cols == 8:
        assert kept_rows == kept_cols == {1, 3, 5, 7}
    np.testing.assert_array_equal(cells, spread_over_grid(rows, cols, keep))


def test_a_map_spreads_its_tiles_over_the_grid_and_a_score_keeps_its_subset():
    """explain's map of 16 tiles of a 1024 px image showed its diagonal; the scored subset
    stays the one the detectors were fitted and calibrated on."""
    pixels = random_rgb(1024, 1024)
    _, mapped = grid_tiles_at(pixels, 64, 16, over_grid=True)
    assert set(mapped[:, 0] // 64) == set(mapped[:, 1] // 64) == {2, 6, 10, 14}
    _, scored = grid_tiles_at(pixels, 64, 16)
    np.testing.assert_array_equal(scored[:, 0] // 64, scored[:, 1] // 64)  # row-major spread


def test_a_grid_no_larger_than_the_budget_is_kept_whole():
    np.testing.assert_array_equal(spread_over_grid(3, 5, 15), np.arange(15))


def test_a_file_cut_inside_its_metadata_says_no_pixel_is_left(tmp_path: Path) -> None:
    """A camera JPEG with a large metadata segment (maker notes, a preview) cut short
    inside it: no pixel data to recover, said as such."""
    buffer = io.BytesIO()
    Image.fromarray(random_rgb(64, 64)).save(buffer, "JPEG", exif=b"Exif\x00\x00" + bytes(60_000))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(buffer.getvalue()[:30_000])
    with pytest.raises(ImageReadError, match="ends inside its header or metadata"):
        load_image(cut)


def test_tiny_image_upscaled_to_one_tile():
    pixels = random_rgb(30, 20)  # 20 wide, 30 high
    notes: list[str] = []
    bigger = ensure_min_size(pixels, 64, notes)
    assert min(bigger.shape[:2]) == 64
    assert bigger.shape[0] > bigger.shape[1]  # aspect kept
    assert notes and "upscaled" in notes[0]
    tiles = grid_tiles(pixels, 64)
    assert tiles.shape == (1, 3, 64, 64)
    assert tile_count(30, 20, 64) == 1
    assert random_crops(pixels, 3, 64, np.random.default_rng(0)).shape == (3, 3, 64, 64)


def test_a_thin_image_is_not_upscaled_past_the_limits():
    """1 x 1,000,000 pixels is a few kilobytes as a PNG; upscaled whole to 64 px it
    would need 12 GB. The centre of its long side is kept instead (noted)."""
    notes: list[str] = []
    bigger = ensure_min_size(np.zeros((1, 1_000_000, 3), np.uint8), 64, notes)
    assert bigger.shape == (64, MAX_UPSCALED_SIDE, 3)
    assert "too thin to upscale whole" in notes[0]


def test_unreadable_metadata_after_the_pixels_is_not_damage(tmp_path):
    """A bad chunk after a PNG's image data: the pixels are whole, so the file is
    scored as it is (no "damaged:" note, which would cap the verdict)."""
    pixels = random_rgb(40, 40)
    plain = tmp_path / "plain.png"
    Image.fromarray(pixels).save(plain)
    data = plain.read_bytes()
    end = data.rfind(b"IEND") - 4
    bad = tmp_path / "bad-chunk.png"
    bad.write_bytes(data[:end] + struct.pack(">I", 10**6) + b"tEXtabc" + data[end:])
    loaded = load_image(bad)
    np.testing.assert_array_equal(loaded.pixels, pixels)
    assert loaded.notes and "the pixels are whole" in loaded.notes[0]
    assert not any(note.startswith("damaged:") for note in loaded.notes)
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])  # pixel data missing: still damaged
    assert load_image(cut).notes[0].startswith("damaged:")


def test_malformed_metadata_in_a_jpeg_header_is_noted_not_damage(tmp_path):
    """Pillow warns of a malformed MPF segment while reading the header: 30 bytes of
    metadata, the pixels whole. Noted as metadata, so the verdict is not capped."""
    pixels = random_rgb(64, 64)
    plain = tmp_path / "plain.jpg"
    Image.fromarray(pixels).save(plain, quality=90)
    data = plain.read_bytes()
    payload = b"MPF\x00II*\x00\x08\x00\x00\x00" + b"\xff" * 18
    segment = b"\xff\xe2" + struct.pack(">H", len(payload) + 2) + payload
    odd = tmp_path / "mpf.jpg"
    odd.write_bytes(data[:2] + segment + data[2:])
    loaded = load_image(odd)
    np.testing.assert_array_equal(loaded.pixels, load_image(plain).pixels)
    assert loaded.notes and all(note.startswith("metadata: ") for note in loaded.notes)


def test_ensure_min_size_leaves_large_images_alone():
    pixels = random_rgb(64, 80)
    assert ensure_min_size(pixels, 64) is pixels


def test_recompressed_tiles_keep_each_tile_in_its_place():
    """Each tile comes back where it was, the same size, only JPEG-coded: at quality 100
    a smooth tile is all but unchanged, and every tile is nearest its own original."""
    ramp = np.linspace(20, 230, 64)[None, None, :] + np.zeros((3, 64, 1))
    tiles = np.stack([np.clip(ramp + 10 * i, 0, 255) for i in range(4)]).astype(np.uint8)
    tiles[2] = tiles[2].transpose(0, 2, 1)  # one tile runs the other way
    back = recompressed_tiles(tiles, 100)
    assert back.shape == tiles.shape and back.dtype == np.uint8
    distances = np.abs(back[:, None].astype(int) - tiles[None].astype(int)).mean(axis=(2, 3, 4))
    assert (distances.argmin(axis=1) == np.arange(4)).all()
    assert distances.diagonal().max() < 1.5


def test_recompressed_tiles_beyond_one_jpeg_width():
    """--patches all on a large photo gives more 64 px tiles than one JPEG strip can be
    wide (65,500 px): they go in several strips, each tile still in its place, and a
    set that fits in one strip is coded exactly as before."""
    rng = np.random.default_rng(3)
    tiles = rng.integers(0, 256, (1100, 3, 64, 64), dtype=np.uint8)
    back = recompressed_tiles(tiles, 90)
    assert back.shape == tiles.shape and back.dtype == np.uint8
    assert np.array_equal(back[:1023], recompressed_tiles(tiles[:1023], 90))
    assert np.array_equal(back[1023:], recompressed_tiles(tiles[1023:], 90))
    error = np.abs(back.astype(int) - tiles.astype(int)).mean(axis=(1, 2, 3))
    shifted = np.abs(back[1:].astype(int) - tiles[:-1].astype(int)).mean(axis=(1, 2, 3))
    assert (error[1:] < shifted).all()  # each tile nearest its own original


def test_evaluation_conditions_crop_resize_and_reencode_as_stated() -> None:
    """matched: the centre 256 px of the stored pixels, then JPEG q90; web: the short
    side to 512 (bicubic), then JPEG q75; asis: the pixels untouched."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    assert np.array_equal(apply_processing(pixels, CONDITIONS["asis"]), pixels)

    def jpeg(array: np.ndarray, quality: int) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
        return np.asarray(Image.open(buffer).convert("RGB"))

    matched = apply_processing(pixels, CONDITIONS["matched"])
    assert np.array_equal(matched, jpeg(pixels[22:278, 72:328], 90))
    web = apply_processing(pixels, CONDITIONS["web"])
    resized = np.asarray(Image.fromarray(pixels).resize((683, 512), Image.Resampling.BICUBIC))
    assert np.array_equal(web, jpeg(resized, 75))
