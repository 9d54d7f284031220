"""Pretext losses: Thurstone pairwise ranking, masked cross-entropy, concordance."""

from __future__ import annotations

import math

import pytest
import torch

from aigdetect.losses import (
    RANKING_LOSSES,
    bce_ranking_loss,
    fidelity_ranking_loss,
    masked_cross_entropy,
    pairwise_concordance,
)

NAN = float("nan")
RANKERS = pytest.mark.parametrize("loss", [fidelity_ranking_loss, bce_ranking_loss],
                                  ids=["fidelity", "bce"])


def test_registry():
    assert RANKING_LOSSES["fidelity"] is fidelity_ranking_loss
    assert RANKING_LOSSES["bce"] is bce_ranking_loss
    assert set(RANKING_LOSSES) == {"fidelity", "bce"}


@RANKERS
def test_correct_order_costs_less_than_reversed(loss):
    targets = torch.tensor([1 / 1000, 1 / 250, 1 / 60, 1 / 8])
    ordered = torch.tensor([-3.0, -1.0, 1.0, 3.0])
    right = loss(ordered, targets)
    wrong = loss(ordered.flip(0), targets)
    assert right < wrong
    assert float(right) < 0.05
    assert torch.isfinite(wrong)


@RANKERS
def test_gradient_pushes_scores_into_order(loss):
    scores = torch.zeros(2, requires_grad=True)
    loss(scores, torch.tensor([100.0, 800.0])).backward()
    # descending the gradient raises the score of the larger target
    assert scores.grad[1] < 0 < scores.grad[0]


@RANKERS
def test_tied_targets_are_best_served_by_equal_scores(loss):
    targets = torch.tensor([400.0, 400.0])
    gaps = [-2.0, -0.5, 0.0, 0.5, 2.0]
    values = [float(loss(torch.tensor([gap, 0.0]), targets)) for gap in gaps]
    assert min(values) == values[2]
    assert values[0] == pytest.approx(values[4], abs=1e-6)  # symmetric around the tie
    assert values[1] > values[2] and values[3] > values[2]


def test_tie_target_is_one_half():
    # at equal scores the Thurstone probability is 1/2: a tie is then matched
    # exactly, so BCE equals its entropy floor log 2 and fidelity ~ 0
    scores, targets = torch.zeros(2), torch.tensor([5.0, 5.0])
    assert float(bce_ranking_loss(scores, targets)) == pytest.approx(math.log(2), abs=1e-4)
    assert float(fidelity_ranking_loss(scores, targets)) == pytest.approx(0.0, abs=1e-2)


@RANKERS
def test_nan_targets_are_masked(loss):
    scores = torch.tensor([0.3, -0.2, 1.5])
    targets = torch.tensor([2.8, 4.0, 8.0])
    base = loss(scores, targets)
    for extra_score in (-50.0, 0.0, 7.0):
        with_unknown = loss(torch.cat([scores, torch.tensor([extra_score])]),
                            torch.cat([targets, torch.tensor([NAN])]))
        assert float(with_unknown) == pytest.approx(float(base), rel=1e-6)
    assert torch.isfinite(base)


@RANKERS
def test_all_unknown_gives_zero_and_backward_works(loss):
    scores = torch.randn(4, requires_grad=True)
    value = loss(scores, torch.full((4,), NAN))
    assert float(value.detach()) == 0.0
    value.backward()
    assert scores.grad is not None
    assert torch.equal(scores.grad, torch.zeros(4))


@RANKERS
def test_single_known_target_has_no_pair(loss):
    scores = torch.randn(3, requires_grad=True)
    value = loss(scores, torch.tensor([NAN, 3.0, NAN]))
    assert float(value.detach()) == 0.0
    value.backward()


def test_fidelity_is_bounded():
    targets = torch.arange(6, dtype=torch.float32)
    worst = fidelity_ranking_loss(-100.0 * targets, targets)
    assert 0.9 < float(worst) <= 1.0 + 1e-6
    best = fidelity_ranking_loss(100.0 * targets, targets)
    assert abs(float(best)) < 1e-2


def test_bce_is_finite_for_extreme_scores():
    targets = torch.arange(4, dtype=torch.float32)
    scores = (-1e4 * targets).requires_grad_()
    value = bce_ranking_loss(scores, targets)
    assert torch.isfinite(value) and float(value.detach()) > 5
    value.backward()
    assert torch.isfinite(scores.grad).all()


def test_masked_cross_entropy_ignores_unknown():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0], [9.0, -9.0, 0.0]])
    targets = torch.tensor([0, 1, -1])
    expected = torch.nn.functional.cross_entropy(logits[:2], targets[:2])
    torch.testing.assert_close(masked_cross_entropy(logits, targets), expected)
    # the unknown row's logits do not matter
    logits2 = logits.clone()
    logits2[2] = torch.tensor([-100.0, 100.0, 0.0])
    torch.testing.assert_close(masked_cross_entropy(logits2, targets), expected)


def test_masked_cross_entropy_all_unknown_is_zero():
    logits = torch.randn(3, 4, requires_grad=True)
    value = masked_cross_entropy(logits, torch.full((3,), -1))
    assert float(value.detach()) == 0.0
    value.backward()
    assert torch.equal(logits.grad, torch.zeros(3, 4))


def test_concordance_perfect_and_reversed():
    targets = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert pairwise_concordance(torch.tensor([0.1, 0.2, 0.3, 0.4]), targets) == (1.0, 6)
    assert pairwise_concordance(torch.tensor([0.4, 0.3, 0.2, 0.1]), targets) == (0.0, 6)


def test_concordance_excludes_tied_and_unknown_targets():
    targets = torch.tensor([1.0, 1.0, 2.0, NAN])
    # pairs (0,1) tied -> excluded; (0,2) and (1,2) untied; index 3 unknown
    concordance, pairs = pairwise_concordance(torch.tensor([5.0, -5.0, 0.0, 100.0]), targets)
    assert pairs == 2
    assert concordance == pytest.approx(0.5)  # (0,2) wrong, (1,2) right


def test_concordance_counts_tied_scores_as_half():
    concordance, pairs = pairwise_concordance(torch.zeros(3), torch.tensor([1.0, 2.0, 3.0]))
    assert (concordance, pairs) == (0.5, 3)


def test_concordance_without_untied_pairs_is_nan():
    concordance, pairs = pairwise_concordance(torch.randn(3), torch.tensor([2.0, 2.0, NAN]))
    assert pairs == 0 and math.isnan(concordance)
