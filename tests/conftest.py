"""Shared fixtures: real H&E data from ../shared/data, skipped when absent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LEMON_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the real H&E data (``../shared/data``); skips the test when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real H&E data not found at {SHARED_DATA} (set LEMON_SHARED_DATA)")
    return SHARED_DATA


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
