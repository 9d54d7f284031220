"""Model selection for the residual detector, on the shippable training data alone.

The detection benchmark (``detection.py``) must never choose anything, so
changes to :mod:`aigdetect.residuals` or to the classifier are judged here:
cross-validation on the ``ship_ok`` files of ``../shared/data`` where each fold
holds out **whole source repositories** of real photos (camera and processed)
and **one whole generator family** (sd-1.5-finetunes, sd-1.x, the small
families together), so it measures transfer to unseen sources and generators,
as the benchmark does, without touching its files. The model is fitted as
``aigdetect fit-residual`` fits it (its own training statistics: the same
augmentation and variants; square-root group weights) and scored under three
processings of the held-out images: ``matched`` and ``web`` (as in the
benchmark) and ``small-web`` (a 256 px centre crop enlarged for the web: small
AI images are often upscaled).

    python benchmarks/residual_selection.py --regularisation 0.03,0.1
    python benchmarks/residual_selection.py --coding-costs   # fit-residual --coding-costs
    python benchmarks/residual_selection.py --no-pretrained-features   # statistics alone
    python benchmarks/residual_selection.py --recompress-quality 0   # tiles as decoded

The ``ship_ok`` real face photos are dealt into three folds of whole repositories
too, held out beside the real photos' folds: ``faces`` is the AUC of the held-out AI
images against the held-out faces and ``faces-fpr`` the share of those faces above
the score 95 % of the held-out camera and processed photos stay under (so whether a
real portrait reads as AI: no AI face is ``ship_ok``). They are never trained on
unless ``--train-faces`` (then the other folds' faces are, on the real side, as
``fit-residual`` trains on the ``faces`` group of ``benchmarks/shared_splits.py``).

    python benchmarks/residual_selection.py --train-faces --cache runs/select/inputs.npz

Prints the mean AUC per processing (AI positive) over the 3 x 3 folds and their
mean, then the faces' two measures; about 10 minutes on 2 CPU cores, 5 without the
pretrained features (the inputs are computed once, then every fold is a logistic
regression; with ``--cache`` a rerun on the same inputs takes seconds).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from aigdetect.labelled import AI, REAL, LabelledFile
from aigdetect.patches import CONDITIONS, Processing, apply_processing, grid_tiles, load_image
from aigdetect.residual_model import (
    ResidualClassifier,
    ResidualFitConfig,
    ResidualInputs,
    group_weights,
    one_torch_thread,
    training_features,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BIG_FAMILIES = ("sd-1.5-finetunes", "sd-1.x")
REAL_FOLDS = 3
CONFIG = ResidualFitConfig()


def shippable_files(manifest: Path) -> list[LabelledFile]:
    """Real camera and processed photos grouped by repository, AI images by family
    (the small families merged)."""
    files = []
    with open(manifest, newline="") as handle:
        for row in csv.DictReader(handle):
            if row["ship_ok"] != "yes":
                continue
            path = str(manifest.parent / row["path"])
            if row["kind"] == "ai":
                family = row["family"] if row["family"] in BIG_FAMILIES else "small families"
                files.append(LabelledFile(path, AI, f"ai:{family}"))
            elif row["path"].startswith(("photos/", "processed/")):
                files.append(LabelledFile(path, REAL, f"real:{row['source_repo']}"))
            elif row["path"].startswith("faces/real/"):
                files.append(LabelledFile(path, REAL, f"face:{row['source_repo']}"))
    return files


def real_folds(sources: list[str], count: int, kind: str = "real") -> list[set[str]]:
    """Repositories of one kind of real image (``real``: camera and processed photos,
    ``face``: face photos) dealt into ``count`` folds of about equal size, largest
    first."""
    sizes: dict[str, int] = defaultdict(int)
    for source in sources:
        if source.startswith(f"{kind}:"):
            sizes[source] += 1
    folds: list[set[str]] = [set() for _ in range(count)]
    loads = [0] * count
    for source in sorted(sizes, key=lambda s: (-sizes[s], s)):
        emptiest = loads.index(min(loads))
        folds[emptiest].add(source)
        loads[emptiest] += sizes[source]
    return folds


PROCESSINGS = {
    "matched": [CONDITIONS["matched"]],
    "web": [CONDITIONS["web"]],
    "small-web": [Processing(crop=256), CONDITIONS["web"]],
}


def processed_inputs(path: str, config: ResidualFitConfig) -> dict[str, np.ndarray] | None:
    """The residual classifier's inputs for the file under each processing; None when
    it cannot be read."""
    try:
        pixels = load_image(path).pixels
    except Exception:  # a bad file is left out of the selection, not fatal
        return None
    out = {}
    for name, steps in PROCESSINGS.items():
        processed = pixels
        for step in steps:
            processed = apply_processing(processed, step)
        out[name] = config.inputs(grid_tiles(processed, config.patch_size, config.tiles))
    return out


def cross_validate(features: dict[str, np.ndarray], labels: np.ndarray, sources: np.ndarray,
                   regularisation: float, inputs: ResidualInputs,
                   train_faces: bool = False) -> dict[str, float]:
    """Mean AUC per processing over every (AI family, real fold) pair held out, the AI
    images against the held-out camera and processed photos; then how the held-out
    face photos read (matched): ``faces``, the AUC of the held-out AI images against
    them, and ``faces-fpr``, the share of them above the score that 95 % of the held-out
    camera and processed photos stay under. No AI face is ``ship_ok``, so this says
    whether a face reads as AI, not whether AI faces are caught. ``train_faces``: the
    other folds' face photos are trained on, on the real side (a group of their own)."""
    aucs: dict[str, list[float]] = defaultdict(list)
    families = sorted({s for s in sources if s.startswith("ai:")})
    is_face = np.array([s.startswith("face:") for s in sources])
    folds = list(zip(real_folds(list(sources), REAL_FOLDS),
                     real_folds(list(sources), REAL_FOLDS, "face"), strict=True))
    for family in families:
        for photo_fold, face_fold in folds:
            held_ai = sources == family
            held_photos = np.isin(sources, list(photo_fold))
            held_faces = np.isin(sources, list(face_fold))
            train = ~(held_ai | held_photos | (held_faces if train_faces else is_face))
            # real photos weigh as one group, faces as another, AI images by family
            kinds = np.where(is_face[train], "faces", "real")
            groups = np.where(labels[train] == REAL, kinds, sources[train])
            x = features["train"][train].reshape(-1, features["train"].shape[-1])
            y = np.repeat(labels[train], CONFIG.variants)
            g = np.repeat(groups, CONFIG.variants)
            model = ResidualClassifier(regularisation, inputs).fit(
                x, y, group_weights(y, g))
            scored = held_ai | held_photos
            for name in PROCESSINGS:
                scores = model.decision_function(features[name][scored])
                aucs[name].append(roc_auc_score(labels[scored], scores))
            if not held_faces.any():  # a selection without face photos
                continue
            ai, photos, faces = (model.decision_function(features["matched"][held])
                                 for held in (held_ai, held_photos, held_faces))
            aucs["faces"].append(roc_auc_score(
                np.r_[np.zeros(len(faces)), np.ones(len(ai))], np.r_[faces, ai]))
            aucs["faces-fpr"].append(float(np.mean(faces > np.quantile(photos, 0.95))))
    result = {name: round(float(np.mean(values)), 3) for name, values in aucs.items()}
    result["mean"] = round(float(np.mean([result[name] for name in PROCESSINGS])), 3)
    return result


def computed_inputs(files: list[LabelledFile], config: ResidualFitConfig,
                    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The classifier's inputs of every readable file: its augmented training copies
    (``train``) and each processing's, with the files' labels and sources."""
    with ProcessPoolExecutor(config.workers, initializer=one_torch_thread) as pool:
        computed = list(pool.map(partial(processed_inputs, config=config),
                                 [f.path for f in files], chunksize=4))
    readable = [f for f, c in zip(files, computed, strict=True) if c is not None]
    augmented, _, _, unreadable = training_features(readable, config)
    kept = [f for f in readable if f.path not in unreadable]
    by_path = dict(zip((f.path for f in files), computed, strict=True))
    features = {name: np.stack([by_path[f.path][name] for f in kept]) for name in PROCESSINGS}
    features["train"] = augmented.reshape(len(kept), config.variants, -1)
    return features, np.array([f.label for f in kept]), np.array([f.group for f in kept])


def cached_inputs(files: list[LabelledFile], config: ResidualFitConfig, cache: Path | None,
                  ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """:func:`computed_inputs`, read from ``cache`` when it holds this very computation
    (same files, same inputs; our own file of plain arrays) and written there if not."""
    settings = asdict(replace(config, workers=0))  # the workers change nothing computed
    key = json.dumps({"files": [f.path for f in files], "config": settings}, sort_keys=True)
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as stored:
            if str(stored["key"]) == key:
                features = {name: stored[name] for name in (*PROCESSINGS, "train")}
                return features, stored["labels"], stored["sources"]
        print(f"{cache} holds another computation: computing again", file=sys.stderr)
    features, labels, sources = computed_inputs(files, config)
    if cache is not None:
        np.savez(cache, key=np.array(key), labels=labels, sources=sources, **features)
    return features, labels, sources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", type=Path, default=SHARED / "manifest.csv")
    parser.add_argument("--regularisation", default=str(CONFIG.regularisation),
                        help="comma-separated values of C to compare")
    parser.add_argument("--recompress-quality", type=int, default=CONFIG.recompress_quality,
                        help="as 'fit-residual --recompress-quality' (0: tiles as decoded)")
    parser.add_argument("--coding-costs", action="store_true",
                        help="add the coding costs, as 'fit-residual --coding-costs' does")
    parser.add_argument("--pretrained-features", action=argparse.BooleanOptionalAction,
                        default=CONFIG.pretrained_features,
                        help="read the pretrained backbone's features, as "
                        "'fit-residual --pretrained-features' (the default) does")
    parser.add_argument("--tiles", type=int, default=CONFIG.tiles,
                        help="64 px tiles per image, in training and scoring alike")
    parser.add_argument("--train-faces", action="store_true",
                        help="train on the other folds' ship_ok face photos, on the real side "
                        "(as 'fit-residual' does with a faces group in its CSV)")
    parser.add_argument("--cache", type=Path,
                        help="keep the computed inputs in this .npz and reuse them when the "
                        "files and inputs are the same (a rerun with other C takes a minute)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    if not args.manifest.is_file():
        raise SystemExit(f"{args.manifest} not found: this selection needs ../shared/data")
    files = shippable_files(args.manifest)
    config = replace(CONFIG, workers=args.workers, coding_costs=args.coding_costs,
                     recompress_quality=args.recompress_quality or None, tiles=args.tiles,
                     pretrained_features=args.pretrained_features)
    dim = config.inputs.dim(config.patch_size)
    print(f"{len(files)} files, {dim} inputs each",
          file=sys.stderr)
    features, labels, sources = cached_inputs(files, config, args.cache)
    results = {}
    for value in (float(v) for v in args.regularisation.split(",")):
        results[f"C={value:g}"] = cross_validate(features, labels, sources, value,
                                                 config.inputs, args.train_faces)
        print(f"C={value:g}: {results[f'C={value:g}']}")
    if args.out:
        args.out.write_text(json.dumps({"files": len(labels), "inputs": dim,
                                        "train_faces": args.train_faces,
                                        "read": asdict(config.inputs),
                                        "results": results}, indent=1))


if __name__ == "__main__":
    main()
