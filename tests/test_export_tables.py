"""AnnData and CSV exports, and export_results on .h5ad files and .zarr stores."""

from __future__ import annotations

import gzip
import json

import anndata
import numpy as np
import pandas as pd
import pytest
from test_export_geojson import CLASSES, MPP, synthetic_results

from napari_lemon.annotations import Annotations, annotations_path, results_identity
from napari_lemon.export import (
    EXPORT_FORMATS,
    export_csv,
    export_h5ad,
    export_results,
    format_from_name,
)
from napari_lemon.export._io import read_for_export
from napari_lemon.incremental_store import IncrementalStore
from napari_lemon.store import StoreError, write_results


@pytest.fixture
def annotations():
    labels = Annotations()
    labels.add_type("immune", "#0000ff")
    labels.add_type("tumour", "#ff0000")
    labels.label([100, 102], "immune")
    labels.label([104], "tumour")
    return labels


def zarr_store(path, n=12, finish=True):
    """A results store written tile by tile, as ``lemon analyze`` writes it."""
    adata = synthetic_results(n, probe=False)
    obs = adata.obs[["nucleus_id", "x", "y", "area_um2", "segmenter", "tile_id"]]
    outlines = [np.asarray(o) for o in _outlines(adata)]
    run_key = {"source": {"sha256": "ab12"}, "mpp": MPP}
    store = IncrementalStore.open(
        path, run_key=run_key, provenance=dict(adata.uns["lemon"]), embed_dim=16
    )
    with store:
        store.append_tile(0, obs, adata.obsm["X_lemon"], outlines)
        if finish:
            store.finish(np.arange(n) % 3, {})
    return path


def _outlines(adata):
    from napari_lemon.store import outlines_of

    return outlines_of(adata)


# h5ad


def test_h5ad_carries_labels_probe_columns_and_colours(tmp_path, annotations):
    adata = synthetic_results(6)

    path = export_h5ad(adata, tmp_path / "out.h5ad", annotations=annotations)

    back = anndata.read_h5ad(path)
    label = back.obs["label"]
    assert list(label.cat.categories) == ["immune", "tumour"]
    assert label.tolist()[:5] == ["immune", np.nan, "immune", np.nan, "tumour"]
    assert list(back.uns["label_colors"]) == ["#0000ff", "#ff0000"]
    assert list(back.obs["probe_cell_type"].cat.categories) == CLASSES
    np.testing.assert_array_equal(
        back.obsm["probe_cell_type"], adata.obsm["probe_cell_type"]
    )
    assert len(back.uns["cluster_colors"]) == 3
    assert back.obsm["X_lemon"].dtype == np.float16  # kept as the store keeps it
    assert "label" not in adata.obs  # the results themselves are left alone


@pytest.mark.slow
def test_scanpy_reads_and_clusters_the_h5ad(tmp_path):
    import scanpy as sc

    rng = np.random.default_rng(1)
    adata = synthetic_results(120, dim=32)
    groups = np.repeat([0, 1, 2], 40)
    embeddings = rng.normal(size=(120, 32)) * 0.3 + 4 * np.eye(32)[groups]
    adata.obsm["X_lemon"] = embeddings.astype(np.float16)

    back = sc.read_h5ad(export_h5ad(adata, tmp_path / "out.h5ad"))
    sc.pp.neighbors(back, use_rep="X_lemon", n_neighbors=10)
    sc.tl.leiden(back, flavor="igraph", n_iterations=2, directed=False)

    found = pd.crosstab(back.obs["leiden"].to_numpy(), groups)
    assert found.shape == (3, 3)
    assert (found.max(axis=0) == 40).all()  # each group is one cluster


@pytest.mark.parametrize(
    "results, name, match",
    [
        ("full", "out.csv", "must end in .h5ad"),
        ("lean", "out.h5ad", r"no obsm\['X_lemon'\]"),
    ],
)
def test_h5ad_export_refuses(tmp_path, results, name, match):
    adata = synthetic_results(3)
    if results == "lean":
        del adata.obsm["X_lemon"]
    with pytest.raises(ValueError, match=match):
        export_h5ad(adata, tmp_path / name)


# CSV


def test_csv_has_one_row_per_nucleus_and_no_embeddings(tmp_path, annotations):
    adata = synthetic_results(6)
    adata.obs["score"] = np.arange(6.0)  # a column of the caller's

    table = pd.read_csv(export_csv(adata, tmp_path / "n.csv", annotations=annotations))

    assert list(table.columns) == [
        "nucleus_id",
        "x",
        "y",
        "x_um",
        "y_um",
        "area_um2",
        "segmenter",
        "tile_id",
        "cluster",
        "label",
        "probe_cell_type",
        "probe_cell_type_proba",
        "probe_cell_type_proba_tumour",
        "probe_cell_type_proba_stroma",
        "score",
    ]
    assert len(table) == 6
    np.testing.assert_allclose(table["x_um"], adata.obs["x"].to_numpy() * MPP)
    np.testing.assert_allclose(table["y_um"], adata.obs["y"].to_numpy() * MPP)
    assert table["label"].fillna("").tolist() == [
        "immune",
        "",
        "immune",
        "",
        "tumour",
        "",
    ]
    np.testing.assert_allclose(
        table["probe_cell_type_proba_stroma"], adata.obsm["probe_cell_type"][:, 1]
    )


def test_csv_gzip_by_name(tmp_path):
    path = export_csv(synthetic_results(4), tmp_path / "n.csv.gz")

    with gzip.open(path, "rt") as fh:
        assert len(pd.read_csv(fh)) == 4


# export_results


def test_export_results_reads_the_labels_beside_the_store(tmp_path, annotations):
    results = write_results(synthetic_results(6), tmp_path / "slide.h5ad")
    annotations.save(annotations_path(results))

    out = export_results(results, "csv", tmp_path / "n.csv")

    labels = pd.read_csv(out)["label"].fillna("").tolist()
    assert labels == ["immune", "", "immune", "", "tumour", ""]


def test_labels_of_other_results_are_exported_with_a_warning(tmp_path, annotations):
    results = write_results(synthetic_results(6), tmp_path / "slide.h5ad")
    annotations.results_id = {"n_obs": 999, "source": "slide.svs"}
    annotations.save(annotations_path(results))

    with pytest.warns(UserWarning, match="may belong to other results"):
        export_results(results, "geojson", tmp_path / "n.geojson")


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_export_results_from_a_zarr_store(tmp_path, fmt):
    store = zarr_store(tmp_path / "slide.zarr")
    out = tmp_path / f"n.{fmt}"

    export_results(store, fmt, out)

    if fmt == "geojson":
        assert len(json.loads(out.read_text())["features"]) == 12
    elif fmt == "csv":
        assert pd.read_csv(out)["cluster"].tolist() == [i % 3 for i in range(12)]
    else:
        assert anndata.read_h5ad(out).obsm["X_lemon"].shape == (12, 16)


def test_geojson_and_csv_read_the_store_without_its_embeddings(tmp_path):
    store = zarr_store(tmp_path / "slide.zarr")
    h5ad = write_results(synthetic_results(5), tmp_path / "slide.h5ad")

    for path in (store, h5ad):
        lean = read_for_export(path, embeddings=False)
        assert "X_lemon" not in lean.obsm and "spatial" in lean.obsm
        assert "outlines" in lean.uns and lean.uns["lemon"]["mpp"] == MPP


def test_an_unfinished_store_is_refused(tmp_path):
    store = zarr_store(tmp_path / "slide.zarr", finish=False)

    with pytest.raises(StoreError, match="is incomplete"):
        export_results(store, "geojson", tmp_path / "n.geojson")
    assert not (tmp_path / "n.geojson").exists()


def test_export_results_errors_name_the_file(tmp_path):
    results = write_results(synthetic_results(3), tmp_path / "slide.h5ad")
    not_results = tmp_path / "other.h5ad"
    anndata.AnnData(obs=pd.DataFrame(index=["a"])).write_h5ad(not_results)
    text = tmp_path / "notes.h5ad"
    text.write_text("not hdf5")

    with pytest.raises(FileNotFoundError, match="nope.h5ad does not exist"):
        export_results(tmp_path / "nope.h5ad", "csv", tmp_path / "n.csv")
    with pytest.raises(ValueError, match=r"other.h5ad is not napari-lemon results"):
        export_results(not_results, "csv", tmp_path / "n.csv")
    with pytest.raises(ValueError, match=r"notes.h5ad is not a readable .h5ad"):
        export_results(text, "csv", tmp_path / "n.csv")
    with pytest.raises(ValueError, match=r"export format 'shp' is unknown"):
        export_results(results, "shp", tmp_path / "n.shp")
    with pytest.raises(ValueError, match=r"cannot tell the export format .*n.txt"):
        export_results(results, None, tmp_path / "n.txt")
    with pytest.raises(ValueError, match="is the results file itself"):
        export_results(results, "h5ad", results)


def test_format_from_the_name():
    assert format_from_name("a/n.geojson.gz") == "geojson"
    assert format_from_name("n.json") == "geojson"
    assert format_from_name("n.CSV") == "csv"
    assert format_from_name("n.h5ad") == "h5ad"
    assert format_from_name("n.tif") is None


def test_results_identity_of_an_export_matches_its_results(tmp_path):
    adata = synthetic_results(4)
    back = anndata.read_h5ad(export_h5ad(adata, tmp_path / "n.h5ad"))

    assert results_identity(back) == results_identity(adata)


@pytest.mark.parametrize(
    "error",
    [
        lambda tmp: PermissionError(13, "Permission denied", str(tmp)),
        lambda tmp: OSError(f"Unable to create file (name = '{tmp}', errno = 13)"),
    ],
)
def test_write_failures_name_the_target_not_the_temporary_file(tmp_path, error):
    from napari_lemon.export._io import atomic_output

    target = tmp_path / "cells.h5ad"
    with pytest.raises(OSError, match="choose a folder you may write to") as caught:
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise error(tmp)

    message = str(caught.value)
    assert message.startswith(f"cannot write {target}: ")
    assert ".part" not in message
    assert not target.exists() and not list(tmp_path.iterdir())
