"""``lemon probe``: train a linear probe from brushed labels; type saved results.

::

    lemon probe train RESULTS [--annotations FILE] --out PROBE.safetensors [--name]
                      [--overwrite]
    lemon probe apply PROBE RESULTS [RESULTS ...] [--name NAME]

``train`` reads the labels of the annotations file beside the results (by
nucleus id), cross-validates the probe with folds of whole regions (square
blocks of ``--block-um`` microns, 250 by default: the same folds as the cell
types panel, so both report the same accuracy for the same labels), prints the
balanced accuracy in the panel's words and the confusion matrix, fits it on all
labels and saves it (an existing ``--out`` is kept unless ``--overwrite``).
Labels of nuclei the results do not hold are left out with a warning.

``apply`` streams each result's embeddings through the probe and writes the
columns of the results contract in place (``obs["probe_<name>"]``, its
``_proba``, ``obsm["probe_<name>"]``, ``uns["probe_<name>_colors"]``). Results
the probe does not suit (another encoder or crop scale, another embedding
length), that cannot be read, or that cannot be written (checked before
predicting), are reported and skipped; the others are still typed, and the
command then exits with status 2.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

# napari_lemon.analysis.probe.CV_BLOCK_UM, spelled out so that `lemon --help`
# does not import the probe (and anndata)
BLOCK_UM = 250.0
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
    train.add_argument(
        "--overwrite", action="store_true", help="replace --out when it exists"
    )
    train.add_argument("--name", default=None, help="probe name (default cell_type)")
    train.add_argument(
        "--block-um",
        type=positive_float,
        default=BLOCK_UM,
        help="side of the square regions cross-validation keeps whole, in microns "
        f"(default {BLOCK_UM:g}, as in the cell types panel)",
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
        check_writable,
        embedding_shape,
        iter_embeddings,
        read_provenance,
        write_analysis,
    )
    from .wording import counted

    # check before reading the embeddings
    start = time.perf_counter()
    _, provenance = read_provenance(path)
    n_rows, dim = embedding_shape(path)
    try:
        probe.check_compatible(provenance, str(path), embed_dim=dim)
    except ProbeMismatch as err:
        raise ProbeMismatch(f"{probe_path} does not suit {path}: {err}") from None
    check_writable(path)

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
    typed = counted(n_rows, "nucleus", "nuclei")
    return f"{path}: {typed} typed ({shares}), {seconds:.1f} s -> obs[{key!r}]"


# train


def cmd_train(args: argparse.Namespace) -> int:
    """Cross-validate and fit a probe on the labels of one result; save it."""
    from .analysis.probe import NotEnoughLabels, cross_validate, fit_probe
    from .store_columns import read_embedding_rows, read_obs_columns, read_provenance
    from .wording import counted

    name = _check_name(args.name) or "cell_type"
    out = Path(args.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out {args.out!r} must end in .safetensors")
    if out.exists() and not args.overwrite:
        raise ValueError(
            f"--out '{out}' exists; pass --overwrite to replace it, or choose "
            "another file"
        )
    results = Path(args.results)

    # labels, by nucleus id
    n_obs, provenance = read_provenance(results)
    annotations, source = _annotations_of(results, args.annotations, n_obs, provenance)
    obs = read_obs_columns(results, ["nucleus_id", "x", "y"])
    names = annotations.labels_for(obs["nucleus_id"])
    rows = np.flatnonzero(names != "")
    _check_labels_found(annotations, rows, source, results)

    # cross-validate over regions, as the panel does; fit, save
    groups = _groups(obs, rows, provenance, args.block_um)
    embeddings = read_embedding_rows(results, rows)
    labels, classes = names[rows], annotations.type_names()
    colours = [annotations.colour_of(c) for c in classes]
    try:
        metrics = cross_validate(embeddings, labels, groups, classes=classes)
    except NotEnoughLabels as err:
        raise ValueError(
            f"{source}: a probe needs labels of at least two types; {err.why}. "
            "Label nuclei of a second type (in the LEMON cell types panel), then "
            "train again"
        ) from None
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

    print(_report(metrics))
    counts = ", ".join(f"{c} {n}" for c, n in probe.n_labels.items())
    print(f"probe {probe.name!r} of {counted(len(rows), 'label')} ({counts}) -> {out}")
    return 0


def _annotations_of(results: Path, given: str | None, n_obs: int, provenance: dict):
    """The annotations to train from, checked against the results; and their path."""
    from .annotations import Annotations, annotations_path, results_identity

    source = Path(given or annotations_path(results))
    if not source.is_file():
        where = "" if given else f" (looked for beside {results})"
        raise FileNotFoundError(
            f"annotations file {source} does not exist{where}. Labels are made in "
            "the LEMON cell types panel, which saves them beside the results, or "
            "come with `lemon embed IMAGE --nuclei FILE` from classified outlines "
            "(QuPath GeoJSON); or give --annotations FILE"
        )
    try:
        annotations = Annotations.load(source)
    except ValueError as err:
        if not given:
            raise
        message = str(err).split("; ")[0]  # not the panel's "move it away"
        raise ValueError(
            f"--annotations {message}; give a labels file of the LEMON cell types "
            "panel (<results>.annotations.json)"
        ) from None
    annotations.check_identity(results_identity((n_obs, provenance)))
    return annotations, source


def _check_labels_found(annotations, rows: np.ndarray, source: Path, results: Path):
    """ValueError when no label is of these results; a warning when some are not."""
    from .wording import counted

    n_labels = len(annotations.labels())
    if n_labels and not len(rows):
        raise ValueError(
            f"{source} labels {counted(n_labels, 'nucleus', 'nuclei')} but none of "
            f"them is among the nuclei of {results}; give the annotations of these "
            "results"
        )
    missing = n_labels - len(rows)
    if missing:
        warnings.warn(
            f"{source}: {missing} of {n_labels} labelled nuclei are not among the "
            f"nuclei of {results} and are left out; the annotations may be of "
            "other results",
            stacklevel=3,
        )


def _groups(obs, rows, provenance, block_um: float) -> np.ndarray:
    """CV groups of the labelled rows: square regions of ``block_um``, as the panel.

    NOTE: the panel takes 1 um per px when the pixel size is unknown; so does
    this, so that both fold the same labels alike.
    """
    from .analysis.probe import region_groups

    block_px = block_um / (provenance.get("mpp") or 1.0)
    return region_groups(obs["x"][rows], obs["y"][rows], block_px)


def _report(metrics) -> str:
    """Balanced accuracy as the panel words it, and the confusion matrix."""
    from .analysis.probe import metrics_summary

    line, note = metrics_summary(metrics)
    lines = [line] + ([note] if note else [])
    if metrics.balanced_accuracy is None:
        return "\n".join(lines)
    width = max(len(c) for c in metrics.classes) + 2
    lines.append("confusion (rows: labelled as, columns: predicted as)")
    lines.append(" " * width + "".join(f"{c[:10]:>11}" for c in metrics.classes))
    for cls, row in zip(metrics.classes, metrics.confusion, strict=True):
        lines.append(f"{cls:<{width}}" + "".join(f"{v:>11d}" for v in row))
    return "\n".join(lines)
