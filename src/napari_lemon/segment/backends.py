"""StarDist and Cellpose behind the plugin's segmenter signature.

Neither library is a dependency: each adapter imports its library on first use
and says how to install it when it is missing, or how to provide weights when
they cannot be loaded. Both adapters bring the image to the scale the model
expects, run it, and map its labels back to the input's grid as :class:`Nuclei`.

- StarDist (Schmidt et al., MICCAI 2018): ``StarDist2D``; by default the
  pretrained ``2D_versatile_he`` model, trained on H&E at about 0.25 um/px.
- Cellpose (Stringer et al., Nat. Methods 18, 2021; Pachitariu et al., 2025):
  ``CellposeModel``; ``model`` is a built-in model name (``"cpsam"`` in
  Cellpose 4, ``"nuclei"`` in Cellpose 3) or a path to trained weights.
"""

from __future__ import annotations

import functools
import importlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from skimage.transform import resize

from .._slide_backends import as_rgb_uint8
from .nuclei import Nuclei, check_mpp, nuclei_from_labels

logger = logging.getLogger(__name__)


class BackendError(RuntimeError):
    """A segmentation backend that is not installed or whose weights are missing."""


@dataclass
class StarDistParams:
    """Parameters of :func:`segment_stardist`.

    Attributes
    ----------
    model : str
        A pretrained model name known to ``StarDist2D.from_pretrained``, or the
        folder of a trained model (its ``config.json`` and weights).
    working_mpp : float
        Microns per pixel the model was trained at.
    prob_thresh, nms_thresh : float or None
        StarDist's thresholds; None keeps the model's own.
    """

    model: str = "2D_versatile_he"
    working_mpp: float = 0.25
    prob_thresh: float | None = None
    nms_thresh: float | None = None

    def __post_init__(self) -> None:
        _check_positive("working_mpp", self.working_mpp)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CellposeParams:
    """Parameters of :func:`segment_cellpose`.

    Attributes
    ----------
    model : str
        A built-in Cellpose model name or the path of trained weights.
    working_mpp : float
        Microns per pixel the image is brought to before Cellpose sees it.
    diameter_um : float
        Typical nucleus diameter, in microns (passed to Cellpose in pixels).
    gpu : bool
        Let Cellpose use a GPU when it finds one.
    """

    model: str = "cpsam"
    working_mpp: float = 0.5
    diameter_um: float = 8.0
    gpu: bool = False

    def __post_init__(self) -> None:
        _check_positive("working_mpp", self.working_mpp)
        _check_positive("diameter_um", self.diameter_um)

    def as_dict(self) -> dict:
        return asdict(self)


def segment_stardist(
    image: np.ndarray, mpp: float, params: StarDistParams | None = None
) -> Nuclei:
    """Find nuclei with a StarDist model.

    Parameters
    ----------
    image : ndarray of shape (rows, cols, 3 or 4), uint8
    mpp : float
        Microns per pixel of ``image``.
    params : StarDistParams, optional

    Returns
    -------
    Nuclei
        At the resolution of ``image``.
    """
    params = params or StarDistParams()
    image = _check_image(image, mpp)
    model = _stardist_model(params.model)

    # normalise by percentiles (as StarDist's H&E examples do), at the model's scale
    work = _resample(image, mpp, params.working_mpp)
    low, high = np.percentile(work, (1.0, 99.8))
    work = (work - low) / max(high - low, 1e-6)
    labels, _ = model.predict_instances(
        work.astype(np.float32),
        prob_thresh=params.prob_thresh,
        nms_thresh=params.nms_thresh,
    )
    return _to_input_grid(np.asarray(labels), image.shape, mpp)


def segment_cellpose(
    image: np.ndarray, mpp: float, params: CellposeParams | None = None
) -> Nuclei:
    """Find nuclei with a Cellpose model.

    Parameters
    ----------
    image : ndarray of shape (rows, cols, 3 or 4), uint8
    mpp : float
        Microns per pixel of ``image``.
    params : CellposeParams, optional

    Returns
    -------
    Nuclei
        At the resolution of ``image``.
    """
    params = params or CellposeParams()
    image = _check_image(image, mpp)
    model = _cellpose_model(params.model, params.gpu)

    # Cellpose sizes nuclei by their diameter in pixels of what it is given
    work = _resample(image, mpp, params.working_mpp)
    result = model.eval(work, diameter=params.diameter_um / params.working_mpp)
    return _to_input_grid(np.asarray(result[0]), image.shape, mpp)


# --- loading ----------------------------------------------------------------------


def _require(module: str, segmenter: str, install: str) -> Any:
    """Import ``module`` or say how to install the backend."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise BackendError(
            f"segmenter={segmenter!r} needs the {module.split('.')[0]!r} package, "
            f"which is not installed ({err}); install it with `{install}`, or "
            "choose the bundled 'unet' or 'classical' segmenter (--segmenter on "
            "the command line)"
        ) from err


@functools.lru_cache(maxsize=2)
def _stardist_model(model: str) -> Any:
    models = _require("stardist.models", "stardist", "pip install stardist tensorflow")
    folder = Path(model)
    try:
        if folder.is_dir():
            return models.StarDist2D(None, name=folder.name, basedir=str(folder.parent))
        loaded = models.StarDist2D.from_pretrained(model)
    except Exception as err:  # StarDist raises several kinds when weights are absent
        raise BackendError(_weights_message("stardist", model, err)) from err
    if loaded is None:  # some versions return None for an unknown name
        raise BackendError(_weights_message("stardist", model, "unknown name"))
    return loaded


@functools.lru_cache(maxsize=2)
def _cellpose_model(model: str, gpu: bool) -> Any:
    models = _require("cellpose.models", "cellpose", "pip install cellpose")
    try:
        return models.CellposeModel(gpu=gpu, pretrained_model=model)
    except Exception as err:  # Cellpose raises several kinds when weights are absent
        raise BackendError(_weights_message("cellpose", model, err)) from err


def _weights_message(segmenter: str, model: str, err: Exception | str) -> str:
    return (
        f"segmenter={segmenter!r}: could not load model={model!r} ({err}). "
        "Pretrained weights are downloaded on first use, which needs internet; "
        "without it, pass model= the path of weights you already have"
    )


# --- conversions ------------------------------------------------------------------


def _check_image(image: np.ndarray, mpp: float) -> np.ndarray:
    check_mpp(mpp)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise ValueError(
            f"image has shape {image.shape} and dtype {image.dtype}; expected RGB "
            "uint8 of shape (rows, cols, 3) (or RGBA)"
        )
    return as_rgb_uint8(image)


def _check_positive(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive number")


def _resample(image: np.ndarray, mpp: float, work_mpp: float) -> np.ndarray:
    """RGB uint8 -> float32 0..255 at ``work_mpp`` (anti-aliased when shrinking)."""
    shape = tuple(max(1, round(n * mpp / work_mpp)) for n in image.shape[:2])
    if shape == image.shape[:2]:
        return image.astype(np.float32)
    out = resize(image, shape + (3,), order=1, anti_aliasing=True, preserve_range=True)
    return out.astype(np.float32)


def _to_input_grid(labels: np.ndarray, shape: tuple[int, ...], mpp: float) -> Nuclei:
    """A backend's label image, nearest-resampled to ``shape``, as Nuclei."""
    if labels.shape != tuple(shape[:2]):
        rows = (np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0]
        cols = (np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1]
        labels = labels[rows.astype(np.intp)[:, None], cols.astype(np.intp)[None, :]]
    return nuclei_from_labels(labels.astype(np.int32), mpp)
