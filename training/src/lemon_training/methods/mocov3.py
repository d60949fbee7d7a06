"""MoCo v3 for ViT nucleus encoders.

Chen, Xie and He, "An Empirical Study of Training Self-Supervised Vision
Transformers", ICCV 2021; reference code facebookresearch/moco-v3.

A base encoder (the plugin's ViT) with a 3-layer projector and a 2-layer
predictor learns to match the momentum encoder's projection of another view of
the same nucleus. The momentum encoder is an exponential moving average of the
base encoder and projector; its momentum rises from ``m`` to 1 on a cosine
schedule. As in the reference, the patch projection is frozen at its random
initialisation, which stabilises ViT training.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from napari_lemon.encoder import EncoderCard, create_vit

from ..losses.infonce import symmetric_infonce


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int, last_bn: bool = True):
    """Linear-BN-ReLU stack; the last BN has no affine parameters (MoCo v3)."""
    blocks: list[nn.Module] = []
    dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
    for i in range(layers):
        blocks.append(nn.Linear(dims[i], dims[i + 1], bias=False))
        if i < layers - 1:
            blocks += [nn.BatchNorm1d(dims[i + 1]), nn.ReLU(inplace=True)]
        elif last_bn:
            blocks.append(nn.BatchNorm1d(dims[i + 1], affine=False))
    return nn.Sequential(*blocks)


class MoCoV3(nn.Module):
    """MoCo v3 with the plugin's ViT as the base encoder.

    Parameters
    ----------
    card : EncoderCard
        Architecture of the base encoder.
    policy : nn.Module
        Augmentation: float (b, 3, 60, 60) in 0-1 -> (b, 3, 40, 40) in 0-1.
    policy2 : nn.Module, optional
        Augmentation of the second view, when it differs (MoCo v3's ``a0``).
    mean, std : sequence of 3 floats
        Normalisation of the views (the card's).
    dim : int
        Projection size (256 in the paper).
    mlp_dim : int
        Hidden size of projector and predictor (4096 in the paper).
    temperature : float
        InfoNCE temperature (0.2 for ViT in the paper).
    momentum : float
        Momentum at the start of the run; it rises to 1 on a cosine schedule.
    """

    export_prefix = "encoder."  # the base encoder is what the plugin loads

    def __init__(
        self,
        card: EncoderCard,
        policy: nn.Module | None = None,
        policy2: nn.Module | None = None,
        *,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        dim: int = 256,
        mlp_dim: int = 4096,
        temperature: float = 0.2,
        momentum: float = 0.99,
    ):
        super().__init__()
        self.temperature, self.base_momentum = temperature, momentum
        self.policy = policy
        self.policy2 = policy if policy2 is None else policy2
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))
        self.encoder = create_vit(card)
        self.encoder.patch_embed.proj.requires_grad_(False)
        self.projector = mlp(card.embed_dim, mlp_dim, dim, layers=3)
        self.predictor = mlp(dim, mlp_dim, dim, layers=2, last_bn=False)

        # the momentum branch starts as a copy and is never trained by gradients
        self.momentum_encoder = copy.deepcopy(self.encoder)
        self.momentum_projector = copy.deepcopy(self.projector)
        for p in self.momentum_parameters():
            p.requires_grad_(False)

    def online_parameters(self):
        yield from self.encoder.parameters()
        yield from self.projector.parameters()

    def momentum_parameters(self):
        yield from self.momentum_encoder.parameters()
        yield from self.momentum_projector.parameters()

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]

    @torch.no_grad()
    def update_momentum(self, m: float) -> None:
        """Momentum branch <- m * momentum branch + (1 - m) * online branch."""
        for pm, po in zip(
            self.momentum_parameters(), self.online_parameters(), strict=True
        ):
            pm.mul_(m).add_(po.detach(), alpha=1 - m)

    def after_step(self, done: float) -> None:
        """Momentum update at the schedule's value for the fraction ``done``."""
        self.update_momentum(momentum_at(done, 1.0, self.base_momentum))

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Loss of two augmented views of each crop.

        Parameters
        ----------
        crops : Tensor of shape (b, 3, 60, 60)
            Float in 0-1, un-normalised.

        Returns
        -------
        (loss, parts): the scalar loss and floats to log
        """
        with torch.no_grad():
            x1, x2 = self.views(crops)  # (b, 3, 40, 40) each
        loss = self.loss(x1, x2)
        return loss, {"infonce": loss.item()}

    @torch.no_grad()
    def views(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.policy is None:
            raise ValueError("MoCoV3 was built without an augmentation policy")
        v1 = (self.policy(crops).clamp_(0, 1) - self.mean) / self.std
        v2 = (self.policy2(crops).clamp_(0, 1) - self.mean) / self.std
        return v1, v2

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE loss of two views, each (b, 3, 40, 40)."""
        q1 = self.predictor(self.projector(self.encoder(x1)))  # (b, dim)
        q2 = self.predictor(self.projector(self.encoder(x2)))
        with torch.no_grad():
            k1 = self.momentum_projector(self.momentum_encoder(x1))  # (b, dim)
            k2 = self.momentum_projector(self.momentum_encoder(x2))
        return symmetric_infonce(q1, q2, k1, k2, self.temperature)


def momentum_at(step: float, total: float, base: float = 0.99) -> float:
    """Cosine momentum schedule from ``base`` at step 0 to 1 at ``total``."""
    return 1 - (1 - base) * (math.cos(math.pi * step / max(total, 1)) + 1) / 2


def lr_at(step: float, total: int, peak: float, warmup: int) -> float:
    """Linear warmup to ``peak``, then cosine decay to 0."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return peak * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
