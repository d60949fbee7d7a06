"""Triton is kept out of a process whose OpenGL driver loaded LLVM."""

from __future__ import annotations

import sys
import types

import pytest

from napari_lemon._widgets._gl_safety import block_triton_after_gl_llvm, llvm_is_loaded

MESA_MAPS = (
    "7f00-7f10 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libLLVM-15.so.1\n"
    "7f20-7f30 r-xp 0 08:01 2 /usr/lib/x86_64-linux-gnu/dri/swrast_dri.so\n"
)
PLAIN_MAPS = "7f00-7f10 r-xp 0 08:01 1 /usr/lib/x86_64-linux-gnu/libc.so.6\n"


@pytest.fixture
def maps(tmp_path):
    def write(text):
        path = tmp_path / "maps"
        path.write_text(text)
        return path

    return write


@pytest.fixture
def no_triton():
    """A process in which Triton has not been imported; restored afterwards."""
    missing = object()
    saved = sys.modules.pop("triton", missing)
    yield
    if saved is missing:
        sys.modules.pop("triton", None)
    else:
        sys.modules["triton"] = saved


def test_triton_is_blocked_when_llvm_is_mapped(maps, no_triton):
    assert block_triton_after_gl_llvm(maps(MESA_MAPS)) is True

    assert sys.modules["triton"] is None
    with pytest.raises(ImportError):
        import triton  # noqa: F401


def test_triton_is_left_alone_without_llvm(maps, no_triton):
    assert block_triton_after_gl_llvm(maps(PLAIN_MAPS)) is False

    assert "triton" not in sys.modules


def test_an_imported_triton_is_left_alone(maps, monkeypatch):
    imported = types.ModuleType("triton")
    monkeypatch.setitem(sys.modules, "triton", imported)

    assert block_triton_after_gl_llvm(maps(MESA_MAPS)) is False

    assert sys.modules["triton"] is imported


def test_without_proc_maps_nothing_is_loaded(tmp_path):
    assert llvm_is_loaded(tmp_path / "missing") is False
