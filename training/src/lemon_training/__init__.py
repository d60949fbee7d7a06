"""lemon-training: train, evaluate and export LEMON nucleus encoders.

Imports the encoder definition and the crop code of ``napari_lemon``; never napari.
"""

__version__ = "0.1.0"
