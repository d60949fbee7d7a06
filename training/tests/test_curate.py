"""Curation into a sharded zarr dataset: inputs, sampling, resume and errors."""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np
import pandas as pd
import pytest
import tifffile
from skimage import io

from lemon_training.data import curate as curate_module
from lemon_training.data import sources
from lemon_training.data.curate import (
    CurateOptions,
    CurationError,
    add_curate_arguments,
    curate,
    cut_crops,
    run_curate,
    sample_centres,
)
from lemon_training.data.dataset import open_dataset, shard_path
from lemon_training.data.sources import (
    SourceItem,
    check_mpp,
    crc_centres,
    find_inputs,
    items_from_table,
    preset_items,
    tissue_tiles,
)
from napari_lemon.slide import Slide, open_slide

MPP = 0.5
BACKGROUND, NUCLEUS = (235, 190, 215), (70, 40, 130)


def he_image(centres, shape=(200, 240), radius=6, glass_from_col=None):
    """Pink 'tissue' with dark discs at ``centres`` (x, y); white glass on the right."""
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    image = np.empty((*shape, 3), np.uint8)
    image[:] = BACKGROUND
    if glass_from_col is not None:
        image[:, glass_from_col:] = 250
    for x, y in centres:
        image[(cols - x) ** 2 + (rows - y) ** 2 <= radius**2] = NUCLEUS
    return image


def grid_centres(shape=(200, 240), step=40, seed=0):
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[20 : shape[0] - 10 : step, 20 : shape[1] - 10 : step]
    centres = np.stack([xs.ravel(), ys.ravel()], axis=1).astype(float)
    return centres + rng.uniform(-4, 4, centres.shape)


def write_tiff(path, image, mpp=MPP):
    res = 1e4 / mpp  # pixels per centimetre
    tifffile.imwrite(path, image, resolution=(res, res), resolutionunit="CENTIMETER")
    return path


@pytest.fixture()
def slides(tmp_path):
    """Two synthetic H&E TIFFs with known nuclei, in a folder."""
    folder = tmp_path / "slides"
    folder.mkdir()
    truth = {}
    for k in range(2):
        centres = grid_centres(seed=k)
        write_tiff(folder / f"slide{k}.tif", he_image(centres))
        truth[f"slide{k}"] = centres
    return folder, truth


def options(**changes):
    return CurateOptions(**{"size": 20, **changes})


def test_segmented_slides_give_one_shard_each_with_a_crop_per_nucleus(slides, tmp_path):
    folder, truth = slides

    manifest = curate(find_inputs([folder]), tmp_path / "out", options(), "synchronous")
    dataset = open_dataset(tmp_path / "out")

    assert manifest["n_crops"] == len(dataset) == sum(len(c) for c in truth.values())
    assert manifest["per_source"] == {"slides": len(dataset)}
    assert manifest["per_method"] == {"segment": len(dataset)}
    assert [s["name"] for s in manifest["shards"]] == ["slide0", "slide1"]
    found = dataset.table[dataset.table.shard == "slide1"][["x", "y"]].to_numpy()
    distance = np.linalg.norm(found[:, None] - truth["slide1"][None], axis=2)
    assert distance.min(axis=1).max() < 1.0  # every crop is centred on a nucleus
    centre = dataset.read(np.arange(len(dataset)))[:, 9:11, 9:11]
    assert np.abs(centre.astype(int) - NUCLEUS).max() < 30


def test_per_slide_sampling_is_seeded(slides, tmp_path):
    folder, _ = slides
    items = find_inputs([folder])

    curate(items, tmp_path / "a", options(per_slide=5, seed=1), "synchronous")
    curate(items, tmp_path / "b", options(per_slide=5, seed=1), "synchronous")
    curate(items, tmp_path / "c", options(per_slide=5, seed=2), "synchronous")
    a, b, c = (open_dataset(tmp_path / k).table for k in "abc")

    assert a.groupby("shard").size().tolist() == [5, 5]
    pd.testing.assert_frame_equal(a, b)
    assert not a[["x", "y"]].equals(c[["x", "y"]])


def test_sampling_takes_from_each_tile_before_filling_up():
    rng = np.random.default_rng(0)
    centres = pd.DataFrame(
        {"x": np.arange(100.0), "y": 0.0, "tile": [0] * 90 + [1] * 10}
    )

    spread = sample_centres(centres, 20, quota=10, rng=rng)
    uniform = sample_centres(centres, 20, quota=None, rng=np.random.default_rng(0))

    assert spread.tile.value_counts().to_dict() == {0: 10, 1: 10}
    assert (spread.index.diff()[1:] > 0).all() and len(uniform) == 20
    assert sample_centres(centres, 200, 10, rng) is centres


def test_tissue_tiles_skip_glass(tmp_path):
    path = write_tiff(
        tmp_path / "half.tif", he_image([], (100, 400), glass_from_col=200)
    )

    with open_slide(path) as slide:
        tiles = tissue_tiles(slide, tile_um=50.0)  # 100 px tiles

    assert tiles[:, 0].tolist() == [0, 100] and tiles[:, 2].tolist() == [100, 100]


def test_a_large_slide_is_read_tile_by_tile_and_sampling_stops_early(
    tmp_path, monkeypatch
):
    shape = (400, 600)  # 6 x 4 tiles of 100 px
    path = write_tiff(tmp_path / "big.tif", he_image(grid_centres(shape, 25), shape))
    monkeypatch.setattr(sources, "TISSUE_MAX_PIXELS", 1000)  # "too large" for a mask
    reads, real_read = [], Slide.read_region

    def recording_read(self, location, level, size):
        reads.append(size[0] * size[1])
        return real_read(self, location, level, size)

    monkeypatch.setattr(Slide, "read_region", recording_read)
    opts = options(tile_um=50.0, per_slide=40)
    manifest = curate(find_inputs([path]), tmp_path / "out", opts, "synchronous")

    tile_with_margins = (100 + 2 * 32) ** 2
    assert manifest["n_crops"] == 40 and max(reads) <= tile_with_margins
    assert manifest["shards"][0]["n_nuclei"] < 0.5 * len(grid_centres(shape, 25))


def test_csv_centres_are_cropped_with_their_cell_types(tmp_path):
    centres = grid_centres()
    io.imsave(tmp_path / "a.png", he_image(centres), check_contrast=False)
    table = pd.DataFrame({"image": "a.png", "x": centres[:, 0], "y": centres[:, 1]})
    table["cell_type"] = ["tumour", "lymphocyte"] * (len(table) // 2)
    table.to_csv(tmp_path / "cells.csv", index=False)

    items = find_inputs([tmp_path / "cells.csv"], mpp=MPP)
    manifest = curate(items, tmp_path / "out", options(), "threads")
    dataset = open_dataset(tmp_path / "out")

    assert items[0].name == "cells-a" and items[0].method == "centres"
    np.testing.assert_allclose(dataset.table[["x", "y"]].to_numpy(), centres)
    assert dataset.table.cell_type.tolist() == table.cell_type.tolist()
    assert manifest["per_cell_type"] == {"lymphocyte": 15, "tumour": 15}


def test_imagescope_outlines_beside_an_image_replace_segmentation(slides):
    folder, truth = slides
    square = [(-3, -3), (3, -3), (3, 3), (-3, 3)]
    regions = "".join(
        "<Region><Vertices>"
        + "".join(f'<Vertex X="{x + dx}" Y="{y + dy}"/>' for dx, dy in square)
        + "</Vertices></Region>"
        for x, y in truth["slide0"][:4]
    )
    (folder / "slide0.xml").write_text(
        f'<Annotations MicronsPerPixel="0.5"><Annotation><Regions>{regions}'
        "</Regions></Annotation></Annotations>"
    )

    items = find_inputs([folder / "slide0.tif"])

    assert items[0].method == "outlines" and items[0].mpp == 0.5
    np.testing.assert_allclose(items[0].centres[["x", "y"]], truth["slide0"][:4])


def test_rerun_skips_complete_shards_and_redoes_an_unmarked_one(slides, tmp_path):
    folder, _ = slides
    items, out = find_inputs([folder]), tmp_path / "out"
    curate(items, out, options(), "synchronous")
    first = open_dataset(out)
    crops = first.read(np.arange(len(first)))

    # slide1 loses its done mark; slide0 must not be written again
    (out / "manifest.json").unlink()
    meta = shard_path(out, "slide1") / "zarr.json"
    meta.write_text(meta.read_text().replace('"complete": true', '"complete": false'))
    untouched = (shard_path(out, "slide0") / "zarr.json").stat().st_mtime_ns
    done = []
    curate(items, out, options(), "synchronous", progress=lambda d, t: done.append(t))
    again = open_dataset(out)

    assert done == [1]  # one shard to redo
    finished = json.loads((out / "manifest.json").read_text())
    assert curate(items, out, options(), "synchronous") == finished  # nothing to do
    assert (shard_path(out, "slide0") / "zarr.json").stat().st_mtime_ns == untouched
    pd.testing.assert_frame_equal(again.table, first.table)
    np.testing.assert_array_equal(again.read(np.arange(len(again))), crops)


def test_rerun_with_other_options_is_refused(slides, tmp_path):
    folder, _ = slides
    items = find_inputs([folder])
    curate(items, tmp_path / "out", options(per_slide=3), "synchronous")

    with pytest.raises(CurationError, match="other options \\(per_slide 3 -> 4\\)"):
        curate(items, tmp_path / "out", options(per_slide=4), "synchronous")
    with pytest.raises(CurationError, match="inputs: 0 new or changed, 1 gone"):
        curate(items[:1], tmp_path / "out", options(per_slide=3), "synchronous")


def test_out_folder_with_other_files_is_refused(slides, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")

    with pytest.raises(CurationError, match="exists and is not a curated dataset"):
        curate(find_inputs([slides[0]]), tmp_path / "busy", options(), "synchronous")


def test_failed_input_is_reported_and_finished_shards_are_kept(slides, tmp_path):
    folder, _ = slides
    bad = pd.DataFrame({"x": [5000.0], "y": [5.0], "cell_type": [""]})
    item = SourceItem("bad", str(folder / "slide1.tif"), "x", centres=bad, method="c")
    items = [*find_inputs([folder / "slide0.tif"]), item]

    with pytest.raises(CurationError, match="(?s)1 of 2 inputs failed.*bad: .*outside"):
        curate(items, tmp_path / "out", options(), "synchronous")
    assert (shard_path(tmp_path / "out", "slide0") / "zarr.json").is_file()
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_mpp_option_fills_in_only_for_files_that_record_none(slides, tmp_path):
    folder, truth = slides
    io.imsave(folder / "plain.png", he_image(truth["slide0"]), check_contrast=False)

    items = find_inputs([folder], mpp=0.25)
    manifest = curate(items, tmp_path / "out", options(per_slide=2), "synchronous")

    recorded = {s["name"]: s["mpp"] for s in manifest["shards"]}
    assert recorded == {"plain": 0.25, "slide0": MPP, "slide1": MPP}


def test_inputs_without_pixel_size_are_refused_before_any_work(tmp_path):
    io.imsave(tmp_path / "a.png", he_image([]), check_contrast=False)

    with pytest.raises(ValueError, match="1 inputs have no readable pixel size.*--mpp"):
        check_mpp(find_inputs([tmp_path]))
    check_mpp(find_inputs([tmp_path], mpp=0.5))  # fine with --mpp


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda d: d / "nope.tif", FileNotFoundError, "input .*nope.tif' does not"),
        (lambda d: d / "notes.txt", ValueError, "unsupported suffix '.txt'"),
        (lambda d: d / "empty", ValueError, "holds no slide or image files"),
        (lambda d: d / "cols.csv", ValueError, "needs rows with columns image, x, y"),
        (lambda d: d / "words.csv", ValueError, "column 'x' holds 'left' on data row"),
        (lambda d: d / "ghost.csv", FileNotFoundError, "names image .*ghost.png'"),
        (lambda d: d / "mpps.csv", ValueError, "several mpp values \\[0.25, 0.5\\]"),
    ],
)
def test_bad_inputs_are_refused_with_the_reason(tmp_path, make, error, match):
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "cols.csv").write_text("image,col,row\na.png,1,2\n")
    io.imsave(tmp_path / "a.png", he_image([]), check_contrast=False)
    (tmp_path / "words.csv").write_text("image,x,y\na.png,left,2\n")
    (tmp_path / "ghost.csv").write_text("image,x,y\nghost.png,1,2\n")
    (tmp_path / "mpps.csv").write_text("image,x,y,mpp\na.png,1,2,0.5\na.png,3,4,\n")

    with pytest.raises(error, match=match):
        find_inputs([make(tmp_path)], mpp=0.25)


def test_an_input_given_twice_is_refused(slides):
    path = slides[0] / "slide0.tif"

    with pytest.raises(ValueError, match="slide0.tif' is given twice"):
        find_inputs([path, path])


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="per_slide=0 must be positive"):
        CurateOptions(per_slide=0)
    with pytest.raises(ValueError, match="segmenter='guesswork' is unknown"):
        CurateOptions(segmenter="guesswork")


def test_cli_arguments_run_a_curation(slides, tmp_path, caplog):
    parser = argparse.ArgumentParser()
    add_curate_arguments(parser)
    args = parser.parse_args(
        [str(slides[0]), "--out", str(tmp_path / "out"), "--per-slide", "4"]
        + ["--size", "20", "--scheduler", "synchronous"]
    )

    with caplog.at_level(logging.INFO, logger="lemon_training"):
        manifest = run_curate(args)

    assert manifest["n_crops"] == 8 and manifest["options"]["per_slide"] == 4
    assert "8 crops from 2 inputs" in caplog.text
    assert json.loads((tmp_path / "out" / "manifest.json").read_text()) == manifest


def test_a_running_dask_scheduler_curates_by_its_address(slides, tmp_path):
    from distributed import LocalCluster

    folder, _ = slides
    with LocalCluster(
        n_workers=1, processes=False, dashboard_address=None, silence_logs=logging.ERROR
    ) as cluster:
        manifest = curate(
            find_inputs([folder]),
            tmp_path / "out",
            options(),
            cluster.scheduler_address,
        )

    assert manifest["n_shards"] == 2 and manifest["n_crops"] > 0


def test_unreachable_scheduler_is_reported(slides, tmp_path, monkeypatch):
    monkeypatch.setattr(curate_module, "CONNECT_TIMEOUT", "0.5s")

    with pytest.raises(CurationError, match="could not connect to a Dask scheduler"):
        curate(
            find_inputs([slides[0]]), tmp_path / "out", options(), "tcp://127.0.0.1:9"
        )


@pytest.mark.realdata
def test_real_tiles_and_points_crop_as_whole_images_do(shared_data, tmp_path):
    train = shared_data / "monuseg" / "train"
    xml = sorted((train / "annotations").glob("*.xml"))[0]
    outlines = find_inputs([train / "images" / f"{xml.stem}.tif"], None, xml.parent)
    crc = items_from_table(crc_centres(shared_data / "crc", ("validation",)))[:1]
    items = outlines + crc

    curate(items, tmp_path / "out", CurateOptions(), "synchronous")
    dataset = open_dataset(tmp_path / "out")

    # the same crops as cut from the whole images in memory
    tables = [i.centres.assign(image=i.path, mpp=i.mpp) for i in items]
    expected = np.concatenate([cut_crops(table, 60, 0.25) for table in tables])
    np.testing.assert_array_equal(dataset.read(np.arange(len(dataset))), expected)
    assert outlines[0].method == "outlines" and 0.24 < outlines[0].mpp < 0.26
    assert (
        dataset.table.cell_type.tolist()[-3:] == crc[0].centres.cell_type.tolist()[-3:]
    )


def test_no_inputs_is_refused(tmp_path):
    with pytest.raises(CurationError, match="no inputs to curate; give INPUTS or"):
        curate([], tmp_path / "out", options(), "synchronous")


def test_unknown_preset_and_missing_data_root_are_refused(tmp_path):
    with pytest.raises(ValueError, match="preset='shared' is unknown.*shared-train"):
        preset_items("shared", tmp_path)
    with pytest.raises(FileNotFoundError, match="not a folder; pass --data-root"):
        preset_items("shared-train", tmp_path / "nowhere")


def test_unreadable_input_is_listed_with_its_error(tmp_path):
    (tmp_path / "broken.tif").write_bytes(b"not a tiff at all")

    with pytest.raises(
        ValueError, match="1 inputs have no readable pixel size.*broken"
    ):
        check_mpp(find_inputs([tmp_path / "broken.tif"]))


def test_cli_turns_bad_arguments_into_curation_errors(tmp_path):
    parser = argparse.ArgumentParser()
    add_curate_arguments(parser)
    args = parser.parse_args([str(tmp_path), "--out", str(tmp_path / "o")])

    with pytest.raises(CurationError, match="holds no slide or image files"):
        run_curate(args)
