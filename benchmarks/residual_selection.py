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

Prints the mean AUC per processing (AI positive) over the 3 x 3 folds; about
15 minutes on 2 CPU cores, 5 without the pretrained features (the inputs are
computed once, then every fold is a logistic regression).
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
    return files


def real_folds(sources: list[str], count: int) -> list[set[str]]:
    """Real repositories dealt into ``count`` folds of about equal size, largest first."""
    sizes: dict[str, int] = defaultdict(int)
    for source in sources:
        if source.startswith("real:"):
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
                   regularisation: float, inputs: ResidualInputs) -> dict[str, float]:
    """Mean AUC per processing over every (AI family, real fold) pair held out."""
    aucs: dict[str, list[float]] = defaultdict(list)
    families = sorted({s for s in sources if s.startswith("ai:")})
    folds = real_folds(list(sources), REAL_FOLDS)
    for family in families:
        for fold in folds:
            held = (sources == family) | np.isin(sources, list(fold))
            train = ~held
            # real photos weigh as one group, AI images by family
            groups = np.where(labels[train] == REAL, "real", sources[train])
            x = features["train"][train].reshape(-1, features["train"].shape[-1])
            y = np.repeat(labels[train], CONFIG.variants)
            g = np.repeat(groups, CONFIG.variants)
            model = ResidualClassifier(regularisation, inputs).fit(
                x, y, group_weights(y, g))
            for name in PROCESSINGS:
                scores = model.decision_function(features[name][held])
                aucs[name].append(roc_auc_score(labels[held], scores))
    result = {name: round(float(np.mean(values)), 3) for name, values in aucs.items()}
    result["mean"] = round(float(np.mean(list(result.values()))), 3)
    return result


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
    with ProcessPoolExecutor(args.workers, initializer=one_torch_thread) as pool:
        computed = list(pool.map(partial(processed_inputs, config=config),
                                 [f.path for f in files], chunksize=4))
    readable = [f for f, c in zip(files, computed, strict=True) if c is not None]
    augmented, _, _, unreadable = training_features(readable, config)
    kept = [f for f in readable if f.path not in unreadable]
    by_path = dict(zip((f.path for f in files), computed, strict=True))
    features = {name: np.stack([by_path[f.path][name] for f in kept]) for name in PROCESSINGS}
    features["train"] = augmented.reshape(len(kept), config.variants, -1)
    labels = np.array([f.label for f in kept])
    sources = np.array([f.group for f in kept])
    results = {}
    for value in (float(v) for v in args.regularisation.split(",")):
        results[f"C={value:g}"] = cross_validate(features, labels, sources, value,
                                                 config.inputs)
        print(f"C={value:g}: {results[f'C={value:g}']}")
    if args.out:
        args.out.write_text(json.dumps({"files": len(kept), "inputs": dim,
                                        "read": asdict(config.inputs),
                                        "results": results}, indent=1))


if __name__ == "__main__":
    main()
