"""``lemon export`` and ``lemon embed --nuclei``, run in-process."""

from __future__ import annotations

import contextlib
import gzip
import io
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_export_geojson import circle, synthetic_results

from napari_lemon import cli, export_command
from napari_lemon.annotations import Annotations, annotations_path
from napari_lemon.export import EXPORT_FORMATS
from napari_lemon.store import outlines_of, read_results, write_results


def run(argv) -> tuple[int, str]:
    """Run ``lemon``; its status and standard output."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = cli.main([str(a) for a in argv])
    return status, stdout.getvalue()


def run_error(capsys, argv) -> str:
    """Run ``lemon`` expecting a user error; return its one-line message."""
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("lemon: error: ")
    return err


@pytest.fixture
def results(tmp_path):
    return write_results(synthetic_results(8), tmp_path / "slide.h5ad")


# lemon export


@pytest.mark.parametrize(
    "name, fmt", [("n.geojson", None), ("n.csv", "csv"), ("n.h5ad", None)]
)
def test_export_writes_the_format_named_or_implied(tmp_path, results, name, fmt):
    out = tmp_path / name
    argv = ["export", results, "--out", out] + (["--format", fmt] if fmt else [])

    status, stdout = run(argv)

    assert status == 0 and out.is_file()
    assert stdout.strip().endswith(f"-> {out}")
    if name.endswith("geojson"):
        assert len(json.loads(out.read_text())["features"]) == 8
    elif name.endswith("csv"):
        assert len(pd.read_csv(out)) == 8
    else:
        assert read_results(out).n_obs == 8


def test_export_gzip_flag(tmp_path, results):
    out = tmp_path / "n.geojson"

    assert run(["export", results, "--out", out, "--gzip"])[0] == 0

    with gzip.open(out, "rt") as fh:
        assert len(json.load(fh)["features"]) == 8


def test_export_takes_the_labels_beside_the_results(tmp_path, results):
    labels = Annotations()
    labels.add_type("immune")
    labels.label([101], "immune")
    labels.save(annotations_path(results))

    assert run(["export", results, "--out", tmp_path / "n.csv"])[0] == 0

    table = pd.read_csv(tmp_path / "n.csv")
    assert table["label"].fillna("").tolist() == ["", "immune"] + [""] * 6


def test_an_existing_output_is_kept_unless_overwrite(capsys, tmp_path, results):
    out = tmp_path / "n.csv"
    out.write_text("edited by hand")

    err = run_error(capsys, ["export", results, "--out", out])
    assert f"--out '{out}' exists; pass --overwrite" in err
    assert out.read_text() == "edited by hand"

    assert run(["export", results, "--out", out, "--overwrite"])[0] == 0
    assert len(pd.read_csv(out)) == 8


@pytest.mark.parametrize(
    "argv, message",
    [
        (["{missing}", "--out", "{tmp}/n.csv"], "results {missing} do not exist"),
        (["{results}", "--out", "{tmp}/n.txt"], "cannot tell the export format"),
        (["{results}", "--out", "{tmp}"], "is a folder; give a file name"),
        (["{results}", "--out", "{results}"], "is the results file itself"),
        (["{text}", "--out", "{tmp}/n.csv"], "notes.h5ad is not a readable .h5ad"),
    ],
)
def test_export_errors_are_one_line_naming_the_file(
    capsys, tmp_path, results, argv, message
):
    text = tmp_path / "notes.h5ad"
    text.write_text("notes")
    names = {"missing": tmp_path / "gone.zarr", "tmp": tmp_path, "results": results}
    names["text"] = text
    argv = [a.format(**names) for a in argv]

    said = run_error(capsys, ["export", *argv])
    assert message.format(**names) in said
    if argv[0] != str(results):  # results that are not there or not results
        assert "written by napari-lemon" in said or "of `lemon analyze`" in said


@pytest.mark.parametrize(
    "fmt, name, says",
    [("csv", "x.geojson", "geojson"), ("geojson", "x.csv.gz", "csv"),
     ("h5ad", "x.json", "geojson")],
)  # fmt: skip
def test_a_format_the_name_contradicts_is_refused(
    capsys, tmp_path, results, fmt, name, says
):
    out = tmp_path / name
    argv = ["export", results, "--format", fmt, "--out", out]

    err = run_error(capsys, argv)

    assert f"format {fmt!r} disagrees with the name {name!r}, which says " in err
    assert f"{says!r}; end the name in .{fmt}" in err and not out.exists()


def test_an_export_that_cannot_be_written_names_the_file_not_a_temporary_one(
    capsys, tmp_path, results, monkeypatch
):
    import os

    replace = os.replace

    def refuse(src, dst):  # as in a folder one may not write to
        if str(dst).endswith("y.geojson"):
            raise PermissionError(13, "Permission denied", str(src))
        return replace(src, dst)

    monkeypatch.setattr(os, "replace", refuse)
    out = tmp_path / "ro" / "y.geojson"

    err = run_error(capsys, ["export", results, "--out", out])

    assert f"cannot write {out}: Permission denied; choose a folder you may " in err
    assert ".part" not in err and not list(out.parent.iterdir())


def test_an_unknown_format_is_refused_by_the_parser(capsys, results, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["export", str(results), "--format", "shp", "--out", "n.shp"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'shp'" in capsys.readouterr().err


def test_the_parser_lists_the_export_formats():
    assert export_command.FORMATS == EXPORT_FORMATS


# lemon embed --nuclei


@pytest.fixture
def tile(tmp_path):
    """A 300 x 400 px image that records no pixel size."""
    path = tmp_path / "tile.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(path)
    return path


def detections(tmp_path, classes, x0=40):
    """Round nuclei 50 px apart from ``x0`` along y = 100, classified or not."""
    features = []
    for i, name in enumerate(classes):
        ring = circle((x0 + 50 * i, 100), 6)
        properties = {"objectType": "detection"}
        if name:
            properties["classification"] = {"name": name, "color": [200, 0, 10]}
        features.append(
            {
                "type": "Feature",
                "geometry": {
                    "type": "Polygon",
                    "coordinates": [np.vstack([ring, ring[:1]]).tolist()],
                },
                "properties": properties,
            }
        )
    path = tmp_path / "cells.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_embed_nuclei_writes_results_and_their_labels(
    tile, tmp_path, random_encoder_path
):
    nuclei = detections(tmp_path, ["Tumor", "", "Stroma", "Tumor"])
    out = tmp_path / "out" / "tile.h5ad"
    argv = ["embed", tile, "--nuclei", nuclei, "--out", out, "--mpp", 0.5]

    status, stdout = run(argv + ["--model", random_encoder_path, "--device", "cpu"])

    assert status == 0
    adata = read_results(out)
    assert adata.n_obs == 4 and adata.obsm["X_lemon"].shape == (4, 384)
    assert set(adata.obs["segmenter"]) == {"qupath-geojson"}
    assert all(len(o) == 12 for o in outlines_of(adata))
    labels = Annotations.load(annotations_path(out))
    assert labels.labels() == {0: "Tumor", 2: "Stroma", 3: "Tumor"}
    assert labels.colour_of("Tumor") == "#c8000a"
    assert labels.results_id["n_obs"] == 4
    assert "4 nuclei of cells.geojson embedded" in stdout
    assert "2 cell types ->" in stdout


def test_embed_nuclei_again_keeps_the_earlier_labels_aside(
    capsys, tile, tmp_path, random_encoder_path
):
    out = tmp_path / "tile.h5ad"
    argv = ["embed", tile, "--out", out, "--mpp", 0.5, "--model", random_encoder_path]
    nuclei = detections(tmp_path, ["Tumor"])
    assert run([*argv, "--nuclei", nuclei])[0] == 0
    labels = Annotations.load(annotations_path(out))
    labels.add_type("brushed")  # work done since
    labels.label([0], "brushed")

    # refused without --overwrite
    err = run_error(capsys, [*argv, "--nuclei", nuclei])
    assert "exists; pass --overwrite to replace it (and the labels" in err

    # with it: new labels, the earlier ones renamed aside
    status, stdout = run([*argv, "--nuclei", nuclei, "--overwrite"])
    assert status == 0
    assert "1 nucleus of cells.geojson embedded" in stdout
    assert "1 cell type ->" in stdout
    (aside,) = tmp_path.glob("tile.annotations.replaced-*.json")
    assert f"are kept as {aside}" in stdout
    assert Annotations.load(aside).labels() == {0: "brushed"}
    assert Annotations.load(annotations_path(out)).labels() == {0: "Tumor"}


def test_embed_nuclei_partly_outside_counts_them_and_labels_the_rest(
    capsys, tile, tmp_path, random_encoder_path
):
    nuclei = detections(tmp_path, ["Tumor"] * 7 + ["Stroma"], x0=60)  # last: x = 410
    out = tmp_path / "tile.h5ad"
    argv = ["embed", tile, "--nuclei", nuclei, "--out", out, "--mpp", 0.5]

    status, stdout = run([*argv, "--model", random_encoder_path])

    assert status == 0
    assert "1 of 8 nuclei of cells.geojson lie outside" in capsys.readouterr().err
    assert "7 nuclei of cells.geojson (1 skipped) embedded" in stdout
    assert "1 cell type ->" in stdout
    assert read_results(out).obs["nucleus_id"].tolist() == list(range(7))
    assert Annotations.load(annotations_path(out)).type_names() == ["Tumor"]


def test_embed_nuclei_without_classes_writes_no_annotations(
    tile, tmp_path, random_encoder_path
):
    nuclei = detections(tmp_path, ["", ""])
    out = tmp_path / "tile.h5ad"
    argv = ["embed", tile, "--nuclei", nuclei, "--out", out, "--mpp", 0.5]

    assert run(argv + ["--model", random_encoder_path])[0] == 0

    assert out.is_file() and not annotations_path(out).exists()


def test_embed_needs_points_or_nuclei_not_both(capsys, tile, tmp_path):
    nuclei = detections(tmp_path, [""])
    for extra in ([], ["--points", "p.csv", "--nuclei", nuclei]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["embed", str(tile), "--out", "o.h5ad", *map(str, extra)])
        assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    "nuclei, message",
    [
        ("missing.geojson", "nuclei file {tmp}/missing.geojson does not exist"),
        ("bad.json", "bad.json is JSON but not nuclei of a format read here"),
    ],
)
def test_embed_nuclei_errors_name_the_file(capsys, tile, tmp_path, nuclei, message):
    (tmp_path / "bad.json").write_text('{"objects": []}')
    argv = ["embed", tile, "--nuclei", tmp_path / nuclei, "--out", tmp_path / "o.h5ad"]

    assert message.format(tmp=tmp_path) in run_error(capsys, argv + ["--mpp", 0.5])


def test_embed_nuclei_of_another_image_is_refused(capsys, tile, tmp_path):
    nuclei = detections(tmp_path, [""] * 10, x0=9000)  # off the 400 px wide tile
    argv = ["embed", tile, "--nuclei", nuclei, "--out", tmp_path / "o.h5ad"]

    err = run_error(capsys, argv + ["--mpp", 0.5])

    assert "10 of 10 nuclei of cells.geojson lie outside the 400x300 image" in err
    assert "'tile.png'" in err and "none fit. Is it the file of this image" in err
    assert not (tmp_path / "o.h5ad").exists()


def test_embed_nuclei_refuses_an_output_that_is_not_h5ad(capsys, tile, tmp_path):
    nuclei = detections(tmp_path, [""])
    argv = ["embed", tile, "--nuclei", nuclei, "--out", tmp_path / "o.csv"]

    assert "must end in .h5ad" in run_error(capsys, argv)


@pytest.mark.slow
@pytest.mark.realdata
def test_embed_a_monuseg_tile_with_its_annotations(capsys, shared_data, tmp_path):
    name = "TCGA-2Z-A9J9-01A-01-TS1"
    image = shared_data / "monuseg" / "test" / "images" / f"{name}.tif"
    xml = shared_data / "monuseg" / "test" / "annotations" / f"{name}.xml"
    out = tmp_path / f"{name}.h5ad"
    argv = ["embed", image, "--nuclei", xml, "--out", out, "--precision", "fp32"]

    status, stdout = run(argv + ["--device", "cpu"])

    assert status == 0, stdout
    assert f"using MicronsPerPixel=0.2527 of {name}.xml" in capsys.readouterr().err
    adata = read_results(out)
    assert adata.n_obs == 575  # every region, self-crossing ones repaired
    assert adata.uns["lemon"]["mpp"] == pytest.approx(0.2527)
    assert adata.uns["lemon"]["encoder"]["name"] != "random-test"
    embeddings = adata.obsm["X_lemon"]
    assert np.isfinite(embeddings).all() and embeddings.std(axis=0).mean() > 0
    # MoNuSeg nuclei: a median of roughly 20-60 um^2
    assert 15 < np.median(adata.obs["area_um2"]) < 80
    assert not annotations_path(out).exists()  # MoNuSeg regions carry no class

    # and out again, for QuPath
    geojson = tmp_path / f"{name}.geojson"
    assert run(["export", out, "--out", geojson])[0] == 0
    assert len(json.loads(geojson.read_text())["features"]) == 575
