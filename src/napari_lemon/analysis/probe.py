"""A linear probe: cell types of every nucleus from a few brushed examples.

A class-balanced multinomial logistic regression (scikit-learn, lbfgs) on
standardised embeddings. After fitting, the standardisation is folded into the
weights, ``W' = W / s`` and ``b' = b - W' mu``, so predicting is one matmul and a
softmax per chunk of rows; float16 embeddings are converted a chunk at a time,
never as a whole matrix. A binary problem's single logistic row ``(w, b)`` is
stored as two rows ``(-w/2, -b/2)`` and ``(w/2, b/2)``, whose softmax equals the
logistic, so every probe has one row per class.

:func:`cross_validate` gives the out-of-fold balanced accuracy and confusion
matrix. Nuclei close together look alike, so folds are split by region
(:func:`region_groups`, or tiles) when every class spans at least two regions;
otherwise by nucleus, and the message says the accuracy may be optimistic.

A probe saves to ``.safetensors``: the tensors ``weights`` ``(k, d)`` and
``bias`` ``(k,)`` float32, and one JSON metadata entry holding the class names,
colours, the encoder's sha256 and crop scale, label counts and metrics. No
pickle is read or written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..store import EMBEDDING_KEY, now_iso

logger = logging.getLogger(__name__)

PROBE_FORMAT = "napari-lemon linear probe"
PROBE_VERSION = 1
METADATA_KEY = "napari-lemon"
MPP_TOLERANCE = 0.01  # relative difference of crop scales still compatible
MAX_ITER = 1000
# NOTE: C = 0.1, not scikit-learn's 1.0: on CRC nuclei (bundled encoder, 300 or
# 2,000 labels, folds by image) it typed unseen nuclei 1-3 points better and
# lbfgs needed 200 iterations instead of 500
DEFAULT_C = 0.1
# rows converted to float32 at once while predicting: 12 MB at 384-d (a fresh
# 65,536-row float32 array per chunk cost 1.5x more in page faults and cache)
BLOCK_ROWS = 8192
# side of the spatial blocks cross-validation keeps whole, in the panel and in
# `lemon probe train` alike (the panel's _probe_job.REGION_UM must equal it)
CV_BLOCK_UM = 250.0
TENSORS_SHOWN = 4  # tensor names an error lists before "... (N more)"


class NotEnoughLabels(ValueError):
    """Fewer than two cell types have labels; the message says which have how many.

    Attributes
    ----------
    why : str
        Which types have how many labels (``"'tumour' has 12, no other type has
        any"``), for callers that say what to do in their own words.
    """

    def __init__(self, message: str, why: str = "") -> None:
        super().__init__(message)
        self.why = why


class ProbeMismatch(ValueError):
    """A probe and results disagree on the encoder, its crop scale or the dim."""


@dataclass
class ProbeMetrics:
    """Cross-validated quality of a probe.

    Attributes
    ----------
    balanced_accuracy : float or None
        Mean recall over classes of the out-of-fold predictions; None when no
        cross-validation was possible (``message`` says why).
    confusion : ndarray of shape (k, k), int64
        Counts; rows are the true class, columns the predicted one, in the order
        of ``classes``.
    classes : list of str
    n_folds : int
        0 when no cross-validation ran.
    grouping : {"regions", "nuclei"}
        What the folds split: whole regions (honest) or single nuclei.
    message : str
        A sentence for the user: how the folds were made, or why there were none.
    predicted : ndarray of shape (n_labels,), int64, or None
        Out-of-fold class index of each labelled nucleus (-1 when not predicted);
        not saved with a probe.
    """

    balanced_accuracy: float | None
    confusion: np.ndarray
    classes: list[str]
    n_folds: int
    grouping: str
    message: str
    predicted: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The metrics as JSON-able values (without ``predicted``)."""
        return {
            "balanced_accuracy": self.balanced_accuracy,
            "confusion": np.asarray(self.confusion).astype(int).tolist(),
            "classes": list(self.classes),
            "n_folds": int(self.n_folds),
            "grouping": self.grouping,
            "message": self.message,
        }


def _default_mode() -> int:
    """Permissions of a new file under the current umask (e.g. 0o644)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@dataclass
class LinearProbe:
    """Cell-type classifier on embeddings: ``softmax(x @ weights.T + bias)``.

    Attributes
    ----------
    name : str
        Names the result columns (``obs["probe_<name>"]``).
    classes, colours : list of str
        Class names and their ``#rrggbb`` colours, in output order.
    weights : ndarray of shape (k, d), float32
    bias : ndarray of shape (k,), float32
        Standardisation folded in: apply to raw embeddings.
    feature : str
        The ``obsm`` key of the embeddings it reads.
    encoder_sha256, encoder_name : str or None
        The encoder whose embeddings it was trained on.
    mpp : float or None
        Microns per pixel of that encoder's crops.
    crop_size : int or None
        Side of those crops in pixels.
    n_labels : dict of str to int
        Labelled nuclei per class it was trained on.
    metrics : dict
        :meth:`ProbeMetrics.to_dict` of its cross-validation, and
        ``without_labels``: types that were given but had no labels.
    created : str
        ISO 8601 time of fitting.
    """

    name: str
    classes: list[str]
    colours: list[str]
    weights: np.ndarray
    bias: np.ndarray
    feature: str = EMBEDDING_KEY
    encoder_sha256: str | None = None
    mpp: float | None = None
    crop_size: int | None = None
    n_labels: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=now_iso)
    encoder_name: str | None = None

    @property
    def dim(self) -> int:
        """Length of the embeddings it reads."""
        return int(self.weights.shape[1])

    # predicting

    def predict_proba(self, embeddings, chunk: int = 65536) -> np.ndarray:
        """Class probabilities of each row.

        Parameters
        ----------
        embeddings : array-like of shape (n, d), float16 or float32
            Anything sliced by rows (ndarray, zarr or h5py array); each chunk of
            rows is converted to float32 on its own.
        chunk : int
            Rows per matmul.

        Returns
        -------
        ndarray of shape (n, k), float32
            Rows sum to 1, columns in the order of ``classes``.
        """
        shape = getattr(embeddings, "shape", None)
        if shape is None:
            embeddings = np.asarray(embeddings)
            shape = embeddings.shape
        self._check_dim(shape)
        if int(chunk) != chunk or chunk < 1:
            raise ValueError(f"chunk={chunk!r} must be a whole number >= 1")

        # rows read a chunk at a time, converted in blocks that stay in cache
        weights_t = np.ascontiguousarray(self.weights.T, dtype=np.float32)
        out = np.empty((shape[0], len(self.classes)), dtype=np.float32)
        block = np.empty((min(BLOCK_ROWS, shape[0]), self.dim), np.float32)
        with _one_blas_thread:
            for start in range(0, shape[0], int(chunk)):
                rows = np.asarray(embeddings[start : start + int(chunk)])
                for first in range(0, len(rows), BLOCK_ROWS):
                    part, at = rows[first : first + BLOCK_ROWS], start + first
                    np.copyto(block[: len(part)], part)
                    np.matmul(
                        block[: len(part)], weights_t, out=out[at : at + len(part)]
                    )
        out += self.bias
        return _softmax(out)

    def predict(self, embeddings, chunk: int = 65536) -> tuple[np.ndarray, np.ndarray]:
        """Most probable class of each row and its probability.

        Returns
        -------
        index : ndarray of shape (n,), int64
            Into ``classes``.
        confidence : ndarray of shape (n,), float32
            The largest class probability.
        """
        proba = self.predict_proba(embeddings, chunk)
        index = proba.argmax(axis=1).astype(np.int64)
        return index, proba[np.arange(len(proba)), index]

    def _check_dim(self, shape: tuple) -> None:
        if len(shape) != 2 or shape[1] != self.dim:
            raise ProbeMismatch(
                f"embeddings of shape {tuple(shape)} for probe {self.name!r}, which "
                f"reads ({self.dim},)-long embeddings; give the {self.feature!r} "
                "embeddings of results made with the probe's encoder"
            )

    # compatibility

    def check_compatible(
        self, provenance: dict, where: str, embed_dim: int | None = None
    ) -> None:
        """Raise ProbeMismatch unless results of ``provenance`` suit this probe.

        Parameters
        ----------
        provenance : dict
            ``uns["lemon"]`` of the results.
        where : str
            The results file, named in the message.
        embed_dim : int or None
            Length of the results' embeddings, when known.
        """
        encoder = dict((provenance or {}).get("encoder") or {})
        fix = (
            f"retrain the probe on these results (lemon probe train {where} ...), "
            "or re-embed them with the probe's encoder"
        )
        theirs = encoder.get("sha256")
        if self.encoder_sha256 and not theirs:
            warnings.warn(
                f"{where} does not record the encoder of its embeddings "
                "(uns['lemon']['encoder']['sha256']), so probe "
                f"{self.name!r} cannot check them; its predictions mean something "
                "only if they are embeddings of encoder "
                f"{_encoder_text(self.encoder_name, self.encoder_sha256)}",
                stacklevel=2,
            )
        if self.encoder_sha256 and theirs and theirs != self.encoder_sha256:
            raise ProbeMismatch(
                f"probe {self.name!r} was trained on embeddings of encoder "
                f"{_encoder_text(self.encoder_name, self.encoder_sha256)} but "
                f"{where} holds embeddings of encoder "
                f"{_encoder_text(encoder.get('name'), theirs)}; {fix}"
            )
        mpp = encoder.get("mpp")
        if self.mpp and mpp and abs(mpp - self.mpp) > MPP_TOLERANCE * self.mpp:
            raise ProbeMismatch(
                f"probe {self.name!r} was trained on crops at {self.mpp:g} um/px but "
                f"{where} holds embeddings of crops at {mpp:g} um/px; {fix}"
            )
        if embed_dim is not None and int(embed_dim) != self.dim:
            raise ProbeMismatch(
                f"probe {self.name!r} reads {self.dim}-long embeddings but {where} "
                f"holds {int(embed_dim)}-long ones; {fix}"
            )

    # saving

    def save(self, path: str | Path) -> Path:
        """Write the probe to a ``.safetensors`` file, atomically."""
        from safetensors.numpy import save_file

        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"path={str(path)!r} must end in .safetensors")
        tensors = {
            "weights": np.ascontiguousarray(self.weights, np.float32),
            "bias": np.ascontiguousarray(self.bias, np.float32),
        }
        metadata = {METADATA_KEY: json.dumps(self._metadata(), allow_nan=False)}

        tmp = path.with_name(f".{path.name}.{os.getpid()}.part")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(tmp), metadata=metadata)
            os.chmod(tmp, _default_mode())  # safetensors writes owner-only files
            os.replace(tmp, path)
        except Exception as err:  # safetensors raises its own error type
            raise _write_error(path, err) from err
        finally:
            with contextlib.suppress(OSError):  # e.g. its folder is a file
                tmp.unlink(missing_ok=True)
        return path

    def _metadata(self) -> dict[str, Any]:
        return {
            "format": PROBE_FORMAT,
            "version": PROBE_VERSION,
            "name": self.name,
            "classes": list(self.classes),
            "colours": list(self.colours),
            "feature": self.feature,
            "encoder_sha256": self.encoder_sha256,
            "encoder_name": self.encoder_name,
            "mpp": self.mpp,
            "crop_size": self.crop_size,
            "n_labels": {str(k): int(v) for k, v in self.n_labels.items()},
            "metrics": _jsonable(self.metrics),
            "created": self.created,
        }

    @classmethod
    def load(cls, path: str | Path) -> LinearProbe:
        """Read a probe written by :meth:`save`.

        Raises
        ------
        FileNotFoundError
            Nothing is at ``path``.
        ValueError
            ``path`` is not a safetensors file, not a napari-lemon probe, or its
            tensors and class list disagree.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"probe file {path} does not exist")
        weights, bias, metadata = _read_safetensors(path)
        meta = _probe_metadata(path, metadata)

        k = len(meta["classes"])
        if weights.ndim != 2 or bias.shape != (weights.shape[0],) or k < 2:
            raise ValueError(
                f"{path}: shapes inconsistent: weights {weights.shape}, bias "
                f"{bias.shape}, {k} classes; the file is damaged, train the probe "
                "again"
            )
        if weights.shape[0] != k or len(meta["colours"]) != k:
            raise ValueError(
                f"{path}: shapes inconsistent: {weights.shape[0]} weight rows, "
                f"{k} classes, {len(meta['colours'])} colours; the file is "
                "damaged, train the probe again"
            )
        return cls(
            name=meta["name"],
            classes=list(meta["classes"]),
            colours=list(meta["colours"]),
            weights=weights.astype(np.float32),
            bias=bias.astype(np.float32),
            feature=meta.get("feature") or EMBEDDING_KEY,
            encoder_sha256=meta.get("encoder_sha256"),
            mpp=meta.get("mpp"),
            crop_size=meta.get("crop_size"),
            n_labels=dict(meta.get("n_labels") or {}),
            metrics=dict(meta.get("metrics") or {}),
            created=meta.get("created") or "",
            encoder_name=meta.get("encoder_name"),
        )

    def __repr__(self) -> str:
        return (
            f"LinearProbe({self.name!r}, classes={self.classes}, dim={self.dim}, "
            f"n_labels={sum(self.n_labels.values())})"
        )


def _read_safetensors(path: Path):
    """Tensors ``weights`` and ``bias`` and the metadata of a safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as fh:
            metadata = fh.metadata() or {}
            names = set(fh.keys())
            if names != {"weights", "bias"}:
                raise ValueError(
                    f"{path} is a safetensors file but not a napari-lemon probe: it "
                    f"holds tensors {_few(sorted(names))}, not weights and bias "
                    "(perhaps model weights); give a probe saved by `lemon probe "
                    "train` or the cell types panel"
                )
            return fh.get_tensor("weights"), fh.get_tensor("bias"), metadata
    except ValueError:
        raise
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(
            f"{path} is not a safetensors file ({type(err).__name__}: {err}); give "
            "a probe saved by napari-lemon (.safetensors)"
        ) from err


def _few(names: list[str], shown: int = TENSORS_SHOWN) -> str:
    """``'a', 'b', 'c'`` or ``'a', 'b', ... (128 more)``: short enough to read."""
    quoted = ", ".join(repr(n) for n in names[:shown])
    more = len(names) - shown
    return f"{quoted}, ... ({more} more)" if more > 0 else quoted


def _write_error(path: Path, err: Exception) -> OSError:
    """Any failure to write a probe as an OSError naming ``path`` and the fix."""
    reason = getattr(err, "strerror", None)
    if not reason:  # safetensors: "... I/O error: Permission denied (os error 13)
        # at path <its own temporary file>"
        found = re.search(r"I/O error: (.+?) \(os error", str(err))
        reason = found.group(1) if found else f"{type(err).__name__}: {err}"
    return OSError(
        f"cannot write the probe {path}: {reason}; choose a folder you may write "
        "to (and with free space)"
    )


def _probe_metadata(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """The probe's JSON metadata entry, checked."""
    not_probe = f"{path} is a safetensors file but not a napari-lemon probe"
    try:
        meta = json.loads(metadata[METADATA_KEY])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{not_probe}: it has no {METADATA_KEY!r} metadata") from None
    if not isinstance(meta, dict) or meta.get("format") != PROBE_FORMAT:
        raise ValueError(f"{not_probe}: its metadata format is not {PROBE_FORMAT!r}")
    version = meta.get("version")
    if not isinstance(version, int) or version > PROBE_VERSION:
        raise ValueError(
            f"{path} is a napari-lemon probe of version {version!r}; this version "
            f"reads version {PROBE_VERSION}: update napari-lemon"
        )
    for key in ("name", "classes", "colours"):
        if key not in meta:
            raise ValueError(f"{not_probe}: its metadata lacks {key!r}")
    if not all(isinstance(c, str) for c in meta["classes"] + meta["colours"]):
        raise ValueError(f"{not_probe}: classes and colours must be strings")
    return meta


def prediction_columns(
    probe: LinearProbe, proba: np.ndarray, name: str | None = None
) -> dict[str, dict[str, Any]]:
    """The result elements of a probe's predictions, as the results contract names them.

    Parameters
    ----------
    probe : LinearProbe
    proba : ndarray of shape (n, k), float
        From :meth:`LinearProbe.predict_proba`.
    name : str or None
        Names the elements (default ``probe.name``).

    Returns
    -------
    dict with ``obs``, ``obsm`` and ``uns`` dicts, ready for
    :func:`napari_lemon.store_columns.write_analysis`:
    ``obs["probe_<name>"]`` categorical of class names, ``obs["probe_<name>_proba"]``
    float32 confidence, ``obsm["probe_<name>"]`` (n, k) float32 probabilities,
    ``uns["probe_<name>_colors"]`` the class colours (scanpy's convention).
    """
    import pandas as pd

    key = f"probe_{name or probe.name}"
    proba = np.asarray(proba, dtype=np.float32)
    if proba.ndim != 2 or proba.shape[1] != len(probe.classes):
        raise ValueError(
            f"proba has shape {proba.shape}; expected (n, {len(probe.classes)}) for "
            f"the classes {probe.classes}"
        )
    index = proba.argmax(axis=1)
    classes = pd.Categorical.from_codes(index, categories=list(probe.classes))
    return {
        "obs": {key: classes, f"{key}_proba": proba[np.arange(len(proba)), index]},
        "obsm": {key: proba},
        "uns": {f"{key}_colors": list(probe.colours)},
    }


# fitting


def fit_probe(
    embeddings,
    labels,
    classes: Sequence[str] | None = None,
    colours: Sequence[str] | None = None,
    name: str = "cell_type",
    provenance: dict | None = None,
    C: float = DEFAULT_C,
    seed: int = 0,
    metrics: ProbeMetrics | dict | None = None,
) -> LinearProbe:
    """Fit a class-balanced linear probe on labelled nuclei.

    Parameters
    ----------
    embeddings : array-like of shape (n_labelled, d), float
        Embeddings of the labelled nuclei only.
    labels : array-like of shape (n_labelled,), str
        Type name of each.
    classes : sequence of str or None
        All type names in display order (e.g. ``Annotations.type_names()``);
        types without labels are left out of the probe and listed in
        ``metrics["without_labels"]``. None: the sorted label names.
    colours : sequence of str or None
        ``#rrggbb`` per entry of ``classes``; None: ``DEFAULT_COLOURS``.
    name : str
        The probe's name (result columns ``probe_<name>``).
    provenance : dict or None
        ``uns["lemon"]`` of the results: records the encoder's sha256, crop mpp
        and crop size.
    C : float
        Inverse L2 regularisation strength of scikit-learn's LogisticRegression
        (default ``DEFAULT_C`` = 0.1).
    seed : int
    metrics : ProbeMetrics or dict or None
        Cross-validation results to keep with the probe.

    Raises
    ------
    NotEnoughLabels
        Fewer than two types have labels.
    ValueError
        A label names a type not in ``classes``; shapes disagree.
    """
    name = _check_name(name)
    x, y, classes = _labelled(embeddings, labels, classes)
    colours = _colours_for(classes, colours)
    present = _require_two_types(y, classes)

    # fit on the types that have labels
    keep = [classes[i] for i in present]
    remap = np.full(len(classes), -1, np.int64)
    remap[present] = np.arange(len(present))
    weights, bias = _fit_folded(x, remap[y], C, seed)

    # what it was made from
    encoder = dict((provenance or {}).get("encoder") or {})
    counts = np.bincount(y, minlength=len(classes))
    kept_metrics = metrics.to_dict() if isinstance(metrics, ProbeMetrics) else {}
    kept_metrics.update(metrics if isinstance(metrics, dict) else {})
    empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
    kept_metrics["without_labels"] = empty
    return LinearProbe(
        name=name,
        classes=keep,
        colours=[colours[i] for i in present],
        weights=weights,
        bias=bias,
        encoder_sha256=encoder.get("sha256"),
        encoder_name=encoder.get("name"),
        mpp=_float_or_none(encoder.get("mpp")),
        crop_size=_int_or_none(encoder.get("crop_size")),
        n_labels={classes[i]: int(counts[i]) for i in present},
        metrics=kept_metrics,
    )


def cross_validate(
    embeddings,
    labels,
    groups=None,
    classes: Sequence[str] | None = None,
    n_splits: int = 5,
    C: float = DEFAULT_C,
    seed: int = 0,
) -> ProbeMetrics:
    """Out-of-fold balanced accuracy and confusion matrix of the probe.

    Parameters
    ----------
    embeddings, labels, classes
        As for :func:`fit_probe`; types without labels are left out.
    groups : array-like of shape (n_labelled,), int, or None
        Region (or tile) of each labelled nucleus. Folds keep regions whole
        (``StratifiedGroupKFold``) when every class spans at least two of them;
        otherwise, and when None, folds split nuclei (``StratifiedKFold``).
    n_splits : int
        Folds at most; fewer when a class has fewer labels or regions.

    Returns
    -------
    ProbeMetrics
        ``balanced_accuracy`` None (and ``n_folds`` 0) when a class has a single
        label.

    Raises
    ------
    NotEnoughLabels
        Fewer than two types have labels.
    """
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix

    x, y, classes = _labelled(embeddings, labels, classes)
    present = _require_two_types(y, classes)
    if int(n_splits) != n_splits or n_splits < 2:
        raise ValueError(f"n_splits={n_splits!r} must be a whole number >= 2")
    keep = [classes[i] for i in present]
    remap = np.full(len(classes), -1, np.int64)
    remap[present] = np.arange(len(present))
    y = remap[y]
    groups = _groups_of(groups, len(y))

    # how to fold
    counts = np.bincount(y, minlength=len(keep))
    empty = np.zeros((len(keep), len(keep)), np.int64)
    if counts.min() < 2:
        few = [f"{keep[i]!r} has {counts[i]}" for i in np.flatnonzero(counts < 2)]
        message = (
            f"no cross-validation: {', '.join(few)} label; label at least two "
            "nuclei of every type to see the probe's accuracy"
        )
        return ProbeMetrics(None, empty, keep, 0, "nuclei", message)
    splitter, n_folds, grouping, message = _splitter(y, groups, keep, n_splits, seed)

    # out-of-fold predictions
    predicted = np.full(len(y), -1, np.int64)
    for train, test in splitter.split(x, y, groups if grouping == "regions" else None):
        predicted[test] = _fit_predict(x[train], y[train], x[test], C, seed)
    done = predicted >= 0
    score = balanced_accuracy_score(y[done], predicted[done])
    confusion = confusion_matrix(y[done], predicted[done], labels=range(len(keep)))
    message = f"{message}; balanced accuracy {score:.2f}"
    return ProbeMetrics(
        float(score),
        confusion.astype(np.int64),
        keep,
        n_folds,
        grouping,
        message,
        predicted,
    )


def region_groups(x, y, block_px: float) -> np.ndarray:
    """Square spatial blocks as cross-validation groups.

    Parameters
    ----------
    x, y : array-like of shape (n,), float
        Level-0 px centroids.
    block_px : float
        Side of a block in level-0 px (e.g. ``256 / mpp`` for 256 um).

    Returns
    -------
    ndarray of shape (n,), int64
        Block of each point, numbered 0.. in order of first appearance.
    """
    if not (isinstance(block_px, (int, float)) and math.isfinite(block_px)):
        raise ValueError(f"block_px={block_px!r} must be a finite number > 0")
    if block_px <= 0:
        raise ValueError(f"block_px={block_px!r} must be a finite number > 0")
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y have shapes {x.shape}, {y.shape}; give two (n,)")
    blocks = np.stack([np.floor(x / block_px), np.floor(y / block_px)], axis=1)
    _, first, inverse = np.unique(
        blocks, axis=0, return_index=True, return_inverse=True
    )
    order = np.argsort(np.argsort(first))  # renumber by first appearance
    return order[inverse.reshape(-1)].astype(np.int64)


def metrics_summary(metrics: ProbeMetrics | dict) -> tuple[str, str]:
    """The probe's quality in the panel's words: a line, and what it adds.

    Returns
    -------
    (str, str)
        ``"balanced accuracy 0.83 (5 folds of whole regions)"`` (or ``"no
        cross-validated accuracy yet"``), and the part of the metrics' message
        the line does not say (why folds split nuclei, why there is no
        accuracy), ``""`` when none.
    """
    metrics = metrics.to_dict() if hasattr(metrics, "to_dict") else dict(metrics)
    score, grouping = metrics.get("balanced_accuracy"), metrics.get("grouping")
    folds = int(metrics.get("n_folds") or 0)
    message = str(metrics.get("message", ""))
    if score is None:
        return "no cross-validated accuracy yet", message
    what = "whole regions" if grouping == "regions" else "single nuclei"
    line = f"balanced accuracy {score:.2f} ({folds} folds of {what})"
    if grouping == "regions" and "folds of whole regions" in message:
        return line, ""
    news = message.removeprefix(f"{folds} folds: ")
    return line, news.removesuffix(f"; balanced accuracy {score:.2f}")


# helpers


def _labelled(embeddings, labels, classes):
    """Embeddings (float32), class indices and class list, checked."""
    x = np.asarray(embeddings, dtype=np.float32)
    labels = np.asarray(labels, dtype=object).reshape(-1)
    if x.ndim != 2 or len(x) != len(labels):
        raise ValueError(
            f"embeddings have shape {x.shape} for {len(labels)} labels; give one "
            "(d,) embedding per labelled nucleus"
        )
    if not np.isfinite(x).all():
        raise ValueError("embeddings hold NaN or infinite values; re-embed the nuclei")
    names = [str(v) for v in labels]
    if classes is None:
        classes = sorted(set(names))
    classes = [str(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes={classes!r} holds a name twice")
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise ValueError(
            f"labels name {unknown}, not among classes {classes}; add the type "
            "first, or drop those labels"
        )
    return x, np.array([index[n] for n in names], dtype=np.int64), classes


def _require_two_types(y: np.ndarray, classes: list[str]) -> np.ndarray:
    """Indices of the classes with labels; NotEnoughLabels when fewer than two."""
    counts = np.bincount(y, minlength=len(classes))
    present = np.flatnonzero(counts)
    if len(present) >= 2:
        return present
    if len(present) == 0:
        why = "no type has any labels yet"
    else:
        only = present[0]
        others = "no other type has any" if len(classes) > 1 else "it is the only type"
        why = f"{classes[only]!r} has {counts[only]}, {others}"
    raise NotEnoughLabels(
        f"needs labels of at least two types; {why}. The probe waits until a "
        "second type is labelled",
        why,
    )


def _colours_for(classes: list[str], colours) -> list[str]:
    from ..annotations import DEFAULT_COLOURS, check_colour

    if colours is None:
        return [DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)] for i in range(len(classes))]
    colours = [check_colour(c) for c in colours]
    if len(colours) != len(classes):
        raise ValueError(
            f"{len(colours)} colours for {len(classes)} classes; give one per class"
        )
    return colours


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"name={name!r} must be a non-empty string, e.g. 'cell_type'")
    return name.strip()


def _groups_of(groups, n: int) -> np.ndarray | None:
    if groups is None:
        return None
    groups = np.asarray(groups).reshape(-1)
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} labels")
    return groups


def _splitter(y, groups, classes, n_splits, seed):
    """Folds by region when every class spans two regions, else by nucleus."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    counts = np.bincount(y, minlength=len(classes))
    if groups is not None:
        spans = [len(np.unique(groups[y == i])) for i in range(len(classes))]
        if min(spans) >= 2:
            n_folds = int(min(n_splits, len(np.unique(groups))))
            splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
            message = f"{n_folds} folds of whole regions"
            return splitter, n_folds, "regions", message
        narrow = [classes[i] for i, s in enumerate(spans) if s < 2]
        lies, that = ("lies", "that type") if len(narrow) == 1 else ("lie", "them")
        reason = (
            f"{', '.join(repr(c) for c in narrow)} {lies} in a single region, so "
            "folds split nuclei and the accuracy may be optimistic (neighbours "
            f"look alike); label {that} in another region too"
        )
    else:
        reason = "no regions given, so folds split nuclei"
    n_folds = int(min(n_splits, counts.min()))
    splitter = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
    return splitter, n_folds, "nuclei", f"{n_folds} folds: {reason}"


def _fit_predict(x_train, y_train, x_test, C, seed) -> np.ndarray:
    """Class indices of ``x_test`` from a probe fitted on one training fold."""
    present = np.unique(y_train)
    if len(present) == 1:  # a fold whose training part holds one class
        return np.full(len(x_test), present[0], np.int64)
    remap = np.full(y_train.max() + 1, -1, np.int64)
    remap[present] = np.arange(len(present))
    weights, bias = _fit_folded(x_train, remap[y_train], C, seed)
    return present[(x_test @ weights.T + bias).argmax(axis=1)]


def _fit_folded(x: np.ndarray, y: np.ndarray, C: float, seed: int):
    """Weights (k, d) and bias (k,) of a balanced LR, standardisation folded in."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if not (C > 0 and math.isfinite(C)):
        raise ValueError(f"C={C!r} must be a finite number > 0")
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(
        C=C, class_weight="balanced", max_iter=MAX_ITER, random_state=seed
    )
    with _one_blas_thread:
        model.fit(scaler.transform(x), y)

    # one row per class; a binary model's row split into two halves
    coef = model.coef_.astype(np.float64)
    intercept = model.intercept_.astype(np.float64)
    if coef.shape[0] == 1:
        coef = np.concatenate([-coef / 2, coef / 2])
        intercept = np.concatenate([-intercept / 2, intercept / 2])

    # fold the standardisation in: W (x - mu) / s + b = (W / s) x + (b - W mu / s)
    weights = coef / scaler.scale_
    bias = intercept - weights @ scaler.mean_
    return weights.astype(np.float32), bias.astype(np.float32)


class _OneBlasThread:
    """A context that runs BLAS on one thread: the matmuls here are small.

    The limit is process-wide (threadpoolctl), so overlapping uses from several
    threads share one limit, set by the first to enter and lifted by the last
    to leave.

    NOTE: lbfgs on 1,600 x 384 labels took 100 ms per iteration with two BLAS
    threads on two busy cores, and 3 ms with one.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._limits = None

    def __enter__(self) -> None:
        from threadpoolctl import threadpool_limits

        with self._lock:
            if self._users == 0:
                self._limits = threadpool_limits(limits=1, user_api="blas")
            self._users += 1

    def __exit__(self, *exc_info) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0 and self._limits is not None:
                self._limits.restore_original_limits()
                self._limits = None


_one_blas_thread = _OneBlasThread()


def _softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, stable for large logits."""
    z = z - z.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def _encoder_text(name: str | None, sha256: str) -> str:
    return f"{name!r} (sha256 {sha256[:16]}...)" if name else f"sha256 {sha256[:16]}..."


def _float_or_none(value) -> float | None:
    return None if value is None else float(value)


def _int_or_none(value) -> int | None:
    return None if value is None else int(value)


def _jsonable(value: Any) -> Any:
    """Metrics as plain JSON values (arrays to lists, numpy scalars to numbers)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
