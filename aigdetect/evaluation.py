"""Evaluation on labelled folders: AUC, average precision, accuracy, FPR and TPR.

AI-generated is the positive class throughout (the published code mixes the
two conventions; we do not). Each fake folder is measured against all real
images; each real folder reports its false-positive rate; "overall" pools all.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from .scanning import ScanRecord

REAL, AI = "real", "ai"


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

    def to_dict(self) -> dict:
        return asdict(self)


def read_label_csv(path: Path) -> list[LabelledSet]:
    """``path,label`` rows (label ``real``/``ai``, or 0/1 with 1 = AI); header optional."""
    groups: dict[str, list[Path]] = {REAL: [], AI: []}
    with open(path, newline="") as handle:
        for number, row in enumerate(csv.reader(handle), 1):
            if not row or row[0].strip().lower() == "path":
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{number}: expected 'path,label'")
            label = row[1].strip().lower()
            label = {"0": REAL, "1": AI, "fake": AI, "generated": AI}.get(label, label)
            if label not in groups:
                raise ValueError(f"{path}:{number}: label {row[1]!r} is neither real nor ai")
            file = Path(row[0].strip())
            groups[label].append(file if file.is_absolute() else path.parent / file)
    return [LabelledSet(f"{path.name}:{label}", label, files)
            for label, files in groups.items() if files]


def _safe(metric, labels: np.ndarray, scores: np.ndarray) -> float | None:
    return float(metric(labels, scores)) if len(set(labels.tolist())) == 2 else None


def group_metrics(
    name: str, label: str, real: Sequence[ScanRecord], ai: Sequence[ScanRecord]
) -> GroupMetrics:
    """Metrics of AI records against real records (scored ones only; errors counted)."""
    real_ok = [r for r in real if r.log_likelihood is not None]
    ai_ok = [r for r in ai if r.log_likelihood is not None]
    errors = (len(real) - len(real_ok)) + (len(ai) - len(ai_ok))
    records = real_ok + ai_ok
    labels = np.array([0] * len(real_ok) + [1] * len(ai_ok))
    # rank by log-likelihood (continuous); the 0-1 score saturates far from the threshold
    suspicion = -np.array([r.log_likelihood for r in records], dtype=np.float64)
    flagged = np.array([r.log_likelihood < r.threshold for r in records], dtype=bool)
    return GroupMetrics(
        name=name, label=label, n_real=len(real_ok), n_ai=len(ai_ok), errors=errors,
        auc=_safe(roc_auc_score, labels, suspicion),
        average_precision=_safe(average_precision_score, labels, suspicion),
        accuracy=float((flagged == labels.astype(bool)).mean()) if len(records) else None,
        fpr=float(flagged[labels == 0].mean()) if len(real_ok) else None,
        tpr=float(flagged[labels == 1].mean()) if len(ai_ok) else None,
    )


def evaluate_groups(
    results: dict[str, tuple[str, list[ScanRecord]]],
) -> list[GroupMetrics]:
    """``results``: group name -> (label, records). One row per group, then overall."""
    real = [r for label, records in results.values() if label == REAL for r in records]
    ai = [r for label, records in results.values() if label == AI for r in records]
    rows = []
    for name, (label, records) in results.items():
        if label == AI:
            rows.append(group_metrics(name, AI, real, records))
        else:
            rows.append(group_metrics(name, REAL, records, []))
    rows.append(group_metrics("overall", "all", real, ai))
    return rows


def plot_roc(results: dict[str, tuple[str, list[ScanRecord]]], output: Path) -> None:
    """ROC curve of each AI group against all real images, and overall, to an image file."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install 'aigdetect[plot]'") from None
    real = [r.log_likelihood for label, recs in results.values() if label == REAL
            for r in recs if r.log_likelihood is not None]
    curves = {name: [r.log_likelihood for r in recs if r.log_likelihood is not None]
              for name, (label, recs) in results.items() if label == AI}
    curves["overall"] = [v for values in curves.values() for v in values]
    figure, axes = plt.subplots(figsize=(5, 5))
    for name, ai in curves.items():
        if not ai or not real:
            continue
        labels = np.array([0] * len(real) + [1] * len(ai))
        scores = -np.array(real + ai, dtype=np.float64)
        fpr, tpr, _ = roc_curve(labels, scores)
        auc = roc_auc_score(labels, scores)
        axes.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})",
                  linewidth=2.5 if name == "overall" else 1.2)
    axes.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axes.set(xlabel="false-positive rate (real flagged)", ylabel="true-positive rate (AI caught)",
             title="aigdetect ROC (AI = positive)", xlim=(0, 1), ylim=(0, 1.01))
    axes.legend(loc="lower right", fontsize=8)
    figure.tight_layout()
    figure.savefig(output, dpi=120)
    plt.close(figure)
