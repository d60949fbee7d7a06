"""Numeric precision of encoder inference: which one, and how to run a model in it.

============  =======================================================================
precision     how
============  =======================================================================
``fp32``      the network as trained
``bf16``      ``torch.autocast`` to bfloat16 (CPU: oneDNN matmuls on AMX tiles
              or AVX-512 BF16; CUDA: tensor cores); norms, softmax and the
              residual stream stay fp32
``fp16``      ``torch.autocast`` to float16, CUDA only
``int8``      dynamic quantisation of every ``nn.Linear`` (int8 weights, activations
              quantised per batch), CPU only; 1.9x fp32 but 1.3 CRC points lower,
              so ``auto`` never picks it
``auto``      fp16 on CUDA; on a CPU with native bfloat16 (AMX or AVX-512 BF16)
              the choice of :data:`CPU_AUTO`, which kept the CRC probe within a
              point of fp32 in ``benchmarks/embedding_speed.py``; fp32 elsewhere
============  =======================================================================

Embeddings always come back as float32.

NOTE: the CRC probe is sensitive to rounding far below what a cosine shows: a
network held wholly in bfloat16 (residual stream and final norm included) gave
embeddings at cosine 0.99998 to fp32 and lost 1.3 points of balanced accuracy
on every fold (int8: 1.3 on average); bf16 autocast (cosine > 0.999999) lost
none.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

PRECISIONS = ("auto", "fp32", "bf16", "int8", "fp16")

# NOTE: measured in benchmarks/results/embedding_speed.json (2 cores of a Xeon with
# AMX): bf16 autocast ran about 3x fp32 and kept the CRC balanced accuracy within
# 0.1 point; int8 ran 1.9x and lost 1.3 points. On 2 cores of an EPYC with
# AVX-512 BF16 (embedding_speed_epyc.json) bf16 embedded the CRC crops 3.5x
# faster than fp32, at the same accuracy (+0.02 points)
CPU_AUTO = "bf16"
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpu_has_bf16() -> bool:
    """Whether the CPU multiplies bfloat16 matrices natively (Linux flags).

    AMX tiles (``amx_bf16``, Intel Xeon since Sapphire Rapids) or AVX-512 BF16
    (``avx512_bf16``, AMD Zen 4 and later, some Xeons); without either, oneDNN
    emulates bfloat16, which was 6-8x slower than fp32 on an AVX2 EPYC.
    """
    try:
        flags = set(CPUINFO.read_text().split()) if CPUINFO.is_file() else set()
    except OSError:
        return False
    return not flags.isdisjoint(BF16_FLAGS)


def resolve_precision(precision: str, device: str) -> str:
    """The concrete precision for ``precision`` on a resolved ``device``.

    Raises
    ------
    ValueError
        An unknown precision, or one the device cannot run.
    """
    if precision not in PRECISIONS:
        raise ValueError(
            f"precision={precision!r} is not one of {PRECISIONS}; 'auto' picks fp16 "
            "on CUDA and the fastest accurate one on the CPU"
        )
    on_cuda, on_cpu = device.startswith("cuda"), device == "cpu"

    if precision == "auto":
        if on_cuda:
            return "fp16"
        return CPU_AUTO if on_cpu and cpu_has_bf16() else "fp32"
    if precision == "fp16" and not on_cuda:
        raise ValueError(
            f"precision='fp16' needs a CUDA GPU (device={device!r}); on the CPU "
            "use 'bf16', 'int8' or 'fp32'"
        )
    if precision == "int8" and not on_cpu:
        raise ValueError(
            f"precision='int8' runs only on the CPU (device={device!r}); on a GPU "
            "use 'fp16' or 'bf16'"
        )
    if precision == "bf16" and not (on_cpu or on_cuda):
        raise ValueError(
            f"precision='bf16' runs on the CPU or CUDA (device={device!r}); use 'fp32'"
        )
    if precision == "bf16" and on_cpu and not cpu_has_bf16():
        warnings.warn(
            "precision='bf16': this CPU has no bf16 matrix instructions (AMX or "
            "AVX-512 BF16), so bfloat16 may be slower than fp32; pass "
            "precision='fp32' (or 'auto')",
            stacklevel=3,
        )
    return precision


def inference_network(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """The network that runs a resolved ``precision``: ``model``, or for int8 a
    quantised copy (the autocast precisions run ``model`` under :func:`autocast`)."""
    return quantize_int8(model) if precision == "int8" else model


def autocast(precision: str, device: str) -> contextlib.AbstractContextManager:
    """The autocast context of a resolved ``precision`` (a no-op for fp32, int8).

    NOTE: under ``torch.inference_mode`` autocast recasts the weights on every
    pass; with ``no_grad`` its cache halved the casts, but the rate did not
    change measurably (bf16, batch 128, 2 cores).
    """
    import torch

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        return contextlib.nullcontext()
    kind = "cuda" if device.startswith("cuda") else device
    return torch.autocast(kind, dtype=dtypes[precision])


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` dynamically quantised to int8.

    The patch embedding (a convolution), norms and attention products stay fp32.
    """
    import torch

    # FIXME: torch.ao.quantization is deprecated in favour of torchao; move there
    # when torchao is a dependency (its CPU int8 path needs torch.compile today)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*deprecated", category=Warning)
        return torch.ao.quantization.quantize_dynamic(
            copy.deepcopy(model).cpu(), {torch.nn.Linear}, dtype=torch.qint8
        )
