"""Evaluation on labelled folders: AUC, average precision, accuracy, FPR and TPR.

AI-generated is the positive class throughout (the published code mixes the
two conventions; we do not). Each fake folder is measured against all real
images; each real folder reports its false-positive rate; "overall" pools all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from .labelled import LABEL_NAMES, LabelledFile
from .scanning import NO_FACE, ScanRecord

#: group labels as evaluation names them (labelled.REAL/AI are the 0/1 of training)
REAL_LABEL, AI_LABEL = LABEL_NAMES[0], LABEL_NAMES[1]


@dataclass
class LabelledSet:
    """A named group of files with one label (a folder, or a label of a CSV)."""

    name: str
    label: str
    paths: list[Path]


@dataclass
class GroupMetrics:
    name: str
    label: str  # "ai", "real" or "all"
    n_real: int
    n_ai: int
    errors: int
    auc: float | None
    average_precision: float | None
    accuracy: float | None
    fpr: float | None
    tpr: float | None
    #: share of the real (AI) images whose verdict is ``ai`` or ``uncertain``: what an
    #: analyst would be sent to look at
    review_fpr: float | None = None
    review_tpr: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def labelled_sets(files: Sequence[LabelledFile]) -> list[LabelledSet]:
    """Group labelled files by (label, group), in order of first appearance.

    Results and reports name a group by its name alone, so a name given to both
    real and AI files (a CSV's ``faces`` group for either kind) becomes two names,
    ``faces (real)`` and ``faces (ai)``: one would otherwise replace the other.
    """
    sets: dict[tuple[int, str], LabelledSet] = {}
    for file in files:
        key = (file.label, file.group)
        if key not in sets:
            sets[key] = LabelledSet(file.group, LABEL_NAMES[file.label], [])
        sets[key].paths.append(Path(file.path))
    names = Counter(labelled.name for labelled in sets.values())
    for labelled in sets.values():
        if names[labelled.name] > 1:
            labelled.name = f"{labelled.name} ({labelled.label})"
    return list(sets.values())


def _safe(metric, labels: np.ndarray, scores: np.ndarray) -> float | None:
    return float(metric(labels, scores)) if len(set(labels.tolist())) == 2 else None


def group_metrics(
    name: str, label: str, real: Sequence[ScanRecord], ai: Sequence[ScanRecord]
) -> GroupMetrics:
    """Metrics of AI records against real records (scored ones only; errors counted)."""
    real_ok = [r for r in real if r.raw_score is not None]
    ai_ok = [r for r in ai if r.raw_score is not None]
    errors = (len(real) - len(real_ok)) + (len(ai) - len(ai_ok))
    records = real_ok + ai_ok
    labels = np.array([0] * len(real_ok) + [1] * len(ai_ok))
    # rank by the raw statistic (continuous); the 0-1 score saturates far from the threshold
    suspicion = np.array([r.raw_score for r in records], dtype=np.float64)
    # flagged = called ``ai``, as the user reads it: records keep 4 decimals, so a score a
    # hair above its threshold would compare equal, and a damaged file is never called ai
    flagged = np.array([r.verdict == "ai" for r in records], dtype=bool)
    reviewed = np.array([r.verdict in ("ai", "uncertain") for r in records], dtype=bool)
    return GroupMetrics(
        name=name, label=label, n_real=len(real_ok), n_ai=len(ai_ok), errors=errors,
        auc=_safe(roc_auc_score, labels, suspicion),
        average_precision=_safe(average_precision_score, labels, suspicion),
        accuracy=float((flagged == labels.astype(bool)).mean()) if len(records) else None,
        fpr=float(flagged[labels == 0].mean()) if len(real_ok) else None,
        tpr=float(flagged[labels == 1].mean()) if len(ai_ok) else None,
        review_fpr=float(reviewed[labels == 0].mean()) if len(real_ok) else None,
        review_tpr=float(reviewed[labels == 1].mean()) if len(ai_ok) else None,
    )


def evaluate_groups(
    results: dict[str, tuple[str, list[ScanRecord]]],
) -> list[GroupMetrics]:
    """``results``: group name -> (label, records). One row per group, then overall."""
    real = [r for label, records in results.values() if label == REAL_LABEL for r in records]
    ai = [r for label, records in results.values() if label == AI_LABEL for r in records]
    rows = []
    for name, (label, records) in results.items():
        if label == AI_LABEL:  # scored against every real photo; its errors are its own
            row = group_metrics(name, AI_LABEL, real, records)
            rows.append(replace(row, errors=sum(r.raw_score is None for r in records)))
        else:
            rows.append(group_metrics(name, REAL_LABEL, records, []))
    rows.append(group_metrics("overall", "all", real, ai))
    return rows


def pair_metrics(
    results: dict[str, tuple[str, list[ScanRecord]]],
) -> list[dict[str, float | int | str | None]]:
    """AUC of every AI group against every real group, one at a time: which
    generator is caught, against which kind of real photo."""
    real_groups = [(n, recs) for n, (label, recs) in results.items() if label == REAL_LABEL]
    ai_groups = [(n, recs) for n, (label, recs) in results.items() if label == AI_LABEL]
    pairs = []
    for ai_name, ai_records in ai_groups:
        for real_name, real_records in real_groups:
            row = group_metrics(ai_name, AI_LABEL, real_records, ai_records)
            pairs.append({"ai": ai_name, "real": real_name, "n_ai": row.n_ai,
                          "n_real": row.n_real, "auc": row.auc,
                          "average_precision": row.average_precision})
    return pairs


#: Bootstrap resamples behind :func:`mean_pair_auc`'s interval.
BOOTSTRAP_RESAMPLES = 1000


def mean_pair_auc(results: dict[str, tuple[str, list[ScanRecord]]],
                  resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict | None:
    """The mean AUC over every (AI group, real group) pair, with a 95 % bootstrap
    interval (each group's images resampled with replacement, alike for every pair
    they enter). With a hundred images a group, two detectors a few hundredths apart
    are within it: the interval says which differences the data can tell."""
    real = _scored_groups(results, REAL_LABEL)
    ai = _scored_groups(results, AI_LABEL)
    if not real or not ai:
        return None
    rng = np.random.default_rng(seed)
    draws = [_mean_auc([rng.choice(a, len(a)) for a in ai], [rng.choice(r, len(r)) for r in real])
             for _ in range(resamples)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return {"value": _mean_auc(ai, real), "ci95": [float(low), float(high)],
            "pairs": len(ai) * len(real), "resamples": resamples}


def paired_difference(results: dict[str, tuple[str, list[ScanRecord]]],
                      baseline: dict[str, tuple[str, list[ScanRecord]]],
                      resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict | None:
    """Mean pair AUC of ``results`` minus that of ``baseline``, the same files scored
    by two detectors, with a 95 % *paired* bootstrap interval: each resample draws the
    same files for both, so what the two share (which images are hard) cancels out.
    Two detectors whose separate intervals overlap can still differ by a paired
    interval that excludes zero. Only files both scored count."""
    real, baseline_real = _paired_scores(results, baseline, REAL_LABEL)
    ai, baseline_ai = _paired_scores(results, baseline, AI_LABEL)
    if not real or not ai:
        return None

    def difference(real_rows: list[np.ndarray], ai_rows: list[np.ndarray]) -> float:
        def mean(real_groups: list[np.ndarray], ai_groups: list[np.ndarray]) -> float:
            return _mean_auc([g[rows] for g, rows in zip(ai_groups, ai_rows, strict=True)],
                             [g[rows] for g, rows in zip(real_groups, real_rows, strict=True)])
        return mean(real, ai) - mean(baseline_real, baseline_ai)

    rng = np.random.default_rng(seed)
    draws = [difference([rng.choice(len(g), len(g)) for g in real],
                        [rng.choice(len(g), len(g)) for g in ai]) for _ in range(resamples)]
    low, high = np.percentile(draws, [2.5, 97.5])
    value = difference([np.arange(len(g)) for g in real], [np.arange(len(g)) for g in ai])
    return {"value": value, "ci95": [float(low), float(high)],
            "images": sum(map(len, real + ai)), "resamples": resamples}


def _paired_scores(results: dict[str, tuple[str, list[ScanRecord]]],
                   baseline: dict[str, tuple[str, list[ScanRecord]]],
                   label: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per ``label`` group, the raw scores of the files both detectors scored, in the
    same order for both (empty groups left out)."""
    first, second = [], []
    for name, (group_label, records) in results.items():
        if group_label != label or name not in baseline:
            continue
        other = {r.path: r.raw_score for r in baseline[name][1] if r.raw_score is not None}
        both = [(r.raw_score, other[r.path]) for r in records
                if r.raw_score is not None and r.path in other]
        if both:
            first.append(np.array([a for a, _ in both], np.float64))
            second.append(np.array([b for _, b in both], np.float64))
    return first, second


def rank_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """The AUC as the Mann-Whitney statistic: the share of (positive, negative) pairs
    ranked the right way, ties counted half (what ``roc_auc_score`` gives)."""
    ordered = np.sort(negative)
    below = np.searchsorted(ordered, positive, side="left")
    not_above = np.searchsorted(ordered, positive, side="right")
    return float((below + not_above).sum() / (2 * len(positive) * len(negative)))


def _mean_auc(ai: list[np.ndarray], real: list[np.ndarray]) -> float:
    return float(np.mean([rank_auc(a, r) for a in ai for r in real]))


def _scored_groups(results: dict[str, tuple[str, list[ScanRecord]]],
                   label: str) -> list[np.ndarray]:
    """Each ``label`` group's raw scores (scored records only; empty groups left out)."""
    groups = [np.array([r.raw_score for r in records if r.raw_score is not None], np.float64)
              for group_label, records in results.values() if group_label == label]
    return [g for g in groups if len(g)]


def summarise(results: dict[str, tuple[str, list[ScanRecord]]], judge: str,
              faces: bool = False) -> dict[str, Any]:
    """What ``evaluate`` reports beside the per-group table: the AUC of every (AI group,
    real group) pair and their mean, the same for each component of a fused detector
    (``judge`` is the deciding detector's name), and with ``faces`` how many images of
    each group held no face."""
    components = [] if faces else sorted(
        {name for _, records in results.values() for r in records for name in r.components}
        - {judge})
    return {
        "no_face": {group: sum(r.verdict == NO_FACE for r in records)
                    for group, (_, records) in results.items()} if faces else None,
        "pairs": pair_metrics(results), "mean_pair_auc": mean_pair_auc(results),
        "components": {name: {"groups": [g.to_dict() for g in evaluate_groups(view)],
                              "pairs": pair_metrics(view),
                              "mean_pair_auc": mean_pair_auc(view)}
                       for name in components for view in [component_results(results, name)]},
    }


def baseline_comparison(results: dict[str, tuple[str, list[ScanRecord]]],
                        baseline: dict[str, tuple[str, list[ScanRecord]]],
                        detector: str, model: dict[str, str]) -> dict[str, Any]:
    """The baseline detector's mean pair AUC on the same files and the paired
    difference of the evaluated one from it."""
    return {"detector": detector, "model": model, "mean_pair_auc": mean_pair_auc(baseline),
            "difference": paired_difference(results, baseline)}


def component_results(
    results: dict[str, tuple[str, list[ScanRecord]]], name: str,
) -> dict[str, tuple[str, list[ScanRecord]]]:
    """The same results as one component of a fused detector scored them: each
    record's raw score, threshold and verdict replaced by that component's."""
    def view(record: ScanRecord) -> ScanRecord:
        opinion = record.components.get(name)
        if opinion is None:
            return replace(record, raw_score=None, threshold=None, verdict="error")
        return replace(record, raw_score=opinion["raw_score"], threshold=opinion["threshold"],
                       verdict=opinion["verdict"])

    return {group: (label, [view(r) for r in records])
            for group, (label, records) in results.items()}


def plot_format_known(output: Path) -> bool:
    """Whether matplotlib writes images of ``output``'s suffix (none: PNG)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # optional dependency

    return (output.suffix.lstrip(".").lower() or "png") in FigureCanvasAgg.get_supported_filetypes()


def plot_roc(results: dict[str, tuple[str, list[ScanRecord]]], output: Path) -> None:
    """ROC curve of each AI group against all real images, and overall, to an image file."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'aigdetect[plot]'") from None
    real = [r.raw_score for label, recs in results.values() if label == REAL_LABEL
            for r in recs if r.raw_score is not None]
    curves = {name: [r.raw_score for r in recs if r.raw_score is not None]
              for name, (label, recs) in results.items() if label == AI_LABEL}
    curves["overall"] = [v for values in curves.values() for v in values]
    figure, axes = plt.subplots(figsize=(5, 5))
    for name, ai in curves.items():
        if not ai or not real:
            continue
        labels = np.array([0] * len(real) + [1] * len(ai))
        scores = np.array(real + ai, dtype=np.float64)
        fpr, tpr, _ = roc_curve(labels, scores)
        auc = roc_auc_score(labels, scores)
        axes.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})",
                  linewidth=2.5 if name == "overall" else 1.2)
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="false-positive rate (real flagged)", ylabel="true-positive rate (AI caught)",
             title="aigdetect ROC (AI = positive)", xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    if not plot_format_known(Path(output)):
        plt.close(figure)
        raise ValueError(f"unknown image format {Path(output).suffix!r}")
    # a new file only, created here: never through a link made while scoring ran
    with open(output, "xb") as handle:
        figure.savefig(handle, format=Path(output).suffix.lstrip(".").lower() or "png",
                       dpi=120)
    plt.close(figure)
