"""``lemon-train benchmark``: linear probes of several encoders on several datasets.

For each dataset and encoder: crop every nucleus at the encoder's scale, embed
the crops (cached under ``OUT/cache`` by dataset fingerprint and encoder hash,
so a rerun only refits the probes), then fit and score a linear probe on each
of ``n_folds`` folds grouped by image or slide. The table of ``mean (sd)`` over
folds goes to ``OUT/table.md``, ``OUT/table.csv`` and ``OUT/folds.json``.

Example::

    lemon-train benchmark --encoder bundled random handcrafted --dataset crc \\
        --out benchmarks/results/crc_probe
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .datasets import ProbeDataset, load_probe_dataset
from .encoders import EncoderUnavailable, ProbeEncoder, create_probe_encoder
from .probe import METRICS, cross_validate, make_folds
from .table import ProbeResult, card_benchmarks, markdown_table, write_tables

logger = logging.getLogger("lemon_training")

DEFAULT_DATA_ROOT = Path("../shared/data")


def _bar(enabled: bool, desc: str, unit: str = "batch"):
    """A tqdm wrapper for an iterable, or None when progress is off."""
    if not enabled:
        return None
    from tqdm import tqdm

    return lambda iterable: tqdm(iterable, desc=desc, unit=unit, leave=False)


def cached_crops(
    dataset: ProbeDataset, size: int, mpp: float, folder: Path, progress: bool
) -> np.ndarray:
    """Crops of every nucleus of ``dataset``, read from or written to ``folder``."""
    path = folder / f"crops-{size}px-{mpp:g}mpp.npy"
    if path.is_file():
        return np.load(path)
    crops = dataset.crops(size, mpp, _bar(progress, f"crop {dataset.name}", "image"))
    _save(path, crops)
    return crops


def cached_features(
    encoder: ProbeEncoder, dataset: ProbeDataset, cache: Path, progress: bool = True
) -> tuple[np.ndarray, float | None]:
    """Features of every nucleus, and nuclei per second (None when cached).

    Returns
    -------
    features : ndarray of shape (n_nuclei, dim), float32
    rate : float or None
    """
    folder = cache / f"{dataset.name}-{dataset.fingerprint()}"
    path = folder / f"{encoder.key}.npy"
    if path.is_file():
        logger.info("%s on %s: embeddings from %s", encoder.name, dataset.name, path)
        return np.load(path), None

    # crop, embed, time it
    crops = cached_crops(dataset, encoder.crop_size, encoder.mpp, folder, progress)
    started = time.perf_counter()
    features = encoder.embed(crops, _bar(progress, f"{encoder.name} on {dataset.name}"))
    rate = len(crops) / max(time.perf_counter() - started, 1e-9)
    logger.info("%s: %d nuclei at %.1f nuclei/s", encoder.name, len(crops), rate)

    _save(path, np.asarray(features, dtype=np.float32))
    return features, rate


def _save(path: Path, array: np.ndarray) -> None:
    """Write an array atomically: a half-written cache file is never read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.stem + ".partial.npy")
    np.save(partial, array)
    partial.replace(path)


def _load_encoders(specs, device, seed, batch_size) -> dict[str, ProbeEncoder | str]:
    """Each spec's extractor, or the reason it is unavailable (it is skipped)."""
    encoders: dict[str, ProbeEncoder | str] = {}
    for spec in specs:
        try:
            encoders[spec] = create_probe_encoder(spec, device, seed, batch_size)
        except EncoderUnavailable as err:
            warnings.warn(f"skipping encoder {spec!r}: {err}", stacklevel=3)
            encoders[spec] = f"skipped: {err}"
    names = [e.name for e in encoders.values() if isinstance(e, ProbeEncoder)]
    if len(set(names)) < len(names):
        raise ValueError(f"encoders {names} share a name; give distinct file names")
    return encoders


def _check_datasets(datasets: list[ProbeDataset], n_folds: int, seed: int) -> None:
    """Refuse duplicate names and datasets too small for the folds, up front."""
    names = [d.name for d in datasets]
    if len(set(names)) < len(names):
        raise ValueError(
            f"datasets {names} share a name; set distinct 'name:' in dataset.yaml"
        )
    for d in datasets:
        labels = d.y if d.task == "classification" else None
        try:
            make_folds(d.groups, labels, n_folds, seed)
        except ValueError as err:
            raise ValueError(f"dataset {d.name!r}: {err}") from err


def benchmark(
    encoders: Sequence[str],
    datasets: Sequence[str],
    out: str | Path,
    data_root: str | Path = DEFAULT_DATA_ROOT,
    n_folds: int = 5,
    seed: int = 0,
    max_per_dataset: int | None = None,
    device: str = "auto",
    batch_size: int = 256,
    cache: str | Path | None = None,
    progress: bool = True,
) -> list[ProbeResult]:
    """Probe every encoder on every dataset and write the table to ``out``.

    Parameters
    ----------
    encoders : sequence of str
        Encoder specs (:mod:`lemon_training.evaluate.encoders`): ``bundled``,
        ``official``, ``random``, ``handcrafted``, ``timm:NAME:WEIGHTS`` or a path.
    datasets : sequence of str
        ``crc`` or dataset folders (:mod:`lemon_training.evaluate.datasets`).
    out : path
        Output folder: tables, per-fold results and the embedding cache.
    data_root : path
        Folder holding ``crc/`` (images and ``nuclei.csv``).
    n_folds, seed : int
        Grouped folds, and the seed of fold assignment, subsampling and probes.
    max_per_dataset : int, optional
        Random subsample of each dataset's nuclei (seeded), for speed.
    cache : path, optional
        Folder of cached crops and embeddings (default ``out/cache``).

    Returns
    -------
    list of ProbeResult, datasets in order, encoders in order within each
    """
    # every dataset and encoder is checked before any long work starts
    loaded = [load_probe_dataset(s, data_root, max_per_dataset, seed) for s in datasets]
    _check_datasets(loaded, n_folds, seed)
    extractors = _load_encoders(encoders, device, seed, batch_size)
    cache = Path(cache) if cache else Path(out) / "cache"

    results: list[ProbeResult] = []
    for dataset in loaded:
        for spec, encoder in extractors.items():
            results.append(
                _probe_one(encoder, spec, dataset, cache, n_folds, seed, progress)
            )
        write_tables(results, out)  # a finished dataset is on disk
    return results


def _probe_one(encoder, spec, dataset, cache, n_folds, seed, progress) -> ProbeResult:
    """Cross-validated probe of one encoder on one dataset (or a skipped row)."""
    result = ProbeResult(
        encoder=spec if isinstance(encoder, str) else encoder.name,
        dataset=dataset.name,
        task=dataset.task,
        metric=METRICS[dataset.task],
        n_nuclei=len(dataset.nuclei),
        n_groups=len(set(dataset.groups)),
    )
    if isinstance(encoder, str):
        result.status = encoder
        return result

    features, rate = cached_features(encoder, dataset, cache, progress)
    folds = cross_validate(
        features,
        dataset.y,
        dataset.groups,
        dataset.task,
        n_folds,
        seed,
        _bar(progress, f"probe {encoder.name}", "fold"),
    )
    result.folds = [f.score for f in folds]
    result.n_train = [f.n_train for f in folds]
    result.n_test = [f.n_test for f in folds]
    result.test_groups = [f.test_groups for f in folds]
    result.encoder_key = encoder.key
    result.nuclei_per_s = rate
    return result


def add_benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``lemon-train benchmark`` arguments."""
    parser.add_argument(
        "--encoder",
        nargs="+",
        action="extend",
        required=True,
        metavar="SPEC",
        help="bundled, official, random, handcrafted, timm:NAME:WEIGHTS_FILE or a "
        ".safetensors checkpoint path (several allowed)",
    )
    parser.add_argument(
        "--dataset",
        nargs="+",
        action="extend",
        metavar="SPEC",
        help="'crc' or a dataset folder (images/, labels.csv, dataset.yaml; see "
        "training/docs/datasets.md); default: crc",
    )
    parser.add_argument(
        "--data-root",
        default=str(DEFAULT_DATA_ROOT),
        help="folder holding crc/ (default: %(default)s)",
    )
    parser.add_argument(
        "--out", default="runs/benchmark", help="output folder (default: %(default)s)"
    )
    parser.add_argument(
        "--cache", help="folder of cached crops and embeddings (default: OUT/cache)"
    )
    parser.add_argument("--folds", type=int, default=5, help="grouped folds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-per-dataset",
        type=int,
        metavar="N",
        help="random subsample of N nuclei per dataset",
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument(
        "--card",
        metavar="CHECKPOINT",
        help="also record the table in the JSON card of this checkpoint "
        "('bundled' or a .safetensors path)",
    )


def card_path(checkpoint: str) -> Path:
    """The JSON card of ``checkpoint`` ('bundled' or a .safetensors path)."""
    from napari_lemon.checkpoint import BUNDLED_NAME, WEIGHTS_DIR

    if checkpoint == "bundled":
        return WEIGHTS_DIR / f"{BUNDLED_NAME}.json"
    path = Path(checkpoint).with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(
            f"--card {checkpoint}: no card {path.name} beside it; give 'bundled' or "
            "a checkpoint written by `lemon-train export`"
        )
    return path


def record_in_card(results: list[ProbeResult], card: Path) -> None:
    """Merge the table into the card's ``benchmarks`` (one entry per dataset).

    Rows of encoders not in ``results`` are kept when the earlier entry was
    made on the same nuclei and folds; an entry from another protocol is
    replaced, with a warning.
    """
    record = json.loads(card.read_text())
    benchmarks = record.get("benchmarks") or {}
    for name, entry in card_benchmarks(results).items():
        earlier = benchmarks.get(name)
        same = ("metric", "protocol", "folds", "nuclei", "groups")
        if earlier and all(earlier.get(k) == entry[k] for k in same):
            entry["encoders"] = earlier.get("encoders", {}) | entry["encoders"]
        elif earlier:
            logger.warning(
                "%s: its %s entry came from other nuclei or folds; replaced",
                card.name,
                name,
            )
        benchmarks[name] = entry
    record["benchmarks"] = benchmarks
    card.write_text(json.dumps(record, indent=2) + "\n")


def run_benchmark(args: argparse.Namespace) -> list[ProbeResult]:
    """Run ``lemon-train benchmark`` from parsed arguments; print the table."""
    card = card_path(args.card) if args.card else None  # refused before the work
    results = benchmark(
        encoders=args.encoder,
        datasets=args.dataset or ["crc"],
        out=args.out,
        data_root=args.data_root,
        n_folds=args.folds,
        seed=args.seed,
        max_per_dataset=args.max_per_dataset,
        device=args.device,
        batch_size=args.batch_size,
        cache=args.cache,
    )
    print(markdown_table(results))
    print(f"wrote table.md, table.csv and folds.json to {args.out}")
    if card:
        record_in_card(results, card)
        print(f"recorded the table in {card}")
    return results
