"""Slide reading: synthetic pyramids written here, and real slides from shared data."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
from PIL import Image
from tifffile.zarr import ZarrTiffStore

from napari_lemon.slide import (
    IMAGE_SUFFIXES,
    SLIDE_SUFFIXES,
    UNREADABLE,
    Slide,
    SlideError,
    open_slide,
    require_mpp,
)

WIDTH, HEIGHT, MPP = 800, 600, 0.25


def make_rgb(rows: int = HEIGHT, cols: int = WIDTH, seed: int = 0) -> np.ndarray:
    """A smooth random RGB image (smooth so that downsampled levels are close)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (rows // 50 + 1, cols // 50 + 1, 3), np.uint8)
    return np.kron(coarse, np.ones((50, 50, 1), np.uint8))[:rows, :cols]


def write_pyramid(path, image, layout="pages", unit="CENTIMETER", mpp=MPP, levels=3):
    """A tiled, lossless pyramidal TIFF with ``levels`` levels halving each time."""
    resolution = (1e4 / mpp, 1e4 / mpp) if unit == "CENTIMETER" else (72, 72)
    options = dict(tile=(128, 128), photometric="rgb", compression="zlib")
    with tifffile.TiffWriter(path) as tiff:
        subifds = levels - 1 if layout == "subifds" else None
        tiff.write(
            image,
            resolution=resolution,
            resolutionunit=unit,
            subifds=subifds,
            **options,
        )
        for level in range(1, levels):
            step = 2**level
            tiff.write(image[::step, ::step], subfiletype=1, **options)
    return path


@pytest.fixture
def pyramid_path(tmp_path):
    return write_pyramid(tmp_path / "pyramid.tif", make_rgb())


@pytest.fixture
def zarr_reads(monkeypatch):
    """Keys of the TIFF chunks decoded through zarr, recorded as they are read."""
    keys: list[str] = []
    original = ZarrTiffStore.get

    async def counting_get(self, key, *args, **kwargs):
        if not key.rsplit("/", 1)[-1].startswith((".z", "zarr.json")):
            keys.append(key)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(ZarrTiffStore, "get", counting_get)
    return keys


# --- synthetic pyramids ---------------------------------------------------------


@pytest.mark.parametrize("layout", ["pages", "subifds"])
def test_synthetic_pyramid_geometry_and_mpp(tmp_path, layout):
    path = write_pyramid(tmp_path / f"{layout}.tif", make_rgb(), layout=layout)
    with open_slide(path) as slide:
        assert slide.dimensions == (WIDTH, HEIGHT)
        assert slide.level_count == 3
        assert slide.level_dimensions == ((800, 600), (400, 300), (200, 150))
        assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        assert slide.mpp == pytest.approx(MPP)


def test_mpp_argument_overrides_the_file(pyramid_path):
    assert open_slide(pyramid_path, mpp=0.5).mpp == 0.5


def test_inch_resolution_tags_give_no_mpp(tmp_path):
    """72 dpi from an ordinary image writer is not a microscope pixel size."""
    path = write_pyramid(tmp_path / "screen.tif", make_rgb(), unit="INCH", levels=1)
    assert open_slide(path).mpp is None


def test_read_region_matches_each_level(pyramid_path):
    image = make_rgb()
    with open_slide(pyramid_path) as slide:
        np.testing.assert_array_equal(
            slide.read_region((100, 40), 0, (300, 200)), image[40:240, 100:400]
        )
        # location is level 0: (100, 40) is pixel (50, 20) of level 1
        level1 = image[::2, ::2]
        np.testing.assert_array_equal(
            slide.read_region((100, 40), 1, (64, 32)), level1[20:52, 50:114]
        )


def test_read_region_pads_outside_the_slide_with_white(pyramid_path):
    image = make_rgb()
    with open_slide(pyramid_path) as slide:
        region = slide.read_region((-10, -20), 0, (30, 40))
        corner = slide.read_region((WIDTH - 5, HEIGHT - 5), 0, (10, 10))
        beyond = slide.read_region((5000, 5000), 2, (8, 8))
    assert region.shape == (40, 30, 3) and region.dtype == np.uint8
    assert (region[:20] == 255).all() and (region[:, :10] == 255).all()
    np.testing.assert_array_equal(region[20:, 10:], image[:20, :20])
    np.testing.assert_array_equal(corner[:5, :5], image[-5:, -5:])
    assert (corner[5:] == 255).all() and (corner[:, 5:] == 255).all()
    assert (beyond == 255).all()


def test_read_region_rejects_a_bad_level(pyramid_path):
    with pytest.raises(ValueError, match=r"level=5 out of range 0\.\.2"):
        open_slide(pyramid_path).read_region((0, 0), 5, (10, 10))


def test_read_region_rejects_a_negative_size(pyramid_path):
    with pytest.raises(ValueError, match=r"size=\(-1, 10\)"):
        open_slide(pyramid_path).read_region((0, 0), 0, (-1, 10))


@pytest.mark.parametrize(
    ("target", "level"),
    [(0.1, 0), (0.25, 0), (0.45, 0), (0.499, 1), (0.5, 1), (0.99, 1), (1.0, 2), (9, 2)],
)
def test_best_level_for_mpp_is_the_coarsest_fine_enough(pyramid_path, target, level):
    assert open_slide(pyramid_path).best_level_for_mpp(target) == level


def test_best_level_for_mpp_is_zero_without_slide_mpp(tmp_path):
    path = write_pyramid(tmp_path / "nompp.tif", make_rgb(), unit="INCH")
    assert open_slide(path).best_level_for_mpp(2.0) == 0


def test_read_region_at_mpp_shapes_and_values(pyramid_path):
    image = make_rgb()
    with open_slide(pyramid_path) as slide:
        same = slide.read_region_at_mpp((0, 0), (800, 600), 0.25)
        half = slide.read_region_at_mpp((200, 100), (400, 300), 0.5)
        odd = slide.read_region_at_mpp((0, 0), (800, 600), 0.3)
    np.testing.assert_array_equal(same, image)
    np.testing.assert_array_equal(half, image[::2, ::2][50:200, 100:300])
    assert odd.shape == (500, 667, 3) and odd.dtype == np.uint8
    # resampling keeps the colours: compare block means away from block edges
    assert abs(float(odd.mean()) - float(image.mean())) < 2


def test_read_region_at_mpp_requires_mpp(tmp_path):
    path = write_pyramid(tmp_path / "nompp.tif", make_rgb(), unit="INCH", levels=1)
    with pytest.raises(SlideError, match="'nompp.tif' records no pixel size"):
        open_slide(path).read_region_at_mpp((0, 0), (10, 10), 0.5)


def test_pyramid_is_lazy_and_matches_read_region(pyramid_path, zarr_reads):
    slide = open_slide(pyramid_path)
    reads_at_open = len(zarr_reads)
    levels = slide.pyramid()
    assert len(zarr_reads) == reads_at_open

    assert [level.shape for level in levels] == [
        (600, 800, 3),
        (300, 400, 3),
        (150, 200, 3),
    ]
    assert all(level.dtype == np.uint8 for level in levels)
    np.testing.assert_array_equal(
        levels[1][20:52, 50:114].compute(), slide.read_region((100, 40), 1, (64, 32))
    )
    assert len(zarr_reads) > reads_at_open


def test_pyramid_of_a_plain_image_decodes_only_when_computed(tmp_path):
    image = make_rgb(120, 90)
    Image.fromarray(image).save(tmp_path / "tile.png")
    slide = open_slide(tmp_path / "tile.png")
    levels = slide.pyramid()
    assert slide._levels._pixels is None
    np.testing.assert_array_equal(levels[0].compute(), image)


def test_thumbnail_keeps_the_aspect_ratio(pyramid_path):
    with open_slide(pyramid_path) as slide:
        assert slide.thumbnail(100).shape == (75, 100, 3)
        assert slide.thumbnail(2000).shape == (600, 800, 3)


# --- plain images ---------------------------------------------------------------


def test_rgba_png_is_composited_onto_white(tmp_path):
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:5, ..., 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    region = open_slide(tmp_path / "rgba.png").read_region((0, 0), 0, (12, 10))
    np.testing.assert_array_equal(region[:5], np.broadcast_to([200, 0, 0], (5, 12, 3)))
    assert (region[5:] == 255).all()


def test_grey_png_becomes_rgb(tmp_path):
    grey = np.arange(120, dtype=np.uint8).reshape(10, 12)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    region = open_slide(tmp_path / "grey.png").read_region((0, 0), 0, (12, 10))
    np.testing.assert_array_equal(region, np.repeat(grey[..., None], 3, axis=2))


def test_16_bit_tiff_is_scaled_with_a_warning(tmp_path):
    grey = np.linspace(0, 4000, 20 * 30).reshape(20, 30).astype(np.uint16)
    tifffile.imwrite(tmp_path / "deep.tif", grey)
    with pytest.warns(UserWarning, match="'deep.tif' stores uint16 pixels"):
        slide = open_slide(tmp_path / "deep.tif")
    region = slide.read_region((0, 0), 0, (30, 20))
    assert region.dtype == np.uint8 and region.shape == (20, 30, 3)
    assert region.max() == 255 and region.min() == 0
    np.testing.assert_allclose(region[..., 1], grey / 4000 * 255, atol=0.51)


# --- errors ---------------------------------------------------------------------


def test_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.svs"):
        open_slide(tmp_path / "nowhere.svs")


@pytest.mark.parametrize("name", ["notes.svs", "notes.png"])
def test_text_file_with_a_slide_suffix_raises_slide_error(tmp_path, name):
    (tmp_path / name).write_text("not an image")
    with pytest.raises(SlideError, match=rf"'.*{name}' is not a readable.*\.svs"):
        open_slide(tmp_path / name)


def test_unsupported_suffix_lists_supported_formats(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(SlideError, match=r"notes.txt.*'\.txt'.*\.svs, .*\.png"):
        open_slide(tmp_path / "notes.txt")


@pytest.mark.parametrize(("suffix", "kind"), sorted(UNREADABLE.items()))
def test_unreadable_formats_ask_for_ome_tiff(tmp_path, suffix, kind):
    name = f"slide{suffix}"
    (tmp_path / name).write_bytes(b"\0" * 16)
    with pytest.raises(
        SlideError, match=rf"{name}.*tiffslide cannot read {kind} slides.*OME-TIFF"
    ):
        open_slide(tmp_path / name)


def test_mrxs_folder_asks_for_ome_tiff(tmp_path):
    """MIRAX keeps its data in a folder beside the .mrxs file."""
    (tmp_path / "slide.mrxs").mkdir()
    with pytest.raises(SlideError, match="cannot read 3DHISTECH MIRAX"):
        open_slide(tmp_path / "slide.mrxs")


def test_a_folder_asks_for_one_file(tmp_path):
    with pytest.raises(SlideError, match="is a folder; give one slide"):
        open_slide(tmp_path)


@pytest.mark.parametrize("mpp", [0, -0.5, float("nan")])
def test_nonpositive_mpp_raises_value_error(pyramid_path, mpp):
    with pytest.raises(ValueError, match=r"mpp=.* must be a positive number"):
        open_slide(pyramid_path, mpp=mpp)
    with pytest.raises(ValueError, match=r"mpp=.* must be a positive number"):
        open_slide(pyramid_path).best_level_for_mpp(mpp)


@pytest.mark.parametrize("layout", ["pages", "subifds"])
@pytest.mark.parametrize("fraction", [0.3, 0.9])
def test_truncated_tiff_is_refused_at_open(tmp_path, layout, fraction):
    whole = write_pyramid(tmp_path / "whole.tif", make_rgb(), layout=layout)
    data = whole.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(SlideError, match=r"'.*cut.tif' is truncated.*download it"):
        open_slide(cut)


@pytest.mark.parametrize("how", ["read_region", "pyramid"])
def test_file_cut_after_opening_raises_slide_error_on_read(pyramid_path, how):
    """A file still being copied: opens whole, then loses its end."""
    slide = open_slide(pyramid_path)
    os.truncate(pyramid_path, pyramid_path.stat().st_size // 3)
    with pytest.raises(
        SlideError, match=r"could not decode rows .* of level 0 of '.*pyramid.tif'"
    ):
        if how == "read_region":
            slide.read_region((0, 0), 0, (WIDTH, HEIGHT))
        else:
            slide.pyramid()[0].compute()


@pytest.mark.parametrize("how", ["read_region", "pyramid"])
def test_corrupt_tile_bytes_raise_slide_error_on_read(pyramid_path, how):
    with tifffile.TiffFile(pyramid_path) as tiff:
        offset = tiff.pages[0].dataoffsets[-1]
    with open(pyramid_path, "r+b") as f:  # overwrite the last tile's data
        f.seek(offset)
        f.write(b"\xff" * 64)
    slide = open_slide(pyramid_path)
    corner = slide.read_region((0, 0), 0, (64, 64))  # other tiles still read
    with pytest.raises(
        SlideError, match=r"could not decode rows .*'.*pyramid.tif'.*corrupt"
    ):
        if how == "read_region":
            slide.read_region((WIDTH - 64, HEIGHT - 64), 0, (64, 64))
        else:
            slide.pyramid()[0][-64:, -64:].compute()
    np.testing.assert_array_equal(corner, make_rgb()[:64, :64])


def test_overwritten_tiff_header_is_refused_at_open(pyramid_path):
    data = bytearray(pyramid_path.read_bytes())
    data[:8] = b"\0" * 8
    pyramid_path.write_bytes(bytes(data))
    with pytest.raises(SlideError, match=r"'.*pyramid.tif' is not a readable slide"):
        open_slide(pyramid_path)


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_plain_image_raises_slide_error_on_read(tmp_path, suffix):
    path = tmp_path / f"tile{suffix}"
    Image.fromarray(make_rgb(200, 300)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    slide = open_slide(path)  # the header is whole
    with pytest.raises(SlideError, match=rf"'.*tile{suffix}'.*truncated or corrupt"):
        slide.read_region((0, 0), 0, (300, 200))


APERIO = (
    "Aperio Image Library v12.0.15 \r\n256x256 (240x240) JPEG Q=70|AppMag = 40"
    "|MPP = 0.2520|ScannerType = Zürich µ-scan|Title = Gewebe Ä"
)


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1"])
@pytest.mark.parametrize(
    ("description", "mpp"),
    [(APERIO, 0.252), ("Färbung H&E, Größe 5 µm, Schnitt Nr. 3", 0.25)],
)
def test_non_ascii_description_opens_and_keeps_its_mpp(
    tmp_path, encoding, description, mpp
):
    """Aperio's MPP from the description; else the centimetre resolution tags."""
    path = tmp_path / "described.tif"
    tag = (270, 2, 0, description.encode(encoding), True)  # raw ImageDescription
    tifffile.imwrite(
        path,
        make_rgb(256, 256),
        tile=(128, 128),
        photometric="rgb",
        metadata=None,
        resolution=(1e4 / 0.25, 1e4 / 0.25),
        resolutionunit="CENTIMETER",
        extratags=[tag],
    )
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(mpp)
        region = slide.read_region((0, 0), 0, (256, 256))
    np.testing.assert_array_equal(region, make_rgb(256, 256))


def test_suffix_lists_are_lowercase_and_disjoint():
    assert all(s.startswith(".") and s == s.lower() for s in SLIDE_SUFFIXES)
    assert not set(SLIDE_SUFFIXES) & set(IMAGE_SUFFIXES)


# --- real slides ----------------------------------------------------------------


def test_cmu1_svs(shared_data):
    with open_slide(shared_data / "wsi" / "CMU-1-Small-Region.svs") as slide:
        assert slide.dimensions == (2220, 2967)
        assert slide.level_count == 1
        assert slide.mpp == pytest.approx(0.499)
        region = slide.read_region((1000, 1000), 0, (256, 128))
        half = slide.read_region_at_mpp((0, 0), (2220, 2967), 0.998)
    assert region.shape == (128, 256, 3) and 50 < region.mean() < 250
    assert half.shape == (1484, 1110, 3)


def test_derived_pyramid_levels_agree(shared_data):
    path = shared_data / "wsi" / "CMU-1-Small-Region_pyramid_DERIVED.tiff"
    with open_slide(path) as slide:
        assert slide.level_count == 4 and slide.mpp == pytest.approx(0.499)
        assert slide.best_level_for_mpp(2.0) == 2
        assert slide.best_level_for_mpp(0.25) == 0
        fine = slide.read_region((400, 400), 0, (800, 800)).astype(float)
        coarse = slide.read_region((400, 400), 2, (200, 200)).astype(float)
    pooled = fine.reshape(200, 4, 200, 4, 3).mean(axis=(1, 3))
    assert np.abs(pooled - coarse).mean() < 10


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_real_svs_raises_slide_error(shared_data, tmp_path, fraction):
    """Half: the first directory is lost; 90%: the label and macro pages are."""
    data = (shared_data / "wsi" / "CMU-1-Small-Region.svs").read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(
        SlideError, match=r"'.*cut.svs' is truncated or damaged: invalid .*offset"
    ):
        open_slide(cut)


def test_jpeg2000_tcga_slide_reads_but_has_no_mpp(shared_data):
    with open_slide(shared_data / "wsi" / "tcga-cr-7395-01a-01-ts1.svs") as slide:
        assert slide.level_count == 2 and slide.mpp is None
        region = slide.read_region((0, 0), 1, slide.level_dimensions[1])
        fine = slide.read_region((3000, 2000), 0, (512, 512))
        tile = slide.pyramid()[0][2000:2512, 3000:3512].compute()
        with pytest.raises(
            SlideError, match="'tcga-cr-7395-01a-01-ts1.svs' records no"
        ):
            require_mpp(slide)
    assert region.shape == (1783, 2221, 3) and region.std() > 5
    assert fine.shape == (512, 512, 3) and fine.std() > 5
    np.testing.assert_array_equal(tile, fine)


def test_monuseg_tile_and_crc_png_open_as_plain_images(shared_data):
    tile = next(
        iter(sorted((shared_data / "monuseg" / "test" / "images").glob("*.tif")))
    )
    with open_slide(tile) as slide:
        assert slide.dimensions == (1000, 1000) and slide.level_count == 1
        assert slide.mpp is None  # 72 dpi tags are ignored
        np.testing.assert_array_equal(
            slide.read_region((0, 0), 0, (1000, 1000)), tifffile.imread(tile)
        )
    crc = open_slide(shared_data / "crc" / "images" / "img1.png", mpp=0.5)
    assert crc.dimensions == (500, 500) and crc.mpp == 0.5
    assert crc.read_region_at_mpp((0, 0), (500, 500), 0.25).shape == (1000, 1000, 3)


def test_slide_class_opens_directly(pyramid_path):
    slide = Slide(pyramid_path, mpp=0.3)
    assert slide.mpp == 0.3 and "pyramid.tif" in repr(slide)


def test_an_mpp_other_than_the_recorded_one_warns(shared_data):
    with pytest.warns(UserWarning, match="records 0.499 um/px; using 0.25"):
        slide = open_slide(shared_data / "wsi" / "CMU-1-Small-Region.svs", mpp=0.25)
    assert slide.mpp == 0.25


def test_read_overview_subsamples_the_coarsest_fine_enough_level_in_bands(
    tmp_path, monkeypatch
):
    import napari_lemon.slide as slide_module

    image = make_rgb()
    path = write_pyramid(tmp_path / "p.tif", image)
    monkeypatch.setattr(slide_module, "OVERVIEW_BAND_BYTES", 3 * image.shape[1] * 8)
    with open_slide(path) as slide:
        reads = []
        original = slide.read_region
        monkeypatch.setattr(
            slide, "read_region", lambda *a: reads.append(a) or original(*a)
        )
        overview, step = slide.read_overview((0, 0, *slide.dimensions), 100)
        level2 = original((0, 0), 2, slide.level_dimensions[2])

    assert max(overview.shape[:2]) <= 100
    assert step == 4 * 2  # level 2 (downsample 4), every other pixel
    np.testing.assert_array_equal(overview, level2[::2, ::2])
    assert len(reads) > 2 and {r[1] for r in reads} == {2}  # bands of level 2


def test_read_overview_with_a_step_rounds_down_and_refuses_a_bad_side(pyramid_path):
    with open_slide(pyramid_path) as slide:
        overview, step = slide.read_overview((0, 0, *slide.dimensions), step=3)
        assert step == 2 and overview.shape[:2] == slide.level_dimensions[1][::-1]
        with pytest.raises(ValueError, match="max_side=0 must be a positive"):
            slide.read_overview((0, 0, 10, 10), 0)
