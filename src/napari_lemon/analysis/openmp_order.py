"""Load torch before numba's OpenMP threading layer starts.

torch and numba's ``omp`` threading layer both run on an OpenMP runtime. When
numba runs a parallel kernel first (a UMAP, a pynndescent graph) and torch is
imported after it, torch's CPU attention stays slow for the rest of the
process: on 2 cores, 1.5 s per attention call instead of 0.005 s, so that
embedding 3,721 imported nuclei after a morphology map took 414 s instead of
13 s. With torch imported first both run at full speed. Every module that runs
numba code calls :func:`torch_before_numba` before it imports umap-learn or
pynndescent.
"""

from __future__ import annotations


def torch_before_numba() -> None:
    """Import torch, so that its OpenMP runtime starts before numba's."""
    import torch  # noqa: F401
