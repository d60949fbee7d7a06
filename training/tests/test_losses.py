"""InfoNCE against a direct, loop-based formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lemon_training.losses.infonce import infonce, symmetric_infonce


def infonce_by_hand(q, k, t):
    """-log softmax of the positive, one query at a time, times 2t."""
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    k = k / np.linalg.norm(k, axis=1, keepdims=True)
    total = 0.0
    for i in range(len(q)):
        scores = [float(q[i] @ k[j]) / t for j in range(len(k))]
        total += -scores[i] + math.log(sum(math.exp(s) for s in scores))
    return 2 * t * total / len(q)


def test_infonce_matches_the_formula():
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))

    loss = infonce(torch.tensor(q), torch.tensor(k), temperature=0.2)

    assert float(loss) == pytest.approx(infonce_by_hand(q, k, 0.2), rel=1e-6)


def test_identical_orthogonal_views_give_the_minimum_loss():
    q = torch.eye(4)

    loss = infonce(q, q.clone(), temperature=0.1)

    # one positive at 1/t against three negatives at 0
    expected = 2 * 0.1 * (-10 + math.log(math.exp(10) + 3))
    assert float(loss) == pytest.approx(expected, rel=1e-3)  # float32 near zero


def test_symmetric_loss_is_the_sum_of_both_directions():
    rng = np.random.default_rng(1)
    q1, q2, k1, k2 = (torch.tensor(rng.normal(size=(6, 3))) for _ in range(4))

    loss = symmetric_infonce(q1, q2, k1, k2, temperature=0.5)

    expected = infonce_by_hand(q1.numpy(), k2.numpy(), 0.5) + infonce_by_hand(
        q2.numpy(), k1.numpy(), 0.5
    )
    assert float(loss) == pytest.approx(expected, rel=1e-6)


def test_no_gradient_flows_into_the_keys():
    q = torch.randn(4, 3, requires_grad=True)
    k = torch.randn(4, 3, requires_grad=True)

    infonce(q, k).backward()

    assert q.grad is not None and k.grad is None
