"""Results out to the formats the field uses, and nuclei in from other tools.

Exports (:func:`export_results` reads a store and the annotations beside it):

- QuPath GeoJSON (:func:`export_geojson`): one detection per nucleus with its
  outline, classification and measurements;
- AnnData .h5ad (:func:`export_h5ad`) for scanpy / squidpy, labels included;
- CSV (:func:`export_csv`): one row per nucleus, no embeddings.

Imports (:func:`read_nuclei_file`) read outlines made elsewhere (QuPath GeoJSON,
Aperio ImageScope XML, HoVer-Net and CellViT JSON) as :class:`ImportedNuclei`,
which :func:`imported_results` embeds instead of running our segmenter.
"""

from __future__ import annotations

from .geojson import export_geojson
from .importers import (
    IMPORT_FORMATS,
    ImportedNuclei,
    annotations_from_imported,
    imported_results,
    read_nuclei_file,
)
from .results import EXPORT_FORMATS, export_results, format_from_name
from .tables import export_csv, export_h5ad

__all__ = [
    "EXPORT_FORMATS",
    "IMPORT_FORMATS",
    "ImportedNuclei",
    "annotations_from_imported",
    "export_csv",
    "export_geojson",
    "export_h5ad",
    "export_results",
    "format_from_name",
    "imported_results",
    "read_nuclei_file",
]
