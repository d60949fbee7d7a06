"""Fixtures of the plugin's tests (``shared_data`` is in the root conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def random_encoder_path(tmp_path_factory) -> Path:
    """A randomly initialised LEMON ViT saved in the plugin's checkpoint layout."""
    import torch

    from napari_lemon.checkpoint import save_checkpoint
    from napari_lemon.encoder import EncoderCard, create_vit

    torch.manual_seed(0)
    card = EncoderCard(name="random-test")
    path = tmp_path_factory.mktemp("encoder") / "random.safetensors"
    return save_checkpoint(create_vit(card), card, path)
