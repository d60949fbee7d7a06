"""Skip a widget test module when there is no display for napari's canvas.

Call :func:`require_display` at the top of a module, before it imports napari's
Qt parts. ``LEMON_REQUIRE_DISPLAY=1`` (set by ``.ci/run``) turns the skip into an
error, so that a CI machine without Xvfb fails instead of passing silently.
"""

from __future__ import annotations

import os
import sys

import pytest

REASON = "napari's canvas needs a display: install Xvfb (see .ci/run)"


def has_display() -> bool:
    """Whether a window can be opened (always on macOS and Windows)."""
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def require_display() -> None:
    """Skip the calling module without a display; fail when one is required."""
    if has_display():
        return
    if os.environ.get("LEMON_REQUIRE_DISPLAY"):
        raise RuntimeError(f"LEMON_REQUIRE_DISPLAY is set but {REASON}")
    pytest.skip(REASON, allow_module_level=True)
