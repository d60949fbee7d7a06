"""The results contract: AnnData layout, ragged outlines, provenance, atomic files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_lemon import store
from napari_lemon.encoder import EncoderCard
from napari_lemon.store import (
    build_results,
    file_fingerprint,
    make_provenance,
    outlines_of,
    read_results,
    set_clusters,
    write_results,
)


def make_obs(n: int, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "nucleus_id": np.arange(1, n + 1),
            "x": rng.uniform(0, 1000, n),
            "y": rng.uniform(0, 500, n),
            "area_um2": rng.uniform(10, 60, n),
            "segmenter": "classical",
            "tile_id": 0,
        }
    )


def make_outlines(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.uniform(0, 100, (int(rng.integers(3, 9)), 2)) for _ in range(n)]


@pytest.fixture
def results():
    rng = np.random.default_rng(0)
    obs, outlines = make_obs(5, rng), make_outlines(5, rng)
    embeddings = rng.normal(size=(5, 384))
    provenance = make_provenance(None, 0.5, (10, 20, 300, 400), "classical", {"a": 1})
    return build_results(obs, embeddings, outlines, provenance), obs, outlines


def test_build_results_follows_the_contract(results):
    adata, obs, _ = results
    assert list(adata.obs.columns[:6]) == list(store.OBS_COLUMNS)
    assert adata.obsm["X_lemon"].shape == (5, 384)
    assert adata.obsm["X_lemon"].dtype == np.float32
    assert adata.obsm["spatial"].dtype == np.float64
    np.testing.assert_array_equal(adata.obsm["spatial"], obs[["x", "y"]].to_numpy())
    assert list(adata.obs_names) == [str(i) for i in range(1, 6)]


def test_outlines_round_trip_through_the_ragged_store(results):
    adata, _, outlines = results
    packed = adata.uns["outlines"]
    assert packed["offsets"].dtype == np.int64
    assert packed["offsets"].shape == (6,)
    assert packed["xy"].shape == (sum(len(o) for o in outlines), 2)
    for got, expected in zip(outlines_of(adata), outlines, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_provenance_records_region_times_and_version(results):
    adata, _, _ = results
    lemon = adata.uns["lemon"]
    assert lemon["region"] == [10, 20, 300, 400]
    assert lemon["segmenter"] == {"name": "classical", "params": {"a": 1}}
    assert lemon["version"] == "0.1.0"
    assert lemon["created"] == lemon["updated"]
    assert lemon["created"].endswith("+00:00")


def test_write_and_read_round_trip_with_clusters(results, tmp_path):
    adata, obs, outlines = results
    set_clusters(adata, np.array([0, 2, 1, 2, 0]))
    path = write_results(adata, tmp_path / "sub" / "nuclei.h5ad")
    back = read_results(path)

    assert back.obs["cluster"].dtype == "category"
    assert back.obs["cluster"].to_numpy(dtype=int).tolist() == [0, 2, 1, 2, 0]
    np.testing.assert_allclose(back.obs["x"], obs["x"])
    np.testing.assert_allclose(back.obsm["X_lemon"], adata.obsm["X_lemon"])
    assert len(outlines_of(back)) == 5
    assert list(back.uns["lemon"]["region"]) == [10, 20, 300, 400]
    assert [p.name for p in tmp_path.joinpath("sub").iterdir()] == ["nuclei.h5ad"]


def test_zero_nuclei_make_an_empty_but_complete_file(tmp_path):
    obs = store.empty_obs()
    adata = build_results(
        obs, np.empty((0, 384)), [], make_provenance(None, 0.5, None, "c")
    )
    set_clusters(adata, np.empty(0, dtype=int))
    back = read_results(write_results(adata, tmp_path / "empty.h5ad"))
    assert back.n_obs == 0
    assert back.obsm["X_lemon"].shape == (0, 384)
    assert back.obsm["spatial"].shape == (0, 2)
    assert outlines_of(back) == []
    assert set(store.OBS_COLUMNS) <= set(back.obs.columns)


def test_interrupted_write_leaves_no_file(results, tmp_path, monkeypatch):
    adata, _, _ = results

    def crash(self, path, **kwargs):
        open(path, "wb").write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(type(adata), "write_h5ad", crash)
    with pytest.raises(KeyboardInterrupt):
        write_results(adata, tmp_path / "nuclei.h5ad")
    assert list(tmp_path.iterdir()) == []


def test_file_fingerprint_hashes_small_files_whole(tmp_path):
    import hashlib

    path = tmp_path / "slide.svs"
    path.write_bytes(b"abc" * 1000)
    info = file_fingerprint(path)
    assert info["sha256"] == hashlib.sha256(b"abc" * 1000).hexdigest()
    assert info["sha256_scope"] == "full file"
    assert info["name"] == "slide.svs" and info["size"] == 3000


def test_file_fingerprint_hashes_large_files_by_their_ends(tmp_path, monkeypatch):
    import hashlib

    monkeypatch.setattr(store, "FULL_HASH_LIMIT", 10)
    monkeypatch.setattr(store, "PARTIAL_HASH_BLOCK", 4)
    path = tmp_path / "big.svs"
    path.write_bytes(b"0123456789abcdef")
    info = file_fingerprint(path)
    assert info["sha256"] == hashlib.sha256(b"0123cdef16").hexdigest()
    assert "first and last" in info["sha256_scope"]


def test_provenance_names_the_encoder_card(tmp_path):
    card = EncoderCard(name="random-test", sha256="f" * 64)
    source = tmp_path / "a.tif"
    source.write_bytes(b"x")
    prov = make_provenance(source, 0.25, None, "classical", encoder_card=card, seed=3)
    assert prov["encoder"]["name"] == "random-test"
    assert prov["encoder"]["sha256"] == "f" * 64
    assert prov["source"]["name"] == "a.tif"
    assert prov["seed"] == 3


def test_build_results_refuses_missing_columns():
    obs = make_obs(3, np.random.default_rng(0)).drop(columns=["area_um2"])
    with pytest.raises(ValueError, match=r"obs lacks columns \['area_um2'\]"):
        build_results(obs, np.zeros((3, 384)), [np.zeros((3, 2))] * 3, {})


def test_build_results_refuses_embeddings_of_another_length():
    obs = make_obs(3, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"embeddings have shape \(2, 384\)"):
        build_results(obs, np.zeros((2, 384)), [np.zeros((3, 2))] * 3, {})


def test_build_results_refuses_one_outline_too_few():
    obs = make_obs(3, np.random.default_rng(0))
    with pytest.raises(ValueError, match="outlines has 2 polygons for 3 nuclei"):
        build_results(obs, np.zeros((3, 384)), [np.zeros((3, 2))] * 2, {})


def test_set_clusters_refuses_wrong_length(results):
    adata, _, _ = results
    with pytest.raises(ValueError, match=r"clusters has shape \(4,\)"):
        set_clusters(adata, np.zeros(4, dtype=int))


def test_write_results_refuses_other_suffixes(results, tmp_path):
    with pytest.raises(ValueError, match="must end in .h5ad"):
        write_results(results[0], tmp_path / "nuclei.zarr")


def test_read_results_errors_are_clear(tmp_path):
    import anndata

    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_results(tmp_path / "missing.h5ad")

    junk = tmp_path / "junk.h5ad"
    junk.write_text("not hdf5")
    with pytest.raises(ValueError, match="not a readable .h5ad file"):
        read_results(junk)

    other = tmp_path / "other.h5ad"
    anndata.AnnData(obs=pd.DataFrame(index=["a", "b"])).write_h5ad(other)
    with pytest.raises(ValueError, match="not napari-lemon results.*nucleus_id"):
        read_results(other)


def test_outlines_of_refuses_foreign_anndata():
    import anndata

    with pytest.raises(ValueError, match="no uns\\['outlines'\\]"):
        outlines_of(anndata.AnnData(obs=pd.DataFrame(index=["a"])))


@pytest.mark.filterwarnings("ignore:Writing zarr v2 data")
def test_read_results_reads_results_written_to_zarr_by_anndata(results, tmp_path):
    adata, obs, outlines = results
    set_clusters(adata, np.array([0, 2, 1, 2, 0]))
    adata.write_zarr(tmp_path / "nuclei.zarr")
    back = read_results(tmp_path / "nuclei.zarr")
    assert back.obs["cluster"].to_numpy(dtype=int).tolist() == [0, 2, 1, 2, 0]
    np.testing.assert_array_equal(back.obsm["X_lemon"], adata.obsm["X_lemon"])
    assert len(outlines_of(back)) == 5


def test_read_results_names_an_unfinished_zarr_store(tmp_path):
    from napari_lemon.incremental_store import IncrementalStore

    path = tmp_path / "nuclei.zarr"
    IncrementalStore.open(
        path, run_key={}, provenance={}, embed_dim=4, total_tiles=3
    ).close()
    with pytest.raises(store.StoreError, match=r"incomplete \(0 of 3 tiles done\)"):
        read_results(path)
