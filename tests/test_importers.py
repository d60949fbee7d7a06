"""Nuclei read from QuPath, ImageScope, HoVer-Net and CellViT files, and embedded."""

from __future__ import annotations

import gzip
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import shapely
from PIL import Image
from test_export_geojson import COLOURS, circle, synthetic_results

from napari_lemon import points as points_module
from napari_lemon.annotations import Annotations
from napari_lemon.export import (
    annotations_from_imported,
    export_geojson,
    imported_results,
    importers,
    read_nuclei_file,
)
from napari_lemon.export.importers import ImportedNuclei
from napari_lemon.slide import open_slide
from napari_lemon.store import outlines_of


def feature(ring, kind="detection", name=None, color=None, geometry="Polygon"):
    """A QuPath-style GeoJSON feature around ``ring``."""
    coords = [np.vstack([ring, ring[:1]]).tolist()]
    properties = {"objectType": kind}
    if name is not None:
        properties["classification"] = {"name": name, "color": color or [1, 2, 3]}
    if geometry == "MultiPolygon":
        coords = [coords]
    return {
        "type": "Feature",
        "geometry": {"type": geometry, "coordinates": coords},
        "properties": properties,
    }


def write_json(path, content, compress=False):
    text = json.dumps(content)
    if compress:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def collection(*features):
    return {"type": "FeatureCollection", "features": list(features)}


# QuPath GeoJSON


def test_round_trip_gives_back_outlines_centroids_and_classes(tmp_path):
    adata = synthetic_results(40)
    # nuclei far out on a slide, where the level-0 coordinates are large
    adata.uns["outlines"]["xy"] = adata.uns["outlines"]["xy"] + np.float32(30000)
    adata.obs[["x", "y"]] += 30000

    imported = read_nuclei_file(export_geojson(adata, tmp_path / "n.geojson"))

    assert imported.format == "qupath-geojson" and imported.n_skipped == 0
    for got, sent in zip(imported.outlines, outlines_of(adata), strict=True):
        np.testing.assert_array_equal(got.astype(np.float32), sent)  # float32 exact
    xy = adata.obs[["x", "y"]].to_numpy()
    np.testing.assert_allclose(imported.centroids_xy, xy, atol=5e-4)
    assert imported.classes.tolist() == adata.obs["probe_cell_type"].tolist()
    assert imported.colours == {"tumour": COLOURS[0], "stroma": COLOURS[1]}


def test_round_trip_of_small_coordinates_to_a_thousandth(tmp_path):
    adata = synthetic_results(10)

    imported = read_nuclei_file(export_geojson(adata, tmp_path / "n.geojson.gz"))

    for got, sent in zip(imported.outlines, outlines_of(adata), strict=True):
        np.testing.assert_allclose(got, sent, atol=5e-4)


def test_a_bare_list_of_features_and_one_feature_are_read(tmp_path):
    rings = [circle((100 + 30 * i, 100), 5) for i in range(3)]
    listed = write_json(tmp_path / "list.json", [feature(r) for r in rings])
    single = write_json(tmp_path / "one.geojson", feature(rings[0]))

    assert len(read_nuclei_file(listed)) == 3
    one = read_nuclei_file(single)
    assert len(one) == 1
    np.testing.assert_allclose(one.centroids_xy, [[100, 100]], atol=1e-9)


def test_the_largest_part_of_a_multipolygon_is_the_nucleus(tmp_path):
    big, small = circle((50, 50), 10), circle((90, 90), 3)
    multi = feature(big)
    multi["geometry"] = {
        "type": "MultiPolygon",
        "coordinates": [[small.tolist()], [big.tolist()]],
    }

    imported = read_nuclei_file(write_json(tmp_path / "m.geojson", collection(multi)))

    np.testing.assert_allclose(imported.centroids_xy, [[50, 50]], atol=1e-9)


def test_a_cell_gives_its_nucleus_geometry(tmp_path):
    cell = feature(circle((50, 50), 12), kind="cell", name="Tumor")
    nucleus = circle((52, 50), 5)
    cell["nucleusGeometry"] = {
        "type": "Polygon",
        "coordinates": [np.vstack([nucleus, nucleus[:1]]).tolist()],
    }

    imported = read_nuclei_file(write_json(tmp_path / "c.geojson", collection(cell)))

    assert shapely.Polygon(imported.outlines[0]).area == pytest.approx(
        shapely.Polygon(nucleus).area
    )
    assert imported.classes.tolist() == ["Tumor"]


def test_annotations_among_detections_are_left_out_and_counted(tmp_path):
    tissue = feature(circle((500, 500), 400, k=40), kind="annotation", name="Tissue")
    nuclei = [feature(circle((480 + 20 * i, 500), 5)) for i in range(3)]
    path = write_json(tmp_path / "d.geojson", collection(tissue, *nuclei))

    with pytest.warns(UserWarning, match=r"1 of 4 objects left out"):
        imported = read_nuclei_file(path)

    assert len(imported) == 3
    assert imported.skipped_reasons == {"annotation among detections": 1}


def test_a_file_of_annotations_only_is_read_as_drawn_nuclei(tmp_path):
    drawn = [
        feature(circle((100, 100), 6), kind="annotation", name="Lymphocyte"),
        feature(circle((200, 100), 8), kind="annotation", name="Tumor"),
    ]
    path = write_json(tmp_path / "a.geojson", collection(*drawn))

    assert read_nuclei_file(path).classes.tolist() == ["Lymphocyte", "Tumor"]


def test_classification_colours_new_and_old_style(tmp_path):
    new = feature(circle((100, 100), 6), name="Tumor", color=[200, 0, 10])
    old = feature(circle((200, 100), 6))
    old["properties"]["classification"] = {"name": "Stroma", "colorRGB": -16744448}
    odd = feature(circle((300, 100), 6), name="Other", color=["red", 0, 0])
    path = write_json(tmp_path / "c.geojson", collection(new, old, odd))

    imported = read_nuclei_file(path)

    assert imported.colours == {"Tumor": "#c8000a", "Stroma": "#008000"}
    assert imported.classes.tolist() == ["Tumor", "Stroma", "Other"]


def test_bad_geometries_are_skipped_by_reason_not_a_crash(tmp_path):
    good = feature(circle((100, 100), 6))
    point = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}}
    empty = {"type": "Feature", "geometry": None, "properties": {}}
    two = feature(np.array([[0.0, 0], [5, 5]]))
    flat = feature(np.array([[0.0, 0], [5, 5], [10, 10]]))
    bowtie = feature(np.array([[0.0, 0], [10, 10], [10, 0], [0, 10]]))
    broken = feature(circle((10, 10), 3))
    broken["geometry"]["coordinates"] = [[[1, 2], [3]]]
    path = write_json(
        tmp_path / "b.geojson",
        collection(good, point, empty, two, flat, bowtie, broken),
    )

    with pytest.warns(UserWarning, match=r"b.geojson: 6 of 7 objects left out"):
        imported = read_nuclei_file(path)

    assert len(imported) == 1
    assert imported.skipped_reasons == {
        "Point geometry, not a polygon": 1,
        "no geometry": 1,
        "fewer than 3 vertices": 1,
        "no area (degenerate)": 1,
        "self-intersecting, no dominant part when repaired": 1,
        "malformed Polygon coordinates": 1,
    }
    assert imported.n_skipped == 6


def test_a_file_without_any_usable_outline_is_an_error(tmp_path):
    point = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [1, 2]}}
    points = write_json(tmp_path / "p.geojson", collection(point))
    empty = write_json(tmp_path / "e.geojson", collection())

    with pytest.raises(
        ValueError, match=r"p.geojson \(qupath-geojson\) has no nucleus"
    ):
        read_nuclei_file(points)
    with pytest.raises(ValueError, match="it holds no objects"):
        read_nuclei_file(empty)


@pytest.mark.parametrize(
    "content, found",
    [
        ({"type": "Polygon", "coordinates": []}, "an object of type 'Polygon'"),
        ([1, 2, 3], "found the int 1 where a Feature should be"),
        (
            {"type": "FeatureCollection", "features": {}},
            "an object of type 'FeatureCollection'",
        ),
        ({"mag": 40, "nuc": {}}, "an object with keys ['mag', 'nuc']"),
    ],
)
def test_not_a_feature_collection_names_the_file_and_what_it_holds(
    tmp_path, content, found
):
    path = write_json(tmp_path / "x.geojson", content)

    with pytest.raises(ValueError, match="x.geojson is not GeoJSON of nuclei") as err:
        read_nuclei_file(path, fmt="geojson")
    assert found in str(err.value)


def test_collections_and_lists_are_streamed_not_parsed_whole(tmp_path, monkeypatch):
    rings = [circle((100 + 30 * i, 100), 5) for i in range(4)]
    pretty = tmp_path / "pretty.geojson"
    pretty.write_text(json.dumps(collection(*map(feature, rings)), indent=2))
    listed = tmp_path / "list.geojson"
    listed.write_text(json.dumps([feature(r) for r in rings], indent=1))

    def whole(*args):
        raise AssertionError("parsed whole")

    monkeypatch.setattr(importers, "_parse", whole)
    for path in (pretty, listed):
        imported = read_nuclei_file(path)
        np.testing.assert_allclose(imported.centroids_xy[:, 0], [100, 130, 160, 190])


def test_a_collection_in_another_key_order_is_parsed_whole(tmp_path):
    rings = [circle((100 + 30 * i, 100), 5) for i in range(2)]
    content = {"features": [feature(r) for r in rings], "type": "FeatureCollection"}

    assert len(read_nuclei_file(write_json(tmp_path / "k.geojson", content))) == 2


@pytest.mark.parametrize(
    "tail, message",
    [
        (lambda text: text[: len(text) // 2], "not a readable GeoJSON file"),
        (lambda text: text.replace("},\n{", "} {", 1), "expected ',' or ']'"),
    ],
)
def test_a_damaged_stream_names_the_file(tmp_path, tail, message):
    adata = synthetic_results(4)
    text = export_geojson(adata, tmp_path / "n.geojson").read_text()
    damaged = tmp_path / "damaged.geojson"
    damaged.write_text(tail(text))

    with pytest.raises(ValueError, match=f"damaged.geojson .*{message}"):
        read_nuclei_file(damaged)


# ImageScope XML

XML = """<Annotations MicronsPerPixel="0.25">
 <Annotation Id="1" Name="Tumor" LineColor="255"><Regions>
  <Region Id="1" Text=""><Vertices>
   <Vertex X="10" Y="10"/><Vertex X="20" Y="10"/><Vertex X="20" Y="20"/>
  </Vertices></Region>
  <Region Id="2" Text="Mitosis"><Vertices>
   <Vertex X="40" Y="10"/><Vertex X="50" Y="10"/><Vertex X="50" Y="20"/>
   <Vertex X="40" Y="20"/>
  </Vertices></Region>
  <Region Id="3"><Vertices><Vertex X="1" Y="1"/><Vertex X="2" Y="2"/>
  </Vertices></Region>
 </Regions></Annotation>
 <Annotation Id="2" Name="" LineColor="65280"><Regions>
  <Region Id="4"><Vertices>
   <Vertex X="70" Y="10"/><Vertex X="80" Y="10"/><Vertex X="80" Y="x"/>
  </Vertices></Region>
  <Region Id="5"><Vertices>
   <Vertex X="70" Y="30"/><Vertex X="80" Y="30"/><Vertex X="80" Y="40"/>
  </Vertices></Region>
 </Regions></Annotation>
</Annotations>
"""


def test_imagescope_regions_with_their_layer_classes(tmp_path):
    path = tmp_path / "tile.xml"
    path.write_text(XML)

    with pytest.warns(UserWarning, match=r"2 of 5 objects left out"):
        imported = read_nuclei_file(path)

    assert imported.format == "imagescope-xml" and imported.mpp == 0.25
    assert imported.classes.tolist() == ["Tumor", "Mitosis", ""]
    assert imported.colours == {"Tumor": "#ff0000", "Mitosis": "#ff0000"}
    assert imported.skipped_reasons == {"fewer than 3 vertices": 2}
    np.testing.assert_allclose(imported.centroids_xy[1], [45, 15])


def test_imagescope_xml_that_is_not_xml_names_the_file(tmp_path):
    path = tmp_path / "tile.xml"
    path.write_text("<Annotations><Region>")

    with pytest.raises(ValueError, match="tile.xml is not a readable ImageScope XML"):
        read_nuclei_file(path)


@pytest.mark.parametrize("value", ["abc", "0", "-0.25", "nan"])
def test_an_imagescope_pixel_size_that_is_no_size_is_ignored_with_a_warning(
    tmp_path, value
):
    path = tmp_path / "tile.xml"
    path.write_text(XML.replace('MicronsPerPixel="0.25"', f'MicronsPerPixel="{value}"'))

    with pytest.warns(UserWarning) as caught:
        imported = read_nuclei_file(path)

    assert imported.mpp is None and len(imported.centroids_xy) == 3
    said = [str(w.message) for w in caught]
    assert f"tile.xml: MicronsPerPixel='{value}' is not a pixel size" in said[0]
    assert "give the image's --mpp" in said[0]


@pytest.mark.realdata
def test_monuseg_annotations_are_read_whole(shared_data):
    path = shared_data / "monuseg" / "test" / "annotations"
    path = path / "TCGA-2Z-A9J9-01A-01-TS1.xml"
    from napari_lemon.segment.imagescope import read_imagescope_xml

    regions = read_imagescope_xml(path)
    imported = read_nuclei_file(path)

    # self-crossing hand-drawn outlines are repaired, none is lost
    assert len(imported) == len(regions.polygons) == 575
    assert imported.n_skipped == 0 and imported.mpp == pytest.approx(0.2527)
    assert all(shapely.Polygon(o).is_valid for o in imported.outlines)
    assert ((imported.centroids_xy >= 0) & (imported.centroids_xy <= 1000)).all()


# HoVer-Net and CellViT

TYPE_INFO = {"0": ["nolabe", [0, 0, 0]], "1": ["neopla", [255, 0, 0]]}


def hovernet(types):
    nuclei = {}
    for i, kind in enumerate(types):
        ring = circle((100 + 30 * i, 200), 6)
        nuclei[str(i + 1)] = {
            "bbox": [[194, 94 + 30 * i], [206, 106 + 30 * i]],
            "centroid": [100.5 + 30 * i, 200.25],
            "contour": ring.round().astype(int).tolist(),
            "type_prob": 0.9,
            "type": kind,
        }
    return {"mag": 40, "nuc": nuclei}


def test_hovernet_types_named_by_type_info(tmp_path):
    path = write_json(tmp_path / "tile.json", hovernet([1, 0, 3, None]))

    imported = read_nuclei_file(path, type_info=TYPE_INFO)

    assert imported.format == "hovernet-json" and len(imported) == 4
    assert imported.classes.tolist() == ["neopla", "", "type 3", ""]
    assert imported.colours == {"neopla": "#ff0000"}
    np.testing.assert_allclose(imported.centroids_xy[:, 1], 200.25)  # the file's


def test_hovernet_type_info_from_a_file_or_from_the_json(tmp_path):
    info = write_json(tmp_path / "type_info.json", TYPE_INFO)
    content = hovernet([1, 1])
    path = write_json(tmp_path / "tile.json", content)
    with_info = write_json(tmp_path / "own.json", content | {"type_info": TYPE_INFO})

    assert read_nuclei_file(path, type_info=info).classes.tolist() == ["neopla"] * 2
    assert read_nuclei_file(with_info).classes.tolist() == ["neopla"] * 2
    assert read_nuclei_file(path).classes.tolist() == ["type 1"] * 2


def test_a_bad_type_info_is_named(tmp_path):
    path = write_json(tmp_path / "tile.json", hovernet([1]))
    bad = tmp_path / "type_info.json"
    bad.write_text("{not json")

    with pytest.raises(ValueError, match="key 'one' is not a type number"):
        read_nuclei_file(path, type_info={"one": ["a", [1, 2, 3]]})
    with pytest.raises(ValueError, match="type_info file .*type_info.json is not"):
        read_nuclei_file(path, type_info=bad)


def test_cellvit_cells_with_their_type_map(tmp_path):
    cells = [
        {"contour": circle((50, 50), 5).tolist(), "centroid": [50, 50], "type": 2},
        {"contour": circle((90, 50), 5).tolist(), "centroid": [90, 50], "type": 1},
        {"centroid": [10, 10], "type": 1},
    ]
    content = {"type_map": {"0": "Background", "1": "Neoplastic", "2": "Inflammatory"}}
    wrapped = write_json(tmp_path / "cells.json", content | {"cells": cells})
    bare = write_json(tmp_path / "bare.json.gz", cells[:2], compress=True)

    with pytest.warns(UserWarning, match="no readable contour: 1"):
        imported = read_nuclei_file(wrapped)

    assert imported.format == "cellvit-json"
    assert imported.classes.tolist() == ["Inflammatory", "Neoplastic"]
    assert read_nuclei_file(bare).classes.tolist() == ["type 2", "type 1"]


# detection and errors


def test_format_from_extension_and_content(tmp_path):
    xml = tmp_path / "a.annotations"
    xml.write_text(XML)
    hover = write_json(tmp_path / "b.dat", hovernet([1]))

    with pytest.warns(UserWarning):
        assert read_nuclei_file(xml).format == "imagescope-xml"
    assert read_nuclei_file(hover).format == "hovernet-json"


def test_import_errors_name_the_file_the_format_and_the_problem(tmp_path):
    unknown = write_json(tmp_path / "u.json", {"objects": []})
    broken = tmp_path / "broken.geojson"
    broken.write_text('{"type": "FeatureCollection", ')
    hover = write_json(tmp_path / "h.json", {"nuc": [1, 2]})

    with pytest.raises(FileNotFoundError, match="nuclei file .*none.json does not"):
        read_nuclei_file(tmp_path / "none.json")
    with pytest.raises(
        ValueError, match=r"u.json is JSON but not nuclei .*\['objects'\]"
    ):
        read_nuclei_file(unknown)
    with pytest.raises(ValueError, match="broken.geojson is not a readable JSON"):
        read_nuclei_file(broken)
    with pytest.raises(ValueError, match="h.json is not HoVer-Net JSON"):
        read_nuclei_file(hover, fmt="hovernet")
    with pytest.raises(ValueError, match="is not CellViT JSON"):
        read_nuclei_file(unknown, fmt="cellvit")
    with pytest.raises(ValueError, match=r"format 'shapefile' for u.json is unknown"):
        read_nuclei_file(unknown, fmt="shapefile")


# labels from classes


def imported_of(classes, colours=None):
    n = len(classes)
    return ImportedNuclei(
        centroids_xy=np.column_stack([np.arange(n) * 30.0 + 20, np.full(n, 20.0)]),
        outlines=[circle((30.0 * i + 20, 20), 5) for i in range(n)],
        classes=np.array(classes, dtype=object),
        colours=colours or {},
        source="cells.geojson",
        format="qupath-geojson",
    )


def test_classes_become_labels_by_row(tmp_path):
    imported = imported_of(["Tumor", "", "Stroma", "tumor"], {"Tumor": "#c8000a"})
    identity = {"n_obs": 4, "source": "tile.png", "created": "now"}

    annotations = annotations_from_imported(imported, identity, tmp_path / "a.json")

    assert annotations.type_names() == ["Tumor", "Stroma"]  # case folded into one
    assert annotations.colour_of("Tumor") == "#c8000a"
    assert annotations.labels() == {0: "Tumor", 2: "Stroma", 3: "Tumor"}
    saved = Annotations.load(tmp_path / "a.json")
    assert saved.labels() == annotations.labels() and saved.results_id == identity
    assert annotations.path == tmp_path / "a.json"


def test_no_classes_no_annotations():
    assert annotations_from_imported(imported_of(["", ""]), {}) is None


# embedding imported nuclei


@pytest.fixture
def tile(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "tile.png"
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def encoder(random_encoder_path):
    from napari_lemon.checkpoint import load_encoder

    return load_encoder(random_encoder_path, "cpu", precision="fp32")


def test_imported_nuclei_are_embedded_with_their_outlines_and_areas(tile, encoder):
    imported = imported_of(["Tumor", "", "Stroma"])

    with open_slide(tile, mpp=0.5) as slide:
        adata = imported_results(slide, imported, encoder=encoder)

    assert adata.obsm["X_lemon"].shape == (3, 384)
    assert adata.obs["nucleus_id"].tolist() == [0, 1, 2]
    assert set(adata.obs["segmenter"]) == {"qupath-geojson"}
    area = shapely.Polygon(circle((0, 0), 5)).area * 0.5**2
    np.testing.assert_allclose(adata.obs["area_um2"], area)
    for got, sent in zip(outlines_of(adata), imported.outlines, strict=True):
        np.testing.assert_allclose(got, sent, atol=1e-4)
    params = adata.uns["lemon"]["segmenter"]
    assert params["name"] == "qupath-geojson"
    assert params["params"]["file"] == "cells.geojson"


def test_a_few_nuclei_outside_the_image_are_left_out_with_a_warning(tile, encoder):
    imported = imported_of(["Tumor"] * 11 + ["Stroma"])  # x = 20 .. 350 px
    imported.centroids_xy[11] = (5000, 20)

    with open_slide(tile, mpp=0.5) as slide:
        with pytest.warns(
            UserWarning,
            match="1 of 12 nuclei of cells.geojson lie "
            r"outside the 400x300 image 'tile.png', e.g. \(x, y\)="
            r"\(5000.0, 20.0\); they were left out \(11 embedded\)$",
        ):
            adata = imported_results(slide, imported, encoder=encoder)

    assert adata.obs["nucleus_id"].tolist() == list(range(11))  # rows of the file
    params = adata.uns["lemon"]["segmenter"]["params"]
    assert params["skipped"] == 1
    assert params["skipped_reasons"] == {"outside the image": 1}
    ids = adata.obs["nucleus_id"].to_numpy()
    annotations = annotations_from_imported(imported, {}, nucleus_ids=ids)
    assert annotations.type_names() == ["Tumor"]  # the Stroma nucleus was left out
    assert sorted(annotations.labels()) == list(range(11))
    assert len(annotations_from_imported(imported, {}).labels()) == 12


def test_many_nuclei_outside_ask_whether_the_file_is_of_this_image(tile, encoder):
    imported = imported_of([""] * 4)
    imported.centroids_xy[2:] = (20, 900)

    with open_slide(tile, mpp=0.5) as slide:
        with pytest.warns(
            UserWarning,
            match="2 of 4 nuclei .*left out "
            r"\(2 embedded\); are these outlines of this image",
        ):
            adata = imported_results(slide, imported, encoder=encoder)
    assert adata.obs["nucleus_id"].tolist() == [0, 1]


def test_nuclei_all_outside_the_image_are_refused_naming_both_files(tile, encoder):
    imported = imported_of(["", ""])
    imported.centroids_xy[:] = (5000, 20)

    with open_slide(tile, mpp=0.5) as slide:
        with pytest.raises(
            ValueError,
            match="2 of 2 nuclei of cells.geojson lie "
            "outside the 400x300 image 'tile.png'.*none fit. Is it "
            "the file of this image",
        ):
            imported_results(slide, imported, encoder=encoder)


@pytest.mark.parametrize("file_mpp, warned", [(0.2527, True), (0.52, False)])
def test_a_file_of_another_pixel_size_is_warned_of(tile, encoder, file_mpp, warned):
    imported = imported_of([""])
    imported.mpp = file_mpp

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with open_slide(tile, mpp=0.499) as slide:
            imported_results(slide, imported, encoder=encoder)

    messages = [str(w.message) for w in caught if w.category is UserWarning]
    expected = (
        f"cells.geojson records {file_mpp:g} microns per pixel but 'tile.png' has "
        "0.499: are these outlines of this image?"
    )
    assert any(expected in m for m in messages) == warned, messages


def test_embedding_in_chunks_and_blocks_gives_the_same_result(
    tile, encoder, monkeypatch
):
    rng = np.random.default_rng(3)
    points = rng.uniform(10, 290, (40, 2))
    with open_slide(tile, mpp=0.5) as slide:
        whole = points_module.embed_points(slide, points, encoder=encoder)

        # 6 nuclei per chunk, reads of at most 25 um (50 px) squares
        reads = []
        read_region = slide.read_region
        monkeypatch.setattr(points_module, "EMBED_CHUNK", 6)
        monkeypatch.setattr(points_module, "BLOCK_UM", 25.0)
        monkeypatch.setattr(
            slide, "read_region", lambda *a: reads.append(a[2]) or read_region(*a)
        )
        crops = points_module._crops
        sizes = []
        monkeypatch.setattr(
            points_module,
            "_crops",
            lambda slide, xy, *a: sizes.append(len(xy)) or crops(slide, xy, *a),
        )
        calls = []
        chunked = points_module.embed_points(
            slide, points, encoder=encoder, progress=lambda *a: calls.append(a)
        )

    np.testing.assert_allclose(
        chunked.obsm["X_lemon"], whole.obsm["X_lemon"], atol=1e-5
    )
    margin = 2 * 40 * 0.25 / 0.5  # a crop side each way, in px
    assert max(max(size) for size in reads) <= 50 + margin + 2
    assert sizes == [6] * 6 + [4]  # the crops of one chunk at a time
    assert calls[-1] == ("embed", 40, 40)
    assert [c[1] for c in calls] == sorted(c[1] for c in calls)


def test_points_without_outlines_keep_a_nan_area(tile, encoder):
    with open_slide(tile, mpp=0.5) as slide:
        adata = points_module.embed_points(slide, [[50, 50]], encoder=encoder)
        with pytest.raises(ValueError, match="outlines has 2 polygons for 1 points"):
            points_module.embed_points(
                slide, [[50, 50]], encoder=encoder, outlines=[circle((50, 50), 5)] * 2
            )

    assert np.isnan(adata.obs["area_um2"]).all()
    assert adata.obs["segmenter"].tolist() == ["points"]


def test_outline_areas_by_the_shoelace_formula():
    square = np.array([[0, 0], [4, 0], [4, 3], [0, 3]], float)
    clockwise = square[::-1]
    areas = points_module.outline_areas_px([square, np.empty((0, 2)), clockwise])

    np.testing.assert_allclose(areas, [12, np.nan, 12])
    assert pd.isna(points_module.outline_areas_px([np.ones((2, 2))])[0])
