"""A curated crop dataset: one zarr shard per input image, and a manifest.

Layout of a dataset folder (written by ``lemon-train curate``)::

    DIR/curate.json              the options and inputs it was curated with
    DIR/shards/<name>.zarr/      one zarr v3 group per input image or slide
        crops      (n, size, size, 3) uint8; 16 crops per chunk, 1024 per file
        x, y       (n,) float64, centres in level-0 px of the input
        cell_type  (n,) int16, codes into the attribute ``cell_types``
    DIR/manifest.json            written last: shards, counts, crop size, mpp

A shard is complete once its attributes say ``complete``: they are written after
its arrays, so an interrupted curation leaves shards that a rerun redoes.

:func:`open_dataset` reads a folder; :func:`iter_batches` yields training
batches that depend on ``(seed, step)`` only, read ahead in a background thread.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

logger = logging.getLogger("lemon_training")

FORMAT = "lemon-crops"
VERSION = 1
CROPS_PER_CHUNK = 16  # zarr chunk: random reads cost as with 1, full reads 5x less
CROPS_PER_FILE = 1024  # crops per file of the zarr sharding codec
RERUN = "delete it and rerun `lemon-train curate` with the same options (it resumes)"


class DatasetError(ValueError):
    """A crop dataset folder that is missing, unfinished or damaged."""


def shard_path(folder: str | Path, name: str) -> Path:
    """Where the shard ``name`` of the dataset ``folder`` lives."""
    return Path(folder) / "shards" / f"{name}.zarr"


def write_shard(
    path: str | Path,
    table: pd.DataFrame,
    crops: Iterable[np.ndarray],
    attrs: dict,
    size: int,
) -> int:
    """Write one shard: the crops batch by batch, then its table, then ``complete``.

    Parameters
    ----------
    table : DataFrame
        ``x``, ``y`` and ``cell_type`` of every crop, in the order of ``crops``.
    crops : iterable of ndarray of shape (k, size, size, 3), uint8
        Batches whose lengths add up to ``len(table)``.
    attrs : dict
        Shard attributes (input, source, mpp, ...), JSON-serialisable.

    Returns
    -------
    int
        Crops written.
    """
    import zarr
    from zarr.codecs import Crc32cCodec

    group = zarr.open_group(Path(path), mode="w")
    array = group.create_array(
        "crops",
        shape=(0, size, size, 3),
        chunks=(CROPS_PER_CHUNK, size, size, 3),
        shards=(CROPS_PER_FILE, size, size, 3),
        dtype="uint8",
        compressors=[Crc32cCodec()],  # H&E crops barely compress; catch corruption
    )
    written = _append_in_files(array, crops)
    if written != len(table):
        raise RuntimeError(f"{path}: {written} crops for a table of {len(table)} rows")

    # the table, then the mark that the shard is whole
    cell_types = sorted(set(table.cell_type))
    codes = np.searchsorted(cell_types, table.cell_type).astype(np.int16)
    for name, values in (("x", table.x), ("y", table.y), ("cell_type", codes)):
        group.create_array(name, data=np.asarray(values), chunks=(max(1, written),))
    group.attrs.update({**attrs, "cell_types": cell_types, "n_crops": written})
    group.attrs["complete"] = True
    return written


def _append_in_files(array, batches: Iterable[np.ndarray]) -> int:
    """Append batches to ``array`` in whole files of the sharding codec."""
    pending, held = [], 0
    for batch in batches:
        pending.append(batch)
        held += len(batch)
        if held >= CROPS_PER_FILE:
            block = np.concatenate(pending)
            whole = len(block) - len(block) % CROPS_PER_FILE
            array.append(block[:whole])
            pending, held = [block[whole:]], len(block) - whole
    if held:
        array.append(np.concatenate(pending))
    return array.shape[0]


def save_dataset(
    folder: str | Path,
    crops: np.ndarray,
    table: pd.DataFrame | None = None,
    mpp: float = 0.25,
    name: str = "crops",
) -> Path:
    """Write in-memory crops as a one-shard dataset (for tests and imports).

    Parameters
    ----------
    crops : ndarray of shape (n, size, size, 3), uint8
    table : DataFrame, optional
        ``x``, ``y`` and ``cell_type`` per crop; default zeros and empty types.
    mpp : float
        Microns per pixel of the crops.
    """
    folder, crops = Path(folder), np.asarray(crops, dtype=np.uint8)
    if table is None:
        table = pd.DataFrame(
            {"x": 0.0, "y": 0.0, "cell_type": ""}, index=range(len(crops))
        )
    attrs = {"slide": "", "source": name, "split": "", "method": "array", "mpp": mpp}
    n = write_shard(shard_path(folder, name), table, [crops], attrs, crops.shape[1])
    entry = {"name": name, **attrs, "n_nuclei": n, "n_crops": n}
    manifest = {"format": FORMAT, "version": VERSION, "crop_size": crops.shape[1]}
    manifest |= {"mpp": mpp, "n_crops": n, "n_shards": 1, "shards": [entry]}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return folder


def shard_attrs(path: str | Path) -> dict | None:
    """The attributes of a complete shard; None when unfinished or unreadable."""
    import zarr

    try:
        attrs = dict(zarr.open_group(Path(path), mode="r").attrs)
    except Exception:  # missing, half-written or damaged metadata: redo it
        return None
    return attrs if attrs.get("complete") else None


def batch_indices(step: int, n: int, batch_size: int, seed: int) -> np.ndarray:
    """Crops of training step ``step``: epochs are seeded permutations of all crops.

    A function of ``(step, n, batch_size, seed)`` alone, so that a resumed run
    draws the same batches.

    Returns
    -------
    ndarray of shape (batch_size,), int64, sorted
    """
    if n < batch_size:
        raise ValueError(
            f"batch_size={batch_size} is larger than the {n} crops; use a smaller "
            "batch_size or curate more crops"
        )
    per_epoch = n // batch_size
    epoch, position = divmod(step, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(n)
    return np.sort(order[position * batch_size : (position + 1) * batch_size])


class CropDataset:
    """The crops of a dataset folder, in RAM or read from its zarr shards.

    Use :func:`open_dataset` to make one. Crop ``i`` is row ``i`` of
    :attr:`table`; shards follow the manifest's order.

    Attributes
    ----------
    folder : Path
    manifest : dict
    table : DataFrame
        One row per crop: ``shard``, ``slide`` (input file), ``x``, ``y``
        (level-0 px), ``mpp`` (of the input), ``source``, ``split``,
        ``cell_type``.
    crop_size : int
    mpp : float
        Microns per pixel of the crops.
    in_memory : bool
        Whether all crops were loaded into RAM.
    """

    def __init__(self, folder: Path, manifest: dict, shards: list, table) -> None:
        self.folder, self.manifest, self.table = folder, manifest, table
        self.crop_size, self.mpp = int(manifest["crop_size"]), float(manifest["mpp"])
        self._shards = shards  # (path, zarr array) of the non-empty shards
        self._starts = np.cumsum([0] + [a.shape[0] for _, a in shards])
        self._ram: np.ndarray | None = None

    @property
    def in_memory(self) -> bool:
        return self._ram is not None

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __repr__(self) -> str:
        where = "in RAM" if self.in_memory else "on disk"
        return (
            f"CropDataset('{self.folder}', n={len(self)}, shards={len(self._shards)}, "
            f"{self.crop_size}x{self.crop_size} at {self.mpp:g} um/px, {where})"
        )

    def load(self) -> None:
        """Read every crop into RAM; later reads come from there."""
        out = np.empty((len(self), self.crop_size, self.crop_size, 3), np.uint8)
        for k, (path, array) in enumerate(self._shards):
            out[self._starts[k] : self._starts[k + 1]] = _read(path, array, slice(None))
        self._ram = out

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Crops at global ``indices`` (any order, repeats allowed).

        Returns
        -------
        ndarray of shape (len(indices), crop_size, crop_size, 3), uint8
        """
        indices = np.asarray(indices)
        n = len(self)
        if indices.ndim != 1 or (indices.size and indices.dtype.kind not in "iu"):
            raise ValueError(f"indices must be a 1-D integer array, got {indices!r}")
        if indices.size and (indices.min() < 0 or indices.max() >= n):
            raise IndexError(f"indices must lie in 0..{n - 1}, got {indices!r}")
        if self._ram is not None:
            return self._ram[indices]

        # shard by shard, in sorted order
        order = np.argsort(indices, kind="stable")
        ordered = indices[order]
        shard_of = np.searchsorted(self._starts, ordered, side="right") - 1
        out = np.empty((len(indices), self.crop_size, self.crop_size, 3), np.uint8)
        for k in np.unique(shard_of):
            at = np.flatnonzero(shard_of == k)
            path, array = self._shards[k]
            out[order[at]] = _read(path, array, ordered[at] - self._starts[k])
        return out

    def sample(self, n: int, seed: int = 0) -> np.ndarray:
        """``n`` crops drawn without replacement (all when ``n >= len(self)``).

        Returns
        -------
        ndarray of shape (min(n, len(self)), crop_size, crop_size, 3), uint8
        """
        if n < 1:
            raise ValueError(f"n={n!r} must be a positive number of crops")
        rng = np.random.default_rng(seed)
        chosen = rng.choice(len(self), size=min(n, len(self)), replace=False)
        return self.read(np.sort(chosen))


def _read(path: Path, array, selection) -> np.ndarray:
    """Crops of one shard, with a readable error when its files are damaged."""
    try:
        if isinstance(selection, slice):
            return array[selection]
        return array.get_orthogonal_selection((selection,))
    except Exception as err:
        raise DatasetError(
            f"shard '{path}' cannot be read ({type(err).__name__}: {err}); {RERUN}"
        ) from err


def open_dataset(folder: str | Path, memory_limit_gb: float = 8.0) -> CropDataset:
    """Open a dataset folder written by ``lemon-train curate``.

    Parameters
    ----------
    folder : path
    memory_limit_gb : float
        Load every crop into RAM when they take at most this much; otherwise
        read them from the zarr shards on each access. 0 never loads.

    Raises
    ------
    DatasetError
        When the folder is not a finished dataset, a shard is missing, empty,
        incomplete or damaged, or the dataset holds no crops.
    """
    folder = Path(folder)
    manifest = _read_manifest(folder)
    shards, tables = [], []
    for entry in manifest["shards"]:
        if entry["n_crops"]:
            path, array, table = _open_shard(folder, entry)
            shards.append((path, array))
            tables.append(table)
    if not shards:
        raise DatasetError(
            f"dataset '{folder}' holds no crops: no nucleus was found in its "
            f"{len(manifest['shards'])} inputs; check the inputs and their mpp"
        )

    dataset = CropDataset(
        folder, manifest, shards, pd.concat(tables, ignore_index=True)
    )
    if len(dataset) * dataset.crop_size**2 * 3 <= memory_limit_gb * 2**30:
        dataset.load()
    logger.info("opened %r", dataset)
    return dataset


def _read_manifest(folder: Path) -> dict:
    """The manifest, or an error that says how to make the folder a dataset."""
    path = folder / "manifest.json"
    if not path.is_file():
        if (folder / "curate.json").is_file():
            hint = "its curation did not finish; rerun the same `lemon-train curate` "
            hint += "command (it resumes)"
        elif (folder / "crops.npy").is_file():
            hint = "it is a crop folder of an older version; curate it again with "
            hint += f"`lemon-train curate ... --out {folder}-zarr`"
        else:
            hint = f"create one with `lemon-train curate INPUTS --out {folder}`"
        raise DatasetError(
            f"'{folder}' is not a crop dataset (no manifest.json): {hint}"
        )
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise DatasetError(
            f"'{path}' has format={manifest.get('format')!r}, not {FORMAT!r}; curate "
            "the data again with `lemon-train curate`"
        )
    return manifest


def _open_shard(folder: Path, entry: dict) -> tuple[Path, object, pd.DataFrame]:
    """A shard's crop array and table, checked against the manifest."""
    import zarr

    path = shard_path(folder, entry["name"])
    try:
        group = zarr.open_group(path, mode="r")
        attrs, crops = dict(group.attrs), group["crops"]
        x, y, codes = group["x"][:], group["y"][:], group["cell_type"][:]
    except Exception as err:
        raise DatasetError(
            f"shard '{path}' is missing or damaged ({type(err).__name__}: {err}); "
            f"{RERUN}"
        ) from err
    if not attrs.get("complete") or not crops.shape[0] == len(x) == entry["n_crops"]:
        raise DatasetError(
            f"shard '{path}' is empty or incomplete: it holds {crops.shape[0]} crops, "
            f"the manifest lists {entry['n_crops']}; {RERUN}"
        )
    table = pd.DataFrame(
        {
            "shard": entry["name"],
            "slide": attrs["slide"],
            "x": x,
            "y": y,
            "mpp": attrs["mpp"],
            "source": attrs["source"],
            "split": attrs["split"],
            "cell_type": np.asarray(attrs["cell_types"], dtype=object)[codes],
        }
    )
    return path, crops, table


def iter_batches(
    dataset: CropDataset,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    prefetch: int = 2,
) -> Iterator[tuple[int, np.ndarray]]:
    """Training batches from ``start_step`` on, read ahead in a background thread.

    The batch of step ``s`` holds the crops ``batch_indices(s, len(dataset),
    batch_size, seed)``, so a resumed run sees the batches it would have seen.
    The iterator never ends; close it (or leave the loop) to stop the reader.

    Yields
    ------
    step : int
    batch : ndarray of shape (batch_size, crop_size, crop_size, 3), uint8
    """
    batch_indices(0, len(dataset), batch_size, seed)  # refuse a too-large batch now
    if prefetch < 1:
        raise ValueError(f"prefetch={prefetch!r} must be >= 1 batch")
    return _prefetched(dataset, batch_size, seed, start_step, prefetch)


def _prefetched(dataset, batch_size, seed, start_step, prefetch):
    def load(step: int) -> np.ndarray:
        return dataset.read(batch_indices(step, len(dataset), batch_size, seed))

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lemon-batches")
    ahead = deque(
        pool.submit(load, s) for s in range(start_step, start_step + prefetch)
    )
    step = start_step
    try:
        while True:
            batch = ahead.popleft().result()
            ahead.append(pool.submit(load, step + prefetch))
            yield step, batch
            step += 1
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
