"""Nuclei from HoVer-Net and CellViT JSON output.

HoVer-Net (Graham et al. 2019, github.com/vqdang/hover_net) writes::

    {"mag": 40, "nuc": {"1": {"bbox": [[r0, c0], [r1, c1]], "centroid": [x, y],
                              "contour": [[x, y], ...], "type_prob": 0.9,
                              "type": 1}, ...}}

CellViT (Hörst et al. 2024) writes ``{"type_map": {"1": "Neoplastic", ...},
"cells": [{"centroid", "contour", "type", ...}, ...]}`` or a bare list of such
cells (its GeoJSON output is read as QuPath GeoJSON). Contours and centroids are
``(x, y)`` pixels, taken as level-0 pixels of the image.

NOTE: HoVer-Net's ``mag`` is not used to rescale: a file made at another
magnification than the image's level 0 does not fit it, and
:func:`napari_lemon.export.imported_results` leaves out nuclei outside the image.

Types are integers. Type 0 is background or "no label" in the models of both
(PanNuke, CoNSeP) and is read as unclassified. Other types are named by a
mapping, when there is one: HoVer-Net's ``type_info.json`` (``{"1":
["neoplastic", [255, 0, 0]], ...}``, names and colours) given by the caller or
found in the file, or CellViT's ``type_map``; else ``"type 3"``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ._raw import RawNuclei, describe_json


def read_hovernet(path: Path, content: Any, type_info=None) -> RawNuclei:
    """Rings, types and centroids of a HoVer-Net ``{"nuc": {...}}`` file."""
    nuclei = content.get("nuc") if isinstance(content, dict) else None
    if not isinstance(nuclei, dict):
        raise ValueError(
            f"{path} is not HoVer-Net JSON: expected an object with a 'nuc' object "
            f"of nuclei, found {describe_json(content)}"
        )
    mapping = type_info if type_info is not None else content.get("type_info")
    return _read_cells(path, "hovernet", list(nuclei.values()), _names(path, mapping))


def read_cellvit(path: Path, content: Any, type_info=None) -> RawNuclei:
    """Rings, types and centroids of CellViT ``{"cells": [...]}`` or a list of cells."""
    cells = content.get("cells") if isinstance(content, dict) else content
    if not isinstance(cells, list):
        raise ValueError(
            f"{path} is not CellViT JSON: expected a list of cells or an object "
            f"with a 'cells' list, found {describe_json(content)}"
        )
    mapping = type_info
    if mapping is None and isinstance(content, dict):
        mapping = content.get("type_map") or content.get("type_info")
    return _read_cells(path, "cellvit", cells, _names(path, mapping))


def _read_cells(path: Path, fmt: str, cells: list, names: dict) -> RawNuclei:
    """The shared part: one contour, centroid and type per cell object."""
    raw = RawNuclei(path, fmt, [], [], centroids=[], skipped=Counter())
    raw.colours = {name: colour for name, colour in names.values() if colour}
    for cell in cells:
        if not isinstance(cell, dict):
            raw.skipped["not an object"] += 1
            continue
        try:
            ring = np.asarray(cell["contour"], dtype=np.float64).reshape(-1, 2)
        except (KeyError, TypeError, ValueError):
            raw.skipped["no readable contour"] += 1
            continue
        raw.rings.append(ring)
        raw.classes.append(_type_name(cell.get("type"), names))
        raw.centroids.append(_centroid(cell.get("centroid")))
    return raw


def _type_name(value: Any, names: dict) -> str:
    """The class of a type number; ``""`` for type 0 or none."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        return ""
    if number == 0:
        return ""
    return names.get(number, (f"type {number}", None))[0]


def _centroid(value: Any) -> tuple[float, float] | None:
    try:
        x, y = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (x, y)


def _names(path: Path, mapping: Any) -> dict[int, tuple[str, str | None]]:
    """Type number -> (name, ``#rrggbb`` or None), from a type_info / type_map."""
    if mapping is None:
        return {}
    if isinstance(mapping, (str, Path)):
        mapping = _load_type_info(Path(mapping))
    if not isinstance(mapping, dict):
        raise ValueError(
            f"type_info for {path.name} must map type numbers to names, e.g. "
            f'{{"1": ["neoplastic", [255, 0, 0]]}}; got {describe_json(mapping)}'
        )
    names = {}
    for key, value in mapping.items():
        try:
            number = int(key)
        except (TypeError, ValueError):
            raise ValueError(
                f"type_info for {path.name}: key {key!r} is not a type number"
            ) from None
        if isinstance(value, (list, tuple)) and value:
            names[number] = (str(value[0]), _rgb_hex(value[1:2]))
        else:
            names[number] = (str(value), None)
    return names


def _load_type_info(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ValueError(
            f"type_info file {path} is not readable JSON ({err}); give HoVer-Net's "
            "type_info.json"
        ) from err


def _rgb_hex(value: list) -> str | None:
    """``[[255, 0, 0]]`` (the rest of a type_info entry) -> ``'#ff0000'``."""
    try:
        red, green, blue = (int(c) for c in value[0])
    except (IndexError, TypeError, ValueError):
        return None
    return f"#{red & 255:02x}{green & 255:02x}{blue & 255:02x}"
