"""StarDist and Cellpose adapters: missing packages and weights give clear errors;
the conversions are checked with fake modules standing in for the libraries."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

from napari_lemon.segment import backends, create_segmenter
from napari_lemon.segment.backends import (
    BackendError,
    CellposeParams,
    StarDistParams,
    segment_cellpose,
    segment_stardist,
)


@pytest.fixture(autouse=True)
def fresh_model_caches():
    backends._stardist_model.cache_clear()
    backends._cellpose_model.cache_clear()
    yield
    backends._stardist_model.cache_clear()
    backends._cellpose_model.cache_clear()


def block_import(monkeypatch, *names: str) -> None:
    """Make ``import name`` fail as if the package were not installed."""
    for name in names:
        monkeypatch.setitem(sys.modules, name, None)


def install_fake(monkeypatch, dotted: str, **attributes) -> types.ModuleType:
    """Register a fake module (and its parent package) under ``dotted``."""
    parent, _, child = dotted.partition(".")
    package = types.ModuleType(parent)
    module = types.ModuleType(dotted)
    for key, value in attributes.items():
        setattr(module, key, value)
    setattr(package, child, module)
    monkeypatch.setitem(sys.modules, parent, package)
    monkeypatch.setitem(sys.modules, dotted, module)
    return module


def square_labels(shape: tuple[int, int]) -> np.ndarray:
    """Two square nuclei: 10x10 at the top left, 6x6 further in."""
    labels = np.zeros(shape, np.int32)
    labels[10:20, 10:20] = 3
    labels[30:36, 40:46] = 8
    return labels


class FakeStarDist2D:
    """Records what it is given; returns two squares at the size it was given."""

    calls: list = []

    def __init__(self, config=None, name=None, basedir=None):
        self.source = (name, basedir)

    @classmethod
    def from_pretrained(cls, name):
        if name != "2D_versatile_he":
            raise ValueError(f"no pretrained model {name!r}")
        return cls(name=name)

    def predict_instances(self, image, prob_thresh=None, nms_thresh=None):
        FakeStarDist2D.calls.append((image, prob_thresh, nms_thresh))
        return square_labels(image.shape[:2]), {}


class FakeCellposeModel:
    calls: list = []

    def __init__(self, gpu=False, pretrained_model="cpsam"):
        if str(pretrained_model).endswith(".missing"):
            raise FileNotFoundError(pretrained_model)
        self.gpu = gpu

    def eval(self, image, diameter=None):
        FakeCellposeModel.calls.append((image, diameter))
        return square_labels(image.shape[:2]), None, None


def he_image(side: int = 80) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(100, 250, (side, side, 3), dtype=np.uint8)


# --- missing packages and weights -------------------------------------------------


def test_missing_stardist_says_how_to_install(monkeypatch):
    block_import(monkeypatch, "stardist", "stardist.models")
    with pytest.raises(
        BackendError, match=r"needs the 'stardist' package.*pip install"
    ):
        segment_stardist(he_image(), 0.25)


def test_missing_cellpose_says_how_to_install(monkeypatch):
    block_import(monkeypatch, "cellpose", "cellpose.models")
    with pytest.raises(
        BackendError, match=r"needs the 'cellpose' package.*pip install"
    ):
        create_segmenter("cellpose")(he_image(), 0.5)


def test_missing_stardist_weights_are_explained(monkeypatch):
    install_fake(monkeypatch, "stardist.models", StarDist2D=FakeStarDist2D)
    with pytest.raises(
        BackendError, match=r"could not load model='2D_paper_dsb'.*internet"
    ):
        segment_stardist(he_image(), 0.25, StarDistParams(model="2D_paper_dsb"))


def test_unknown_stardist_name_returning_none_is_explained(monkeypatch):
    class Quiet(FakeStarDist2D):
        @classmethod
        def from_pretrained(cls, name):
            return None

    install_fake(monkeypatch, "stardist.models", StarDist2D=Quiet)
    with pytest.raises(BackendError, match=r"model='nope' \(unknown name\)"):
        segment_stardist(he_image(), 0.25, StarDistParams(model="nope"))


def test_missing_cellpose_weights_are_explained(monkeypatch):
    install_fake(monkeypatch, "cellpose.models", CellposeModel=FakeCellposeModel)
    params = CellposeParams(model="weights.missing")
    with pytest.raises(BackendError, match=r"model='weights.missing'.*path of weights"):
        segment_cellpose(he_image(), 0.5, params)


@pytest.mark.parametrize(
    ("cls", "field", "match"),
    [
        (StarDistParams, "working_mpp", r"working_mpp=0 must be a positive number"),
        (CellposeParams, "diameter_um", r"diameter_um=0 must be a positive number"),
    ],
)
def test_bad_backend_parameters_are_refused(cls, field, match):
    with pytest.raises(ValueError, match=match):
        cls(**{field: 0})


def test_grey_image_is_refused_by_a_backend():
    with pytest.raises(ValueError, match=r"shape \(8, 8\).*expected RGB uint8"):
        segment_stardist(np.zeros((8, 8), np.uint8), 0.25)


# --- conversions, with fake libraries ---------------------------------------------


def test_stardist_sees_a_normalised_image_at_its_scale_and_labels_come_back(
    monkeypatch,
):
    install_fake(monkeypatch, "stardist.models", StarDist2D=FakeStarDist2D)
    FakeStarDist2D.calls.clear()
    nuclei = segment_stardist(he_image(80), mpp=0.5, params=StarDistParams())

    # 0.5 um/px input is upsampled 2x for a 0.25 um/px model, values in ~0..1
    ((seen, prob, nms),) = FakeStarDist2D.calls
    assert seen.shape == (160, 160, 3) and seen.dtype == np.float32
    assert np.percentile(seen, 1) == pytest.approx(0, abs=1e-3)
    assert np.percentile(seen, 99.8) == pytest.approx(1, abs=1e-3)
    assert prob is None and nms is None

    # labels back on the input grid (halved), areas in um2 of the input
    assert nuclei.labels.shape == (80, 80)
    np.testing.assert_array_equal(nuclei.label_ids, [3, 8])
    np.testing.assert_allclose(nuclei.area_um2, [5 * 5 * 0.25, 3 * 3 * 0.25])
    np.testing.assert_allclose(nuclei.centroids_xy[0], [7.0, 7.0])


def test_stardist_model_folder_and_thresholds_are_passed_on(monkeypatch, tmp_path):
    install_fake(monkeypatch, "stardist.models", StarDist2D=FakeStarDist2D)
    FakeStarDist2D.calls.clear()
    folder = tmp_path / "my_model"
    folder.mkdir()
    params = StarDistParams(model=str(folder), prob_thresh=0.6, nms_thresh=0.2)
    segment_stardist(he_image(40), 0.25, params)
    assert backends._stardist_model(str(folder)).source == ("my_model", str(tmp_path))
    assert FakeStarDist2D.calls[0][1:] == (0.6, 0.2)


def test_cellpose_gets_the_diameter_in_its_pixels(monkeypatch):
    install_fake(monkeypatch, "cellpose.models", CellposeModel=FakeCellposeModel)
    FakeCellposeModel.calls.clear()
    nuclei = segment_cellpose(he_image(100), mpp=0.25, params=CellposeParams())

    ((seen, diameter),) = FakeCellposeModel.calls
    assert seen.shape == (50, 50, 3)  # 0.25 -> 0.5 um/px
    assert diameter == pytest.approx(8.0 / 0.5)
    assert nuclei.labels.shape == (100, 100)
    np.testing.assert_allclose(nuclei.area_um2, [100 * 0.25, 36 * 0.25])


def test_backends_are_registered():
    from napari_lemon.segment import SEGMENTERS

    assert {"stardist", "cellpose"} <= set(SEGMENTERS)
    with pytest.raises(ValueError, match="segmenter 'cellpose'.*unexpected keyword"):
        create_segmenter("cellpose", threshold=3)
