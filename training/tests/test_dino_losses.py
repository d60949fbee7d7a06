"""DINO, iBOT, KoLeo and KDE losses against hand values and direct loop formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lemon_training.losses.dino import (
    TeacherTargets,
    dino_loss,
    sinkhorn_knopp,
    soft_cross_entropy,
)
from lemon_training.losses.ibot import ibot_loss, random_patch_masks
from lemon_training.losses.kde import kde_loss
from lemon_training.losses.koleo import koleo_loss


def softmax(row):
    e = [math.exp(v - max(row)) for v in row]
    return [v / sum(e) for v in e]


def cross_entropy_by_hand(target, student_row, student_temp):
    q = softmax([v / student_temp for v in student_row])
    return -sum(p * math.log(qk) for p, qk in zip(target, q, strict=True))


# DINO


def test_cross_entropy_of_a_hand_example():
    # student logits (0.1 ln 3, 0) at temperature 0.1 -> softmax (3/4, 1/4)
    student = torch.tensor([[0.1 * math.log(3.0), 0.0]])
    target = torch.tensor([[1.0, 0.0]])

    ce = soft_cross_entropy(target, student, student_temp=0.1)

    assert float(ce[0]) == pytest.approx(math.log(4 / 3), rel=1e-6)


def test_uniform_student_costs_log_k_whatever_the_target():
    targets = [torch.softmax(torch.randn(3, 5), dim=1) for _ in range(2)]
    student = [torch.zeros(3, 5) for _ in range(4)]

    loss = dino_loss(student, targets, student_temp=0.1)

    assert float(loss) == pytest.approx(math.log(5), rel=1e-6)


def test_dino_loss_with_centering_matches_a_loop_formula():
    rng = np.random.default_rng(0)
    b, k, n_local = 3, 4, 2
    teacher = rng.normal(size=(2, b, k))
    student = rng.normal(size=(2 + n_local, b, k))
    center = rng.normal(size=k) * 0.1
    t_temp, s_temp = 0.04, 0.1

    targets_module = TeacherTargets(k, "center", center_momentum=0.9)
    targets_module.center.copy_(torch.tensor(center)[None])
    targets = targets_module(torch.tensor(teacher).reshape(2 * b, k), t_temp)
    loss = dino_loss(list(torch.tensor(student)), targets.chunk(2), s_temp)

    # by hand: every student view against every other teacher view
    terms = []
    for v in range(2):
        for s in range(2 + n_local):
            if s == v:
                continue
            ces = [
                cross_entropy_by_hand(
                    softmax(
                        [(teacher[v, i, j] - center[j]) / t_temp for j in range(k)]
                    ),
                    list(student[s, i]),
                    s_temp,
                )
                for i in range(b)
            ]
            terms.append(sum(ces) / b)
    assert float(loss) == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_center_moves_towards_the_batch_mean():
    targets = TeacherTargets(3, "center", center_momentum=0.9)
    targets.center.fill_(1.0)
    logits = torch.tensor([[0.0, 2.0, 4.0], [2.0, 2.0, 2.0]])

    targets(logits, temperature=0.04)

    expected = 0.9 * 1.0 + 0.1 * torch.tensor([1.0, 2.0, 3.0])
    assert torch.allclose(targets.center[0], expected)


def test_no_gradient_flows_into_the_teacher_targets():
    student = [torch.randn(2, 3, requires_grad=True) for _ in range(2)]
    teacher = [torch.softmax(torch.randn(2, 3), 1).requires_grad_() for _ in range(2)]

    dino_loss(student, teacher).backward()

    assert student[0].grad is not None
    assert all(t.grad is None for t in teacher)


def test_dino_loss_refuses_a_single_teacher_view():
    with pytest.raises(ValueError, match="needs >= 2 teacher views"):
        dino_loss([torch.zeros(2, 3)] * 2, [torch.ones(2, 3) / 3])


def test_unknown_centering_is_refused():
    with pytest.raises(ValueError, match="centering='mean'"):
        TeacherTargets(8, "mean")


# Sinkhorn-Knopp


def test_sinkhorn_of_already_balanced_logits_is_the_softmax():
    # each image on its own prototype: rows and columns balance at once
    logits = torch.eye(4) * 0.5

    targets = sinkhorn_knopp(logits, temperature=0.1)

    assert torch.allclose(targets, torch.softmax(logits / 0.1, dim=1), atol=1e-6)


def test_sinkhorn_rows_sum_to_one_and_columns_converge_to_n_over_k():
    torch.manual_seed(0)
    logits = torch.randn(12, 4)

    few = sinkhorn_knopp(logits, temperature=0.5, iterations=3)
    many = sinkhorn_knopp(logits, temperature=0.5, iterations=500)

    assert torch.allclose(few.sum(dim=1), torch.ones(12), atol=1e-5)
    assert torch.allclose(many.sum(dim=0), torch.full((4,), 3.0), atol=1e-4)
    # a diagonal rescaling of exp(t / T): log Q - t / T = a_i + b_k
    residual = torch.log(many) - logits / 0.5
    residual = residual - residual.mean(0) - residual.mean(1, keepdim=True)
    assert torch.allclose(
        residual, torch.full_like(residual, residual.mean()), atol=1e-4
    )


# iBOT


def test_ibot_loss_matches_a_double_loop():
    rng = np.random.default_rng(1)
    masks = torch.tensor(
        [[True, False, True, True], [False] * 4, [False, True, False, False]]
    )
    m = int(masks.sum())
    student = rng.normal(size=(m, 5))
    teacher = rng.dirichlet(np.ones(5), size=m)

    loss = ibot_loss(torch.tensor(student), torch.tensor(teacher), masks, 0.1)

    # by hand: per image, the mean over its masked patches; sum / all images
    total, row = 0.0, 0
    for image in masks.tolist():
        count = sum(image)
        for _ in range(count):
            total += cross_entropy_by_hand(teacher[row], student[row], 0.1) / count
            row += 1
    assert float(loss) == pytest.approx(total / len(masks), rel=1e-6)


def test_ibot_loss_is_zero_without_masked_patches():
    masks = torch.zeros(3, 4, dtype=torch.bool)

    loss = ibot_loss(torch.zeros(0, 5), torch.zeros(0, 5), masks)

    assert float(loss) == 0.0


def test_ibot_loss_refuses_logits_of_other_positions():
    masks = torch.tensor([[True, True], [False, True]])

    with pytest.raises(ValueError, match="masks select 3 patches"):
        ibot_loss(torch.zeros(4, 5), torch.zeros(4, 5), masks)


def test_half_of_the_views_get_masks_with_ratios_in_range():
    torch.manual_seed(0)

    masks = random_patch_masks(64, 25, probability=0.5, ratio=(0.1, 0.5))

    counts = masks.sum(dim=1)
    assert int((counts > 0).sum()) == 32
    assert counts[counts > 0].min() >= 2 and counts.max() <= 12  # 25 * 0.1, 25 * 0.5
    assert counts[counts > 0].float().std() > 2  # stratified ratios, not one value


# KoLeo


def test_koleo_matches_brute_force_nearest_neighbours():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(7, 4))

    loss = koleo_loss(torch.tensor(x))

    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    logs = [
        math.log(min(np.linalg.norm(unit[i] - unit[j]) for j in range(7) if j != i))
        for i in range(7)
    ]
    assert float(loss) == pytest.approx(-sum(logs) / 7, rel=1e-5)


def test_koleo_of_orthogonal_vectors_is_minus_log_sqrt_two():
    loss = koleo_loss(torch.eye(3) * 5.0)

    assert float(loss) == pytest.approx(-math.log(math.sqrt(2)), rel=1e-6)


def test_koleo_refuses_a_single_feature():
    with pytest.raises(ValueError, match="n >= 2"):
        koleo_loss(torch.ones(1, 4))


# KDE


def test_kde_matches_a_double_loop():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 5))
    kappa = 5.0

    loss = kde_loss(torch.tensor(x), kappa)

    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    total = 0.0
    for i in range(6):
        density = sum(
            math.exp(kappa * (unit[i] @ unit[j] - 1)) for j in range(6) if j != i
        )
        total += math.log(density / 5)
    assert float(loss) == pytest.approx(total / 6, rel=1e-6)


def test_kde_bounds_identical_and_antipodal_features():
    same = kde_loss(torch.ones(4, 3), kappa=5.0)
    opposite = kde_loss(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), kappa=5.0)

    assert float(same) == pytest.approx(0.0, abs=1e-6)
    assert float(opposite) == pytest.approx(-10.0, rel=1e-6)


def test_minimising_kde_spreads_a_tight_cluster():
    torch.manual_seed(0)
    x = (torch.tensor([1.0, 0.0, 0.0]) + 0.05 * torch.randn(16, 3)).requires_grad_()
    optimizer = torch.optim.SGD([x], lr=0.5)

    def spread():
        unit = torch.nn.functional.normalize(x.detach(), dim=1)
        return float(torch.pdist(unit).mean())

    before = spread()
    for _ in range(50):
        optimizer.zero_grad()
        kde_loss(x, kappa=5.0).backward()
        optimizer.step()

    assert spread() > 3 * before


@pytest.mark.parametrize(
    ("features", "kappa", "match"),
    [(torch.ones(1, 3), 5.0, "n >= 2"), (torch.ones(4, 3), 0.0, "kappa=0.0")],
)
def test_kde_refuses_bad_input(features, kappa, match):
    with pytest.raises(ValueError, match=match):
        kde_loss(features, kappa)
