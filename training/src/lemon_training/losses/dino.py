"""DINO self-distillation loss, with centred or Sinkhorn-Knopp teacher targets.

Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV
2021 (reference code facebookresearch/dino); Oquab et al., "DINOv2: Learning
Robust Visual Features without Supervision", TMLR 2024 (facebookresearch/dinov2).
Sinkhorn-Knopp targets come from SwAV: Caron et al., "Unsupervised Learning of
Visual Features by Contrasting Cluster Assignments", NeurIPS 2020.

The student and the teacher map each view to logits over ``K`` prototypes. The
teacher's logits ``t`` (n, K) become target distributions ``p`` in one of two ways:

- centring (DINO): ``p = softmax((t - c) / tau_t)``, where ``c`` (1, K) is an
  exponential moving average of the batch mean of ``t`` (momentum 0.9); the
  centre keeps one prototype from winning every image, the low teacher
  temperature keeps targets sharp;
- Sinkhorn-Knopp (DINOv2): ``exp(t / tau_t)`` is rescaled by alternate row and
  column normalisations (3 iterations) so that each image's target sums to 1 and
  each prototype receives about ``n / K`` of the batch's mass.

The loss is the cross-entropy of each student view against the target of every
*other* view the teacher saw, averaged over these pairs:

    L = mean_{(s, v), s != v} mean_i  - sum_k p_v[i, k] log softmax(z_s[i] / tau_s)_k

Student views list the teacher's views first (the global views), then any views
only the student sees (local crops).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("center", "sinkhorn")


def soft_cross_entropy(
    targets: torch.Tensor, student_logits: torch.Tensor, student_temp: float
) -> torch.Tensor:
    """Cross-entropy of target distributions and tempered student logits, per row.

    Parameters
    ----------
    targets : Tensor of shape (n, K)
        Teacher distributions (rows sum to 1; no gradient flows into them).
    student_logits : Tensor of shape (n, K)
    student_temp : float

    Returns
    -------
    Tensor of shape (n,), float32
    """
    log_q = F.log_softmax(student_logits.float() / student_temp, dim=-1)  # (n, K)
    return -(targets.detach().float() * log_q).sum(dim=-1)


def dino_loss(
    student_logits: Sequence[torch.Tensor],
    teacher_targets: Sequence[torch.Tensor],
    student_temp: float = 0.1,
) -> torch.Tensor:
    """Mean cross-entropy over all (student view, other teacher view) pairs.

    Parameters
    ----------
    student_logits : sequence of Tensor of shape (b, K)
        One per student view; the first ``len(teacher_targets)`` are the views
        the teacher saw, in the same order.
    teacher_targets : sequence of Tensor of shape (b, K)
        Teacher distributions, one per view (at least 2).
    student_temp : float

    Returns
    -------
    Tensor, scalar
    """
    if len(teacher_targets) < 2 or len(student_logits) < len(teacher_targets):
        raise ValueError(
            f"got {len(student_logits)} student and {len(teacher_targets)} teacher "
            "views; dino_loss needs >= 2 teacher views, each also seen by the student"
        )
    terms = [
        soft_cross_entropy(p, z, student_temp).mean()
        for v, p in enumerate(teacher_targets)
        for s, z in enumerate(student_logits)
        if s != v
    ]
    return torch.stack(terms).mean()


def _all_reduce(x: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Sum (or max) over processes when torch.distributed runs; else unchanged."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
    return x


@torch.no_grad()
def sinkhorn_knopp(
    teacher_logits: torch.Tensor, temperature: float, iterations: int = 3
) -> torch.Tensor:
    """Balanced teacher targets by Sinkhorn-Knopp (SwAV, DINOv2).

    Parameters
    ----------
    teacher_logits : Tensor of shape (n, K)
    temperature : float
    iterations : int

    Returns
    -------
    Tensor of shape (n, K), float32; each row sums to 1, and each column tends to
    ``n / K`` as ``iterations`` grows.
    """
    t = teacher_logits.float()
    peak = _all_reduce(t.max().clone(), op="max")  # same shift on every process
    q = torch.exp((t - peak) / temperature).T  # (K, n)
    n = _all_reduce(torch.tensor(float(q.shape[1]), device=q.device))
    k = q.shape[0]
    q /= _all_reduce(q.sum())

    # alternate: each prototype's mass -> 1/K, each image's mass -> 1/n
    for _ in range(iterations):
        q /= _all_reduce(q.sum(dim=1, keepdim=True))
        q /= k
        q /= q.sum(dim=0, keepdim=True)
        q /= n
    return (q * n).T


class TeacherTargets(nn.Module):
    """Turns teacher logits into targets: centring (default) or Sinkhorn-Knopp.

    Parameters
    ----------
    out_dim : int
        Number of prototypes ``K``.
    mode : {"center", "sinkhorn"}
    center_momentum : float
        Momentum of the centre's moving average (mode ``"center"``).
    """

    def __init__(self, out_dim: int, mode: str = "center", center_momentum=0.9):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"centering={mode!r} is not known; choose one of {MODES}")
        self.mode = mode
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def forward(self, teacher_logits: torch.Tensor, temperature: float):
        """Targets (n, K) for logits (n, K); updates the centre in mode "center"."""
        if self.mode == "sinkhorn":
            return sinkhorn_knopp(teacher_logits, temperature)
        t = teacher_logits.float()
        targets = F.softmax((t - self.center) / temperature, dim=-1)
        self.update_center(t)
        return targets

    @torch.no_grad()
    def update_center(self, teacher_logits: torch.Tensor) -> None:
        """centre <- m * centre + (1 - m) * batch mean of the logits."""
        total = _all_reduce(teacher_logits.float().sum(dim=0, keepdim=True))
        count = _all_reduce(
            torch.tensor(float(len(teacher_logits)), device=total.device)
        )
        if count.item() == 0:  # e.g. no masked patch in the whole batch
            return
        m = self.center_momentum
        self.center.mul_(m).add_(total / count, alpha=1 - m)
