"""KDE regulariser: von Mises-Fisher kernel density of the batch, minimised.

LEMON (Chadoutaud et al., "LEMON: a foundation model for nuclear morphology in
Computational Pathology", arXiv 2603.25802, 2026) replaces DINOv2's KoLeo
regulariser by one built on a kernel density estimate (KDE). The formula below
is our reading of it. The estimator behind it is the resubstitution entropy
estimate (Ahmad and Lin, IEEE Trans. Inf. Theory 22(3), 1976) with a
von Mises-Fisher kernel on the sphere (Hall, Watson and Cabrera, Biometrika
74(4), 1987).

For L2-normalised features ``x_1 .. x_n`` of one batch and concentration
``kappa`` (5 in LEMON):

    L = 1/n sum_i log( 1/(n-1) sum_{j != i} exp(kappa * (x_i . x_j - 1)) )

Each inner sum is a leave-one-out KDE of the density at ``x_i`` (the kernel's
normalising constant and the ``exp(kappa)`` factor are constants, dropped;
the ``- 1`` keeps every exponent <= 0, so ``L`` lies in ``[-2 kappa, 0]``).
``-L`` is thus, up to a constant, an entropy estimate of the feature
distribution: minimising ``L`` lowers the density at every feature and spreads
the batch over the sphere. Unlike KoLeo, which looks at the nearest neighbour
only (and whose gradient explodes for near-duplicates), every neighbour pulls
with the softmax weight ``exp(kappa x_i . x_j) / sum_j'``, so the gradient is
bounded and smooth. Since ``x_i . x_j - 1 = -||x_i - x_j||^2 / 2``, it is close
to the uniformity loss of Wang and Isola (ICML 2020) with ``t = kappa / 2``,
with the log taken per feature instead of over all pairs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def kde_loss(features: torch.Tensor, kappa: float = 5.0) -> torch.Tensor:
    """Mean log leave-one-out vMF kernel density of a batch of features.

    Parameters
    ----------
    features : Tensor of shape (n, d)
        Any scale; L2-normalised here. ``n >= 2``.
    kappa : float
        Concentration of the von Mises-Fisher kernel (> 0).

    Returns
    -------
    Tensor, scalar in [-2 kappa, 0]
    """
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(
            f"features have shape {tuple(features.shape)}; kde_loss needs (n, d) "
            "with n >= 2 (a batch of at least two)"
        )
    if not kappa > 0:
        raise ValueError(f"kappa={kappa!r} must be > 0 (LEMON uses 5)")
    x = F.normalize(features.float(), dim=-1)  # (n, d)
    n = len(x)

    # log kernel of every pair, the feature itself left out
    log_kernel = kappa * (x @ x.T - 1.0)  # (n, n), <= 0
    self_pair = torch.eye(n, dtype=torch.bool, device=x.device)
    log_kernel = log_kernel.masked_fill(self_pair, float("-inf"))

    log_density = torch.logsumexp(log_kernel, dim=1) - math.log(n - 1)  # (n,)
    return log_density.mean()
