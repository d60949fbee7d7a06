"""Labelled nucleus datasets for linear probing: CRCHistoPhenotypes and user folders.

A probe dataset is a table of nucleus centres in images, one target per nucleus
(a class, or one or more numbers) and a group (the image, or the slide it came
from) that cross-validation folds never split.

``crc`` is CRCHistoPhenotypes as laid out in ``DATA_ROOT/crc`` (``images/``,
``nuclei.csv``): the typed nuclei of its train and validation images, four cell
types, grouped by image, at 0.5 um/px (20x; the files record no pixel size).

Any other dataset is a folder::

    FOLDER/
        dataset.yaml    name: nucls           (optional; default: the folder name)
                        mpp: 0.25             (microns per pixel of the images)
                        task: classification  (or regression)
        labels.csv      one row per nucleus
        images/         the image files that labels.csv names

``labels.csv`` columns:

- ``image``: file name relative to ``images/`` (subfolders allowed);
- ``x``, ``y``: centre of the nucleus in pixels of that image, ``x`` the column
  and ``y`` the row;
- ``label`` (classification): the class name; rows with an empty label are
  dropped with a warning;
- ``target_*`` (regression): one or more numeric columns, e.g. ``target_CD3``;
  rows with a missing value are dropped with a warning;
- ``slide`` (optional): the group folds never split (default: ``image``).

Examples: NuCLS (classes of nuclei in TCGA breast ROIs, ``slide`` from the file
name), MIDOG++ (mitotic figure vs. imposter, one image per tumour case) or
HEST-1k-style spots (``target_<gene>`` expression at each nucleus, ``slide`` per
sample). See ``training/docs/datasets.md``.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..data.curate import cut_crops
from ..data.sources import CRC_MPP, crc_centres

logger = logging.getLogger("lemon_training")

TASKS = ("classification", "regression")
MPP_RANGE = (0.05, 2.0)  # microns per pixel of any image a nucleus can be seen in
REQUIRED_COLUMNS = ("image", "x", "y")
FORMAT_HINT = "see training/docs/datasets.md for the dataset folder format"


@dataclass
class ProbeDataset:
    """Nucleus centres with one target each, ready to crop and probe.

    Attributes
    ----------
    name : str
        Column name of the dataset in the benchmark table.
    task : str
        ``"classification"`` or ``"regression"``.
    mpp : float
        Microns per pixel of the images.
    nuclei : pandas.DataFrame
        One row per nucleus: ``image`` (path), ``x``, ``y`` (pixels), ``group``,
        and the target columns.
    targets : tuple of str
        ``("label",)`` for classification, the ``target_*`` columns otherwise.
    """

    name: str
    task: str
    mpp: float
    nuclei: pd.DataFrame
    targets: tuple[str, ...]

    @property
    def y(self) -> np.ndarray:
        """Targets: (n,) class names, or (n, n_targets) float64."""
        if self.task == "classification":
            return self.nuclei["label"].astype(str).to_numpy()
        return self.nuclei[list(self.targets)].to_numpy(np.float64)

    @property
    def groups(self) -> np.ndarray:
        """(n,) group of each nucleus; folds never split a group."""
        return self.nuclei["group"].astype(str).to_numpy()

    def fingerprint(self) -> str:
        """Short hash of the nuclei, targets, task and pixel size: the key of
        cached crops and embeddings."""
        digest = hashlib.sha256(f"{self.name}|{self.task}|{self.mpp!r}".encode())
        columns = ["image", "x", "y", *self.targets]
        digest.update(self.nuclei[columns].to_csv(index=False).encode())
        return digest.hexdigest()[:12]

    def crops(
        self,
        size: int = 40,
        mpp: float = 0.25,
        progress: Callable[[Iterable], Iterable] | None = None,
    ) -> np.ndarray:
        """Crops around every nucleus, ``(n, size, size, 3)`` uint8 at ``mpp``."""
        table = self.nuclei.assign(mpp=self.mpp).reset_index(drop=True)
        out = np.empty((len(table), size, size, 3), dtype=np.uint8)
        groups = list(table.groupby("image", sort=False).indices.items())
        for image, index in progress(groups) if progress else groups:
            try:
                out[index] = cut_crops(table.iloc[index], size, mpp)
            except ValueError as err:
                raise ValueError(
                    f"{self.name}: image {Path(image).name}: {err}"
                ) from err
        return out


def subsample(dataset: ProbeDataset, n: int | None, seed: int = 0) -> ProbeDataset:
    """At most ``n`` nuclei drawn at random (seeded), in their original order."""
    if n is None or len(dataset.nuclei) <= n:
        return dataset
    if n < 1:
        raise ValueError(f"max_per_dataset={n!r} must be a positive number of nuclei")
    nuclei = dataset.nuclei.sample(n=n, random_state=seed).sort_index()
    return ProbeDataset(
        dataset.name, dataset.task, dataset.mpp, nuclei, dataset.targets
    )


def load_crc(root: str | Path) -> ProbeDataset:
    """The typed nuclei of the CRCHistoPhenotypes images in ``root``, by image."""
    if not (Path(root) / "nuclei.csv").is_file():
        raise FileNotFoundError(
            f"CRCHistoPhenotypes not found: {str(root)!r} has no nuclei.csv; pass "
            "--data-root, the folder that holds crc/images and crc/nuclei.csv"
        )
    table = crc_centres(root, ("train", "validation"))
    table = table[table.cell_type != ""].reset_index(drop=True)
    nuclei = pd.DataFrame(
        {
            "image": table.image,
            "x": table.x,
            "y": table.y,
            "group": [Path(p).stem for p in table.image],
            "label": table.cell_type,
        }
    )
    return ProbeDataset("crc", "classification", CRC_MPP, nuclei, ("label",))


def read_dataset_yaml(folder: Path) -> dict:
    """``name``, ``mpp`` and ``task`` of a dataset folder, checked."""
    path = folder / "dataset.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no dataset.yaml; write one with 'mpp: <microns per pixel>'"
            f" and 'task: classification' (or regression); {FORMAT_HINT}"
        )
    meta = yaml.safe_load(path.read_text()) or {}
    mpp, task = meta.get("mpp"), meta.get("task", "classification")
    low, high = MPP_RANGE
    if (
        isinstance(mpp, bool)
        or not isinstance(mpp, int | float)
        or not (low <= mpp <= high)
    ):
        raise ValueError(
            f"mpp={mpp!r} in {path}: expected the images' microns per pixel, a "
            f"number between {low} and {high} (0.25 at 40x, 0.5 at 20x)"
        )
    if task not in TASKS:
        raise ValueError(f"task={task!r} in {path}: choose one of {TASKS}")
    return {
        "name": str(meta.get("name") or folder.name),
        "mpp": float(mpp),
        "task": task,
    }


def _read_labels(folder: Path, task: str) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """labels.csv with its columns checked; returns the table and target columns."""
    path = folder / "labels.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no labels.csv (columns image, x, y, label[, slide]); "
            f"{FORMAT_HINT}"
        )
    table = pd.read_csv(path, dtype={"image": str, "label": str, "slide": str})
    if task == "classification":
        targets: tuple[str, ...] = ("label",)
    else:
        targets = tuple(c for c in table.columns if c.startswith("target_"))
    missing = [c for c in (*REQUIRED_COLUMNS, *targets) if c not in table.columns]
    if missing or not targets:
        need = "label" if task == "classification" else "target_* (e.g. target_CD3)"
        raise ValueError(
            f"{path} lacks column(s) {missing or [need]} for task={task!r}; "
            f"found {list(table.columns)}; {FORMAT_HINT}"
        )
    return table, targets


def _drop_missing(table: pd.DataFrame, targets, path: Path) -> pd.DataFrame:
    """Rows with every target present (warns how many were dropped)."""
    for column in targets:
        if column != "label" and not pd.api.types.is_numeric_dtype(table[column]):
            raise ValueError(
                f"column {column!r} of {path} is not numeric (e.g. "
                f"{table[column].iloc[0]!r}); regression targets must be numbers"
            )
    keep = table[list(targets)].notna().all(axis=1)
    if "label" in targets:
        keep &= table["label"].str.strip().ne("")
    if not keep.all():
        warnings.warn(
            f"{path}: dropped {int((~keep).sum())} rows without a target",
            stacklevel=3,
        )
    return table[keep].reset_index(drop=True)


def _check_images(folder: Path, names: Iterable[str]) -> None:
    missing = sorted(n for n in set(names) if not (folder / "images" / n).is_file())
    if missing:
        shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
        raise FileNotFoundError(
            f"{len(missing)} image(s) named in {folder / 'labels.csv'} are not in "
            f"{folder / 'images'}: {shown}"
        )


def load_folder(folder: str | Path) -> ProbeDataset:
    """Read a probe dataset folder (format in this module's docstring)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {str(folder)!r} does not exist")
    meta = read_dataset_yaml(folder)
    table, targets = _read_labels(folder, meta["task"])
    table = _drop_missing(table, targets, folder / "labels.csv")
    _check_images(folder, table["image"])

    groups = table["slide"] if "slide" in table.columns else table["image"]
    nuclei = pd.DataFrame(
        {
            "image": [str(folder / "images" / n) for n in table["image"]],
            "x": table["x"].astype(float),
            "y": table["y"].astype(float),
            "group": groups.astype(str),
        }
    )
    nuclei[list(targets)] = table[list(targets)]
    return ProbeDataset(meta["name"], meta["task"], meta["mpp"], nuclei, targets)


def load_probe_dataset(
    spec: str, data_root: str | Path, max_nuclei: int | None = None, seed: int = 0
) -> ProbeDataset:
    """``"crc"`` (from ``data_root/crc``) or a dataset folder, optionally subsampled."""
    if spec == "crc":
        dataset = load_crc(Path(data_root) / "crc")
    elif Path(spec).is_dir():
        dataset = load_folder(spec)
    else:
        raise FileNotFoundError(
            f"dataset={spec!r} is neither 'crc' nor a dataset folder; {FORMAT_HINT}"
        )
    return subsample(dataset, max_nuclei, seed)
