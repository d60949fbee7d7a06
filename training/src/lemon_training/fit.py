"""The training loop: any method of :mod:`.methods` on a curated crop dataset.

A run folder holds ``config.json`` (merged config, git commit, versions),
``metrics.jsonl`` (one JSON line per logged step), ``checkpoint.pt`` (latest
state, for exact resume), ``stain_statistics.json`` for stain policies, and
``final.pt`` once the run ends. Launched by ``torchrun``, every process trains
on its share of each batch and the main process writes the run folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed
from .config import Config, ConfigError, differences, resolve
from .data.dataset import batch_indices, open_dataset
from .methods import card_for, create_method
from .methods.mocov3 import lr_at

logger = logging.getLogger("lemon_training")

# keys a resumed run may change: where and how fast it runs, not what it learns
RESUMABLE_CHANGES = (
    "run.device",
    "run.threads",
    "run.log_every",
    "run.checkpoint_every",
    "data.memory_limit_gb",
)


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def fit(config: dict[str, Any] | None = None) -> Path:
    """Train as ``config`` says; resume if the run folder has a checkpoint.

    Parameters
    ----------
    config : dict
        Nested (``{"optim": {"steps": 10}}``) or dotted (``{"optim.steps": 10}``)
        keys over :func:`.config.defaults`.

    Returns
    -------
    Path of the run folder
    """
    from napari_lemon.encoder import select_device

    cfg = resolve(config)
    if cfg["run"]["threads"]:
        torch.set_num_threads(int(cfg["run"]["threads"]))
    rank, world, device = distributed.setup(select_device(cfg["run"]["device"]))
    try:
        return _train(cfg, Path(cfg["run"]["out"]), device, world)
    finally:
        distributed.teardown()


def _train(cfg: Config, run: Path, device: str, world: int) -> Path:
    optim = cfg["optim"]
    if optim["batch_size"] % world:
        raise ConfigError(
            f"optim.batch_size={optim['batch_size']} is not divisible by the "
            f"{world} processes; choose a multiple of {world}"
        )

    # data, method, optimiser
    dataset = open_dataset(cfg["data"]["path"], cfg["data"]["memory_limit_gb"])
    batch_indices(0, len(dataset), optim["batch_size"], cfg["run"]["seed"])  # checks
    card = card_for(cfg["model"])
    stats = _stain_statistics(run, cfg, dataset)
    torch.manual_seed(cfg["run"]["seed"])
    method = create_method(cfg, card, stats).to(device)
    peak_lr = optim["base_lr"] * optim["batch_size"] / 256
    optimizer = torch.optim.AdamW(
        method.trainable_parameters(), lr=peak_lr, weight_decay=optim["weight_decay"]
    )
    amp = Precision(cfg["run"]["precision"], device)

    # resume or start, then wrap for distributed training
    state = _resume_or_start(run, cfg, method, optimizer, amp, device)
    model = _distribute(method, device) if world > 1 else method
    total, budget = optim["steps"], _budget_s(optim["max_minutes"])
    started = time.perf_counter() - state["seconds"]
    batches = _prefetch(dataset, cfg, state["step"], device)

    model.train()
    while (done := progress(state, total, budget)) < 1:
        # schedules, on the fraction of steps or of the time budget done
        lr = lr_at(done * total, total, peak_lr, optim["warmup_steps"])
        for group in optimizer.param_groups:
            group["lr"] = lr

        # forward and loss
        crops = next(batches)
        with amp.autocast():
            loss, parts = model(crops)
        if not math.isfinite(loss.item()):
            raise _diverged(run, state, loss.item())

        # backward, clip, step
        optimizer.zero_grad(set_to_none=True)
        amp.backward(loss, optimizer, method, optim["clip_grad"])

        # teacher update and bookkeeping
        state["step"] += 1
        state["images_seen"] += optim["batch_size"]
        state["seconds"] = _agreed_seconds(time.perf_counter() - started, device)
        done = progress(state, total, budget)
        method.after_step(done)
        finished = done >= 1
        if distributed.is_main():
            if state["step"] % cfg["run"]["log_every"] == 0 or finished:
                _log(run, state, loss.item(), parts, lr)
            if state["step"] % cfg["run"]["checkpoint_every"] == 0 or finished:
                _checkpoint(run / "checkpoint.pt", method, optimizer, amp, state, cfg)

    if "loss" in locals():  # at least one step ran in this call
        state["final_loss"] = loss.item()
    if distributed.is_main():
        final = {"model": method.state_dict(), "state": state, "config": cfg}
        final.update(card=card.to_dict(), export_prefix=method.export_prefix)
        _save_atomic(final, run / "final.pt")
    return run


# --------------------------------------------------------------------- schedule
def progress(state: dict, total: int, budget_s: float | None) -> float:
    """Fraction of the run done: of its steps, or of its time budget if sooner.

    With a time budget the learning-rate and momentum schedules complete on time
    on a slow or busy machine; the card records the steps actually taken.
    """
    done = state["step"] / total
    if budget_s:
        done = max(done, state["seconds"] / budget_s)
    return min(done, 1.0)


def _budget_s(max_minutes: float | None) -> float | None:
    return 60 * float(max_minutes) if max_minutes else None


def _agreed_seconds(seconds: float, device: str) -> float:
    """Elapsed seconds, the largest over processes, so that all stop together."""
    if distributed.world_size() == 1:
        return seconds
    value = torch.tensor([seconds], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return float(value.item())


# ------------------------------------------------------------------------- data
def _prefetch(dataset, cfg: Config, start: int, device: str):
    """This process's crops for step ``start``, ``start + 1``, ... read ahead.

    Yields float tensors (b, 3, 60, 60) in 0-1 on ``device``; the batch of a step
    depends on the step and seed alone, so a resumed run draws the same crops.
    """
    batch, seed = cfg["optim"]["batch_size"], cfg["run"]["seed"]
    rank, world = distributed.rank(), distributed.world_size()

    def read(step: int) -> np.ndarray:
        index = batch_indices(step, len(dataset), batch, seed)
        return dataset.read(index[rank::world])  # (b / world, 60, 60, 3) uint8

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = [pool.submit(read, start), pool.submit(read, start + 1)]
        step = start + 1
        while True:
            crops = torch.from_numpy(np.ascontiguousarray(pending.pop(0).result()))
            step += 1
            pending.append(pool.submit(read, step))
            yield crops.to(device).permute(0, 3, 1, 2).float().div_(255.0)


def _stain_statistics(run: Path, cfg: Config, dataset):
    """Stain statistics for the gmm policies: fitted once, kept in the run folder."""
    from .augment.policies import needs_statistics
    from .augment.stain import StainStatistics

    policy = cfg["augment"]["policy"]
    if not needs_statistics(policy):
        return None
    path = run / "stain_statistics.json"
    if path.is_file():
        return StainStatistics.from_dict(json.loads(path.read_text()))
    components = int(policy.rsplit("gmm", 1)[1])
    sample = dataset.sample(cfg["augment"]["stain_sample"], cfg["run"]["seed"])
    stats = StainStatistics.fit(sample, components, seed=cfg["run"]["seed"])
    if distributed.is_main():
        run.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stats.to_dict()) + "\n")
    return stats


# ----------------------------------------------------------------------- device
class Precision:
    """Mixed precision: bf16 autocast on CUDA by default, fp16 with loss scaling."""

    def __init__(self, precision: str, device: str):
        kind = device.split(":")[0]
        if precision == "auto":
            precision = "bf16" if kind == "cuda" else "fp32"
        dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
        if precision not in dtypes:
            raise ConfigError(
                f"run.precision={precision!r} is not known; choose auto, fp32, "
                "bf16 or fp16"
            )
        self.name, self.dtype, self.kind = precision, dtypes[precision], kind
        self.scaler = torch.amp.GradScaler(kind, enabled=precision == "fp16")

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.kind, dtype=self.dtype)

    def backward(self, loss, optimizer, method, clip_grad: float | None) -> None:
        self.scaler.scale(loss).backward()
        if clip_grad:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(method.trainable_parameters(), clip_grad)
        self.scaler.step(optimizer)
        self.scaler.update()


def _distribute(method, device: str):
    """DistributedDataParallel; BatchNorm synchronised across GPUs."""
    from torch.nn.parallel import DistributedDataParallel

    if device.startswith("cuda"):
        method = torch.nn.SyncBatchNorm.convert_sync_batchnorm(method)
        return DistributedDataParallel(method, device_ids=[torch.cuda.current_device()])
    return DistributedDataParallel(method)


# ----------------------------------------------------------- the run's folder
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
        "processes": str(distributed.world_size()),
    }


def _resume_or_start(run: Path, cfg: Config, method, optimizer, amp, device) -> dict:
    """Load the run's checkpoint if there is one; else record the run's config.

    Returns the training state (step, images seen, seconds).
    """
    ckpt = run / "checkpoint.pt"
    if not ckpt.is_file():
        if distributed.is_main():
            run.mkdir(parents=True, exist_ok=True)
            meta = {"config": cfg, "git_commit": git_commit(), "versions": versions()}
            (run / "config.json").write_text(json.dumps(meta, indent=2) + "\n")
        if cfg["run"]["init_from"]:
            _initialise(method, cfg["run"]["init_from"], device)
        return {"step": 0, "images_seen": 0, "seconds": 0.0}

    saved = torch.load(ckpt, map_location=device, weights_only=False)
    changed = differences(saved["config"], cfg, ignore=RESUMABLE_CHANGES)
    if changed:
        raise ConfigError(
            f"{run} holds a run with another config ({'; '.join(changed)}); "
            "resume it with its own config, or set run.out to a new folder"
        )
    method.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    amp.scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["torch_rng"])
    if saved.get("cuda_rng"):
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    logger.info("resumed %s at step %d", run, saved["state"]["step"])
    return saved["state"]


def _initialise(method, init_from: str, device: str) -> None:
    """Start from the weights of another run (its folder or its final.pt), or
    from an encoder checkpoint (``.safetensors`` + card, or ``bundled``): then
    every copy of the encoder (online, momentum, teacher) starts from it and the
    heads start fresh."""
    if init_from == "bundled" or init_from.endswith(".safetensors"):
        _initialise_encoder(method, init_from)
        return
    path = Path(init_from)
    path = path / "final.pt" if path.is_dir() else path
    if not path.is_file():
        raise ConfigError(
            f"run.init_from={init_from!r}: {path} does not exist; give a finished "
            "run's folder or its final.pt"
        )
    saved = torch.load(path, map_location=device, weights_only=False)
    try:
        method.load_state_dict(saved["model"])
    except RuntimeError as err:
        raise ConfigError(
            f"run.init_from={init_from!r} holds another method or architecture: {err}"
        ) from None
    logger.info("initialised from %s", path)


def _initialise_encoder(method, init_from: str) -> None:
    from napari_lemon.checkpoint import CheckpointError, load_encoder

    try:
        weights = load_encoder(init_from, device="cpu").model.state_dict()
    except (CheckpointError, FileNotFoundError) as err:
        raise ConfigError(f"run.init_from={init_from!r}: {err}") from None
    copies = [
        getattr(method, name)
        for name in ("encoder", "momentum_encoder", "teacher")
        if hasattr(method, name)
    ]
    for module in copies:
        try:
            module.load_state_dict(weights)
        except RuntimeError as err:
            raise ConfigError(
                f"run.init_from={init_from!r} holds another architecture than "
                f"model.* of this config: {err}"
            ) from None
    logger.info("encoder initialised from %s", init_from)


def _diverged(run: Path, state: dict, loss: float) -> TrainingDiverged:
    ckpt = run / "checkpoint.pt"
    kept = (
        f"the last good checkpoint ({ckpt}, step "
        f"{torch.load(ckpt, weights_only=False)['state']['step']}) is kept"
        if ckpt.is_file()
        else "no checkpoint had been written yet"
    )
    return TrainingDiverged(
        f"the loss is {loss} at step {state['step'] + 1} of {run}; {kept}. Lower "
        "optim.base_lr or set optim.clip_grad, then run again from a new run.out "
        "(or resume this one)"
    )


def _log(run: Path, state: dict, loss: float, parts: dict, lr: float) -> None:
    record = {
        "step": state["step"],
        "loss": round(loss, 5),
        **{k: round(float(v), 5) for k, v in parts.items()},
        "lr": lr,
        "images_seen": state["images_seen"],
        "seconds": round(state["seconds"], 1),
    }
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps(record) + "\n")
    logger.info("step %(step)d loss %(loss).4f images %(images_seen)d", record)


def _checkpoint(path: Path, method, optimizer, amp, state: dict, cfg: Config):
    """Write atomically: a kill during the write leaves the previous checkpoint."""
    ckpt = {
        "model": method.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": amp.scaler.state_dict(),
        "state": state,
        "config": cfg,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    _save_atomic(ckpt, path)


def _save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
