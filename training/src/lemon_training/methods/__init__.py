"""Self-supervised methods, one per module, built from a run config.

Every method is an ``nn.Module`` with the same surface, which is all the
trainer knows of it:

- ``encoder``: the plugin's ViT, what ``lemon-train export`` writes;
- ``forward(crops) -> (loss, parts)`` for float crops (b, 3, 60, 60) in 0-1;
  the method makes and normalises its own views;
- ``after_step(done)`` after each optimiser step, ``done`` the fraction of the
  run in [0, 1] (momentum teachers, temperature schedules);
- ``trainable_parameters()``: what the optimiser updates.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from napari_lemon.encoder import ARCHITECTURES, EncoderCard

METHODS = ("mocov3", "dinov2")


def card_for(model: dict[str, Any]) -> EncoderCard:
    """The encoder card of the config's ``model`` section.

    ``architecture`` is ``vit_small_moco`` (ViT-S/8) or ``vit_base_moco``
    (ViT-B/8); ``embed_dim``, ``depth`` and ``num_heads``, when set, change its
    size (small networks for quick experiments and tests).
    """
    architecture = model["architecture"]
    if architecture not in ARCHITECTURES:
        from ..config import ConfigError

        raise ConfigError(
            f"model.architecture={architecture!r} is not known; "
            f"choose one of {sorted(ARCHITECTURES)}"
        )
    sizes = dict(ARCHITECTURES[architecture])
    sizes.update({k: model[k] for k in sizes if model.get(k) is not None})
    return EncoderCard(architecture=architecture, **sizes)


def create_method(
    config: dict[str, Any], card: EncoderCard, stain_statistics=None
) -> nn.Module:
    """Build the method ``config["method"]["name"]`` with its augmentations."""
    from ..augment.policies import create_policy, create_view_policies

    name, augment = config["method"]["name"], config["augment"]
    if name == "mocov3":
        from .mocov3 import MoCoV3

        views = create_view_policies(
            augment["policy"], stain_statistics=stain_statistics
        )
        return MoCoV3(card, *views, mean=card.mean, std=card.std, **config["mocov3"])
    policy = create_policy(augment["policy"], stain_statistics=stain_statistics)
    if name == "dinov2":
        from .dinov2 import DINOv2

        options = config["dinov2"]
        local = None
        if options["n_local"] > 0:
            local = create_policy(
                augment["policy"],
                out_size=options["local_size"],
                crop_scale=tuple(augment["local_scale"]),
                stain_statistics=stain_statistics,
            )
        return DINOv2(card, policy, local, mean=card.mean, std=card.std, **options)

    from ..config import ConfigError

    raise ConfigError(f"method.name={name!r} is not known; choose one of {METHODS}")
