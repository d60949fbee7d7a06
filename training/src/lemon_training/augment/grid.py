"""Example grid of augmentation policies, like Figure 5 of the LEMON paper.

One row per policy (its name on the left): the original 60x60 crop, then views
drawn by the policy, every image enlarged with nearest-neighbour sampling so the
pixels stay visible. ``lemon-train augment-grid`` writes it as a PNG.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .policies import POLICIES, create_policy, fit_policy_statistics, needs_statistics
from .stain import StainStatistics

logger = logging.getLogger(__name__)

CROP_SIZE, CROP_MPP = 60, 0.25  # the training crops: 60x60 at 0.25 um/px
CELL, GAP, LABEL_WIDTH, HEADER = 120, 4, 110, 24  # layout in output pixels


def render_policy_grid(
    crops_uint8: np.ndarray,
    policies: list[str],
    n_examples: int,
    out_png: str | Path,
    seed: int = 0,
    stain_statistics: StainStatistics | None = None,
    *,
    n_crops: int = 1,
) -> Path:
    """Draw ``n_examples`` views of the first ``n_crops`` crops under each policy.

    Parameters
    ----------
    crops_uint8 : ndarray of shape (n, 60, 60, 3), uint8
        Crops to show (the first ``n_crops``); the ``gmm`` policies also fit their
        stain statistics on all of them unless ``stain_statistics`` fits the
        policy's number of components.
    policies : list of str
        Names from :data:`~.policies.POLICIES`, one row each.
    n_examples : int
        Views per row.
    out_png : path
        The PNG written.
    seed : int
        Seeds torch's random number generator and the statistics fit.

    Returns
    -------
    Path of the PNG.
    """
    import torch

    crops = _check_inputs(crops_uint8, policies, n_examples, n_crops)
    rows = []
    for name in policies:
        policy = create_policy(
            name, stain_statistics=_statistics(name, crops, seed, stain_statistics)
        )
        torch.manual_seed(seed)
        rows += [
            (name, crop, _views(policy, crop, n_examples)) for crop in crops[:n_crops]
        ]
    return _draw(rows, Path(out_png))


def _check_inputs(crops_uint8, policies, n_examples, n_crops) -> np.ndarray:
    crops = np.asarray(crops_uint8)
    if crops.ndim != 4 or crops.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
        raise ValueError(
            f"crops_uint8 has shape {crops.shape}; expected (n, 60, 60, 3) uint8 "
            "crops at 0.25 um/px"
        )
    if not policies:
        raise ValueError(
            f"policies={policies!r} is empty; name at least one of {POLICIES}"
        )
    if not 1 <= n_crops <= len(crops) or n_examples < 1:
        raise ValueError(
            f"n_crops={n_crops!r} and n_examples={n_examples!r} must be at least 1, "
            f"and n_crops at most the {len(crops)} crops given"
        )
    for name in policies:  # fail on a misspelt name before any work
        needs_statistics(name)
    return crops


def _statistics(name, crops, seed, given: StainStatistics | None):
    """The given statistics when they suit policy ``name``, else a fit on ``crops``."""
    if given is not None and name.endswith(f"gmm{given.n_components}"):
        return given
    fitted = fit_policy_statistics(name, crops, seed)
    if fitted is not None:
        logger.info("%s: stain statistics fitted on %d crops", name, len(crops))
    return fitted


def _views(policy, crop: np.ndarray, n: int) -> list[np.ndarray]:
    """``n`` views of one uint8 crop (60, 60, 3) as uint8 (s, s, 3) arrays."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        views = policy(x[None].expand(n, -1, -1, -1).contiguous())
    return list((views * 255).round().byte().permute(0, 2, 3, 1).numpy())


def _draw(rows, out_png: Path) -> Path:
    """Lay out (label, original, views) rows on a white canvas and save it."""
    from PIL import Image, ImageDraw, ImageFont

    n_cols = 1 + len(rows[0][2])
    width = LABEL_WIDTH + n_cols * (CELL + GAP)
    canvas = Image.new("RGB", (width, HEADER + len(rows) * (CELL + GAP)), "white")
    draw, font = ImageDraw.Draw(canvas), ImageFont.load_default(size=15)

    # header, then one row per (policy, crop)
    draw.text((LABEL_WIDTH, 4), "original", fill="black", font=font)
    draw.text((LABEL_WIDTH + CELL + GAP, 4), "augmented views", fill="black", font=font)
    for r, (name, crop, views) in enumerate(rows):
        top = HEADER + r * (CELL + GAP)
        draw.text((6, top + CELL // 2 - 8), name, fill="black", font=font)
        for c, image in enumerate([crop, *views]):
            tile = Image.fromarray(image).resize((CELL, CELL), Image.Resampling.NEAREST)
            canvas.paste(tile, (LABEL_WIDTH + c * (CELL + GAP), top))

    out_png.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out_png, optimize=True)
    return out_png


# ------------------------------------------------------------------ command line
def add_augment_grid_arguments(parser) -> None:
    """Arguments of ``lemon-train augment-grid`` (an ``argparse`` parser)."""
    parser.add_argument(
        "--data",
        nargs="+",
        required=True,
        help="crop dataset folders (lemon-train curate) or image files; an image's "
        "nucleus centres come from --centres or an ImageScope XML beside it or in "
        "../annotations",
    )
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--out", required=True, help="PNG file to write")
    parser.add_argument("--examples", type=int, default=8, help="views per row")
    parser.add_argument("--crops", type=int, default=1, help="crops shown per policy")
    parser.add_argument(
        "--sample", type=int, default=2000, help="crops read (stain statistics fit)"
    )
    parser.add_argument("--centres", help="CSV with x, y pixel columns (and image)")
    parser.add_argument("--mpp", type=float, help="microns per pixel of image files")
    parser.add_argument("--statistics", help="stain_statistics.json of a run")
    parser.add_argument("--seed", type=int, default=0)


def run_augment_grid(args) -> Path:
    """``lemon-train augment-grid``: read crops, render the grid, return its path."""
    import json

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    crops = read_crops(args.data, args.sample, args.seed, args.centres, args.mpp)
    if len(crops) == 0:
        raise ValueError(f"--data {args.data!r} gave no crops")
    stats = None
    if args.statistics:
        data = json.loads(Path(args.statistics).read_text())
        stats = StainStatistics.from_dict(data)
    return render_policy_grid(
        crops, policies, args.examples, args.out, args.seed, stats, n_crops=args.crops
    )


# ------------------------------------------------------------------ crop sources
def read_crops(
    paths: list[str | Path],
    n: int,
    seed: int = 0,
    centres_csv: str | Path | None = None,
    mpp: float | None = None,
) -> np.ndarray:
    """Up to ``n`` random 60x60 crops at 0.25 um/px from folders or image files.

    Parameters
    ----------
    paths : list of path
        Crop dataset folders (``lemon-train curate``) or RGB image files.
    centres_csv : path, optional
        Nucleus centres for image files: columns ``x``, ``y`` in pixels, and
        ``image`` (file name) when it covers several files. Without it, an image's
        ImageScope XML is looked for beside it and in ``../annotations``.
    mpp : float, optional
        Microns per pixel of the image files; default the XML's ``MicronsPerPixel``.

    Returns
    -------
    ndarray of shape (m, 60, 60, 3), uint8, m <= n, in random order
    """
    parts = []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(
                f"--data {str(path)!r} does not exist; pass crop dataset folders or "
                "image files"
            )
        reader = _folder_crops if path.is_dir() else _image_crops
        parts.append(reader(path, n, seed, centres_csv, mpp))
    crops = np.concatenate(parts)
    order = np.random.default_rng(seed).permutation(len(crops))[:n]
    return crops[order]


def _folder_crops(folder: Path, n, seed, centres_csv, mpp) -> np.ndarray:
    """A random sample of a crop dataset folder (``lemon-train curate``)."""
    from ..data.dataset import open_dataset

    return open_dataset(folder).sample(n, seed)


def _image_crops(path: Path, n, seed, centres_csv, mpp) -> np.ndarray:
    """Crops around the nucleus centres of one image file."""
    from napari_lemon.crops import crop_nuclei

    if centres_csv:
        centres, xml_mpp = _csv_centres(Path(centres_csv), path), None
    else:
        centres, xml_mpp = _xml_centres(path)
    mpp = mpp or xml_mpp
    if not mpp:
        raise ValueError(
            f"mpp=None for {path.name!r}: pass --mpp (microns per pixel, e.g. 0.25 "
            "for 40x)"
        )
    return crop_nuclei(_read_rgb(path), centres, mpp, CROP_MPP, CROP_SIZE)


def _read_rgb(path: Path) -> np.ndarray:
    from skimage import io

    image = io.imread(path)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return np.ascontiguousarray(image[..., :3]).astype(np.uint8, copy=False)


def _csv_centres(csv: Path, image: Path) -> np.ndarray:
    """Centres ``(x, y)`` of ``image`` from a CSV of x, y (and image) columns."""
    import pandas as pd

    table = pd.read_csv(csv)
    if not {"x", "y"} <= set(table.columns):
        raise ValueError(
            f"--centres {csv.name!r} has columns {list(table.columns)}; expected x "
            "and y (pixels), and image when it lists several files"
        )
    if "image" in table.columns:
        names = table["image"].astype(str).map(lambda s: Path(s).name)
        table = table[names.isin([image.name, image.stem])]
    if table.empty:
        raise ValueError(f"--centres {csv.name!r} lists no centres for {image.name!r}")
    return table[["x", "y"]].to_numpy(dtype=np.float64)


def _xml_centres(image: Path) -> tuple[np.ndarray, float | None]:
    """Centres and mpp from the ImageScope XML beside ``image`` or in ../annotations."""
    from napari_lemon.segment.imagescope import polygon_centroids, read_imagescope_xml

    name = f"{image.stem}.xml"
    for xml in (image.with_name(name), image.parent.parent / "annotations" / name):
        if xml.is_file():
            ann = read_imagescope_xml(xml)
            return polygon_centroids(ann.polygons), ann.mpp
    raise FileNotFoundError(
        f"no nucleus centres for {image.name!r}: no {name} beside it or in "
        "../annotations; pass --centres CSV with x, y columns"
    )
