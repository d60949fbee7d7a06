"""Export a training run as the plugin's checkpoint: fp16 safetensors + JSON card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from napari_lemon.checkpoint import save_checkpoint
from napari_lemon.encoder import EncoderCard, create_vit


def export_run(
    run: str | Path, out: str | Path, benchmarks: dict[str, Any] | None = None
) -> Path:
    """Write the base encoder of ``run`` to ``out`` (.safetensors + .json card).

    The card records the training data (from the crop manifest), images seen,
    training time, final loss and, when given, benchmark results.
    """
    run = Path(run)
    final = run / "final.pt"
    if not final.is_file():
        raise FileNotFoundError(f"{run} has no final.pt: the run has not finished")
    saved = torch.load(final, map_location="cpu", weights_only=False)
    cfg, state = saved["config"], saved["state"]

    # the base encoder's weights, under the plugin's key names
    card = EncoderCard(name=f"lemon-mocov3-{run.name}")
    encoder = create_vit(card)
    prefix = "encoder."
    weights = {
        k[len(prefix) :]: v for k, v in saved["model"].items() if k.startswith(prefix)
    }
    encoder.load_state_dict(weights, strict=True)

    manifest_path = Path(cfg["data"]) / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    meta = json.loads((run / "config.json").read_text())
    card.training = {
        "method": "MoCo v3",
        "augmentation": cfg["augmentation"],
        "data": manifest,
        "images_seen": state["images_seen"],
        "steps": state["step"],
        "batch_size": cfg["batch_size"],
        "seconds": round(state["seconds"], 1),
        "final_loss": round(state.get("final_loss", float("nan")), 5),
        "git_commit": meta.get("git_commit", "unknown"),
        "versions": meta.get("versions", {}),
    }
    card.benchmarks = benchmarks or {}
    return save_checkpoint(encoder, card, out)
