"""napari sample data: the CMU-1 small region slide (Aperio SVS, 20x, CC0)."""

from __future__ import annotations

from ._reader import LayerData, slide_layer_data


def cmu1_small_region() -> list[LayerData]:
    """The sample slide as an image layer, fetched once (see ``fetch_sample``).

    Returns
    -------
    list of (data, kwargs, "image")
        The same layer data as opening the file with the napari-lemon reader.
    """
    from napari_lemon.sample_data import fetch_sample
    from napari_lemon.slide import open_slide

    return [slide_layer_data(open_slide(fetch_sample()))]
