"""Training throughput: loader alone vs. whole training steps, per method.

For each recipe this measures, in one run on one machine:

- **loader**: crops read from the curated dataset, moved to the device and
  augmented into the method's views (two 40x40 views; DINOv2 adds its local
  crops), images/s;
- **train**: full training steps (views, forward, backward, optimiser, teacher
  update) through ``lemon_training.fit``, images/s, first step excluded.

The loader must be faster than the training step, or the accelerator waits.
The same script is the GPU recipe: on one GPU (``--device cuda``) every recipe
runs for ``--seconds`` and the whole script stays under 10 minutes.

    python benchmarks/training_speed.py --data runs/crops_zarr --device cpu
    python benchmarks/training_speed.py --data runs/crops_zarr --device cuda \\
        --batch-size 256 --seconds 90 --out benchmarks/results/training_speed_gpu.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from machine import describe

RECIPES = {
    "mocov3 ViT-S/8 a1": {"method.name": "mocov3", "augment.policy": "a1"},
    "mocov3 ViT-B/8 a1": {
        "method.name": "mocov3",
        "augment.policy": "a1",
        "model.architecture": "vit_base_moco",
    },
    "dinov2 (local-to-global)": {"method.name": "dinov2", "augment.policy": "a1"},
    "dinov2 no-l2g + KDE": {
        "method.name": "dinov2",
        "augment.policy": "a1",
        "dinov2.local_to_global": False,
        "dinov2.n_local": 0,
        "dinov2.koleo_weight": 0.0,
        "dinov2.kde_weight": 0.05,
    },
}


def loader_rate(config: dict, seconds: float) -> float:
    """Images/s of reading + device transfer + views, without the network."""
    from lemon_training.config import resolve
    from lemon_training.data.dataset import batch_indices, open_dataset
    from lemon_training.methods import card_for, create_method

    cfg = resolve(config)
    dataset = open_dataset(cfg["data"]["path"], cfg["data"]["memory_limit_gb"])
    device = cfg["run"]["device"]
    method = create_method(cfg, card_for(cfg["model"])).to(device)
    batch, n, images = cfg["optim"]["batch_size"], len(dataset), 0
    started, step = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        crops = dataset.read(batch_indices(step, n, batch, 0))
        x = torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float() / 255
        _views(method, x)
        _sync(device)
        images, step = images + len(crops), step + 1
    return images / (time.perf_counter() - started)


def _views(method, x):
    if hasattr(method, "views"):
        return method.views(x)
    return method.make_views(x)


def train_rate(config: dict, seconds: float) -> dict:
    """Images/s of whole training steps, from the run's metrics (step 1 dropped)."""
    from lemon_training.fit import fit

    with tempfile.TemporaryDirectory() as tmp:
        config = {
            **config,
            "run.out": tmp,
            "optim.steps": 10_000,
            "optim.max_minutes": seconds / 60,
            "run.log_every": 1,
            "run.checkpoint_every": 10_000,
        }
        run = fit(config)
        lines = (run / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    if len(records) < 3:
        return {"images_per_s": float("nan"), "steps": len(records)}
    first, last = records[0], records[-1]
    rate = (last["images_seen"] - first["images_seen"]) / (
        last["seconds"] - first["seconds"]
    )
    return {"images_per_s": rate, "steps": len(records)}


def matmul_rate(device: str, size: int = 2048) -> float:
    """GFLOP/s of a plain fp32 matmul on ``device``, for scale."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    a @ b
    _sync(device)
    started, repeats = time.perf_counter(), 0
    while time.perf_counter() - started < 3:
        a @ b
        _sync(device)
        repeats += 1
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e9


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="runs/crops_zarr")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES))
    parser.add_argument("--out", default="benchmarks/results/training_speed_cpu.json")
    args = parser.parse_args()

    rows = []
    for name in args.recipes:
        config = {
            **RECIPES[name],
            "data.path": args.data,
            "run.device": args.device,
            "optim.batch_size": args.batch_size,
        }
        loader = loader_rate(config, min(args.seconds, 20))
        train = train_rate(config, args.seconds)
        rows.append(
            {
                "recipe": name,
                "loader_images_per_s": round(loader, 1),
                "train_images_per_s": round(train["images_per_s"], 1),
                "steps_timed": train["steps"],
                "loader_over_train": round(loader / train["images_per_s"], 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    result = {
        "date": date.today().isoformat(),
        "machine": describe(),
        "device": torch.cuda.get_device_name() if "cuda" in args.device else "cpu",
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "matmul_fp32_gflops": round(matmul_rate(args.device), 1),
        "torch": torch.__version__,
        "rows": rows,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"matmul fp32: {result['matmul_fp32_gflops']} GFLOP/s; wrote {args.out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
