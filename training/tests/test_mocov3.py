"""MoCo v3: schedules, momentum update and one training step."""

from __future__ import annotations

import pytest
import torch

from lemon_training.methods.mocov3 import MoCoV3, lr_at, momentum_at
from napari_lemon.encoder import EncoderCard


def test_momentum_rises_from_base_to_one():
    assert momentum_at(0, 100, 0.99) == pytest.approx(0.99)
    assert momentum_at(50, 100, 0.99) == pytest.approx(0.995)
    assert momentum_at(100, 100, 0.99) == pytest.approx(1.0)


def test_learning_rate_warms_up_then_decays_to_zero():
    assert lr_at(0, 100, 1.0, warmup=10) == pytest.approx(0.1)
    assert lr_at(9, 100, 1.0, warmup=10) == pytest.approx(1.0)
    assert lr_at(55, 100, 1.0, warmup=10) == pytest.approx(0.5)
    assert lr_at(100, 100, 1.0, warmup=10) == pytest.approx(0.0)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MoCoV3(EncoderCard(), dim=32, mlp_dim=64)


def test_momentum_update_is_an_exponential_average(model):
    online = next(model.encoder.blocks[0].parameters())
    momentum = next(model.momentum_encoder.blocks[0].parameters())
    with torch.no_grad():
        momentum.copy_(torch.zeros_like(momentum))
        online.fill_(1.0)

    model.update_momentum(0.9)

    assert torch.allclose(momentum, torch.full_like(momentum, 0.1))


def test_a_step_trains_the_online_branch_only(model):
    torch.manual_seed(1)
    x1, x2 = torch.randn(4, 3, 40, 40), torch.randn(4, 3, 40, 40)

    loss = model.loss(x1, x2)
    loss.backward()

    assert loss.ndim == 0 and torch.isfinite(loss)
    assert model.encoder.blocks[0].attn.qkv.weight.grad is not None
    assert model.predictor[0].weight.grad is not None
    # the patch projection is frozen (MoCo v3) and the momentum branch gets no grads
    assert model.encoder.patch_embed.proj.weight.grad is None
    assert all(p.grad is None for p in model.momentum_parameters())


def test_forward_makes_two_normalised_views_of_each_crop():
    import kornia.augmentation as K

    torch.manual_seed(2)
    model = MoCoV3(EncoderCard(embed_dim=32, depth=2, num_heads=2), K.CenterCrop(40))
    crops = torch.rand(4, 3, 60, 60)

    v1, v2 = model.views(crops)
    loss, parts = model(crops)

    expected = (crops[:, :, 10:50, 10:50] - model.mean) / model.std
    torch.testing.assert_close(v1, expected)
    torch.testing.assert_close(v2, expected)
    assert parts == {"infonce": pytest.approx(loss.item())}


def test_after_step_follows_the_momentum_schedule(model):
    online = next(model.encoder.blocks[1].parameters())
    momentum = next(model.momentum_encoder.blocks[1].parameters())
    with torch.no_grad():
        momentum.zero_()
        online.fill_(1.0)

    model.after_step(0.5)  # momentum 0.995 half way

    assert torch.allclose(momentum, torch.full_like(momentum, 0.005))
