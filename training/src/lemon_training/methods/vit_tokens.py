"""Run the plugin's ViT on crops of any patch-multiple size, with masked patches.

The plugin's encoder (:func:`napari_lemon.encoder.create_vit`) is a timm
``VisionTransformer`` built for 40x40 crops, with a fixed 2-D sin-cos position
embedding for its 5x5 grid of 8x8 patches. DINOv2-style training also feeds it
small local crops (e.g. 16x16: a 2x2 grid) and global crops whose patches are
partly replaced by a learned mask token (iBOT: Zhou et al., "iBOT: Image BERT
Pre-Training with Online Tokenizer", ICLR 2022). timm's own ``forward`` refuses
other sizes, so :func:`vit_tokens` runs the same layers step by step.

Position embedding of another grid
----------------------------------
For a grid of ``g x g`` patches we build the sin-cos table of that grid with
:func:`napari_lemon.encoder.sincos_position_embedding` rather than interpolating
the 5x5 table:

- it is exactly the table the plugin would build for a ``g * patch`` crop, so
  neighbouring patches are always one position step apart, as in the full crop;
- bilinear interpolation of a sin-cos table is not a sin-cos table: the fast
  frequencies lose amplitude and phase, which a learned table (DINOv2's case,
  where interpolation is the only option) would not suffer from in the same way;
- for the full grid the built table equals the model's own, so a 40x40 crop goes
  through exactly what ``vit(x)`` computes.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from torch import nn

from napari_lemon.encoder import sincos_position_embedding


@lru_cache(maxsize=16)
def _sincos_table(grid: int, embed_dim: int) -> np.ndarray:
    return sincos_position_embedding(grid, embed_dim)


def patch_grid(vit: nn.Module, size: int) -> int:
    """Side of the patch grid of a ``size x size`` crop, checked.

    Raises
    ------
    ValueError
        When ``size`` is not a positive multiple of the patch size.
    """
    patch = vit.patch_embed.patch_size[0]
    if size <= 0 or size % patch:
        raise ValueError(
            f"crop size={size!r} px is not a positive multiple of the patch size "
            f"{patch}; resize the crops to e.g. {patch * max(size // patch, 1)} px"
        )
    return size // patch


def position_embedding(vit: nn.Module, grid: int) -> torch.Tensor:
    """Position table for a ``grid x grid`` patch grid plus the class token.

    Returns
    -------
    Tensor of shape (1, 1 + grid**2, embed_dim), on the model's device and dtype
    """
    own = vit.pos_embed
    if own.shape[1] == 1 + grid * grid:
        return own
    table = torch.from_numpy(_sincos_table(grid, own.shape[-1]))
    return table.to(device=own.device, dtype=own.dtype)


def embed_patches(
    vit: nn.Module,
    images: torch.Tensor,
    mask: torch.Tensor | None = None,
    mask_token: torch.Tensor | None = None,
) -> torch.Tensor:
    """Patch tokens with the class token and position embedding, before the blocks.

    Parameters
    ----------
    vit : timm VisionTransformer
        Built by :func:`napari_lemon.encoder.create_vit`.
    images : Tensor of shape (b, 3, s, s), float
        Normalised crops; ``s`` a multiple of the patch size.
    mask : Tensor of shape (b, g * g), bool, optional
        True where a patch is replaced by ``mask_token`` (row-major patch order).
    mask_token : Tensor of shape (1, 1, embed_dim) or (embed_dim,), optional

    Returns
    -------
    Tensor of shape (b, 1 + g * g, embed_dim)
    """
    if images.ndim != 4 or images.shape[-1] != images.shape[-2]:
        raise ValueError(
            f"images have shape {tuple(images.shape)}; expected square crops "
            "(b, 3, s, s)"
        )
    grid = patch_grid(vit, images.shape[-1])

    # patchify: (b, 3, s, s) -> (b, g * g, embed_dim)
    x = vit.patch_embed.proj(images).flatten(2).transpose(1, 2)
    x = vit.patch_embed.norm(x)
    if mask is not None:
        x = _apply_mask(x, mask, mask_token)

    # class token first, then the position table (its class row is zero)
    cls = vit.cls_token.expand(len(x), -1, -1)
    x = torch.cat([cls, x], dim=1) + position_embedding(vit, grid)
    return vit.pos_drop(x)


def _apply_mask(
    x: torch.Tensor, mask: torch.Tensor, mask_token: torch.Tensor | None
) -> torch.Tensor:
    if mask_token is None:
        raise ValueError("mask is given but mask_token=None; pass the mask token")
    if mask.shape != x.shape[:2] or mask.dtype != torch.bool:
        raise ValueError(
            f"mask has shape {tuple(mask.shape)} and dtype {mask.dtype}; expected "
            f"bool of shape {tuple(x.shape[:2])} (one flag per patch)"
        )
    token = mask_token.reshape(1, 1, -1).to(x.dtype)
    return torch.where(mask[..., None], token, x)  # (b, g * g, embed_dim)


def vit_tokens(
    vit: nn.Module,
    images: torch.Tensor,
    mask: torch.Tensor | None = None,
    mask_token: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class token and patch tokens after the final norm.

    Same parameters as :func:`embed_patches`. For a 40x40 crop without a mask
    the class token equals ``vit(images)``.

    Returns
    -------
    cls : Tensor of shape (b, embed_dim)
    patches : Tensor of shape (b, g * g, embed_dim)
    """
    x = embed_patches(vit, images, mask, mask_token)

    # the layers of timm's forward_features after the position embedding
    x = vit.norm_pre(vit.patch_drop(x))
    x = vit.norm(vit.blocks(x))
    return x[:, 0], x[:, 1:]
