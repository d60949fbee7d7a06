"""The linear-probe benchmark: datasets, folds, probes, encoders and the table."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import pandas as pd
import pytest
import yaml

from lemon_training.evaluate import benchmark as benchmark_module
from lemon_training.evaluate.benchmark import (
    add_benchmark_arguments,
    benchmark,
    run_benchmark,
)
from lemon_training.evaluate.datasets import load_folder, load_probe_dataset
from lemon_training.evaluate.encoders import (
    EncoderUnavailable,
    create_probe_encoder,
)
from lemon_training.evaluate.probe import (
    cross_validate,
    make_folds,
    score_regression,
)
from lemon_training.evaluate.table import read_results
from napari_lemon.encoder import CheckpointError


def crops_of(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 40, 40, 3), dtype=np.uint8)


# --- datasets ---------------------------------------------------------------


def test_folder_dataset_reads_labels_groups_and_crops(blob_folder):
    dataset = load_folder(blob_folder)

    assert (dataset.name, dataset.task, dataset.mpp) == ("blobs", "classification", 0.5)
    assert sorted(set(dataset.y)) == ["large", "small"]
    assert len(set(dataset.groups)) == 10  # one group per image without `slide`
    crops = dataset.crops(40, 0.25)
    assert crops.shape == (40, 40, 40, 3) and crops.dtype == np.uint8
    # the centre of a crop is the blob's colour, not the background
    assert crops[0, 20, 20, 0] < 120


def test_slide_column_groups_images(tmp_path, make_blob_folder):
    dataset = load_folder(make_blob_folder(tmp_path / "d", slides=True))

    assert len(set(dataset.groups)) == 5  # two images per slide


def test_folder_without_labels_csv_is_refused(blob_folder):
    (blob_folder / "labels.csv").unlink()

    with pytest.raises(FileNotFoundError, match="has no labels.csv"):
        load_folder(blob_folder)


def test_folder_without_dataset_yaml_is_refused(blob_folder):
    (blob_folder / "dataset.yaml").unlink()

    with pytest.raises(FileNotFoundError, match="has no dataset.yaml"):
        load_folder(blob_folder)


def test_missing_images_are_listed_by_name(blob_folder):
    (blob_folder / "images" / "img3.png").unlink()
    (blob_folder / "images" / "img7.png").unlink()

    with pytest.raises(FileNotFoundError, match=r"2 image\(s\).*img3.png, img7.png"):
        load_folder(blob_folder)


@pytest.mark.parametrize("column", ["label", "x"])
def test_missing_label_or_coordinate_column_is_named(blob_folder, column):
    labels = pd.read_csv(blob_folder / "labels.csv").drop(columns=column)
    labels.to_csv(blob_folder / "labels.csv", index=False)

    with pytest.raises(ValueError, match=rf"lacks column\(s\) \['{column}'\]"):
        load_folder(blob_folder)


def test_regression_folder_needs_target_columns(blob_folder):
    (blob_folder / "dataset.yaml").write_text("mpp: 0.5\ntask: regression\n")

    with pytest.raises(ValueError, match=r"target_\* \(e.g. target_CD3\)"):
        load_folder(blob_folder)


def test_non_numeric_regression_target_is_refused(tmp_path, make_blob_folder):
    folder = make_blob_folder(tmp_path / "r", task="regression")
    labels = pd.read_csv(folder / "labels.csv").assign(target_double="high")
    labels.to_csv(folder / "labels.csv", index=False)

    with pytest.raises(ValueError, match="'target_double'.*is not numeric"):
        load_folder(folder)


@pytest.mark.parametrize("mpp", [None, -0.5, 0, 40, "0.25um", True])
def test_wrong_mpp_is_refused(blob_folder, mpp):
    meta = {"mpp": mpp, "task": "classification"} if mpp is not None else {}
    (blob_folder / "dataset.yaml").write_text(yaml.safe_dump(meta))

    with pytest.raises(ValueError, match=r"mpp=.* in .*dataset.yaml: expected"):
        load_folder(blob_folder)


def test_unknown_task_is_refused(blob_folder):
    (blob_folder / "dataset.yaml").write_text("mpp: 0.5\ntask: segmentation\n")

    with pytest.raises(ValueError, match="task='segmentation'.*choose one of"):
        load_folder(blob_folder)


def test_rows_without_label_are_dropped_with_a_warning(blob_folder):
    labels = pd.read_csv(blob_folder / "labels.csv")
    labels.loc[0, "label"] = np.nan
    labels.to_csv(blob_folder / "labels.csv", index=False)

    with pytest.warns(UserWarning, match="dropped 1 rows without a target"):
        dataset = load_folder(blob_folder)
    assert len(dataset.nuclei) == 39


def test_a_point_outside_its_image_names_the_image(blob_folder):
    labels = pd.read_csv(blob_folder / "labels.csv")
    labels.loc[5, "x"] = 5000
    labels.to_csv(blob_folder / "labels.csv", index=False)

    with pytest.raises(ValueError, match="blobs: image img1.png: 1 centroids lie"):
        load_folder(blob_folder).crops()


def test_unknown_dataset_spec_missing_folder_and_missing_crc_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset folder '.*absent' does not"):
        load_folder(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="neither 'crc' nor a dataset folder"):
        load_probe_dataset("nucls", tmp_path)
    with pytest.raises(FileNotFoundError, match="CRCHistoPhenotypes not found"):
        load_probe_dataset("crc", tmp_path)


def test_subsample_is_seeded_and_refuses_zero(blob_folder):
    first = load_probe_dataset(str(blob_folder), ".", max_nuclei=12, seed=3)
    again = load_probe_dataset(str(blob_folder), ".", max_nuclei=12, seed=3)

    assert len(first.nuclei) == 12
    assert first.fingerprint() == again.fingerprint()
    with pytest.raises(ValueError, match="max_per_dataset=0"):
        load_probe_dataset(str(blob_folder), ".", max_nuclei=0)


@pytest.mark.realdata
def test_crc_dataset_keeps_typed_nuclei_grouped_by_image(shared_data):
    dataset = load_probe_dataset("crc", shared_data)

    assert len(dataset.nuclei) == 17801
    assert sorted(set(dataset.y)) == [
        "epithelial",
        "fibroblast",
        "inflammatory",
        "others",
    ]
    assert len(set(dataset.groups)) == 80 and dataset.mpp == 0.5


# --- folds and probes -------------------------------------------------------


@pytest.mark.parametrize("stratified", [True, False])
def test_folds_never_put_one_group_in_train_and_test(stratified):
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 12, 300).astype(str)
    labels = rng.choice(["a", "b", "c"], 300) if stratified else None

    folds = make_folds(groups, labels, n_folds=4, seed=1)

    assert len(folds) == 4
    tested = np.concatenate([test for _, test in folds])
    assert sorted(tested) == list(range(300))  # every nucleus tested once
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])


def test_a_class_rarer_than_the_folds_is_refused():
    groups = np.arange(40) % 10
    labels = np.array(["common"] * 37 + ["rare"] * 3)

    with pytest.raises(ValueError, match=r"class\(es\) \{'rare': 3\}.*n_folds=5"):
        make_folds(groups, labels, n_folds=5)


def test_a_class_in_fewer_groups_than_folds_is_refused():
    # many nuclei of 'rare', but all in two images: three test folds would lack it
    groups = np.repeat(np.arange(10), 10)
    labels = np.where(groups < 2, "rare", "common")

    with pytest.raises(ValueError, match=r"\{'rare': 2\} occur in fewer groups"):
        make_folds(groups, labels, n_folds=5)


def test_every_test_fold_holds_every_class():
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 20, 600)
    labels = rng.choice(["a", "b", "c"], 600, p=[0.8, 0.15, 0.05])

    for _, test in make_folds(groups, labels, n_folds=5, seed=0):
        assert set(labels[test]) == {"a", "b", "c"}


def test_the_dataset_fingerprint_follows_pixel_size_and_task(blob_folder):
    dataset = load_probe_dataset(str(blob_folder), blob_folder.parent)
    other_scale = dataclasses.replace(dataset, mpp=dataset.mpp * 2)

    assert other_scale.fingerprint() != dataset.fingerprint()
    assert dataclasses.replace(dataset).fingerprint() == dataset.fingerprint()


def test_the_cache_key_of_an_encoder_follows_its_weights_and_statistics():
    import torch

    from lemon_training.evaluate.encoders import weights_key
    from napari_lemon.encoder import Encoder, EncoderCard, create_vit

    def encoder(seed: int, **card_fields) -> Encoder:
        card = EncoderCard(name="same-name", embed_dim=32, depth=1, num_heads=2)
        card = dataclasses.replace(card, **card_fields)
        torch.manual_seed(seed)
        return Encoder(create_vit(card), card, "cpu")

    assert weights_key(encoder(0)) == weights_key(encoder(0))
    assert weights_key(encoder(0)) != weights_key(encoder(1))  # same name and card
    assert weights_key(encoder(0)) != weights_key(encoder(0, mean=(0.5,) * 3))


def test_fewer_groups_than_folds_is_refused():
    with pytest.raises(ValueError, match="n_folds=5 must be between 2 and .* 3"):
        make_folds(np.array([0, 1, 2, 0, 1, 2]), n_folds=5)


def test_regression_pearson_on_a_linear_target():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 10))
    weights = rng.normal(size=(10, 2))
    targets = features @ weights + rng.normal(0, 0.1, (200, 2))
    groups = np.arange(200) // 10

    folds = cross_validate(features, targets, groups, "regression", n_folds=5)

    assert len(folds) == 5
    assert all(f.score > 0.98 for f in folds)
    # an unrelated target has no correlation
    noise = rng.normal(size=200)
    unrelated = cross_validate(features, noise, groups, "regression", n_folds=5)
    assert abs(np.mean([f.score for f in unrelated])) < 0.3


def test_a_constant_regression_target_warns_and_is_left_out():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = np.stack([x[:, 0], np.ones(40)], axis=1)

    with pytest.warns(UserWarning, match="1 of 2 targets are constant"):
        r = score_regression(x[:30], y[:30], x[30:], y[30:])
    assert r > 0.95


def test_cross_validate_checks_task_and_lengths():
    x, y, g = np.zeros((10, 2)), np.zeros(10), np.arange(10)

    with pytest.raises(ValueError, match="task='survival'"):
        cross_validate(x, y, g, "survival")
    with pytest.raises(ValueError, match=r"features \(10\), y \(9\)"):
        cross_validate(x, y[:9], g)


# --- encoders ---------------------------------------------------------------


def test_checkpoint_path_encoder_embeds_keyed_by_its_weights(random_encoder_path):
    from lemon_training.evaluate.encoders import weights_key
    from napari_lemon.checkpoint import load_encoder

    encoder = create_probe_encoder(str(random_encoder_path), device="cpu")
    loaded = load_encoder(random_encoder_path, device="cpu")

    assert (encoder.name, encoder.key) == ("random", weights_key(loaded))
    assert encoder.embed(crops_of(3)).shape == (3, 384)


def test_timm_encoder_loads_local_weights_and_resizes(tmp_path):
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False)
    path = tmp_path / "test_resnet.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)

    encoder = create_probe_encoder(f"timm:test_resnet:{path}", device="cpu")
    features = encoder.embed(crops_of(5))

    assert encoder.name == "timm:test_resnet"
    assert features.shape == (5, model.num_features)
    # the same weights without the classifier give the same pooled features
    model.reset_classifier(0)
    x = torch.from_numpy(crops_of(5)).permute(0, 3, 1, 2).float() / 255
    x = torch.nn.functional.interpolate(x, size=(160, 160), mode="bilinear")
    expected = model.eval()((x - 0.5) / 0.5).detach().numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5)


def test_timm_weights_of_another_model_are_refused(tmp_path):
    import timm
    from safetensors.torch import save_file

    other = timm.create_model("test_vit", pretrained=False)
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, path)

    with pytest.raises(CheckpointError, match="do not fit timm model 'test_resnet'"):
        create_probe_encoder(f"timm:test_resnet:{path}")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth is not a readable weights"):
        create_probe_encoder(f"timm:test_resnet:{junk}")
    with pytest.raises(ValueError, match="timm model 'no_such_net' is unknown"):
        create_probe_encoder(f"timm:no_such_net:{path}")
    with pytest.raises(FileNotFoundError, match="timm weights 'nope.pth' do not"):
        create_probe_encoder("timm:test_resnet:nope.pth")
    with pytest.raises(ValueError, match="write timm:NAME:WEIGHTS_FILE"):
        create_probe_encoder("timm:test_resnet")


def test_unknown_encoder_spec_is_refused():
    with pytest.raises(FileNotFoundError, match="'bundlde' is not a file and not"):
        create_probe_encoder("bundlde")


def test_unreachable_official_encoder_is_skipped_in_the_table(
    blob_folder, tmp_path, monkeypatch
):
    def offline(*args, **kwargs):
        raise CheckpointError("could not download lemon.pth.tar")

    monkeypatch.setattr("napari_lemon.checkpoint.load_from_hub", offline)
    with pytest.raises(EncoderUnavailable, match="pass --encoder FOLDER"):
        create_probe_encoder("official")

    with pytest.warns(UserWarning, match="skipping encoder 'official'"):
        results = benchmark(
            ["handcrafted", "official"], [str(blob_folder)], tmp_path / "out",
            n_folds=3, progress=False,
        )  # fmt: skip
    assert results[1].status.startswith("skipped: the official LEMON encoder")
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| official | n/a |" in table and "official on blobs: skipped" in table


# --- the benchmark and its table -------------------------------------------


def test_table_mean_and_sd_equal_a_direct_computation(blob_folder, tmp_path):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.preprocessing import StandardScaler

    from napari_lemon.handcrafted import nucleus_features

    out = tmp_path / "out"
    benchmark(["handcrafted"], [str(blob_folder)], out, n_folds=3, progress=False)

    # the same probe, computed directly with scikit-learn
    dataset = load_folder(blob_folder)
    x = nucleus_features(dataset.crops(40, 0.25)).to_numpy(np.float32)
    splitter = StratifiedGroupKFold(3, shuffle=True, random_state=0)
    scores = []
    for train, test in splitter.split(x, dataset.y, dataset.groups):
        scaler = StandardScaler().fit(x[train])
        model = LogisticRegression(max_iter=3000, class_weight="balanced")
        model.fit(scaler.transform(x[train]), dataset.y[train])
        predicted = model.predict(scaler.transform(x[test]))
        scores.append(balanced_accuracy_score(dataset.y[test], predicted))
    mean, sd = np.mean(scores), np.std(scores, ddof=1)

    [result] = read_results(out / "folds.json")
    np.testing.assert_allclose(result.folds, scores)
    tested = [g for groups in result.test_groups for g in groups]
    assert sorted(tested) == sorted(set(dataset.groups))  # each image tested once
    csv = pd.read_csv(out / "table.csv").iloc[0]
    np.testing.assert_allclose([csv["mean"], csv["sd"]], [mean, sd])
    assert f"{mean:.3f} ({sd:.3f})" in (out / "table.md").read_text()


def test_handcrafted_probe_separates_the_blob_classes(blob_folder, tmp_path):
    [result] = benchmark(
        ["handcrafted"], [str(blob_folder)], tmp_path, n_folds=5, progress=False
    )

    assert result.mean == 1.0 and result.n_nuclei == 40 and result.n_groups == 10


def test_regression_folder_gives_high_pearson_from_nucleus_size(
    tmp_path, make_blob_folder
):
    folder = make_blob_folder(tmp_path / "sizes", n_images=12, task="regression")

    [result] = benchmark(["handcrafted"], [str(folder)], tmp_path / "out", n_folds=4)

    assert result.metric == "pearson_r" and result.mean > 0.9


def test_embeddings_are_cached_per_encoder_and_dataset(
    blob_folder, tmp_path, monkeypatch
):
    first = benchmark(["handcrafted"], [str(blob_folder)], tmp_path, progress=False)

    def refuse(*args, **kwargs):
        raise AssertionError("features were computed again")

    monkeypatch.setattr("napari_lemon.handcrafted.nucleus_features", refuse)
    again = benchmark(["handcrafted"], [str(blob_folder)], tmp_path, progress=False)

    assert again[0].folds == first[0].folds and again[0].nuclei_per_s is None
    assert len(list((tmp_path / "cache").glob("blobs-*/handcrafted-*.npy"))) == 1


def test_a_dataset_too_small_for_the_folds_fails_before_any_embedding(
    blob_folder, tmp_path, monkeypatch
):
    labels = pd.read_csv(blob_folder / "labels.csv")
    labels.loc[[0, 4], "label"] = "rare"
    labels.to_csv(blob_folder / "labels.csv", index=False)
    monkeypatch.setattr(benchmark_module, "cached_features", None)  # never reached

    with pytest.raises(ValueError, match=r"dataset 'blobs': class\(es\) \{'rare': 2"):
        benchmark(["handcrafted"], [str(blob_folder)], tmp_path, n_folds=5)


def test_duplicate_dataset_or_encoder_names_are_refused(
    blob_folder, tmp_path, make_blob_folder, random_encoder_path
):
    twin = make_blob_folder(tmp_path / "other" / "blobs")
    with pytest.raises(ValueError, match=r"datasets \['blobs', 'blobs'\] share a name"):
        benchmark(["handcrafted"], [str(blob_folder), str(twin)], tmp_path / "out")

    copy = tmp_path / "copy" / "random.safetensors"
    copy.parent.mkdir()
    for suffix in (".safetensors", ".json"):
        data = random_encoder_path.with_suffix(suffix).read_bytes()
        copy.with_suffix(suffix).write_bytes(data)
    specs = [str(random_encoder_path), str(copy)]
    with pytest.raises(ValueError, match=r"encoders \['random', 'random'\] share"):
        benchmark(specs, [str(blob_folder)], tmp_path / "out", device="cpu")


def test_benchmark_command_line_writes_and_prints_the_table(
    blob_folder, tmp_path, capsys
):
    parser = argparse.ArgumentParser()
    add_benchmark_arguments(parser)
    args = parser.parse_args(
        ["--encoder", "handcrafted", "--dataset", str(blob_folder), "--folds", "3"]
        + ["--out", str(tmp_path / "table"), "--max-per-dataset", "30"]
    )

    run_benchmark(args)

    printed = capsys.readouterr().out
    assert "| handcrafted |" in printed and "blobs: 30 nuclei" in printed
    assert {p.name for p in (tmp_path / "table").iterdir()} >= {
        "table.md",
        "table.csv",
        "folds.json",
    }


def test_the_table_is_recorded_in_a_checkpoint_card(
    blob_folder, tmp_path, random_encoder_path
):
    import json
    import shutil

    checkpoint = tmp_path / "mine.safetensors"
    for suffix in (".safetensors", ".json"):
        shutil.copy(
            random_encoder_path.with_suffix(suffix), checkpoint.with_suffix(suffix)
        )
    parser = argparse.ArgumentParser()
    add_benchmark_arguments(parser)
    args = parser.parse_args(
        ["--encoder", "handcrafted", "--dataset", str(blob_folder), "--folds", "3"]
        + ["--out", str(tmp_path / "table"), "--card", str(checkpoint)]
    )

    results = run_benchmark(args)

    card = json.loads(checkpoint.with_suffix(".json").read_text())
    entry = card["benchmarks"]["blobs_linear_probe"]
    assert entry["encoders"]["handcrafted"]["folds"] == [
        round(f, 4) for f in results[0].folds
    ]
    assert entry["folds"] == 3 and entry["metric"] == "balanced_accuracy"
    assert (
        card["sha256"]
        == json.loads(random_encoder_path.with_suffix(".json").read_text())["sha256"]
    )  # the rest of the card is kept


def test_a_card_that_does_not_exist_is_refused_before_any_work(
    blob_folder, tmp_path, monkeypatch
):
    monkeypatch.setattr(benchmark_module, "benchmark", None)  # never reached
    parser = argparse.ArgumentParser()
    add_benchmark_arguments(parser)
    args = parser.parse_args(
        ["--encoder", "handcrafted", "--dataset", str(blob_folder)]
        + ["--card", str(tmp_path / "missing.safetensors")]
    )

    with pytest.raises(FileNotFoundError, match="no card missing.json beside it"):
        run_benchmark(args)


def test_a_card_keeps_the_rows_of_encoders_not_rerun(tmp_path):
    import json

    from lemon_training.evaluate.benchmark import record_in_card
    from lemon_training.evaluate.table import ProbeResult

    def result(name, folds, n=100):
        r = ProbeResult(name, "crc", "classification", "balanced_accuracy", folds)
        r.n_nuclei, r.n_groups = n, 10
        return r

    card = tmp_path / "mine.json"
    card.write_text(json.dumps({"name": "mine", "sha256": "abc"}))
    record_in_card([result("mine", [0.6, 0.7]), result("random", [0.5, 0.5])], card)

    record_in_card([result("handcrafted", [0.8, 0.8])], card)  # same protocol
    encoders = json.loads(card.read_text())["benchmarks"]["crc_linear_probe"][
        "encoders"
    ]
    assert set(encoders) == {"mine", "random", "handcrafted"}

    record_in_card([result("handcrafted", [0.8, 0.8], n=50)], card)  # other nuclei
    encoders = json.loads(card.read_text())["benchmarks"]["crc_linear_probe"][
        "encoders"
    ]
    assert set(encoders) == {"handcrafted"}
