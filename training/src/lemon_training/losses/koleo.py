"""KoLeo regulariser: spread features by pushing each from its nearest neighbour.

Sablayrolles et al., "Spreading vectors for similarity search", ICLR 2019, from
the Kozachenko-Leonenko differential entropy estimator; used on the student's
class tokens in DINOv2 (Oquab et al., TMLR 2024; facebookresearch/dinov2).

For L2-normalised features ``x_1 .. x_n`` of one batch:

    L = - 1/n sum_i log(min_{j != i} ||x_i - x_j|| + eps)

Minimising ``L`` maximises the log distance of each feature to its nearest
neighbour, i.e. (up to constants) the Kozachenko-Leonenko entropy estimate, so
the batch spreads over the sphere.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def koleo_loss(features: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KoLeo loss of one batch of features.

    Parameters
    ----------
    features : Tensor of shape (n, d)
        Any scale; L2-normalised here. ``n >= 2``.
    eps : float
        Keeps the log finite for duplicate features.

    Returns
    -------
    Tensor, scalar
    """
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(
            f"features have shape {tuple(features.shape)}; koleo_loss needs (n, d) "
            "with n >= 2 (a batch of at least two)"
        )
    x = F.normalize(features.float(), dim=-1, eps=eps)  # (n, d)

    # nearest neighbour = largest dot product among the others (unit vectors)
    with torch.no_grad():
        dots = x @ x.T  # (n, n)
        dots.fill_diagonal_(-2.0)
        nearest = dots.argmax(dim=1)  # (n,)

    distance = (x - x[nearest]).norm(dim=-1)  # (n,)
    return -torch.log(distance + eps).mean()
