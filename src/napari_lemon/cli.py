"""The ``lemon`` command: the analysis pipeline without a GUI.

Subcommands::

    lemon analyze SLIDE [SLIDE | FOLDER ...] --out DIR
                                       DIR/<stem>.zarr results stores (resumable),
                                       DIR/<stem>.overlay.png, DIR/summary.csv
    lemon segment SLIDE --out labels.tif
    lemon embed SLIDE --points points.csv --out embeddings.h5ad [--overwrite]
    lemon embed SLIDE --nuclei outlines.geojson --out embeddings.h5ad
                                       outlines from QuPath, ImageScope, HoVer-Net,
                                       CellViT instead of segmenting
    lemon export RESULTS --format geojson|h5ad|csv --out FILE
    lemon demo [--data-dir DIR] [--out DIR]
    lemon probe train RESULTS --out PROBE.safetensors
    lemon probe apply PROBE RESULTS [RESULTS ...]

Errors the user can fix (a missing file, an unreadable slide, no pixel size, a
weights file of another model) print one ``lemon: error: ...`` line and exit with
status 2. Several slides run on Dask, one task each; a slide that fails is
reported in the summary and the command exits with status 1.

``embed`` refuses an existing ``--out``, or an annotations file beside it (the
labels of earlier results), unless ``--overwrite`` is given; the annotations are
then never written over but renamed aside
(``x.annotations.replaced-<time>.json``, :func:`napari_lemon.annotations.set_aside`)
and the command says so.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from .wording import counted

DEFAULT_DEMO_OUT = "lemon-demo"
USER_ERRORS = (OSError, ValueError)  # incl. SlideError, CheckpointError


# argument types


def positive_float(text: str) -> float:
    """An argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a positive number (microns per pixel, e.g. 0.25 for "
            "40x, 0.5 for 20x)"
        )
    return value


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def region_type(text: str) -> tuple[int, int, int, int]:
    """An argparse type: ``X,Y,W,H`` in level-0 pixels, width and height > 0."""
    parts = [p.strip() for p in text.split(",")]
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not X,Y,W,H: four whole numbers in level-0 pixels, e.g. "
            "1000,2000,1024,1024"
        ) from None
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r}: width and height must be > 0 (X,Y,W,H in level-0 pixels)"
        )
    return (x, y, w, h)


# progress and messages


class StageBars:
    """One tqdm bar per pipeline stage, fed by ``(stage, done, total)`` calls."""

    UNITS = {"crop": "nuclei", "embed": "nuclei", "tiles": "tiles"}

    def __init__(self) -> None:
        self.stage: str | None = None
        self.bar = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm import tqdm

        if stage != self.stage:
            self.close()
            unit = self.UNITS.get(stage, "step")
            self.bar = tqdm(desc=f"{stage:>7}", total=total, unit=unit, file=sys.stderr)
            self.stage = stage
        self.bar.total = total
        if done > self.bar.n:  # update() redraws only as often as tqdm allows
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.stage = None, None

    def __enter__(self) -> StageBars:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"lemon: warning: {cli_wording(str(message))}", file=sys.stderr)


def cli_wording(message: str) -> str:
    """A library message as the command line says it: flags, not parameters."""
    return message.replace("--overwrite (overwrite=True)", "--overwrite")


# outputs


def write_labels(
    path: str | Path, labels: np.ndarray, mpp: float, region: tuple[int, ...]
) -> Path:
    """Write instance labels as a uint32 TIFF with the pixel size in its tags.

    The image description (tifffile's JSON metadata) records ``region_level0``,
    the ``(x, y, width, height)`` of the slide the labels cover, and ``mpp``.
    """
    import tifffile

    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"--out {str(path)!r} must end in .tif or .tiff")
    path.parent.mkdir(parents=True, exist_ok=True)
    per_cm = 1e4 / mpp
    tifffile.imwrite(
        path,
        np.asarray(labels, dtype=np.uint32),
        photometric="minisblack",
        compression="zlib",
        resolution=(per_cm, per_cm),
        resolutionunit="CENTIMETER",
        metadata={"region_level0": [int(v) for v in region], "mpp": float(mpp)},
    )
    return path


def read_points_csv(path: str | Path):
    """Points ``(n, 2)`` and the other columns of a CSV with ``x``, ``y`` columns."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"points file {path} does not exist")
    try:
        table = pd.read_csv(path)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable CSV file ({err})") from err
    missing = [c for c in ("x", "y") if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path} lacks column(s) {missing}; it has {list(table.columns)}. Give "
            "nucleus centres as columns x, y in level-0 pixels"
        )
    if table.empty:
        raise ValueError(
            f"{path} has the columns x, y but no rows; add nucleus centres"
        )
    points = table[["x", "y"]].apply(pd.to_numeric, errors="coerce")
    points = points.to_numpy(dtype=np.float64)
    if np.isnan(points).any():
        row = int(np.isnan(points).any(axis=1).argmax())
        raise ValueError(f"{path}: row {row + 2} has a non-numeric x or y")
    return points.astype(np.float64), table.drop(columns=["x", "y"])


# subcommands


def check_out_folder(out: Path) -> None:
    """Refuse an output folder that is an existing file, before any work."""
    if out.exists() and not out.is_dir():
        raise ValueError(
            f"--out '{out}' is an existing file; give a folder for the results"
        )


def cmd_segment(args: argparse.Namespace) -> int:
    from .pipeline import run_steps, segmentation_steps
    from .slide import open_slide

    start = time.perf_counter()
    if Path(args.out).suffix.lower() not in (".tif", ".tiff"):
        raise ValueError(f"--out {args.out!r} must end in .tif or .tiff")
    if Path(args.out).is_dir():
        raise ValueError(f"--out '{args.out}' is a folder; give a .tif file name")
    with open_slide(args.input, mpp=args.mpp) as slide, StageBars() as bars:
        steps = segmentation_steps(slide, args.region, args.segmenter)
        seg = run_steps(steps, bars)
    write_labels(args.out, seg.nuclei.labels, seg.seg_mpp, seg.region)

    seconds = time.perf_counter() - start
    print(f"{len(seg.nuclei):,} nuclei, {seconds:.1f} s -> {args.out}")
    return 0


def check_embed_out(out: str | Path, overwrite: bool) -> Path:
    """``--out`` of ``lemon embed``, refused when it, or labels beside it, exist.

    Without ``overwrite`` an existing ``.h5ad`` or annotations file beside it
    (which the new results would inherit or replace) is refused, before any work.
    """
    from .annotations import annotations_path

    out = Path(out)
    if out.suffix != ".h5ad":
        raise ValueError(f"--out {str(out)!r} must end in .h5ad")
    if out.is_dir():
        raise ValueError(f"--out '{out}' is a folder; give an .h5ad file name")
    labels = annotations_path(out)
    if overwrite:
        return out
    if out.exists():
        also = f" (and the labels {labels.name} beside it)" if labels.exists() else ""
        raise ValueError(
            f"--out '{out}' exists; pass --overwrite to replace it{also}, or give "
            "another --out"
        )
    if labels.exists():
        raise ValueError(
            f"--out '{out}': the labels {labels} of earlier results lie beside it; "
            "give another --out, move that file away, or pass --overwrite to set "
            "it aside"
        )
    return out


def set_labels_aside(out: Path) -> str:
    """Rename the annotations beside ``out`` aside; a sentence saying so, or ''."""
    from .annotations import annotations_path, set_aside

    aside = set_aside(annotations_path(out))
    if aside is None:
        return ""
    return f"the labels that were beside {out.name} are kept as {aside}"


def cmd_embed(args: argparse.Namespace) -> int:
    from .checkpoint import load_encoder
    from .points import embed_points
    from .slide import open_slide, require_mpp
    from .store import write_results

    out = check_embed_out(args.out, args.overwrite)
    if args.nuclei is not None:
        from .export_command import cmd_embed_nuclei

        return cmd_embed_nuclei(args)

    start = time.perf_counter()
    points, extra = read_points_csv(args.points)
    with open_slide(args.input, mpp=args.mpp) as slide, StageBars() as bars:
        require_mpp(slide)
        encoder = load_encoder(args.model, args.device, args.precision)
        adata = embed_points(
            slide,
            points,
            encoder,
            extra_obs=extra,
            batch_size=args.batch_size,
            progress=bars,
        )
    write_results(adata, out)
    aside = set_labels_aside(out)  # they label the results just replaced

    seconds = time.perf_counter() - start
    embedded = counted(adata.n_obs, "nucleus", "nuclei")
    print(f"{embedded} embedded, {seconds:.1f} s -> {out}")
    if aside:
        print(aside)
    return 0


# parser


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="bundled",
        help="encoder weights: 'bundled', 'official' (LEMON from the model hub), "
        "a .safetensors or lemon.pth.tar file, or an org/name hub id "
        "(default: bundled)",
    )
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16", "int8", "fp16"],
        help="arithmetic of the encoder (default auto: fp16 on a GPU, the fastest "
        "precision that keeps accuracy on a CPU)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="crops per forward pass (default: chosen for the device)",
    )


def _add_segmenter_option(parser: argparse.ArgumentParser) -> None:
    from .segment import DEFAULT_SEGMENTER, SEGMENTERS

    parser.add_argument(
        "--segmenter",
        default=DEFAULT_SEGMENTER,
        choices=sorted(SEGMENTERS),
        help=f"nucleus segmenter (default {DEFAULT_SEGMENTER}; stardist and "
        "cellpose need their own packages)",
    )


def _add_analysis_options(parser: argparse.ArgumentParser) -> None:
    _add_model_options(parser)
    _add_segmenter_option(parser)
    parser.add_argument(
        "--clusters", type=positive_int, default=8, help="k-means clusters (default 8)"
    )
    _add_region_option(parser)
    parser.add_argument(
        "--tile-um",
        type=positive_float,
        default=512.0,
        help="side of the tiles a slide is processed in, in microns (default 512)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start results stores afresh instead of resuming them",
    )


def _add_cohort_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="a dask.distributed scheduler to run the slides on (default: a local "
        "cluster when there are several slides); workers must see the same paths",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="local worker processes for several slides (default: by cores and memory)",
    )


def _add_region_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--region",
        type=region_type,
        default=None,
        metavar="X,Y,W,H",
        help="analyse only this rectangle, in level-0 pixels",
    )


def _add_mpp_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mpp",
        type=positive_float,
        default=None,
        help="microns per pixel of level 0, for files that do not record it",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``lemon`` argument parser with its subcommands."""
    from . import analyze_command, export_command

    parser = argparse.ArgumentParser(
        prog="lemon", description="Find, embed and cluster nuclei in H&E slides."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    analyze = sub.add_parser(
        "analyze", help="segment, embed and cluster the nuclei of slides"
    )
    analyze.add_argument(
        "input", nargs="+", help="slide or image files, or folders of them"
    )
    analyze.add_argument("--out", required=True, help="output folder")
    _add_mpp_option(analyze)
    analyze.add_argument(
        "--estimate-mpp",
        action="store_true",
        help="for slides that record no pixel size, estimate it from nucleus size "
        "(with a warning)",
    )
    _add_analysis_options(analyze)
    _add_cohort_options(analyze)
    analyze.set_defaults(func=analyze_command.cmd_analyze)

    segment = sub.add_parser("segment", help="write nucleus instance labels")
    segment.add_argument("input", help="slide or image file")
    segment.add_argument("--out", required=True, help="labels .tif to write")
    _add_mpp_option(segment)
    _add_segmenter_option(segment)
    _add_region_option(segment)
    segment.set_defaults(func=cmd_segment)

    embed = sub.add_parser("embed", help="embed nuclei at given positions")
    embed.add_argument("input", metavar="IMAGE", help="slide or image file")
    given = embed.add_mutually_exclusive_group(required=True)
    given.add_argument("--points", help="CSV with columns x, y")
    given.add_argument(
        "--nuclei",
        metavar="FILE",
        help="outlines to embed instead of segmenting: QuPath GeoJSON, ImageScope "
        "XML, HoVer-Net or CellViT JSON (level-0 px); their classes become labels",
    )
    embed.add_argument("--out", required=True, help=".h5ad file to write")
    embed.add_argument(
        "--overwrite",
        action="store_true",
        help="replace --out when it exists; labels beside it are renamed aside "
        "(<name>.annotations.replaced-<time>.json), never written over",
    )
    _add_mpp_option(embed)
    _add_model_options(embed)
    embed.set_defaults(func=cmd_embed)

    export_command.add_parser(sub)

    from . import probe_command  # lemon probe train / apply

    probe_command.add_parser(sub)

    demo = sub.add_parser("demo", help="analyse the CMU-1 sample slide")
    demo.add_argument("--data-dir", default=None, help="folder holding the sample")
    demo.add_argument("--out", default=DEFAULT_DEMO_OUT, help="output folder")
    _add_analysis_options(demo)
    demo.set_defaults(func=analyze_command.cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``lemon``; returns the exit status (0 ok, 2 for a user error)."""
    from .segment.backends import BackendError

    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return args.func(args)
        except (*USER_ERRORS, BackendError) as err:
            print(f"lemon: error: {cli_wording(str(err))}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    sys.exit(main())
