"""Linear probe on CRCHistoPhenotypes: fit on train images, score on validation images.

Logistic regression (class-balanced, on standardised embeddings) predicts the
four cell types (epithelial, fibroblast, inflammatory, others) from the encoder's
embedding of a 40x40 crop at the encoder's mpp around each annotated point. The
split is by image, as the dataset requires. The score is balanced accuracy.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pandas as pd

from ..data.curate import cut_crops
from ..data.sources import crc_centres
from .probe import score_classification

logger = logging.getLogger("lemon_training")


def load_probe_encoder(name: str | Path, device: str = "cpu"):
    """``"random"`` (seeded random init), ``"bundled"``, or a checkpoint path."""
    import torch

    from napari_lemon.checkpoint import load_encoder
    from napari_lemon.encoder import Encoder, EncoderCard, create_vit

    if str(name) == "random":
        torch.manual_seed(0)
        card = EncoderCard(name="random-init")
        return Encoder(create_vit(card), card, device)
    return load_encoder(name, device)


def subsample(table: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """At most ``n`` rows, drawn at random (seeded); all rows when ``n`` is None."""
    if n is None or len(table) <= n:
        return table
    return table.sample(n=n, random_state=seed).sort_index()


def fit_and_score(train_x, train_y, test_x, test_y, seed: int = 0) -> dict[str, Any]:
    """Balanced logistic regression on standardised features; balanced accuracy."""
    score = score_classification(train_x, train_y, test_x, test_y, seed)
    return {
        "balanced_accuracy": score,
        "n_train": int(len(train_y)),
        "n_test": int(len(test_y)),
    }


def crc_probe(
    encoder: str | Path,
    crc_root: str | Path,
    max_train: int | None = 6000,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Probe ``encoder`` on CRC: fit on ``train`` images, score on ``validation``.

    Parameters
    ----------
    encoder : str or Path
        ``"random"``, ``"bundled"`` or a checkpoint path.
    crc_root : path
        Folder with ``images/`` and ``nuclei.csv``.
    max_train : int or None
        Random subsample of the typed training nuclei (speed on CPU).

    Returns
    -------
    dict with balanced_accuracy, n_train, n_test, encoder name, seconds
    """
    started = time.perf_counter()
    model = load_probe_encoder(encoder, device)
    size, mpp = model.card.crop_size, model.card.mpp

    # typed nuclei of each split
    table = crc_centres(crc_root, ("train", "validation"))
    table = table[table.cell_type != ""]
    train = subsample(table[table.split == "train"], max_train, seed)
    test = table[table.split == "validation"]

    # crops -> embeddings -> probe
    features = {}
    for name, part in (("train", train), ("test", test)):
        crops = cut_crops(part.reset_index(drop=True), size, mpp)
        features[name] = model.embed(crops, batch_size=256)
        logger.info("embedded %d %s nuclei", len(crops), name)
    result = fit_and_score(
        features["train"],
        train.cell_type.to_numpy(),
        features["test"],
        test.cell_type.to_numpy(),
        seed,
    )
    result.update(
        encoder=model.card.name,
        encoder_sha256=model.card.sha256,
        dataset="CRCHistoPhenotypes: fit on train images, score on validation images",
        seconds=round(time.perf_counter() - started, 1),
    )
    return result
