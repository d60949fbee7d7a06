"""Where the nuclei of a curated dataset come from.

An *input* is one image or slide; it becomes one shard of the dataset. Its
nuclei are either imported (centre points from a CSV, ImageScope outlines, the
public datasets of ``../shared/data``) or found by the plugin's segmenter over
the tissue tiles of the slide. :func:`find_inputs` turns command-line inputs
into :class:`SourceItem` records, :data:`PRESETS` names fixed input sets, and
:func:`tissue_tiles` and :func:`segment_tile` find nuclei tile by tile, so that a
whole level of a large slide is never read at once.

Tables of centres have one row per nucleus: ``image`` (path), ``x``, ``y``
(pixels of that image, ``x`` = column), ``mpp``, ``source``, ``split`` and
``cell_type`` (empty when unknown).
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from skimage import io, measure

from napari_lemon.segment.imagescope import polygon_centroids, read_imagescope_xml
from napari_lemon.slide import IMAGE_SUFFIXES, SLIDE_SUFFIXES

if TYPE_CHECKING:
    from napari_lemon.slide import Slide

COLUMNS = ["image", "x", "y", "mpp", "source", "split", "cell_type"]
MONUSEG_MPP = 0.25  # 0.245-0.253 in the XML files; used where no XML exists
CRC_MPP = 0.5  # 20x objective per the dataset paper; the PNGs record no pixel size
MARGIN_UM = 16.0  # context around a tile, wider than a nucleus
TISSUE_OD = 0.3  # summed optical density of the three channels above which = tissue
MIN_TISSUE = 0.02  # tiles with less tissue than this fraction are skipped
TISSUE_MAX_PIXELS = 16_000_000  # largest level read whole for the tissue mask


@dataclass
class SourceItem:
    """One input image or slide, curated into one shard.

    Attributes
    ----------
    name : str
        Shard name, unique in a dataset.
    path : str
        The image or slide file.
    source : str
        Label for counts: a dataset name, or the folder or CSV it came from.
    split : str
        Dataset split, empty when none.
    mpp : float or None
        Microns per pixel of level 0 when the file records none (the file's
        own value wins).
    centres : DataFrame or None
        Imported nuclei: ``x``, ``y`` (level-0 px) and ``cell_type``; None when
        the nuclei are to be segmented.
    method : str
        How the nuclei are found: ``segment``, ``centres``, ``outlines`` or
        ``mask``.
    """

    name: str
    path: str
    source: str
    split: str = ""
    mpp: float | None = None
    centres: pd.DataFrame | None = None
    method: str = "segment"

    def identity(self) -> list:
        """What makes this input itself, for comparing two curation runs."""
        n = None if self.centres is None else len(self.centres)
        return [self.name, self.path, self.source, self.split, self.mpp, self.method, n]


def monuseg_centres(root: str | Path, split: str = "train") -> pd.DataFrame:
    """Nucleus centres of MoNuSeg tiles in ``root/<split>/images``.

    Centres come from the ImageScope outlines where a tile has them, otherwise
    from connected components of its binary foreground mask (touching nuclei
    merge there: fine for sampling crops, not for ground truth).
    """
    folder = Path(root) / split
    images = sorted((folder / "images").glob("*.tif"))
    if not images:
        raise FileNotFoundError(f"no MoNuSeg tiles in {folder / 'images'}")

    rows = []
    for image in images:
        xml = folder / "annotations" / f"{image.stem}.xml"
        mask = folder / "binary_masks" / f"{image.stem}.png"
        if xml.is_file():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ann = read_imagescope_xml(xml)
            centres, mpp = polygon_centroids(ann.polygons), ann.mpp or MONUSEG_MPP
        elif mask.is_file():
            centres, mpp = _mask_centres(mask), MONUSEG_MPP
        else:
            continue
        rows.append(_table(image, centres, mpp, "monuseg", split))
    return pd.concat(rows, ignore_index=True)


def _mask_centres(path: Path, min_area_px: int = 20) -> np.ndarray:
    """Centroids ``(x, y)`` of the connected components of a 0/1 mask."""
    mask = io.imread(path)
    if mask.ndim == 3:
        mask = mask[..., 0]
    labels = measure.label(mask > 0)
    props = measure.regionprops(labels)
    rc = np.array([p.centroid for p in props if p.area >= min_area_px])
    return rc[:, ::-1] if len(rc) else np.empty((0, 2))


def _table(image, centres, mpp, source, split, cell_type=None) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image": str(image),
            "x": centres[:, 0],
            "y": centres[:, 1],
            "mpp": float(mpp),
            "source": source,
            "split": split,
            "cell_type": "" if cell_type is None else cell_type,
        },
        columns=COLUMNS,
    )


def crc_centres(
    root: str | Path, splits: tuple[str, ...] = ("train", "validation")
) -> pd.DataFrame:
    """Nucleus points of CRCHistoPhenotypes images present in ``root/images``."""
    root = Path(root)
    table = pd.read_csv(root / "nuclei.csv", keep_default_na=False)
    table = table[table["split"].isin(splits)]
    table = table.assign(image=[str(root / "images" / f"{n}.png") for n in table.image])
    table = table[[Path(p).is_file() for p in table.image]]
    if table.empty:
        raise FileNotFoundError(f"no CRC images for splits {splits} in {root}")
    return pd.DataFrame(
        {
            "image": table.image,
            "x": table.x.astype(float),
            "y": table.y.astype(float),
            "mpp": CRC_MPP,
            "source": "crc",
            "split": table.split,
            "cell_type": table.cell_type.astype(str),
        },
        columns=COLUMNS,
    ).reset_index(drop=True)


def items_from_table(table: pd.DataFrame, method: str = "centres") -> list[SourceItem]:
    """One :class:`SourceItem` per image of a centre table, in order of appearance."""
    items = []
    for image, rows in table.groupby("image", sort=False):
        first = rows.iloc[0]
        if rows.mpp.nunique() > 1:
            raise ValueError(
                f"image '{image}' has several mpp values "
                f"{sorted(float(v) for v in rows.mpp.unique())}; "
                "give one pixel size per image"
            )
        items.append(
            SourceItem(
                name=f"{first.source}-{Path(image).stem}",
                path=str(Path(image).resolve()),
                source=str(first.source),
                split=str(first.split),
                mpp=float(first.mpp) if pd.notna(first.mpp) else None,
                centres=rows[["x", "y", "cell_type"]].reset_index(drop=True),
                method=method,
            )
        )
    return items


def shared_train_items(data_root: str | Path) -> list[SourceItem]:
    """The bundled encoder's training inputs: MoNuSeg train + CRC train/validation.

    MoNuSeg tiles use their ImageScope outlines where present and mask components
    elsewhere; CRC images use their annotated points at :data:`CRC_MPP`.
    """
    root = Path(data_root)
    monuseg = items_from_table(monuseg_centres(root / "monuseg", "train"), "outlines")
    for item in monuseg:
        xml = root / "monuseg" / "train" / "annotations" / f"{Path(item.path).stem}.xml"
        item.method = "outlines" if xml.is_file() else "mask"
    crc = crc_centres(root / "crc", ("train", "validation"))
    return monuseg + items_from_table(crc, "centres")


PRESETS = {"shared-train": shared_train_items}


def preset_items(name: str, data_root: str | Path) -> list[SourceItem]:
    """The inputs of preset ``name`` found under ``data_root``."""
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is unknown; choose one of {sorted(PRESETS)}")
    if not Path(data_root).is_dir():
        raise FileNotFoundError(
            f"data root {str(data_root)!r} of preset {name!r} is not a folder; pass "
            "--data-root (the folder holding monuseg/ and crc/)"
        )
    return PRESETS[name](data_root)


def find_inputs(
    inputs: Sequence[str | Path],
    mpp: float | None = None,
    annotations: str | Path | None = None,
) -> list[SourceItem]:
    """Turn command-line inputs into :class:`SourceItem` records.

    Parameters
    ----------
    inputs : sequence of paths
        Slide or image files, folders of them (not recursive), or CSV files of
        nucleus centres with columns ``image, x, y`` and optionally ``mpp``,
        ``cell_type``, ``split`` (``image`` relative to the CSV's folder).
    mpp : float, optional
        Microns per pixel of the files that record none, unless their CSV rows
        or ImageScope files give one.
    annotations : path, optional
        Folder of ImageScope XML outlines named ``<image stem>.xml``; default the
        image's own folder. An image with outlines is not segmented.
    """
    items = []
    for arg in inputs:
        path = Path(arg)
        if not path.exists():
            raise FileNotFoundError(
                f"input {str(arg)!r} does not exist; give slide or image files, "
                "folders of them, or a CSV of nucleus centres"
            )
        if path.is_dir():
            items += [_file_item(f, path.name, mpp, annotations) for f in _images(path)]
        elif path.suffix.lower() == ".csv":
            items += csv_items(path, mpp)
        elif path.suffix.lower() in SLIDE_SUFFIXES + IMAGE_SUFFIXES:
            items.append(_file_item(path, path.parent.name, mpp, annotations))
        else:
            raise ValueError(
                f"input {str(arg)!r} has an unsupported suffix {path.suffix!r}; "
                f"give {', '.join(SLIDE_SUFFIXES + IMAGE_SUFFIXES)} files, folders "
                "of them, or a .csv of nucleus centres"
            )
    return unique_names(items)


def _images(folder: Path) -> list[Path]:
    suffixes = SLIDE_SUFFIXES + IMAGE_SUFFIXES
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in suffixes)
    if not files:
        raise ValueError(
            f"folder {str(folder)!r} holds no slide or image files "
            f"({', '.join(suffixes)})"
        )
    return files


def _file_item(path: Path, source: str, mpp, annotations) -> SourceItem:
    """An image to segment, or to read outlines for when an XML file names it."""
    xml = Path(annotations or path.parent) / f"{path.stem}.xml"
    item = SourceItem(path.stem, str(path.resolve()), source or "inputs", mpp=mpp)
    if xml.is_file():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # regions of < 3 vertices: skipped
            ann = read_imagescope_xml(xml)
        xy = polygon_centroids(ann.polygons)
        item.centres = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], "cell_type": ""})
        item.mpp, item.method = ann.mpp or mpp, "outlines"
    return item


def csv_items(path: str | Path, mpp: float | None = None) -> list[SourceItem]:
    """Inputs from a CSV of centres ``image, x, y[, mpp][, cell_type][, split]``."""
    path = Path(path)
    table = pd.read_csv(path, keep_default_na=False, dtype={"cell_type": str})
    missing = sorted({"image", "x", "y"} - set(table.columns))
    if missing or table.empty:
        raise ValueError(
            f"centres CSV '{path}' has columns {list(table.columns)} and "
            f"{len(table)} rows; it needs rows with columns image, x, y (optional: "
            "mpp, cell_type, split)"
        )

    # numbers, and images relative to the CSV
    x, y = _numbers(table, "x", path), _numbers(table, "y", path)
    row_mpp = _numbers(table, "mpp", path, mpp) if "mpp" in table else mpp
    images = [str((path.parent / name).resolve()) for name in table.image]
    for image in dict.fromkeys(images):
        if not Path(image).is_file():
            raise FileNotFoundError(
                f"centres CSV '{path}' names image {image!r}, which does not exist; "
                "image paths are read relative to the CSV's folder"
            )

    cells = pd.DataFrame(
        {"image": images, "x": x, "y": y, "mpp": row_mpp, "source": path.stem}
    )
    cells["split"] = table["split"].astype(str) if "split" in table else ""
    cells["cell_type"] = table["cell_type"] if "cell_type" in table else ""
    return items_from_table(cells, "centres")


def _numbers(table, column: str, path: Path, default=None) -> np.ndarray:
    """A CSV column as float64; blank cells take ``default`` when one is given."""
    values = pd.to_numeric(table[column], errors="coerce")
    if default is not None:
        values[table[column].astype(str).eq("")] = default
    bad = values.isna()
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"centres CSV '{path}': column {column!r} holds "
            f"{table[column].iloc[row]!r} on data row {row + 1}; it must be a number"
        )
    return values.to_numpy(dtype=np.float64)


def unique_names(items: list[SourceItem]) -> list[SourceItem]:
    """Give items file-safe names; names met twice get a hash of the input."""
    for item in items:
        item.name = "".join(c if c.isalnum() or c in "-_." else "_" for c in item.name)
    counts = pd.Series([item.name for item in items]).value_counts()
    for item in items:
        if counts[item.name] > 1:
            key = f"{item.path}|{item.source}|{item.method}"
            item.name = f"{item.name}-{zlib.crc32(key.encode()):08x}"
    twice = pd.Series([item.name for item in items]).duplicated()
    if twice.any():
        path = items[int(np.argmax(twice))].path
        raise ValueError(f"input '{path}' is given twice; give each input once")
    return items


def check_mpp(items: list[SourceItem]) -> None:
    """Refuse, all at once, the inputs whose pixel size is unknown."""
    from napari_lemon.slide import open_slide

    problems = []
    for item in items:
        if item.mpp is not None:
            continue
        try:
            with open_slide(item.path) as slide:
                known = slide.mpp is not None
        except (OSError, ValueError) as err:
            problems.append(f"'{item.path}' ({err})")
            continue
        if not known:
            problems.append(f"'{item.path}'")
    if problems:
        raise ValueError(
            f"{len(problems)} inputs have no readable pixel size (mpp): "
            f"{', '.join(problems[:5])}{' ...' if len(problems) > 5 else ''}; pass "
            "--mpp (microns per pixel, e.g. 0.25 for 40x, 0.5 for 20x) or give an "
            "mpp column in the centres CSV"
        )


def tissue_tiles(slide: Slide, tile_um: float) -> np.ndarray:
    """Level-0 tiles of ``tile_um`` microns that hold tissue.

    Tissue is found on the coarsest pyramid level when it has at most
    :data:`TISSUE_MAX_PIXELS` pixels; otherwise every tile is kept (the
    segmenter finds nothing on glass).

    Returns
    -------
    ndarray of shape (n_tiles, 4), int64
        ``(x, y, width, height)`` in level-0 px, row by row.
    """
    step = max(1, round(tile_um / slide.mpp))
    width, height = slide.dimensions
    ys, xs = np.mgrid[0:height:step, 0:width:step]
    x, y = xs.ravel(), ys.ravel()
    boxes = np.stack([x, y, np.minimum(step, width - x), np.minimum(step, height - y)])
    boxes = boxes.T.astype(np.int64)

    # keep the tiles with enough tissue on a coarse level
    level = slide.level_count - 1
    level_width, level_height = slide.level_dimensions[level]
    if level_width * level_height > TISSUE_MAX_PIXELS:
        return boxes
    image = slide.read_region((0, 0), level, (level_width, level_height))
    tissue = -np.log((image.astype(np.float32) + 1) / 256).sum(axis=2) > TISSUE_OD
    fraction = [
        _fraction(tissue, box / slide.level_downsamples[level]) for box in boxes
    ]
    return boxes[np.asarray(fraction) >= MIN_TISSUE]


def _fraction(mask: np.ndarray, box: np.ndarray) -> float:
    """Share of ``True`` in the ``(x, y, width, height)`` box of ``mask``."""
    c0, r0 = math.floor(box[0]), math.floor(box[1])
    c1, r1 = math.ceil(box[0] + box[2]), math.ceil(box[1] + box[3])
    window = mask[r0:r1, c0:c1]
    return float(window.mean()) if window.size else 0.0


def segment_tile(
    slide: Slide, box: Sequence[int], segmenter: str = "classical"
) -> np.ndarray:
    """Centres of the nuclei whose centroid lies in one tile.

    The tile is segmented with a margin of :data:`MARGIN_UM` around it (clipped
    to the slide), so that nuclei on its edge are whole and found once.

    Returns
    -------
    ndarray of shape (n, 2), float64
        ``(x, y)`` in level-0 px.
    """
    from napari_lemon.pipeline import run_steps, segmentation_steps

    # the tile and its margin, inside the slide
    x, y, w, h = (int(v) for v in box)
    margin = round(MARGIN_UM / slide.mpp)
    x0, y0 = max(x - margin, 0), max(y - margin, 0)
    x1 = min(x + w + margin, slide.dimensions[0])
    y1 = min(y + h + margin, slide.dimensions[1])

    # segment; keep the centres inside the tile itself
    seg = run_steps(segmentation_steps(slide, (x0, y0, x1 - x0, y1 - y0), segmenter))
    xy = seg.to_level0(seg.nuclei.centroids_xy)
    inside = (xy[:, 0] >= x) & (xy[:, 0] < x + w) & (xy[:, 1] >= y) & (xy[:, 1] < y + h)
    return xy[inside]
