"""The whole-slide benchmark fixture: a JPEG pyramid mosaic of real MoNuSeg tiles."""

from __future__ import annotations

import json
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_lemon.slide import open_slide

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import mosaic  # noqa: E402

SIDE = 4096


@pytest.fixture(scope="module")
def sources(shared_data):
    return mosaic.source_tiles(shared_data)


@pytest.fixture(scope="module")
def small(sources, tmp_path_factory):
    """A 4,096 px mosaic with three levels and its sidecar."""
    out = tmp_path_factory.mktemp("mosaic") / "small.tif"
    sidecar = mosaic.write_mosaic(out, SIDE, sources, 0.3, seed=3, factor=2)
    return out, sidecar


def _expected_cell(path: Path, orientation: int) -> np.ndarray:
    """The placed pixels of a source tile, computed independently of the module."""
    image = tifffile.imread(path)[20:980, 20:980, :3]
    if orientation >= 4:
        image = np.fliplr(image)
    return np.rot90(image, orientation % 4)


def test_mosaic_opens_at_quarter_micron_with_a_jpeg_pyramid(small):
    out, sidecar = small
    with open_slide(out) as slide:
        assert slide.mpp == pytest.approx(0.25)
        assert slide.dimensions == (SIDE, SIDE)
        assert slide.level_dimensions == ((4096, 4096), (2048, 2048), (1024, 1024))
        assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
    with tifffile.TiffFile(out) as tiff:
        page = tiff.pages[0]
        assert page.compression == tifffile.COMPRESSION.JPEG
        assert page.is_tiled and page.tilewidth == mosaic.TILE_PX
        assert len(page.subifds) == 2
    assert sidecar["level_downsamples"] == [1, 2, 4]
    assert json.loads(mosaic.sidecar_path(out).read_text()) == sidecar


def test_placed_tiles_match_their_sources_and_glass_elsewhere(small, sources):
    out, sidecar = small
    by_name = {path.stem: path for path in sources}
    assert sidecar["tissue_fraction_actual"] == pytest.approx(0.3, abs=0.02)
    whole = [p for p in sidecar["placements"] if p["tissue_fraction"] == 1]
    assert whole, "no cell lies wholly inside the tissue"

    with open_slide(out) as slide:
        for placed in whole[:3]:
            box = (placed["width"], placed["height"])
            read = slide.read_region((placed["x"], placed["y"]), 0, box)
            expected = _expected_cell(by_name[placed["source"]], placed["orientation"])
            error = np.abs(read.astype(int) - expected[: box[1], : box[0]])
            assert error.mean() < 6  # JPEG at quality 90
            # a different orientation of the same tile does not match
            other = _expected_cell(by_name[placed["source"]], placed["orientation"] ^ 4)
            assert np.abs(read.astype(int) - other[: box[1], : box[0]]).mean() > 15

        # glass where the mask is empty, at level 0 and at the coarsest level
        mask = mosaic.make_layout(SIDE, sources, 0.3, seed=3).mask
        row, col = np.argwhere(~mask)[0]
        glass = slide.read_region((col * 64, row * 64), 0, (64, 64))
        coarse = slide.read_region((col * 64, row * 64), 2, (16, 16))
    for pixels in (glass, coarse):
        assert np.abs(pixels.mean(axis=(0, 1)) - mosaic.GLASS).max() < 3
        assert pixels.std() < 5


def test_coarse_levels_are_block_means_of_level_0(small):
    out, sidecar = small
    placed = next(p for p in sidecar["placements"] if p["tissue_fraction"] == 1)
    with open_slide(out) as slide:
        fine = slide.read_region((placed["x"], placed["y"]), 0, (512, 512))
        coarse = slide.read_region((placed["x"], placed["y"]), 2, (128, 128))
    pooled = fine.astype(float).reshape(128, 4, 128, 4, 3).mean(axis=(1, 3))
    assert np.abs(pooled - coarse).mean() < 6


def test_same_seed_same_file_other_seed_other_layout(small, sources, tmp_path):
    out, sidecar = small
    again = mosaic.write_mosaic(tmp_path / "again.tif", SIDE, sources, 0.3, 3, 2)
    assert (tmp_path / "again.tif").read_bytes() == out.read_bytes()
    assert again["placements"] == sidecar["placements"]
    other = mosaic.make_layout(SIDE, sources, 0.3, seed=4)
    assert not np.array_equal(
        other.mask, mosaic.make_layout(SIDE, sources, 0.3, 3).mask
    )


def test_writing_never_holds_a_whole_level(sources, tmp_path):
    """Peak traced allocation: three source cells kept, one source being decoded,
    a few tiles; far below one level-0 image (50 MB here). It measures 17 MB at
    4,096 and at 8,192 px a side."""
    cells_bytes = 3 * mosaic.CELL_PX**2 * 3
    tracemalloc.start()
    try:
        mosaic.write_mosaic(tmp_path / "m.tif", SIDE, sources[:3], 0.5, seed=0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * cells_bytes + 4e6 < SIDE * SIDE * 3 / 2


def test_renderer_yields_only_tiles(sources):
    layout = mosaic.make_layout(2048, sources[:2], 0.5, seed=1)
    tiles = list(mosaic.Renderer(layout).iter_tiles(1))
    assert len(tiles) == (2048 // mosaic.TILE_PX) ** 2
    assert {tile.shape for tile in tiles} == {(mosaic.TILE_PX, mosaic.TILE_PX, 3)}


def test_level_downsamples_stop_near_a_thousand_pixels():
    assert mosaic.level_downsamples(40960, 4) == [1, 4, 16]
    assert mosaic.level_downsamples(40960, 2) == [1, 2, 4, 8, 16, 32]
    assert mosaic.level_downsamples(81920, 4) == [1, 4, 16, 64]
    assert mosaic.level_downsamples(1000, 2) == [1]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"side": 100}, r"side=100 must be at least 512"),
        ({"tissue_fraction": 0.0}, r"tissue_fraction=0\.0 must lie in \(0, 1\]"),
        ({"tissue_fraction": 1.5}, r"tissue_fraction=1\.5"),
    ],
)
def test_bad_layout_parameters_are_refused(kwargs, match):
    options = {"side": 1024, "sources": [Path("a.tif")], **kwargs}
    with pytest.raises(ValueError, match=match):
        mosaic.make_layout(**options)


def test_bad_factor_is_refused():
    with pytest.raises(ValueError, match=r"factor=3 must be 2 or 4"):
        mosaic.level_downsamples(4096, 3)


def test_missing_data_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no MoNuSeg tiles under .*--data"):
        mosaic.source_tiles(tmp_path)


def test_small_source_tiles_are_refused(tmp_path):
    tifffile.imwrite(tmp_path / "tiny.tif", np.zeros((100, 100, 3), np.uint8))
    with pytest.raises(ValueError, match=r"'.*tiny.tif' is 100x100 px"):
        mosaic._centre_crop(tmp_path / "tiny.tif")
