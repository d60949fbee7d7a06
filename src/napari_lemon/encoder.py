"""The LEMON nucleus encoder: a ViT-S/8 on 40x40 crops, and inference with it.

One definition serves the plugin and ``lemon_training``, so that a trained checkpoint
and the plugin cannot disagree about architecture or preprocessing.

The architecture is the MoCo v3 ViT-Small (Chen, Xie and He, "An Empirical Study of
Training Self-Supervised Vision Transformers", ICCV 2021; reference code
facebookresearch/moco-v3, ``vits.py``): embed dim 384, depth 12, **12 heads** (timm's
``vit_small`` uses 6: same tensor shapes, a different network), patch 8, a class token
and a fixed 2-D sin-cos position embedding.

Weights files are read and written by :mod:`napari_lemon.checkpoint`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)


# ImageNet statistics: only a fallback when a card or mean_std.json gives none
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CheckpointError(ValueError):
    """A weights file that does not fit the encoder, with what to do about it."""


@dataclass
class EncoderCard:
    """What a checkpoint is: architecture, preprocessing, provenance and results.

    Stored as JSON beside the safetensors file with the same stem.
    """

    architecture: str = "vit_small_moco"
    patch_size: int = 8
    img_size: int = 40
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 12
    mpp: float = 0.25
    crop_size: int = 40
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    name: str = "untrained"
    training: dict[str, Any] = field(default_factory=dict)
    benchmarks: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderCard:
        known = {f for f in cls.__dataclass_fields__}
        card = cls(**{k: v for k, v in data.items() if k in known})
        card.mean = tuple(float(v) for v in card.mean)  # type: ignore[assignment]
        card.std = tuple(float(v) for v in card.std)  # type: ignore[assignment]
        return card

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ARCHITECTURES = {
    "vit_small_moco": dict(embed_dim=384, depth=12, num_heads=12),
    "vit_base_moco": dict(embed_dim=768, depth=12, num_heads=12),
}


def sincos_position_embedding(
    grid_size: int, embed_dim: int, temperature: float = 10000.0
) -> np.ndarray:
    """Fixed 2-D sin-cos position embedding with a zero row for the class token.

    Each quarter of the channels holds sin or cos of the column or row index at
    geometrically spaced frequencies, as in MoCo v3.

    Returns
    -------
    ndarray of shape (1, 1 + grid_size**2, embed_dim), float32
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim={embed_dim!r} must be divisible by 4")
    quarter = embed_dim // 4
    omega = 1.0 / temperature ** (np.arange(quarter, dtype=np.float64) / quarter)

    # tokens are ordered row by row; as in MoCo v3 the first half of the channels
    # encodes the slow (row) index and the second half the fast (column) index
    rows, cols = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")
    out_slow = rows.reshape(-1, 1) * omega[None]
    out_fast = cols.reshape(-1, 1) * omega[None]

    table = np.concatenate(
        [np.sin(out_slow), np.cos(out_slow), np.sin(out_fast), np.cos(out_fast)],
        axis=1,
    )
    table = np.concatenate([np.zeros((1, embed_dim)), table], axis=0)
    return table[None].astype(np.float32)


def create_vit(
    card: EncoderCard | None = None, weight_init: str = ""
) -> torch.nn.Module:
    """Build the encoder network described by ``card`` (default: LEMON ViT-S/8).

    The output of ``model(x)`` for ``x`` of shape (n, 3, 40, 40) is the class token
    after the final norm, shape (n, embed_dim).

    ``weight_init`` is timm's: ``""`` (its default random init) for training,
    ``"skip"`` when a checkpoint will overwrite every weight (3-4 s faster).
    """
    import torch
    from timm.models.vision_transformer import VisionTransformer

    card = card or EncoderCard()
    if card.architecture not in ARCHITECTURES:
        raise CheckpointError(
            f"architecture={card.architecture!r} is not known; "
            f"choose one of {sorted(ARCHITECTURES)}"
        )
    if card.img_size % card.patch_size:
        raise CheckpointError(
            f"img_size={card.img_size} is not a multiple of patch_size="
            f"{card.patch_size}"
        )

    model = VisionTransformer(
        img_size=card.img_size,
        patch_size=card.patch_size,
        embed_dim=card.embed_dim,
        depth=card.depth,
        num_heads=card.num_heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        num_classes=0,
        global_pool="token",
        class_token=True,
        weight_init=weight_init,
    )

    # the position embedding is fixed, not learned (MoCo v3)
    grid = card.img_size // card.patch_size
    table = sincos_position_embedding(grid, card.embed_dim)
    with torch.no_grad():
        model.pos_embed.copy_(torch.from_numpy(table))
    model.pos_embed.requires_grad_(False)
    return model


def select_device(device: str = "auto") -> str:
    """Resolve ``"auto"`` to the best available device: cuda > mps > cpu."""
    import torch

    valid = ("auto", "cpu", "cuda", "mps")
    if device not in valid and not device.startswith("cuda:"):
        raise ValueError(f"device={device!r} is not one of {valid}")
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA GPU is available; use 'cpu'")
    return device


# crops per forward pass on the CPU: the best of the sweep in
# benchmarks/embedding_speed.py for every precision (at 256 fp32 lost 20%, int8 37%
# and bf16 12%: the activations leave the caches)
CPU_BATCH = 128
# on CUDA: this share of the free memory, at the bytes per crop measured on a
# probe batch, at most CUDA_MAX_BATCH crops (more only delays progress reports)
CUDA_MEMORY_SHARE = 0.5
CUDA_MAX_BATCH = 4096
PROBE_BATCH = 64


class Encoder:
    """A loaded encoder: network, card, device and precision, ready to embed crops.

    Parameters
    ----------
    model : torch.nn.Module
        Network built by :func:`create_vit` with its weights loaded.
    card : EncoderCard
        Architecture, preprocessing and provenance of the weights.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
    precision : str
        ``"auto"``, ``"fp32"``, ``"bf16"``, ``"int8"`` (CPU only) or ``"fp16"``
        (CUDA only); see :mod:`napari_lemon.precision`.

    Attributes
    ----------
    precision : str
        The resolved precision (never ``"auto"``), for provenance.
    model : torch.nn.Module
        The fp32 network (its weights identify the encoder).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        card: EncoderCard,
        device: str = "auto",
        precision: str = "auto",
    ):
        from .precision import inference_network, resolve_precision

        self.card = card
        self.device = select_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.model = model.eval().to(self.device)
        self._network = inference_network(self.model, self.precision)
        self._max_batch: int | None = None  # lowered after a CUDA out-of-memory
        self._bytes_per_crop: float | None = None

    @property
    def embed_dim(self) -> int:
        return self.card.embed_dim

    def preprocess(self, crops: np.ndarray) -> torch.Tensor:
        """uint8 crops (n, h, w, 3) -> normalised float tensor (n, 3, h, w)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(crops))
        if self.device.startswith("cuda"):  # uint8 over the bus, asynchronously
            x = x.pin_memory().to(self.device, non_blocking=True)
        x = x.to(self.device).permute(0, 3, 1, 2).float()
        mean = torch.tensor(self.card.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.card.std, device=self.device).view(1, 3, 1, 1)
        return x.div_(255.0).sub_(mean).div_(std)

    def default_batch_size(self) -> int:
        """Crops per forward pass for this device and precision.

        CUDA: :data:`CUDA_MEMORY_SHARE` of the free memory over the bytes one crop
        takes (measured once on a probe batch), 1 to :data:`CUDA_MAX_BATCH`.
        CPU and MPS: :data:`CPU_BATCH`, the best measured on the CPU.
        """
        if not self.device.startswith("cuda"):
            return CPU_BATCH
        import torch

        free, _ = torch.cuda.mem_get_info(self.device)
        fits = int(free * CUDA_MEMORY_SHARE // self._cuda_bytes_per_crop())
        return max(1, min(fits, CUDA_MAX_BATCH, self._max_batch or CUDA_MAX_BATCH))

    def _cuda_bytes_per_crop(self) -> float:
        """Peak CUDA memory of one crop's forward pass, measured on a probe batch."""
        if self._bytes_per_crop is None:
            import torch

            from .precision import autocast

            size = self.card.crop_size
            probe = np.zeros((PROBE_BATCH, size, size, 3), np.uint8)
            torch.cuda.synchronize(self.device)
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            with torch.inference_mode(), autocast(self.precision, self.device):
                self._forward(probe)
            peak = torch.cuda.max_memory_allocated(self.device) - before
            self._bytes_per_crop = max(peak / PROBE_BATCH, 1.0)
        return self._bytes_per_crop

    def _forward(self, crops: np.ndarray) -> np.ndarray:
        """One forward pass: uint8 (n, h, w, 3) -> float32 (n, embed_dim)."""
        y = self._network(self.preprocess(crops))
        return y.float().cpu().numpy()

    def embed(
        self,
        crops: np.ndarray,
        batch_size: int | None = None,
        progress: Callable[[Iterable], Iterable] | None = None,
    ) -> np.ndarray:
        """Embed nucleus crops.

        Parameters
        ----------
        crops : ndarray of shape (n, crop_size, crop_size, 3), uint8
            Crops at the card's mpp, as made by :func:`napari_lemon.crops.crop_nuclei`.
        batch_size : int, optional
            Crops per forward pass; None: :meth:`default_batch_size`. On a CUDA
            out-of-memory the batch halves and the pass is retried.
        progress : callable, optional
            Wraps the iterable of batches (``tqdm``, ``napari.utils.progress``); the
            caller can stop between batches by breaking out of it.

        Returns
        -------
        ndarray of shape (n, embed_dim), float32
        """
        import torch

        from .precision import autocast

        size = self.card.crop_size
        if crops.ndim != 4 or crops.shape[1:] != (size, size, 3):
            raise ValueError(
                f"crops have shape {crops.shape}; expected (n, {size}, {size}, 3)"
            )
        if batch_size is not None and (
            isinstance(batch_size, bool)
            or not isinstance(batch_size, int | np.integer)
            or batch_size < 1
        ):
            raise ValueError(
                f"batch_size={batch_size!r} must be a positive whole number of crops, "
                "or None to choose it from the device"
            )
        batch_size = int(batch_size or self.default_batch_size())
        out = np.empty((len(crops), self.embed_dim), dtype=np.float32)
        starts = range(0, len(crops), batch_size)
        if progress is not None:
            starts = progress(starts)

        with torch.inference_mode(), autocast(self.precision, self.device):
            for start in starts:
                chunk = crops[start : start + batch_size]
                out[start : start + len(chunk)] = self._embed_backing_off(chunk)
        return out

    def _embed_backing_off(self, crops: np.ndarray) -> np.ndarray:
        """Embed ``crops`` in passes that halve after each out-of-memory error."""
        import torch

        out = np.empty((len(crops), self.embed_dim), dtype=np.float32)
        done = 0
        while done < len(crops):
            step = min(len(crops) - done, self._max_batch or len(crops))
            try:
                out[done : done + step] = self._forward(crops[done : done + step])
            except torch.cuda.OutOfMemoryError as err:
                self._back_off(step, err)
                continue
            done += step
        return out

    def _back_off(self, step: int, err: Exception) -> None:
        """Halve the largest batch after an out-of-memory error at ``step`` crops."""
        import torch

        if step <= 1:
            raise torch.cuda.OutOfMemoryError(
                f"the encoder ran out of GPU memory on {self.device} with a single "
                "crop; free GPU memory (other processes) or use device='cpu'"
            ) from err
        if self._max_batch is None:
            warnings.warn(
                f"out of GPU memory at {step} crops per batch on {self.device}; "
                "halving the batch and retrying (pass a smaller batch_size to "
                "avoid the retries)",
                stacklevel=4,
            )
        self._max_batch = step // 2
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
