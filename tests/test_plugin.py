"""napari plugin surface without a viewer: manifest, reader and sample data."""

from __future__ import annotations

import importlib

import dask.array as da
import numpy as np
import pytest
import tifffile

from napari_lemon._reader import napari_get_reader, read_slide
from napari_lemon._sample_data import cmu1_small_region
from napari_lemon.sample_data import DATA_DIR_ENV

CMU1_MPP = 0.499
CMU1_SHAPE = (2967, 2220, 3)  # rows, cols: 2220 px wide, 2967 px tall


def test_manifest_is_valid_and_names_its_contributions():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-lemon")
    contributions = manifest.contributions

    assert [w.display_name for w in contributions.widgets] == [
        "LEMON nuclei",
        "LEMON cell types",
        "LEMON clusters",
        "LEMON morphology map",
        "LEMON import and export",
    ]
    assert [s.key for s in contributions.sample_data] == ["cmu1_small_region"]
    patterns = set(contributions.readers[0].filename_patterns)
    assert {"*.svs", "*.tif", "*.ndpi", "*.png", "*.jpg"} <= patterns


def test_manifest_commands_import():
    from npe2 import PluginManifest

    for command in PluginManifest.from_distribution(
        "napari-lemon"
    ).contributions.commands:
        module, name = command.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), name))


@pytest.mark.parametrize("name", ["notes.txt", "slide.czi", "table.csv"])
def test_reader_declines_unsupported_files(tmp_path, name):
    path = tmp_path / name
    path.write_text("not an image")

    assert napari_get_reader(str(path)) is None


def test_reader_declines_folders_missing_files_and_several_paths(tmp_path):
    image = tmp_path / "a.tif"
    tifffile.imwrite(image, np.zeros((8, 8, 3), np.uint8), photometric="rgb")

    assert napari_get_reader(str(tmp_path)) is None
    assert napari_get_reader(str(tmp_path / "missing.svs")) is None
    assert napari_get_reader([str(image), str(image)]) is None
    assert napari_get_reader([str(image)]) is read_slide


def test_reader_opens_a_tiff_without_resolution_in_pixels_with_a_warning(tmp_path):
    path = tmp_path / "plain.tif"
    pixels = np.random.default_rng(0).integers(0, 256, (40, 60, 3), np.uint8)
    tifffile.imwrite(path, pixels, photometric="rgb")

    with pytest.warns(UserWarning, match="records no pixel size"):
        [(data, kwargs, kind)] = napari_get_reader(str(path))(str(path))

    assert kind == "image" and kwargs["multiscale"] is False
    assert "scale" not in kwargs and kwargs["metadata"]["mpp"] is None
    np.testing.assert_array_equal(np.asarray(data), pixels)


def test_reader_gives_the_derived_pyramid_as_lazy_multiscale(shared_data):
    path = shared_data / "wsi" / "CMU-1-Small-Region_pyramid_DERIVED.tiff"

    [(data, kwargs, kind)] = napari_get_reader(str(path))(str(path))

    assert kind == "image" and kwargs["multiscale"] is True and kwargs["rgb"]
    assert len(data) == 4 and all(isinstance(level, da.Array) for level in data)
    assert data[0].shape == CMU1_SHAPE and data[0].dtype == np.uint8
    assert [level.shape[0] for level in data] == sorted(
        (level.shape[0] for level in data), reverse=True
    )
    assert kwargs["scale"] == pytest.approx((CMU1_MPP, CMU1_MPP), abs=1e-3)
    assert kwargs["units"] == ("um", "um")
    assert kwargs["metadata"]["lemon_slide_path"] == str(path)
    assert kwargs["name"] == path.name


def test_reader_gives_a_single_level_svs_as_one_lazy_array(shared_data):
    path = shared_data / "wsi" / "CMU-1-Small-Region.svs"

    [(data, kwargs, _)] = read_slide(str(path))

    assert isinstance(data, da.Array) and kwargs["multiscale"] is False
    assert kwargs["metadata"]["mpp"] == pytest.approx(CMU1_MPP, abs=1e-3)


def test_reader_warns_for_the_tcga_slide_without_mpp(shared_data):
    path = shared_data / "wsi" / "tcga-cr-7395-01a-01-ts1.svs"

    with pytest.warns(UserWarning, match="mpp"):
        [(data, kwargs, _)] = read_slide(str(path))

    assert kwargs["multiscale"] is True and len(data) == 2
    assert "scale" not in kwargs


def test_sample_data_is_the_cmu1_slide_from_lemon_data_dir(shared_data, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(shared_data / "wsi"))

    [(data, kwargs, kind)] = cmu1_small_region()

    assert kind == "image" and kwargs["name"] == "CMU-1-Small-Region.svs"
    assert data.shape == CMU1_SHAPE
    assert kwargs["scale"] == pytest.approx((CMU1_MPP, CMU1_MPP), abs=1e-3)


def test_sample_data_names_the_folder_that_lacks_the_slide(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))

    with pytest.raises(FileNotFoundError, match="does not hold CMU-1-Small-Region"):
        cmu1_small_region()
