"""Speed of the exploration tools: silhouette hint, Leiden, the 2-D map, neighbours.

Embeddings are synthetic: a Gaussian mixture of ``--components`` clusters of
unequal sizes (Dirichlet weights) that overlap in a 16-d subspace of the 384
dimensions, plus a little noise in all of them, stored as float16 as the results
store keeps them. Real nuclei would first need segmenting and embedding (20-60
minutes per million on two CPU cores, ``results/embedding_speed.json``) and a
slide of a million nuclei. The timings depend on the number of rows and the
dimension, and Leiden's and UMAP's also on how clustered the rows are, which a
mixture only approximates (the ARI of the Leiden clusters against the mixture
components says how separable it was).

Measured, in this order, in one process:

- ``nearest_neighbours`` at ``--neighbours-n`` rows: the best and the median of
  ``--repeats`` queries (one thread pool per query);
- ``silhouette_hint`` on a ``--silhouette-sample`` sample, k = 2..12;
- ``cluster_leiden`` at each ``--leiden-n``: the first includes compiling
  umap-learn's graph weights, the first above ``EXACT_MAX`` nuclei compiling
  pynndescent (numba);
- ``embed_2d`` (UMAP) at each ``--umap-n``: the first call of a fresh process
  (compiling umap-learn's and pynndescent's numba code) at the first size, then
  warm calls at every size;
- ``nucleus_thumbnails`` of ``--thumbnails`` points spread over ``--slide``.

Usage::

    python benchmarks/explore_speed.py [--leiden-n 10000 50000 243492] \\
        [--umap-n 5000 20000 50000] [--neighbours-n 1000000] \\
        [--slide ../shared/data/wsi/CMU-1-Small-Region.svs] \\
        [--out benchmarks/results/explore_speed.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from machine import describe

from napari_lemon.analysis import graph_clusters
from napari_lemon.analysis.clusters import best_k, silhouette_hint
from napari_lemon.analysis.graph_clusters import cluster_leiden
from napari_lemon.analysis.morphology_map import embed_2d
from napari_lemon.analysis.neighbours import nearest_neighbours

DIM = 384
LATENT = 16  # dimension of the mixture's subspace
ISOTROPIC = 0.3  # standard deviation of the noise in every dimension
BLOCK = 65536  # rows drawn at once


def mixture(n: int, components: int, seed: int = 0):
    """``n`` float16 rows of a Gaussian mixture and each row's component.

    The components lie in a random ``LATENT``-d subspace (real embeddings have a
    low intrinsic dimension), overlap in it, and get a little isotropic noise in
    all 384 dimensions.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=1.0, size=(components, LATENT)).astype(np.float32)
    basis = rng.normal(scale=LATENT**-0.5, size=(LATENT, DIM)).astype(np.float32)
    weights = rng.dirichlet(np.full(components, 2.0))
    truth = rng.choice(components, size=n, p=weights)

    out = np.empty((n, DIM), dtype=np.float16)
    for start in range(0, n, BLOCK):
        part = truth[start : start + BLOCK]
        latent = centres[part] + rng.standard_normal((len(part), LATENT), np.float32)
        noise = rng.standard_normal((len(part), DIM), dtype=np.float32)
        out[start : start + len(part)] = latent @ basis + ISOTROPIC * noise
    return out, truth


def timed(function, *args, **kwargs):
    """``(seconds, result, load average)`` of one call."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return time.perf_counter() - start, result, load


def bench_neighbours(embeddings: np.ndarray, repeats: int) -> dict:
    rng = np.random.default_rng(1)
    seconds = []
    for row in rng.choice(len(embeddings), size=repeats, replace=False):
        s, _, load = timed(nearest_neighbours, embeddings, int(row), k=24)
        seconds.append(s)
    return {
        "task": "nearest_neighbours",
        "n": len(embeddings),
        "k": 24,
        "best_s": min(seconds),
        "median_s": float(np.median(seconds)),
        "load_average_1min": load,
    }


def bench_silhouette(embeddings: np.ndarray, sample: int) -> dict:
    s, scores, load = timed(silhouette_hint, embeddings, range(2, 13), sample)
    return {
        "task": "silhouette_hint",
        "n": len(embeddings),
        "sample": sample,
        "ks": [2, 12],
        "seconds": s,
        "best_k": best_k(scores),
        "scores": scores,
        "load_average_1min": load,
    }


def bench_leiden(embeddings: np.ndarray, truth: np.ndarray, n: int, call: str) -> dict:
    from sklearn.metrics import adjusted_rand_score

    stages, last = {}, [time.perf_counter()]

    def progress(stage, done, total):
        now = time.perf_counter()
        if done:
            stages[graph_clusters.STAGES[done - 1]] = now - last[0]
        last[0] = now

    s, labels, load = timed(cluster_leiden, embeddings[:n], progress=progress)
    return {
        "task": "cluster_leiden",
        "n": n,
        "neighbours": "exact" if n <= graph_clusters.EXACT_MAX else "pynndescent",
        "call": call,
        "seconds": s,
        "stage_seconds": stages,
        "clusters": int(labels.max()) + 1,
        "ari_vs_components": float(adjusted_rand_score(truth[:n], labels)),
        "load_average_1min": load,
    }


def bench_umap(embeddings: np.ndarray, call: str) -> dict:
    s, found, load = timed(embed_2d, embeddings, sample=None)
    return {
        "task": "embed_2d",
        "method": found.method,
        "n": len(embeddings),
        "call": call,
        "seconds": s,
        "load_average_1min": load,
    }


def bench_thumbnails(path: Path, n: int) -> dict | None:
    """Thumbnails of ``n`` points spread over a real slide (None without it)."""
    from napari_lemon.slide import open_slide
    from napari_lemon.thumbnails import nucleus_thumbnails

    if not path.exists():
        print(f"{path} not found: thumbnails not timed")
        return None
    with open_slide(path) as slide:
        rng = np.random.default_rng(2)
        points = rng.uniform((0, 0), slide.dimensions, size=(n, 2))
        nucleus_thumbnails(slide, points[:2])  # imports, first tiles
        s, _, load = timed(nucleus_thumbnails, slide, points)
    return {
        "task": "nucleus_thumbnails",
        "n": n,
        "slide": path.name,
        "size_px": 48,
        "seconds": s,
        "load_average_1min": load,
    }


def leiden_call(index: int, n: int, sizes: list[int]) -> str:
    """What a Leiden run compiles: the first of the process, the first approximate."""
    exact = graph_clusters.EXACT_MAX
    if index == 0:
        return "first of a process"
    if n > exact and all(m <= exact for m in sizes[:index]):
        return "first with pynndescent"
    return "warm"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--components", type=int, default=12)
    parser.add_argument("--neighbours-n", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--silhouette-sample", type=int, default=5000)
    parser.add_argument(
        "--leiden-n", type=int, nargs="+", default=[10_000, 50_000, 243_492]
    )
    parser.add_argument("--umap-n", type=int, nargs="+", default=[5000, 20000, 50000])
    parser.add_argument(
        "--slide",
        type=Path,
        default=Path("../shared/data/wsi/CMU-1-Small-Region.svs"),
        help="slide the thumbnails are read from",
    )
    parser.add_argument("--thumbnails", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)

    # one mixture; every task takes its first rows
    n_max = max(args.neighbours_n, *args.leiden_n, *args.umap_n)
    start = time.perf_counter()
    embeddings, truth = mixture(n_max, args.components)
    print(
        f"mixture of {n_max:,} x {DIM} float16 in {time.perf_counter() - start:.1f} s"
    )

    results = [bench_neighbours(embeddings[: args.neighbours_n], args.repeats)]
    results.append(bench_silhouette(embeddings, args.silhouette_sample))
    results += [
        bench_leiden(embeddings, truth, n, leiden_call(i, n, args.leiden_n))
        for i, n in enumerate(args.leiden_n)
    ]

    # UMAP's first call in a fresh process, warm calls here after a warm-up
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=spawn) as fresh:
        first = embeddings[: args.umap_n[0]]
        results.append(fresh.submit(bench_umap, first, "first of a process").result())
    embed_2d(embeddings[: args.umap_n[0]], sample=None)
    results += [bench_umap(embeddings[:n], "warm") for n in args.umap_n]
    thumbnails = bench_thumbnails(args.slide, args.thumbnails)
    results += [thumbnails] if thumbnails else []
    for r in results:
        seconds = r.get("seconds", r.get("median_s"))
        extra = r.get("call", "")
        print(f"{r['task']:>18} n={r['n']:>9,} {extra:>22}: {seconds:7.2f} s")

    if args.out:
        report = {
            "parameters": vars(args)
            | {"out": str(args.out), "slide": str(args.slide), "dim": DIM},
            "embeddings": (
                f"Gaussian mixture, {args.components} components in a {LATENT}-d "
                f"subspace of {DIM}-d plus noise {ISOTROPIC} in every dimension, "
                "float16 (synthetic; see the script's docstring)"
            ),
            "machine": describe(),
            "date": datetime.date.today().isoformat(),
            "results": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
