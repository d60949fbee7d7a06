"""Fixtures of the training package's tests: encoders and synthetic probe datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from skimage import io

BACKGROUND = (235, 200, 220)
SMALL_BLOB = {"colour": (70, 40, 130), "radius_um": 2.0}  # dark, small nucleus
LARGE_BLOB = {"colour": (150, 90, 170), "radius_um": 4.0}  # pale, large nucleus


@pytest.fixture(scope="session")
def random_encoder_path(tmp_path_factory) -> Path:
    """A randomly initialised LEMON ViT saved in the plugin's checkpoint layout."""
    import torch

    from napari_lemon.checkpoint import save_checkpoint
    from napari_lemon.encoder import EncoderCard, create_vit

    torch.manual_seed(0)
    card = EncoderCard(name="random-test")
    path = tmp_path_factory.mktemp("encoder") / "random.safetensors"
    return save_checkpoint(create_vit(card, weight_init="skip"), card, path)


def draw_blobs(
    centres_rc: np.ndarray,
    radii_px: np.ndarray,
    colours: np.ndarray,
    size: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """An RGB uint8 image of noisy background with filled discs."""
    image = np.empty((size, size, 3), dtype=np.float64)
    image[:] = BACKGROUND
    rows, cols = np.mgrid[:size, :size]
    for (r, c), radius, colour in zip(centres_rc, radii_px, colours, strict=True):
        image[(rows - r) ** 2 + (cols - c) ** 2 <= radius**2] = colour
    image += rng.normal(0, 4, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def write_blob_folder(
    folder: Path,
    n_images: int = 10,
    task: str = "classification",
    mpp: float = 0.5,
    slides: bool = False,
    seed: int = 0,
) -> Path:
    """A probe dataset folder of blob images: 4 nuclei per image, 2 per class.

    Classification: ``label`` is ``small`` (dark, 2 um radius) or ``large`` (pale,
    4 um). Regression: radii drawn from 2-4.5 um, with ``target_radius_um`` and
    ``target_double`` (twice the radius plus noise).
    """
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    size, rows = 100, []
    centres = np.array([[25, 25], [25, 75], [75, 25], [75, 75]], dtype=float)
    for i in range(n_images):
        name = f"img{i}.png"
        if task == "classification":
            kinds = [SMALL_BLOB, LARGE_BLOB, SMALL_BLOB, LARGE_BLOB]
            radii_um = np.array([k["radius_um"] for k in kinds])
            colours = np.array([k["colour"] for k in kinds], dtype=float)
        else:
            radii_um = rng.uniform(2.0, 4.5, 4)
            colours = np.tile(np.array(SMALL_BLOB["colour"], float), (4, 1))
        image = draw_blobs(centres, radii_um / mpp, colours, size, rng)
        io.imsave(folder / "images" / name, image, check_contrast=False)
        for (r, c), radius in zip(centres, radii_um, strict=True):
            row = {"image": name, "x": c, "y": r, "slide": f"s{i // 2}"}
            if task == "classification":
                row["label"] = "small" if radius < 3 else "large"
            else:
                row["target_radius_um"] = radius
                row["target_double"] = 2 * radius + rng.normal(0, 0.05)
            rows.append(row)

    table = pd.DataFrame(rows)
    if not slides:
        table = table.drop(columns="slide")
    table.to_csv(folder / "labels.csv", index=False)
    meta = {"name": folder.name, "mpp": mpp, "task": task}
    (folder / "dataset.yaml").write_text(yaml.safe_dump(meta))
    return folder


@pytest.fixture()
def make_blob_folder():
    """:func:`write_blob_folder`, for tests that need other sizes or tasks."""
    return write_blob_folder


@pytest.fixture()
def blob_folder(tmp_path) -> Path:
    """A classification folder: 10 images, 40 nuclei, two blob classes."""
    return write_blob_folder(tmp_path / "blobs")
