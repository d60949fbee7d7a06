"""Keep Triton out of a napari process whose OpenGL driver has loaded LLVM.

Mesa's OpenGL drivers (llvmpipe under a virtual display, radeonsi, ...) load the
system's ``libLLVM`` into the process. Triton's ``libtriton`` carries its own LLVM
and exports its symbols; imported later, its initialisers bind to the other LLVM
and the process dies with a segmentation fault. napari creates its canvas before
any panel opens, and the encoder's ``import timm`` reaches ``import triton``
(timm -> torchvision.ops -> torch._dynamo), so the first analysis would crash
napari on such machines.

The encoder does not use ``torch.compile``, so Triton is not needed: when LLVM is
already mapped and Triton not yet imported, ``import triton`` is made to raise
ImportError, which torch handles as "Triton not installed".
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)

MAPS = Path("/proc/self/maps")


def llvm_is_loaded(maps: Path = MAPS) -> bool:
    """Whether a shared ``libLLVM`` is mapped into this process (Linux only)."""
    try:
        return "libLLVM" in maps.read_text()
    except OSError:  # no /proc: not Linux
        return False


def block_triton_after_gl_llvm(maps: Path = MAPS) -> bool:
    """Make ``import triton`` fail if importing it now would crash the process.

    Returns
    -------
    bool
        True when Triton is blocked by this call or an earlier one.
    """
    if "triton" in sys.modules:
        return sys.modules["triton"] is None
    if not llvm_is_loaded(maps):
        return False

    # NOTE: a None entry makes `import triton` raise ImportError
    sys.modules["triton"] = None  # type: ignore[assignment]
    logger.debug("an OpenGL driver loaded LLVM: Triton disabled in this process")
    return True
