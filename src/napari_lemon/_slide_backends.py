"""File readers behind :class:`napari_lemon.slide.Slide`.

Each reader exposes the level geometry, the file's own microns per pixel and
``read(level, c0, r0, c1, r1)``, which returns the raw pixels ``[r0:r1, c0:c1]`` of a
level as ``(rows, cols, channels)`` in the file's dtype; the slide turns them into
RGB uint8. Rectangles passed to ``read`` always lie inside the level.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tiffslide

logger = logging.getLogger(__name__)

# TIFF resolution units that scanners use for real pixel sizes; INCH is left out
# because ordinary image writers put a screen resolution (72 or 96 dpi) there
METRIC_UNITS = ("CENTIMETER", "MILLIMETER", "MICROMETER")


class SlideError(ValueError):
    """A slide file that cannot be read: unsupported, corrupt or truncated."""


class _LevelTiffSlide(tiffslide.TiffSlide):
    """A TiffSlide whose ``read_region`` takes the location in pixels of the level.

    This avoids a round trip through level-0 coordinates, which can land one pixel
    off when a level's downsample is not an integer.
    """

    # NOTE: tiffslide documents this hook as the one to override for this purpose

    def _read_region_loc_transform(
        self, location: tuple[int, int], level: int
    ) -> tuple[int, int]:
        return location


class TiffLevels:
    """SVS, NDPI, SCN, BIF and (pyramidal) TIFF files, read with tiffslide."""

    def __init__(self, path: Path) -> None:
        with _tifffile_errors() as errors:
            try:
                self._slide = _LevelTiffSlide(path)
            except Exception as err:
                _check_chain(path, errors)
                raise err
            _check_complete(path, self._slide.ts_tifffile, errors)
        self.level_dimensions = self._slide.level_dimensions
        self.level_downsamples = self._slide.level_downsamples
        self.mpp = tiff_mpp(self._slide.properties)
        self.dtype = self.read(0, 0, 0, 1, 1).dtype

    def read(self, level: int, c0: int, r0: int, c1: int, r1: int) -> np.ndarray:
        return self._slide.read_region(
            (c0, r0), level, (c1 - c0, r1 - r0), as_array=True, padding=False
        )

    def zarr_array(self, level: int) -> Any:
        """The level as a zarr array when it is plain RGB uint8, else None."""
        group = self._slide.zarr_group
        if group.attrs.get("tiffslide.series-composition"):
            return None
        if self._slide.properties["tiffslide.series-axes"] != "YXS":
            return None
        array = group[str(level)]
        return array if array.dtype == np.uint8 and array.shape[2] == 3 else None

    def close(self) -> None:
        self._slide.close()


@contextlib.contextmanager
def _tifffile_errors() -> Iterator[list[str]]:
    """Collect what tifffile logs about invalid page offsets: it logs a broken
    page chain (a truncated file) and carries on with the pages it found."""
    errors: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage().split("> ", 1)[-1]  # drop the repr
            if "invalid" in message and "offset" in message:
                errors.append(message)

    handler = Collect(logging.WARNING)
    tifffile_logger = logging.getLogger("tifffile")
    tifffile_logger.addHandler(handler)
    try:
        yield errors
    finally:
        tifffile_logger.removeHandler(handler)


def _check_chain(path: Path, errors: list[str]) -> None:
    """Refuse a TIFF whose page chain tifffile found broken."""
    if errors:
        raise SlideError(
            f"'{path}' is truncated or damaged: {errors[0]} (the file has "
            f"{path.stat().st_size:,} bytes); copy or download it again"
        )


def _check_complete(path: Path, tiff: Any, errors: list[str]) -> None:
    """Refuse a TIFF whose page chain is broken or whose image data runs past
    the end of the file, the marks of an interrupted copy or download."""
    ends = [
        int(np.max(np.add(page.dataoffsets, page.databytecounts), initial=0))
        for series in tiff.series
        for level in series.levels
        for page in level.pages
        if page is not None
    ]
    _check_chain(path, errors)
    size = tiff.filehandle.size
    if ends and max(ends) > size:
        raise SlideError(
            f"'{path}' is truncated: its image data runs to byte {max(ends):,} "
            f"but the file has {size:,} bytes; copy or download it again"
        )


def tiff_mpp(properties: dict[str, Any]) -> float | None:
    """Level-0 microns per pixel from tiffslide's properties, when trustworthy.

    Vendor metadata (e.g. Aperio's ``MPP``) is used as is; a value that tiffslide
    derived from TIFF resolution tags only when their unit is metric.
    """
    mpp = properties.get("tiffslide.mpp-x")
    unit = properties.get("tiff.ResolutionUnit")
    if mpp is None:
        return None
    if unit is not None and unit not in METRIC_UNITS:
        logger.debug("ignoring mpp=%r derived from resolution unit %s", mpp, unit)
        return None
    mpp = float(mpp)
    return mpp if np.isfinite(mpp) and mpp > 0 else None


class ImageLevels:
    """A plain PNG or JPEG image as a one-level slide, decoded on first read."""

    def __init__(self, path: Path) -> None:
        from PIL import Image

        self._image = Image.open(path)  # reads the header only
        self._pixels: np.ndarray | None = None
        self.level_dimensions = (tuple(self._image.size),)
        self.level_downsamples = (1.0,)
        self.mpp = None
        self.dtype = _pil_dtype(self._image.mode)

    def read(self, level: int, c0: int, r0: int, c1: int, r1: int) -> np.ndarray:
        if self._pixels is None:
            self._pixels = _decode(self._image)
        return self._pixels[r0:r1, c0:c1]

    def zarr_array(self, level: int) -> None:
        return None

    def close(self) -> None:
        self._image.close()


def _pil_dtype(mode: str) -> np.dtype:
    """The dtype that ``np.asarray`` gives for a PIL image mode."""
    if mode.startswith("I;16"):
        return np.dtype(np.uint16)
    special = {"1": np.bool_, "I": np.int32, "F": np.float32}
    return np.dtype(special.get(mode, np.uint8))


def _decode(image: Any) -> np.ndarray:
    """Pixels of a PIL image as ``(rows, cols, channels)`` in their own dtype."""
    if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        has_alpha = image.mode == "PA" or "transparency" in image.info
        image = image.convert("RGBA" if has_alpha else "RGB")
    pixels = np.asarray(image)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def as_rgb_uint8(pixels: np.ndarray, value_scale: float = 1.0) -> np.ndarray:
    """Turn grey, grey+alpha, RGB or RGBA pixels of any dtype into RGB uint8.

    Parameters
    ----------
    pixels : ndarray of shape (rows, cols, channels)
        1 to 4 channels; an alpha channel (2 or 4 channels) is composited onto white.
    value_scale : float
        Factor that brings the values to 0..255 (1 for uint8 input).

    Returns
    -------
    ndarray of shape (rows, cols, 3), uint8
    """
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.dtype != np.uint8:
        scaled = np.rint(pixels.astype(np.float32) * value_scale)
        pixels = np.clip(scaled, 0, 255).astype(np.uint8)

    # split off alpha, spread grey to three channels
    alpha = pixels[..., -1:] if pixels.shape[2] in (2, 4) else None
    colour = pixels[..., :-1] if alpha is not None else pixels
    rgb = np.repeat(colour, 3, axis=2) if colour.shape[2] == 1 else colour[..., :3]
    if alpha is None:
        return np.ascontiguousarray(rgb)

    # composite onto white
    weight = alpha.astype(np.float32) / 255.0
    blended = rgb * weight + 255.0 * (1.0 - weight)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
