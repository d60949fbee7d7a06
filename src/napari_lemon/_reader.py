"""napari reader: whole-slide and plain H&E images as lazy multiscale image layers.

The layer data are the dask arrays of :meth:`napari_lemon.slide.Slide.pyramid`, so
napari reads only the tiles it draws, at the level it draws. A slide with a known
pixel size opens in microns (``scale = (mpp, mpp)``), so layers of different slides
and the nuclei found on them line up in physical units.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari_lemon.slide import Slide

LayerData = tuple[Any, dict[str, Any], str]
SLIDE_PATH_KEY = "lemon_slide_path"
MPP_KEY = "mpp"


def napari_get_reader(path: str | Path | list) -> Callable | None:
    """The reader for ``path``, or None when napari-lemon does not read it.

    Parameters
    ----------
    path : str, Path or list of them
        What napari was asked to open. Only one file at a time is read.

    Returns
    -------
    callable or None
        :func:`read_slide` for files with a slide or image suffix.
    """
    from napari_lemon.slide import IMAGE_SUFFIXES, SLIDE_SUFFIXES

    # one existing file with a suffix we know
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, str | Path) or not Path(path).is_file():
        return None
    if not str(path).lower().endswith(SLIDE_SUFFIXES + IMAGE_SUFFIXES):
        return None
    return read_slide


def read_slide(path: str | Path | list) -> list[LayerData]:
    """Open a slide as one image layer; see :func:`slide_layer_data`."""
    from napari_lemon.slide import open_slide

    if isinstance(path, list | tuple):
        path = path[0]
    return [slide_layer_data(open_slide(path))]


def slide_layer_data(slide: Slide) -> LayerData:
    """Image layer data for ``slide``: its pyramid, scale and provenance.

    Parameters
    ----------
    slide : Slide
        An open slide; its arrays stay lazy.

    Returns
    -------
    (data, kwargs, "image")
        ``data`` is the list of ``(rows, cols, 3)`` uint8 dask arrays, finest first
        (a single array when the file has one level); ``kwargs`` hold ``rgb``,
        ``multiscale``, ``name``, ``metadata`` (``lemon_slide_path``, ``mpp``) and,
        when the pixel size is known, ``scale`` in microns and ``units``.
    """
    pyramid = slide.pyramid()
    kwargs: dict[str, Any] = {
        "name": slide.path.name,
        "rgb": True,
        "multiscale": len(pyramid) > 1,
        "contrast_limits": (0, 255),
        "metadata": {SLIDE_PATH_KEY: str(slide.path), MPP_KEY: slide.mpp},
    }

    # physical scale when the file records it
    if slide.mpp is not None:
        kwargs.update(scale=(slide.mpp, slide.mpp), units=("um", "um"))
    else:
        warnings.warn(
            f"'{slide.path.name}' records no pixel size: it opens in pixels. Enter "
            "its microns per pixel (mpp, e.g. 0.25 for 40x, 0.5 for 20x) in the "
            "LEMON nuclei panel before finding nuclei",
            stacklevel=2,
        )
    data = pyramid if len(pyramid) > 1 else pyramid[0]
    return data, kwargs, "image"
