"""QuPath GeoJSON read as nucleus rings, streamed when the file allows.

A slide's GeoJSON (hundreds of MB) parsed whole becomes tens of millions of
Python objects (3 GB for 243,000 nuclei). When the text opens as a
``FeatureCollection`` whose first key is ``features``, or as a list of Features
(how QuPath and our export write it), the features are decoded one at a time
from the text instead, and only their rings are kept. Anything else is parsed
whole.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ._raw import RawNuclei, describe_json

DETECTION_TYPES = ("detection", "cell", "")  # "": no objectType (other tools)
LEMON_X, LEMON_Y = "LEMON x px", "LEMON y px"  # what export_geojson writes

_COLLECTION_HEAD = re.compile(
    r'\s*\{\s*"type"\s*:\s*"FeatureCollection"\s*,\s*"features"\s*:\s*\['
)
_SPACE = re.compile(r"\s*")


def iter_features(path: Path, text: str) -> Iterator[Any] | None:
    """The elements of the features array of ``text``, one decoded at a time.

    None when ``text`` does not open as a streamable FeatureCollection or a list
    whose first element is a Feature (then parse it whole).
    """
    head = _COLLECTION_HEAD.match(text)
    if head is not None:
        return _elements(path, text, head.end())
    start = _SPACE.match(text).end()
    if not text.startswith("[", start):
        return None
    try:
        first, _ = json.JSONDecoder().raw_decode(
            text, _SPACE.match(text, start + 1).end()
        )
    except ValueError:
        return None
    if not isinstance(first, dict) or first.get("type") != "Feature":
        return None
    return _elements(path, text, start + 1)


def _elements(path: Path, text: str, index: int) -> Iterator[Any]:
    """Decode the array elements from ``index`` (just after its ``[``) to its ``]``."""
    decoder = json.JSONDecoder()
    index = _SPACE.match(text, index).end()
    if text.startswith("]", index):
        return
    while True:
        try:
            element, index = decoder.raw_decode(text, index)
        except ValueError as err:
            raise ValueError(
                f"{path} is not a readable GeoJSON file ({type(err).__name__}: {err})"
            ) from err
        yield element
        index = _SPACE.match(text, index).end()
        if text.startswith(",", index):
            index = _SPACE.match(text, index + 1).end()
        elif text.startswith("]", index):
            return
        else:
            raise ValueError(
                f"{path} is not a readable GeoJSON file: expected ',' or ']' at "
                f"character {index}, found {text[index : index + 20]!r}"
            )


def read_geojson(path: Path, features: Iterable[Any]) -> RawNuclei:
    """Rings, classes and recorded centroids of QuPath GeoJSON features.

    One pass over ``features`` (which may be a stream), then annotations are
    dropped when there are detections.
    """
    raw = RawNuclei(path, "geojson", [], [], centroids=[])
    kinds, rings = [], []
    for feature in features:
        if not isinstance(feature, dict) or feature.get("type") != "Feature":
            raise _not_features(path, feature, " where a Feature should be")
        ring, why = _ring(feature.get("nucleusGeometry") or feature.get("geometry"))
        properties = feature.get("properties") or {}
        name, colour = _classification(properties.get("classification"))
        kinds.append(_object_type(feature))
        rings.append((ring, why, name, _recorded_centroid(properties)))
        if name and colour and name not in raw.colours:
            raw.colours[name] = colour

    # annotations around detections are not nuclei
    has_detections = any(kind in DETECTION_TYPES for kind in kinds)
    for kind, (ring, why, name, centroid) in zip(kinds, rings, strict=True):
        if has_detections and kind not in DETECTION_TYPES:
            raw.skipped[f"{kind} among detections"] += 1
        elif ring is None:
            raw.skipped[why] += 1
        else:
            raw.rings.append(ring)
            raw.classes.append(name)
            raw.centroids.append(centroid)
    present = set(raw.classes)
    raw.colours = {k: v for k, v in raw.colours.items() if k in present}
    return raw


def _not_features(path: Path, found: Any, where: str = "") -> ValueError:
    return ValueError(
        f"{path} is not GeoJSON of nuclei: expected a FeatureCollection (or a list "
        f"of Features, as QuPath writes), found {describe_json(found)}{where}"
    )


def features_of(path: Path, content: Any) -> list:
    """The features of a parsed FeatureCollection, list of them, or one Feature."""
    if isinstance(content, dict) and content.get("type") == "FeatureCollection":
        features = content.get("features")
    elif isinstance(content, dict) and content.get("type") == "Feature":
        features = [content]
    elif isinstance(content, list):
        features = content
    else:
        features = None
    if not isinstance(features, list):
        raise _not_features(path, content)
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
    rgb, packed = value.get("color"), value.get("colorRGB")
    if isinstance(packed, int) and not isinstance(rgb, list):
        rgb = [(packed >> 16) & 255, (packed >> 8) & 255, packed & 255]
    try:
        colour = "#" + "".join(f"{int(c) & 255:02x}" for c in rgb[:3])
    except (TypeError, ValueError):
        colour = None  # no colour, or not numbers: the default colours apply
    if colour is not None and len(colour) != 7:
        colour = None
    return (str(name).strip() if name else ""), colour


def _recorded_centroid(properties: dict) -> tuple[float, float] | None:
    """The centroid our export records in the measurements, when there."""
    measurements = properties.get("measurements")
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
