"""DINOv2 on a tiny ViT: tokens of other sizes, masks, presets, teacher, schedules."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lemon_training.methods.dinov2 import (
    PRESETS,
    DINOv2,
    teacher_momentum_at,
    teacher_temp_at,
)
from lemon_training.methods.vit_tokens import position_embedding, vit_tokens
from napari_lemon.encoder import EncoderCard, create_vit, sincos_position_embedding

TINY = EncoderCard(embed_dim=32, depth=2, num_heads=2)
SMALL_HEAD = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16}


class CenterCropFlip(nn.Module):
    """Central crop of the 60x60 input (random horizontal flip), resized to size."""

    def __init__(self, size: int, crop: int = 40):
        super().__init__()
        self.size, self.crop = size, crop

    def forward(self, x):
        start = (x.shape[-1] - self.crop) // 2
        x = x[..., start : start + self.crop, start : start + self.crop]
        flip = torch.rand(len(x), 1, 1, 1) < 0.5
        x = torch.where(flip, x.flip(-1), x)
        if self.size != self.crop:
            x = F.interpolate(x, size=self.size, mode="bilinear", antialias=True)
        return x


def tiny_model(preset="dinov2", local_size=16, **options):
    torch.manual_seed(0)
    local = CenterCropFlip(local_size, crop=24)
    opts = {**PRESETS[preset], **SMALL_HEAD, "n_local": 2, **options}
    if not opts["local_to_global"]:
        opts["n_local"] = 0
    return DINOv2(TINY, CenterCropFlip(40), local, mean=TINY.mean, std=TINY.std, **opts)


# tokens of the plugin's ViT


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return create_vit(TINY).eval()


def test_tokens_of_a_40px_crop_equal_the_plugin_forward(vit):
    x = torch.randn(3, 3, 40, 40)

    cls, patches = vit_tokens(vit, x)

    assert patches.shape == (3, 25, 32)
    assert torch.allclose(cls, vit(x), atol=1e-6)


def test_a_16px_crop_runs_as_the_plugin_vit_built_for_16px(vit):
    x = torch.randn(2, 3, 16, 16)
    small = create_vit(EncoderCard(embed_dim=32, depth=2, num_heads=2, img_size=16))
    weights = {k: v for k, v in vit.state_dict().items() if k != "pos_embed"}
    small.load_state_dict(weights, strict=False)

    cls, patches = vit_tokens(vit, x)

    assert cls.shape == (2, 32) and patches.shape == (2, 4, 32)
    assert torch.allclose(cls, small.eval()(x), atol=1e-6)
    expected = torch.from_numpy(sincos_position_embedding(2, 32))
    assert torch.equal(position_embedding(vit, grid=2), expected)


def test_fully_masked_images_look_the_same_to_the_vit(vit):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 40, 40)
    token = torch.randn(1, 1, 32)
    all_masked = torch.ones(2, 25, dtype=torch.bool)
    one_masked = torch.zeros(2, 25, dtype=torch.bool)
    one_masked[:, 7] = True

    cls, _ = vit_tokens(vit, x, all_masked, token)
    cls_one, _ = vit_tokens(vit, x, one_masked, token)

    assert torch.allclose(cls[0], cls[1], atol=1e-6)
    assert not torch.allclose(cls_one[0], cls_one[1])
    assert not torch.allclose(cls_one, vit(x))


@pytest.mark.parametrize(
    ("shape", "mask", "token", "match"),
    [
        ((1, 3, 20, 20), None, None, "crop size=20 px"),
        ((1, 3, 40, 32), None, None, "square crops"),
        ((1, 3, 40, 40), torch.ones(1, 25, dtype=torch.bool), None, "mask_token"),
        ((1, 3, 40, 40), torch.ones(1, 16, dtype=torch.bool), torch.zeros(32), "bool"),
    ],
)
def test_vit_tokens_refuses_bad_input(vit, shape, mask, token, match):
    with pytest.raises(ValueError, match=match):
        vit_tokens(vit, torch.zeros(shape), mask, token)


# schedules


def test_teacher_temperature_warms_up_then_stays():
    assert teacher_temp_at(0.0, 0.04, 0.07, warmup=0.3) == pytest.approx(0.04)
    assert teacher_temp_at(0.15, 0.04, 0.07, warmup=0.3) == pytest.approx(0.055)
    assert teacher_temp_at(0.3, 0.04, 0.07, warmup=0.3) == pytest.approx(0.07)
    assert teacher_temp_at(1.0, 0.04, 0.07, warmup=0.3) == pytest.approx(0.07)


def test_teacher_momentum_rises_from_base_to_one():
    assert teacher_momentum_at(0.0, 0.992) == pytest.approx(0.992)
    assert teacher_momentum_at(0.5, 0.992) == pytest.approx(0.996)
    assert teacher_momentum_at(1.0, 0.992) == pytest.approx(1.0)


# the method


def test_presets_differ_only_where_the_paper_variants_do():
    base, nol2g, kde = (
        PRESETS[n] for n in ("dinov2", "dinov2-nol2g", "dinov2-nol2g-kde")
    )

    assert (
        base["local_to_global"] and base["n_local"] > 0 and base["koleo_weight"] == 0.1
    )
    assert not nol2g["local_to_global"] and nol2g["n_local"] == 0
    assert kde["koleo_weight"] == 0 and kde["kde_weight"] == 0.05
    assert kde["kde_kappa"] == 5.0
    changed = {k for k in base if base[k] != kde[k]}
    assert changed == {"local_to_global", "n_local", "koleo_weight", "kde_weight"}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_a_step_of_each_preset_trains_the_student_only(preset):
    model = tiny_model(preset)
    model.after_step(0.5)  # past the frozen-prototype phase
    crops = torch.rand(4, 3, 60, 60)

    loss, parts = model(crops)
    loss.backward()

    assert loss.ndim == 0 and torch.isfinite(loss)
    assert parts["loss"] == pytest.approx(float(loss.detach()))
    assert all(p.grad is not None for p in model.trainable_parameters())
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is None for p in model.teacher_head.parameters())
    expected = {"dino", "ibot", "kde" if "kde" in preset else "koleo"}
    assert expected <= set(parts) and not {"kde", "koleo"} <= set(parts)


def test_local_views_enter_the_loss():
    model = tiny_model("dinov2")
    crops = torch.rand(4, 3, 60, 60)

    torch.manual_seed(3)
    with_locals, _ = model(crops)
    model.options.n_local = 0
    torch.manual_seed(3)
    without, _ = model(crops)

    assert float(with_locals.detach()) != pytest.approx(float(without.detach()))


def test_sinkhorn_targets_train_too():
    model = tiny_model("dinov2-nol2g", centering="sinkhorn")

    loss, _ = model(torch.rand(4, 3, 60, 60))
    loss.backward()

    assert torch.isfinite(loss) and model.head.mlp[0].weight.grad is not None


def test_prototypes_get_no_gradient_at_the_start():
    model = tiny_model("dinov2-nol2g", freeze_last_layer=0.1)

    loss, _ = model(torch.rand(4, 3, 60, 60))
    loss.backward()

    assert model.head.prototypes.grad is None
    assert model.head.mlp[0].weight.grad is not None


def test_teacher_update_moves_the_teacher_towards_the_student():
    model = tiny_model("dinov2-nol2g")
    student = model.encoder.blocks[0].attn.qkv.weight
    teacher = model.teacher.blocks[0].attn.qkv.weight
    with torch.no_grad():
        student.fill_(1.0)
        teacher.zero_()

    model.after_step(0.0)
    after_first = teacher.clone()
    model.after_step(1.0)

    assert torch.allclose(after_first, torch.full_like(teacher, 1 - 0.992))
    assert torch.allclose(teacher, after_first)  # momentum 1 at the end
    assert model.teacher_temp() == pytest.approx(0.07)


@pytest.mark.parametrize(
    ("options", "local", "match"),
    [
        ({"temperature": 0.1}, True, "options \\['temperature'\\] are not known"),
        ({"local_to_global": False, "n_local": 2}, True, "set n_local=0"),
        ({"n_local": 2}, False, "local_policy=None"),
        ({"local_size": 12}, True, "local_size=12"),
        ({"centering": "mean"}, True, "centering='mean'"),
        ({"mask_ratio": (0.5, 0.1)}, True, "mask_ratio=\\(0.5, 0.1\\)"),
        ({"student_temp": 0.0}, True, "student_temp=0.0"),
        ({"kde_weight": -1.0}, True, "kde_weight=-1.0"),
        ({"n_local": -1}, True, "n_local=-1"),
    ],
)
def test_bad_options_are_refused(options, local, match):
    policy = CenterCropFlip(16, crop=24) if local else None
    opts = {**SMALL_HEAD, **options}

    with pytest.raises(ValueError, match=match):
        DINOv2(TINY, CenterCropFlip(40), policy, mean=TINY.mean, std=TINY.std, **opts)


def test_a_policy_of_the_wrong_size_is_refused():
    model = tiny_model("dinov2", local_size=16)
    model.local_policy = CenterCropFlip(24, crop=24)

    with pytest.raises(ValueError, match="expected \\(b, 3, 16, 16\\)"):
        model(torch.rand(4, 3, 60, 60))


def test_a_batch_of_one_or_a_wrong_layout_is_refused():
    model = tiny_model("dinov2-nol2g")

    with pytest.raises(ValueError, match="b >= 2"):
        model(torch.rand(1, 3, 60, 60))
    with pytest.raises(ValueError, match="expected float \\(b, 3, h, w\\)"):
        model(torch.rand(4, 60, 60, 3))
