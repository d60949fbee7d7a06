"""napari-lemon: single-cell analysis of H&E slides with LEMON nucleus embeddings."""

__version__ = "0.1.0"
