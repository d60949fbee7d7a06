"""Annotations: cell types, labels, undo, atomic saving beside a results store."""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pandas as pd
import pytest

from napari_lemon.analysis.probe import NotEnoughLabels, fit_probe
from napari_lemon.annotations import (
    DEFAULT_COLOURS,
    Annotations,
    CellType,
    annotations_path,
    check_colour,
    results_identity,
    set_aside,
)
from napari_lemon.store import build_results


def two_types(path=None) -> Annotations:
    annotations = Annotations(path)
    annotations.add_type("tumour")
    annotations.add_type("lymphocyte", "#0072B2")
    return annotations


def test_annotations_path_sits_beside_the_store(tmp_path):
    assert annotations_path(tmp_path / "CMU-1.lemon.zarr") == (
        tmp_path / "CMU-1.lemon.annotations.json"
    )
    assert annotations_path("out/a.h5ad").name == "a.annotations.json"
    assert annotations_path(str(tmp_path / "b.zarr") + "/").parent == tmp_path


def test_set_aside_keeps_every_earlier_file(tmp_path):
    path = annotations_path(tmp_path / "a.h5ad")
    assert set_aside(path) is None  # nothing there

    kept = []
    for n in range(3):  # within one second: the names still differ
        two_types(path).label([n], "tumour")
        kept.append(set_aside(path))

    assert not path.exists()
    assert len(set(kept)) == 3
    assert all(k.name.startswith("a.annotations.replaced-") for k in kept)
    assert all(k.suffix == ".json" and k.parent == tmp_path for k in kept)
    assert [Annotations.load(k).labels() for k in kept] == [
        {0: "tumour"},
        {1: "tumour"},
        {2: "tumour"},
    ]


def test_set_aside_says_when_it_cannot_move_the_file(tmp_path, monkeypatch):
    path = annotations_path(tmp_path / "a.h5ad")
    path.write_text("{}")

    def refuse(self, target):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(type(path), "rename", refuse)
    with pytest.raises(
        OSError,
        match="cannot move the labels .*a.annotations.json "
        "aside .*Permission denied.*move or delete that file",
    ):
        set_aside(path)


def test_default_colours_are_distinct_hex():
    assert len(set(DEFAULT_COLOURS)) == len(DEFAULT_COLOURS) >= 7
    assert all(check_colour(c) == c for c in DEFAULT_COLOURS)


def test_colours_are_checked_and_short_forms_expanded():
    assert check_colour("#ABC") == "#aabbcc"
    assert check_colour(" #E69F00 ") == "#e69f00"
    for bad in ("red", "#12345", "e69f00", "#ggg000", None, (1, 2, 3)):
        with pytest.raises(ValueError, match="is not a hex colour"):
            check_colour(bad)


def test_types_get_unused_default_colours_and_keep_order():
    annotations = two_types()
    assert annotations.type_names() == ["tumour", "lymphocyte"]
    assert annotations.types[0] == CellType("tumour", DEFAULT_COLOURS[0])
    assert annotations.colour_of("lymphocyte") == "#0072b2"
    third = annotations.add_type("stroma")
    assert third.colour not in ("#0072b2", DEFAULT_COLOURS[0])
    for i in range(len(DEFAULT_COLOURS)):  # more types than colours: still a colour
        annotations.add_type(f"type {i}")
    assert all(check_colour(t.colour) for t in annotations.types)


def test_type_names_are_checked():
    annotations = two_types()
    with pytest.raises(ValueError, match="name '  ' is empty"):
        annotations.add_type("  ")
    with pytest.raises(ValueError, match="'Tumour' is taken"):
        annotations.add_type("Tumour")
    with pytest.raises(ValueError, match="unknown cell type 'stroma'.*tumour"):
        annotations.label([1], "stroma")
    with pytest.raises(ValueError, match="unknown cell type 'x'"):
        annotations.colour_of("x")
    with pytest.raises(ValueError, match="'lymphocyte' is taken"):
        annotations.rename_type("tumour", "lymphocyte")
    with pytest.raises(ValueError, match="'#12' is not a hex colour"):
        annotations.recolour_type("tumour", "#12")
    with pytest.raises(ValueError, match="'nope' is not a hex colour"):
        annotations.add_type("stroma", "nope")
    assert annotations.type_names() == ["tumour", "lymphocyte"]


def test_label_relabel_unlabel_and_counts():
    annotations = two_types()
    assert annotations.label(np.array([1, 2, 3]), "tumour") == 3
    assert annotations.label([3, 4], "lymphocyte") == 2
    assert annotations.label([4], "lymphocyte") == 0  # nothing changed
    assert annotations.counts() == {"tumour": 2, "lymphocyte": 2}
    assert annotations.labels() == {
        1: "tumour",
        2: "tumour",
        3: "lymphocyte",
        4: "lymphocyte",
    }
    assert annotations.unlabel([2, 99]) == 1
    np.testing.assert_array_equal(
        annotations.labels_for(np.array([4, 2, 1, 7])),
        np.array(["lymphocyte", "", "tumour", ""], dtype=object),
    )
    with pytest.raises(ValueError, match="whole numbers"):
        annotations.label([1.5], "tumour")


def test_labels_is_a_copy():
    annotations = two_types()
    annotations.label([1], "tumour")
    annotations.labels()[1] = "lymphocyte"
    assert annotations.labels() == {1: "tumour"}


def test_undo_restores_exactly_the_previous_labels():
    annotations = two_types()
    annotations.label([1, 2, 3], "tumour")
    annotations.label([2, 3, 4], "lymphocyte")
    annotations.unlabel([1, 4])

    assert annotations.undo()  # unlabel
    assert annotations.labels() == {
        1: "tumour",
        2: "lymphocyte",
        3: "lymphocyte",
        4: "lymphocyte",
    }
    assert annotations.undo()  # the relabel: 2, 3 back to tumour, 4 unlabelled
    assert annotations.labels() == {1: "tumour", 2: "tumour", 3: "tumour"}
    assert annotations.undo()
    assert annotations.labels() == {} and not annotations.can_undo
    assert annotations.undo() is False


def test_remove_type_drops_its_labels_and_undo_brings_both_back():
    annotations = two_types()
    annotations.add_type("stroma")
    annotations.label([1, 2], "lymphocyte")
    annotations.label([3], "tumour")
    assert annotations.remove_type("lymphocyte") == 2
    assert annotations.type_names() == ["tumour", "stroma"]
    assert annotations.labels() == {3: "tumour"}

    assert annotations.undo()
    assert annotations.type_names() == ["tumour", "lymphocyte", "stroma"]
    assert annotations.colour_of("lymphocyte") == "#0072b2"
    assert annotations.labels() == {1: "lymphocyte", 2: "lymphocyte", 3: "tumour"}


def test_rename_carries_labels_and_undo_history():
    annotations = two_types()
    annotations.label([1], "tumour")
    annotations.label([1], "lymphocyte")
    annotations.rename_type("tumour", "carcinoma")
    annotations.rename_type("carcinoma", "Carcinoma")  # a change of case is allowed
    assert annotations.type_names() == ["Carcinoma", "lymphocyte"]
    annotations.undo()
    assert annotations.labels() == {1: "Carcinoma"}


def test_a_type_emptied_by_undo_stays_with_zero_and_the_probe_says_why():
    annotations = two_types()
    annotations.label([1, 2, 3], "tumour")
    annotations.label([4, 5], "lymphocyte")
    annotations.undo()
    assert annotations.counts() == {"tumour": 3, "lymphocyte": 0}
    assert annotations.type_names() == ["tumour", "lymphocyte"]

    labels = annotations.labels()
    x = np.random.default_rng(0).normal(size=(len(labels), 8))
    with pytest.raises(NotEnoughLabels, match="'tumour' has 3, no other type has any"):
        fit_probe(x, list(labels.values()), classes=annotations.type_names())


def test_every_change_is_saved_and_loads_back(tmp_path):
    path = tmp_path / "a.annotations.json"
    annotations = two_types(path)
    annotations.label([5, 1], "tumour")
    annotations.recolour_type("tumour", "#112233")

    content = json.loads(path.read_text())
    assert content["format"] == "napari-lemon annotations" and content["version"] == 1
    assert content["types"][0] == {"name": "tumour", "colour": "#112233"}
    assert content["labels"] == {"tumour": [1, 5], "lymphocyte": []}

    loaded = Annotations.load(path)
    assert loaded.path == path
    assert loaded.labels() == {1: "tumour", 5: "tumour"}
    assert [t.colour for t in loaded.types] == ["#112233", "#0072b2"]
    loaded.unlabel([1])
    assert Annotations.load(path).labels() == {5: "tumour"}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporaries


def test_on_change_is_called_after_each_change():
    annotations = two_types()
    calls = []
    annotations.on_change(lambda: calls.append(annotations.counts()["tumour"]))
    annotations.label([1, 2], "tumour")
    annotations.label([1, 2], "tumour")  # no change, no call
    annotations.undo()
    annotations.add_type("stroma")
    assert calls == [2, 0, 0]
    annotations.disconnect(calls.append)  # not connected: no error


@pytest.mark.skipif(
    sys.platform == "win32" or os.geteuid() == 0, reason="needs folder permissions"
)
def test_a_failed_save_names_the_file_and_keeps_the_labels(tmp_path):
    folder = tmp_path / "readonly"
    folder.mkdir()
    annotations = two_types(folder / "a.annotations.json")
    folder.chmod(0o555)
    calls = []
    annotations.on_change(lambda: calls.append(1))
    try:
        with pytest.raises(OSError, match=r"could not save annotations to .*a\.ann"):
            annotations.label([1, 2], "tumour")
        assert annotations.labels() == {1: "tumour", 2: "tumour"} and calls == [1]
        assert annotations.can_undo
    finally:
        folder.chmod(0o755)
    annotations.label([3], "tumour")  # writable again: everything saved
    assert Annotations.load(folder / "a.annotations.json").counts()["tumour"] == 3


def test_a_save_into_a_vanished_folder_fails_and_keeps_the_labels(tmp_path):
    folder = tmp_path / "results"
    folder.mkdir()
    annotations = two_types(folder / "a.annotations.json")
    (folder / "a.annotations.json").unlink()
    folder.rmdir()  # the results folder was moved away
    with pytest.raises(OSError, match=r"could not save annotations to .*results"):
        annotations.label([1], "tumour")
    assert annotations.labels() == {1: "tumour"}
    saved = annotations.save(tmp_path / "elsewhere.json")
    assert Annotations.load(saved).labels() == {1: "tumour"}


def test_save_needs_a_path(tmp_path):
    annotations = two_types()
    with pytest.raises(ValueError, match="no path"):
        annotations.save()
    path = annotations.save(tmp_path / "x.json")
    assert Annotations.load(path).type_names() == ["tumour", "lymphocyte"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "is not a JSON file"),
        ("[1, 2]", "not a napari-lemon annotations file"),
        ('{"format": "geojson"}', "not a napari-lemon annotations file"),
        ('{"format": "napari-lemon annotations", "version": 9}', "version 9"),
        (
            '{"format": "napari-lemon annotations", "version": 1, '
            '"types": [{"name": "a"}]}',
            "damaged annotations file .*KeyError",
        ),
        (
            '{"format": "napari-lemon annotations", "version": 1, '
            '"types": [{"name": "a", "colour": "blue"}]}',
            "damaged.*'blue' is not a hex colour",
        ),
        (
            '{"format": "napari-lemon annotations", "version": 1, '
            '"types": [{"name": "a", "colour": "#000"}], "labels": {"b": [1]}}',
            "damaged.*labels of 'b', a type it does not list",
        ),
        (
            '{"format": "napari-lemon annotations", "version": 1, "types": '
            '[{"name": "a", "colour": "#000"}, {"name": "b", "colour": "#fff"}], '
            '"labels": {"a": [1], "b": [1]}}',
            "nucleus 1 is labelled twice",
        ),
    ],
)
def test_load_refuses_bad_files_naming_them(tmp_path, text, match):
    path = tmp_path / "bad.annotations.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=f"bad.annotations.json .*{match}|{match}"):
        Annotations.load(path)


def test_load_of_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="none.json does not exist"):
        Annotations.load(tmp_path / "none.json")


def make_adata(n=5, source="slide.svs"):
    obs = pd.DataFrame(
        {
            "nucleus_id": np.arange(n),
            "x": np.arange(n, dtype=float),
            "y": np.arange(n, dtype=float),
            "area_um2": 30.0,
            "segmenter": "classical",
            "tile_id": 0,
        }
    )
    provenance = {"source": {"name": source}, "mpp": 0.25}
    return build_results(obs, np.zeros((n, 4)), [np.zeros((0, 2))] * n, provenance)


def test_results_identity_of_adata_provenance_and_tuples():
    adata = make_adata()
    identity = results_identity(adata)
    assert identity == {
        "n_obs": 5,
        "source": "slide.svs",
        "created": adata.uns["lemon"]["created"],
    }
    assert results_identity(adata.uns["lemon"])["n_obs"] is None
    assert results_identity((5, adata.uns["lemon"])) == identity


def test_for_results_loads_or_creates_and_warns_on_another_result(tmp_path):
    store = tmp_path / "slide.lemon.zarr"
    identity = results_identity(make_adata())
    annotations = Annotations.for_results(store, identity)
    assert annotations.path == tmp_path / "slide.lemon.annotations.json"
    assert not annotations.path.exists()  # nothing written until a change
    annotations.add_type("tumour")
    assert Annotations.load(annotations.path).results_id == identity

    again = Annotations.for_results(store, identity)
    assert again.type_names() == ["tumour"]
    other = results_identity(make_adata(n=7, source="other.svs"))
    with pytest.warns(UserWarning, match="may belong to other results.*n_obs 5"):
        Annotations.for_results(store, other)


def test_label_columns_are_a_categorical_with_nan_and_colours():
    from napari_lemon.annotations import label_columns

    annotations = two_types()
    annotations.add_type("stroma")
    annotations.label([10, 12], "lymphocyte")
    columns = label_columns(annotations, np.array([10, 11, 12]))
    labels = columns["obs"]["label"]
    assert list(labels.categories) == ["tumour", "lymphocyte", "stroma"]
    assert list(labels.codes) == [1, -1, 1]  # -1: NaN, unlabelled
    assert columns["uns"]["label_colors"] == [t.colour for t in annotations.types]
