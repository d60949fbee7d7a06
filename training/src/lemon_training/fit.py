"""The training loop: MoCo v3 on a crop dataset, checkpointed and resumable.

A run folder holds ``config.json`` (merged config, git commit, versions),
``metrics.jsonl`` (one JSON line per logged step), ``checkpoint.pt`` (latest
state, for exact resume) and ``final.pt`` once the run ends.
"""

from __future__ import annotations

import json
import logging
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_lemon.encoder import EncoderCard

from .augment.policies import TwoViews, create_policy
from .data.curate import load_dataset
from .methods.mocov3 import MoCoV3, lr_at, momentum_at

logger = logging.getLogger("lemon_training")

DEFAULTS: dict[str, Any] = {
    "data": "runs/crops",
    "out": "runs/mocov3",
    "augmentation": "a1+gray",
    "batch_size": 128,
    "steps": 400,
    "max_minutes": None,  # wall-time budget: schedules run on the elapsed fraction
    "base_lr": 1.5e-4,  # per 256 images, scaled by batch size (MoCo v3)
    "weight_decay": 0.1,
    "warmup_steps": 40,
    "momentum": 0.99,
    "temperature": 0.2,
    "dim": 256,
    "mlp_dim": 4096,
    "seed": 0,
    "threads": None,
    "log_every": 10,
    "checkpoint_every": 50,
    "device": "auto",
}


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    import timm

    import napari_lemon

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "napari_lemon": napari_lemon.__version__,
        "machine": f"{platform.machine()} {platform.processor()}",
        "cpus": str(torch.get_num_threads()),
    }


def fit(config: dict[str, Any]) -> Path:
    """Train MoCo v3 as ``config`` says; resume if the run folder has a checkpoint.

    Returns the run folder.
    """
    from napari_lemon.encoder import select_device

    cfg = merge_config(config)
    run = Path(cfg["out"])
    run.mkdir(parents=True, exist_ok=True)
    if cfg["threads"]:
        torch.set_num_threads(int(cfg["threads"]))
    device = select_device(cfg["device"])

    # data, model, views, optimiser
    crops, _ = load_dataset(cfg["data"])
    card = EncoderCard(name="lemon-mocov3")
    torch.manual_seed(cfg["seed"])
    model = MoCoV3(card, cfg["dim"], cfg["mlp_dim"], cfg["temperature"]).to(device)
    views = TwoViews(create_policy(cfg["augmentation"]), card.mean, card.std).to(device)
    peak_lr = cfg["base_lr"] * cfg["batch_size"] / 256
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        trainable, lr=peak_lr, weight_decay=cfg["weight_decay"]
    )

    # resume or start
    ckpt = run / "checkpoint.pt"
    state = _resume_or_start(run, cfg, model, optimizer, device)
    total, started = cfg["steps"], time.perf_counter() - state["seconds"]
    budget = 60 * cfg["max_minutes"] if cfg["max_minutes"] else None
    model.train()
    while (done := progress(state, total, budget)) < 1:
        step = state["step"]
        # schedules, on the fraction of steps or of the time budget done
        lr = lr_at(done * total, total, peak_lr, cfg["warmup_steps"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        m = momentum_at(done * total, total, cfg["momentum"])

        # batch and views
        index = batch_indices(step, len(crops), cfg["batch_size"], cfg["seed"])
        batch = torch.from_numpy(np.asarray(crops[index])).to(device)
        x1, x2 = views(batch)

        # forward, backward, momentum update
        loss = model(x1, x2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        model.update_momentum(m)

        state["step"] += 1
        state["images_seen"] += len(index)
        state["seconds"] = time.perf_counter() - started
        finished = progress(state, total, budget) >= 1
        if state["step"] % cfg["log_every"] == 0 or finished:
            _log(run, state, loss.item(), lr, m)
        if state["step"] % cfg["checkpoint_every"] == 0 or finished:
            _checkpoint(ckpt, model, optimizer, state)

    if "loss" in locals():  # at least one step ran in this call
        state["final_loss"] = loss.item()
    torch.save(
        {"model": model.state_dict(), "state": state, "config": cfg}, run / "final.pt"
    )
    return run


def merge_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` over :data:`DEFAULTS`, refusing keys that do not exist."""
    unknown = set(config) - set(DEFAULTS)
    if unknown:
        raise ValueError(
            f"unknown config keys {sorted(unknown)}; known: {sorted(DEFAULTS)}"
        )
    return {**DEFAULTS, **config}


def _resume_or_start(run: Path, cfg: dict, model, optimizer, device: str) -> dict:
    """Load the run's checkpoint if there is one; else record the run's config.

    Returns the training state (step, images seen, seconds).
    """
    ckpt = run / "checkpoint.pt"
    if not ckpt.is_file():
        meta = {"config": cfg, "git_commit": git_commit(), "versions": versions()}
        (run / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        return {"step": 0, "images_seen": 0, "seconds": 0.0}

    saved = torch.load(ckpt, map_location=device, weights_only=False)
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["torch_rng"])
    logger.info("resumed %s at step %d", run, saved["state"]["step"])
    return saved["state"]


def progress(state: dict, total: int, budget_s: float | None) -> float:
    """Fraction of the run done: of its steps, or of its time budget if sooner.

    With a time budget the learning-rate and momentum schedules complete on time
    on a slow or busy machine; the card records the steps actually taken.
    """
    done = state["step"] / total
    if budget_s:
        done = max(done, state["seconds"] / budget_s)
    return min(done, 1.0)


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Crops of training step ``step``: epochs are seeded permutations of all crops.

    A function of the step alone, so that a resumed run draws the same batches.
    """
    if n < batch_size:
        raise ValueError(f"batch_size={batch_size} is larger than the {n} crops")
    per_epoch = n // batch_size
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return np.sort(order[position * batch_size : (position + 1) * batch_size])


def _log(run: Path, state: dict, loss: float, lr: float, momentum: float) -> None:
    record = {
        "step": state["step"],
        "loss": round(loss, 5),
        "lr": lr,
        "momentum": round(momentum, 6),
        "images_seen": state["images_seen"],
        "seconds": round(state["seconds"], 1),
    }
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    logger.info("step %(step)d loss %(loss).4f images %(images_seen)d", record)


def _checkpoint(path: Path, model, optimizer, state: dict) -> None:
    """Write atomically: a kill during the write leaves the previous checkpoint."""
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "state": state,
            "torch_rng": torch.get_rng_state(),
        },
        tmp,
    )
    tmp.replace(path)
