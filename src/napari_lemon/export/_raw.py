"""What each reader of nuclei files hands on, before the shared checks."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class RawNuclei:
    """Rings as a file gives them, their classes, and what was already skipped.

    ``centroids`` holds a recorded ``(x, y)`` (or None) per ring when the format
    records centroids, else is None.
    """

    path: Path
    format: str
    rings: list[np.ndarray]
    classes: list[str]
    colours: dict[str, str] = field(default_factory=dict)
    centroids: list[tuple[float, float] | None] | None = None
    skipped: Counter = field(default_factory=Counter)
    mpp: float | None = None


def describe_json(content: Any) -> str:
    """``"an object with keys ['a', 'b']"``, ``"a list of 3 items (int)"``, ..."""
    if isinstance(content, dict):
        keys = list(content)[:8]
        kind = content.get("type")
        return f"an object of type {kind!r}" if kind else f"an object with keys {keys}"
    if isinstance(content, list):
        kinds = sorted({type(v).__name__ for v in content[:100]})
        return f"a list of {len(content)} items ({', '.join(kinds) or 'empty'})"
    return f"the {type(content).__name__} {repr(content)[:40]}"
