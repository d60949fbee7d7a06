"""napari panels of napari-lemon (Qt lives here only)."""

from .analysis_widget import AnalysisWidget

__all__ = ["AnalysisWidget"]
