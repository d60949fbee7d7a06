"""Export a training run as the plugin's checkpoint: fp16 safetensors + JSON card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from napari_lemon.checkpoint import save_checkpoint
from napari_lemon.encoder import EncoderCard, create_vit

from .config import Config, resolve

METHOD_NAMES = {"mocov3": "MoCo v3", "dinov2": "DINOv2"}

# the first bundled run predates sections in the config
_FLAT_KEYS = {
    "data": "data.path",
    "out": "run.out",
    "augmentation": "augment.policy",
    "batch_size": "optim.batch_size",
    "steps": "optim.steps",
    "max_minutes": "optim.max_minutes",
    "base_lr": "optim.base_lr",
    "weight_decay": "optim.weight_decay",
    "warmup_steps": "optim.warmup_steps",
    "momentum": "mocov3.momentum",
    "temperature": "mocov3.temperature",
    "dim": "mocov3.dim",
    "mlp_dim": "mocov3.mlp_dim",
    "seed": "run.seed",
    "threads": "run.threads",
    "log_every": "run.log_every",
    "checkpoint_every": "run.checkpoint_every",
    "device": "run.device",
    "init_from": "run.init_from",
}


def export_run(
    run: str | Path, out: str | Path, benchmarks: dict[str, Any] | None = None
) -> Path:
    """Write the encoder of ``run`` to ``out`` (.safetensors + .json card).

    The card records the method, augmentation, training data (from the crop
    manifest), images seen, training time, final loss and, when given, benchmark
    results.
    """
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(
            f"run folder {str(run)!r} does not exist; give the run.out folder of "
            "a `lemon-train fit` run"
        )
    final = run / "final.pt"
    if not final.is_file():
        raise FileNotFoundError(
            f"{run} has no final.pt: the run has not finished; resume it with "
            "`lemon-train fit` and the same config"
        )
    saved = torch.load(final, map_location="cpu", weights_only=False)
    cfg, state = _config_of(saved["config"]), saved["state"]

    # the encoder's weights, under the plugin's key names
    card = EncoderCard.from_dict(saved.get("card", {}))
    card.name = f"lemon-{cfg['method']['name']}-{run.name}"
    encoder = create_vit(card, weight_init="skip")
    prefix = saved.get("export_prefix", "encoder.")
    weights = {
        k[len(prefix) :]: v for k, v in saved["model"].items() if k.startswith(prefix)
    }
    encoder.load_state_dict(weights, strict=True)

    card.training = _training_record(run, cfg, state)
    card.benchmarks = benchmarks or {}
    return save_checkpoint(encoder, card, out)


def _training_record(run: Path, cfg: Config, state: dict) -> dict[str, Any]:
    manifest_path = Path(cfg["data"]["path"]) / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    meta_path = run / "config.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return {
        "method": METHOD_NAMES.get(cfg["method"]["name"], cfg["method"]["name"]),
        "augmentation": cfg["augment"]["policy"],
        "data": _data_summary(manifest),
        "images_seen": state["images_seen"],
        "steps": state["step"],
        "batch_size": cfg["optim"]["batch_size"],
        "seconds": round(state["seconds"], 1),
        "final_loss": round(state.get("final_loss", float("nan")), 5),
        "init_from": cfg["run"]["init_from"],
        "config": cfg,
        "git_commit": meta.get("git_commit", "unknown"),
        "versions": meta.get("versions", {}),
        "continued_from": _earlier_training(cfg["run"]["init_from"]),
    }


def _data_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The crop manifest without its per-shard rows: counts per source, split,
    method and cell type travel with the weights, the paths of the inputs on
    the training machine do not."""
    summary = {k: v for k, v in manifest.items() if k != "shards"}
    if "shards" in manifest:
        summary["n_inputs"] = len(manifest["shards"])
    return summary


def _earlier_training(init_from: str | None) -> dict[str, Any] | None:
    """The training record of the encoder checkpoint a run started from, so
    that a continued encoder's card adds up all of its training."""
    from napari_lemon.checkpoint import BUNDLED_NAME, WEIGHTS_DIR

    if not init_from:
        return None
    if init_from == "bundled":
        init_from = str(WEIGHTS_DIR / f"{BUNDLED_NAME}.safetensors")
    card = Path(init_from).with_suffix(".json")
    if not card.is_file():  # another run's folder: its config says the rest
        return {"run": init_from}
    earlier = json.loads(card.read_text())
    return {"name": earlier.get("name"), "sha256": earlier.get("sha256")} | {
        "training": earlier.get("training", {})
    }


def _config_of(saved: dict[str, Any]) -> Config:
    """The saved config, upgraded from the flat layout of the first runs."""
    if "augmentation" not in saved:
        return resolve(saved)
    return resolve({_FLAT_KEYS[k]: v for k, v in saved.items() if k in _FLAT_KEYS})
