"""Encoder precisions, the batch-size policy and the CUDA out-of-memory back-off."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_lemon import encoder as encoder_module
from napari_lemon import precision as precision_module
from napari_lemon.encoder import (
    CPU_BATCH,
    CUDA_MAX_BATCH,
    Encoder,
    EncoderCard,
    create_vit,
)
from napari_lemon.precision import resolve_precision

SHALLOW = EncoderCard(name="shallow", depth=2)


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(3)
    return create_vit(SHALLOW).eval()


@pytest.fixture(scope="module")
def crops():
    # smooth random images: closer to nuclei than white noise
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, size=(16, 10, 10, 3)).astype(np.uint8)
    return np.repeat(np.repeat(coarse, 4, axis=1), 4, axis=2)


def cosine(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    return np.sum(a * b / np.linalg.norm(b, axis=1, keepdims=True), axis=1)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precisions_stay_close_to_fp32(network, crops, precision, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: True)  # no warning
    reference = Encoder(network, SHALLOW, "cpu", "fp32").embed(crops)

    encoder = Encoder(network, SHALLOW, "cpu", precision)
    got = encoder.embed(crops)

    assert encoder.precision == precision and got.dtype == np.float32
    assert cosine(got, reference).min() > 0.99
    assert np.abs(got - reference).max() > 1e-4  # it really ran in another precision


def test_int8_quantises_every_linear_layer_and_keeps_the_fp32_model(network):
    encoder = Encoder(network, SHALLOW, "cpu", "int8")

    linear = [m for m in encoder._network.modules() if type(m).__name__ == "Linear"]
    assert len(linear) == 2 * 4  # qkv, proj, fc1, fc2 per block
    assert all(".quantized.dynamic" in type(m).__module__ for m in linear)
    assert isinstance(encoder.model.blocks[0].mlp.fc1, torch.nn.Linear)


def test_auto_is_fp16_on_cuda_and_measured_choice_on_cpu(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: True)
    assert resolve_precision("auto", "cuda") == "fp16"
    assert resolve_precision("auto", "cuda:1") == "fp16"
    assert resolve_precision("auto", "cpu") == precision_module.CPU_AUTO
    assert resolve_precision("auto", "mps") == "fp32"

    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"


def test_encoder_records_the_resolved_precision(network, monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: True)
    assert Encoder(network, SHALLOW, "cpu").precision == "bf16"

    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: False)
    assert Encoder(network, SHALLOW, "cpu").precision == "fp32"


def test_explicit_precisions_are_kept(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: True)
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert resolve_precision("int8", "cpu") == "int8"
    assert resolve_precision("fp16", "cuda") == "fp16"
    assert resolve_precision("bf16", "cuda") == "bf16"


def test_bf16_without_native_bf16_warns(monkeypatch):
    monkeypatch.setattr(precision_module, "cpu_has_bf16", lambda: False)

    with pytest.warns(UserWarning, match="no bf16 matrix instructions"):
        assert resolve_precision("bf16", "cpu") == "bf16"


@pytest.mark.parametrize(
    "precision, device, message",
    [
        ("fp64", "cpu", r"precision='fp64' is not one of \('auto'"),
        ("FP32", "cpu", "precision='FP32' is not one of"),
        ("fp16", "cpu", r"precision='fp16' needs a CUDA GPU \(device='cpu'\)"),
        ("fp16", "mps", "needs a CUDA GPU"),
        ("int8", "cuda", r"'int8' runs only on the CPU \(device='cuda'\)"),
        ("bf16", "mps", r"'bf16' runs on the CPU or CUDA \(device='mps'\)"),
    ],
)
def test_bad_precisions_are_refused(precision, device, message):
    with pytest.raises(ValueError, match=message):
        resolve_precision(precision, device)


def test_encoder_refuses_fp16_on_the_cpu(network):
    with pytest.raises(ValueError, match="needs a CUDA GPU"):
        Encoder(network, SHALLOW, "cpu", "fp16")


def test_load_encoder_passes_the_precision_through(network, tmp_path):
    from napari_lemon.checkpoint import load_encoder, save_checkpoint

    path = save_checkpoint(network, SHALLOW, tmp_path / "shallow.safetensors")

    assert load_encoder(path, "cpu", "int8").precision == "int8"
    with pytest.raises(ValueError, match="precision='half'"):
        load_encoder(path, "cpu", "half")


def test_cpu_batch_size_is_the_measured_one(network):
    encoder = Encoder(network, SHALLOW, "cpu", "fp32")

    assert encoder.default_batch_size() == CPU_BATCH == 128


def fake_cuda(monkeypatch, encoder, free_bytes, peak_bytes):
    """Pretend ``encoder`` runs on a GPU with ``free_bytes`` free, whose probe
    batch peaks at ``peak_bytes`` above what was allocated before it."""
    calls = []
    monkeypatch.setattr(encoder, "device", "cuda")
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (free_bytes, 2**40))
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d: 1000)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda d: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda d: 1000 + peak_bytes)
    monkeypatch.setattr(encoder, "_forward", lambda crops: calls.append(len(crops)))
    return calls


def test_cuda_batch_size_comes_from_free_memory(monkeypatch, network):
    encoder = Encoder(network, SHALLOW, "cpu", "fp32")
    per_crop = 2**20  # 1 MiB a crop
    probes = fake_cuda(
        monkeypatch, encoder, 3 * 2**30, encoder_module.PROBE_BATCH * per_crop
    )

    # half of 3 GiB at 1 MiB a crop; the probe batch runs once
    assert encoder.default_batch_size() == 1536
    assert encoder.default_batch_size() == 1536
    assert probes == [encoder_module.PROBE_BATCH]


def test_cuda_batch_size_is_capped_and_at_least_one(monkeypatch, network):
    encoder = Encoder(network, SHALLOW, "cpu", "fp32")
    fake_cuda(monkeypatch, encoder, 2**40, encoder_module.PROBE_BATCH * 1024)
    assert encoder.default_batch_size() == CUDA_MAX_BATCH

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (10, 2**40))
    assert encoder.default_batch_size() == 1


class OutOfMemoryAbove(torch.nn.Module):
    """A stand-in network that runs out of GPU memory above ``limit`` crops."""

    def __init__(self, network, limit):
        super().__init__()
        self.network, self.limit, self.sizes = network, limit, []

    def forward(self, x):
        self.sizes.append(len(x))
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (test)")
        return self.network(x)


def test_out_of_memory_halves_the_batch_once_with_one_warning(network, crops):
    reference = Encoder(network, SHALLOW, "cpu", "fp32").embed(crops)
    flaky = OutOfMemoryAbove(network, limit=5)
    encoder = Encoder(flaky, SHALLOW, "cpu", "fp32")

    with pytest.warns(UserWarning, match="out of GPU memory at 16 crops") as caught:
        got = encoder.embed(crops, batch_size=16)

    assert len(caught) == 1
    assert flaky.sizes[:3] == [16, 8, 4] and set(flaky.sizes[3:]) <= {4}
    np.testing.assert_allclose(got, reference, atol=1e-5)

    # the smaller batch is remembered: no more failures, no more warnings
    flaky.sizes.clear()
    encoder.embed(crops, batch_size=16)
    assert max(flaky.sizes) == 4


def test_out_of_memory_with_a_single_crop_is_re_raised_clearly(network, crops):
    encoder = Encoder(OutOfMemoryAbove(network, limit=0), SHALLOW, "cpu", "fp32")

    with pytest.warns(UserWarning, match="halving the batch"):
        with pytest.raises(torch.cuda.OutOfMemoryError, match="with a single crop"):
            encoder.embed(crops[:4], batch_size=4)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "64"])
def test_bad_batch_sizes_are_refused(network, crops, bad):
    encoder = Encoder(network, SHALLOW, "cpu", "fp32")

    with pytest.raises(ValueError, match=f"batch_size={bad!r} must be a positive"):
        encoder.embed(crops, batch_size=bad)


@pytest.mark.parametrize(
    "flags, native",
    [
        ("fpu sse avx2 avx512f amx_bf16 amx_tile", True),  # Xeon, Sapphire Rapids
        ("fpu sse avx2 avx512f avx512_bf16 avx512_vnni", True),  # EPYC, Zen 4+
        ("fpu sse avx2 avx512f avx512_vnni", False),  # emulated bfloat16
        ("fpu sse avx2 fma", False),
    ],
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, monkeypatch, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
    monkeypatch.setattr(precision_module, "CPUINFO", cpuinfo)
    assert precision_module.cpu_has_bf16() is native
