"""Split ``../shared/data`` for the default weights and the detection benchmark.

Writes, under ``--out`` (symlinks only: the shared images stay where they are):

* ``train.csv`` (``path,label,group``): what the shipped detectors train on:
  ``ship_ok`` camera photos, processed photos and face photos (real; the faces a group
  of their own, so that a portrait does not read as AI: every AI family here shows
  people, the camera photos seldom do) and ``ship_ok`` AI images grouped by generator
  family, minus the calibration share. (The shipped binary detector was trained before
  the faces were added: the rows it read are the same but for them.)
* ``calibration/photos``, ``calibration/processed``: ``ship_ok`` real photos
  never trained on (whole camera models; whole source repositories of processed
  photos, so that the threshold meets processing pipelines it never trained on,
  as evidence does): the thresholds are set at the target false-positive rate
  on them.
* ``fusion/ai``: the ``ship_ok`` AI images that ``aigdetect train --binary --csv
  train.csv`` holds out for validation (15 %, seed 0: never trained on): with the
  calibration photos, ``calibrate --fake`` weights the fused detector on them.
* ``pretext_photos/``: the ``ship_ok`` camera photos but the calibration cameras (the
  EXIF pretext: a calibration photo seen by the extractor would make the one-class
  threshold too lenient; the shipped v0.1.0 extractor was trained before this rule).
* ``train_real/``: the camera and processed photos of ``train.csv``: the one-class
  density is fitted on them.
* ``test/real/<set>`` and ``test/ai/<family>``: what the shipped model never
  saw in training or model selection: camera photos of camera models absent
  from every ``ship_ok`` photo, the non-``ship_ok`` processed photos and face
  photos (the ``ship_ok`` faces are trained on); AI families absent from the
  ``ship_ok`` files.

    python benchmarks/shared_splits.py --out runs/splits   # a new (or empty) folder
"""

from __future__ import annotations

import argparse
import csv
import os
import random
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from aigdetect.binary_data import split_for_validation, usable_files
from aigdetect.labelled import AI, each_once, files_from_csv

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
CALIBRATION_SHARE = 0.2
#: ``aigdetect train --val-fraction``'s default, with which the shipped binary trained.
BINARY_VAL_FRACTION = 0.15


def camera(row: dict) -> str:
    return f"{row['Make'].strip().lower()}|{row['Model'].strip().lower()}"


def link_all(rows: list[dict], folder: Path) -> None:
    """Link every row's file into ``folder`` under its own name; two files of one name
    would leave one of them out, so that is refused."""
    folder.mkdir(parents=True, exist_ok=True)
    for row in rows:
        name = folder / Path(row["path"]).name
        target = SHARED / row["path"]
        if not name.is_symlink():
            os.symlink(target, name)
        elif os.readlink(name) != str(target):
            raise SystemExit(f"{name} would link two files: {os.readlink(name)} and {target}")


def source(row: dict) -> str:
    return row["source_repo"]


def held_out(rows: list[dict], key: Callable[[dict], str], share: float,
             seed: int) -> set[str]:
    """Whole groups (camera models, source repositories: ``key``) adding up to at most
    ``share`` of the rows, drawn in a seeded order."""
    sizes: dict[str, int] = defaultdict(int)
    for row in rows:
        sizes[key(row)] += 1
    names = sorted(sizes)
    random.Random(seed).shuffle(names)
    held, count = set(), 0
    for name in names:
        if count + sizes[name] <= share * len(rows):
            held.add(name)
            count += sizes[name]
    return held


def link_binary_validation(train_csv: Path, folder: Path, seed: int) -> None:
    """The AI files the binary detector's training holds out (its own split function, on
    the same usable files)."""
    files, _ = usable_files(each_once(files_from_csv(train_csv)))
    _, held_out = split_for_validation(files, BINARY_VAL_FRACTION, seed)
    folder.mkdir(parents=True, exist_ok=True)
    for file in held_out:
        if file.label == AI and not (folder / Path(file.path).name).is_symlink():
            os.symlink(file.path, folder / Path(file.path).name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/splits"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):  # links of two splits would mix
        raise SystemExit(f"{args.out} is not empty: give a new --out (or remove it first)")
    with open(SHARED / "manifest.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    ship = [r for r in rows if r["ship_ok"] == "yes"]
    photos = [r for r in ship if r["path"].startswith("photos/")]
    processed = [r for r in ship if r["path"].startswith("processed/")]
    faces = [r for r in ship if r["path"].startswith("faces/real/")]
    ai = [r for r in ship if r["kind"] == "ai"]

    calibration_cameras = held_out(photos, camera, CALIBRATION_SHARE, args.seed)
    calibration_photos = [r for r in photos if camera(r) in calibration_cameras]
    calibration_sources = held_out(processed, source, CALIBRATION_SHARE, args.seed)
    calibration_processed = [r for r in processed if source(r) in calibration_sources]
    held = {r["path"] for r in calibration_photos + calibration_processed}

    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "train.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group"])
        for row in photos + processed:
            if row["path"] not in held:
                group = "camera" if row in photos else "processed"
                writer.writerow([SHARED / row["path"], "real", group])
        for row in faces:
            writer.writerow([SHARED / row["path"], "real", "faces"])
        for row in ai:
            writer.writerow([SHARED / row["path"], "ai", row["family"]])
    link_binary_validation(args.out / "train.csv", args.out / "fusion" / "ai", args.seed)
    link_all(calibration_photos, args.out / "calibration" / "photos")
    link_all(calibration_processed, args.out / "calibration" / "processed")
    link_all([r for r in photos if r["path"] not in held], args.out / "pretext_photos")
    link_all([r for r in photos + processed if r["path"] not in held], args.out / "train_real")

    shipped_cameras = {camera(r) for r in photos}
    shipped_families = {r["family"] for r in ai}
    not_shipped = [r for r in rows if r["ship_ok"] != "yes"]
    link_all([r for r in not_shipped if r["path"].startswith("photos/")
              and camera(r) not in shipped_cameras], args.out / "test/real/unseen-cameras")
    link_all([r for r in not_shipped if r["path"].startswith("processed/")],
             args.out / "test/real/processed")
    link_all([r for r in not_shipped if r["path"].startswith("faces/real/")],
             args.out / "test/real/faces")
    for family in sorted({r["family"] for r in rows if r["kind"] == "ai"} - shipped_families):
        link_all([r for r in rows if r["family"] == family], args.out / "test/ai" / family)
    for folder in sorted(args.out.rglob("*")):
        if folder.is_dir() and not any(p.is_dir() for p in folder.iterdir()):
            print(f"{sum(1 for _ in folder.iterdir()):5d}  {folder}")


if __name__ == "__main__":
    main()
