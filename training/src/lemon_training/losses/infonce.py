"""InfoNCE contrastive loss as used by MoCo v3.

Chen, Xie and He, "An Empirical Study of Training Self-Supervised Vision
Transformers", ICCV 2021 (reference: facebookresearch/moco-v3, ``moco/builder.py``).
Positives are the same image's other view in the batch (the diagonal); the other
images of the batch, over all processes of a distributed run, are the negatives.
The loss is scaled by ``2 * temperature`` as in the reference code, which keeps
gradient size steady across temperatures.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import distributed


def infonce(q: torch.Tensor, k: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Contrastive loss of queries against keys.

    Parameters
    ----------
    q : Tensor of shape (b, d)
        Predictions from one view (any scale; normalised here).
    k : Tensor of shape (b, d)
        Momentum-encoder projections of the other view (no gradient flows); in a
        distributed run, gathered from every process as negatives.
    temperature : float

    Returns
    -------
    Tensor, scalar
    """
    q = F.normalize(q, dim=1)
    k = F.normalize(distributed.gather_cat(k.detach()), dim=1)  # (world * b, d)
    logits = q @ k.T / temperature  # (b, world * b)
    # this process's positives sit in its own block of the gathered keys
    labels = torch.arange(len(q), device=q.device) + len(q) * distributed.rank()
    return F.cross_entropy(logits, labels) * (2 * temperature)


def symmetric_infonce(q1, q2, k1, k2, temperature: float = 0.2) -> torch.Tensor:
    """MoCo v3's symmetrised loss: view 1 predicts view 2 and vice versa."""
    return infonce(q1, k2, temperature) + infonce(q2, k1, temperature)
