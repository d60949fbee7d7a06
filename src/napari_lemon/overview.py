"""A picture of one slide's results: nuclei coloured by cluster over the slide.

``lemon analyze`` writes it beside each results store as ``<stem>.overlay.png``,
at most 4096 px a side: outlines where nuclei are a few pixels wide, dots where
the picture is coarser than a nucleus. Only the table, the outlines and a
low-resolution read of the slide are loaded, never the embeddings.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from .slide import Slide

MAX_SIDE = 4096


def read_table_and_outlines(
    path: str | Path,
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The ``obs`` table and packed outlines of a results store, without embeddings.

    Returns
    -------
    obs : DataFrame
    offsets : ndarray of shape (n + 1,), int64
    xy : ndarray of shape (total_vertices, 2), float32
    """
    import zarr
    from anndata.io import read_elem

    root = zarr.open_group(str(path), mode="r")
    outlines = root["uns"]["outlines"]
    obs = read_elem(root["obs"])
    return obs, np.asarray(outlines["offsets"][:]), np.asarray(outlines["xy"][:])


def render_results(
    slide: Slide, store: str | Path, region: tuple[int, int, int, int] | None = None
) -> np.ndarray:
    """Nuclei of ``store`` drawn over ``region`` of ``slide`` (default all of it).

    Returns
    -------
    ndarray of shape (rows, cols, 3), uint8
        At most :data:`MAX_SIDE` px a side.
    """
    from .overlay import draw_outlines

    # the region at a scale that fits, read in bounded bands
    x, y, w, h = region if region is not None else (0, 0, *slide.dimensions)
    image, scale = slide.read_overview((x, y, w, h), MAX_SIDE)

    # nuclei, relative to the region's corner
    obs, offsets, xy = read_table_and_outlines(store)
    if "cluster" in obs:
        values = pd.Categorical(obs["cluster"]).codes.astype(np.int64)
    else:
        values = np.zeros(len(obs), dtype=np.int64)
    xy = np.asarray(xy, dtype=np.float32) - np.array([x, y], dtype=np.float32)
    return draw_outlines(image, offsets, xy, values, scale)


def write_overview(
    slide: Slide, store: str | Path, path: str | Path, region=None
) -> Path:
    """Write :func:`render_results` as a PNG at ``path``."""
    from PIL import Image

    path = Path(path)
    Image.fromarray(render_results(slide, store, region)).save(path)
    return path
