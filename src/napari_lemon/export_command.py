"""``lemon export`` and ``lemon embed --nuclei``: results out, outlines in.

::

    lemon export RESULTS --format geojson|h5ad|csv --out FILE [--gzip] [--overwrite]
    lemon embed IMAGE --nuclei FILE --out OUT.h5ad [--mpp MPP] [--overwrite]

``export`` reads a results store (``.zarr`` or ``.h5ad``) and the annotations
beside it and writes one file (:func:`napari_lemon.export.export_results`). The
format defaults to the one the name of ``--out`` implies. An existing ``--out``
is refused unless ``--overwrite`` is given, so an export never replaces a file
(perhaps edited in QuPath) by accident; the file is written under a temporary
name and renamed when complete.

``embed --nuclei`` embeds nuclei outlined by another tool (QuPath GeoJSON,
ImageScope XML, HoVer-Net or CellViT JSON) instead of segmenting: the results go
to ``OUT.h5ad`` and, when the file classifies its nuclei, the classes become
labels in the annotations file beside it. An existing ``OUT.h5ad``, or labels
beside it, are refused unless ``--overwrite`` is given, and labels are then
renamed aside, never written over (:func:`napari_lemon.cli.check_embed_out`). A
plain image that records no pixel size takes the ``MicronsPerPixel`` of an
ImageScope file, with a warning, unless ``--mpp`` is given.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

# napari_lemon.export.EXPORT_FORMATS, spelled out so that `lemon --help` does not
# import the exporters
FORMATS = ("geojson", "h5ad", "csv")


def add_parser(sub) -> argparse.ArgumentParser:
    """Register ``lemon export`` on the subcommands of the ``lemon`` parser."""
    export = sub.add_parser(
        "export", help="write results as QuPath GeoJSON, AnnData (.h5ad) or CSV"
    )
    export.add_argument("results", metavar="RESULTS", help=".zarr or .h5ad results")
    export.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="default: from the name of --out (.geojson, .h5ad, .csv; .gz allowed)",
    )
    export.add_argument("--out", required=True, help="the file to write")
    export.add_argument(
        "--gzip",
        action="store_true",
        default=None,
        help="compress (default: when --out ends in .gz; for h5ad, inside the file)",
    )
    export.add_argument(
        "--overwrite", action="store_true", help="replace --out when it exists"
    )
    export.set_defaults(func=cmd_export)
    return export


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_results
    from .export.results import check_format

    start = time.perf_counter()
    out = Path(args.out)
    if not Path(args.results).exists():
        raise FileNotFoundError(
            f"results {args.results} do not exist; give the .zarr store or .h5ad "
            "file of `lemon analyze` or `lemon embed`"
        )
    if out.resolve() == Path(args.results).resolve():
        raise ValueError(
            f"--out '{out}' is the results file itself; give another file name"
        )
    if out.is_dir():
        raise ValueError(f"--out '{out}' is a folder; give a file name")
    fmt = check_format(args.format, out)
    if out.exists() and not args.overwrite:
        raise ValueError(f"--out '{out}' exists; pass --overwrite to replace it")

    export_results(args.results, fmt, out, gzip=args.gzip)
    size = out.stat().st_size / 1e6
    seconds = time.perf_counter() - start
    print(f"{fmt}, {size:.1f} MB, {seconds:.1f} s -> {out}")
    return 0


def cmd_embed_nuclei(args: argparse.Namespace) -> int:
    """``lemon embed IMAGE --nuclei FILE --out OUT.h5ad``."""
    from .annotations import annotations_path, results_identity
    from .checkpoint import load_encoder
    from .cli import StageBars, check_embed_out, set_labels_aside
    from .export import annotations_from_imported, imported_results, read_nuclei_file
    from .store import write_results
    from .wording import counted

    start = time.perf_counter()
    out = check_embed_out(args.out, args.overwrite)
    imported = read_nuclei_file(args.nuclei)

    with _open_image(args.input, args.mpp, imported) as slide, StageBars() as bars:
        encoder = load_encoder(args.model, args.device, args.precision)
        adata = imported_results(
            slide, imported, encoder=encoder, batch_size=args.batch_size, progress=bars
        )
    write_results(adata, out)
    aside = set_labels_aside(out)  # the labels of the results just replaced
    labels = annotations_path(out)
    ids = adata.obs["nucleus_id"].to_numpy()
    annotations = annotations_from_imported(
        imported, results_identity(adata), labels, nucleus_ids=ids
    )

    seconds = time.perf_counter() - start
    n_skipped = int(adata.uns["lemon"]["segmenter"]["params"]["skipped"])
    skipped = f" ({n_skipped:,} skipped)" if n_skipped else ""
    typed = ""
    if annotations:
        typed = f", {counted(len(annotations.types), 'cell type')} -> {labels}"
    print(
        f"{counted(adata.n_obs, 'nucleus', 'nuclei')} of {Path(args.nuclei).name}"
        f"{skipped} embedded, {seconds:.1f} s -> {out}{typed}"
    )
    if aside:
        print(aside)
    return 0


def _open_image(path, mpp, imported):
    """The slide, with the pixel size of the nuclei file when it records none."""
    from .slide import open_slide

    slide = open_slide(path, mpp=mpp)
    if slide.mpp is None and mpp is None and imported.mpp:
        slide.close()
        warnings.warn(
            f"'{Path(path).name}' records no pixel size; using MicronsPerPixel="
            f"{imported.mpp:g} of {Path(imported.source).name} (pass --mpp to "
            "override)",
            stacklevel=2,
        )
        slide = open_slide(path, mpp=imported.mpp)
    return slide
