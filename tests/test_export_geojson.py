"""QuPath GeoJSON export: features, rings, classification, measurements, files."""

from __future__ import annotations

import gzip
import json
import uuid

import numpy as np
import pandas as pd
import pytest
import shapely

from napari_lemon.annotations import Annotations
from napari_lemon.export import export_geojson
from napari_lemon.export import geojson as geojson_module
from napari_lemon.store import build_results

MPP = 0.5
CLASSES = ["tumour", "stroma"]
COLOURS = ["#ff0000", "#00aa00"]


def circle(centre, radius, k=12, clockwise=False):
    """A ``k``-gon around ``centre``; counter-clockwise in (x, y) unless asked."""
    angle = np.linspace(0, 2 * np.pi, k, endpoint=False)
    angle = -angle if clockwise else angle
    return np.asarray(centre) + radius * np.column_stack([np.cos(angle), np.sin(angle)])


def synthetic_results(n=20, seed=0, outlines=None, probe=True, dim=16):
    """Results of ``n`` round nuclei on a 4000 px square, with a probe's columns."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(100, 3900, (n, 2))
    if outlines is None:
        outlines = [
            circle(c, r) for c, r in zip(centres, rng.uniform(4, 9, n), strict=True)
        ]
    obs = pd.DataFrame(
        {
            "nucleus_id": np.arange(100, 100 + n),
            "x": centres[:, 0],
            "y": centres[:, 1],
            "area_um2": rng.uniform(10, 60, n),
            "segmenter": "unet",
            "tile_id": 0,
        }
    )
    provenance = {"mpp": MPP, "source": {"name": "slide.svs", "sha256": "ab12"}}
    embeddings = rng.normal(size=(n, dim)).astype(np.float16)
    adata = build_results(obs, embeddings, outlines, provenance)
    adata.obsm["X_lemon"] = embeddings  # float16, as a whole-slide store keeps them
    adata.obs["cluster"] = pd.Categorical(rng.integers(0, 3, n), categories=[0, 1, 2])
    if probe:
        proba = rng.dirichlet([1, 1], n).astype(np.float32)
        codes = proba.argmax(axis=1)
        adata.obs["probe_cell_type"] = pd.Categorical.from_codes(codes, CLASSES)
        adata.obs["probe_cell_type_proba"] = proba.max(axis=1)
        adata.obsm["probe_cell_type"] = proba
        adata.uns["probe_cell_type_colors"] = COLOURS
    return adata


def read_features(path) -> list[dict]:
    """The features of a written file; fails on NaN, which JSON does not allow."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as fh:
        content = json.load(fh, parse_constant=pytest.fail)
    assert content["type"] == "FeatureCollection"
    return content["features"]


def signed_area(ring: np.ndarray) -> float:
    x, y = ring[:, 0], ring[:, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2


def test_one_detection_per_nucleus_with_a_closed_counter_clockwise_ring(tmp_path):
    outlines = [circle((500 + 40 * i, 800), 6, clockwise=i % 2 == 1) for i in range(6)]
    adata = synthetic_results(6, outlines=outlines)

    features = read_features(export_geojson(adata, tmp_path / "n.geojson"))

    assert len(features) == 6
    for feature, outline in zip(features, outlines, strict=True):
        assert feature["type"] == "Feature"
        assert feature["properties"]["objectType"] == "detection"
        assert feature["geometry"]["type"] == "Polygon"
        ring = np.array(feature["geometry"]["coordinates"][0])
        assert (ring[0] == ring[-1]).all() and len(ring) == len(outline) + 1
        assert signed_area(ring[:-1]) > 0  # counter-clockwise in (x, y)
        written = shapely.Polygon(ring).normalize()
        assert written.equals_exact(shapely.Polygon(outline).normalize(), 1e-3)


def test_coordinates_are_level0_pixels_to_a_thousandth(tmp_path):
    outline = np.array([[20000.123456, 30000.5], [20010.25, 30000.5], [20005, 30009]])
    adata = synthetic_results(1, outlines=[outline])

    ring = np.array(
        read_features(export_geojson(adata, tmp_path / "n.geojson"))[0]["geometry"][
            "coordinates"
        ][0]
    )

    np.testing.assert_allclose(ring[:-1], outline, atol=5e-4)
    # what float32 keeps of coordinates this large comes back exactly
    stored = adata.uns["outlines"]["xy"]
    np.testing.assert_array_equal(ring[:-1].astype(np.float32), stored)


def test_ids_are_uuids_stable_across_exports_and_distinct(tmp_path):
    adata = synthetic_results(30)

    first = [f["id"] for f in read_features(export_geojson(adata, tmp_path / "a.json"))]
    again = [f["id"] for f in read_features(export_geojson(adata, tmp_path / "b.json"))]
    other = synthetic_results(30)
    other.uns["lemon"]["source"] = {"name": "other.svs", "sha256": "cd34"}
    elsewhere = [
        f["id"] for f in read_features(export_geojson(other, tmp_path / "c.json"))
    ]

    assert first == again
    assert len(set(first)) == 30
    assert all(uuid.UUID(i).version == 5 for i in first)
    assert not set(first) & set(elsewhere)


def test_classification_is_the_probe_prediction_in_its_colour(tmp_path):
    adata = synthetic_results(12)

    features = read_features(export_geojson(adata, tmp_path / "n.geojson"))

    for feature, predicted in zip(features, adata.obs["probe_cell_type"], strict=True):
        classification = feature["properties"]["classification"]
        assert classification["name"] == predicted
        expected = [255, 0, 0] if predicted == "tumour" else [0, 170, 0]
        assert classification["color"] == expected


def test_labels_classify_nuclei_without_a_prediction(tmp_path):
    adata = synthetic_results(5, probe=False)
    annotations = Annotations()
    annotations.add_type("immune", "#0000ff")
    annotations.label([101, 103], "immune")

    features = read_features(
        export_geojson(adata, tmp_path / "n.geojson", annotations=annotations)
    )

    classes = [f["properties"].get("classification") for f in features]
    assert classes[1] == classes[3] == {"name": "immune", "color": [0, 0, 255]}
    assert classes[0] is None and classes[2] is None and classes[4] is None


def test_the_prediction_wins_over_a_label(tmp_path):
    adata = synthetic_results(4)
    annotations = Annotations()
    annotations.add_type("immune")
    annotations.label([100, 101, 102, 103], "immune")

    features = read_features(
        export_geojson(adata, tmp_path / "n.geojson", annotations=annotations)
    )

    names = [f["properties"]["classification"]["name"] for f in features]
    assert names == list(adata.obs["probe_cell_type"])


def test_measurements_are_a_dict_of_numbers(tmp_path):
    adata = synthetic_results(8)

    features = read_features(export_geojson(adata, tmp_path / "n.geojson"))

    proba = adata.obsm["probe_cell_type"]
    for row, feature in enumerate(features):
        measured = feature["properties"]["measurements"]
        assert measured["Area um^2"] == pytest.approx(
            adata.obs["area_um2"].iloc[row], abs=1e-3
        )
        assert measured["Cluster"] == int(adata.obs["cluster"].iloc[row])
        assert measured["LEMON nucleus id"] == 100 + row
        assert measured["LEMON x px"] == pytest.approx(
            adata.obs["x"].iloc[row], abs=1e-3
        )
        assert measured["LEMON cell_type: tumour probability"] == pytest.approx(
            proba[row, 0], abs=1e-4
        )
        assert measured["LEMON cell_type: stroma probability"] == pytest.approx(
            proba[row, 1], abs=1e-4
        )
        assert measured["LEMON cell_type confidence"] == pytest.approx(
            proba[row].max(), abs=1e-4
        )


def test_nuclei_without_an_outline_become_circles_of_their_area(tmp_path):
    adata = synthetic_results(3, outlines=[np.empty((0, 2))] * 3)
    adata.obs["area_um2"] = [50.0, np.nan, 20.0]

    features = read_features(export_geojson(adata, tmp_path / "n.geojson"))

    rings = [np.array(f["geometry"]["coordinates"][0]) for f in features]
    areas_um2 = [shapely.Polygon(r).area * MPP**2 for r in rings]
    # a 16-gon holds 97.4% of its circle's area
    assert areas_um2[0] == pytest.approx(50.0, rel=0.03)
    assert areas_um2[1] == pytest.approx(np.pi * 3.5**2, rel=0.03)  # a 7 um disc
    assert areas_um2[2] == pytest.approx(20.0, rel=0.03)
    centres = [shapely.Polygon(r).centroid.coords[0] for r in rings]
    np.testing.assert_allclose(centres, adata.obsm["spatial"], atol=1e-2)
    assert "Area um^2" not in features[1]["properties"]["measurements"]  # NaN: left out


def test_bad_outlines_are_repaired_or_skipped_and_counted(tmp_path):
    good = circle((300, 300), 6)
    spike = np.array([[0, 0], [10, 0], [10, 10], [10, 20], [10, 10], [0, 10]]) + 600
    bowtie = np.array([[0, 0], [10, 10], [10, 0], [0, 10]], float) + 900
    line = np.array([[0, 0], [5, 5], [10, 10]], float) + 1200
    two = np.array([[0, 0], [5, 5]], float) + 1500
    # a square crossing itself in a small loop at its left edge (area 9 of 10,009)
    loop = np.array([[0, 0], [100, 0], [100, 100], [0, 100], [0, 5], [-3, 2], [-3, 8]])
    loop = np.vstack([loop, [[0, 5.5]]]) + 2000
    outlines = [good, spike, bowtie, line, two, loop]
    adata = synthetic_results(6, outlines=outlines)

    with pytest.warns(UserWarning, match=r"3 of 6 nuclei left out") as record:
        features = read_features(export_geojson(adata, tmp_path / "n.geojson"))

    message = str(record[0].message)
    assert "fewer than 3 vertices: 1" in message
    assert "no area (degenerate): 1" in message
    assert "self-intersecting, no dominant part when repaired: 1" in message
    ids = [f["properties"]["measurements"]["LEMON nucleus id"] for f in features]
    assert ids == [100, 101, 105]
    repaired = [shapely.Polygon(f["geometry"]["coordinates"][0]) for f in features]
    assert repaired[1].is_valid and repaired[1].area == pytest.approx(100)
    assert repaired[2].is_valid and repaired[2].area == pytest.approx(100 * 100)


@pytest.mark.parametrize(
    "name, flag, compressed",
    [
        ("n.geojson.gz", None, True),
        ("n.geojson", True, True),
        ("n.geojson", None, False),
        ("n.geojson.gz", False, False),
    ],
)
def test_gzip_by_name_or_flag(tmp_path, name, flag, compressed):
    path = export_geojson(synthetic_results(4), tmp_path / name, gzip=flag)

    is_gzip = path.read_bytes()[:2] == b"\x1f\x8b"
    assert is_gzip == compressed
    opener = gzip.open if compressed else open
    with opener(path, "rt") as fh:
        assert len(json.load(fh)["features"]) == 4


def test_writes_in_blocks_the_same_features(tmp_path, monkeypatch):
    adata = synthetic_results(25)
    whole = read_features(export_geojson(adata, tmp_path / "whole.geojson"))

    monkeypatch.setattr(geojson_module, "BLOCK", 4)
    blocks = read_features(export_geojson(adata, tmp_path / "blocks.geojson"))

    assert blocks == whole


def test_a_failed_export_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "n.geojson"
    path.write_text("the export of yesterday")

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(geojson_module, "_features_text", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export_geojson(synthetic_results(3), path)

    assert path.read_text() == "the export of yesterday"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.geojson"]


def test_export_to_a_folder_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder; give a file name"):
        export_geojson(synthetic_results(2), tmp_path)


def test_no_nuclei_is_an_empty_collection(tmp_path):
    adata = synthetic_results(0)

    assert read_features(export_geojson(adata, tmp_path / "n.geojson")) == []
