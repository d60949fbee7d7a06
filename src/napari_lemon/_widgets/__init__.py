"""napari panels of napari-lemon (Qt lives here only).

Panels are imported when first asked for, so that opening one does not import the
others (and torch) with it.
"""

from __future__ import annotations

import importlib
from typing import Any

_PANELS = {
    "AnalysisWidget": ".analysis_widget",
    "CellTypesWidget": ".cell_types_widget",
    "ClustersWidget": ".clusters_widget",
    "MorphologyMapWidget": ".map_widget",
    "ExportWidget": ".export_widget",
}

__all__ = list(_PANELS)


def __getattr__(name: str) -> Any:
    if name not in _PANELS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_PANELS[name], __name__), name)
