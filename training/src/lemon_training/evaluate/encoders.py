"""Feature extractors compared by the benchmark, each named by a spec string.

=============================  ==================================================
spec                           what
=============================  ==================================================
``bundled``                    the plugin's bundled LEMON encoder
``official``                   the official LEMON release, from the model hub
``PATH``                       a ``.safetensors`` checkpoint with its JSON card
                               (as ``lemon-train export`` writes), or a
                               ``lemon.pth.tar`` / a folder holding it
``random``                     the LEMON ViT-S/8, randomly initialised (seeded)
``handcrafted``                shape, colour and texture of the segmented nucleus
                               (:mod:`napari_lemon.handcrafted`)
``timm:NAME:WEIGHTS``          any timm model with a local weights file; the
                               crop is resized to the model's input size and
                               normalised with its statistics; pooled features
=============================  ==================================================

Every extractor sees the same crops: ``crop_size`` pixels at ``mpp`` around each
nucleus (40 x 40 at 0.25 um/px unless a checkpoint's card says otherwise).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger("lemon_training")

Progress = Callable[[Iterable], Iterable] | None
KINDS = ("bundled", "official", "random", "handcrafted", "timm:NAME:WEIGHTS", "PATH")


class EncoderUnavailable(RuntimeError):
    """An encoder that cannot be loaded here (e.g. offline); the table skips it."""


@dataclass
class ProbeEncoder:
    """A named feature extractor for nucleus crops.

    Attributes
    ----------
    name : str
        Row name in the benchmark table.
    key : str
        Identity of the weights (sha256 prefix) or of the method: the cache key.
    crop_size, mpp : int, float
        The crops it expects: ``crop_size`` pixels a side at ``mpp``.
    embed : callable
        ``embed(crops, progress)``: uint8 ``(n, crop_size, crop_size, 3)`` ->
        float32 ``(n, dim)``; ``progress`` wraps the iterable of batches.
    """

    name: str
    key: str
    crop_size: int
    mpp: float
    embed: Callable[[np.ndarray, Progress], np.ndarray]


def _from_lemon(name: str, encoder, batch_size: int) -> ProbeEncoder:
    """Wrap a :class:`napari_lemon.encoder.Encoder`."""
    card = encoder.card
    key = weights_key(encoder)

    def embed(crops: np.ndarray, progress: Progress = None) -> np.ndarray:
        return encoder.embed(crops, batch_size=batch_size, progress=progress)

    return ProbeEncoder(name, key, card.crop_size, card.mpp, embed)


def weights_key(encoder) -> str:
    """Hash of what an encoder computes: its weights and its preprocessing.

    Hashing the loaded tensors, not a file name or the card's recorded sha256,
    means a replaced weights file or other normalisation statistics can never
    reuse stale embeddings; the arithmetic (fp32, bf16, ...) is part of the key.
    """
    card, precision = encoder.card, getattr(encoder, "precision", "fp32")
    digest = hashlib.sha256(
        repr((card.mean, card.std, card.mpp, card.crop_size, precision)).encode()
    )
    for name, tensor in sorted(encoder.model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def random_encoder(seed: int = 0, device: str = "cpu", batch_size: int = 256):
    """The LEMON architecture with seeded random weights."""
    import torch

    from napari_lemon.encoder import Encoder, EncoderCard, create_vit

    torch.manual_seed(seed)
    card = EncoderCard(name=f"random-init-seed{seed}")
    encoder = Encoder(create_vit(card), card, device)
    wrapped = _from_lemon("random", encoder, batch_size)
    wrapped.key = f"random-{card.architecture}-seed{seed}"
    return wrapped


def handcrafted_encoder(mpp: float = 0.25, crop_size: int = 40) -> ProbeEncoder:
    """Shape, colour and texture features of the nucleus in each crop."""
    from napari_lemon import handcrafted

    # the module's source is the key: any change to the features recomputes them
    source = Path(handcrafted.__file__).read_bytes()
    key = "handcrafted-" + hashlib.sha256(source).hexdigest()[:8]

    def embed(crops: np.ndarray, progress: Progress = None) -> np.ndarray:
        table = handcrafted.nucleus_features(crops, mpp=mpp, progress=progress)
        return table.to_numpy(np.float32)

    return ProbeEncoder("handcrafted", key, crop_size, mpp, embed)


def timm_encoder(
    name: str,
    weights: str | Path,
    device: str = "cpu",
    batch_size: int = 256,
    mpp: float = 0.25,
    crop_size: int = 40,
) -> ProbeEncoder:
    """A timm model with local weights; crops resized to its input size."""
    import timm
    import torch
    import torch.nn.functional as F

    from napari_lemon.checkpoint import file_sha256
    from napari_lemon.encoder import select_device

    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(
            f"timm weights {str(weights)!r} do not exist; give a local file, e.g. "
            "timm:resnet18:resnet18.safetensors"
        )
    try:
        model = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as err:  # timm's "Unknown model"
        raise ValueError(f"timm model {name!r} is unknown ({err})") from err
    _load_timm_weights(model, weights)

    device = select_device(device)
    model = model.eval().to(device)
    config = timm.data.resolve_data_config({}, model=model)
    size = tuple(config["input_size"][1:])
    mean = torch.tensor(config["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(config["std"], device=device).view(1, 3, 1, 1)
    mode = "bicubic" if config.get("interpolation") == "bicubic" else "bilinear"

    def embed(crops: np.ndarray, progress: Progress = None) -> np.ndarray:
        starts = range(0, len(crops), batch_size)
        parts = []
        with torch.inference_mode():
            for start in progress(starts) if progress else starts:
                batch = np.ascontiguousarray(crops[start : start + batch_size])
                x = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2)
                x = F.interpolate(x.float().div_(255.0), size=size, mode=mode)
                parts.append(model((x - mean) / std).float().cpu().numpy())
        return np.concatenate(parts) if parts else np.empty((0, model.num_features))

    key = f"timm-{name}-{file_sha256(weights)[:16]}"
    return ProbeEncoder(f"timm:{name}", key, crop_size, mpp, embed)


def _load_timm_weights(model, weights: Path) -> None:
    """Load a timm state dict strictly, without the classifier."""
    from timm.models import load_state_dict

    from napari_lemon.encoder import CheckpointError

    try:
        state = load_state_dict(str(weights))
    except Exception as err:  # pickle, zip or safetensors header errors
        raise CheckpointError(
            f"{weights} is not a readable weights file ({type(err).__name__}: {err}); "
            "pass a .safetensors or .pth state dict saved for the timm model"
        ) from err
    classifier = model.pretrained_cfg.get("classifier") or "head"
    names = classifier if isinstance(classifier, list | tuple) else [classifier]
    state = {
        k: v for k, v in state.items() if not any(k.startswith(n + ".") for n in names)
    }
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[:2]
        raise CheckpointError(
            f"weights {weights.name} do not fit timm model "
            f"{model.default_cfg.get('architecture')!r}: {' '.join(first)[:300]}; "
            "pass the weights file made for that model name"
        ) from err


def create_probe_encoder(
    spec: str, device: str = "cpu", seed: int = 0, batch_size: int = 256
) -> ProbeEncoder:
    """Build the extractor a spec string names (see the module docstring).

    Raises
    ------
    EncoderUnavailable
        ``official`` could not be downloaded: the table skips it.
    FileNotFoundError, ValueError
        An unknown spec or a missing file: a mistake to fix before running.
    """
    from napari_lemon.checkpoint import load_encoder
    from napari_lemon.encoder import CheckpointError

    if spec == "random":
        return random_encoder(seed, device, batch_size)
    if spec == "handcrafted":
        return handcrafted_encoder()
    if spec.startswith("timm:"):
        parts = spec.split(":", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ValueError(
                f"encoder={spec!r}: write timm:NAME:WEIGHTS_FILE, e.g. "
                "timm:resnet18:weights/resnet18.safetensors"
            )
        return timm_encoder(parts[1], parts[2], device, batch_size)
    if spec == "official":
        try:
            return _from_lemon("official", load_encoder("official", device), batch_size)
        except (CheckpointError, OSError) as err:
            logger.debug("official encoder: %s", err)
            raise EncoderUnavailable(
                f"the official LEMON encoder could not be loaded from the model hub "
                f"({type(err).__name__}; offline?). Download lemon.pth.tar and "
                "mean_std.json from aliceblondel/LEMON into a folder and pass "
                "--encoder FOLDER"
            ) from err
    if spec == "bundled" or Path(spec).exists():
        name = "bundled" if spec == "bundled" else Path(spec).stem
        return _from_lemon(name, load_encoder(spec, device), batch_size)
    raise FileNotFoundError(
        f"encoder={spec!r} is not a file and not one of {KINDS}; pass a checkpoint "
        "path (.safetensors with its .json card) or one of the names"
    )
