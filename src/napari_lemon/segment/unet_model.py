"""The U-Net segmenter's network, its card, and its weights on disk.

A U-Net (Ronneberger et al., MICCAI 2015) in plain PyTorch: double
convolutions and max-pools down, transposed convolutions and skip
concatenations up, a 1x1 head with two outputs (foreground logit, normalised
distance logit). Weights are stored as fp16 safetensors with a JSON card
beside them; loading folds each batch norm into its convolution.
How the network is used: :mod:`napari_lemon.segment.unet`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
BUNDLED = "segmenter_unet"


@dataclass
class UNetCard:
    """What a U-Net segmenter needs besides its weights.

    Attributes
    ----------
    name : str
    widths : tuple of int
        Channels at each depth, finest first; the network pools
        ``len(widths) - 1`` times.
    mpp : float
        Microns per pixel the network works at.
    mean, std : tuple of 3 float
        Normalisation of RGB values scaled to 0..1.
    training : dict
        Data, recipe and timing of the training run.
    benchmark : dict
        Scores measured after training.
    """

    name: str = "segmenter-unet"
    widths: tuple[int, ...] = (16, 32, 64, 128, 256)
    mpp: float = 0.5
    mean: tuple[float, float, float] = (0.70, 0.55, 0.72)
    std: tuple[float, float, float] = (0.18, 0.20, 0.15)
    training: dict[str, Any] = field(default_factory=dict)
    benchmark: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> UNetCard:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("widths", "mean", "std"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


@functools.cache
def _unet_class() -> type:
    """The U-Net module class, defined on first use so torch loads lazily."""
    import torch
    from torch import nn

    def double_conv(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )

    class UNet(nn.Module):
        """Encoder of double convolutions and max-pools; decoder of 2x2
        transposed convolutions, skip concatenation and double convolutions;
        a 1x1 head with two outputs (foreground logit, distance logit)."""

        def __init__(self, widths: tuple[int, ...]) -> None:
            super().__init__()
            ins = (3,) + tuple(widths[:-1])
            self.down = nn.ModuleList(
                double_conv(i, o) for i, o in zip(ins, widths, strict=True)
            )
            pairs = list(zip(widths[:0:-1], widths[-2::-1], strict=True))
            self.up = nn.ModuleList(nn.ConvTranspose2d(i, o, 2, 2) for i, o in pairs)
            self.merge = nn.ModuleList(double_conv(2 * o, o) for _, o in pairs)
            self.head = nn.Conv2d(widths[0], 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # (n, 3, h, w) -> (n, 2, h, w); h and w divisible by 2 ** (depth - 1)
            skips = []
            for i, block in enumerate(self.down):
                x = block(x if i == 0 else nn.functional.max_pool2d(x, 2))
                skips.append(x)
            for up, merge, skip in zip(self.up, self.merge, skips[-2::-1], strict=True):
                x = merge(torch.cat([skip, up(x)], dim=1))
            return self.head(x)

    return UNet


def create_unet(card: UNetCard | None = None) -> torch.nn.Module:
    """Build the network described by ``card``, randomly initialised.

    ``model(x)`` maps normalised RGB of shape (n, 3, h, w), float32, with h and w
    multiples of ``2 ** (len(card.widths) - 1)``, to logits (n, 2, h, w):
    foreground, then normalised distance.
    """
    card = card or UNetCard()
    if len(card.widths) < 2 or min(card.widths) < 1:
        raise ValueError(
            f"widths={card.widths!r} must list at least two positive channel counts"
        )
    return _unet_class()(tuple(card.widths))


def save_unet(model: torch.nn.Module, card: UNetCard, path: str | Path) -> Path:
    """Write ``model`` as fp16 safetensors and ``card`` as JSON beside it.

    Returns the path of the safetensors file.
    """
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    state = {
        k: (v.half() if v.is_floating_point() else v).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    save_file(state, str(path))
    path.with_suffix(".json").write_text(json.dumps(asdict(card), indent=2) + "\n")
    return path


def load_unet(
    weights: str | Path = "bundled", device: str = "cpu"
) -> tuple[torch.nn.Module, UNetCard]:
    """Load a U-Net segmenter (in eval mode, float32) and its card.

    Parameters
    ----------
    weights : str or Path
        ``"bundled"`` or a ``.safetensors`` path with its ``.json`` card beside it.
    device : str
        A torch device string.
    """
    path = WEIGHTS_DIR / f"{BUNDLED}.safetensors" if weights == "bundled" else weights
    return _load_cached(str(Path(path).resolve()), device)


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, device: str) -> tuple[torch.nn.Module, UNetCard]:
    import torch
    from safetensors.torch import load_file

    weights, card_path = Path(path), Path(path).with_suffix(".json")
    if weights.suffix != ".safetensors" or not weights.is_file():
        raise FileNotFoundError(
            f"weights={str(weights)!r} is not a .safetensors file; pass 'bundled' or "
            "the path of U-Net weights saved by save_unet"
        )
    if not card_path.is_file():
        raise FileNotFoundError(
            f"{card_path.name} not found beside {weights.name}: the U-Net needs its "
            "JSON card (written by save_unet)"
        )
    card = UNetCard.from_dict(json.loads(card_path.read_text()))
    model = create_unet(card)
    state = {k: v.float() for k, v in load_file(str(weights)).items()}
    model.load_state_dict(state)
    # NOTE: channels-last runs about 1.5x faster on CPU (oneDNN) than NCHW
    model = _fold_batch_norm(model.eval())
    return model.to(device, memory_format=torch.channels_last), card


def _fold_batch_norm(model: torch.nn.Module) -> torch.nn.Module:
    """Fold each eval-mode batch norm into the convolution before it."""
    from torch import nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for block in model.modules():
        if not isinstance(block, nn.Sequential):
            continue
        for i in range(len(block) - 1):
            conv, norm = block[i], block[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                block[i], block[i + 1] = fuse_conv_bn_eval(conv, norm), nn.Identity()
    return model
