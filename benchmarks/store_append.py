"""Appending to the incremental results store: rows per second against buffering.

Synthetic tiles (``--rows`` nuclei each, ``--dim``-d embeddings, 24-vertex
outlines) are appended to a fresh ``.zarr`` store for each buffer size in
``--flush-rows`` (1 = write and commit after every tile), then read back with
``iter_embeddings`` and finished. Recorded per setting: append rows/s (including
the final flush), read rows/s, finish seconds, store size on disk and files.

Usage::

    python benchmarks/store_append.py [--tiles 100] [--rows 1000] [--dim 384] \\
        [--flush-rows 1 4096 16384] [--dtype float16] \\
        [--out benchmarks/results/store_append.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from machine import describe

from napari_lemon import incremental_store, store_layout
from napari_lemon.incremental_store import IncrementalStore


def make_tile(tile_id: int, rows: int, dim: int, rng: np.random.Generator):
    """obs, embeddings and outlines of one synthetic tile."""
    obs = pd.DataFrame(
        {
            "nucleus_id": tile_id * rows + np.arange(rows),
            "x": rng.uniform(0, 2048, rows),
            "y": rng.uniform(0, 2048, rows),
            "area_um2": rng.uniform(10, 60, rows),
            "segmenter": "unet",
            "tile_id": tile_id,
        }
    )
    embeddings = rng.normal(size=(rows, dim)).astype(np.float32)
    outlines = list(rng.uniform(0, 2048, (rows, 24, 2)).astype(np.float32))
    return obs, embeddings, outlines


def run(folder: Path, tiles: list, flush_rows: int, dim: int, dtype: str) -> dict:
    """Append, read and finish one store; seconds and sizes."""
    incremental_store.FLUSH_ROWS = flush_rows
    path = folder / f"flush{flush_rows}.zarr"
    n_rows = sum(len(t[0]) for t in tiles)

    # append
    start = time.perf_counter()
    store = IncrementalStore.open(
        path, run_key={}, provenance={}, embed_dim=dim, embedding_dtype=dtype
    )
    for tile_id, tile in enumerate(tiles):
        store.append_tile(tile_id, *tile)
    store.flush()
    append_s = time.perf_counter() - start

    # read, finish
    start = time.perf_counter()
    n_read = sum(len(c) for c in store.iter_embeddings())
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    store.finish(np.zeros(n_rows, dtype=int), {})
    finish_s = time.perf_counter() - start

    files = [p for p in path.rglob("*") if p.is_file()]
    result = {
        "flush_rows": flush_rows,
        "rows": n_rows,
        "append_rows_per_s": n_rows / append_s,
        "read_rows_per_s": n_read / read_s,
        "finish_s": finish_s,
        "disk_mb": sum(p.stat().st_size for p in files) / 1e6,
        "files": len(files),
    }
    shutil.rmtree(path)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=100)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--dtype", default="float16")
    parser.add_argument("--flush-rows", type=int, nargs="+", default=[1, 4096, 16384])
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    tiles = [make_tile(t, args.rows, args.dim, rng) for t in range(args.tiles)]
    with tempfile.TemporaryDirectory() as folder:
        run(Path(folder), tiles[:2], 1, args.dim, args.dtype)  # imports, caches
        results = [
            run(Path(folder), tiles, n, args.dim, args.dtype) for n in args.flush_rows
        ]
    for r in results:
        print(
            f"flush_rows={r['flush_rows']:>6}: append {r['append_rows_per_s']:>9,.0f}"
            f" rows/s, read {r['read_rows_per_s']:>10,.0f} rows/s, finish "
            f"{r['finish_s']:.2f} s, {r['disk_mb']:.1f} MB in {r['files']} files"
        )
    if args.out:
        report = {
            "parameters": vars(args) | {"out": str(args.out)},
            "chunks": {
                "rows": store_layout.ROW_CHUNK,
                "embeddings": store_layout.EMBEDDING_CHUNK,
                "vertices": store_layout.VERTEX_CHUNK,
            },
            "machine": describe(),
            "load_average_1min": os.getloadavg()[0],
            "date": datetime.date.today().isoformat(),
            "results": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
