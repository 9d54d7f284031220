"""Scan throughput on 12-megapixel JPEGs, beside the decode-only floor.

    python benchmarks/scan_throughput.py [--images 24] [--workers 2] [--patches N]
                                         [--detector residual|fused|binary|oneclass] [--model DIR]

Makes a folder of 4000x3000 camera-like JPEGs (a real photo from ../shared,
upscaled, with sensor-like noise, saved at quality 92: the decode cost of a real
12 MP JPEG; no camera trace is claimed), then times, on the same files:
  1. decode only (hash + decode + tiling, the same worker pool as a scan);
  2. a full scan with the detector (default: the shipped folder's default).
One untimed pass of each first (the page cache, the model's first call), then
``--repeats`` timed passes of each, alternating; the medians are reported. Without
the warm-up, whichever pass ran first paid for both (an earlier version measured
the decoding alone slower than the whole scan). Prints images/s, the model's share
of the time, and peak memory.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from aigdetect.detectors import DetectorFolder
from aigdetect.features import prepare_stream
from aigdetect.runtime import pick_device
from aigdetect.scanning import scan

SHARED_PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"


def make_images(folder: Path, count: int) -> list[Path]:
    sources = sorted(SHARED_PHOTOS.glob("*.jpg"))[:count] if SHARED_PHOTOS.is_dir() else []
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        if sources:
            base = Image.open(sources[index % len(sources)]).convert("RGB")
            base = base.resize((4000, 3000), Image.Resampling.BILINEAR)
            pixels = np.asarray(base, dtype=np.int16)
        else:
            ramp = np.linspace(0, 200, 4000, dtype=np.int16)
            pixels = np.broadcast_to(ramp[None, :, None], (3000, 4000, 3))
        noisy = np.clip(pixels + rng.normal(0, 4, pixels.shape), 0, 255).astype(np.uint8)
        path = folder / f"img_{index:03d}.jpg"
        Image.fromarray(noisy).save(path, quality=92)
        paths.append(path)
    return paths


def seconds(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def peak_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--patches", type=int, default=None,
                        help="tiles per image (default: the detector's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--detector", default=None, help="default: the folder's default")
    parser.add_argument("--model", type=Path, default=None, help="default: the shipped one")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each (median)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(f"making {args.images} 4000x3000 JPEGs ...")
        paths = make_images(Path(tmp), args.images)
        megabytes = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
        folder = DetectorFolder.open(args.model)
        detector = folder.build(args.detector, pick_device(args.device))
        tiles = folder.tiles(args.patches)

        def decode() -> int:
            return sum(1 for item in prepare_stream(paths, tiles, args.workers)
                       if item.error is None)

        def full_scan() -> list:
            return list(scan(paths, detector, folder.identity(), tiles, args.workers))

        decoded, records = decode(), full_scan()  # warm-up, untimed
        decode_times, scan_times = [], []
        for _ in range(args.repeats):
            decode_times.append(seconds(decode))
            scan_times.append(seconds(full_scan))
        decode_s, scan_s = statistics.median(decode_times), statistics.median(scan_times)

    errors = sum(r.error is not None for r in records)
    print(f"{len(paths)} images, {megabytes:.1f} MB each, {tiles.max_tiles} tiles each, "
          f"{args.workers} decode workers, detector {detector.name}, device {args.device}, "
          f"median of {args.repeats} passes after a warm-up")
    print(f"decode only : {decode_s:6.2f} s  {decoded / decode_s:6.2f} images/s")
    print(f"full scan   : {scan_s:6.2f} s  {len(records) / scan_s:6.2f} images/s "
          f"({errors} errors)")
    model_s = max(0.0, scan_s - decode_s)
    print(f"model share : {model_s:6.2f} s beyond decoding "
          f"({model_s / len(records) * 1000:.0f} ms/image vs "
          f"{decode_s / len(records) * 1000:.0f} ms/image decoding, wall time)")
    own, children = peak_mb()
    print(f"peak RSS    : {own:.0f} MB main process, {children:.0f} MB largest worker")


if __name__ == "__main__":
    main()
