"""Image-making helpers for the scan / fit-gmm / evaluate tests, and a loader for the
benchmark scripts (not fixtures: plain functions, so test modules can build
module-scoped data with them).

Everything is small (a few hundred pixels a side) so that a scan with ``--patches 4``
stays fast on a busy CPU.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from aigdetect.cli import app
from aigdetect.detectors import DetectorFolder, fuse

#: The benchmark scripts (not a package: tests load them by path).
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

#: Default size of the generated images (width, height): a 4 x 3 grid of 64 px tiles.
SIZE = (256, 192)

#: Files of the bad-input zoo that must be reported as unreadable.
BAD_NAMES = ("empty.jpg", "truncated.jpg", "corrupt.jpg", "text.png", "bomb.png")
#: Files of the zoo that are odd but decodable: each must get a score.
ODD_NAMES = ("cmyk.jpg", "sixteen.png", "palette.png", "animated.gif", "tiny.png")


def noise_array(size: tuple[int, int] = SIZE, seed: int = 0) -> np.ndarray:
    """H x W x 3 uint8 uniform noise."""
    width, height = size
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def smooth_array(size: tuple[int, int] = SIZE, seed: int = 0) -> np.ndarray:
    """H x W x 3 uint8 smooth gradient with a seed-dependent tint (no noise)."""
    width, height = size
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    tint = rng.uniform(0.3, 1.0, size=3)
    base = (xs / width + ys / height)[:, :, None] * 120.0 * tint
    return np.clip(base + 30.0, 0, 255).astype(np.uint8)


def noise_jpeg(path: str | Path, size: tuple[int, int] = SIZE, seed: int = 0,
               quality: int = 90) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(noise_array(size, seed)).save(path, "JPEG", quality=quality)
    return path


def smooth_png(path: str | Path, size: tuple[int, int] = SIZE, seed: int = 0) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(smooth_array(size, seed)).save(path, "PNG")
    return path


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: str | Path, side: int = 20_000) -> Path:
    """A valid 1-bit greyscale PNG of ``side`` x ``side`` pixels (400 MP by default)
    that weighs some tens of kilobytes: a decompression bomb."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    chunks = [compressor.compress(row * 500) for _ in range(side // 500)]
    chunks.append(compressor.compress(row * (side % 500)))
    chunks.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", b"".join(chunks)) + png_chunk(b"IEND", b""))
    path = Path(path)
    path.write_bytes(data)
    return path


def make_good_folder(folder: Path, count: int = 3) -> list[Path]:
    """``count`` noise JPEGs and one smooth PNG (different sizes and formats)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [noise_jpeg(folder / f"photo_{i}.jpg", seed=i) for i in range(count)]
    paths.append(smooth_png(folder / "render.png", (224, 160), seed=7))
    return paths


def make_zoo(folder: Path) -> dict[str, Path]:
    """The bad-input zoo: unreadable files (:data:`BAD_NAMES`) and odd but
    decodable ones (:data:`ODD_NAMES`). Returns name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}

    def put(name: str, data: bytes) -> None:
        (folder / name).write_bytes(data)
        files[name] = folder / name

    put("empty.jpg", b"")
    buffer = io.BytesIO()
    Image.fromarray(noise_array(seed=11)).save(buffer, "JPEG", quality=90)
    # cut inside its headers: no pixel to recover (one cut later is scored, damaged)
    put("truncated.jpg", buffer.getvalue()[:300])
    put("corrupt.jpg", np.random.default_rng(3).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    put("text.png", b"this is not an image, just a text file\n" * 20)
    files["bomb.png"] = bomb_png(folder / "bomb.png")

    rgb = noise_array((200, 150), seed=21)
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", "JPEG", quality=90)
    files["cmyk.jpg"] = folder / "cmyk.jpg"
    sixteen = (np.random.default_rng(4).integers(0, 65536, (150, 200))).astype(np.uint16)
    Image.fromarray(sixteen).save(folder / "sixteen.png")
    files["sixteen.png"] = folder / "sixteen.png"
    Image.fromarray(rgb).convert("P").save(folder / "palette.png")
    files["palette.png"] = folder / "palette.png"
    frames = [Image.fromarray(noise_array((128, 96), seed=s)).convert("P") for s in (5, 6)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:],
                   duration=100, loop=0)
    files["animated.gif"] = folder / "animated.gif"
    Image.fromarray(noise_array((10, 10), seed=8)).save(folder / "tiny.png")
    files["tiny.png"] = folder / "tiny.png"
    return files


def snapshot(paths: list[Path]) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime (ns) of files, to check a scan left them untouched."""
    return {str(p): (p.read_bytes(), os.stat(p).st_mtime_ns) for p in paths}


def tree_snapshot(root: Path) -> dict[str, int]:
    """Every name under ``root`` (links, pipes and folders too, none followed or read)
    with its mtime: a file added, removed or renamed anywhere changes a folder's."""
    entries = [root, *root.rglob("*")]
    return {str(p.relative_to(root)): os.lstat(p).st_mtime_ns for p in entries}


def parse_json_stdout(text: str) -> dict[str, Any]:
    """The whole of stdout must be one JSON document (no progress, no log lines)."""
    return json.loads(text)


def invoke(runner: CliRunner, args: list[Any], **kwargs: Any):
    """Run the CLI in-process; an uncaught exception (a traceback) fails the test."""
    result = runner.invoke(app, [str(a) for a in args], **kwargs)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {result.exception!r}\n{result.stderr}") \
            from result.exception
    assert "Traceback" not in result.stdout + result.stderr
    return result


def load_benchmark(name: str) -> Any:
    """The script ``benchmarks/NAME.py`` as a module, to test its pure functions."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_scored_by(record: dict[str, Any], folder: DetectorFolder) -> None:
    """The record's numbers are its detector's: each threshold is that detector's
    calibrated one, the fused raw score is the weighted mean of the components'
    standardised ones, and a single detector's one component is the record itself."""
    calibration = folder.calibrations[record["detector"]]
    assert record["threshold"] == pytest.approx(calibration.threshold, abs=1e-4)
    assert record["percentile"] == pytest.approx(
        100 * np.mean(calibration.real_scores >= record["raw_score"]), abs=0.01)
    for name, component in record["components"].items():
        assert component["threshold"] == pytest.approx(folder.calibrations[name].threshold,
                                                       abs=1e-4)
    if record["detector"] == "fused":
        names = list(record["components"])
        weights = None if folder.fusion_weights is None else [folder.fusion_weights[n]
                                                              for n in names]
        expected = fuse([(folder.calibrations[n], record["components"][n]["raw_score"])
                         for n in names], weights)
        # components keep 4 decimals, which a far-off one-class score scales up
        assert record["raw_score"] == pytest.approx(expected, rel=1e-5, abs=1e-3)
    else:
        (component,) = record["components"].values()
        assert (component["raw_score"], component["score"]) == (record["raw_score"],
                                                               record["score"])
