"""Detection benchmark: generators and cameras the detector never saw, three conditions.

Built on ``aigdetect evaluate`` (run through the real CLI, one call per detector
and condition). AI is the positive class. Reports, per condition and detector:
the AUC of every (AI family x real set) pair and their mean, the false-positive
rate at the shipped threshold (verdict ``ai``) per real set, the true-positive rate
per AI family, and both again counting ``uncertain`` too (what would be looked at).

With ``--baseline FOLDER`` (``shipped``: the shipped weights) each detector is also
scored by that folder on the same images, and its table adds the paired difference
in mean pair AUC: the way to tell whether a change helped, since the separate
intervals of two detectors overlap for differences of a few hundredths.

Two modes:

* default: the shipped (or ``--model``) detector on ``runs/splits/test`` from
  ``benchmarks/shared_splits.py``: camera photos of camera models absent from the
  training photos, processed web photos, real faces; the AI families absent from
  the ``ship_ok`` training files (``latent-diffusion``, ``disco-diffusion``,
  ``stylegan-like-faces``). About 15 minutes on 2 CPU cores with ``--per-group 100``.
* ``--logo FAMILY,...``: leave-one-generator-out retraining: for each listed
  family, train the supervised detectors (``--logo-train``: the binary detector,
  ``--train-minutes`` each, and/or the residual detector, about a minute) on
  every other family, calibrate on the held-out calibration photos and score that
  family alone. The binary detector is slow on a CPU: pick a few folds; the
  residual detector alone runs every fold in about 25 minutes.

    python benchmarks/shared_splits.py --out runs/splits
    python benchmarks/detection.py --per-group 100 --out runs/benchmark/shipped.json
    python benchmarks/detection.py --model runs/new --baseline shipped --detectors residual
    python benchmarks/detection.py --logo sd-1.5-finetunes --train-minutes 15
    python benchmarks/detection.py --logo all --logo-train residual --detectors residual,fused
    python benchmarks/detection.py --logo all --logo-train residual --residual-args=--coding-costs
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table
from shared_splits import link_binary_validation

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CONDITIONS = ("asis", "matched", "web")
DETECTORS = ("fused", "binary", "residual", "oneclass")
#: Families too small to score alone are merged into one fold.
SMALL_FAMILY = 30
console = Console()
log = Console(stderr=True)


def aigdetect(*args: str, results: tuple[int, ...] = (0,)) -> str:
    """Run the real CLI; its stdout (results only) is returned. ``results``: the exit
    codes that report results rather than failure (train, fit-residual, calibrate and
    evaluate succeed with 0; scan also says 1, 3 or 4 when it flagged or could not read
    some files)."""
    done = subprocess.run([sys.executable, "-m", "aigdetect", *args], capture_output=True,
                          text=True)
    if done.returncode not in results:
        raise SystemExit(f"aigdetect {' '.join(args[:2])} failed ({done.returncode}):\n"
                         f"{done.stderr[-2000:]}")
    return done.stdout


def test_sets(root: Path, per_group: int | None, seed: int) -> list[tuple[str, str, str]]:
    """(path, label, group) of every image under ``root/real/*`` and ``root/ai/*``,
    at most ``per_group`` per group (a seeded sample)."""
    rows = []
    for label in ("real", "ai"):
        for group in sorted(p for p in (root / label).iterdir() if p.is_dir()):
            # absolute: evaluate reads a CSV's relative paths from the CSV's own folder
            files = sorted(os.path.abspath(f) for f in group.iterdir() if f.is_file())
            if per_group and len(files) > per_group:
                files = sorted(random.Random(seed).sample(files, per_group))
            rows += [(f, label, group.name) for f in files]
    return rows


def write_csv(rows: list[tuple[str, str, str]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "group"])
        writer.writerows(rows)
    return path


#: Rows of the rate tables: label, summary key. FPR and TPR count the verdict ``ai``
#: (above the threshold); "+unc." adds ``uncertain``, what an analyst is sent to look at.
RATE_ROWS = (("FPR", "fpr"), ("TPR", "tpr"), ("FPR+unc.", "review_fpr"),
             ("TPR+unc.", "review_tpr"))


def summarise(part: dict) -> dict:
    """The benchmark's view of one detector in an ``evaluate`` JSON document (or of one
    of its ``components``): its pairs, mean pair AUC with its bootstrap interval, and
    the rates per group."""
    def short(name: str) -> str:
        return name.split(":", 1)[-1]

    groups, mean = part["groups"], part["mean_pair_auc"]
    real = [g for g in groups if g["label"] == "real"]
    ai = [g for g in groups if g["label"] == "ai"]
    return {
        "pairs_auc": {f"{short(p['ai'])} vs {short(p['real'])}": p["auc"] for p in part["pairs"]},
        "mean_pair_auc": mean["value"] if mean else None,
        "mean_pair_auc_ci95": mean["ci95"] if mean else None,
        "fpr": {short(g["name"]): g["fpr"] for g in real},
        "tpr": {short(g["name"]): g["tpr"] for g in ai},
        "review_fpr": {short(g["name"]): g["review_fpr"] for g in real},
        "review_tpr": {short(g["name"]): g["review_tpr"] for g in ai},
        # the overall row counts each unreadable file once (every AI row also holds
        # all the real records, so summing the rows counted a real one many times)
        "errors": next(g["errors"] for g in groups if g["label"] == "all"),
    }


def evaluate(csv_path: Path, model: Path | None, detector: str, condition: str,
             workers: int, baseline: Path | None = None) -> dict[str, dict]:
    """One ``aigdetect evaluate`` run: the detector's summary, and each component's
    when it is a fusion (their scores are in the same records). With ``baseline`` the
    detector's summary adds its paired difference from that folder's same detector."""
    args = ["evaluate", "--csv", str(csv_path), "-f", "json", "-q", "--detector", detector,
            "--condition", condition, "--workers", str(workers)]
    if model is not None:
        args += ["--model", str(model)]
    if baseline is not None:
        args += ["--baseline", str(baseline)]
    document = json.loads(aigdetect(*args))
    summaries = {detector: summarise(document)}
    if document.get("baseline"):
        difference = document["baseline"]["difference"] or {}
        summaries[detector] |= {"baseline_difference": difference.get("value"),
                                "baseline_difference_ci95": difference.get("ci95")}
    for name, part in document.get("components", {}).items():
        summaries[name] = summarise(part)
    return summaries


def print_results(title: str, results: dict) -> None:
    """One table per detector: rows = pairs, FPR and TPR; columns = conditions."""
    for detector, by_condition in results.items():
        conditions = list(by_condition)
        table = Table(title=f"{title}: {detector} (AI = positive)", title_justify="left")
        table.add_column("measure")
        for condition in conditions:
            table.add_column(condition, justify="right")
        first = by_condition[conditions[0]]
        for key in first["pairs_auc"]:
            table.add_row(f"AUC {key}", *[_fmt(by_condition[c]["pairs_auc"][key])
                                          for c in conditions])
        table.add_row("mean pair AUC", *[_fmt(by_condition[c]["mean_pair_auc"])
                                         for c in conditions])
        table.add_row("  95 % bootstrap interval",
                      *[_fmt(by_condition[c]["mean_pair_auc_ci95"]) for c in conditions],
                      end_section=True)
        for name, values in baseline_rows(by_condition, conditions):
            table.add_row(name, *[_fmt(v, signed=True) for v in values],
                          end_section=name.startswith(" "))
        for name, key in RATE_ROWS:
            for group in first[key]:
                table.add_row(f"{name} {group}", *[_fmt(by_condition[c][key][group])
                                                   for c in conditions])
        console.print(table)


def markdown(results: dict) -> str:
    """The same tables as :func:`print_results`, as Markdown (for the model card)."""
    lines = []
    for detector, by_condition in results.items():
        conditions = list(by_condition)
        first = by_condition[conditions[0]]
        lines += [f"**{detector}**", "", f"| measure | {' | '.join(conditions)} |",
                  "|---" * (len(conditions) + 1) + "|"]
        rows = [(f"AUC {k}", [by_condition[c]["pairs_auc"][k] for c in conditions])
                for k in first["pairs_auc"]]
        rows.append(("**mean pair AUC**", [by_condition[c]["mean_pair_auc"] for c in conditions]))
        rows.append(("95 % bootstrap interval",
                     [by_condition[c]["mean_pair_auc_ci95"] for c in conditions]))
        differences = [(name.strip(), values)
                       for name, values in baseline_rows(by_condition, conditions)]
        rates = [(f"{name} {group}", [by_condition[c][key][group] for c in conditions])
                 for name, key in RATE_ROWS for group in first[key]]
        lines += [f"| {name} | {' | '.join(_fmt(v, signed) for v in values)} |"
                  for signed, part in ((False, rows), (True, differences), (False, rates))
                  for name, values in part]
        lines.append("")
    return "\n".join(lines)


def baseline_rows(by_condition: dict, conditions: list[str]) -> list[tuple[str, list]]:
    """The paired difference from ``--baseline`` and its interval, when measured."""
    if "baseline_difference" not in by_condition[conditions[0]]:
        return []
    return [("difference from the baseline",
             [by_condition[c]["baseline_difference"] for c in conditions]),
            ("  95 % paired bootstrap interval",
             [by_condition[c]["baseline_difference_ci95"] for c in conditions])]


def _fmt(value: float | list[float] | None, signed: bool = False) -> str:
    """A number, an interval (low to high) or "-"; ``signed`` for differences."""
    if value is None:
        return "-"
    number = "{:+.3f}" if signed else "{:.3f}"
    if isinstance(value, list):
        return f"{number.format(value[0])} to {number.format(value[1])}" if signed else \
            f"{value[0]:.3f}-{value[1]:.3f}"
    return number.format(value)


def run_matrix(csv_path: Path, model: Path | None, detectors: list[str],
               conditions: list[str], workers: int, baseline: Path | None = None) -> dict:
    """detector -> condition -> summary. A fused run also gives its components, which
    are then not run again (unless compared with a ``baseline``: each detector's
    difference comes from its own run)."""
    results: dict[str, dict] = {}
    for condition in conditions:
        for detector in detectors:
            if condition in results.get(detector, {}) and baseline is None:
                continue  # measured as a component of the fused run
            started = time.monotonic()
            summaries = evaluate(csv_path, model, detector, condition, workers, baseline)
            for name, summary in summaries.items():
                if name == detector or (name in detectors and baseline is None):
                    results.setdefault(name, {})[condition] = summary
            log.print(f"{detector} / {condition}: mean pair AUC "
                      f"{_fmt(summaries[detector]['mean_pair_auc'])} "
                      f"({time.monotonic() - started:.0f} s)")
    return {name: results[name] for name in detectors}


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def family_folds(manifest: Path) -> dict[str, str]:
    """Generator family -> fold name; families under SMALL_FAMILY images share a fold."""
    rows = [r for r in read_rows(manifest) if r["kind"] == "ai"]
    sizes: dict[str, int] = {}
    for row in rows:
        sizes[row["family"]] = sizes.get(row["family"], 0) + 1
    return {f: (f if n >= SMALL_FAMILY else "other-diffusion") for f, n in sizes.items()}


def run_logo(args: argparse.Namespace, real_rows: list[tuple[str, str, str]]) -> dict:
    """Leave-one-generator-out: retrain the supervised detectors without each listed fold."""
    folds = family_folds(SHARED / "manifest.csv")
    retrain = args.logo_train.split(",")
    manifest = read_rows(SHARED / "manifest.csv")
    with open(args.splits / "train.csv", newline="") as handle:
        train_real = [r for r in csv.reader(handle) if r[1] == "real"]
    shipped = args.model or ROOT / "weights"
    results = {}
    names = sorted(set(folds.values())) if args.logo == "all" else args.logo.split(",")
    for fold in names:
        folder = args.work / f"logo-{fold}"
        folder.mkdir(parents=True, exist_ok=True)
        train_ai = [[str(SHARED / r["path"]), "ai", folds[r["family"]]] for r in manifest
                    if r["kind"] == "ai" and folds[r["family"]] != fold]
        test_ai = [(str(SHARED / r["path"]), "ai", fold) for r in manifest
                   if r["kind"] == "ai" and folds[r["family"]] == fold]
        if not test_ai:
            raise SystemExit(f"--logo {fold}: no such fold; folds: {sorted(set(folds.values()))}")
        train_csv = write_csv([tuple(r) for r in train_real + train_ai], folder / "train.csv")
        for name in ("extractor.pt", "density.npz"):
            shutil.copy(shipped / name, folder / name)
        binary = []
        if "binary" in retrain:
            log.print(f"fold {fold}: training {args.train_minutes} min without it")
            aigdetect("train", "--binary", "--overwrite", "--csv", str(train_csv), "-o",
                      str(folder / "train.pt"), "--teacher", str(shipped / "extractor.pt"),
                      "--epochs", str(args.epochs), "--max-minutes", str(args.train_minutes),
                      "--workers", str(args.workers), *args.train_args.split())
            binary = ["--binary", str(folder / "train.best.pt")]
        if "residual" in retrain:
            aigdetect("fit-residual", str(folder), "--csv", str(train_csv), "--overwrite",
                      "--workers", str(max(args.workers, 1)), *args.residual_args.split())
        # fusion weights from the AI images both trainings held out (one split function),
        # as for the shipped model
        link_binary_validation(train_csv, folder / "fusion-ai", seed=0)
        aigdetect("calibrate", str(folder), *binary,
                  "--real", str(args.splits / "calibration/photos"),
                  "--real", str(args.splits / "calibration/processed"),
                  "--fake", str(folder / "fusion-ai"), "--fpr", str(args.fpr))
        sample = test_ai if not args.per_group or len(test_ai) <= args.per_group else sorted(
            random.Random(args.seed).sample(test_ai, args.per_group))
        fold_csv = write_csv(real_rows + sample, folder / "test.csv")
        results[fold] = run_matrix(fold_csv, folder, args.detectors, args.conditions,
                                   args.workers)
        print_results(f"leave-one-out fold {fold}", results[fold])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", type=Path, help="detector folder (default: shipped)")
    parser.add_argument("--baseline", type=Path, help="a second detector folder scored on the "
                        "same images: adds each detector's paired difference in mean pair "
                        "AUC (not with --logo)")
    parser.add_argument("--splits", type=Path, default=ROOT / "runs/splits",
                        help="output of benchmarks/shared_splits.py")
    parser.add_argument("--test-dir", type=Path, help="a folder with real/<set>/ and "
                        "ai/<family>/ (default: <splits>/test)")
    parser.add_argument("--per-group", type=int, default=100, help="images per group (0: all)")
    parser.add_argument("--detectors", default=",".join(DETECTORS),
                        help="comma-separated detectors to score")
    parser.add_argument("--conditions", default=",".join(CONDITIONS),
                        help="comma-separated processings applied to both classes")
    parser.add_argument("--workers", type=int, default=2, help="decoding workers of evaluate")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-group sample")
    parser.add_argument("--out", type=Path, default=ROOT / "runs/benchmark/detection.json",
                        help="results JSON; the labelled list of the images scored is "
                        "written beside it with the suffix .csv")
    parser.add_argument("--logo", help="comma-separated folds to retrain without, or 'all'")
    parser.add_argument("--logo-train", default="binary,residual",
                        help="supervised detectors retrained per fold: binary, residual")
    parser.add_argument("--train-minutes", type=float, default=15.0,
                        help="--logo: time budget of each fold's binary training")
    parser.add_argument("--epochs", type=int, default=4,
                        help="--logo: epochs of each fold's binary training")
    parser.add_argument("--residual-args", default="",
                        help="further options of 'aigdetect fit-residual' for the folds "
                        "(e.g. '--coding-costs')")
    parser.add_argument("--train-args", default="--patches 8 --lr 5e-4 --alpha 0.05",
                        help="further options of 'aigdetect train --binary' for the folds "
                        "(use the shipped model's)")
    parser.add_argument("--fpr", type=float, default=0.05,
                        help="--logo: false-positive rate each fold is calibrated at")
    parser.add_argument("--work", type=Path, default=ROOT / "runs/logo",
                        help="--logo: folder of each fold's training data and weights")
    parser.add_argument("--markdown", type=Path, help="also write the tables as Markdown")
    args = parser.parse_args()
    if args.per_group < 0:
        raise SystemExit(f"--per-group {args.per_group}: give a count, or 0 for every image")
    if args.out.suffix.lower() == ".csv":  # the image list goes to <out>.csv
        raise SystemExit(f"--out {args.out}: name the results JSON (e.g. results.json); "
                         "the list of images scored is written beside it as .csv")
    args.detectors = args.detectors.split(",")
    args.conditions = args.conditions.split(",")
    test_dir = args.test_dir or args.splits / "test"
    if not test_dir.is_dir():
        raise SystemExit(f"{test_dir} does not exist: run benchmarks/shared_splits.py first")
    rows = test_sets(test_dir, args.per_group or None, args.seed)
    started = time.monotonic()
    if args.logo and args.baseline:
        raise SystemExit("--baseline compares two fixed detector folders; --logo retrains "
                         "per fold: use one or the other")
    if args.logo:
        results = {"mode": "leave-one-generator-out",
                   "folds": run_logo(args, [r for r in rows if r[1] == "real"])}
    else:
        csv_path = write_csv(rows, args.out.with_suffix(".csv"))
        matrix = run_matrix(csv_path, args.model, args.detectors, args.conditions, args.workers,
                            args.baseline)
        print_results("unseen generators and cameras", matrix)
        results = {"mode": "shipped model, unseen sets", "results": matrix,
                   "baseline": str(args.baseline) if args.baseline else None}
    results |= {"per_group": args.per_group, "seconds": round(time.monotonic() - started),
                "groups": sorted({f"{label}:{group}" for _, label, group in rows})}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    if args.markdown:
        tables = results["folds"].values() if args.logo else [results["results"]]
        args.markdown.write_text("\n".join(markdown(t) for t in tables))
    log.print(f"wrote {args.out} ({results['seconds']} s)")


if __name__ == "__main__":
    main()
