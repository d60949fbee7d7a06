"""The streaming whole-slide pipeline on synthetic pyramids, nuclei at known places."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
import tifffile
from scipy.spatial import cKDTree

from napari_lemon.incremental_store import read_record
from napari_lemon.pipeline import analyze, run_steps
from napari_lemon.slide import SlideError, open_slide
from napari_lemon.store import StoreError, read_results
from napari_lemon.tiling import owned_by
from napari_lemon.whole_slide import (
    ID_STRIDE,
    STAGES,
    SlideRun,
    analyze_slide,
    grid_sizes,
    slide_steps,
)

MPP = 0.25
TILE_PX, SPACING = 256, 56  # level-0 px; tile_um = 64
OPTIONS = dict(segmenter="classical", tile_um=64.0, margin_um=20.0, n_clusters=3)
PINK, PURPLE, WHITE = (236, 196, 220), (78, 42, 136), (245, 245, 245)


def disc_centres(width, height, tissue_width, seed=0):
    """Level-0 ``(x, y)`` of synthetic nuclei on a jittered grid over the tissue."""
    rng = np.random.default_rng(seed)
    xs = np.arange(SPACING // 2, tissue_width - 16, SPACING)
    ys = np.arange(SPACING // 2, height - 16, SPACING)
    grid = np.array([(x, y) for y in ys for x in xs], dtype=np.float64)
    return grid + rng.uniform(-4, 4, grid.shape)


def make_slide(width, height, tissue_width=None, seed=0):
    """Pink tissue left of ``tissue_width`` with purple discs, white glass right."""
    tissue_width = width if tissue_width is None else tissue_width
    rng = np.random.default_rng(seed)
    image = np.empty((height, width, 3), np.float32)
    image[:] = WHITE
    image[:, :tissue_width] = PINK
    centres = disc_centres(width, height, tissue_width, seed)
    rows, cols = np.mgrid[:height, :width]
    for i, (x, y) in enumerate(centres):
        radius = (3.0 + (i % 3) * 0.5) / MPP
        near = (slice(int(y - 20), int(y + 21)), slice(int(x - 20), int(x + 21)))
        disc = (cols[near] - x) ** 2 + (rows[near] - y) ** 2 <= radius**2
        image[near][disc] = PURPLE
    image += rng.normal(0, 4, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), centres


def write_pyramid(path, image, mpp=MPP, levels=4):
    """A tiled pyramid, each level the 2x2 mean of the one before."""
    options = dict(tile=(128, 128), photometric="rgb", compression="zlib")
    tags = dict(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    with tifffile.TiffWriter(path) as tiff:
        tiff.write(image, **tags, **options)
        level = image.astype(np.float32)
        for _ in range(1, levels):
            rows, cols = (s // 2 * 2 for s in level.shape[:2])
            level = level[:rows, :cols].reshape(rows // 2, 2, cols // 2, 2, 3)
            level = level.mean((1, 3))
            tiff.write(np.rint(level).astype(np.uint8), subfiletype=1, **options)
    return path


@pytest.fixture(scope="module")
def slide_case(tmp_path_factory):
    """A 4x3-tile slide whose right half is glass: 9 tiles touch tissue."""
    image, centres = make_slide(4 * TILE_PX, 3 * TILE_PX, tissue_width=2 * TILE_PX)
    path = write_pyramid(tmp_path_factory.mktemp("slides") / "synthetic.tif", image)
    return path, centres


@pytest.fixture(scope="module")
def shallow_encoder_path(tmp_path_factory):
    """A random LEMON ViT-S/8 cut to 2 blocks: the same code path, 6x faster."""
    import torch

    from napari_lemon.checkpoint import save_checkpoint
    from napari_lemon.encoder import EncoderCard, create_vit

    torch.manual_seed(0)
    card = EncoderCard(name="random-shallow", depth=2)
    path = tmp_path_factory.mktemp("encoder") / "shallow.safetensors"
    return save_checkpoint(create_vit(card), card, path)


@pytest.fixture(scope="module")
def encoder(shallow_encoder_path):
    from napari_lemon.checkpoint import load_encoder

    return load_encoder(shallow_encoder_path, device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def uninterrupted(slide_case, encoder, tmp_path_factory):
    """One run to the end: its SlideRun, results and progress events."""
    path, _ = slide_case
    out = tmp_path_factory.mktemp("runs") / "whole.zarr"
    events = []
    with open_slide(path) as slide:
        run = analyze_slide(
            slide, out, encoder, progress=lambda *e: events.append(e), **OPTIONS
        )
    return run, read_results(out), events


def nucleus_table(adata):
    """ids, x, y sorted by id, and embeddings in the same order."""
    obs = adata.obs
    order = np.argsort(obs["nucleus_id"].to_numpy())
    table = obs[["nucleus_id", "x", "y"]].to_numpy()[order]
    return table, np.asarray(adata.obsm["X_lemon"], dtype=np.float32)[order]


def test_run_finds_every_nucleus_once_at_its_level0_place(slide_case, uninterrupted):
    _, centres = slide_case
    run, adata, _ = uninterrupted
    assert isinstance(run, SlideRun)
    assert run.n_tiles == 9 and run.tiles_skipped == 0
    assert run.n_nuclei == adata.n_obs == len(centres)
    xy = adata.obs[["x", "y"]].to_numpy()
    distance, nearest = cKDTree(centres).query(xy)
    assert distance.max() < 1.0
    assert len(np.unique(nearest)) == len(centres)
    np.testing.assert_array_equal(adata.obsm["spatial"], xy)


def test_ids_and_tiles_are_those_of_the_owning_core(uninterrupted):
    _, adata, _ = uninterrupted
    obs = adata.obs
    ids, tiles = obs["nucleus_id"].to_numpy(), obs["tile_id"].to_numpy()
    np.testing.assert_array_equal(ids // ID_STRIDE, tiles)
    assert len(np.unique(ids)) == len(ids)
    n_cols = 4  # grid of the whole slide, glass columns included
    for tile_id in np.unique(tiles):
        row, col = divmod(int(tile_id), n_cols)
        core = (col * TILE_PX, row * TILE_PX, TILE_PX, TILE_PX)
        xy = obs.loc[obs["tile_id"] == tile_id, ["x", "y"]].to_numpy()
        assert owned_by(core, xy).all()
        local = np.sort(ids[tiles == tile_id] % ID_STRIDE)
        np.testing.assert_array_equal(local, np.arange(len(local)))
    assert tiles.max() // n_cols == 2 and (tiles % n_cols).max() <= 2


def test_results_hold_embeddings_clusters_outlines_and_provenance(uninterrupted):
    run, adata, _ = uninterrupted
    assert adata.obsm["X_lemon"].shape == (adata.n_obs, 384)
    assert np.isfinite(np.asarray(adata.obsm["X_lemon"], dtype=np.float32)).all()
    assert sorted(adata.obs["cluster"].cat.categories) == [0, 1, 2]
    offsets = np.asarray(adata.uns["outlines"]["offsets"])
    assert len(offsets) == adata.n_obs + 1
    lemon = adata.uns["lemon"]
    assert lemon["segmenter"]["name"] == "classical"
    assert "min_area_um2" in lemon["segmenter"]["params"]
    assert lemon["tiling"]["tile_px"] == TILE_PX and lemon["tiling"]["n_tiles"] == 9
    assert lemon["seg_mpp"] == pytest.approx(0.5)
    assert lemon["clustering"]["method"] == "kmeans_stream"
    assert lemon["encoder"]["name"] == "random-shallow"
    assert set(run.seconds) >= set(STAGES)
    assert all(v >= 0 for v in run.seconds.values())


def test_progress_reports_tissue_each_tile_and_clusters(uninterrupted):
    _, _, events = uninterrupted
    assert events[:2] == [("tissue", 0, 1), ("tissue", 1, 1)]
    tiles = [e for e in events if e[0] == "tiles"]
    assert tiles == [("tiles", done, 9) for done in range(10)]
    assert events[-2:] == [("cluster", 0, 1), ("cluster", 1, 1)]


@pytest.mark.slow
def test_same_nuclei_and_embeddings_as_the_single_pass(
    slide_case, random_encoder_path, tmp_path
):
    from napari_lemon.checkpoint import load_encoder

    path, _ = slide_case
    encoder = load_encoder(random_encoder_path, "cpu", precision="fp32")  # 12 blocks
    region = (0, 0, 512, 512)
    with open_slide(path) as slide:
        single = analyze(
            slide, region, encoder=encoder, segmenter="classical", n_clusters=3
        )
        run = analyze_slide(
            slide, tmp_path / "w.zarr", encoder, region=region, **OPTIONS
        )
    whole = read_results(run.path)
    single_xy = single.adata.obs[["x", "y"]].to_numpy()
    whole_xy = whole.obs[["x", "y"]].to_numpy()
    distance, match = cKDTree(single_xy).query(whole_xy)
    assert len(whole_xy) == len(single_xy) and distance.max() < 1e-6
    # float16 on disk: equal to its rounding
    expected = np.asarray(single.adata.obsm["X_lemon"], dtype=np.float32)[match]
    got = np.asarray(whole.obsm["X_lemon"], dtype=np.float32)
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3)


@pytest.mark.slow
def test_cancel_then_resume_gives_the_uninterrupted_result(
    slide_case, encoder, uninterrupted, tmp_path
):
    path, _ = slide_case
    out = tmp_path / "resumed.zarr"
    with open_slide(path) as slide:
        steps = slide_steps(slide, out, encoder, **OPTIONS)
        for stage, done, _ in steps:
            if stage == "tiles" and done == 3:
                break
        steps.close()
        with pytest.raises(StoreError, match="incomplete"):
            read_results(out)
        run = analyze_slide(slide, out, encoder, **OPTIONS)
    assert run.tiles_skipped == 3 and run.n_tiles == 9
    expected_table, expected_emb = nucleus_table(uninterrupted[1])
    table, emb = nucleus_table(read_results(out))
    np.testing.assert_array_equal(table, expected_table)
    np.testing.assert_array_equal(emb, expected_emb)


def test_rerun_of_a_complete_store_does_nothing(slide_case, encoder, tmp_path):
    path, _ = slide_case
    out = tmp_path / "twice.zarr"
    with open_slide(path) as slide:
        first = analyze_slide(slide, out, encoder, region=(0, 0, 512, 512), **OPTIONS)
        again = analyze_slide(slide, out, encoder, region=(0, 0, 512, 512), **OPTIONS)
    assert again.tiles_skipped == again.n_tiles == first.n_tiles == 4
    assert again.n_nuclei == first.n_nuclei


def test_rerun_with_other_clusters_reclusters_the_finished_store(
    slide_case, encoder, tmp_path
):
    import anndata

    path, _ = slide_case
    out = tmp_path / "recluster.zarr"
    with open_slide(path) as slide:
        first = analyze_slide(slide, out, encoder, region=(0, 0, 512, 512), **OPTIONS)
        before = anndata.read_zarr(out).obs["cluster"].to_numpy()
        changed = dict(OPTIONS, n_clusters=2)
        again = analyze_slide(slide, out, encoder, region=(0, 0, 512, 512), **changed)
        third = analyze_slide(slide, out, encoder, region=(0, 0, 512, 512), **changed)

    adata = anndata.read_zarr(out)
    assert again.tiles_skipped == again.n_tiles and again.n_nuclei == first.n_nuclei
    assert len(np.unique(before)) > 2 and adata.obs["cluster"].nunique() == 2
    assert adata.uns["lemon_clustering"]["requested"] == 2
    assert "cluster" not in third.seconds or third.seconds["cluster"] == 0


def test_other_parameters_on_an_old_store_are_refused(slide_case, encoder, tmp_path):
    path, _ = slide_case
    out = tmp_path / "old.zarr"
    with open_slide(path) as slide:
        analyze_slide(slide, out, encoder, region=(0, 0, 512, 512), **OPTIONS)
        changed = dict(OPTIONS, tile_um=32.0)
        with pytest.raises(StoreError, match="another run"):
            analyze_slide(slide, out, encoder, region=(0, 0, 512, 512), **changed)


@pytest.mark.slow
def test_a_failing_tile_leaves_the_store_incomplete_and_resumable(
    slide_case, encoder, uninterrupted, tmp_path, monkeypatch
):
    from napari_lemon import whole_slide

    path, _ = slide_case
    out = tmp_path / "failed.zarr"
    real_read, calls = whole_slide.read_tile, []

    def failing_read(slide, tile, seg_mpp):
        calls.append(tile.tile_id)
        if len(calls) == 4:
            raise SlideError(f"could not decode tile {tile.tile_id}")
        return real_read(slide, tile, seg_mpp)

    monkeypatch.setattr(whole_slide, "read_tile", failing_read)
    with open_slide(path) as slide, pytest.raises(SlideError, match="decode"):
        analyze_slide(slide, out, encoder, **OPTIONS)
    record = read_record(out)
    assert not record["complete"] and 1 <= len(record["tiles_done"]) <= 3

    monkeypatch.setattr(whole_slide, "read_tile", real_read)
    with open_slide(path) as slide:
        run = analyze_slide(slide, out, encoder, **OPTIONS)
    assert run.tiles_skipped == len(record["tiles_done"])
    np.testing.assert_array_equal(
        nucleus_table(read_results(out))[0], nucleus_table(uninterrupted[1])[0]
    )


KILLED_RUN = """
import sys, time
from napari_lemon import incremental_store, whole_slide
from napari_lemon.checkpoint import load_encoder
from napari_lemon.slide import open_slide

incremental_store.FLUSH_ROWS = 1  # commit every tile
analyse = whole_slide._analyse_tile

def slow(*args):
    time.sleep(0.3)
    return analyse(*args)

whole_slide._analyse_tile = slow
encoder = load_encoder(sys.argv[3], device="cpu", precision="fp32")
with open_slide(sys.argv[1]) as slide:
    whole_slide.analyze_slide(slide, sys.argv[2], encoder, **{options})
"""


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(
    slide_case, encoder, uninterrupted, shallow_encoder_path, tmp_path
):
    path, _ = slide_case
    out = tmp_path / "killed.zarr"
    script = KILLED_RUN.format(options=OPTIONS)
    args = [
        sys.executable,
        "-c",
        script,
        str(path),
        str(out),
        str(shallow_encoder_path),
    ]
    process = subprocess.Popen(args, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 25
        while time.monotonic() < deadline and process.poll() is None:
            record = read_record(out) if (out / ".zattrs").exists() else None
            if record and len(record["tiles_done"]) >= 2:
                break
            time.sleep(0.05)
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    record = read_record(out)
    assert not record["complete"] and 2 <= len(record["tiles_done"]) < 9

    with open_slide(path) as slide:
        run = analyze_slide(slide, out, encoder, **OPTIONS)
    assert run.tiles_skipped == len(record["tiles_done"])
    expected_table, expected_emb = nucleus_table(uninterrupted[1])
    table, emb = nucleus_table(read_results(out))
    np.testing.assert_array_equal(table, expected_table)
    np.testing.assert_array_equal(emb, expected_emb)


def test_slide_without_tissue_gives_no_nuclei_and_says_why(tmp_path, encoder):
    image = np.full((512, 512, 3), 246, np.uint8)
    path = write_pyramid(tmp_path / "glass.tif", image)
    with open_slide(path) as slide, pytest.warns(UserWarning, match="no tissue"):
        run = analyze_slide(slide, tmp_path / "glass.zarr", encoder, **OPTIONS)
    assert run.n_nuclei == 0 and run.n_tiles == 0
    assert read_results(run.path).n_obs == 0


def test_region_keeps_the_nuclei_inside_it(
    slide_case, encoder, uninterrupted, tmp_path
):
    path, _ = slide_case
    region = (100, 200, 400, 350)
    with open_slide(path) as slide:
        run = analyze_slide(
            slide, tmp_path / "region.zarr", encoder, region=region, **OPTIONS
        )
    xy = read_results(run.path).obs[["x", "y"]].to_numpy()
    assert owned_by(region, xy).all()
    # the nuclei well inside the region are those of the whole run (tiles read
    # other areas, so the adaptive threshold may move an outline by a pixel)
    full = uninterrupted[1].obs[["x", "y"]].to_numpy()
    inner = full[owned_by((120, 220, 360, 310), full)]
    distance, _ = cKDTree(xy).query(inner)
    assert len(inner) > 20 and distance.max() < 1.0
    assert list(read_results(run.path).uns["lemon"]["region"]) == list(region)


@pytest.mark.slow
def test_memory_does_not_grow_with_the_number_of_tiles(tmp_path, encoder, monkeypatch):
    # the store buffers up to FLUSH_ROWS rows (16 MB) before writing: a bound of
    # its own, made small here so that what grows with the slide would show
    monkeypatch.setattr("napari_lemon.incremental_store.FLUSH_ROWS", 64)
    peaks = {}
    for side in (2, 4):
        image, _ = make_slide(side * TILE_PX, side * TILE_PX, seed=side)
        path = write_pyramid(tmp_path / f"side{side}.tif", image)
        del image
        with open_slide(path) as slide:
            tracemalloc.start()
            run = analyze_slide(
                slide, tmp_path / f"side{side}.zarr", encoder, **OPTIONS
            )
            peaks[side] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        assert run.n_tiles == side * side
    assert peaks[4] < 1.25 * peaks[2], peaks


@pytest.mark.parametrize(
    "options, error, message",
    [
        (dict(tile_um=0.0), ValueError, "tile_um=0.0 must be positive"),
        (dict(tile_um=float("nan")), ValueError, "tile_um=nan must be a number"),
        (dict(margin_um=-1.0), ValueError, "margin_um=-1.0 must be >= 0"),
        (dict(tile_um=6000.0), ValueError, "smaller tile_um"),
        (dict(batch_size=0), ValueError, "batch_size=0"),
        (dict(n_clusters=0), ValueError, "n_clusters=0"),
        (dict(segmenter="nope"), ValueError, "segmenter='nope'"),
    ],
)
def test_bad_options_are_refused(
    slide_case, encoder, tmp_path, options, error, message
):
    path, _ = slide_case
    with open_slide(path) as slide, pytest.raises(error, match=message):
        analyze_slide(slide, tmp_path / "bad.zarr", encoder, **dict(OPTIONS, **options))
    assert not (tmp_path / "bad.zarr").exists()


def test_small_margin_warns_about_seams(slide_case):
    path, _ = slide_case
    with open_slide(path) as slide, pytest.warns(UserWarning, match="seams"):
        tile_px, margin_px = grid_sizes(slide, 64.0, 5.0, 0.5)
    assert (tile_px, margin_px) == (256, 20)


def test_slide_without_mpp_asks_for_it(tmp_path, encoder):
    path = tmp_path / "nompp.tif"
    tifffile.imwrite(path, np.full((64, 64, 3), 200, np.uint8), photometric="rgb")
    with open_slide(path) as slide, pytest.raises(SlideError, match="--mpp"):
        analyze_slide(slide, tmp_path / "nompp.zarr", encoder, **OPTIONS)


@pytest.mark.slow
def test_prefetch_and_in_turn_reads_give_the_same_result(slide_case, encoder, tmp_path):
    path, _ = slide_case
    tables = []
    for prefetch in (True, False):
        out = tmp_path / f"prefetch{prefetch}.zarr"
        with open_slide(path) as slide:
            run = analyze_slide(
                slide, out, encoder, region=(0, 0, 512, 512), prefetch=prefetch,
                **OPTIONS,
            )  # fmt: skip
        tables.append(nucleus_table(read_results(run.path)))
        if not prefetch:
            assert run.seconds["read_wait"] == run.seconds["read"]
    np.testing.assert_array_equal(tables[0][0], tables[1][0])
    np.testing.assert_array_equal(tables[0][1], tables[1][1])


def test_steps_return_the_run(slide_case, encoder, tmp_path):
    path, _ = slide_case
    with open_slide(path) as slide:
        steps = slide_steps(
            slide, tmp_path / "s.zarr", encoder, region=(0, 0, 256, 256), **OPTIONS
        )
        run = run_steps(steps)
    assert run.n_tiles == 1 and run.path == tmp_path / "s.zarr"
