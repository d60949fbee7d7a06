"""Open whole-slide and plain H&E images behind one small API.

Pyramidal and tiled files (Aperio SVS, Hamamatsu NDPI, Leica SCN, Ventana BIF,
generic and OME pyramidal TIFF) are read tile by tile with tiffslide; plain PNG and
JPEG images are decoded whole on their first read and behave as a one-level slide.
Every read returns RGB uint8: grey images are repeated to three channels, an alpha
channel is composited onto white, and 16-bit pixels are scaled to 8 bits.

Coordinates follow tiffslide: ``location`` is the level-0 ``(x, y)`` of the top-left
corner and ``size`` a ``(width, height)`` in pixels of the level read. Arrays are
``(rows, cols, 3)``.

Examples
--------
>>> with open_slide("CMU-1-Small-Region.svs") as slide:  # doctest: +SKIP
...     tile = slide.read_region_at_mpp((0, 0), (1024, 1024), mpp=0.5)
"""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._slide_backends import ImageLevels, SlideError, TiffLevels, as_rgb_uint8

if TYPE_CHECKING:
    import dask.array

logger = logging.getLogger(__name__)

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".qptiff", ".btf")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# formats tiffslide cannot decode, with the name users know them by
UNREADABLE = {
    ".mrxs": "3DHISTECH MIRAX",
    ".dcm": "DICOM",
    ".vms": "Hamamatsu VMS",
    ".vmu": "Hamamatsu VMU",
    ".czi": "Zeiss CZI",
    ".isyntax": "Philips iSyntax",
    ".vsi": "Olympus VSI",
}
MPP_TOLERANCE = 0.01  # a level counts as fine enough when within 1% of the target
DASK_TILE = 1024  # dask chunk side for levels not served by zarr directly
OVERVIEW_BAND_BYTES = 16 << 20  # pixels read at once for a thumbnail or overview


def _supported() -> str:
    return ", ".join(SLIDE_SUFFIXES + IMAGE_SUFFIXES)


def _check_mpp(mpp: float | None, name: str = "mpp") -> float | None:
    """Return ``mpp`` as a float, refusing zero, negative and non-finite values."""
    if mpp is None:
        return None
    if not np.isfinite(mpp) or mpp <= 0:
        raise ValueError(
            f"{name}={mpp!r} must be a positive number of microns per pixel "
            "(e.g. 0.25 for 40x, 0.5 for 20x)"
        )
    return float(mpp)


class Slide:
    """A slide or plain image, read lazily as RGB uint8.

    Parameters
    ----------
    path : str or Path
        SVS, NDPI, SCN, BIF, (pyramidal) TIFF, PNG or JPEG file.
    mpp : float, optional
        Microns per pixel of level 0; overrides the value recorded in the file.

    Attributes
    ----------
    path : Path
    mpp : float or None
        Level-0 microns per pixel: the ``mpp`` given, else the file's own (vendor
        metadata, or TIFF resolution tags in centimetres, millimetres or microns),
        else None.
    dimensions : tuple of int
        ``(width, height)`` of level 0.
    level_count : int
    level_dimensions : tuple of (int, int)
        ``(width, height)`` per level.
    level_downsamples : tuple of float
        Level-0 pixels per pixel of each level.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    SlideError
        When the file is of an unsupported format, or cannot be decoded.
    """

    def __init__(self, path: str | Path, mpp: float | None = None) -> None:
        self.path = Path(path)
        override = _check_mpp(mpp)
        self._levels = _open_levels(self.path)

        # geometry
        self.level_dimensions = tuple(self._levels.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._levels.level_downsamples)
        self.level_count = len(self.level_dimensions)
        self.dimensions = self.level_dimensions[0]

        # scale: the user's value wins over the file's
        recorded = self._levels.mpp
        if override is not None and recorded and abs(override / recorded - 1) > 0.02:
            warnings.warn(
                f"mpp={override:g} given for '{self.path.name}', which records "
                f"{recorded:g} um/px; using {override:g}",
                stacklevel=2,
            )
        self.mpp = override if override is not None else recorded
        logger.debug(
            "%s: mpp=%r (file: %r)", self.path.name, self.mpp, self._levels.mpp
        )
        self._value_scale = self._find_value_scale()

    def __repr__(self) -> str:
        return (
            f"Slide('{self.path.name}', dimensions={self.dimensions}, "
            f"level_count={self.level_count}, mpp={self.mpp!r})"
        )

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the file handle."""
        self._levels.close()

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """Read a rectangle of one level; parts outside the slide are white.

        Parameters
        ----------
        location : (int, int)
            Level-0 ``(x, y)`` of the top-left corner; on a coarser level the read
            starts at the pixel whose corner is nearest, ``round(x / downsample)``.
        level : int
            Pyramid level, ``0 <= level < level_count``.
        size : (int, int)
            ``(width, height)`` in pixels of ``level``.

        Returns
        -------
        ndarray of shape (height, width, 3), uint8
        """
        self._check_level(level)
        width, height = (int(v) for v in size)
        if width < 0 or height < 0:
            raise ValueError(f"size={size!r} must be a non-negative (width, height)")

        # the level pixel whose corner lies nearest to `location`, then clip
        downsample = self.level_downsamples[level]
        col0 = math.floor(location[0] / downsample + 0.5)
        row0 = math.floor(location[1] / downsample + 0.5)
        level_width, level_height = self.level_dimensions[level]
        c0, r0 = max(col0, 0), max(row0, 0)
        c1, r1 = min(col0 + width, level_width), min(row0 + height, level_height)

        # read what lies inside; the rest stays white
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        if c1 > c0 and r1 > r0:
            out[r0 - row0 : r1 - row0, c0 - col0 : c1 - col0] = self._read(
                level, c0, r0, c1, r1
            )
        return out

    def best_level_for_mpp(self, mpp: float) -> int:
        """The coarsest level whose pixels are not larger than ``mpp`` (1% slack).

        Level 0 when the slide's own ``mpp`` is unknown, or when even level 0 is
        coarser than ``mpp``.
        """
        mpp = _check_mpp(mpp)
        if self.mpp is None:
            return 0
        level_mpp = self.mpp * np.asarray(self.level_downsamples)
        fine_enough = np.flatnonzero(level_mpp <= mpp * (1 + MPP_TOLERANCE))
        return int(fine_enough.max()) if len(fine_enough) else 0

    def read_region_at_mpp(
        self, location: tuple[int, int], size: tuple[int, int], mpp: float
    ) -> np.ndarray:
        """Read a level-0 rectangle resampled to ``mpp`` microns per pixel.

        Parameters
        ----------
        location : (int, int)
            Level-0 ``(x, y)`` of the top-left corner.
        size : (int, int)
            ``(width, height)`` in level-0 pixels.
        mpp : float
            Target microns per pixel.

        Returns
        -------
        ndarray of shape (round(height * self.mpp / mpp), round(width * self.mpp / mpp), 3), uint8
        """  # noqa: E501
        slide_mpp = require_mpp(self)
        level = self.best_level_for_mpp(mpp)
        downsample = self.level_downsamples[level]
        width, height = size

        # read from the best level, then resample when the grid differs
        level_size = (math.ceil(width / downsample), math.ceil(height / downsample))
        region = self.read_region(location, level, level_size)
        shape = (round(height * slide_mpp / mpp), round(width * slide_mpp / mpp))
        if region.shape[:2] == shape:
            return region
        return resize_rgb(region, shape)

    def pyramid(self) -> list[dask.array.Array]:
        """One lazy ``(rows, cols, 3)`` uint8 dask array per level, finest first.

        Nothing is read until a part of an array is computed.
        """
        return [self._level_array(level) for level in range(self.level_count)]

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """The whole slide with its longer side at most ``max_size`` pixels.

        Returns
        -------
        ndarray of shape (rows, cols, 3), uint8
        """
        if max_size < 1:
            raise ValueError(f"max_size={max_size!r} must be a positive pixel count")
        width, height = self.dimensions
        scale = min(1.0, max_size / max(width, height))
        shape = (max(1, round(height * scale)), max(1, round(width * scale)))

        # a read no smaller than the result, in bounded bands, then the exact size
        step = max(1, math.floor(max(width, height) / max_size))
        image, _ = self.read_overview((0, 0, width, height), step=step)
        return image if image.shape[:2] == shape else resize_rgb(image, shape)

    def read_overview(
        self,
        region: tuple[int, int, int, int],
        max_side: int | None = None,
        step: int | None = None,
    ) -> tuple[np.ndarray, int]:
        """A region subsampled by a whole factor so neither side exceeds ``max_side``.

        Reads the coarsest level that is still fine enough, in bands of at most
        :data:`OVERVIEW_BAND_BYTES`, keeping every ``k``-th pixel of each band: a
        picture of a whole slide without ever holding a fine level whole (a
        single-level slide of 40,000 px a side is 5 GB of pixels).

        Parameters
        ----------
        region : (x, y, width, height)
            Level-0 px.
        max_side : int, optional
            Largest side of the result.
        step : int, optional
            Level-0 px per result pixel instead (at least 1); the level read is
            the coarsest with a downsample not above it.

        Returns
        -------
        image : ndarray of shape (rows, cols, 3), uint8
        step : int
            Level-0 px per pixel of ``image``.
        """
        x, y, width, height = (int(v) for v in region)
        fit = step is None  # the stride rounds up to fit max_side, else down
        if fit:
            if not max_side or max_side < 1:
                raise ValueError(
                    f"max_side={max_side!r} must be a positive pixel count"
                )
            step = math.ceil(max(width, height) / max_side)
        step = max(1, int(step))

        # the coarsest level no coarser than the step, and its own stride
        level = max(i for i, d in enumerate(self.level_downsamples) if d <= step)
        downsample = self.level_downsamples[level]
        stride = math.ceil(step / downsample) if fit else int(step // downsample)
        stride = max(1, stride)
        step = downsample * stride
        cols = math.ceil(width / downsample)
        rows = math.ceil(height / downsample)

        # bands of whole strides of rows
        band = max(stride, OVERVIEW_BAND_BYTES // (3 * cols) // stride * stride)
        parts = []
        for top in range(0, rows, band):
            location = (x, round(y + top * downsample))
            size = (cols, min(band, rows - top))
            band_pixels = self.read_region(location, level, size)
            parts.append(band_pixels[::stride, ::stride].copy())  # not a view: frees it
        return np.concatenate(parts), round(step)

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.level_count:
            raise ValueError(
                f"level={level!r} out of range 0..{self.level_count - 1} "
                f"for '{self.path.name}'"
            )

    def _read(self, level: int, c0: int, r0: int, c1: int, r1: int) -> np.ndarray:
        """Pixels ``[r0:r1, c0:c1]`` of a level as RGB uint8 (inside the level)."""
        try:
            pixels = self._levels.read(level, c0, r0, c1, r1)
        except Exception as err:
            raise SlideError(
                f"could not decode rows {r0}:{r1}, columns {c0}:{c1} of level "
                f"{level} of '{self.path}': {err}. The file may be truncated or "
                "corrupt; copy or export it again"
            ) from err
        return as_rgb_uint8(pixels, self._value_scale)

    def _read_block(self, level: int, block_info: dict | None = None) -> np.ndarray:
        (r0, r1), (c0, c1), _ = block_info[None]["array-location"]
        return self._read(level, c0, r0, c1, r1)

    def _level_array(self, level: int) -> dask.array.Array:
        import dask.array as da
        from dask.base import tokenize

        native = self._levels.zarr_array(level)
        if native is not None and self._value_scale == 1.0:
            guarded = _GuardedArray(native, self.path, level)
            return da.from_array(guarded, chunks=native.chunks, asarray=True)

        # read tile by tile through the RGB conversion
        width, height = self.level_dimensions[level]
        chunks = da.core.normalize_chunks((DASK_TILE, DASK_TILE, 3), (height, width, 3))
        meta = np.empty((0, 0, 0), dtype=np.uint8)
        token = tokenize(str(self.path), self.path.stat().st_mtime_ns, level)
        name = f"slide-level{level}-{token}"
        return da.map_blocks(
            self._read_block,
            level=level,
            chunks=chunks,
            dtype=np.uint8,
            meta=meta,
            name=name,
        )

    def _find_value_scale(self) -> float:
        """Factor that brings the file's pixel values to 0..255 (1 for uint8)."""
        dtype = self._levels.dtype
        if dtype == np.uint8:
            return 1.0
        if dtype.kind == "b":
            return 255.0

        # scale by the maximum of the coarsest level (the whole image if single)
        last = self.level_count - 1
        width, height = self.level_dimensions[last]
        peak = float(np.max(self._levels.read(last, 0, 0, width, height)))
        if np.issubdtype(dtype, np.floating) and peak <= 1.0:
            return 255.0
        warnings.warn(
            f"'{self.path.name}' stores {dtype} pixels; scaling them to 8 "
            f"bits by their maximum {peak:g}",
            stacklevel=3,
        )
        return 255.0 / peak if peak > 0 else 1.0


class _GuardedArray:
    """A level's zarr array whose decoding errors become :class:`SlideError`.

    Dask reads the chunks of a native level through it, so that a truncated
    or corrupt tile met while computing says which file and level it is in.
    """

    def __init__(self, array: Any, path: Path, level: int) -> None:
        self._array, self._path, self._level = array, path, level
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self._array[key])
        except Exception as err:
            raise SlideError(
                f"could not decode {_describe_key(key)} of level {self._level} "
                f"of '{self._path}': {err}. The file may be truncated or corrupt; "
                "copy or export it again"
            ) from err


def _describe_key(key: Any) -> str:
    """'rows a:b, columns c:d' for a tuple of slices, else the key itself."""
    if (
        isinstance(key, tuple)
        and len(key) >= 2
        and all(isinstance(k, slice) for k in key[:2])
    ):
        rows, cols = key[:2]
        return f"rows {rows.start}:{rows.stop}, columns {cols.start}:{cols.stop}"
    return f"pixels {key!r}"


def _open_levels(path: Path) -> Any:
    """The backend that reads ``path``, or a clear error saying why none can."""
    if not path.exists():
        raise FileNotFoundError(f"slide file not found: '{path}'")
    suffix = path.suffix.lower()
    if path.is_dir() and suffix not in UNREADABLE:
        raise SlideError(
            f"'{path}' is a folder; give one slide or image file (folder-based "
            "formats such as DICOM need converting to OME-TIFF first)"
        )
    if suffix in UNREADABLE:
        kind = UNREADABLE[suffix]
        raise SlideError(
            f"'{path}': tiffslide cannot read {kind} slides; convert it to OME-TIFF "
            "(e.g. with Bio-Formats bfconvert or QuPath) and open that file"
        )
    if suffix not in SLIDE_SUFFIXES + IMAGE_SUFFIXES:
        raise SlideError(
            f"'{path}' has an unsupported suffix {suffix!r}; supported formats: "
            f"{_supported()}"
        )

    # open, turning any decoder failure into one readable message
    backend = ImageLevels if suffix in IMAGE_SUFFIXES else TiffLevels
    try:
        return backend(path)
    except SlideError:
        raise
    except Exception as err:
        raise SlideError(
            f"'{path}' is not a readable slide or image ({type(err).__name__}: "
            f"{err}); it may be truncated, corrupt or of another format. "
            f"Supported formats: {_supported()}"
        ) from err


def resize_rgb(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resample an RGB uint8 image to ``shape`` (rows, cols), anti-aliased.

    Returns
    -------
    ndarray of shape (*shape, 3), uint8
    """
    from skimage.transform import resize

    shrinking = shape[0] < image.shape[0] or shape[1] < image.shape[1]
    out = resize(
        image,
        (*shape, image.shape[2]),
        order=1,
        anti_aliasing=shrinking,
        preserve_range=True,
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def open_slide(path: str | Path, mpp: float | None = None) -> Slide:
    """Open a slide or plain image; see :class:`Slide`."""
    return Slide(path, mpp=mpp)


def require_mpp(slide: Slide) -> float:
    """The slide's microns per pixel, or a :class:`SlideError` saying how to set it."""
    if slide.mpp is None:
        raise SlideError(
            f"'{slide.path.name}' records no pixel size (mpp); pass --mpp (microns "
            "per pixel, e.g. 0.25 for 40x, 0.5 for 20x)"
        )
    return slide.mpp
