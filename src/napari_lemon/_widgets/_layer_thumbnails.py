"""Where the thumbnails of a nuclei layer come from: its slide file, or its image.

A nuclei layer opened from a slide records the file
(``metadata["lemon_slide_path"]``): thumbnails are read from it with
:func:`napari_lemon.thumbnails.nucleus_thumbnails`. A layer analysed from pixels
without a file (a layer made in the console, a sample) has none: the RGB image
layer drawn under it (same transform) serves instead, through
:func:`napari_lemon.thumbnails.thumbnails_from_image`. Finding the source needs
the viewer (main thread); reading the pixels does not (a worker thread).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .._reader import MPP_KEY, SLIDE_PATH_KEY

if TYPE_CHECKING:
    import napari
    from napari.layers import Points

THUMBNAIL_PX = 48
THUMBNAIL_MPP = 0.25  # 12 um across: a nucleus and its surroundings
NO_PICTURE_GREY = 200


@dataclass
class ThumbnailSource:
    """The pixels thumbnails of one nuclei layer are read from.

    Attributes
    ----------
    slide_path : Path or None
        The slide file, when the layer has one.
    image : array-like of shape (rows, cols, 3 or 4), or None
        Else the level-0 pixels of the image layer under the nuclei.
    mpp : float
        Level-0 microns per pixel.
    """

    slide_path: Path | None
    image: Any
    mpp: float

    @property
    def found(self) -> bool:
        """Whether there are pixels to read."""
        return self.slide_path is not None or self.image is not None

    def read(self, centroids_xy: np.ndarray, size: int = THUMBNAIL_PX) -> np.ndarray:
        """Thumbnails of nuclei at level-0 ``(x, y)``; grey without a source.

        Returns
        -------
        ndarray of shape (n, size, size, 3), uint8
        """
        from napari_lemon.thumbnails import nucleus_thumbnails, thumbnails_from_image

        centroids_xy = np.asarray(centroids_xy, dtype=np.float64).reshape(-1, 2)
        if self.slide_path is not None:
            from napari_lemon.slide import open_slide

            with open_slide(self.slide_path, mpp=self.mpp) as slide:
                return nucleus_thumbnails(slide, centroids_xy, THUMBNAIL_MPP, size)
        if self.image is not None:
            return thumbnails_from_image(
                self.image, centroids_xy, self.mpp, THUMBNAIL_MPP, size
            )
        return np.full((len(centroids_xy), size, size, 3), NO_PICTURE_GREY, np.uint8)


def thumbnail_source(viewer: napari.viewer.Viewer, layer: Points) -> ThumbnailSource:
    """The slide file of ``layer``, else the RGB image layer placed like it."""
    from napari.layers import Image

    mpp = float(layer.metadata.get(MPP_KEY) or 1.0)
    path = layer.metadata.get(SLIDE_PATH_KEY)
    if path is not None and Path(path).exists():
        return ThumbnailSource(Path(path), None, mpp)
    for image in viewer.layers:
        if not (isinstance(image, Image) and image.rgb and _placed_alike(image, layer)):
            continue
        path = image.metadata.get(SLIDE_PATH_KEY)
        if path is not None and Path(path).exists():
            return ThumbnailSource(Path(path), None, mpp)
        return ThumbnailSource(
            None, image.data[0] if image.multiscale else image.data, mpp
        )
    return ThumbnailSource(None, None, mpp)


def _placed_alike(image: Any, layer: Points) -> bool:
    return (
        np.allclose(image.scale[-2:], layer.scale[-2:])
        and np.allclose(image.translate[-2:], layer.translate[-2:])
        and np.allclose(image.affine.affine_matrix, layer.affine.affine_matrix)
    )
