"""A picture of one slide's results: nuclei coloured by cluster over the slide.

``lemon analyze`` writes it beside each results store as ``<stem>.overlay.png``,
at most 4096 px a side: outlines where nuclei are a few pixels wide, dots where
the picture is coarser than a nucleus. Only the clusters, the outlines (a block
at a time) and a low-resolution read of the slide are loaded, never the
embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from .slide import Slide

MAX_SIDE = 4096
NUCLEI_PER_READ = 16_384


def read_clusters(path: str | Path) -> tuple[np.ndarray, int]:
    """Cluster code of every nucleus of a results store (0 without clusters).

    Returns
    -------
    codes : ndarray of shape (n_nuclei,), int64
    n_clusters : int
    """
    import zarr
    from anndata.io import read_elem

    obs = zarr.open_group(str(path), mode="r")["obs"]
    if "cluster" not in obs:
        return np.zeros(obs["nucleus_id"].shape[0], dtype=np.int64), 0
    cluster = pd.Categorical(read_elem(obs["cluster"]))
    return cluster.codes.astype(np.int64), len(cluster.categories)


def render_results(
    slide: Slide, store: str | Path, region: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """Nuclei of ``store`` drawn over ``region`` of ``slide`` (default all of it).

    Outlines are read and drawn :data:`NUCLEI_PER_READ` nuclei at a time, so
    memory does not grow with the slide.

    Returns
    -------
    ndarray of shape (rows, cols, 3), uint8
        At most :data:`MAX_SIDE` px a side.
    """
    import zarr

    from .overlay import cluster_palette, draw_outlines

    # the region at a scale that fits, read in bounded bands
    x, y, w, h = region if region is not None else (0, 0, *slide.dimensions)
    image, scale = slide.read_overview((x, y, w, h), MAX_SIDE)

    # colours, then the outlines block by block, relative to the region's corner
    values, n_clusters = read_clusters(store)
    palette = cluster_palette(max(n_clusters, 1))
    outlines = zarr.open_group(str(store), mode="r")["uns"]["outlines"]
    corner = np.array([x, y], dtype=np.float32)
    for start in range(0, len(values), NUCLEI_PER_READ):
        stop = min(start + NUCLEI_PER_READ, len(values))
        offsets = np.asarray(outlines["offsets"][start : stop + 1])
        xy = np.asarray(outlines["xy"][offsets[0] : offsets[-1]], np.float32) - corner
        block = values[start:stop]
        image = draw_outlines(image, offsets - offsets[0], xy, block, scale, palette)
    return image


def write_overview(
    slide: Slide, store: str | Path, path: str | Path, region=None
) -> Path:
    """Write :func:`render_results` as a PNG at ``path``."""
    from PIL import Image

    path = Path(path)
    Image.fromarray(render_results(slide, store, region)).save(path)
    return path
