"""Nuclei outlined elsewhere, read in to be embedded instead of segmented.

:func:`read_nuclei_file` reads

- QuPath GeoJSON (``.geojson``, ``.json``, ``.gz`` of either): a
  ``FeatureCollection``, or a bare list of features (as QuPath also writes), or
  one ``Feature``; Polygons, and the largest part of MultiPolygons; a cell's
  ``nucleusGeometry`` when it has one. When a file holds detections (cells, or
  features with no ``objectType``), its annotations and tiles are left out
  (they are usually the tissue outline around them); a file of annotations
  only is read as hand-drawn nuclei. The
  classification's name and colour become the class. This also reads CellViT's
  GeoJSON output and our own export: its ``LEMON x px``/``LEMON y px``
  measurements give the centroids back;
- Aperio ImageScope XML (``.xml``): one nucleus per ``Region``
  (:mod:`napari_lemon.segment.imagescope`);
- HoVer-Net and CellViT JSON (:mod:`napari_lemon.export.hovernet`).

Everything is returned in level-0 pixels of the image the file describes, as
:class:`ImportedNuclei`: outlines that are not a polygon, have fewer than three
vertices or no area, or are self-intersecting beyond repair are skipped and
counted by reason (one warning), never a crash. :func:`imported_results` embeds
the nuclei of a slide (``nucleus_id`` = the row in :class:`ImportedNuclei`) and
:func:`annotations_from_imported` turns their classes into labels.

Outlines of another image are the likeliest mistake, and nothing in the outlines
themselves shows it, so :func:`imported_results` warns when the pixel size a
file records differs from the image's by more than :data:`MPP_TOLERANCE`, and
when nuclei lie outside the image: those are left out (counted as skipped, their
rows absent from ``nucleus_id``) and the warning says how many; when more than
:data:`MANY_OUTSIDE` of them, or all, lie outside, it asks whether the outlines
are of this image (all outside is an error).
"""

from __future__ import annotations

import contextlib
import gc
import gzip
import json
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._geometry import FEW_VERTICES, clean_polygons, describe, exteriors, pack
from ._raw import RawNuclei, describe_json
from .geojson_reader import features_of, iter_features, read_geojson

if TYPE_CHECKING:
    from anndata import AnnData

    from ..annotations import Annotations
    from ..encoder import Encoder
    from ..slide import Slide

IMPORT_FORMATS = ("geojson", "imagescope", "hovernet", "cellvit")
MPP_TOLERANCE = 0.10  # relative difference of file and image pixel sizes warned of
MANY_OUTSIDE = 0.10  # share of nuclei outside the image that suggests another image
OUTSIDE = "outside the image"  # the skipped reason of nuclei outside it
FORMAT_NAMES = {
    "geojson": "qupath-geojson",
    "imagescope": "imagescope-xml",
    "hovernet": "hovernet-json",
    "cellvit": "cellvit-json",
}


@dataclass
class ImportedNuclei:
    """Nuclei read from a file made by another tool.

    Attributes
    ----------
    centroids_xy : ndarray of shape (n, 2), float64
        Level-0 ``(x, y)`` px: from the file when it records them, else the
        area centroid of the outline.
    outlines : list of ndarray of shape (k, 2), float64
        Valid polygons, exterior counter-clockwise in ``(x, y)``, not closed.
    classes : ndarray of shape (n,), object
        Class names, ``""`` for none.
    colours : dict
        Class name -> ``#rrggbb`` where the file gives one.
    source : str
        The file read.
    format : str
        ``qupath-geojson``, ``imagescope-xml``, ``hovernet-json``, ``cellvit-json``.
    n_skipped : int
        Objects of the file left out; ``skipped_reasons`` counts them by reason.
    mpp : float or None
        Microns per pixel the file records (ImageScope), else None.
    """

    centroids_xy: np.ndarray
    outlines: list[np.ndarray]
    classes: np.ndarray
    colours: dict[str, str]
    source: str
    format: str
    n_skipped: int = 0
    skipped_reasons: dict[str, int] = field(default_factory=dict)
    mpp: float | None = None

    def __len__(self) -> int:
        return len(self.outlines)

    def class_names(self) -> list[str]:
        """The classes present, in order of first appearance (``""`` left out)."""
        return [str(c) for c in dict.fromkeys(self.classes) if c]


def read_nuclei_file(
    path: str | Path, fmt: str | None = None, type_info: dict | str | Path | None = None
) -> ImportedNuclei:
    """Read nucleus outlines made by QuPath, ImageScope, HoVer-Net or CellViT.

    Parameters
    ----------
    path : str or Path
        The file.
    fmt : {"geojson", "imagescope", "hovernet", "cellvit"}, optional
        Default: from the file's extension and content.
    type_info : dict or path, optional
        HoVer-Net's ``type_info.json`` (``{"1": ["neoplastic", [255, 0, 0]], ...}``)
        naming its integer types; a ``type_info`` in the file itself is used
        when this is not given.

    Raises
    ------
    FileNotFoundError
        Nothing is at ``path``.
    ValueError
        The file is not of the format tried, or has no usable outline; the
        message names the file, the format and what was found.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"nuclei file {path} does not exist")
    if fmt is not None and fmt not in IMPORT_FORMATS:
        raise ValueError(
            f"format {fmt!r} for {path.name} is unknown; choose one of "
            f"{list(IMPORT_FORMATS)}"
        )

    # what the file is, and its rings
    if fmt == "imagescope" or (fmt is None and _looks_like_xml(path)):
        return _finish(_read_imagescope(path))
    with _collector_paused():
        text = _read_text(path, fmt)
        features = iter_features(path, text) if fmt in (None, "geojson") else None
        if features is not None:
            raw = read_geojson(path, features)
        else:
            content = _parse(path, text, fmt)
            fmt = fmt or _json_format(path, content)
            raw = _read_json_rings(path, fmt, content, type_info)
            del content  # before shapely makes an object per nucleus
        del text, features
    return _finish(raw)


def _read_json_rings(path: Path, fmt: str, content: Any, type_info) -> RawNuclei:
    if fmt == "geojson":
        return read_geojson(path, features_of(path, content))
    from .hovernet import read_cellvit, read_hovernet

    reader = read_hovernet if fmt == "hovernet" else read_cellvit
    return reader(path, content, type_info)


@contextlib.contextmanager
def _collector_paused():
    """Python's cycle collector off while a parsed JSON file is alive.

    NOTE: a slide's GeoJSON parses into tens of millions of objects and every
    collection walks them all (4x slower reading); parsed JSON holds no cycles.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


# file types


def _opener(path: Path):
    return gzip.open if path.suffix.lower() == ".gz" else open


def _looks_like_xml(path: Path) -> bool:
    """By extension, else by the first character that is not white space."""
    name = path.name.lower().removesuffix(".gz")
    if name.endswith(".xml"):
        return True
    if name.endswith((".json", ".geojson")):
        return False
    try:
        with _opener(path)(path, "rb") as fh:
            head = fh.read(256).lstrip()
    except OSError as err:
        raise ValueError(f"{path} cannot be read ({err})") from err
    return head.startswith(b"<")


def _read_text(path: Path, fmt: str | None) -> str:
    try:
        with _opener(path)(path, "rt", encoding="utf-8") as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError, EOFError) as err:
        raise _unreadable(path, fmt, err) from err


def _parse(path: Path, text: str, fmt: str | None) -> Any:
    try:
        return json.loads(text)
    except ValueError as err:
        raise _unreadable(path, fmt, err) from err


def _unreadable(path: Path, fmt: str | None, err: Exception) -> ValueError:
    tried = f"{fmt} " if fmt else ""
    return ValueError(
        f"{path} is not a readable {tried}JSON file ({type(err).__name__}: {err}); "
        "give QuPath GeoJSON, HoVer-Net or CellViT JSON, or ImageScope XML"
    )


def _json_format(path: Path, content: Any) -> str:
    """Which JSON layout ``content`` has; ValueError saying what was found."""
    if isinstance(content, dict):
        if content.get("type") in ("FeatureCollection", "Feature"):
            return "geojson"
        if "nuc" in content:
            return "hovernet"
        if "cells" in content:
            return "cellvit"
    if isinstance(content, list) and content and isinstance(content[0], dict):
        if content[0].get("type") == "Feature":
            return "geojson"
        if "contour" in content[0]:
            return "cellvit"
    raise ValueError(
        f"{path} is JSON but not nuclei of a format read here: it holds "
        f"{describe_json(content)}. Expected a GeoJSON FeatureCollection (QuPath, "
        'CellViT), {"nuc": {...}} (HoVer-Net) or {"cells": [...]} (CellViT)'
    )


# readers: each gives the raw rings, classes, centroids where known, skips


def _read_imagescope(path: Path) -> RawNuclei:
    from ..segment.imagescope import read_imagescope_xml

    found = read_imagescope_xml(path, warn=False)
    raw = RawNuclei(
        path, "imagescope", found.polygons, found.names, dict(found.colours)
    )
    raw.skipped[FEW_VERTICES] = found.skipped
    raw.mpp = found.mpp
    return raw


# checks shared by every format


def _finish(raw: RawNuclei) -> ImportedNuclei:
    """Clean the rings, derive centroids, count and report what was skipped."""
    import shapely

    xy, offsets = pack(raw.rings)
    polygons, why = clean_polygons(xy, offsets)
    empty = np.diff(offsets) == 0
    why[FEW_VERTICES] += int(empty.sum())  # an empty ring outlines nothing either
    skipped = +(raw.skipped + why)
    keep = np.flatnonzero(polygons != None)  # noqa: E711

    # centroids: recorded ones where finite, else the outline's
    centroids = shapely.get_coordinates(shapely.centroid(polygons[keep].astype(object)))
    if raw.centroids is not None and len(keep):
        recorded = np.array(
            [raw.centroids[i] or (np.nan, np.nan) for i in keep], dtype=np.float64
        )
        known = np.isfinite(recorded).all(axis=1)
        centroids[known] = recorded[known]

    classes = np.array([raw.classes[i] for i in keep], dtype=object).reshape(-1)
    present = set(classes)
    imported = ImportedNuclei(
        centroids_xy=centroids.reshape(-1, 2),
        outlines=exteriors(polygons[keep]),
        classes=classes,
        colours={k: v for k, v in raw.colours.items() if k in present},
        source=str(raw.path),
        format=FORMAT_NAMES[raw.format],
        n_skipped=sum(skipped.values()),
        skipped_reasons=dict(skipped),
        mpp=raw.mpp,
    )
    _report(raw, imported)
    return imported


def _report(raw: RawNuclei, imported: ImportedNuclei) -> None:
    """A ValueError for a file without nuclei; a warning for the ones skipped."""
    counted = f"skipped: {describe(Counter(imported.skipped_reasons))}"
    if len(imported) == 0:
        what = counted if imported.n_skipped else "it holds no objects"
        raise ValueError(
            f"{raw.path} ({imported.format}) has no nucleus outline to use ({what}); "
            "check that it is the right file"
        )
    if imported.n_skipped:
        total = len(imported) + imported.n_skipped
        warnings.warn(
            f"{raw.path.name}: {imported.n_skipped} of {total} objects left out "
            f"({counted.removeprefix('skipped: ')})",
            stacklevel=4,  # the caller of read_nuclei_file
        )


# embedding and labels


def imported_results(
    slide: Slide,
    imported: ImportedNuclei,
    model: str = "bundled",
    device: str = "auto",
    progress: Callable[[str, int, int], None] | None = None,
    encoder: Encoder | None = None,
    batch_size: int | None = None,
) -> AnnData:
    """Embed imported nuclei of ``slide``: results as if we had segmented them.

    ``nucleus_id`` is the row of each nucleus in ``imported``; ``segmenter`` is
    the import format (``qupath-geojson``, ...), and the provenance records the
    file and how many of its objects were skipped. Nuclei outside the slide are
    left out with a warning (their rows have no result).

    Warns
    -----
    UserWarning
        The file records a pixel size more than 10% off the slide's; nuclei lie
        outside the slide (how many, and whether the file is of this image).

    Raises
    ------
    ValueError
        Every nucleus lies outside the slide (the file belongs to another image,
        or its coordinates are not level-0 pixels).
    """
    from ..points import embed_points

    _check_scale(slide, imported)
    rows = _rows_inside(slide, imported)
    reasons = dict(imported.skipped_reasons)
    if len(rows) < len(imported):
        reasons[OUTSIDE] = len(imported) - len(rows)
    params = {
        "file": Path(imported.source).name,
        "skipped": int(sum(reasons.values())),
        "skipped_reasons": {k: int(v) for k, v in reasons.items()},
    }
    adata = embed_points(
        slide,
        imported.centroids_xy[rows],
        encoder=encoder,
        model=model,
        device=device,
        batch_size=batch_size,
        progress=progress,
        outlines=[imported.outlines[i] for i in rows],
        segmenter=imported.format,
        segmenter_params=params,
    )
    adata.obs["nucleus_id"] = rows.astype(np.int64)
    return adata


def _check_scale(slide: Slide, imported: ImportedNuclei) -> None:
    """Warn when the file's pixel size is not the slide's (another image?)."""
    if not (imported.mpp and slide.mpp):
        return
    if abs(imported.mpp / slide.mpp - 1) <= MPP_TOLERANCE:
        return
    warnings.warn(
        f"{Path(imported.source).name} records {imported.mpp:g} microns per pixel "
        f"but '{slide.path.name}' has {slide.mpp:g}: are these outlines of this "
        "image? They are placed in its level-0 pixels as they are",
        UserWarning,
        stacklevel=3,
    )


def _rows_inside(slide: Slide, imported: ImportedNuclei) -> np.ndarray:
    """Rows of the nuclei whose centre lies on the slide; warns of the others."""
    xy = np.asarray(imported.centroids_xy, np.float64).reshape(-1, 2)
    width, height = slide.dimensions
    inside = np.isfinite(xy).all(axis=1)
    inside &= (xy >= 0).all(axis=1) & (xy[:, 0] <= width) & (xy[:, 1] <= height)
    rows = np.flatnonzero(inside)
    n_out, total = len(xy) - len(rows), len(xy)
    if not n_out:
        return rows

    # which, and what it suggests
    example = tuple(round(float(v), 1) for v in xy[np.argmin(inside)])
    where = (
        f"{n_out:,} of {total:,} nuclei of {Path(imported.source).name} lie outside "
        f"the {width}x{height} image '{slide.path.name}', e.g. (x, y)={example}"
    )
    if not len(rows):
        raise ValueError(
            f"{where}: none fit. Is it the file of this image, in level-0 pixels?"
        )
    question = (
        "; are these outlines of this image, in level-0 pixels?"
        if n_out > MANY_OUTSIDE * total
        else ""
    )
    warnings.warn(
        f"{where}; they were left out ({len(rows):,} embedded){question}",
        UserWarning,
        stacklevel=3,
    )
    return rows


def annotations_from_imported(
    imported: ImportedNuclei,
    results_identity: dict,
    path: str | Path | None = None,
    nucleus_ids: np.ndarray | None = None,
) -> Annotations | None:
    """The classes of imported nuclei as labels (nucleus id = row); None if none.

    Types come in order of first appearance, with the file's colours (or the
    default ones). Names that differ only in case are one type. With ``path``
    the annotations are saved there and later changes follow. ``nucleus_ids``
    (the results' ``obs["nucleus_id"]``) labels only the nuclei embedded, not
    those :func:`imported_results` left out; default: every row.
    """
    from ..annotations import Annotations

    classes = np.asarray(imported.classes, dtype=object)
    if nucleus_ids is not None:
        kept = np.zeros(len(classes), dtype=bool)
        kept[np.asarray(nucleus_ids, dtype=np.int64)] = True
        classes = np.where(kept, classes, "")
    names = [str(c) for c in dict.fromkeys(classes) if c]
    if not names:
        return None
    annotations = Annotations(None, results_identity)
    canonical: dict[str, str] = {}
    for name in names:
        key = name.strip().casefold()
        if key not in canonical:
            annotations.add_type(name, imported.colours.get(name))
            canonical[key] = annotations.type_names()[-1]

    # one label action per type
    ids = np.arange(len(imported), dtype=np.int64)
    keys = np.array([str(c).strip().casefold() for c in classes], dtype=object)
    for key, name in canonical.items():
        annotations.label(ids[keys == key], name)
    if path is not None:
        annotations.save(path)
        annotations.path = Path(path)
    return annotations
