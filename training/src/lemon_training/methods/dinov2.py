"""DINOv2 for 40x40 nucleus crops, and the LEMON variants of it.

Oquab et al., "DINOv2: Learning Robust Visual Features without Supervision", TMLR
2024 (reference code facebookresearch/dinov2), built on DINO (Caron et al., ICCV
2021) and iBOT (Zhou et al., ICLR 2022). LEMON (Chadoutaud et al., arXiv
2603.25802, 2026) compares three settings on nuclei, given here as presets:

- ``dinov2``: the baseline. The student sees 2 global views (40x40, with some
  patches masked) and ``n_local`` small local views (16x16 by default: the ratio
  of DINOv2's 96/224); it matches the teacher's class-token prototypes of the
  *other* global view and, from every local view, of both global views
  (local-to-global); iBOT on masked patches; KoLeo on the class tokens.
- ``dinov2-nol2g``: no local-to-global matching: local views are not made, only
  the two global-global cross-view terms remain.
- ``dinov2-nol2g-kde``: as ``dinov2-nol2g`` with the KDE regulariser
  (:mod:`lemon_training.losses.kde`, kappa 5, weight 0.05) instead of KoLeo.

Choices, where DINOv2 allows several:

- one head shared by class and patch tokens (DINOv2's default); the patch
  targets still have a centre of their own;
- teacher targets by centring (DINO, momentum 0.9) by default; DINOv2's
  Sinkhorn-Knopp with ``centering="sinkhorn"``;
- iBOT masks are random patches, not blocks: on a 5x5 grid a block mask is
  little more than a random one. Half of the global views get a mask ratio drawn
  from U(0.1, 0.5), stratified over the batch as in DINOv2;
- KoLeo and KDE act on the student's class tokens after the final norm, one
  global view at a time, summed over the two views (as DINOv2 does for KoLeo).

Not done (DINOv2 has them): stochastic depth in the student, and the optimiser
side (layer-wise learning-rate decay, a lower rate for the patch embedding),
which belongs to the trainer.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from napari_lemon.encoder import EncoderCard, create_vit

from ..losses.dino import MODES, TeacherTargets, dino_loss
from ..losses.ibot import ibot_loss, random_patch_masks
from ..losses.kde import kde_loss
from ..losses.koleo import koleo_loss
from .vit_tokens import patch_grid, vit_tokens

# random resized crop scales for the policies (DINOv2's defaults)
GLOBAL_CROP_SCALE = (0.32, 1.0)
LOCAL_CROP_SCALE = (0.05, 0.32)


@dataclass
class DINOv2Options:
    """Options of :class:`DINOv2` (the config section ``dinov2:``).

    Fractions (``teacher_temp_warmup``, ``freeze_last_layer``) are of the run,
    as passed to :meth:`DINOv2.after_step`.
    """

    out_dim: int = 4096  # prototypes (DINOv2: 65536)
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    n_local: int = 8
    local_size: int = 16  # px, a multiple of the patch size
    local_to_global: bool = True
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup: float = 0.3  # DINOv2: 30 of 100 epochs
    momentum: float = 0.992  # teacher EMA, cosine to 1
    centering: str = "center"  # or "sinkhorn"
    center_momentum: float = 0.9
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    mask_probability: float = 0.5
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    koleo_weight: float = 0.1
    kde_weight: float = 0.0
    kde_kappa: float = 5.0
    freeze_last_layer: float = 0.01  # DINOv2: 1 of 100 epochs

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> DINOv2Options:
        """Options from a config dict; unknown names are refused."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ValueError(
                f"dinov2 options {unknown!r} are not known; valid options: {known}"
            )
        opts = cls(**options)
        opts.mask_ratio = tuple(float(r) for r in opts.mask_ratio)  # type: ignore
        opts.check()
        return opts

    def check(self) -> None:
        """Raise ValueError on values that cannot train."""
        positive = ("out_dim", "hidden_dim", "bottleneck_dim", "student_temp")
        positive += ("teacher_temp", "warmup_teacher_temp", "kde_kappa")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be > 0")
        for name in ("dino_weight", "ibot_weight", "koleo_weight", "kde_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)!r} must be >= 0")
        if self.n_local < 0:
            raise ValueError(f"n_local={self.n_local!r} must be >= 0")
        if self.centering not in MODES:
            raise ValueError(
                f"centering={self.centering!r} is not known; choose one of {MODES}"
            )
        lo, hi = self.mask_ratio
        if not 0 <= lo <= hi <= 1 or not 0 <= self.mask_probability <= 1:
            raise ValueError(
                f"mask_ratio={self.mask_ratio!r}, mask_probability="
                f"{self.mask_probability!r}: need 0 <= low <= high <= 1 and a "
                "probability in [0, 1]"
            )


def _preset(**changes: Any) -> dict[str, Any]:
    # a fresh dict with a list, not a tuple, so that it dumps to plain YAML
    options = {**asdict(DINOv2Options()), **changes}
    return {**options, "mask_ratio": list(options["mask_ratio"])}


PRESETS: dict[str, dict[str, Any]] = {
    "dinov2": _preset(),
    "dinov2-nol2g": _preset(local_to_global=False, n_local=0),
    "dinov2-nol2g-kde": _preset(
        local_to_global=False,
        n_local=0,
        koleo_weight=0.0,
        kde_weight=0.05,
        kde_kappa=5.0,
    ),
}


def teacher_temp_at(
    done: float, start: float = 0.04, end: float = 0.07, warmup: float = 0.3
) -> float:
    """Teacher temperature: linear from ``start`` to ``end`` over ``warmup``."""
    if warmup <= 0 or done >= warmup:
        return end
    return start + (end - start) * max(done, 0.0) / warmup


def teacher_momentum_at(done: float, base: float = 0.992) -> float:
    """Teacher EMA momentum: cosine from ``base`` (done=0) to 1 (done=1)."""
    return 1 - (1 - base) * (math.cos(math.pi * min(max(done, 0.0), 1.0)) + 1) / 2


class DINOHead(nn.Module):
    """DINO projection head: 3-layer MLP, bottleneck, L2-normalised prototypes.

    The last layer is DINO's weight-normalised linear layer with its gain fixed
    to 1, i.e. cosine similarities between the normalised bottleneck and
    ``out_dim`` L2-normalised prototype vectors: logits in [-1, 1].
    """

    def __init__(self, in_dim: int, out_dim=4096, hidden_dim=2048, bottleneck=256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck),
        )
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck))
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: torch.Tensor, freeze_prototypes: bool = False) -> torch.Tensor:
        """(n, in_dim) -> logits (n, out_dim); no prototype gradient if frozen."""
        z = F.normalize(self.mlp(x), dim=-1)  # (n, bottleneck)
        w = self.prototypes.detach() if freeze_prototypes else self.prototypes
        return F.linear(z, F.normalize(w, dim=-1))


class DINOv2(nn.Module):
    """DINOv2 student-teacher training of the plugin's ViT on nucleus crops.

    Parameters
    ----------
    card : EncoderCard
        Architecture of the encoder (global views are ``card.img_size`` px).
    global_policy : nn.Module
        Float (b, 3, 60, 60) in 0-1 -> global views (b, 3, img_size, img_size).
    local_policy : nn.Module or None
        Same input -> local views (b, 3, local_size, local_size); needed when
        ``n_local > 0``.
    mean, std : sequence of 3 floats
        Normalisation of the views (the card's).
    **options
        :class:`DINOv2Options` fields; see also :data:`PRESETS`.
    """

    # the teacher is exported, as DINOv2 evaluates it: an average of students
    export_prefix = "teacher."

    def __init__(
        self,
        card: EncoderCard,
        global_policy: nn.Module,
        local_policy: nn.Module | None,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        **options: Any,
    ) -> None:
        super().__init__()
        self.options = opts = DINOv2Options.from_dict(options)
        self.card = card
        self._check_views(card, local_policy, opts)
        self.global_policy, self.local_policy = global_policy, local_policy
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

        # student: the plugin's ViT, a shared DINO/iBOT head and the mask token
        self.encoder = create_vit(card)
        head = (opts.out_dim, opts.hidden_dim, opts.bottleneck_dim)
        self.head = DINOHead(card.embed_dim, *head)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, card.embed_dim))

        # teacher: a copy updated only by EMA; targets with their own centres
        self.teacher = copy.deepcopy(self.encoder).requires_grad_(False)
        self.teacher_head = copy.deepcopy(self.head).requires_grad_(False)
        targets = (opts.out_dim, opts.centering, opts.center_momentum)
        self.cls_targets = TeacherTargets(*targets)
        self.patch_targets = TeacherTargets(*targets)
        self.register_buffer("done", torch.zeros(()))  # run fraction, for resume

    @staticmethod
    def _check_views(card, local_policy, opts: DINOv2Options) -> None:
        if opts.n_local and not opts.local_to_global:
            raise ValueError(
                f"n_local={opts.n_local} with local_to_global=False: local views "
                "would be made and never used; set n_local=0"
            )
        if opts.n_local and local_policy is None:
            raise ValueError(
                f"n_local={opts.n_local} but local_policy=None; pass a policy "
                f"making {opts.local_size}x{opts.local_size} views or set n_local=0"
            )
        if card.img_size % card.patch_size or opts.local_size % card.patch_size:
            raise ValueError(
                f"local_size={opts.local_size!r} and img_size={card.img_size!r} "
                f"must be multiples of the patch size {card.patch_size}"
            )

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Student encoder, head and mask token (the frozen position table left out)."""
        for module in (self.encoder, self.head):
            yield from (p for p in module.parameters() if p.requires_grad)
        yield self.mask_token

    def teacher_temp(self) -> float:
        opts = self.options
        return teacher_temp_at(
            float(self.done),
            opts.warmup_teacher_temp,
            opts.teacher_temp,
            opts.teacher_temp_warmup,
        )

    @torch.no_grad()
    def after_step(self, done: float) -> None:
        """Teacher <- EMA of the student; record the run fraction for schedules."""
        m = teacher_momentum_at(done, self.options.momentum)
        student = [*self.encoder.parameters(), *self.head.parameters()]
        teacher = [*self.teacher.parameters(), *self.teacher_head.parameters()]
        torch._foreach_lerp_(teacher, student, 1 - m)  # t <- m t + (1 - m) s
        self.done.fill_(min(max(done, 0.0), 1.0))

    @torch.no_grad()
    def make_views(self, crops: torch.Tensor):
        """Normalised global (2b, 3, G, G) and local (n_local b, 3, L, L) views."""
        if crops.ndim != 4 or crops.shape[1] != 3 or len(crops) < 2:
            raise ValueError(
                f"crops have shape {tuple(crops.shape)}; expected float (b, 3, h, w) "
                "in 0-1 with b >= 2"
            )
        n_local = self.options.n_local
        globals_ = self._views(self.global_policy, crops, 2, self.card.img_size)
        if n_local == 0:
            return globals_, None
        return globals_, self._views(
            self.local_policy, crops, n_local, self.options.local_size
        )

    def _views(self, policy: nn.Module, crops: torch.Tensor, k: int, size: int):
        """``k`` views of each crop, view-major: (k b, 3, size, size), normalised."""
        # one call on the repeated batch: every image draws its own parameters,
        # and per-call overhead (large for kornia on a CPU) is paid once
        views = policy(crops.repeat(k, 1, 1, 1))
        if views.shape[1:] != (3, size, size):
            raise ValueError(
                f"{type(policy).__name__} made views of shape {tuple(views.shape)}; "
                f"expected (b, 3, {size}, {size}): build it with out_size={size}"
            )
        return (views.clamp(0, 1) - self.mean) / self.std

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and its parts; ``crops`` float (b, 3, 60, 60) in 0-1."""
        globals_, locals_ = self.make_views(crops)  # (2b, 3, G, G), (n_local b, ...)
        masks = self._masks(globals_)  # (2b, n_patches) bool, None without iBOT
        temp = self.teacher_temp()

        # teacher targets, then the student's logits for the same tokens
        cls_targets, patch_targets = self._teacher_targets(globals_, masks, temp)
        cls, view_logits, patch_logits = self._student(globals_, locals_, masks)

        # losses, weighted
        parts = {"dino": dino_loss(view_logits, cls_targets, self.options.student_temp)}
        if masks is not None:
            parts["ibot"] = ibot_loss(
                patch_logits, patch_targets, masks, self.options.student_temp
            )
        parts.update(self._spread(cls.chunk(2)))
        total = sum(getattr(self.options, f"{k}_weight") * v for k, v in parts.items())
        log = {k: float(v.detach()) for k, v in parts.items()}
        return total, {"loss": float(total.detach()), **log, "teacher_temp": temp}

    def _masks(self, globals_: torch.Tensor) -> torch.Tensor | None:
        opts = self.options
        if opts.ibot_weight == 0:
            return None
        n_patches = patch_grid(self.encoder, globals_.shape[-1]) ** 2
        return random_patch_masks(
            len(globals_),
            n_patches,
            opts.mask_probability,
            opts.mask_ratio,
            device=globals_.device,
        )

    @torch.no_grad()
    def _teacher_targets(self, globals_, masks, temp):
        """Class targets, one (b, K) per global view; patch targets (m, K) or None."""
        cls, patches = vit_tokens(self.teacher, globals_)  # (2b, D), (2b, p, D)
        tokens = cls if masks is None else torch.cat([cls, patches[masks]])
        logits = self.teacher_head(tokens).float()  # (2b + m, K)

        cls_targets = self.cls_targets(logits[: len(cls)], temp).chunk(2)
        patch_targets = None
        if masks is not None:
            patch_targets = self.patch_targets(logits[len(cls) :], temp)
        return cls_targets, patch_targets

    def _student(self, globals_, locals_, masks):
        """Global class tokens (2b, D), view logits [(b, K)] * (2 + n_local) and
        masked-patch logits (m, K) or None, through one pass of the shared head."""
        cls, patches = vit_tokens(self.encoder, globals_, masks, self.mask_token)
        tokens = [cls]
        if locals_ is not None:
            tokens.append(vit_tokens(self.encoder, locals_)[0])  # (n_local b, D)
        n_views = sum(len(t) for t in tokens)
        if masks is not None:
            tokens.append(patches[masks])  # (m, D)

        frozen = float(self.done) < self.options.freeze_last_layer
        logits = self.head(torch.cat(tokens), freeze_prototypes=frozen).float()
        view_logits = logits[:n_views].split(len(cls) // 2)
        patch_logits = logits[n_views:] if masks is not None else None
        return cls, view_logits, patch_logits

    def _spread(self, cls_per_view) -> dict[str, torch.Tensor]:
        """KoLeo and KDE on each global view's class tokens, summed over views."""
        opts, parts = self.options, {}
        if opts.koleo_weight > 0:
            parts["koleo"] = sum(koleo_loss(c) for c in cls_per_view)
        if opts.kde_weight > 0:
            parts["kde"] = sum(kde_loss(c, opts.kde_kappa) for c in cls_per_view)
        return parts
