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
"""

from __future__ import annotations

import gzip
import json
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._geometry import FEW_VERTICES, clean_polygons, describe, exterior, pack

if TYPE_CHECKING:
    from anndata import AnnData

    from ..annotations import Annotations
    from ..encoder import Encoder
    from ..slide import Slide

IMPORT_FORMATS = ("geojson", "imagescope", "hovernet", "cellvit")
FORMAT_NAMES = {
    "geojson": "qupath-geojson",
    "imagescope": "imagescope-xml",
    "hovernet": "hovernet-json",
    "cellvit": "cellvit-json",
}
DETECTION_TYPES = ("detection", "cell", "")  # "": no objectType (other tools)
LEMON_X, LEMON_Y = "LEMON x px", "LEMON y px"  # what export_geojson writes


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

    # what the file is
    if fmt == "imagescope" or (fmt is None and _looks_like_xml(path)):
        return _finish(_read_imagescope(path))
    content = _load_json(path, fmt)
    fmt = fmt or _json_format(path, content)
    if fmt == "geojson":
        return _finish(_read_geojson(path, content))
    from .hovernet import read_cellvit, read_hovernet

    reader = read_hovernet if fmt == "hovernet" else read_cellvit
    return _finish(reader(path, content, type_info))


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


def _load_json(path: Path, fmt: str | None) -> Any:
    try:
        with _opener(path)(path, "rt", encoding="utf-8") as fh:
            return json.load(fh)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        tried = f"{fmt} " if fmt else ""
        raise ValueError(
            f"{path} is not a readable {tried}JSON file ({type(err).__name__}: {err}); "
            "give QuPath GeoJSON, HoVer-Net or CellViT JSON, or ImageScope XML"
        ) from err


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


def describe_json(content: Any) -> str:
    """``'an object with keys ['a', 'b']'``, ``'a list of 3 numbers'``, ..."""
    if isinstance(content, dict):
        keys = list(content)[:8]
        kind = content.get("type")
        return f"an object of type {kind!r}" if kind else f"an object with keys {keys}"
    if isinstance(content, list):
        kinds = sorted({type(v).__name__ for v in content[:100]})
        return f"a list of {len(content)} items ({', '.join(kinds) or 'empty'})"
    return f"a {type(content).__name__} ({str(content)[:40]!r})"


# readers: each gives the raw rings, classes, centroids where known, skips


@dataclass
class _Raw:
    path: Path
    format: str
    rings: list[np.ndarray]
    classes: list[str]
    colours: dict[str, str] = field(default_factory=dict)
    centroids: list[tuple[float, float] | None] | None = None
    skipped: Counter = field(default_factory=Counter)
    mpp: float | None = None


def _read_imagescope(path: Path) -> _Raw:
    from ..segment.imagescope import read_imagescope_xml

    found = read_imagescope_xml(path, warn=False)
    raw = _Raw(path, "imagescope", found.polygons, found.names, dict(found.colours))
    raw.skipped[FEW_VERTICES] = found.skipped
    raw.mpp = found.mpp
    return raw


def _read_geojson(path: Path, content: Any) -> _Raw:
    """Rings, classes and recorded centroids of QuPath GeoJSON features."""
    features = _features(path, content)
    kinds = [_object_type(f) for f in features]
    has_detections = any(k in DETECTION_TYPES for k in kinds)

    raw = _Raw(path, "geojson", [], [], centroids=[])
    for feature, kind in zip(features, kinds, strict=True):
        if has_detections and kind not in DETECTION_TYPES:
            raw.skipped[f"{kind} among detections"] += 1
            continue
        ring, why = _ring(feature.get("nucleusGeometry") or feature.get("geometry"))
        if ring is None:
            raw.skipped[why] += 1
            continue
        properties = feature.get("properties") or {}
        name, colour = _classification(properties.get("classification"))
        raw.rings.append(ring)
        raw.classes.append(name)
        raw.centroids.append(_recorded_centroid(properties.get("measurements")))
        if name and colour and name not in raw.colours:
            raw.colours[name] = colour
    return raw


def _features(path: Path, content: Any) -> list[dict]:
    """The features of a FeatureCollection, a list of them, or one Feature."""
    if isinstance(content, dict) and content.get("type") == "FeatureCollection":
        features = content.get("features")
    elif isinstance(content, dict) and content.get("type") == "Feature":
        features = [content]
    elif isinstance(content, list):
        features = content
    else:
        features = None
    if not isinstance(features, list) or not all(
        isinstance(f, dict) and f.get("type") == "Feature" for f in features
    ):
        found = describe_json(content if features is None else features)
        raise ValueError(
            f"{path} is not GeoJSON of nuclei: expected a FeatureCollection (or a "
            f"list of Features, as QuPath writes), found {found}"
        )
    return features


def _object_type(feature: dict) -> str:
    properties = feature.get("properties") or {}
    kind = properties.get("objectType") or feature.get("objectType") or ""
    return str(kind).lower()


def _ring(geometry: Any) -> tuple[np.ndarray | None, str]:
    """The outer ring of a Polygon, or of a MultiPolygon's largest part."""
    if not isinstance(geometry, dict):
        return None, "no geometry"
    kind = geometry.get("type")
    coordinates = geometry.get("coordinates")
    try:
        if kind == "Polygon":
            return _xy(coordinates[0]), ""
        if kind == "MultiPolygon":
            parts = [_xy(part[0]) for part in coordinates]
            return max(parts, key=_shoelace_area), ""
    except (IndexError, KeyError, TypeError, ValueError):
        return None, f"malformed {kind} coordinates"
    return None, f"{kind or 'untyped'} geometry, not a polygon"


def _xy(ring: Any) -> np.ndarray:
    points = np.asarray(ring, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] < 2:
        raise ValueError(f"ring of shape {points.shape}")
    return points[:, :2]


def _shoelace_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))) / 2


def _classification(value: Any) -> tuple[str, str | None]:
    """Name and ``#rrggbb`` of a QuPath classification (``color`` or ``colorRGB``)."""
    if not isinstance(value, dict):
        return (str(value).strip() if isinstance(value, str) else ""), None
    name = value.get("name")
    if not name and isinstance(value.get("names"), list):
        name = ": ".join(str(n) for n in value["names"])
    colour = None
    rgb = value.get("color")
    if isinstance(rgb, list) and len(rgb) >= 3:
        colour = "#" + "".join(f"{int(c) & 255:02x}" for c in rgb[:3])
    elif isinstance(value.get("colorRGB"), int):
        packed = value["colorRGB"]
        colour = (
            f"#{(packed >> 16) & 255:02x}{(packed >> 8) & 255:02x}{packed & 255:02x}"
        )
    return (str(name).strip() if name else ""), colour


def _recorded_centroid(measurements: Any) -> tuple[float, float] | None:
    """The centroid our export records in the measurements, when there."""
    if isinstance(measurements, list):  # QuPath 0.3: [{"name": ..., "value": ...}]
        measurements = {
            m.get("name"): m.get("value") for m in measurements if isinstance(m, dict)
        }
    if not isinstance(measurements, dict):
        return None
    x, y = measurements.get(LEMON_X), measurements.get(LEMON_Y)
    if isinstance(x, (int, float)) and isinstance(y, (int, float)):
        return (float(x), float(y))
    return None


# checks shared by every format


def _finish(raw: _Raw) -> ImportedNuclei:
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
    imported = ImportedNuclei(
        centroids_xy=centroids.reshape(-1, 2),
        outlines=[exterior(p) for p in polygons[keep]],
        classes=classes,
        colours={k: v for k, v in raw.colours.items() if k in set(classes)},
        source=str(raw.path),
        format=FORMAT_NAMES[raw.format],
        n_skipped=sum(skipped.values()),
        skipped_reasons=dict(skipped),
        mpp=raw.mpp,
    )
    _report(raw, imported)
    return imported


def _report(raw: _Raw, imported: ImportedNuclei) -> None:
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
            stacklevel=3,
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
    file and how many of its objects were skipped.

    Raises
    ------
    ValueError
        A nucleus lies outside the slide (the file belongs to another image, or
        its coordinates are not level-0 pixels).
    """
    from ..points import embed_points

    params = {
        "file": Path(imported.source).name,
        "skipped": int(imported.n_skipped),
        "skipped_reasons": {k: int(v) for k, v in imported.skipped_reasons.items()},
    }
    try:
        return embed_points(
            slide,
            imported.centroids_xy,
            encoder=encoder,
            model=model,
            device=device,
            batch_size=batch_size,
            progress=progress,
            outlines=imported.outlines,
            segmenter=imported.format,
            segmenter_params=params,
        )
    except ValueError as err:
        if "outside" not in str(err):
            raise
        raise ValueError(
            f"nuclei of {Path(imported.source).name} do not fit '{slide.path.name}': "
            f"{err}. Is it the file of this image, in level-0 pixels?"
        ) from err


def annotations_from_imported(
    imported: ImportedNuclei, results_identity: dict, path: str | Path | None = None
) -> Annotations | None:
    """The classes of imported nuclei as labels (nucleus id = row); None if none.

    Types come in order of first appearance, with the file's colours (or the
    default ones). Names that differ only in case are one type. With ``path``
    the annotations are saved there and later changes follow.
    """
    from ..annotations import Annotations

    names = imported.class_names()
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
    keys = np.array([str(c).strip().casefold() for c in imported.classes], dtype=object)
    for key, name in canonical.items():
        annotations.label(ids[keys == key], name)
    if path is not None:
        annotations.save(path)
        annotations.path = Path(path)
    return annotations
