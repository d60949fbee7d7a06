"""Nucleus centres from the public datasets laid out as in ``../shared/data``.

Each reader returns a table with one row per nucleus: ``image`` (path), ``x``,
``y`` (pixels of that image), ``mpp``, ``source``, ``split`` and ``cell_type``
(empty when unknown). Only the files are read; nothing is cropped here.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from skimage import io, measure

from napari_lemon.segment.imagescope import polygon_centroids, read_imagescope_xml

COLUMNS = ["image", "x", "y", "mpp", "source", "split", "cell_type"]
MONUSEG_MPP = 0.25  # 0.245-0.253 in the XML files; used where no XML exists
CRC_MPP = 0.5  # 20x objective per the dataset paper; the PNGs record no pixel size


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
