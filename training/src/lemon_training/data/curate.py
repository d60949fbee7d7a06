"""Cut training crops around nucleus centres and write them as one dataset folder.

The folder holds ``crops.npy`` (uint8, ``(n, size, size, 3)``), ``nuclei.csv``
(one row per crop: image, x, y, mpp, source, split, cell_type) and
``manifest.json`` (counts per source and split, crop size and mpp).

Crops are 60x60 at the encoder's 0.25 um/px by default: room for the
rotation-crop to 40x40 without black corners.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from skimage import io

from napari_lemon.crops import crop_nuclei

logger = logging.getLogger("lemon_training")


def read_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as (rows, cols, 3) uint8."""
    image = io.imread(path)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8, copy=False)


def cut_crops(
    nuclei: pd.DataFrame,
    size: int = 60,
    mpp: float = 0.25,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> np.ndarray:
    """Crops for every row of a centre table, image by image.

    Returns
    -------
    ndarray of shape (len(nuclei), size, size, 3), uint8, in the table's order
    """
    out = np.empty((len(nuclei), size, size, 3), dtype=np.uint8)
    groups = list(nuclei.groupby("image", sort=False).indices.items())
    for image_path, index in progress(groups) if progress else groups:
        image = read_rgb(image_path)
        rows = nuclei.iloc[index]
        xy = rows[["x", "y"]].to_numpy()
        out[index] = crop_nuclei(image, xy, float(rows.mpp.iloc[0]), mpp, size)
    return out


def write_dataset(
    nuclei: pd.DataFrame,
    out: str | Path,
    size: int = 60,
    mpp: float = 0.25,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> Path:
    """Cut crops for ``nuclei`` and write the dataset folder ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    nuclei = nuclei.reset_index(drop=True)
    crops = cut_crops(nuclei, size, mpp, progress)

    # write the crops first, the manifest last: a folder with a manifest is complete
    np.save(out / "crops.npy", crops)
    nuclei.to_csv(out / "nuclei.csv", index=False)
    counts = nuclei.groupby(["source", "split"]).size()
    manifest = {
        "n_crops": int(len(nuclei)),
        "crop_size": size,
        "mpp": mpp,
        "counts": {f"{s}/{p}": int(n) for (s, p), n in counts.items()},
        "images": int(nuclei.image.nunique()),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    logger.info(
        "wrote %d crops from %d images to %s", len(nuclei), manifest["images"], out
    )
    return out


def load_dataset(folder: str | Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Read a dataset folder written by :func:`write_dataset`."""
    folder = Path(folder)
    if not (folder / "manifest.json").is_file():
        raise FileNotFoundError(
            f"{folder} is not a complete crop dataset (no manifest.json); run "
            "`lemon-train curate` first"
        )
    crops = np.load(folder / "crops.npy", mmap_mode="r")
    nuclei = pd.read_csv(folder / "nuclei.csv", keep_default_na=False)
    return crops, nuclei
