"""The ``lemon`` command, run in-process on real slides and on bad input."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_lemon import cli
from napari_lemon.store import outlines_of, read_results

CMU1 = "CMU-1-Small-Region.svs"
TCGA = "tcga-cr-7395-01a-01-ts1.svs"
TISSUE = "1100,1500,300,300"  # an epidermis patch of CMU-1, level-0 px


@pytest.fixture(scope="module")
def cmu1(shared_data):
    return shared_data / "wsi" / CMU1


@pytest.fixture(scope="module")
def analyzed(cmu1, random_encoder_path, tmp_path_factory):
    """One ``lemon analyze`` run on a tissue patch of CMU-1: (folder, stdout)."""
    out = tmp_path_factory.mktemp("analyze") / "out"
    argv = ["analyze", cmu1, "--out", out, "--region", TISSUE, "--clusters", 4]
    argv += ["--model", random_encoder_path, "--tile-um", 64]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        status = cli.main([str(a) for a in argv])
    lines = stdout.getvalue().splitlines()
    assert status == 0, lines
    return out, lines


def run_error(capsys, argv) -> str:
    """Run ``lemon`` expecting a user error; return its one-line message."""
    assert cli.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("lemon: error: ")
    return err


STORE = CMU1.replace(".svs", ".zarr")


def test_analyze_writes_the_store_its_picture_and_the_summary(analyzed):
    out, lines = analyzed
    assert sorted(p.name for p in out.iterdir()) == [
        CMU1.replace(".svs", ".overlay.png"),
        STORE,
        "summary.csv",
    ]
    assert lines[-1].endswith(f"-> {out}/")
    assert " nuclei, 4 clusters, " in lines[-1]


def test_analyze_results_are_in_level0_pixels_of_the_region(analyzed):
    adata = read_results(analyzed[0] / STORE)
    assert adata.n_obs > 10
    x, y = adata.obsm["spatial"].T
    assert (x >= 1100).all() and (x < 1400).all()
    assert (y >= 1500).all() and (y < 1800).all()
    assert adata.obsm["X_lemon"].shape == (adata.n_obs, 384)
    assert set(adata.obs["cluster"].astype(int)) == {0, 1, 2, 3}
    assert len(outlines_of(adata)) == adata.n_obs
    assert adata.uns["lemon"]["source"]["name"] == CMU1
    assert adata.uns["lemon"]["encoder"]["name"] == "random-test"
    assert len(set(adata.obs["tile_id"])) > 1  # 64 um tiles: several of them


def test_summary_csv_has_one_row_with_the_nuclei_and_stage_times(analyzed):
    import pandas as pd

    table = pd.read_csv(analyzed[0] / "summary.csv")
    adata = read_results(analyzed[0] / STORE)
    assert table["status"].tolist() == ["done"]
    assert table["nuclei"].tolist() == [adata.n_obs]
    assert table["mpp_source"].tolist() == ["file"]
    assert {"seconds_segment", "seconds_embed"} <= set(table.columns)


def test_overlay_png_is_the_region_with_coloured_outlines(analyzed):
    overlay = np.asarray(Image.open(analyzed[0] / CMU1.replace(".svs", ".overlay.png")))
    assert overlay.shape == (300, 300, 3)
    # outline pixels take the four cluster colours, absent from plain H&E
    from napari_lemon.overlay import cluster_palette

    for colour in cluster_palette(4):
        assert np.all(overlay == colour, axis=-1).sum() > 20


def test_analyze_again_resumes_the_finished_store(analyzed, cmu1, random_encoder_path):
    out, _ = analyzed
    before = read_results(out / STORE)
    argv = ["analyze", cmu1, "--out", out, "--region", TISSUE, "--clusters", 4]
    argv += ["--model", random_encoder_path, "--tile-um", 64]
    assert cli.main([str(a) for a in argv]) == 0
    after = read_results(out / STORE)
    assert after.obs_names.tolist() == before.obs_names.tolist()


def test_a_changed_setting_needs_overwrite(capsys, analyzed, cmu1, random_encoder_path):
    out, _ = analyzed
    argv = ["analyze", cmu1, "--out", out, "--region", TISSUE, "--clusters", 4]
    argv += ["--model", random_encoder_path, "--tile-um", 80]
    err = run_error(capsys, argv)
    assert "--overwrite" in err and STORE in err
    assert "overwrite=True" not in err  # the flag, not the parameter


def test_demo_analyses_the_sample_from_a_data_dir(
    shared_data, random_encoder_path, tmp_path, capsys
):
    out = tmp_path / "demo"
    argv = ["demo", "--data-dir", shared_data / "wsi", "--out", out]
    argv += ["--model", random_encoder_path, "--region", "1000,1400,300,300"]
    assert cli.main([str(a) for a in argv]) == 0
    assert read_results(out / STORE).n_obs > 0
    assert "nuclei," in capsys.readouterr().out


def test_estimate_mpp_analyses_a_slide_that_records_none(
    shared_data, random_encoder_path, tmp_path, capsys
):
    import pandas as pd

    # a MoNuSeg tile: 40x (0.2527 um/px per its annotations), no pixel size in the file
    tile = shared_data / "monuseg" / "test" / "images" / "TCGA-2Z-A9J9-01A-01-TS1.tif"
    out = tmp_path / "est"
    argv = ["analyze", tile, "--out", out, "--estimate-mpp", "--segmenter", "classical"]
    argv += ["--model", random_encoder_path, "--region", "0,0,400,400"]
    assert cli.main([str(a) for a in argv]) == 0
    table = pd.read_csv(out / "summary.csv")
    assert table["mpp_source"].tolist() == ["estimated"]
    assert table["mpp"].iloc[0] == pytest.approx(0.2527, rel=0.2)
    assert "estimate" in capsys.readouterr().err


def test_a_cohort_with_a_failing_slide_exits_1_and_names_it(
    cmu1, random_encoder_path, tmp_path, capsys
):
    import pandas as pd

    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"II*\x00" + b"\x00" * 64)
    out = tmp_path / "cohort"
    argv = ["analyze", cmu1, broken, "--out", out, "--region", TISSUE]
    argv += ["--model", random_encoder_path, "--workers", 1, "--clusters", 2]
    assert cli.main([str(a) for a in argv]) == 1
    table = pd.read_csv(out / "summary.csv")
    assert table["status"].tolist() == ["done", "failed"]
    captured = capsys.readouterr()
    assert "broken.svs: failed:" in captured.err
    assert captured.out.strip().endswith(f"-> {out}/summary.csv")


def test_segment_writes_labels_only(cmu1, tmp_path, capsys):
    out = tmp_path / "labels.tif"
    assert cli.main(["segment", str(cmu1), "--out", str(out), "--region", TISSUE]) == 0
    labels = tifffile.imread(out)
    assert labels.shape == (300, 300) and labels.max() > 10
    assert capsys.readouterr().out.strip().endswith(f"-> {out}")


def test_segment_uses_the_chosen_segmenter(cmu1, tmp_path):
    counts = {}
    for name in ("classical", "unet"):
        out = tmp_path / f"{name}.tif"
        argv = ["segment", str(cmu1), "--out", str(out), "--region", TISSUE]
        assert cli.main(argv + ["--segmenter", name]) == 0
        counts[name] = len(np.unique(tifffile.imread(out))) - 1
    assert min(counts.values()) > 10
    assert counts["classical"] != counts["unet"]  # two different segmentations


def test_a_missing_segmentation_backend_is_one_error_line(
    capsys, cmu1, tmp_path, monkeypatch
):
    import sys

    monkeypatch.setitem(sys.modules, "stardist", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "stardist.models", None)
    out = tmp_path / "labels.tif"
    argv = ["segment", cmu1, "--out", out, "--region", TISSUE]
    err = run_error(capsys, argv + ["--segmenter", "stardist"])
    assert "needs the 'stardist' package" in err and "pip install" in err
    assert not out.exists()


def test_embed_carries_csv_columns_into_obs(cmu1, random_encoder_path, tmp_path):
    csv = tmp_path / "points.csv"
    csv.write_text("x,y,cell_type\n1100.5,1500,epithelial\n1200,1600,fibroblast\n")
    out = tmp_path / "points.h5ad"
    argv = [
        "embed",
        cmu1,
        "--points",
        csv,
        "--out",
        out,
        "--model",
        random_encoder_path,
    ]
    assert cli.main([str(a) for a in argv]) == 0
    adata = read_results(out)
    assert adata.obs["cell_type"].tolist() == ["epithelial", "fibroblast"]
    np.testing.assert_allclose(adata.obsm["spatial"], [[1100.5, 1500], [1200, 1600]])
    assert adata.obsm["X_lemon"].shape == (2, 384)


@pytest.fixture
def points_tile(tmp_path):
    """A 200 x 300 px PNG and a CSV of two nucleus centres on it."""
    image = tmp_path / "tile.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(image)
    csv = tmp_path / "points.csv"
    csv.write_text("x,y\n50,60\n150,100\n")
    return image, csv


def embed_argv(points_tile, out, random_encoder_path, *extra):
    image, csv = points_tile
    argv = ["embed", image, "--points", csv, "--out", out, "--mpp", 0.5]
    return [str(a) for a in argv + ["--model", random_encoder_path, *extra]]


def test_embed_refuses_an_existing_output_unless_overwrite(
    capsys, points_tile, random_encoder_path, tmp_path
):
    from napari_lemon.annotations import Annotations, annotations_path

    out = tmp_path / "e.h5ad"
    out.write_text("earlier results")
    labels = annotations_path(out)
    Annotations(labels).add_type("tumour")

    err = run_error(capsys, embed_argv(points_tile, out, random_encoder_path))
    assert f"--out '{out}' exists; pass --overwrite to replace it (and the " in err
    assert "labels e.annotations.json beside it)" in err
    assert out.read_text() == "earlier results" and labels.exists()

    argv = embed_argv(points_tile, out, random_encoder_path, "--overwrite")
    assert cli.main(argv) == 0
    stdout = capsys.readouterr().out
    assert read_results(out).n_obs == 2 and "2 nuclei embedded" in stdout
    (aside,) = tmp_path.glob("e.annotations.replaced-*.json")
    assert not labels.exists()  # they labelled the results replaced
    assert f"the labels that were beside e.h5ad are kept as {aside}" in stdout
    assert Annotations.load(aside).type_names() == ["tumour"]


def test_embed_refuses_labels_left_beside_a_missing_output(
    capsys, points_tile, random_encoder_path, tmp_path
):
    from napari_lemon.annotations import Annotations, annotations_path

    out = tmp_path / "e.h5ad"
    Annotations(annotations_path(out)).add_type("tumour")

    err = run_error(capsys, embed_argv(points_tile, out, random_encoder_path))

    assert "e.annotations.json of earlier results lie beside it" in err
    assert "pass --overwrite to set it aside" in err and not out.exists()


@pytest.mark.parametrize(
    "out, message",
    [("e.csv", "must end in .h5ad"), ("folder.h5ad", "is a folder; give an .h5ad")],
)
def test_embed_refuses_an_output_that_is_not_an_h5ad_file(
    capsys, points_tile, random_encoder_path, tmp_path, out, message
):
    (tmp_path / "folder.h5ad").mkdir()
    argv = embed_argv(points_tile, tmp_path / out, random_encoder_path)

    assert message in run_error(capsys, argv)


def test_embed_of_one_point_says_nucleus(
    capsys, points_tile, random_encoder_path, tmp_path
):
    image, csv = points_tile
    csv.write_text("x,y\n50,60\n")

    argv = embed_argv(points_tile, tmp_path / "e.h5ad", random_encoder_path)
    assert cli.main(argv) == 0
    assert "1 nucleus embedded" in capsys.readouterr().out


def test_counted_and_cli_wording():
    assert cli.counted(1, "nucleus", "nuclei") == "1 nucleus"
    assert cli.counted(0, "nucleus", "nuclei") == "0 nuclei"
    assert cli.counted(2048, "cell type") == "2,048 cell types"
    assert cli.cli_wording("or --overwrite (overwrite=True) to start over") == (
        "or --overwrite to start over"
    )


# user errors: one line on stderr, status 2


def test_missing_slide_is_named(capsys, tmp_path):
    err = run_error(capsys, ["analyze", tmp_path / "nope.svs", "--out", tmp_path])
    assert "slide file not found" in err and "nope.svs" in err


def test_text_file_is_not_a_slide(capsys, tmp_path):
    fake = tmp_path / "notes.svs"
    fake.write_text("these are notes, not pixels")
    err = run_error(capsys, ["analyze", fake, "--out", tmp_path / "o"])
    assert "is not a readable slide" in err


def test_region_outside_the_slide_is_refused(
    capsys, cmu1, random_encoder_path, tmp_path
):
    argv = ["analyze", cmu1, "--out", tmp_path, "--region", "5000,5000,100,100"]
    err = run_error(capsys, argv + ["--model", random_encoder_path])
    assert "entirely outside the 2220x2967 slide" in err


def test_slide_without_mpp_asks_for_it(capsys, shared_data, tmp_path):
    argv = ["analyze", shared_data / "wsi" / TCGA, "--out", tmp_path]
    err = run_error(capsys, argv)
    assert "records no pixel size (mpp); pass --mpp" in err


def test_a_wrong_mpp_is_refused_in_one_line(capsys, tmp_path):
    image = tmp_path / "tile.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(image)
    argv = ["segment", image, "--mpp", "5", "--out", tmp_path / "labels.tif"]

    err = run_error(capsys, argv)

    assert "mpp=5 is outside 0.05-2 um/px" in err
    assert not (tmp_path / "labels.tif").exists()


@pytest.fixture
def wrong_weights(tmp_path):
    """A narrow, shallow ViT's weights under the card of the LEMON encoder."""
    from napari_lemon.checkpoint import save_checkpoint
    from napari_lemon.encoder import EncoderCard, create_vit

    small = EncoderCard(embed_dim=192, depth=1, num_heads=12)
    path = save_checkpoint(create_vit(small), small, tmp_path / "tiny.safetensors")
    card = EncoderCard(name="claims-384")
    path.with_suffix(".json").write_text(json.dumps(card.to_dict()))
    return path


def test_weights_of_another_architecture_are_refused(
    capsys, cmu1, wrong_weights, tmp_path
):
    argv = ["analyze", cmu1, "--out", tmp_path, "--model", wrong_weights]
    err = run_error(capsys, argv)
    assert "do not fit a LEMON ViT" in err and "shape mismatch" in err


def test_cuda_without_a_gpu_is_refused(capsys, cmu1, random_encoder_path, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    argv = ["analyze", cmu1, "--out", tmp_path, "--device", "cuda"]
    err = run_error(capsys, argv + ["--model", random_encoder_path])
    assert "no CUDA GPU is available; use 'cpu'" in err


def test_missing_weights_file_is_named(capsys, cmu1, tmp_path):
    argv = ["analyze", cmu1, "--out", tmp_path, "--model", tmp_path / "w.safetensors"]
    assert "w.safetensors do not exist" in run_error(capsys, argv)


@pytest.mark.parametrize(
    "content, message",
    [
        ("x,z\n1,2\n", r"lacks column(s) ['y']; it has ['x', 'z']"),
        ("x,y\n1,a\n", "row 2 has a non-numeric x or y"),
        ("", "is not a readable CSV file"),
    ],
)
def test_embed_with_a_bad_csv_names_the_problem(
    capsys, cmu1, tmp_path, content, message
):
    csv = tmp_path / "points.csv"
    csv.write_text(content)
    err = run_error(
        capsys, ["embed", cmu1, "--points", csv, "--out", tmp_path / "o.h5ad"]
    )
    assert message in err and "points.csv" in err


def test_embed_with_a_missing_csv(capsys, cmu1, tmp_path):
    argv = ["embed", cmu1, "--points", tmp_path / "p.csv", "--out", tmp_path / "o.h5ad"]
    assert "points file" in run_error(capsys, argv)


def test_segment_refuses_an_output_that_is_not_tiff(capsys, cmu1, tmp_path):
    err = run_error(capsys, ["segment", cmu1, "--out", tmp_path / "labels.png"])
    assert "must end in .tif or .tiff" in err


@pytest.mark.parametrize(
    "option, message",
    [
        (["--mpp", "0"], "'0' is not a positive number"),
        (["--mpp", "abc"], "'abc' is not a positive number"),
        (["--region", "1,2,3"], "'1,2,3' is not X,Y,W,H"),
        (["--region", "0,0,-5,5"], "width and height must be > 0"),
        (["--clusters", "0"], "'0' is not a whole number >= 1"),
    ],
)
def test_bad_option_values_are_refused_by_the_parser(capsys, option, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["analyze", "slide.svs", "--out", "o", *option])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_embed_with_a_header_only_csv_says_it_has_no_rows(capsys, cmu1, tmp_path):
    csv = tmp_path / "empty.csv"
    csv.write_text("x,y\n")
    argv = ["embed", cmu1, "--points", csv, "--out", tmp_path / "e.h5ad"]
    assert "has the columns x, y but no rows" in run_error(capsys, argv)


def test_analyze_refuses_an_output_file_before_any_work(capsys, cmu1, tmp_path):
    existing = tmp_path / "results"
    existing.write_text("keep me")
    err = run_error(capsys, ["analyze", cmu1, "--out", existing])
    assert "is an existing file; give a folder" in err
    assert existing.read_text() == "keep me"


def test_segment_refuses_a_folder_as_output(capsys, cmu1, tmp_path):
    folder = tmp_path / "labels.tif"
    folder.mkdir()
    err = run_error(capsys, ["segment", cmu1, "--out", folder])
    assert "is a folder; give a .tif file name" in err
