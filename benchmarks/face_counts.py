"""How many faces ``aigdetect.faces.find_faces`` finds in each folder of ``../shared/data``.

Faces per folder and the number of files holding at least one, with the detector's
default settings on the pixels as stored; the time per image. ``--ship-ok`` counts
only the files whose licence allows shipping weights (what face training may use).

    python benchmarks/face_counts.py
"""

from __future__ import annotations

import argparse
import csv
import time
from collections import Counter
from pathlib import Path

from aigdetect.faces import find_faces
from aigdetect.patches import ImageReadError, load_image

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def folder_of(path: str) -> str:
    """``faces/ai``, ``faces/real``, ``photos``, ``processed``, ``ai-general``."""
    parts = path.split("/")
    return "/".join(parts[:2]) if parts[0] == "faces" else parts[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ship-ok", action="store_true", help="only ship_ok files")
    args = parser.parse_args()
    with open(SHARED / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if not args.ship_ok or r["ship_ok"] == "yes"]
    files, faces, with_faces = Counter(), Counter(), Counter()
    started = time.perf_counter()
    for row in rows:
        folder = folder_of(row["path"])
        files[folder] += 1
        try:
            found = len(find_faces(load_image(SHARED / row["path"]).pixels))
        except ImageReadError:
            continue
        faces[folder] += found
        with_faces[folder] += found > 0
    seconds = time.perf_counter() - started
    print("| folder | files | files with a face | faces |\n|---|---|---|---|")
    for folder in sorted(files):
        print(f"| {folder} | {files[folder]} | {with_faces[folder]} | {faces[folder]} |")
    print(f"\n{len(rows)} files in {seconds:.0f} s ({1000 * seconds / len(rows):.0f} ms per image)")


if __name__ == "__main__":
    main()
