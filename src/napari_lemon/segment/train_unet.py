"""Train the U-Net segmenter on MoNuSeg training tiles, on the CPU, to a time budget.

Data (``monuseg/train`` under ``--data``): the tiles with ImageScope outlines give
instance labels; the others give foreground masks only (touching nuclei merge
there), so their distance target is kept only inside components that look like
single nuclei (convex and not too large). Crops are cut at ``card.mpp`` with a
random scale (x0.8-1.25), rotation, flip, hematoxylin/eosin jitter, brightness,
contrast, blur and noise.

Loss: binary cross-entropy + soft Dice on the foreground; binary cross-entropy
with soft targets on the normalised distance. AdamW with a cosine learning rate
over the wall-time budget; the exported weights are an exponential moving
average of the trained ones.

Usage::

    python -m napari_lemon.segment.train_unet --data ../shared/data \\
        --out runs/segmenter --minutes 40 --threads 1
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.color import hed2rgb, rgb2hed
from skimage.measure import label, regionprops
from skimage.transform import AffineTransform, warp

from .imagescope import rasterise, read_imagescope_xml
from .unet_model import UNetCard, create_unet, save_unet

logger = logging.getLogger(__name__)

MONUSEG_MPP = 0.25  # one training XML records no MicronsPerPixel; the rest 0.246-0.253
SINGLE_MAX_UM2 = 150.0  # a mask component larger than this may be several nuclei
SINGLE_MIN_SOLIDITY = 0.9  # ... and so may one less convex than this


@dataclass
class Tile:
    """One training tile at its native scale.

    Attributes
    ----------
    image : ndarray of shape (rows, cols, 3), float32
        RGB in 0..1, lightly blurred against aliasing when shrunk.
    foreground : ndarray of shape (rows, cols), uint8
    instances : ndarray of shape (rows, cols), int32
        Instance labels where known (0 elsewhere).
    distance_weight : ndarray of shape (rows, cols), uint8
        1 where the distance target is trusted.
    mpp : float
    """

    image: np.ndarray
    foreground: np.ndarray
    instances: np.ndarray
    distance_weight: np.ndarray
    mpp: float


def single_nuclei(mask: np.ndarray, mpp: float) -> np.ndarray:
    """Components of a foreground mask that look like one nucleus each.

    Returns
    -------
    ndarray of shape mask.shape, int32
        Labels of the kept components, 0 elsewhere.
    """
    components = label(mask > 0, connectivity=1)
    keep = np.zeros(components.max() + 1, dtype=bool)
    for region in regionprops(components):
        small = region.area * mpp**2 <= SINGLE_MAX_UM2
        keep[region.label] = small and region.solidity >= SINGLE_MIN_SOLIDITY
    return np.where(keep[components], components, 0).astype(np.int32)


def load_tiles(folder: Path) -> list[Tile]:
    """Every tile of a MoNuSeg split folder (``images/``, ``annotations/``,
    ``binary_masks/``), with instances where outlines exist."""
    from PIL import Image

    tiles = []
    for path in sorted((folder / "images").glob("*.tif")):
        image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
        image = ndimage.gaussian_filter(image, (0.5, 0.5, 0))
        xml = folder / "annotations" / f"{path.stem}.xml"
        mpp = MONUSEG_MPP
        if xml.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # regions with < 3 vertices
                truth = read_imagescope_xml(xml)
            mpp = truth.mpp or MONUSEG_MPP
            instances = rasterise(truth.polygons, image.shape[:2])
            foreground, weight = instances > 0, np.ones(image.shape[:2], bool)
        else:
            mask = np.asarray(Image.open(folder / "binary_masks" / f"{path.stem}.png"))
            foreground = (mask[..., 0] if mask.ndim == 3 else mask) > 0
            instances = single_nuclei(foreground, mpp)
            weight = ~foreground | (instances > 0)
        tiles.append(
            Tile(
                image,
                foreground.astype(np.uint8),
                instances,
                weight.astype(np.uint8),
                mpp,
            )
        )
    return tiles


def distance_target(instances: np.ndarray) -> np.ndarray:
    """Distance to the instance's edge over its largest value, float32 in 0..1.

    Pixels next to another instance count as edge, so touching nuclei get
    separate peaks.
    """
    neighbours_max = ndimage.maximum_filter(instances, size=3)
    neighbours_min = ndimage.minimum_filter(instances, size=3)
    inside = (
        (instances > 0) & (neighbours_max == instances) & (neighbours_min == instances)
    )
    distance = ndimage.distance_transform_edt(inside).astype(np.float32)
    peak = ndimage.maximum(distance, instances, index=np.arange(instances.max() + 1))
    peak = np.asarray(peak, dtype=np.float32)
    peak[peak == 0] = 1.0
    return np.where(instances > 0, distance / peak[instances], 0).astype(np.float32)


def random_crop(
    tile: Tile, size: int, work_mpp: float, rng: np.random.Generator
) -> tuple[np.ndarray, ...]:
    """A rotated, scaled, flipped crop of a tile at about ``work_mpp``.

    Returns
    -------
    image : ndarray of shape (size, size, 3), float32
    foreground, distance, foreground_weight, distance_weight :
        ndarray of shape (size, size), float32
    """
    # the transform: crop pixel -> tile pixel
    zoom = work_mpp / tile.mpp * math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    angle = rng.uniform(0, 2 * math.pi)
    flip = rng.choice([-1.0, 1.0])
    centre = rng.uniform(0, tile.image.shape[:2])[::-1]  # (x, y)
    half = (size - 1) / 2
    transform = (
        AffineTransform(translation=(-half, -half))
        + AffineTransform(scale=(zoom * flip, zoom), rotation=angle)
        + AffineTransform(translation=centre)
    )

    # warp: the image mirrored at the tile's edges, the targets not at all
    image = warp(
        tile.image, transform, output_shape=(size, size), order=1, mode="reflect"
    )
    warp_labels = dict(output_shape=(size, size), order=0, preserve_range=True)
    inside = warp(np.ones(tile.image.shape[:2]), transform, cval=0, **warp_labels)
    foreground = warp(tile.foreground, transform, **warp_labels)
    instances = warp(tile.instances, transform, **warp_labels).astype(np.int32)
    trusted = warp(tile.distance_weight, transform, **warp_labels) * inside
    return (
        augment_colour(image.astype(np.float32), rng),
        foreground.astype(np.float32),
        distance_target(instances),
        inside.astype(np.float32),
        trusted.astype(np.float32),
    )


def augment_colour(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stain (HED), brightness, contrast, blur and noise jitter; RGB float32 0..1."""
    # stain: scale and shift the hematoxylin and eosin densities
    hed = rgb2hed(image)
    hed *= rng.uniform(0.7, 1.3, 3)
    hed += rng.uniform(-0.03, 0.03, 3)
    image = hed2rgb(hed).astype(np.float32)

    # brightness and contrast about the mean; sometimes blur; always a little noise
    mean = image.mean()
    image = (image - mean) * rng.uniform(0.8, 1.2) + mean + rng.uniform(-0.08, 0.08)
    if rng.random() < 0.3:
        image = ndimage.gaussian_filter(image, (rng.uniform(0.3, 1.0),) * 2 + (0,))
    image += rng.normal(0, rng.uniform(0, 0.02), image.shape).astype(np.float32)
    return np.clip(image, 0, 1)


def make_batch(
    tiles: list[Tile], card: UNetCard, size: int, n: int, rng: np.random.Generator
) -> tuple:
    """``n`` crops as torch tensors: images (n, 3, s, s), targets (n, 4, s, s).

    Target channels: foreground, distance, foreground weight, distance weight.
    """
    import torch

    crops = [
        random_crop(tiles[rng.integers(len(tiles))], size, card.mpp, rng)
        for _ in range(n)
    ]
    images = np.stack([c[0] for c in crops])
    images = (images - np.asarray(card.mean, np.float32)) / np.asarray(
        card.std, np.float32
    )
    targets = np.stack([np.stack(c[1:]) for c in crops])
    return (
        torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))),
        torch.from_numpy(targets),
    )


def segmentation_loss(logits, targets) -> tuple:
    """Foreground BCE + soft Dice, distance BCE (soft targets); weighted means.

    Parameters
    ----------
    logits : Tensor of shape (n, 2, h, w)
    targets : Tensor of shape (n, 4, h, w)
        Foreground, distance, foreground weight, distance weight.

    Returns
    -------
    total, foreground, distance : Tensor (scalars)
    """
    import torch.nn.functional as F

    foreground, distance, fg_weight, dist_weight = targets.unbind(1)
    bce = F.binary_cross_entropy_with_logits(logits[:, 0], foreground, reduction="none")
    fg_loss = (bce * fg_weight).sum() / fg_weight.sum().clamp(min=1)
    prob = logits[:, 0].sigmoid() * fg_weight
    dice = 1 - (2 * (prob * foreground).sum() + 1) / (
        prob.sum() + (foreground * fg_weight).sum() + 1
    )
    dist = F.binary_cross_entropy_with_logits(logits[:, 1], distance, reduction="none")
    dist_loss = (dist * dist_weight).sum() / dist_weight.sum().clamp(min=1)
    return fg_loss + dice + dist_loss, fg_loss + dice, dist_loss


@dataclass
class TrainConfig:
    """A training run: budget, crops, optimiser, seed and starting weights.

    Attributes
    ----------
    minutes : float
        Wall-time budget of the loop (data loading excluded).
    crop_px : int
        Side of the training crops, in working pixels.
    batch_size : int
    lr : float
        Peak learning rate; it follows a cosine over the budget down to 2%.
    seed : int
    init : Path or None
        Weights (safetensors + card) to start from, e.g. an earlier run's.
    widths : tuple of int
        Channels at each depth of a new network (ignored with ``init``).
    """

    minutes: float = 40.0
    crop_px: int = 192
    batch_size: int = 8
    lr: float = 3e-3
    seed: int = 0
    init: Path | None = None
    widths: tuple[int, ...] = UNetCard.widths


def train(data: Path, out: Path, config: TrainConfig | None = None) -> Path:
    """Train within ``config.minutes`` of wall time; write ``out/segmenter_unet.*``.

    Returns the path of the safetensors file (EMA weights).
    """
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    # data and model
    config = config or TrainConfig()
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    tiles = load_tiles(data / "monuseg" / "train")
    model, card = _initial_model(config, tiles)
    ema = AveragedModel(
        model, multi_avg_fn=get_ema_multi_avg_fn(0.99), use_buffers=True
    )
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-4)
    n_outlined = sum(t.distance_weight.all() for t in tiles)
    logger.info("%d tiles, %d with outlines", len(tiles), n_outlined)

    # loop to the time budget; learning rate by elapsed time
    start, cpu_start = time.perf_counter(), time.process_time()
    step, log = 0, (out / "log.jsonl").open("a")
    budget = config.minutes * 60
    while (elapsed := time.perf_counter() - start) < budget:
        cosine = 0.5 * (1 + math.cos(math.pi * elapsed / budget))
        for group in optimiser.param_groups:
            group["lr"] = config.lr * (0.02 + 0.98 * cosine)
        images, targets = make_batch(
            tiles, card, config.crop_px, config.batch_size, rng
        )
        total, fg_loss, dist_loss = segmentation_loss(model(images), targets)
        optimiser.zero_grad()
        total.backward()
        optimiser.step()
        ema.update_parameters(model)
        step += 1

        # log and checkpoint
        if step % 10 == 0:
            row = {"step": step, "seconds": round(elapsed, 1), "loss": total.item()}
            row |= {"foreground": fg_loss.item(), "distance": dist_loss.item()}
            log.write(json.dumps(row | {"lr": optimiser.param_groups[0]["lr"]}) + "\n")
            log.flush()
        if step % 100 == 0:
            _record(card, config, tiles, step, elapsed, time.process_time() - cpu_start)
            save_unet(ema.module, card, out / "segmenter_unet.safetensors")

    # final weights
    timing = (step, time.perf_counter() - start, time.process_time() - cpu_start)
    _record(card, config, tiles, *timing)
    return save_unet(ema.module, card, out / "segmenter_unet.safetensors")


def _initial_model(config: TrainConfig, tiles: list[Tile]) -> tuple:
    """A fresh network with normalisation from the tiles, or ``config.init``."""
    from safetensors.torch import load_file

    if config.init is None:
        card = UNetCard(widths=tuple(config.widths))
        card.mean, card.std = _channel_stats(tiles)
        return create_unet(card), card

    # the stored network as trained: load_unet folds its batch norms for inference
    weights = Path(config.init)
    if weights.suffix != ".safetensors" or not weights.with_suffix(".json").is_file():
        raise FileNotFoundError(
            f"init={str(weights)!r}: expected a .safetensors file with its .json "
            "card beside it (as written by a training run)"
        )
    card = UNetCard.from_dict(json.loads(weights.with_suffix(".json").read_text()))
    model = create_unet(card)
    model.load_state_dict({k: v.float() for k, v in load_file(weights).items()})
    card.training = {"continued_from": dict(card.training)}
    card.benchmark = {}
    return model.train(), card


def _record(card, config, tiles, step, seconds, cpu_seconds) -> None:
    """Write the run's data, recipe and timing into ``card.training``."""
    import torch

    earlier = card.training.get("continued_from")
    card.training = {
        "data": "MoNuSeg 2018 train: 13 tiles with outlines, 17 with masks only",
        "tiles": len(tiles),
        "steps": step,
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),
        "threads": torch.get_num_threads(),
        **{k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "augmentation": "scale x0.8-1.25, rotation, flip, HED x0.7-1.3 +-0.03, "
        "brightness, contrast, blur, noise",
        "git_commit": _git_commit(),
    }
    if earlier:
        card.training["continued_from"] = earlier


def _channel_stats(tiles: list[Tile]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pixels = np.concatenate([t.image[::4, ::4].reshape(-1, 3) for t in tiles])
    mean, std = pixels.mean(0).round(4).tolist(), pixels.std(0).round(4).tolist()
    return tuple(mean), tuple(std)


def _git_commit() -> str | None:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="holds monuseg/")
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--threads", type=int, default=1)
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        flag = f"--{name.replace('_', '-')}"
        if name == "widths":
            parser.add_argument(flag, type=int, nargs="+", default=value)
        else:
            kind = Path if name == "init" else type(value)
            parser.add_argument(flag, type=kind, default=value)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(args.threads)
    config = TrainConfig(**{k: getattr(args, k) for k in asdict(defaults)})
    print(f"weights -> {train(args.data, args.out, config)}")


if __name__ == "__main__":
    main()
