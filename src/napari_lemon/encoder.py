"""The LEMON nucleus encoder: a ViT-S/8 on 40x40 crops, and its checkpoints.

One definition serves the plugin and ``lemon_training``, so that a trained checkpoint
and the plugin cannot disagree about architecture or preprocessing.

The architecture is the MoCo v3 ViT-Small (Chen, Xie and He, "An Empirical Study of
Training Self-Supervised Vision Transformers", ICCV 2021; reference code
facebookresearch/moco-v3, ``vits.py``): embed dim 384, depth 12, **12 heads** (timm's
``vit_small`` uses 6: same tensor shapes, a different network), patch 8, a class token
and a fixed 2-D sin-cos position embedding.

Three kinds of weights load into it:

- the bundled encoder, ``weights/lemon_bundled.safetensors`` + ``.json`` card;
- any checkpoint exported by ``lemon_training`` (the same two-file layout);
- the official LEMON MoCo v3 checkpoint ``lemon.pth.tar`` (``state_dict`` keys
  ``module.base_encoder.*``) with its ``mean_std.json``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).parent / "weights"
BUNDLED_NAME = "lemon_bundled"
OFFICIAL_PREFIX = "module.base_encoder."
OFFICIAL_CHECKPOINT = "lemon.pth.tar"
OFFICIAL_MEAN_STD = "mean_std.json"
OFFICIAL_HUB_ID = "aliceblondel/LEMON"  # Chadoutaud et al., arXiv:2603.25802

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


class Encoder:
    """A loaded encoder: network, card and device, ready to embed crops.

    Parameters
    ----------
    model : torch.nn.Module
        Network built by :func:`create_vit` with its weights loaded.
    card : EncoderCard
        Architecture, preprocessing and provenance of the weights.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
    """

    def __init__(self, model: torch.nn.Module, card: EncoderCard, device="auto"):
        self.card = card
        self.device = select_device(device)
        self.model = model.eval().to(self.device)

    @property
    def embed_dim(self) -> int:
        return self.card.embed_dim

    def preprocess(self, crops: np.ndarray) -> torch.Tensor:
        """uint8 crops (n, h, w, 3) -> normalised float tensor (n, 3, h, w)."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(crops)).to(self.device)
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        mean = torch.tensor(self.card.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.card.std, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def embed(
        self,
        crops: np.ndarray,
        batch_size: int = 256,
        progress: Callable[[Iterable], Iterable] | None = None,
    ) -> np.ndarray:
        """Embed nucleus crops.

        Parameters
        ----------
        crops : ndarray of shape (n, crop_size, crop_size, 3), uint8
            Crops at the card's mpp, as made by :func:`napari_lemon.crops.crop_nuclei`.
        batch_size : int
            Crops per forward pass.
        progress : callable, optional
            Wraps the iterable of batches (``tqdm``, ``napari.utils.progress``); the
            caller can stop between batches by breaking out of it.

        Returns
        -------
        ndarray of shape (n, embed_dim), float32
        """
        import torch

        size = self.card.crop_size
        if crops.ndim != 4 or crops.shape[1:] != (size, size, 3):
            raise ValueError(
                f"crops have shape {crops.shape}; expected (n, {size}, {size}, 3)"
            )
        out = np.empty((len(crops), self.embed_dim), dtype=np.float32)
        starts = range(0, len(crops), batch_size)
        if progress is not None:
            starts = progress(starts)

        use_half = self.device.startswith("cuda")
        with torch.inference_mode():
            for start in starts:
                x = self.preprocess(crops[start : start + batch_size])
                with torch.autocast("cuda", dtype=torch.float16, enabled=use_half):
                    y = self.model(x)
                out[start : start + len(x)] = y.float().cpu().numpy()
        return out


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_checkpoint(
    model: torch.nn.Module, card: EncoderCard, path: str | Path, half: bool = True
) -> Path:
    """Write ``model`` as safetensors (fp16 by default) plus its JSON card.

    The card's ``sha256`` is filled in with the hash of the weights file.
    Returns the path of the safetensors file.
    """
    import torch
    from safetensors.torch import save_file

    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    dtype = torch.float16 if half else torch.float32
    tensors = {
        k: v.detach().to("cpu", dtype).contiguous()
        for k, v in model.state_dict().items()
        if not k.startswith("head.")
    }
    save_file(tensors, str(path), metadata={"architecture": card.architecture})

    card.sha256 = file_sha256(path)
    path.with_suffix(".json").write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    return path


def _load_into(model: torch.nn.Module, state: dict, source: Path) -> None:
    """Load ``state`` strictly into ``model``, explaining a mismatch."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or wrong:
        details = "; ".join(
            part
            for part in (
                f"missing {missing[:3]}" if missing else "",
                f"unexpected {unexpected[:3]}" if unexpected else "",
                f"shape mismatch {wrong[:2]}" if wrong else "",
            )
            if part
        )
        raise CheckpointError(
            f"weights in {source} do not fit a LEMON ViT ({details}); pass a "
            f"checkpoint exported by lemon-train or the official {OFFICIAL_CHECKPOINT}"
        )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


def load_safetensors(path: str | Path, device: str = "auto") -> Encoder:
    """Load a checkpoint in the plugin's layout: safetensors + JSON card."""
    from safetensors.torch import load_file

    path = Path(path)
    card_path = path.with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights {path} do not exist")
    if not card_path.is_file():
        raise CheckpointError(
            f"{path} has no card {card_path.name} beside it; the card records the "
            "architecture and preprocessing, export with `lemon-train export`"
        )

    card = EncoderCard.from_dict(json.loads(card_path.read_text()))
    expected_heads = ARCHITECTURES.get(card.architecture, {}).get("num_heads")
    if expected_heads is not None and card.num_heads != expected_heads:
        raise CheckpointError(
            f"card {card_path} says num_heads={card.num_heads} but "
            f"{card.architecture!r} has {expected_heads}; the weights would be "
            "misread. Re-export the checkpoint with lemon-train"
        )
    if card.sha256 and card.sha256 != file_sha256(path):
        warnings.warn(
            f"{path.name}: sha256 differs from its card; the file changed after export",
            stacklevel=2,
        )

    model = create_vit(card, weight_init="skip")
    state = {k: v for k, v in load_file(str(path)).items() if not k.startswith("head")}
    _load_into(model, state, path)
    return Encoder(model, card, device)


def read_mean_std(path: str | Path) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Read normalisation statistics from a LEMON ``mean_std.json``.

    Accepts ``{"mean": [...], "std": [...]}`` in 0-1 or 0-255 units.
    """
    data = json.loads(Path(path).read_text())
    try:
        mean = [float(v) for v in data["mean"]]
        std = [float(v) for v in data["std"]]
    except (KeyError, TypeError) as err:
        raise CheckpointError(
            f"{path}: expected keys 'mean' and 'std' with three numbers each, "
            f"got {data!r}"
        ) from err
    if len(mean) != 3 or len(std) != 3:
        raise CheckpointError(f"{path}: mean and std need 3 values, got {data!r}")
    if max(mean) > 1.0:  # stored in 0-255 units
        mean, std = [m / 255 for m in mean], [s / 255 for s in std]
    return tuple(mean), tuple(std)


def load_official(
    checkpoint: str | Path, mean_std: str | Path | None = None, device: str = "auto"
) -> Encoder:
    """Load the official LEMON MoCo v3 checkpoint (``lemon.pth.tar``).

    Keys ``module.base_encoder.*`` are the ViT; the MoCo projector head and the
    momentum encoder are dropped. ``mean_std.json`` beside the checkpoint (or
    given) sets the normalisation.
    """
    import torch

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} does not exist")
    try:
        raw = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(
            f"{checkpoint} is not a readable PyTorch checkpoint ({err}); download "
            f"{OFFICIAL_CHECKPOINT} again"
        ) from err
    state = raw.get("state_dict", raw) if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{checkpoint} holds no state_dict")

    # keep the base encoder, drop its MoCo head
    encoder_state = {
        k[len(OFFICIAL_PREFIX) :]: v
        for k, v in state.items()
        if k.startswith(OFFICIAL_PREFIX)
        and not k[len(OFFICIAL_PREFIX) :].startswith("head")
    }
    if not encoder_state:
        some = sorted(state)[:3]
        raise CheckpointError(
            f"{checkpoint} has no '{OFFICIAL_PREFIX}*' keys (found {some}); it is not "
            "a MoCo v3 LEMON checkpoint"
        )

    mean_std = Path(mean_std) if mean_std else checkpoint.with_name(OFFICIAL_MEAN_STD)
    card = EncoderCard(name="lemon-official", training={"source": str(checkpoint.name)})
    if mean_std.is_file():
        card.mean, card.std = read_mean_std(mean_std)
    else:
        warnings.warn(
            f"no {OFFICIAL_MEAN_STD} beside {checkpoint}; using ImageNet mean/std, "
            "which shifts the embeddings. Put the official file beside it",
            stacklevel=2,
        )
    card.sha256 = file_sha256(checkpoint)

    model = create_vit(card, weight_init="skip")
    _load_into(model, encoder_state, checkpoint)
    return Encoder(model, card, device)


def load_from_hub(repo_id: str, device: str = "auto") -> Encoder:
    """Download ``lemon.pth.tar`` and ``mean_std.json`` from a model-hub repo."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as err:
        raise CheckpointError(
            f"model={repo_id!r} looks like a hub id but huggingface_hub is not "
            "installed; `pip install huggingface_hub`, or download "
            f"{OFFICIAL_CHECKPOINT} and pass its path"
        ) from err
    try:
        ckpt = hf_hub_download(repo_id, OFFICIAL_CHECKPOINT)
        stats = hf_hub_download(repo_id, OFFICIAL_MEAN_STD)
    except Exception as err:
        raise CheckpointError(
            f"could not download {OFFICIAL_CHECKPOINT} from {repo_id!r} ({err}); "
            "download it by hand and pass its local path"
        ) from err
    return load_official(ckpt, stats, device)


def load_encoder(model: str | Path = "bundled", device: str = "auto") -> Encoder:
    """Load an encoder by name, path or hub id.

    Parameters
    ----------
    model : str or Path
        ``"bundled"``; ``"official"`` (the LEMON release on the model hub); a
        ``.safetensors`` file with its card; a ``lemon.pth.tar`` (or a folder
        holding it and ``mean_std.json``); or an ``"org/name"`` hub id.
    device : str
        ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda"`` or ``"mps"``.
    """
    if str(model) == "official":
        return load_from_hub(OFFICIAL_HUB_ID, device)
    if str(model) == "bundled":
        path = WEIGHTS_DIR / f"{BUNDLED_NAME}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(
                f"bundled weights {path.name} are missing from the installed package; "
                "reinstall napari-lemon"
            )
        return load_safetensors(path, device)

    path = Path(model)
    if path.is_dir() and (path / OFFICIAL_CHECKPOINT).is_file():
        return load_official(path / OFFICIAL_CHECKPOINT, device=device)
    if path.suffix == ".safetensors":
        return load_safetensors(path, device)
    if path.is_file() and path.suffix == ".json":
        return load_safetensors(path.with_suffix(".safetensors"), device)
    if path.is_file():
        return load_official(path, device=device)
    if not path.exists() and str(model).count("/") == 1 and not path.suffix:
        return load_from_hub(str(model), device)
    raise FileNotFoundError(
        f"model={str(model)!r} is neither 'bundled', 'official', a weights file "
        "(.safetensors with its .json card, or lemon.pth.tar), nor an 'org/name' "
        "hub id"
    )
