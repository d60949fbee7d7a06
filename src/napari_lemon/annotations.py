"""Cell types and the nuclei brushed as examples of them, saved beside the results.

The annotations of a results store live in one JSON file beside it
(:func:`annotations_path`: ``CMU-1.lemon.zarr`` -> ``CMU-1.lemon.annotations.json``)::

    {"format": "napari-lemon annotations", "version": 1,
     "results": {"n_obs": ..., "source": ..., "created": ...},
     "types": [{"name": "tumour", "colour": "#e69f00"}, ...],
     "labels": {"tumour": [nucleus ids], ...}}

Nuclei are named by their ``nucleus_id`` (stable across reads of the store), not
by row. When :attr:`Annotations.path` is set every change is saved at once,
atomically (a temporary file in the same folder, then ``os.replace``), so a crash
never leaves half a file. ``results`` ties the labels to the result they were
made on; :meth:`Annotations.check_identity` warns when they seem to belong to
another one.

Labelling, unlabelling and removing a type are undoable (:meth:`Annotations.undo`);
adding, renaming and recolouring types are not. Colours are ``#rrggbb``; the short
form ``#rgb`` is accepted and stored expanded, in lower case.
"""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

ANNOTATIONS_FORMAT = "napari-lemon annotations"
ANNOTATIONS_VERSION = 1
SUFFIX = ".annotations.json"
UNDO_DEPTH = 200  # actions kept for undo

# Okabe & Ito (2008), "Color Universal Design": distinct to the common forms of
# colour blindness; black left out (it vanishes on dark nuclei), grey added
DEFAULT_COLOURS: list[str] = [
    "#e69f00",  # orange
    "#56b4e9",  # sky blue
    "#009e73",  # bluish green
    "#f0e442",  # yellow
    "#0072b2",  # blue
    "#d55e00",  # vermilion
    "#cc79a7",  # reddish purple
    "#999999",  # grey
]

_HEX = re.compile(r"#(?:[0-9a-fA-F]{6}|[0-9a-fA-F]{3})")


def check_colour(colour: str) -> str:
    """``colour`` as lower-case ``#rrggbb``; ValueError unless ``#rrggbb``/``#rgb``."""
    if not isinstance(colour, str) or not _HEX.fullmatch(colour.strip()):
        raise ValueError(
            f"colour={colour!r} is not a hex colour; give '#rrggbb' (e.g. "
            "'#e69f00') or '#rgb'"
        )
    colour = colour.strip().lower()
    if len(colour) == 4:
        colour = "#" + "".join(c * 2 for c in colour[1:])
    return colour


@dataclass
class CellType:
    """A cell type: its name and its ``#rrggbb`` colour."""

    name: str
    colour: str


class Annotations:
    """Cell types and labelled nuclei of one result.

    Parameters
    ----------
    path : Path or None
        The JSON file; when set, every change is saved there at once.
    results_id : dict or None
        :func:`results_identity` of the result the labels belong to.
    """

    def __init__(self, path: str | Path | None = None, results_id: dict | None = None):
        self.path: Path | None = Path(path) if path is not None else None
        self.results_id: dict = dict(results_id or {})
        self.types: list[CellType] = []
        self._labels: dict[int, str] = {}
        self._undo: list[tuple] = []
        self._callbacks: list[Callable[[], None]] = []

    # types

    def type_names(self) -> list[str]:
        """Names of the types, in order."""
        return [t.name for t in self.types]

    def colour_of(self, name: str) -> str:
        """The ``#rrggbb`` colour of type ``name``."""
        return self._type(name).colour

    def add_type(self, name: str, colour: str | None = None) -> CellType:
        """Add a type; without a colour it gets the first unused default one."""
        name = self._new_name(name)
        if colour is None:
            used = {t.colour for t in self.types}
            free = [c for c in DEFAULT_COLOURS if c not in used]
            n = len(self.types)
            colour = free[0] if free else DEFAULT_COLOURS[n % len(DEFAULT_COLOURS)]
        cell_type = CellType(name, check_colour(colour))
        self.types.append(cell_type)
        self._changed()
        return cell_type

    def rename_type(self, old: str, new: str) -> None:
        """Rename a type; its labels (and undo history) follow."""
        cell_type = self._type(old)
        new = self._new_name(new, allow=old)
        if new == old:
            return
        cell_type.name = new
        for nucleus, name in self._labels.items():
            if name == old:
                self._labels[nucleus] = new
        self._undo = [_renamed(action, old, new) for action in self._undo]
        self._changed()

    def recolour_type(self, name: str, colour: str) -> None:
        """Give type ``name`` another colour."""
        cell_type = self._type(name)
        cell_type.colour = check_colour(colour)
        self._changed()

    def remove_type(self, name: str) -> int:
        """Remove a type and its labels (undoable); returns how many labels went."""
        index = self.type_names().index(self._type(name).name)
        cell_type = self.types.pop(index)
        dropped = {n: t for n, t in self._labels.items() if t == name}
        for nucleus in dropped:
            del self._labels[nucleus]
        self._push(("remove_type", index, cell_type, dropped))
        self._changed()
        return len(dropped)

    # labels

    def label(self, nucleus_ids, name: str) -> int:
        """Label nuclei as type ``name`` (one undoable action).

        Returns
        -------
        int
            Nuclei whose label changed; 0 changes nothing and adds no undo step.
        """
        name = self._type(name).name
        previous = {}
        for nucleus in _ids(nucleus_ids):
            old = self._labels.get(nucleus)
            if old != name:
                previous[nucleus] = old
                self._labels[nucleus] = name
        return self._record_labels(previous)

    def unlabel(self, nucleus_ids) -> int:
        """Remove the labels of nuclei (one undoable action); returns how many."""
        previous = {}
        for nucleus in _ids(nucleus_ids):
            if nucleus in self._labels:
                previous[nucleus] = self._labels.pop(nucleus)
        return self._record_labels(previous)

    def _record_labels(self, previous: dict[int, str | None]) -> int:
        if previous:
            self._push(("labels", previous))
            self._changed()
        return len(previous)

    def labels(self) -> dict[int, str]:
        """Nucleus id -> type name of every labelled nucleus (a copy)."""
        return dict(self._labels)

    def labels_for(self, nucleus_ids: np.ndarray) -> np.ndarray:
        """Type name of each nucleus, ``""`` when unlabelled.

        Returns
        -------
        ndarray of shape (n,), object
        """
        import pandas as pd

        ids = np.asarray(nucleus_ids, dtype=np.int64).reshape(-1)
        out = np.full(len(ids), "", dtype=object)
        if not self._labels:
            return out
        keys = np.fromiter(self._labels.keys(), np.int64, len(self._labels))
        names = np.array(list(self._labels.values()), dtype=object)
        where = pd.Index(keys).get_indexer(ids)
        found = where >= 0
        out[found] = names[where[found]]
        return out

    def counts(self) -> dict[str, int]:
        """Labelled nuclei per type, in type order, 0 included."""
        counts = dict.fromkeys(self.type_names(), 0)
        for name in self._labels.values():
            counts[name] += 1
        return counts

    # undo

    @property
    def can_undo(self) -> bool:
        """Whether :meth:`undo` has something to undo."""
        return bool(self._undo)

    def undo(self) -> bool:
        """Undo the last label, unlabel or remove_type; False when there is none."""
        if not self._undo:
            return False
        action = self._undo.pop()
        if action[0] == "remove_type":
            _, index, cell_type, dropped = action
            if cell_type.name not in self.type_names():  # unless added again since
                self.types.insert(min(index, len(self.types)), cell_type)
            self._labels.update(dropped)
        else:
            known = set(self.type_names())
            for nucleus, old in action[1].items():
                if old is None or old not in known:
                    self._labels.pop(nucleus, None)
                else:
                    self._labels[nucleus] = old
        self._changed()
        return True

    def _push(self, action: tuple) -> None:
        self._undo.append(action)
        del self._undo[:-UNDO_DEPTH]

    # change notification and saving

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` after each change (after it is saved)."""
        self._callbacks.append(callback)

    def disconnect(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback`` (no error when it was not connected)."""
        if callback in self._callbacks:
            self._callbacks.remove(callback)

    def _changed(self) -> None:
        """Save (when a path is set), then tell the listeners, even if saving failed."""
        try:
            if self.path is not None:
                self.save()
        finally:
            for callback in list(self._callbacks):
                callback()

    def to_dict(self) -> dict[str, Any]:
        """The JSON content of the annotations file."""
        by_type: dict[str, list[int]] = {t.name: [] for t in self.types}
        for nucleus, name in self._labels.items():
            by_type[name].append(nucleus)
        return {
            "format": ANNOTATIONS_FORMAT,
            "version": ANNOTATIONS_VERSION,
            "results": self.results_id,
            "types": [{"name": t.name, "colour": t.colour} for t in self.types],
            "labels": {name: sorted(ids) for name, ids in by_type.items()},
        }

    def save(self, path: str | Path | None = None) -> Path:
        """Write the annotations atomically to ``path`` (default: :attr:`path`).

        Raises
        ------
        OSError
            The file could not be written; nothing in memory is lost, and the
            next change (or ``save``) tries again.
        """
        target = Path(path) if path is not None else self.path
        if target is None:
            raise ValueError(
                "these annotations have no path; give save() a .json file name"
            )
        text = json.dumps(self.to_dict(), indent=1)

        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, target)
        except OSError as err:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:
                pass
            raise OSError(
                err.errno,
                f"could not save annotations to {target}: {err.strerror or err}. "
                "They are kept in memory; make the folder writable or save them "
                "elsewhere",
            ) from err
        logger.debug("annotations saved to %s", target)
        return target

    @classmethod
    def load(cls, path: str | Path) -> Annotations:
        """Read an annotations file; later changes are saved back to it.

        Raises
        ------
        FileNotFoundError
            Nothing is at ``path``.
        ValueError
            ``path`` is not a napari-lemon annotations file, or is damaged.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"annotations file {path} does not exist")
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            raise ValueError(
                f"{path} is not a JSON file ({err}); give an annotations file "
                "saved by napari-lemon, or move it away to start afresh"
            ) from err
        annotations = cls(None, {})
        annotations._read(path, content)
        annotations.path = path
        return annotations

    @classmethod
    def for_results(
        cls, store_path: str | Path, identity: dict | None = None
    ) -> Annotations:
        """The annotations beside a results store: loaded when present, else new.

        ``identity`` (:func:`results_identity` of the loaded result) is checked
        against the file's with a warning, or recorded in a new one.
        """
        path = annotations_path(store_path)
        if path.exists():
            annotations = cls.load(path)
            if identity:
                annotations.check_identity(identity)
            return annotations
        return cls(path, identity)

    def _read(self, path: Path, content: Any) -> None:
        """Fill self from the parsed JSON ``content`` of ``path``; ValueError if bad."""
        if not isinstance(content, dict) or content.get("format") != ANNOTATIONS_FORMAT:
            raise ValueError(
                f"{path} is JSON but not a napari-lemon annotations file (no "
                f"'format': {ANNOTATIONS_FORMAT!r}); move it away to start afresh"
            )
        version = content.get("version")
        if not isinstance(version, int) or version > ANNOTATIONS_VERSION:
            raise ValueError(
                f"{path} holds annotations of version {version!r}; this version "
                f"reads version {ANNOTATIONS_VERSION}: update napari-lemon"
            )
        try:
            for entry in content.get("types", []):
                self.types.append(
                    CellType(
                        self._new_name(entry["name"]), check_colour(entry["colour"])
                    )
                )
            known = set(self.type_names())
            for name, ids in dict(content.get("labels", {})).items():
                if name not in known:
                    raise ValueError(f"labels of {name!r}, a type it does not list")
                for nucleus in _ids(ids):
                    if nucleus in self._labels:
                        raise ValueError(f"nucleus {nucleus} is labelled twice")
                    self._labels[nucleus] = name
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"{path} is a damaged annotations file ({type(err).__name__}: "
                f"{err}); fix or move it away to start afresh"
            ) from err
        self.results_id = dict(content.get("results") or {})

    # identity

    def check_identity(self, identity: dict) -> bool:
        """Warn (and return False) when ``identity`` is not the labels' result."""
        differ = [
            f"{key} {self.results_id[key]!r} here, {value!r} in the results"
            for key, value in identity.items()
            if self.results_id.get(key) is not None
            and value is not None
            and self.results_id[key] != value
        ]
        if differ:
            where = self.path or "these annotations"
            warnings.warn(
                f"{where} may belong to other results ({'; '.join(differ)}); "
                "labels are matched by nucleus id, check them before training",
                stacklevel=2,
            )
        return not differ

    # lookups

    def _type(self, name: str) -> CellType:
        for cell_type in self.types:
            if cell_type.name == name:
                return cell_type
        raise ValueError(
            f"unknown cell type {name!r}; the types are {self.type_names()}. "
            "Add it first"
        )

    def _new_name(self, name: str, allow: str | None = None) -> str:
        """``name`` stripped; ValueError when empty or already a type's name."""
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"cell type name {name!r} is empty; give it a name")
        name = name.strip()
        taken = {n.casefold() for n in self.type_names() if n != allow}
        if name.casefold() in taken:
            raise ValueError(
                f"cell type name {name!r} is taken (the types are "
                f"{self.type_names()}); choose another"
            )
        return name

    def __repr__(self) -> str:
        counts = ", ".join(f"{k}: {v}" for k, v in self.counts().items())
        return f"Annotations({str(self.path) if self.path else None!r}, {{{counts}}})"


def _ids(nucleus_ids: Iterable) -> list[int]:
    """Nucleus ids as Python ints; ValueError for anything not a whole number."""
    ids = np.asarray(nucleus_ids).reshape(-1)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"nucleus ids must be whole numbers (obs['nucleus_id']); got dtype "
            f"{ids.dtype} ({ids[:3].tolist()!r}...)"
        )
    return ids.astype(np.int64).tolist()


def _renamed(action: tuple, old: str, new: str) -> tuple:
    """An undo action with type name ``old`` replaced by ``new``."""

    def swap(name):
        return new if name == old else name

    if action[0] == "remove_type":
        _, index, cell_type, dropped = action
        return (action[0], index, cell_type, {n: swap(t) for n, t in dropped.items()})
    return (action[0], {n: swap(t) for n, t in action[1].items()})


def label_columns(annotations: Annotations, nucleus_ids) -> dict[str, dict]:
    """The labels as result elements: ``obs["label"]`` and ``uns["label_colors"]``.

    Returns
    -------
    dict with ``obs`` ``{"label": Categorical}`` (the types as categories, in
    order; NaN where unlabelled) and ``uns`` ``{"label_colors": [hex, ...]}``, ready
    for :func:`napari_lemon.store_columns.write_analysis`.
    """
    import pandas as pd

    names = annotations.labels_for(nucleus_ids)
    labels = pd.Categorical(
        np.where(names == "", None, names), categories=annotations.type_names()
    )
    colours = [t.colour for t in annotations.types]
    return {"obs": {"label": labels}, "uns": {"label_colors": colours}}


def annotations_path(store_path: str | Path) -> Path:
    """The annotations file beside a results store.

    ``CMU-1.lemon.zarr`` -> ``CMU-1.lemon.annotations.json``; ``a.h5ad`` ->
    ``a.annotations.json``.
    """
    store_path = Path(store_path)
    return store_path.with_name(store_path.stem + SUFFIX)


def set_aside(path: str | Path) -> Path | None:
    """Rename an annotations file out of the way, so nothing writes over it.

    ``a.annotations.json`` -> ``a.annotations.replaced-20250131-142501.json``
    (``-2``, ``-3``, ... added when that name is taken): the labels of results
    that are being replaced stay on disk, under a name no reader looks for.

    Returns
    -------
    Path or None
        The new name, or None when nothing was at ``path``.

    Raises
    ------
    OSError
        The file cannot be renamed; names it and what to do.
    """
    import time

    path = Path(path)
    if not path.exists():
        return None
    stem = path.name.removesuffix(".json")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside, n = path.with_name(f"{stem}.replaced-{stamp}.json"), 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{stem}.replaced-{stamp}-{n}.json")
    try:
        path.rename(aside)
    except OSError as err:
        raise OSError(
            f"cannot move the labels {path} aside to {aside.name} "
            f"({err.strerror or err}); move or delete that file yourself first"
        ) from err
    return aside


def results_identity(adata_or_provenance) -> dict[str, Any]:
    """What ties labels to one result: ``n_obs``, source file name, created time.

    Parameters
    ----------
    adata_or_provenance : AnnData, dict, or tuple (n_obs, dict)
        The results; or their provenance ``uns["lemon"]`` (``n_obs`` then None);
        or what :func:`napari_lemon.store_columns.read_provenance` returns.
    """
    from .store import PROVENANCE_KEY

    n_obs = None
    if isinstance(adata_or_provenance, tuple):
        n_obs, provenance = adata_or_provenance
    elif isinstance(adata_or_provenance, dict):
        provenance = adata_or_provenance
    else:
        n_obs = adata_or_provenance.n_obs
        provenance = adata_or_provenance.uns.get(PROVENANCE_KEY, {})
    source = dict(provenance.get("source") or {})
    return {
        "n_obs": None if n_obs is None else int(n_obs),
        "source": source.get("name"),
        "created": provenance.get("created"),
    }
