"""``lemon probe train`` and ``lemon probe apply`` on stores made here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from napari_lemon.analysis.probe import LinearProbe
from napari_lemon.annotations import Annotations, annotations_path
from napari_lemon.cli import main
from napari_lemon.incremental_store import IncrementalStore
from napari_lemon.store import build_results, read_results, write_results

DIM = 16
CLASSES = ["tumour", "immune", "stroma"]
ENCODER = {"name": "test-vit", "sha256": "ab" * 32, "mpp": 0.25, "crop_size": 40}
CENTRES = np.random.default_rng(42).normal(scale=2.0, size=(3, DIM))


def make_tile(tile_id: int, n: int):
    """Nuclei of all three kinds; the kind of each is returned as its truth."""
    rng = np.random.default_rng(tile_id)
    truth = rng.integers(0, 3, n)
    obs = pd.DataFrame(
        {
            "nucleus_id": tile_id * 10_000 + np.arange(n),
            "x": tile_id * 2048 + rng.uniform(0, 2048, n),
            "y": rng.uniform(0, 2048, n),
            "area_um2": rng.uniform(10, 60, n),
            "segmenter": "classical",
            "tile_id": tile_id,
        }
    )
    embeddings = CENTRES[truth] + 0.7 * rng.normal(size=(n, DIM))
    outlines = [rng.uniform(0, 10, (4, 2)) for _ in range(n)]
    return obs, embeddings.astype(np.float32), outlines, truth


def make_zarr(path, n_tiles=4, n=60, encoder=ENCODER):
    provenance = {"source": {"name": "slide.svs"}, "mpp": 0.5, "encoder": encoder}
    truth = []
    with IncrementalStore.open(
        path, run_key={"k": 1}, provenance=provenance, embed_dim=DIM
    ) as store:
        for tile_id in range(n_tiles):
            obs, embeddings, outlines, kinds = make_tile(tile_id, n)
            store.append_tile(tile_id, obs, embeddings, outlines)
            truth.append(kinds)
        store.finish(None, {})
    return path, np.concatenate(truth)


def make_h5ad(path, n=200, encoder=ENCODER):
    obs, embeddings, outlines, truth = make_tile(7, n)
    obs["tile_id"] = 0
    provenance = {"source": {"name": "other.svs"}, "mpp": 0.5, "encoder": encoder}
    adata = build_results(obs, embeddings, outlines, provenance)
    return write_results(adata, path), truth


def brush(store, truth, per_class=12, types=CLASSES, step=5):
    """Labels of nuclei of each kind from all tiles, saved beside the store."""
    ids = read_results(store).obs["nucleus_id"].to_numpy()
    annotations = Annotations(annotations_path(store))
    for name in types:
        annotations.add_type(name)
    for kind, name in enumerate(types):
        annotations.label(ids[truth == kind][::step][:per_class], name)
    return annotations


def test_train_then_apply_types_every_nucleus(tmp_path, capsys):
    store, truth = make_zarr(tmp_path / "slide.lemon.zarr")
    brush(store, truth)
    probe_path = tmp_path / "cells.safetensors"

    assert main(["probe", "train", str(store), "--out", str(probe_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("balanced accuracy 1.00 (5 folds of whole regions)\n")
    assert "confusion (rows: labelled as" in out and "immune" in out
    assert f"of 36 labels (tumour 12, immune 12, stroma 12) -> {probe_path}" in out
    probe = LinearProbe.load(probe_path)
    assert probe.classes == CLASSES and probe.encoder_sha256 == ENCODER["sha256"]
    assert probe.mpp == 0.25 and probe.metrics["grouping"] == "regions"

    assert main(["probe", "apply", str(probe_path), str(store)]) == 0
    out = capsys.readouterr().out
    assert "240 nuclei typed (" in out and "obs['probe_cell_type']" in out
    adata = read_results(store)
    predicted = adata.obs["probe_cell_type"]
    assert list(predicted.cat.categories) == CLASSES
    assert (predicted.cat.codes.to_numpy() == truth).mean() > 0.95
    assert adata.obsm["probe_cell_type"].shape == (240, 3)
    assert adata.obs["probe_cell_type_proba"].min() >= 1 / 3
    assert list(adata.uns["probe_cell_type_colors"]) == probe.colours


def test_train_on_one_tile_uses_spatial_blocks(tmp_path, capsys):
    results, truth = make_h5ad(tmp_path / "region.h5ad")
    brush(results, truth, per_class=15)
    out_path = tmp_path / "p.safetensors"
    args = ["probe", "train", str(results), "--out", str(out_path)]
    assert main([*args, "--name", "kind", "--block-um", "512"]) == 0
    out = capsys.readouterr().out
    assert "folds of whole regions" in out or "folds of single nuclei" in out
    assert LinearProbe.load(out_path).name == "kind"


@pytest.mark.parametrize("block_um", [None, 512.0])
def test_train_folds_and_words_as_the_panel_does(tmp_path, capsys, block_um):
    from napari_lemon._widgets._probe_job import REGION_UM
    from napari_lemon._widgets._probe_report import summary_of
    from napari_lemon.analysis.probe import CV_BLOCK_UM, cross_validate, region_groups
    from napari_lemon.probe_command import BLOCK_UM

    assert BLOCK_UM == CV_BLOCK_UM == REGION_UM  # one block size everywhere
    store, truth = make_zarr(tmp_path / "slide.lemon.zarr")
    annotations = brush(store, truth)
    probe_path = tmp_path / "cells.safetensors"
    extra = [] if block_um is None else ["--block-um", str(block_um)]

    assert main(["probe", "train", str(store), "--out", str(probe_path), *extra]) == 0

    # the panel's computation (LayerTyping.probe_request, then measure)
    adata = read_results(store)
    rows = np.flatnonzero(annotations.labels_for(adata.obs["nucleus_id"]) != "")
    xy = adata.obs[["x", "y"]].to_numpy()[rows]
    mpp = adata.uns["lemon"]["mpp"]
    groups = region_groups(xy[:, 0], xy[:, 1], (block_um or REGION_UM) / mpp)
    labels = annotations.labels_for(adata.obs["nucleus_id"])[rows]
    panel = cross_validate(
        adata.obsm["X_lemon"][rows], labels, groups, annotations.type_names()
    )
    saved = LinearProbe.load(probe_path).metrics
    assert saved["balanced_accuracy"] == panel.balanced_accuracy
    assert saved["confusion"] == panel.confusion.tolist()
    assert capsys.readouterr().out.splitlines()[0] == summary_of(panel.to_dict())


def test_apply_to_several_results_skips_the_mismatched_one(tmp_path, capsys):
    store, truth = make_zarr(tmp_path / "a.zarr")
    brush(store, truth)
    probe_path = tmp_path / "cells.safetensors"
    assert main(["probe", "train", str(store), "--out", str(probe_path)]) == 0
    other = {**ENCODER, "sha256": "cd" * 32, "name": "other-vit"}
    mismatched, _ = make_h5ad(tmp_path / "b.h5ad", encoder=other)
    good, h5_truth = make_h5ad(tmp_path / "c.h5ad")
    capsys.readouterr()

    status = main(["probe", "apply", str(probe_path), str(mismatched), str(good)])
    assert status == 2
    captured = capsys.readouterr()
    assert f"{probe_path} does not suit {mismatched}" in captured.err
    assert "'test-vit'" in captured.err and "'other-vit'" in captured.err
    assert "retrain the probe on these results" in captured.err
    assert "1 of 2 results not typed" in captured.err
    assert f"{mismatched}: skipped" in captured.out
    assert f"{good}: 200 nuclei typed" in captured.out
    assert "probe_cell_type" not in read_results(mismatched).obs
    typed = read_results(good).obs["probe_cell_type"].cat.codes.to_numpy()
    assert (typed == h5_truth).mean() > 0.95


def test_apply_with_another_name_and_to_another_scale(tmp_path, capsys):
    store, truth = make_zarr(tmp_path / "a.zarr")
    brush(store, truth)
    probe_path = tmp_path / "cells.safetensors"
    assert main(["probe", "train", str(store), "--out", str(probe_path)]) == 0

    assert main(["probe", "apply", str(probe_path), str(store), "--name", "v2"]) == 0
    assert "probe_v2" in read_results(store).obs
    coarse, _ = make_h5ad(tmp_path / "coarse.h5ad", encoder={**ENCODER, "mpp": 0.5})
    assert main(["probe", "apply", str(probe_path), str(coarse)]) == 2
    assert "0.25 um/px but" in capsys.readouterr().err


def test_train_says_why_it_cannot(tmp_path, capsys):
    store, truth = make_zarr(tmp_path / "a.zarr", n_tiles=2)
    out = str(tmp_path / "p.safetensors")

    assert main(["probe", "train", str(store), "--out", out]) == 2
    err = capsys.readouterr().err
    assert f"a.annotations.json does not exist (looked for beside {store})" in err
    assert "Labels are made in the LEMON cell types panel, which saves them" in err
    assert "`lemon embed IMAGE --nuclei FILE` from classified outlines" in err
    missing = ["--annotations", str(tmp_path / "gone.json")]
    assert main(["probe", "train", str(store), "--out", out, *missing]) == 2
    err = capsys.readouterr().err
    assert "gone.json does not exist. Labels are made" in err

    annotations = brush(store, truth, types=["tumour", "immune"], step=1)
    annotations.remove_type("immune")
    assert main(["probe", "train", str(store), "--out", out]) == 2
    err = capsys.readouterr().err
    assert "a probe needs labels of at least two types; 'tumour' has 12, it is" in err
    assert "Label nuclei of a second type (in the LEMON cell types panel)" in err
    assert "waits" not in err

    foreign = Annotations(tmp_path / "foreign.json")
    foreign.add_type("tumour")
    foreign.label([999_999], "tumour")
    args = ["probe", "train", str(store), "--annotations", str(foreign.path)]
    assert main([*args, "--out", out]) == 2
    assert "labels 1 nucleus but none of them is among" in capsys.readouterr().err

    notes = tmp_path / "notes.json"
    notes.write_text('{"a": 1}')
    args = ["probe", "train", str(store), "--annotations", str(notes)]
    assert main([*args, "--out", out]) == 2
    err = capsys.readouterr().err
    assert f"--annotations {notes} is JSON but not a napari-lemon annotations" in err
    assert "give a labels file of the LEMON cell types panel" in err
    assert "move it away" not in err

    assert main(["probe", "train", str(store), "--out", "p.pt"]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
    assert main(["probe", "train", str(store), "--out", out, "--name", "a b"]) == 2
    assert "letters, digits and underscores" in capsys.readouterr().err


def test_train_warns_of_labels_of_nuclei_the_results_lack(tmp_path, capsys):
    store, truth = make_zarr(tmp_path / "a.zarr", n_tiles=2)
    annotations = brush(store, truth)
    annotations.label([999_998, 999_999], "tumour")
    out = tmp_path / "p.safetensors"

    assert main(["probe", "train", str(store), "--out", str(out)]) == 0

    captured = capsys.readouterr()
    assert "2 of 28 labelled nuclei are not among the nuclei of" in captured.err
    assert "the annotations may be of other results" in captured.err
    assert "of 26 labels (" in captured.out


def test_train_keeps_an_existing_probe_unless_overwrite(tmp_path, capsys):
    store, truth = make_zarr(tmp_path / "a.zarr", n_tiles=2)
    brush(store, truth)
    out = tmp_path / "p.safetensors"
    out.write_bytes(b"an earlier probe")
    args = ["probe", "train", str(store), "--out", str(out)]

    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"--out '{out}' exists; pass --overwrite to replace it" in err
    assert out.read_bytes() == b"an earlier probe"

    assert main([*args, "--overwrite"]) == 0
    assert LinearProbe.load(out).classes == CLASSES


def test_train_into_a_folder_it_cannot_write_says_so(tmp_path, capsys, monkeypatch):
    import safetensors.numpy

    def refuse(tensors, filename, metadata=None):
        raise safetensors.SafetensorError(
            "Error while serializing: I/O error: Permission denied (os error 13) "
            'at path "ro/.tmp1234"'
        )

    store, truth = make_zarr(tmp_path / "a.zarr", n_tiles=2)
    brush(store, truth)
    monkeypatch.setattr(safetensors.numpy, "save_file", refuse)
    out = tmp_path / "ro" / "probe.safetensors"

    assert main(["probe", "train", str(store), "--out", str(out)]) == 2

    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"lemon: error: cannot write the probe {out}: Permission denied; choose a "
        "folder you may write to (and with free space)"
    )


def test_apply_checks_each_store_can_be_written_before_predicting(
    tmp_path, capsys, monkeypatch
):
    import tempfile

    from napari_lemon.analysis import probe as probe_module

    store, truth = make_zarr(tmp_path / "a.zarr", n_tiles=2)
    brush(store, truth)
    probe_path = tmp_path / "cells.safetensors"
    assert main(["probe", "train", str(store), "--out", str(probe_path)]) == 0
    capsys.readouterr()

    # a store in a folder one may not write to (tests run as root)
    make = tempfile.TemporaryFile

    def read_only(*args, dir=None, **kwargs):
        if str(dir) == str(store):
            raise PermissionError(13, "Permission denied")
        return make(*args, dir=dir, **kwargs)

    predicted = []
    proba = probe_module.LinearProbe.predict_proba
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    monkeypatch.setattr(
        probe_module.LinearProbe,
        "predict_proba",
        lambda self, x, **kw: predicted.append(len(x)) or proba(self, x, **kw),
    )

    assert main(["probe", "apply", str(probe_path), str(store)]) == 2

    captured = capsys.readouterr()
    assert f"cannot write to the results {store}: Permission denied" in captured.err
    assert f"{store}: skipped" in captured.out and not predicted


def test_apply_reports_unreadable_probes_and_results(tmp_path, capsys):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"junk")
    assert main(["probe", "apply", str(junk), str(tmp_path / "x.zarr")]) == 2
    assert "is not a safetensors file" in capsys.readouterr().err

    store, truth = make_zarr(tmp_path / "a.zarr", n_tiles=2)
    brush(store, truth)
    probe_path = tmp_path / "cells.safetensors"
    assert main(["probe", "train", str(store), "--out", str(probe_path)]) == 0
    missing = tmp_path / "missing.h5ad"
    assert main(["probe", "apply", str(probe_path), str(missing), str(store)]) == 2
    captured = capsys.readouterr()
    assert "missing.h5ad does not exist" in captured.err
    assert "a.zarr: 120 nuclei typed" in captured.out


def test_probe_needs_an_action(capsys):
    with pytest.raises(SystemExit):
        main(["probe"])
    assert "ACTION" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.realdata
def test_crc_cell_types_from_labels_on_other_images(shared_data, tmp_path, capsys):
    """Real nuclei: train on the labels of six CRC images, type two others."""
    from skimage import io

    from napari_lemon.checkpoint import load_encoder
    from napari_lemon.crops import crop_nuclei
    from napari_lemon.store import make_provenance

    # ground-truth nuclei of eight images (20x, about 0.5 um/px)
    table = pd.read_csv(shared_data / "crc" / "nuclei.csv").dropna(subset="cell_type")
    images = sorted(table["image"].unique(), key=lambda s: int(s[3:]))[:8]
    table = table[table["image"].isin(images)].reset_index(drop=True)
    encoder = load_encoder("bundled", "cpu", "fp32")
    embeddings = []
    for image in images:
        pixels = io.imread(shared_data / "crc" / "images" / f"{image}.png")[..., :3]
        points = table.loc[table["image"] == image, ["x", "y"]].to_numpy()
        embeddings.append(encoder.embed(crop_nuclei(pixels, points, image_mpp=0.5)))

    # one result for all of them, each image a tile
    n = len(table)
    obs = pd.DataFrame(
        {
            "nucleus_id": np.arange(n),
            "x": table["x"] + 1000.0 * table["image"].map(images.index),
            "y": table["y"],
            "area_um2": 30.0,
            "segmenter": "points",
            "tile_id": table["image"].map(images.index),
        }
    )
    provenance = make_provenance(None, 0.5, None, "points", encoder_card=encoder.card)
    adata = build_results(
        obs, np.concatenate(embeddings), [np.zeros((0, 2))] * n, provenance
    )
    results = write_results(adata, tmp_path / "crc.h5ad")

    # brush the types of the first six images
    types = ["epithelial", "inflammatory", "fibroblast", "others"]
    annotations = Annotations(annotations_path(results))
    for name in types:
        annotations.add_type(name)
    train = obs["tile_id"] < 6
    for name in types:
        annotations.label(np.flatnonzero(train & (table["cell_type"] == name)), name)

    probe_path = tmp_path / "crc.safetensors"
    assert main(["probe", "train", str(results), "--out", str(probe_path)]) == 0
    out = capsys.readouterr().out
    assert "folds of whole regions)" in out.splitlines()[0]
    assert main(["probe", "apply", str(probe_path), str(results)]) == 0

    # balanced accuracy on the two images never labelled (chance: 0.25)
    from sklearn.metrics import balanced_accuracy_score

    predicted = read_results(results).obs["probe_cell_type"].astype(str).to_numpy()
    held_out = ~train.to_numpy()
    score = balanced_accuracy_score(table["cell_type"][held_out], predicted[held_out])
    print(f"CRC held-out balanced accuracy {score:.3f} over {held_out.sum()} nuclei")
    assert score > 0.4
