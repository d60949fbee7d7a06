"""iBOT masked-patch self-distillation loss, and the random masks it is taken on.

Zhou et al., "iBOT: Image BERT Pre-Training with Online Tokenizer", ICLR 2022
(reference code bytedance/ibot), as used in DINOv2 (Oquab et al., TMLR 2024;
facebookresearch/dinov2).

Some patches of the student's global views are replaced by a learned mask token;
the teacher sees the same views unmasked. At each masked position the student's
patch logits must predict the teacher's target distribution over the patch
prototypes (centred or Sinkhorn-Knopp, with a centre of their own, see
:mod:`lemon_training.losses.dino`). Each image weighs the same whatever its
number of masked patches, and, as in DINOv2, the sum over images is divided by
the number of images in the batch, masked or not:

    L = 1/n sum_{i masked} 1/|M_i| sum_{p in M_i}
        - sum_k P[i, p, k] log softmax(z[i, p] / tau_s)_k

where ``M_i`` is the set of masked patches of image ``i`` and ``n`` the number of
images (unmasked images contribute zero).
"""

from __future__ import annotations

import torch

from .dino import soft_cross_entropy


def ibot_loss(
    student_logits: torch.Tensor,
    teacher_targets: torch.Tensor,
    masks: torch.Tensor,
    student_temp: float = 0.1,
) -> torch.Tensor:
    """Masked-patch cross-entropy, each image weighted by 1 / its masked patches.

    Parameters
    ----------
    student_logits : Tensor of shape (m, K)
        Student patch logits at the masked positions, in the order of
        ``masks.nonzero()`` (image by image, patches row-major), i.e.
        ``patch_logits[masks]``.
    teacher_targets : Tensor of shape (m, K)
        Teacher distributions at the same positions.
    masks : Tensor of shape (n, p), bool
        Masked patches of each image; ``m = masks.sum()``.
    student_temp : float

    Returns
    -------
    Tensor, scalar (zero when nothing is masked)
    """
    m = int(masks.sum())
    if student_logits.shape[0] != m or teacher_targets.shape[0] != m:
        raise ValueError(
            f"masks select {m} patches but student_logits has "
            f"{student_logits.shape[0]} rows and teacher_targets "
            f"{teacher_targets.shape[0]}; pass the logits at the masked positions"
        )

    # weight of each masked patch: 1 / (masked patches of its image), (m,)
    per_image = 1.0 / masks.sum(dim=1).clamp(min=1).float()  # (n,)
    weights = per_image[:, None].expand_as(masks)[masks]

    ce = soft_cross_entropy(teacher_targets, student_logits, student_temp)  # (m,)
    return (ce * weights).sum() / len(masks)


def random_patch_masks(
    n: int,
    n_patches: int,
    probability: float = 0.5,
    ratio: tuple[float, float] = (0.1, 0.5),
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """iBOT masks: ``int(n * probability)`` images get random masked patches.

    Masked image ``i`` of ``k`` hides ``int(n_patches * U(r_i, r_i+1))`` patches
    (at least one), with ``r`` = ``linspace(*ratio, k + 1)``: ratios stratified
    over the batch as in DINOv2. Rows are then shuffled.

    Returns
    -------
    Tensor of shape (n, n_patches), bool
    """
    k = int(n * probability)
    edges = torch.linspace(ratio[0], ratio[1], k + 1)
    ratios = edges[:-1] + (edges[1:] - edges[:-1]) * torch.rand(k)
    counts = torch.zeros(n, dtype=torch.long)
    counts[:k] = (n_patches * ratios).long().clamp(min=1)

    # the first counts[i] of a random order of patches, in a random image order
    order = torch.rand(n, n_patches).argsort(dim=1).argsort(dim=1)
    masks = order < counts[torch.randperm(n)][:, None]
    return masks.to(device)
