"""The morphology map panel's work in the worker thread, and the saved map.

:func:`map_job` lays nuclei out on the map and saves it (``obsm["X_umap"]``,
NaN for nuclei not mapped; ``uns["lemon_map"]`` says how it was made);
:func:`thumbnail_job` reads one thumbnail per occupied cell of a grid over the
map, from the slide file or from an image layer's pixels; :func:`stored_map`
finds a map saved with the results, so reopening them shows it again.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image

if TYPE_CHECKING:
    import napari
    from napari.layers import Points

    from napari_lemon.analysis.morphology_map import MorphologyMap

MAP_KEY = "X_umap"  # obsm: (n_obs, 2) float32, NaN where not mapped
MAP_INFO_KEY = "lemon_map"  # uns: how the map was made
THUMBNAIL_MPP = 0.25  # the encoder's scale: thumbnails show what it saw
THUMBNAIL_PX = 48
DEFAULT_SAMPLE = 20_000
_compiled = False  # numba compiles umap-learn on the first map of a process


# ------------------------------------------------------------- worker jobs
def map_job(
    embeddings: np.ndarray,
    store: Path | None,
    method: str = "umap",
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    report: Callable[[str, int, int], None] | None = None,
) -> Generator[tuple[str, int, int], None, tuple[Any, np.ndarray, str | None]]:
    """The map of ``embeddings``, saved into ``store``; runs in the worker.

    Returns
    -------
    (MorphologyMap, coordinates, problem)
        ``coordinates`` of shape (n_nuclei, 2), float32, NaN where not mapped;
        ``problem`` the reason the store could not be written, else None.
    """
    from napari_lemon.analysis.morphology_map import embed_2d

    global _compiled
    first = (
        ""
        if _compiled
        else " (the first map since napari started compiles first: ~30 s)"
    )
    yield f"{method} map of {min(sample, len(embeddings)):,} nuclei{first}", 0, 0
    found = embed_2d(
        embeddings, method=method, sample=sample, seed=seed, progress=report
    )
    _compiled = True
    coordinates = np.full((len(embeddings), 2), np.nan, np.float32)
    coordinates[found.rows] = found.xy
    if store is None:
        return found, coordinates, None

    yield f"saving the map into {Path(store).name}", 0, 0
    info = {"method": found.method, "sample": int(sample), "seed": int(seed)}
    try:
        from napari_lemon.store_columns import write_analysis

        write_analysis(store, obsm={MAP_KEY: coordinates}, uns={MAP_INFO_KEY: info})
    except (OSError, ValueError) as err:
        return found, coordinates, f"{type(err).__name__}: {err}"
    return found, coordinates, None


def thumbnail_job(
    xy: np.ndarray,
    centroids_xy: np.ndarray,
    n_cells: int,
    slide_path: Path | None,
    image: Any,
    mpp: float,
) -> Generator[tuple[str, int, int], None, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One thumbnail per occupied cell of an ``n_cells`` grid over the map.

    ``centroids_xy`` are the level-0 centroids of the map's points; pictures come
    from ``slide_path`` (opened at ``mpp``) or else from ``image``, the level-0
    pixels of an image layer. Returns ``(indices, boxes, images)``.
    """
    from napari_lemon.analysis.morphology_map import thumbnail_grid

    indices, boxes = thumbnail_grid(xy, n_cells=n_cells)
    indices = np.asarray(indices, dtype=np.int64)
    yield f"reading {len(indices)} thumbnails", 0, 0
    centroids = np.asarray(centroids_xy, dtype=np.float64)[indices]
    if slide_path is not None:
        from napari_lemon.slide import open_slide
        from napari_lemon.thumbnails import nucleus_thumbnails

        with open_slide(slide_path, mpp=mpp) as slide:
            images = nucleus_thumbnails(
                slide, centroids, mpp=THUMBNAIL_MPP, size=THUMBNAIL_PX
            )
    else:
        from napari_lemon.thumbnails import thumbnails_from_image

        images = thumbnails_from_image(
            image, centroids, mpp, mpp=THUMBNAIL_MPP, size=THUMBNAIL_PX
        )
    return indices, np.asarray(boxes, dtype=float), np.asarray(images)


def stored_map(adata: Any) -> MorphologyMap | None:
    """The map saved in ``adata.obsm["X_umap"]``, or None."""
    from napari_lemon.analysis.morphology_map import MorphologyMap

    coordinates = adata.obsm.get(MAP_KEY)
    if coordinates is None:
        return None
    coordinates = np.asarray(coordinates, dtype=np.float32)
    rows = np.flatnonzero(np.isfinite(coordinates).all(axis=1)).astype(np.int64)
    if len(rows) == 0:
        return None
    method = str(adata.uns.get(MAP_INFO_KEY, {}).get("method", "umap"))
    return MorphologyMap(rows=rows, xy=coordinates[rows], method=method)


def image_of(viewer: napari.viewer.Viewer, layer: Points) -> Image | None:
    """The RGB image layer the nuclei lie on (same transform), if any."""
    placed = [
        image
        for image in viewer.layers
        if isinstance(image, Image)
        and image.rgb
        and np.allclose(image.scale[-2:], layer.scale[-2:])
        and np.allclose(image.translate[-2:], layer.translate[-2:])
    ]
    named = [image for image in placed if layer.name.startswith(image.name)]
    return (named or placed or [None])[0]
