"""Cohorts: finding slides, one task per slide on Dask, the summary table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_lemon.cohort import (
    SUMMARY_COLUMNS,
    SlideJob,
    default_workers,
    find_slides,
    plan_jobs,
    run_cohort,
    run_slide,
    summary_table,
    write_summary,
)


def write_tissue_tiff(path, seed: int, side: int = 384, mpp: float | None = 0.5):
    """A small tiled TIFF of dark round 'nuclei' on pink, with or without mpp."""
    rng = np.random.default_rng(seed)
    image = np.full((side, side, 3), (230, 180, 210), dtype=np.uint8)
    rows, cols = np.mgrid[:side, :side]
    for r, c in rng.uniform(12, side - 12, size=(40, 2)):
        disc = (rows - r) ** 2 + (cols - c) ** 2 < 6**2
        image[disc] = (70, 40, 120)
    options = {"tile": (128, 128), "photometric": "rgb"}
    if mpp is not None:
        options |= {
            "resolution": (1e4 / mpp, 1e4 / mpp),
            "resolutionunit": "CENTIMETER",
        }
    tifffile.imwrite(path, image, **options)
    return path


@pytest.fixture
def cohort_dir(tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    for i in range(2):
        write_tissue_tiff(folder / f"slide{i}.tif", seed=i)
    (folder / "notes.txt").write_text("not a slide")
    return folder


def test_find_slides_expands_folders_in_name_order(cohort_dir, tmp_path):
    extra = write_tissue_tiff(tmp_path / "extra.tif", seed=3)
    found = find_slides([cohort_dir, extra])
    assert [p.name for p in found] == ["slide0.tif", "slide1.tif", "extra.tif"]


def test_find_slides_names_a_missing_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="slide file not found: '.*nope.svs'"):
        find_slides([tmp_path / "nope.svs"])


def test_find_slides_refuses_a_folder_without_slides(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="holds no slides; expected files ending in"):
        find_slides([tmp_path])


def test_find_slides_refuses_two_slides_with_one_results_name(tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        write_tissue_tiff(tmp_path / sub / "same.tif", seed=0)
    with pytest.raises(ValueError, match="would both write same.zarr"):
        find_slides([tmp_path / "a", tmp_path / "b"])


def test_plan_jobs_puts_one_store_per_slide_in_out(cohort_dir, tmp_path):
    jobs = plan_jobs(find_slides([cohort_dir]), tmp_path / "out", model="m.safetensors")
    assert [j.out.name for j in jobs] == ["slide0.zarr", "slide1.zarr"]
    assert all(
        j.out.parent == tmp_path / "out" and j.model == "m.safetensors" for j in jobs
    )


def test_summary_table_has_the_columns_in_order_then_stages():
    rows = [
        {"slide": "a", "status": "done", "nuclei": 3, "seconds_embed": 1.0},
        {"slide": "b", "status": "failed", "error": "bad"},
    ]
    table = summary_table(rows)
    assert list(table.columns) == [*SUMMARY_COLUMNS, "seconds_embed"]
    assert table["error"].tolist()[1] == "bad"


def test_write_summary_leaves_only_the_csv(tmp_path):
    path = write_summary(summary_table([{"slide": "a", "status": "done"}]), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["summary.csv"]
    assert pd.read_csv(path)["slide"].tolist() == ["a"]


def test_default_workers_is_bounded_by_slides_and_cores():
    assert default_workers(1) == 1
    assert 1 <= default_workers(100) <= max(1, (__import__("os").cpu_count() or 1) // 2)


def test_run_slide_reports_a_slide_without_mpp_as_failed(tmp_path, random_encoder_path):
    slide = write_tissue_tiff(tmp_path / "nompp.tif", seed=0, mpp=None)
    job = SlideJob(
        slide, tmp_path / "out" / "nompp.zarr", model=str(random_encoder_path)
    )
    row = run_slide(job)
    assert row["status"] == "failed"
    assert "records no pixel size" in row["error"] and "--mpp" in row["error"]
    with pytest.raises(ValueError, match="records no pixel size"):
        run_slide(job, catch=False)


def test_run_slide_reports_an_unreadable_file_as_failed(tmp_path, random_encoder_path):
    slide = tmp_path / "broken.svs"
    slide.write_bytes(b"II*\x00" + b"\x00" * 64)
    job = SlideJob(slide, tmp_path / "broken.zarr", model=str(random_encoder_path))
    row = run_slide(job)
    assert row["status"] == "failed" and "broken.svs" in row["error"]


@pytest.mark.slow
def test_run_cohort_analyses_each_slide_on_a_local_cluster(
    cohort_dir, tmp_path, random_encoder_path
):
    from napari_lemon.store import read_results

    # two good slides and one without a pixel size
    write_tissue_tiff(cohort_dir / "slide2.tif", seed=2, mpp=None)
    options = {"segmenter": "classical", "tile_um": 96.0, "n_clusters": 2}
    jobs = plan_jobs(
        find_slides([cohort_dir]),
        tmp_path / "out",
        model=str(random_encoder_path),
        device="cpu",
        precision="fp32",
        options=options,
    )
    finished = []
    table = run_cohort(jobs, n_workers=1, on_done=finished.append)

    assert table["slide"].tolist() == [str(j.slide) for j in jobs]
    assert table["status"].tolist() == ["done", "done", "failed"]
    assert sorted(r["slide"] for r in finished) == sorted(table["slide"])
    assert "records no pixel size" in table["error"].iloc[2]
    for job, nuclei in zip(jobs[:2], table["nuclei"].iloc[:2], strict=True):
        adata = read_results(job.out)
        assert adata.n_obs == nuclei > 10
        assert adata.obsm["X_lemon"].shape == (nuclei, 384)
