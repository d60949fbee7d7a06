"""Embedding speed per precision and batch size, against the matmul limit.

In one run on one machine:

- the FLOPs of one encoder forward pass on one crop (``FlopCounterMode``);
- plain fp32 matmuls: the shape of the network's MLP at batch 256
  ((256 x 26, 384) @ (384, 1536)) and 2048 x 2048 squares; the faster is the
  limit the network is compared with;
- nuclei/s of :meth:`napari_lemon.encoder.Encoder.embed` (preprocessing
  included) per precision and batch size, the implied GFLOP/s and its ratio to
  the matmul; by wall time and by CPU time of the process (the per-core figure,
  steadier on a shared machine). Measurements are interleaved over repeats and
  the best kept (load on a shared machine only ever slows a case down);
- with ``--crc``: the 5-fold grouped CRC linear probe (balanced accuracy) of
  the same encoder's embeddings of the 17,801 typed nuclei in each precision,
  with fold sd, paired per-fold differences to fp32 and cosine similarity.

    python benchmarks/embedding_speed.py --crc
    python benchmarks/embedding_speed.py --device cuda --precisions fp32 fp16 \\
        --out benchmarks/results/embedding_speed_gpu.json
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from machine import describe

TOKENS = 26  # 25 patches of a 40x40 crop + the class token


def forward_flops(encoder) -> int:
    """FLOPs of one forward pass on one crop (a multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, encoder.card.crop_size, encoder.card.crop_size)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        encoder.model.cpu()(x)
    encoder.model.to(encoder.device)
    return counter.get_total_flops()


def timed(fn, seconds: float) -> tuple[float, float]:
    """Calls per wall second and per process CPU second of ``fn``, after one warm-up."""
    fn()
    _sync()
    wall, cpu, calls = time.perf_counter(), time.process_time(), 0
    while time.perf_counter() - wall < seconds:
        fn()
        _sync()
        calls += 1
    return calls / (time.perf_counter() - wall), calls / (time.process_time() - cpu)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul(device: str, m: int, k: int, n: int) -> tuple[callable, int]:
    """A fp32 (m, k) @ (k, n) matmul, and its FLOPs."""
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)
    return (lambda: a @ b), 2 * m * k * n


def speed_table(args, encoders: dict, flops: int) -> tuple[dict, list[dict]]:
    """Matmul GFLOP/s and one row per precision and batch size (medians)."""
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (max(args.batch_sizes), 40, 40, 3), dtype=np.uint8)
    device = encoders[args.precisions[0]].device
    cases = {
        ("matmul", "mlp"): matmul(device, 256 * TOKENS, 384, 1536),
        ("matmul", "square"): matmul(device, 2048, 2048, 2048),
    }
    for precision in args.precisions:
        for batch in args.batch_sizes:
            embed = encoders[precision].embed

            def run(embed=embed, batch=batch):
                embed(crops[:batch], batch_size=batch)

            cases[(precision, batch)] = (run, flops * batch)

    # interleave the repeats so that the machine's load hits every case alike
    samples: dict = {key: [] for key in cases}
    for _ in range(args.repeats):
        for key, (fn, _) in cases.items():
            samples[key].append(timed(fn, args.seconds))
    gflops = {
        key: [max(s[i] for s in runs) * cases[key][1] / 1e9 for i in (0, 1)]
        for key, runs in samples.items()
    }
    mlp, square = gflops[("matmul", "mlp")], gflops[("matmul", "square")]
    limit = [max(mlp[0], square[0]), max(mlp[1], square[1])]
    rows = [
        {
            "precision": precision,
            "batch_size": batch,
            "nuclei_per_s": round(wall * 1e9 / flops, 1),
            "nuclei_per_cpu_s": round(cpu * 1e9 / flops, 1),
            "gflops": round(wall, 1),
            "ratio_to_matmul": round(wall / limit[0], 3),
            "ratio_to_matmul_cpu": round(cpu / limit[1], 3),
        }
        for (precision, batch), (wall, cpu) in gflops.items()
        if precision != "matmul"
    ]
    matmul_rate = {
        "gflops": round(limit[0], 1),
        "gflops_per_cpu_s": round(limit[1], 1),
        "mlp_shape": f"({256 * TOKENS}, 384) @ (384, 1536)",
        "mlp_gflops": [round(v, 1) for v in mlp],
        "square_2048_gflops": [round(v, 1) for v in square],
    }
    return matmul_rate, rows


def crc_accuracy(args, encoders: dict) -> dict:
    """CRC probe balanced accuracy of each precision's embeddings of the same crops."""
    from lemon_training.evaluate.benchmark import cached_crops
    from lemon_training.evaluate.datasets import load_probe_dataset
    from lemon_training.evaluate.encoders import weights_key
    from lemon_training.evaluate.probe import cross_validate

    dataset = load_probe_dataset("crc", args.data)
    folder = Path(args.cache) / f"{dataset.name}-{dataset.fingerprint()}"
    crops = cached_crops(dataset, 40, 0.25, folder, progress=False)
    out, features = {"nuclei": len(crops), "folds": 5}, {}
    for precision, encoder in encoders.items():
        path = folder / f"{weights_key(encoder)}-{precision}.npy"
        if not path.is_file():
            started = time.perf_counter()
            np.save(path, encoder.embed(crops))
            out[f"{precision}_embed_seconds"] = round(time.perf_counter() - started, 1)
        features[precision] = np.load(path)
        folds = cross_validate(features[precision], dataset.y, dataset.groups)
        out[precision] = {"folds": [round(f.score, 4) for f in folds]}

    reference = np.array(out["fp32"]["folds"]) if "fp32" in out else None
    for precision in encoders:
        scores = np.array(out[precision]["folds"])
        out[precision] |= {
            "mean": round(scores.mean(), 4),
            "sd": round(scores.std(ddof=1), 4),
        }
        if reference is not None and precision != "fp32":
            diff = scores - reference
            cosine = _cosine(features[precision], features["fp32"])
            out[precision] |= {
                "paired_diff_folds": [round(d, 4) for d in diff],
                "paired_diff_mean": round(diff.mean(), 4),
                "paired_diff_sd": round(diff.std(ddof=1), 4),
                "cosine_to_fp32_mean": round(float(cosine.mean()), 7),
                "cosine_to_fp32_min": round(float(cosine.min()), 7),
            }
    return out


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    return np.sum(a * (b / np.linalg.norm(b, axis=1, keepdims=True)), axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--precisions", nargs="+", help="default: cpu fp32 bf16 int8")
    parser.add_argument(
        "--batch-sizes", nargs="+", type=int, default=[32, 64, 128, 256]
    )
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--crc", action="store_true", help="also the CRC probe")
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument(
        "--cache",
        default="runs/benchmark-cache",
        help="crops and embeddings cache (shared with lemon-train benchmark)",
    )
    parser.add_argument("--out", default="benchmarks/results/embedding_speed.json")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.precisions = args.precisions or (
        ["fp32", "fp16"] if cuda else ["fp32", "bf16", "int8"]
    )
    if args.threads:
        torch.set_num_threads(args.threads)

    from napari_lemon.checkpoint import load_encoder

    encoders = {p: load_encoder("bundled", args.device, p) for p in args.precisions}
    flops = forward_flops(encoders[args.precisions[0]])
    matmul_rate, rows = speed_table(args, encoders, flops)
    result = {
        "date": date.today().isoformat(),
        "machine": describe(),
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "encoder": encoders[args.precisions[0]].card.name,
        "gflop_per_crop": round(flops / 1e9, 4),
        "matmul_fp32": matmul_rate,
        "seconds_per_measurement": args.seconds,
        "repeats": args.repeats,
        "rows": rows,
    }
    if args.crc:
        result["crc_balanced_accuracy"] = crc_accuracy(args, encoders)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(row)
    print(f"matmul fp32: {matmul_rate}; wrote {args.out}")


if __name__ == "__main__":
    main()
