"""Nucleus segmentation behind one call signature.

A segmenter is any callable ``(image, mpp) -> Nuclei`` taking an RGB uint8 image of
shape (rows, cols, 3) and its microns per pixel. :data:`SEGMENTERS` names the ones
built in; :func:`create_segmenter` binds parameters to one of them.

Examples
--------
>>> import numpy as np
>>> segment = create_segmenter("classical", min_area_um2=12.0)
>>> len(segment(np.full((32, 32, 3), 255, np.uint8), 0.5))
0
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from .backends import (
    CellposeParams,
    StarDistParams,
    segment_cellpose,
    segment_stardist,
)
from .classical import ClassicalParams, segment_classical
from .nuclei import Nuclei
from .unet import UNetParams, segment_unet

Segmenter = Callable[[np.ndarray, float], Nuclei]

SEGMENTERS: dict[str, Callable[..., Nuclei]] = {
    "classical": segment_classical,
    "unet": segment_unet,
    "stardist": segment_stardist,
    "cellpose": segment_cellpose,
}
PARAMS = {
    "classical": ClassicalParams,
    "unet": UNetParams,
    "stardist": StarDistParams,
    "cellpose": CellposeParams,
}

# NOTE: the U-Net beats the classical segmenter on MoNuSeg PQ and AJI (test and
# train, benchmarks/README.md); classical stays as the torch-free fallback.
DEFAULT_SEGMENTER = "unet"

__all__ = [
    "DEFAULT_SEGMENTER",
    "PARAMS",
    "SEGMENTERS",
    "CellposeParams",
    "ClassicalParams",
    "Nuclei",
    "Segmenter",
    "StarDistParams",
    "UNetParams",
    "create_segmenter",
    "segment_classical",
    "segment_nuclei",
    "segment_unet",
]


def create_segmenter(name: str, **params) -> Segmenter:
    """A segmenter ``(image, mpp) -> Nuclei`` with its parameters bound.

    Parameters
    ----------
    name : str
        A key of :data:`SEGMENTERS`.
    **params
        Fields of that segmenter's parameter class (e.g. :class:`ClassicalParams`).
    """
    if name not in SEGMENTERS:
        raise ValueError(
            f"segmenter={name!r} is unknown; choose one of {sorted(SEGMENTERS)}"
        )
    try:
        bound = PARAMS[name](**params)
    except TypeError as err:
        raise ValueError(f"segmenter {name!r}: {err}") from err
    return partial(SEGMENTERS[name], params=bound)


def segment_nuclei(
    image: np.ndarray, mpp: float, segmenter: str = DEFAULT_SEGMENTER, **params
) -> Nuclei:
    """Segment nuclei in an RGB image with the named segmenter.

    Parameters
    ----------
    image : ndarray of shape (rows, cols, 3), uint8
    mpp : float
        Microns per pixel of ``image``.
    segmenter : str
        A key of :data:`SEGMENTERS`; default :data:`DEFAULT_SEGMENTER`.
    **params
        Parameters of that segmenter.

    Returns
    -------
    Nuclei
    """
    return create_segmenter(segmenter, **params)(image, mpp)
