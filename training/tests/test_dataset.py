"""The crop dataset reader: RAM and zarr reads, batches, and its error messages."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from lemon_training.data.dataset import (
    DatasetError,
    batch_indices,
    iter_batches,
    open_dataset,
    save_dataset,
    shard_path,
    write_shard,
)


def numbered_crops(n: int, size: int = 8) -> np.ndarray:
    """Crops whose pixels hold their own index (mod 256) in channel 0."""
    crops = np.zeros((n, size, size, 3), dtype=np.uint8)
    crops[..., 0] = (np.arange(n) % 256)[:, None, None]
    crops[..., 1] = (np.arange(n) // 256)[:, None, None]
    return crops


def index_of(crops: np.ndarray) -> np.ndarray:
    return crops[:, 0, 0, 0].astype(int) + 256 * crops[:, 0, 0, 1].astype(int)


def two_shard_dataset(folder, sizes=(30, 50), size=8):
    """A dataset of two shards written by the curation writer, with a manifest."""
    shards, start = [], 0
    for k, n in enumerate(sizes):
        crops = numbered_crops(start + n, size)[start:]
        table = pd.DataFrame(
            {"x": np.arange(n) * 1.0, "y": 2.0, "cell_type": ["a", "b"] * (n // 2)}
        )
        attrs = {"slide": f"s{k}.tif", "source": "syn", "split": "", "mpp": 0.5}
        attrs["method"] = "centres"
        write_shard(shard_path(folder, f"s{k}"), table, [crops], attrs, size)
        shards.append({"name": f"s{k}", "n_crops": n})
        start += n
    manifest = {"format": "lemon-crops", "version": 1, "crop_size": size, "mpp": 0.25}
    (folder / "manifest.json").write_text(json.dumps(manifest | {"shards": shards}))
    return folder


@pytest.fixture()
def folder(tmp_path):
    return two_shard_dataset(tmp_path / "data")


@pytest.mark.parametrize("memory_limit_gb", [8.0, 0.0])
def test_read_returns_the_crops_at_any_indices_from_ram_or_zarr(
    folder, memory_limit_gb
):
    dataset = open_dataset(folder, memory_limit_gb=memory_limit_gb)
    indices = np.array([79, 0, 31, 31, 29, 30, 5])

    crops = dataset.read(indices)

    assert dataset.in_memory == (memory_limit_gb > 0)
    assert len(dataset) == 80 and crops.shape == (7, 8, 8, 3)
    np.testing.assert_array_equal(index_of(crops), indices)


def test_table_has_one_row_per_crop_with_shard_and_cell_type(folder):
    table = open_dataset(folder).table

    assert list(table.columns) == [
        "shard",
        "slide",
        "x",
        "y",
        "mpp",
        "source",
        "split",
        "cell_type",
    ]
    assert table.shard.tolist() == ["s0"] * 30 + ["s1"] * 50
    assert table.cell_type.iloc[:4].tolist() == ["a", "b", "a", "b"]
    assert table.x.iloc[31] == 1.0 and table.slide.iloc[31] == "s1.tif"


def test_sample_is_seeded_and_capped_at_the_dataset_size(folder):
    dataset = open_dataset(folder)

    a, b = dataset.sample(10, seed=3), dataset.sample(10, seed=3)

    np.testing.assert_array_equal(a, b)
    assert len(np.unique(index_of(a))) == 10
    assert not np.array_equal(index_of(a), index_of(dataset.sample(10, seed=4)))
    assert len(dataset.sample(1000, seed=0)) == 80


def test_bad_indices_and_sample_sizes_are_refused(folder):
    dataset = open_dataset(folder)

    with pytest.raises(IndexError, match="indices must lie in 0..79"):
        dataset.read(np.array([80]))
    with pytest.raises(ValueError, match="1-D integer array"):
        dataset.read(np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="n=0 must be a positive"):
        dataset.sample(0)


def test_batches_cover_each_epoch_once_and_depend_on_the_step_only():
    first_epoch = np.concatenate([batch_indices(s, 24, 8, seed=3) for s in range(3)])

    assert sorted(first_epoch) == list(range(24))
    np.testing.assert_array_equal(
        batch_indices(4, 24, 8, 3), batch_indices(4, 24, 8, 3)
    )
    assert not np.array_equal(batch_indices(3, 24, 8, 3), batch_indices(0, 24, 8, 3))


def test_iter_batches_yield_the_steps_batches_and_resume_mid_run(folder):
    dataset = open_dataset(folder, memory_limit_gb=0)

    run = iter_batches(dataset, batch_size=16, seed=1)
    straight = [next(run) for _ in range(7)]
    run.close()
    resumed = iter_batches(dataset, batch_size=16, seed=1, start_step=4)
    later = [next(resumed) for _ in range(3)]
    resumed.close()

    assert [step for step, _ in straight] == list(range(7))
    for step, batch in straight:
        np.testing.assert_array_equal(index_of(batch), batch_indices(step, 80, 16, 1))
    for (s1, b1), (s2, b2) in zip(straight[4:], later, strict=True):
        assert s1 == s2
        np.testing.assert_array_equal(b1, b2)


def test_batch_larger_than_the_dataset_is_refused_at_once(folder):
    dataset = open_dataset(folder)

    with pytest.raises(ValueError, match="batch_size=128 is larger than the 80 crops"):
        iter_batches(dataset, batch_size=128, seed=0)
    with pytest.raises(ValueError, match="prefetch=0 must be >= 1"):
        iter_batches(dataset, batch_size=8, seed=0, prefetch=0)


def test_save_dataset_writes_a_readable_one_shard_dataset(tmp_path):
    crops = numbered_crops(20, size=12)

    dataset = open_dataset(save_dataset(tmp_path / "d", crops, mpp=0.5))

    assert len(dataset) == 20 and dataset.crop_size == 12 and dataset.mpp == 0.5
    np.testing.assert_array_equal(dataset.read(np.arange(20)), crops)


def test_folder_without_manifest_tells_to_run_curate(tmp_path):
    with pytest.raises(DatasetError, match="not a crop dataset.*lemon-train curate"):
        open_dataset(tmp_path)


def test_unfinished_curation_tells_to_rerun_it(tmp_path):
    (tmp_path / "curate.json").write_text("{}")

    with pytest.raises(DatasetError, match="did not finish; rerun the same"):
        open_dataset(tmp_path)


def test_folder_of_the_former_layout_is_named_as_such(tmp_path):
    np.save(tmp_path / "crops.npy", numbered_crops(2))

    with pytest.raises(DatasetError, match="older version"):
        open_dataset(tmp_path)


def test_manifest_of_another_format_is_refused(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"n_crops": 24}))

    with pytest.raises(DatasetError, match="format=None, not 'lemon-crops'"):
        open_dataset(tmp_path)


def test_empty_shard_is_named_with_what_to_do(folder):
    table = pd.DataFrame({"x": [], "y": [], "cell_type": []})
    write_shard(shard_path(folder, "s1"), table, [], {"mpp": 0.5}, 8)

    with pytest.raises(
        DatasetError,
        match="shard '.*s1.zarr' is empty or incomplete: it holds 0 crops, the "
        "manifest lists 50; delete it and rerun `lemon-train curate`",
    ):
        open_dataset(folder)


def test_missing_shard_is_named(folder):
    shutil.rmtree(shard_path(folder, "s0"))

    with pytest.raises(DatasetError, match="shard '.*s0.zarr' is missing or damaged"):
        open_dataset(folder)


def test_corrupt_shard_file_is_named_when_read(folder):
    files = sorted((shard_path(folder, "s1") / "crops" / "c").rglob("*"))
    data = [f for f in files if f.is_file()][0]
    data.write_bytes(b"\x00garbage" * 100)

    dataset = open_dataset(folder, memory_limit_gb=0)
    assert len(dataset.read(np.array([0, 29]))) == 2  # the other shard still reads
    with pytest.raises(DatasetError, match="shard '.*s1.zarr' cannot be read.*delete"):
        dataset.read(np.array([0, 40]))
    with pytest.raises(DatasetError, match="shard '.*s1.zarr' cannot be read"):
        open_dataset(folder)  # loading into RAM reads every crop


def test_dataset_without_crops_is_refused(tmp_path):
    folder = two_shard_dataset(tmp_path / "d", sizes=(0, 0))

    with pytest.raises(DatasetError, match="holds no crops"):
        open_dataset(folder)


def test_shard_writer_refuses_crops_that_do_not_match_the_table(tmp_path):
    table = pd.DataFrame({"x": [1.0, 2.0], "y": 0.0, "cell_type": ""})

    with pytest.raises(RuntimeError, match="1 crops for a table of 2 rows"):
        write_shard(tmp_path / "s.zarr", table, [numbered_crops(1)], {}, 8)
