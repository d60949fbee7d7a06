"""Export a results store, with the annotations beside it, in one call.

:func:`export_results` is what ``lemon export`` and the export panel run: it
reads the store (without its embeddings unless the format carries them), loads
the user's labels from the annotations file beside it when there is one
(warning when they seem to belong to other results), and writes one file.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ._io import read_for_export

if TYPE_CHECKING:
    from anndata import AnnData

    from ..annotations import Annotations

EXPORT_FORMATS = ("geojson", "h5ad", "csv")
_BY_SUFFIX = {".geojson": "geojson", ".json": "geojson", ".h5ad": "h5ad", ".csv": "csv"}


def format_from_name(path: str | Path) -> str | None:
    """The export format a file name implies (``.gz`` looked through), or None."""
    path = Path(path)
    if path.suffix.lower() == ".gz":
        path = path.with_suffix("")
    return _BY_SUFFIX.get(path.suffix.lower())


def check_format(fmt: str | None, out: str | Path) -> str:
    """``fmt`` checked, or taken from the name of ``out``; ValueError otherwise.

    A format that another format's extension contradicts (``csv`` into
    ``cells.geojson``) is refused: the file would open as the wrong thing.
    """
    named = format_from_name(out)
    if fmt is not None and named is not None and fmt != named:
        raise ValueError(
            f"format {fmt!r} disagrees with the name {Path(out).name!r}, which "
            f"says {named!r}; end the name in .{fmt} or choose format {named!r}"
        )
    if fmt is None:
        fmt = named
        if fmt is None:
            raise ValueError(
                f"cannot tell the export format from the name {str(out)!r}; give "
                f"one of {list(EXPORT_FORMATS)} (or end the name in .geojson, "
                ".h5ad or .csv)"
            )
    if fmt not in EXPORT_FORMATS:
        raise ValueError(
            f"export format {fmt!r} is unknown; choose one of {list(EXPORT_FORMATS)}"
        )
    return fmt


def annotations_beside(results_path: str | Path, adata: AnnData) -> Annotations | None:
    """The annotations file beside a store, checked against it; None when absent."""
    from ..annotations import Annotations, annotations_path, results_identity

    path = annotations_path(results_path)
    if not path.exists():
        return None
    annotations = Annotations.load(path)
    annotations.check_identity(results_identity(adata))
    return annotations


def export_results(
    results_path: str | Path,
    fmt: str | None,
    out: str | Path,
    gzip: bool | None = None,
) -> Path:
    """Export a results store (and the labels beside it) to one file.

    Parameters
    ----------
    results_path : str or Path
        A finished ``.zarr`` store or an ``.h5ad`` results file.
    fmt : {"geojson", "h5ad", "csv"} or None
        None takes it from the name of ``out``.
    out : str or Path
        The file to write; one that is there is replaced (atomically).
    gzip : bool, optional
        Compress; default: when ``out`` ends in ``.gz`` (for h5ad: False, and
        True compresses inside the file).

    Returns
    -------
    Path
        ``out``.
    """
    from .geojson import export_geojson
    from .tables import export_csv, export_h5ad

    fmt = check_format(fmt, out)
    out = Path(out)
    if Path(results_path).resolve() == out.resolve():
        raise ValueError(
            f"out={str(out)!r} is the results file itself; give another file name"
        )

    adata = read_for_export(results_path, embeddings=fmt == "h5ad")
    annotations = annotations_beside(results_path, adata)
    if fmt == "geojson":
        return export_geojson(adata, out, gzip=gzip, annotations=annotations)
    if fmt == "csv":
        return export_csv(adata, out, gzip=gzip, annotations=annotations)
    return export_h5ad(adata, out, annotations=annotations, gzip=bool(gzip))
