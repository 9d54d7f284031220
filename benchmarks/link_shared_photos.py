"""Make folders of symlinks into ../shared/data, split by the manifest's columns.

The default weights are trained on the ``ship_ok`` photos only; evaluation uses
the others. Symlinks keep the shared images out of the project and unmodified.

    python benchmarks/link_shared_photos.py --out runs/data
    # -> runs/data/ship_ok  runs/data/not_ship_ok  runs/data/faces_ai ...
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def link(rows: list[dict], folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        target = SHARED / row["path"]
        name = folder / Path(row["path"]).name
        if not name.exists():
            os.symlink(target, name)
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=SHARED, help="the shared data folder")
    parser.add_argument("--out", type=Path, default=Path("runs/data"))
    args = parser.parse_args()
    with open(args.shared / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    groups = {
        "ship_ok": [r for r in rows if r["path"].startswith("photos/") and r["ship_ok"] == "yes"],
        "not_ship_ok": [r for r in rows
                        if r["path"].startswith("photos/") and r["ship_ok"] != "yes"],
        "faces_ai": [r for r in rows if r["path"].startswith("faces/ai/")],
        "faces_real": [r for r in rows if r["path"].startswith("faces/real/")],
    }
    for generator in sorted({r["generator"] for r in rows if r["path"].startswith("ai-general/")}):
        key = "ai_general_" + generator.split()[0].lower()
        groups[key] = [r for r in rows if r["generator"] == generator]
    for name, members in groups.items():
        print(f"{link(members, args.out / name):5d} files -> {args.out / name}")


if __name__ == "__main__":
    main()
