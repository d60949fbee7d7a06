"""Encoder weights files: the plugin's safetensors + card, and the official LEMON file.

Three kinds of weights load into the network of :mod:`napari_lemon.encoder`:

- the bundled encoder, ``weights/lemon_bundled.safetensors`` + ``.json`` card;
- any checkpoint exported by ``lemon_training`` (the same two-file layout);
- the official LEMON MoCo v3 checkpoint ``lemon.pth.tar`` (``state_dict`` keys
  ``module.base_encoder.*``) with its ``mean_std.json``, from a local path or the
  model hub.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from .encoder import (
    ARCHITECTURES,
    CheckpointError,
    Encoder,
    EncoderCard,
    create_vit,
)

if TYPE_CHECKING:
    import torch

WEIGHTS_DIR = Path(__file__).parent / "weights"
BUNDLED_NAME = "lemon_bundled"
OFFICIAL_PREFIX = "module.base_encoder."
OFFICIAL_CHECKPOINT = "lemon.pth.tar"
OFFICIAL_MEAN_STD = "mean_std.json"
OFFICIAL_HUB_ID = "aliceblondel/LEMON"  # Chadoutaud et al., arXiv:2603.25802


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a whole file (pooch reads it in blocks)."""
    import pooch

    return pooch.file_hash(str(path), alg="sha256")


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
    mask = os.umask(0)  # safetensors writes owner-only files; follow the umask
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)

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


def load_safetensors(
    path: str | Path, device: str = "auto", precision: str = "auto"
) -> Encoder:
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
    # a card of the standard size with other heads would misread the weights
    standard = ARCHITECTURES.get(card.architecture, {})
    expected_heads = standard.get("num_heads")
    same_size = standard.get("embed_dim") == card.embed_dim
    if expected_heads is not None and same_size and card.num_heads != expected_heads:
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
    return Encoder(model, card, device, precision)


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
    checkpoint: str | Path,
    mean_std: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
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
    return Encoder(model, card, device, precision)


def load_from_hub(
    repo_id: str, device: str = "auto", precision: str = "auto"
) -> Encoder:
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
    return load_official(ckpt, stats, device, precision)


def load_encoder(
    model: str | Path = "bundled", device: str = "auto", precision: str = "auto"
) -> Encoder:
    """Load an encoder by name, path or hub id.

    Parameters
    ----------
    model : str or Path
        ``"bundled"``; ``"official"`` (the LEMON release on the model hub); a
        ``.safetensors`` file with its card; a ``lemon.pth.tar`` (or a folder
        holding it and ``mean_std.json``); or an ``"org/name"`` hub id.
    device : str
        ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda"`` or ``"mps"``.
    precision : str
        ``"auto"`` (fp16 on CUDA, bf16 on a CPU with AMX, else fp32), ``"fp32"``,
        ``"bf16"``, ``"int8"`` (CPU) or ``"fp16"`` (CUDA); see
        :mod:`napari_lemon.precision`.
    """
    if str(model) == "official":
        return load_from_hub(OFFICIAL_HUB_ID, device, precision)
    if str(model) == "bundled":
        path = WEIGHTS_DIR / f"{BUNDLED_NAME}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(
                f"bundled weights {path.name} are missing from the installed package; "
                "reinstall napari-lemon"
            )
        return load_safetensors(path, device, precision)

    path = Path(model)
    if path.is_dir() and (path / OFFICIAL_CHECKPOINT).is_file():
        return load_official(path / OFFICIAL_CHECKPOINT, None, device, precision)
    if path.suffix == ".safetensors":
        return load_safetensors(path, device, precision)
    if path.is_file() and path.suffix == ".json":
        return load_safetensors(path.with_suffix(".safetensors"), device, precision)
    if path.is_file():
        return load_official(path, None, device, precision)
    if not path.exists() and str(model).count("/") == 1 and not path.suffix:
        return load_from_hub(str(model), device, precision)
    raise FileNotFoundError(
        f"model={str(model)!r} is neither 'bundled', 'official', a weights file "
        "(.safetensors with its .json card, or lemon.pth.tar), nor an 'org/name' "
        "hub id"
    )
