"""The encoder: MoCo v3 ViT-S/8 layout, checkpoint formats, and their errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from napari_lemon.checkpoint import load_encoder, save_checkpoint
from napari_lemon.encoder import (
    CheckpointError,
    EncoderCard,
    create_vit,
    select_device,
    sincos_position_embedding,
)

MEAN = (0.70, 0.55, 0.70)
STD = (0.15, 0.18, 0.12)


@pytest.fixture(scope="module")
def source_model():
    torch.manual_seed(1)
    return create_vit().eval()


@pytest.fixture(scope="module")
def crops():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(6, 40, 40, 3), dtype=np.uint8)


def reference_forward(model, crops, mean=MEAN, std=STD):
    """The source model on crops normalised independently of Encoder.preprocess."""
    x = torch.from_numpy(crops.astype(np.float32) / 255).permute(0, 3, 1, 2)
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(x).numpy()


def write_official(folder, model, mean_std=True, scale=1.0):
    """A checkpoint in the MoCo v3 layout: both encoders, heads, predictor."""
    state = {f"module.base_encoder.{k}": v for k, v in model.state_dict().items()}
    state.update(
        {f"module.momentum_encoder.{k}": v for k, v in model.state_dict().items()}
    )
    state["module.base_encoder.head.0.weight"] = torch.randn(4096, 384)
    state["module.predictor.0.weight"] = torch.randn(4096, 256)
    path = folder / "lemon.pth.tar"
    torch.save({"epoch": 300, "arch": "vit_small", "state_dict": state}, path)
    if mean_std:
        stats = {"mean": [m * scale for m in MEAN], "std": [s * scale for s in STD]}
        (folder / "mean_std.json").write_text(json.dumps(stats))
    return path


def test_architecture_is_moco_v3_vit_small(source_model):
    assert source_model.embed_dim == 384
    assert len(source_model.blocks) == 12
    assert all(block.attn.num_heads == 12 for block in source_model.blocks)
    assert source_model.patch_embed.patch_size == (8, 8)
    assert tuple(source_model.pos_embed.shape) == (1, 26, 384)
    assert not source_model.pos_embed.requires_grad


def test_sincos_embedding_matches_direct_formula():
    table = sincos_position_embedding(5, 16)[0]
    assert np.all(table[0] == 0)  # class token
    omega = 1 / 10000 ** (np.arange(4) / 4)
    row, col = 2, 3  # token 1 + 2 * 5 + 3
    expected = np.concatenate(
        [
            np.sin(row * omega),
            np.cos(row * omega),
            np.sin(col * omega),
            np.cos(col * omega),
        ]
    )
    np.testing.assert_allclose(table[1 + row * 5 + col], expected, atol=1e-6)


def test_official_checkpoint_reproduces_source_model(tmp_path, source_model, crops):
    path = write_official(tmp_path, source_model)

    encoder = load_encoder(path, device="cpu", precision="fp32")

    assert encoder.card.mean == pytest.approx(MEAN)
    np.testing.assert_allclose(
        encoder.embed(crops), reference_forward(source_model, crops), atol=1e-5
    )


def test_official_checkpoint_loads_from_its_folder_with_255_scaled_stats(
    tmp_path, source_model, crops
):
    write_official(tmp_path, source_model, scale=255.0)

    encoder = load_encoder(tmp_path, device="cpu", precision="fp32")

    np.testing.assert_allclose(
        encoder.embed(crops), reference_forward(source_model, crops), atol=1e-5
    )


def test_six_head_network_would_not_reproduce_the_outputs(source_model, crops):
    # timm's default ViT-Small: same tensor shapes, 6 heads
    six_heads = VisionTransformer(
        img_size=40, patch_size=8, embed_dim=384, depth=12, num_heads=6, num_classes=0
    ).eval()
    six_heads.load_state_dict(source_model.state_dict())

    # a hundred times the tolerance within which the 12-head loader reproduces it
    difference = reference_forward(six_heads, crops) - reference_forward(
        source_model, crops
    )
    assert np.abs(difference).max() > 1e-3


def test_card_with_wrong_head_count_is_refused(tmp_path, source_model):
    path = save_checkpoint(source_model, EncoderCard(), tmp_path / "enc.safetensors")
    card = json.loads(path.with_suffix(".json").read_text())
    card["num_heads"] = 6
    path.with_suffix(".json").write_text(json.dumps(card))

    with pytest.raises(CheckpointError, match="num_heads=6"):
        load_encoder(path, device="cpu")


def test_safetensors_round_trip_in_fp16(tmp_path, source_model, crops):
    card = EncoderCard(name="roundtrip", mean=MEAN, std=STD)
    path = save_checkpoint(source_model, card, tmp_path / "enc.safetensors")

    encoder = load_encoder(path, device="cpu", precision="fp32")

    assert encoder.card.sha256 == card.sha256 != ""
    np.testing.assert_allclose(
        encoder.embed(crops), reference_forward(source_model, crops), atol=0.05
    )
    mask = os.umask(0)  # others may read it as the umask allows
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_changed_weights_file_warns(tmp_path, source_model):
    path = save_checkpoint(source_model, EncoderCard(), tmp_path / "enc.safetensors")
    card = json.loads(path.with_suffix(".json").read_text())
    card["sha256"] = "0" * 64
    path.with_suffix(".json").write_text(json.dumps(card))

    with pytest.warns(UserWarning, match="sha256 differs"):
        load_encoder(path, device="cpu")


def test_weights_of_another_architecture_are_refused(tmp_path):
    base = VisionTransformer(
        img_size=40, patch_size=8, embed_dim=768, depth=2, num_heads=12, num_classes=0
    )
    state = {f"module.base_encoder.{k}": v for k, v in base.state_dict().items()}
    torch.save({"state_dict": state}, tmp_path / "other.pth.tar")

    with pytest.raises(CheckpointError, match="do not fit a LEMON ViT"):
        load_encoder(tmp_path / "other.pth.tar", device="cpu")


def test_checkpoint_without_moco_keys_is_refused(tmp_path):
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}}, tmp_path / "r.pth")

    with pytest.raises(CheckpointError, match="module.base_encoder"):
        load_encoder(tmp_path / "r.pth", device="cpu")


def test_non_checkpoint_file_is_refused(tmp_path):
    path = tmp_path / "notes.pth.tar"
    path.write_text("not a checkpoint")

    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_encoder(path, device="cpu")


def test_hub_id_downloads_the_official_pair(tmp_path, source_model, crops, monkeypatch):
    pytest.importorskip("huggingface_hub")
    import huggingface_hub

    write_official(tmp_path, source_model)
    asked = []

    def fake_download(repo_id, filename):
        asked.append((repo_id, filename))
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    encoder = load_encoder("official", device="cpu", precision="fp32")

    assert asked == [
        ("aliceblondel/LEMON", "lemon.pth.tar"),
        ("aliceblondel/LEMON", "mean_std.json"),
    ]
    np.testing.assert_allclose(
        encoder.embed(crops), reference_forward(source_model, crops), atol=1e-5
    )


def test_unreachable_hub_gives_a_clear_error(monkeypatch):
    pytest.importorskip("huggingface_hub")
    import huggingface_hub

    def offline(repo_id, filename):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(CheckpointError, match="download it by hand"):
        load_encoder("someone/weights", device="cpu")


def test_missing_mean_std_warns(tmp_path, source_model):
    write_official(tmp_path, source_model, mean_std=False)

    with pytest.warns(UserWarning, match="ImageNet mean/std"):
        load_encoder(tmp_path / "lemon.pth.tar", device="cpu")


def test_bad_mean_std_file_is_refused(tmp_path, source_model):
    write_official(tmp_path, source_model)
    (tmp_path / "mean_std.json").write_text(json.dumps({"average": [1, 2, 3]}))

    with pytest.raises(CheckpointError, match="'mean' and 'std'"):
        load_encoder(tmp_path / "lemon.pth.tar", device="cpu")


def test_safetensors_without_card_is_refused(tmp_path, source_model):
    path = save_checkpoint(source_model, EncoderCard(), tmp_path / "enc.safetensors")
    path.with_suffix(".json").unlink()

    with pytest.raises(CheckpointError, match="has no card"):
        load_encoder(path, device="cpu")


def test_missing_model_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_encoder(tmp_path / "nope.safetensors", device="cpu")
    with pytest.raises(FileNotFoundError, match="neither 'bundled'"):
        load_encoder(tmp_path / "nope.bin", device="cpu")


def test_unknown_device_is_refused():
    with pytest.raises(ValueError, match="device='tpu'"):
        select_device("tpu")
    assert select_device("cpu") == "cpu"


def test_embed_refuses_crops_of_the_wrong_size(random_encoder_path):
    encoder = load_encoder(random_encoder_path, device="cpu", precision="fp32")

    with pytest.raises(ValueError, match=r"expected \(n, 40, 40, 3\)"):
        encoder.embed(np.zeros((2, 32, 32, 3), np.uint8))


def test_embed_batches_give_the_same_result(random_encoder_path, crops):
    encoder = load_encoder(random_encoder_path, device="cpu", precision="fp32")

    np.testing.assert_allclose(
        encoder.embed(crops, batch_size=4),
        encoder.embed(crops, batch_size=6),
        atol=1e-5,
    )


def test_bundled_encoder_is_the_moco_vit_with_its_card():
    from napari_lemon.checkpoint import BUNDLED_NAME, WEIGHTS_DIR, file_sha256

    encoder = load_encoder("bundled", device="cpu")

    card = json.loads((WEIGHTS_DIR / f"{BUNDLED_NAME}.json").read_text())
    assert card["sha256"] == file_sha256(WEIGHTS_DIR / f"{BUNDLED_NAME}.safetensors")
    assert card["num_heads"] == 12 and card["training"]["seconds"] >= 3600
    assert "crc_linear_probe" in card["benchmarks"]
    assert all(block.attn.num_heads == 12 for block in encoder.model.blocks)
