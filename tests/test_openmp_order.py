"""torch is loaded before umap-learn or pynndescent start numba's OpenMP threads.

Loaded the other way round, torch's CPU attention ran 300x slower for the rest
of the process (see napari_lemon.analysis.openmp_order). Each case runs in a
fresh interpreter, which stops at the first import of umap or pynndescent.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

SPY = """
import builtins, sys
import numpy as np

real_import = builtins.__import__

def spy(name, *args, **kwargs):
    top = name.split(".")[0]
    if top in ("umap", "pynndescent") and top not in sys.modules:
        print(f"{{top}} imported with torch loaded: {{'torch' in sys.modules}}")
        sys.exit(0)
    return real_import(name, *args, **kwargs)

points = np.random.default_rng(0).normal(size=({n}, 8)).astype(np.float32)
{setup}
builtins.__import__ = spy
{call}
print("numba code was never imported")
"""

CASES = {
    "umap": (
        "from napari_lemon.analysis.morphology_map import embed_2d",
        "embed_2d(points)",
        60,
    ),
    "leiden graph": (
        "from napari_lemon.analysis.graph_clusters import cluster_leiden",
        "cluster_leiden(points)",
        60,
    ),
    "pynndescent": (
        "from napari_lemon.analysis.graph_clusters import _neighbours",
        "_neighbours(points, 5, 0)",
        20_001,
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_torch_is_loaded_before_numba_code(case):
    setup, call, n = CASES[case]
    code = textwrap.dedent(SPY.format(n=n, setup=setup, call=call))
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "imported with torch loaded: True" in done.stdout, done.stdout
