"""Face benchmark: the face mode beside the general detector, on faces neither saw.

Built on ``aigdetect scan --faces`` and ``aigdetect evaluate`` through the real CLI.
AI is the positive class. Sets, from ``../shared/data/manifest.csv``:

* AI: ``faces/ai`` (StyleGAN-like faces; never ``ship_ok``, so never trained on);
* real: ``faces/real`` files that are not ``ship_ok`` (the shipped face model trained
  on the ``ship_ok`` ones), and the non-``ship_ok`` camera photos in which a face is
  found (their cameras' photos were never trained on).

First one ``scan --faces`` over every candidate file finds the faces (and measures
faces per second); only files with at least one face are kept, so the face mode
(each image = its most suspicious face) and the general detector (the whole image)
are measured on the same files, as-is and under matched processing (256 px centre
crop + JPEG q90: of each face crop in face mode, of the image otherwise).

    python benchmarks/faces.py --per-group 100 --out runs/benchmark/faces.json
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from detection import (
    SHARED,
    aigdetect,
    log,
    markdown,
    print_results,
    summarise,
    write_csv,
)


def candidates(manifest: Path, per_group: int | None, seed: int) -> list[tuple[str, str, str]]:
    """(path, label, group) of the files that may hold test faces, sampled per group."""
    groups: dict[tuple[str, str], list[str]] = {}
    with open(manifest, newline="") as handle:
        for row in csv.DictReader(handle):
            path, held_out = row["path"], row["ship_ok"] != "yes"
            if path.startswith("faces/ai/"):
                key = ("ai", "stylegan-like-faces")
            elif path.startswith("faces/real/") and held_out:
                key = ("real", "held-out-faces")
            elif path.startswith("photos/") and held_out:
                key = ("real", "faces-in-held-out-photos")
            else:
                continue
            groups.setdefault(key, []).append(str(manifest.parent / path))
    rows = []
    for (label, group), files in sorted(groups.items()):
        if per_group and len(files) > per_group:
            files = random.Random(seed).sample(sorted(files), per_group)
        rows += [(f, label, group) for f in sorted(files)]
    return rows


def find_faces(rows: list[tuple[str, str, str]], face_args: list[str],
               workers: int) -> tuple[set[str], dict]:
    """Files with at least one face, and the face scan's speed."""
    started = time.perf_counter()
    document = json.loads(aigdetect("scan", "--faces", *face_args, "-f", "json", "-q",
                                    "--workers", str(workers), *[r[0] for r in rows],
                                    results=(0, 1, 3, 4)))
    seconds = time.perf_counter() - started
    results = document["results"]
    faces = sum(len(r["faces"] or []) for r in results)
    with_faces = {r["path"] for r in results if r["faces"]}
    return with_faces, {"files": len(results), "faces": faces, "files_with_faces": len(with_faces),
                        "seconds": round(seconds, 1), "faces_per_second": round(faces / seconds, 2),
                        "images_per_second": round(len(results) / seconds, 2)}


def evaluate(csv_path: Path, condition: str, extra: list[str], workers: int) -> dict:
    document = json.loads(aigdetect("evaluate", "--csv", str(csv_path), "-f", "json", "-q",
                                    "--condition", condition, "--workers", str(workers),
                                    *extra))
    return summarise(document)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--face-model", help="face detector folder (default: shipped)")
    parser.add_argument("--model", help="general detector folder (default: shipped)")
    parser.add_argument("--per-group", type=int, default=100, help="files per group (0: all)")
    parser.add_argument("--conditions", default="asis,matched")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/benchmark/faces.json")
    parser.add_argument("--markdown", help="also write the tables as Markdown")
    args = parser.parse_args()

    face_args = ["--face-model", args.face_model] if args.face_model else []
    general_args = ["--model", args.model] if args.model else []
    out = Path(args.out)
    rows = candidates(SHARED / "manifest.csv", args.per_group or None, args.seed)
    log.print(f"finding faces in {len(rows)} files")
    with_faces, speed = find_faces(rows, face_args + general_args, args.workers)
    kept = [r for r in rows if r[0] in with_faces]
    counts = {group: sum(r[2] == group for r in kept) for group in sorted({r[2] for r in rows})}
    log.print(f"{speed['faces']} faces in {len(kept)} files ({counts}); "
              f"{speed['faces_per_second']} faces/s")
    csv_path = write_csv(kept, out.with_suffix(".csv"))
    modes = {"face mode": ["--faces", *face_args, *general_args],
             "general detector (whole image)": general_args}
    results: dict[str, dict] = {mode: {} for mode in modes}
    for condition in args.conditions.split(","):
        for mode, extra in modes.items():
            results[mode][condition] = evaluate(csv_path, condition, extra, args.workers)
            log.print(f"{mode} / {condition}: mean pair AUC "
                      f"{results[mode][condition]['mean_pair_auc']:.3f}")
    document = {"files_per_group": counts, "speed": speed, "results": results,
                "note": "each image is its most suspicious face in face mode"}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print_results("faces", results)
    if args.markdown:
        Path(args.markdown).write_text(markdown(results))


if __name__ == "__main__":
    main()
