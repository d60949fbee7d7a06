"""A gigapixel benchmark slide made at run time from real 40x H&E tiles.

The mosaic is a pyramidal, tiled, JPEG-compressed TIFF whose level 0 is at
0.25 um/px (TIFF resolution tags in centimetres, which ``open_slide`` reads).
Its layout imitates a scanned section:

- a low-resolution *tissue mask* (one mask pixel = ``MASK_PX`` level-0 pixels)
  of irregular blobs, from smoothed seeded noise thresholded so that a chosen
  fraction of the slide is tissue;
- a grid of ``CELL_PX`` cells; every cell that touches the mask gets a real
  MoNuSeg tile (centre-cropped to ``CELL_PX``, flipped and/or turned by a
  multiple of 90 degrees), shown where the mask is set;
- off-white glass with faint noise everywhere else.

Every level is rendered tile by tile straight from the source tiles (coarser
levels from block means of the cells), and the tiles are streamed to tifffile,
so memory is bounded by the source tiles and one output tile, not by the slide.
A JSON sidecar records what was placed where, so that nuclei counts can be
related to the source tiles.

Usage::

    python benchmarks/mosaic.py --side 40960 [--out benchmarks/.fixtures/m.tif]
        [--tissue-fraction 0.3] [--seed 0] [--data ../shared/data]

Data: MoNuSeg 2018 (Kumar et al., IEEE TMI 36(7), 2017 and 39(5), 2020),
CC BY-NC-SA 4.0; the fixture is never committed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from machine import describe

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
DEFAULT_DIR = REPO / "benchmarks" / ".fixtures"

MPP = 0.25  # level-0 microns per pixel recorded in the file
CELL_PX = 960  # side of one placed source tile (MoNuSeg tiles are 1000 px)
MASK_PX = 64  # level-0 pixels per tissue-mask pixel; divides CELL_PX
TILE_PX = 512  # side of a TIFF tile
MAX_DOWNSAMPLE = MASK_PX  # coarser levels would split mask pixels
MIN_LEVEL_PX = 1024  # no level whose longer side is below this
BLOB_CELLS = 4.0  # blob size: smoothing of the mask noise, in cells
GLASS = (242, 240, 244)  # background colour, RGB
GLASS_NOISE = 2.0  # standard deviation of the background noise
JPEG_QUALITY = 90


@dataclass
class Layout:
    """What goes where on a mosaic.

    Attributes
    ----------
    side : int
        Width and height of level 0 in pixels.
    mask : ndarray of shape (ceil(side / MASK_PX),) * 2, bool
        Tissue mask; pixel ``(row, col)`` covers level-0 pixels
        ``[col * MASK_PX, (col + 1) * MASK_PX)`` in x, likewise in y.
    source : ndarray of shape (n_cells, n_cells), int
        Index into ``names`` of the tile placed in each cell, -1 for none.
    orientation : ndarray of shape (n_cells, n_cells), int
        0-3: quarter turns; 4-7: the same after a left-right flip.
    names : list of Path
        Source tiles.
    """

    side: int
    mask: np.ndarray
    source: np.ndarray
    orientation: np.ndarray
    names: list[Path]
    seed: int = 0
    tissue_fraction: float = 0.3

    def placements(self) -> list[dict]:
        """One record per placed tile: name, level-0 box, orientation, tissue."""
        records = []
        for row, col in zip(*np.nonzero(self.source >= 0), strict=True):
            x, y = int(col) * CELL_PX, int(row) * CELL_PX
            w, h = min(CELL_PX, self.side - x), min(CELL_PX, self.side - y)
            cell_mask = self.mask[
                y // MASK_PX : -(-(y + h) // MASK_PX),
                x // MASK_PX : -(-(x + w) // MASK_PX),
            ]
            records.append(
                {
                    "source": self.names[self.source[row, col]].stem,
                    "x": x,
                    "y": y,
                    "width": w,
                    "height": h,
                    "orientation": int(self.orientation[row, col]),
                    "tissue_fraction": round(float(cell_mask.mean()), 4),
                }
            )
        return records


def source_tiles(data: Path) -> list[Path]:
    """The MoNuSeg train and test images under ``data``, sorted by name."""
    tiles = sorted((data / "monuseg").glob("*/images/*.tif"))
    if not tiles:
        raise FileNotFoundError(
            f"no MoNuSeg tiles under '{data / 'monuseg'}'; pass --data, the folder "
            "holding monuseg/train/images and monuseg/test/images"
        )
    return tiles


def make_layout(
    side: int,
    sources: list[Path],
    tissue_fraction: float = 0.3,
    seed: int = 0,
) -> Layout:
    """A deterministic tissue mask and tile placement for a ``side`` px mosaic."""
    from scipy import ndimage

    if side < TILE_PX:
        raise ValueError(f"side={side!r} must be at least {TILE_PX} pixels")
    if not 0 < tissue_fraction <= 1:
        raise ValueError(
            f"tissue_fraction={tissue_fraction!r} must lie in (0, 1], e.g. 0.3"
        )
    rng = np.random.default_rng(seed)

    # blobs: smoothed noise above its (1 - fraction) quantile
    n_mask = -(-side // MASK_PX)
    noise = rng.standard_normal((n_mask, n_mask))
    sigma = BLOB_CELLS * CELL_PX / MASK_PX
    field_ = ndimage.gaussian_filter(noise, sigma, mode="reflect")
    mask = field_ > np.quantile(field_, 1 - tissue_fraction)

    # one source tile per cell that touches the mask
    n_cells = -(-side // CELL_PX)
    per_cell = CELL_PX // MASK_PX
    padded = np.zeros((n_cells * per_cell,) * 2, dtype=bool)
    padded[:n_mask, :n_mask] = mask
    touched = padded.reshape(n_cells, per_cell, n_cells, per_cell).any(axis=(1, 3))
    source = rng.integers(0, len(sources), (n_cells, n_cells))
    orientation = rng.integers(0, 8, (n_cells, n_cells))
    source[~touched] = -1
    return Layout(side, mask, source, orientation, list(sources), seed, tissue_fraction)


class Renderer:
    """Pixels of any level of a mosaic, one tile at a time."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self._cells: dict[tuple[int, int], np.ndarray] = {}
        rng = np.random.default_rng(layout.seed)
        noise = rng.standard_normal((TILE_PX, TILE_PX, 3), dtype=np.float32)
        glass = np.asarray(GLASS, np.float32) + GLASS_NOISE * noise
        self._glass = np.clip(glass.round(), 0, 255).astype(np.uint8)

    def cell(self, index: int, downsample: int) -> np.ndarray:
        """Source tile ``index`` cropped to the cell, block-averaged by ``downsample``.

        Returns
        -------
        ndarray of shape (CELL_PX // downsample,) * 2 + (3,), uint8
        """
        key = (index, downsample)
        if key not in self._cells:
            if downsample == 1:
                self._cells[key] = _centre_crop(self.layout.names[index])
            else:
                full, n = self.cell(index, 1), CELL_PX // downsample
                blocks = full.reshape(n, downsample, n, downsample, 3)
                pooled = blocks.mean(axis=(1, 3), dtype=np.float32)
                self._cells[key] = pooled.round().astype(np.uint8)
        return self._cells[key]

    def tile(self, x: int, y: int, downsample: int) -> np.ndarray:
        """The ``TILE_PX`` square whose top-left is ``(x, y)`` in level pixels.

        Returns
        -------
        ndarray of shape (TILE_PX, TILE_PX, 3), uint8
        """
        cell_px = CELL_PX // downsample
        out = self._glass.copy()
        tissue = self._tissue(x, y, downsample)
        if not tissue.any():
            return out

        # paste the part of every overlapping cell where the mask says tissue
        n_cells = len(self.layout.source)
        rows = range(y // cell_px, min(-(-(y + TILE_PX) // cell_px), n_cells))
        cols = range(x // cell_px, min(-(-(x + TILE_PX) // cell_px), n_cells))
        for row in rows:
            for col in cols:
                self._paste(out, tissue, (x, y), (row, col), downsample)
        return out

    def _paste(self, out, tissue, origin, cell, downsample) -> None:
        """Copy cell ``(row, col)`` into the tile at level px ``origin`` (x, y)."""
        (x, y), (row, col) = origin, cell
        index = self.layout.source[row, col]
        if index < 0:
            return
        cell_px = CELL_PX // downsample
        image = _orient(self.cell(index, downsample), self.layout.orientation[row, col])

        # the overlap, in tile and in cell pixels
        r0, c0 = max(row * cell_px, y), max(col * cell_px, x)
        r1 = min((row + 1) * cell_px, y + TILE_PX)
        c1 = min((col + 1) * cell_px, x + TILE_PX)
        part = image[r0 - row * cell_px : r1 - row * cell_px][
            :, c0 - col * cell_px : c1 - col * cell_px
        ]
        keep = tissue[r0 - y : r1 - y, c0 - x : c1 - x]
        out[r0 - y : r1 - y, c0 - x : c1 - x][keep] = part[keep]

    def _tissue(self, x: int, y: int, downsample: int) -> np.ndarray:
        """The mask at level pixels of one tile, (TILE_PX, TILE_PX) bool."""
        mask, step = self.layout.mask, MASK_PX // downsample
        rows = (y + np.arange(TILE_PX)) // step
        cols = (x + np.arange(TILE_PX)) // step
        inside_r, inside_c = rows < mask.shape[0], cols < mask.shape[1]
        out = np.zeros((TILE_PX, TILE_PX), dtype=bool)
        out[np.ix_(inside_r, inside_c)] = mask[np.ix_(rows[inside_r], cols[inside_c])]
        return out

    def iter_tiles(self, downsample: int) -> Iterator[np.ndarray]:
        """The tiles of one level in row-major order, as tifffile takes them."""
        side = -(-self.layout.side // downsample)
        for y in range(0, side, TILE_PX):
            for x in range(0, side, TILE_PX):
                yield self.tile(x, y, downsample)


def _centre_crop(path: Path) -> np.ndarray:
    """A source tile's central ``CELL_PX`` square as RGB uint8."""
    import tifffile

    image = tifffile.imread(path)[..., :3]
    rows, cols = image.shape[:2]
    if min(rows, cols) < CELL_PX:
        raise ValueError(
            f"source tile '{path}' is {cols}x{rows} px; tiles of at least "
            f"{CELL_PX} px a side are needed"
        )
    r0, c0 = (rows - CELL_PX) // 2, (cols - CELL_PX) // 2
    return np.ascontiguousarray(image[r0 : r0 + CELL_PX, c0 : c0 + CELL_PX])


def _orient(image: np.ndarray, orientation: int) -> np.ndarray:
    """Quarter turns (orientation % 4), after a left-right flip when >= 4."""
    if orientation >= 4:
        image = image[:, ::-1]
    return np.rot90(image, orientation % 4)


def level_downsamples(side: int, factor: int = 4) -> list[int]:
    """Downsamples of the pyramid: powers of ``factor`` while a level keeps at
    least ``MIN_LEVEL_PX`` px a side and ``MAX_DOWNSAMPLE`` is not exceeded."""
    if factor not in (2, 4):
        raise ValueError(f"factor={factor!r} must be 2 or 4")
    downsamples = [1]
    while (
        side // (downsamples[-1] * factor) >= MIN_LEVEL_PX
        and downsamples[-1] * factor <= MAX_DOWNSAMPLE
    ):
        downsamples.append(downsamples[-1] * factor)
    return downsamples


def write_mosaic(
    out: Path,
    side: int,
    sources: list[Path],
    tissue_fraction: float = 0.3,
    seed: int = 0,
    factor: int = 4,
) -> dict:
    """Write the mosaic TIFF at ``out`` and its sidecar ``out`` + ``.json``.

    Returns
    -------
    dict
        The sidecar: parameters, levels, sources and placements.
    """
    import tifffile

    layout = make_layout(side, sources, tissue_fraction, seed)
    renderer = Renderer(layout)
    downsamples = level_downsamples(side, factor)
    out.parent.mkdir(parents=True, exist_ok=True)
    options = dict(
        tile=(TILE_PX, TILE_PX),
        dtype=np.uint8,
        photometric="rgb",
        compression="jpeg",
        compressionargs={"level": JPEG_QUALITY},
        resolutionunit="CENTIMETER",
        metadata=None,
    )

    # level 0 with the coarser levels as sub-IFDs, each streamed tile by tile
    with tifffile.TiffWriter(out, bigtiff=True) as tiff:
        for i, downsample in enumerate(downsamples):
            level_side = -(-side // downsample)
            per_cm = 1e4 / (MPP * downsample)
            tiff.write(
                renderer.iter_tiles(downsample),
                shape=(level_side, level_side, 3),
                resolution=(per_cm, per_cm),
                subifds=len(downsamples) - 1 if i == 0 else None,
                subfiletype=1 if i else 0,
                description=_description(side) if i == 0 else None,
                **options,
            )

    sidecar = {
        "file": out.name,
        "side": side,
        "mpp": MPP,
        "seed": seed,
        "tissue_fraction": tissue_fraction,
        "tissue_fraction_actual": round(float(layout.mask.mean()), 4),
        "cell_px": CELL_PX,
        "mask_px": MASK_PX,
        "tile_px": TILE_PX,
        "jpeg_quality": JPEG_QUALITY,
        "level_downsamples": downsamples,
        "sources": [path.stem for path in sources],
        "placements": layout.placements(),
    }
    sidecar_path(out).write_text(json.dumps(sidecar, indent=1))
    return sidecar


def sidecar_path(out: Path) -> Path:
    """Where the JSON sidecar of the mosaic ``out`` lives."""
    return out.with_name(out.name + ".json")


def _description(side: int) -> str:
    return f"napari-lemon benchmark mosaic {side}x{side}, MoNuSeg tiles at {MPP} um/px"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (Linux: ru_maxrss kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--side", type=int, default=40960, help="pixels a side")
    parser.add_argument("--out", type=Path, help="TIFF to write")
    parser.add_argument("--tissue-fraction", type=float, default=0.3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--factor", type=int, default=4, choices=(2, 4))
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--results", type=Path, help="JSON of time and memory")
    args = parser.parse_args(argv)
    out = args.out or DEFAULT_DIR / f"mosaic_{args.side}_s{args.seed}.tif"

    start = time.perf_counter()
    sidecar = write_mosaic(
        out,
        args.side,
        source_tiles(args.data),
        args.tissue_fraction,
        args.seed,
        args.factor,
    )
    seconds = time.perf_counter() - start
    summary = {
        "file": out.name,
        "side": args.side,
        "levels": len(sidecar["level_downsamples"]),
        "tiles_placed": len(sidecar["placements"]),
        "tissue_fraction": sidecar["tissue_fraction_actual"],
        "size_mib": round(out.stat().st_size / 2**20, 1),
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(peak_rss_mb()),
        "machine": describe(),
        "date": datetime.date.today().isoformat(),
    }
    print(json.dumps(summary))
    if args.results:
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
