"""Training losses: pairwise ranking for ordinal tags, cross-entropy for categorical ones
(the pretext), and feature distillation to a frozen teacher (the binary detector).

Ordinal tags (ISO, exposure time...) are ranked rather than regressed: the
network only has to tell which of two photos was shot at the higher value,
which is invariant to units and to the heavy tails of these tags. A Thurstone
model turns two scalar scores into a probability, P(i ranks above j) =
Phi(s_i - s_j), the standard normal CDF of the score difference.

Unknown labels are NaN (ordinal) or -1 (categorical) and are masked out: a
pair counts only when both of its values are known.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

RankingLoss = Literal["fidelity", "bce"]

_EPS = 1e-6


def _pairs(scores: torch.Tensor, targets: torch.Tensor):
    """All pairs i < j with both targets known: Thurstone probability and the
    target probability g (1 if x_i > x_j, 0 if less, 0.5 if tied)."""
    known = ~torch.isnan(targets)
    scores, targets = scores[known].float(), targets[known].float()
    i, j = torch.triu_indices(len(scores), len(scores), offset=1, device=scores.device)
    probability = torch.distributions.Normal(0.0, 1.0).cdf(scores[i] - scores[j])
    target = 0.5 * (torch.sign(targets[i] - targets[j]) + 1.0)
    return probability, target


def fidelity_ranking_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Fidelity loss, 1 - sqrt(p g) - sqrt((1-p)(1-g)), averaged over known pairs.

    It is bounded in [0, 1], so a few mislabelled EXIF values cannot dominate a
    batch the way an unbounded log loss lets them. Zero when no pair is known.
    """
    p, g = _pairs(scores, targets)
    if p.numel() == 0:
        return scores.sum() * 0.0
    loss = 1.0 - torch.sqrt(p * g + _EPS) - torch.sqrt((1.0 - p) * (1.0 - g) + _EPS)
    return loss.clamp_min(0.0).mean()  # the epsilon can push a perfect pair a hair below 0


def bce_ranking_loss(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy between the Thurstone probability and g (ties 0.5)."""
    p, g = _pairs(scores, targets)
    if p.numel() == 0:
        return scores.sum() * 0.0
    return F.binary_cross_entropy(p.clamp(_EPS, 1.0 - _EPS), g)


RANKING_LOSSES = {"fidelity": fidelity_ranking_loss, "bce": bce_ranking_loss}


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over samples whose class is known (target >= 0); zero if none."""
    known = targets >= 0
    if not bool(known.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits[known].float(), targets[known])


def pairwise_concordance(scores: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
    """Fraction of known, untied pairs the scores order correctly (0.5 = chance).

    Returns the concordance and the number of pairs it was measured on.
    """
    known = ~torch.isnan(targets)
    scores, targets = scores[known], targets[known]
    i, j = torch.triu_indices(len(scores), len(scores), offset=1)
    truth = torch.sign(targets[i] - targets[j])
    untied = truth != 0
    if not bool(untied.any()):
        return float("nan"), 0
    guess = torch.sign(scores[i] - scores[j])[untied]
    correct = (guess == truth[untied]).float() + 0.5 * (guess == 0).float()
    return float(correct.mean()), int(untied.sum())


def feature_distillation_loss(
    student: list[torch.Tensor], teacher: list[torch.Tensor]
) -> torch.Tensor:
    """Sum over stages (f1..f5) of the mean squared difference between the binary
    detector's features and the frozen EXIF-trained extractor's.

    A regulariser: it keeps the binary detector close to features that describe
    cameras, so it cannot drift to whatever shortcut separates the training
    generators from real photos. Zero when both networks are the same.
    """
    if len(student) != len(teacher):
        raise ValueError(f"{len(student)} student stages against {len(teacher)} teacher stages")
    return sum(F.mse_loss(s.float(), t.float().detach()) for s, t in zip(student, teacher,
                                                                          strict=True))
