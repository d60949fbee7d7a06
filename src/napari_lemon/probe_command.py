"""``lemon probe``: train a linear probe from brushed labels; type saved results.

::

    lemon probe train RESULTS [--annotations FILE] --out PROBE.safetensors [--name]
    lemon probe apply PROBE RESULTS [RESULTS ...] [--name NAME]

``train`` reads the labels of the annotations file beside the results (by
nucleus id), cross-validates the probe with folds of whole tiles (or 256 um
blocks when the results hold one tile), prints the balanced accuracy and the
confusion matrix, fits it on all labels and saves it.

``apply`` streams each result's embeddings through the probe and writes the
columns of the results contract in place (``obs["probe_<name>"]``, its
``_proba``, ``obsm["probe_<name>"]``, ``uns["probe_<name>_colors"]``). Results
the probe does not suit (another encoder or crop scale, another embedding
length), or that cannot be read, are reported and skipped; the others are still
typed, and the command then exits with status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

BLOCK_UM = 256.0  # side of the spatial blocks that are CV folds' groups
BLOCK_PX_WITHOUT_MPP = 1024.0
CHUNK = 65536
NAME = re.compile(r"[A-Za-z0-9_]+")


def add_parser(sub) -> None:
    """Register ``lemon probe`` with its ``train`` and ``apply`` actions."""
    from .cli import positive_float

    probe = sub.add_parser("probe", help="train a cell-type probe; type results")
    actions = probe.add_subparsers(dest="action", required=True, metavar="ACTION")

    train = actions.add_parser("train", help="train a probe from brushed labels")
    train.add_argument("results", help=".zarr results store or .h5ad file")
    train.add_argument(
        "--annotations",
        default=None,
        metavar="FILE",
        help="labels (default: <results name>.annotations.json beside the results)",
    )
    train.add_argument("--out", required=True, help="probe .safetensors to write")
    train.add_argument("--name", default=None, help="probe name (default cell_type)")
    train.add_argument(
        "--block-um",
        type=positive_float,
        default=BLOCK_UM,
        help="side of the spatial blocks cross-validation keeps whole when the "
        f"results hold one tile, in microns (default {BLOCK_UM:g})",
    )
    train.set_defaults(func=cmd_train)

    apply = actions.add_parser("apply", help="type the nuclei of results")
    apply.add_argument("probe", help="probe .safetensors file")
    apply.add_argument("results", nargs="+", help=".zarr results stores or .h5ad files")
    apply.add_argument(
        "--name", default=None, help="name of the result columns (default: the probe's)"
    )
    apply.set_defaults(func=cmd_apply)


def _check_name(name: str | None) -> str | None:
    if name is not None and not NAME.fullmatch(name):
        raise ValueError(
            f"--name {name!r} must be letters, digits and underscores (it names "
            "the columns probe_<name>), e.g. cell_type"
        )
    return name


# apply


def cmd_apply(args: argparse.Namespace) -> int:
    """Type the nuclei of each results file; exit status 2 when any was skipped."""
    from .analysis.probe import LinearProbe

    name = _check_name(args.name)
    probe = LinearProbe.load(args.probe)
    failed = 0
    for path in args.results:
        try:
            line = apply_to(probe, Path(path), Path(args.probe), name)
        except (OSError, ValueError) as err:
            print(f"lemon: error: {err}", file=sys.stderr)
            line, failed = f"{path}: skipped", failed + 1
        print(line)
    if failed:
        print(
            f"lemon: {failed} of {len(args.results)} results not typed",
            file=sys.stderr,
        )
    return 2 if failed else 0


def apply_to(probe, path: Path, probe_path: Path, name: str | None = None) -> str:
    """Predict and write the probe's columns into one results file; a summary line."""
    from tqdm import tqdm

    from .analysis.probe import ProbeMismatch, prediction_columns
    from .store_columns import (
        embedding_shape,
        iter_embeddings,
        read_provenance,
        write_analysis,
    )

    # check before reading the embeddings
    start = time.perf_counter()
    _, provenance = read_provenance(path)
    n_rows, dim = embedding_shape(path)
    try:
        probe.check_compatible(provenance, str(path), embed_dim=dim)
    except ProbeMismatch as err:
        raise ProbeMismatch(f"{probe_path} does not suit {path}: {err}") from None

    # stream the embeddings through the probe
    proba = np.empty((n_rows, len(probe.classes)), dtype=np.float32)
    done = 0
    with tqdm(total=n_rows, desc=path.name, unit="nuclei", file=sys.stderr) as bar:
        for chunk in iter_embeddings(path, CHUNK):
            proba[done : done + len(chunk)] = probe.predict_proba(chunk)
            done += len(chunk)
            bar.update(len(chunk))

    # write
    columns = prediction_columns(probe, proba, name)
    write_analysis(path, **columns)
    shares = np.bincount(proba.argmax(axis=1), minlength=len(probe.classes))
    shares = ", ".join(
        f"{c} {100 * s / max(n_rows, 1):.0f}%"
        for c, s in zip(probe.classes, shares, strict=True)
    )
    seconds = time.perf_counter() - start
    key = next(iter(columns["obs"]))
    return (
        f"{path}: {n_rows:,} nuclei typed ({shares}), {seconds:.1f} s -> obs[{key!r}]"
    )


# train


def cmd_train(args: argparse.Namespace) -> int:
    """Cross-validate and fit a probe on the labels of one result; save it."""
    from .analysis.probe import cross_validate, fit_probe
    from .annotations import Annotations, annotations_path, results_identity
    from .store_columns import read_embedding_rows, read_obs_columns, read_provenance

    name = _check_name(args.name) or "cell_type"
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {args.out!r} must end in .safetensors")
    results = Path(args.results)

    # labels, by nucleus id
    n_obs, provenance = read_provenance(results)
    source = Path(args.annotations or annotations_path(results))
    annotations = Annotations.load(source)
    annotations.check_identity(results_identity((n_obs, provenance)))
    obs = read_obs_columns(results, ["nucleus_id", "x", "y", "tile_id"])
    names = annotations.labels_for(obs["nucleus_id"])
    rows = np.flatnonzero(names != "")
    if annotations.labels() and not len(rows):
        raise ValueError(
            f"{source} labels {len(annotations.labels())} nuclei but none of them "
            f"is among the nuclei of {results}; give the annotations of these results"
        )

    # groups: tiles, or spatial blocks
    groups, grouped_by = _groups(obs, rows, provenance, args.block_um)

    # cross-validate, fit, save
    embeddings = read_embedding_rows(results, rows)
    labels, classes = names[rows], annotations.type_names()
    colours = [annotations.colour_of(c) for c in classes]
    metrics = cross_validate(embeddings, labels, groups, classes=classes)
    probe = fit_probe(
        embeddings,
        labels,
        classes=classes,
        colours=colours,
        name=name,
        provenance=provenance,
        metrics=metrics,
    )
    probe.save(out)

    print(_report(metrics, grouped_by))
    counts = ", ".join(f"{c} {n}" for c, n in probe.n_labels.items())
    print(f"probe {probe.name!r} of {len(rows):,} labels ({counts}) -> {out}")
    return 0


def _groups(obs, rows, provenance, block_um):
    """CV groups of the labelled rows: tiles when there are several, else blocks."""
    from .analysis.probe import region_groups

    tiles = obs["tile_id"]
    if len(np.unique(tiles)) > 1:
        return tiles[rows], "tiles"
    mpp = provenance.get("mpp")
    block_px = block_um / mpp if mpp else BLOCK_PX_WITHOUT_MPP
    what = f"{block_um:g} um blocks" if mpp else f"{block_px:g} px blocks (no mpp)"
    return region_groups(obs["x"][rows], obs["y"][rows], block_px), what


def _report(metrics, grouped_by: str) -> str:
    """Balanced accuracy and the confusion matrix as lines of text."""
    lines = [f"cross-validation ({grouped_by}): {metrics.message}"]
    if metrics.balanced_accuracy is None:
        return lines[0]
    width = max(len(c) for c in metrics.classes) + 2
    lines.append("confusion (rows: labelled as, columns: predicted as)")
    lines.append(" " * width + "".join(f"{c[:10]:>11}" for c in metrics.classes))
    for cls, row in zip(metrics.classes, metrics.confusion, strict=True):
        lines.append(f"{cls:<{width}}" + "".join(f"{v:>11d}" for v in row))
    return "\n".join(lines)
