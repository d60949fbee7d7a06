"""The training loop on a tiny synthetic crop set: logs, resume, export."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lemon_training import fit as fit_module
from lemon_training.export import export_run
from lemon_training.fit import batch_indices, fit, progress
from napari_lemon.checkpoint import load_encoder


@pytest.fixture()
def crop_folder(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "crops"
    folder.mkdir()
    np.save(folder / "crops.npy", rng.integers(0, 256, (24, 60, 60, 3), dtype=np.uint8))
    pd.DataFrame({"image": ["a.png"] * 24, "x": 1.0, "y": 1.0}).to_csv(
        folder / "nuclei.csv", index=False
    )
    (folder / "manifest.json").write_text(json.dumps({"n_crops": 24}))
    return folder


def tiny_config(crop_folder, out, **extra):
    return {
        "data": str(crop_folder),
        "out": str(out),
        "batch_size": 8,
        "steps": 4,
        "warmup_steps": 1,
        "dim": 16,
        "mlp_dim": 32,
        "log_every": 1,
        "checkpoint_every": 2,
        "device": "cpu",
        **extra,
    }


def test_batches_cover_each_epoch_once_and_depend_on_the_step_only():
    first_epoch = np.concatenate([batch_indices(s, 24, 8, seed=3) for s in range(3)])

    assert sorted(first_epoch) == list(range(24))
    np.testing.assert_array_equal(
        batch_indices(4, 24, 8, 3), batch_indices(4, 24, 8, 3)
    )


def test_progress_follows_steps_or_the_time_budget_whichever_is_further():
    state = {"step": 10, "seconds": 30.0}

    assert progress(state, total=100, budget_s=None) == pytest.approx(0.1)
    assert progress(state, total=100, budget_s=60.0) == pytest.approx(0.5)
    assert progress({"step": 5, "seconds": 90.0}, 100, 60.0) == 1.0


def test_time_budget_ends_the_run_with_the_schedule_complete(crop_folder, tmp_path):
    run = fit(tiny_config(crop_folder, tmp_path / "run", steps=1000, max_minutes=1e-4))

    final = torch.load(run / "final.pt", weights_only=False)["state"]
    assert final["step"] < 1000 and final["seconds"] >= 60 * 1e-4


def test_fit_writes_config_metrics_and_final_state(crop_folder, tmp_path):
    run = fit(tiny_config(crop_folder, tmp_path / "run"))

    meta = json.loads((run / "config.json").read_text())
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert meta["config"]["steps"] == 4 and "torch" in meta["versions"]
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]
    assert (run / "final.pt").is_file()


def test_resume_after_a_kill_matches_an_uninterrupted_run(
    crop_folder, tmp_path, monkeypatch
):
    straight = fit(tiny_config(crop_folder, tmp_path / "straight"))

    # kill the second run at step 3, after the checkpoint of step 2
    real_log = fit_module._log

    def dying_log(run, state, *args):
        real_log(run, state, *args)
        if state["step"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "_log", dying_log)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(crop_folder, tmp_path / "resumed"))
    monkeypatch.setattr(fit_module, "_log", real_log)
    resumed = fit(tiny_config(crop_folder, tmp_path / "resumed"))

    a = torch.load(straight / "final.pt", weights_only=False)["model"]
    b = torch.load(resumed / "final.pt", weights_only=False)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)


def test_unknown_config_key_is_refused(crop_folder, tmp_path):
    with pytest.raises(ValueError, match="unknown config keys \\['stpes'\\]"):
        fit(tiny_config(crop_folder, tmp_path / "run", stpes=3))


def test_batch_larger_than_the_data_is_refused(crop_folder, tmp_path):
    with pytest.raises(ValueError, match="batch_size=64 is larger than the 24 crops"):
        fit(tiny_config(crop_folder, tmp_path / "run", batch_size=64))


def test_export_loads_in_the_plugin_with_the_trained_weights(crop_folder, tmp_path):
    run = fit(tiny_config(crop_folder, tmp_path / "run", steps=2))

    path = export_run(run, tmp_path / "export" / "enc.safetensors", {"probe": 0.5})
    encoder = load_encoder(path, device="cpu")

    card = json.loads(path.with_suffix(".json").read_text())
    assert card["training"]["images_seen"] == 16 and card["benchmarks"] == {
        "probe": 0.5
    }
    trained = torch.load(run / "final.pt", weights_only=False)["model"]
    qkv = trained["encoder.blocks.3.attn.qkv.weight"]
    torch.testing.assert_close(
        encoder.model.blocks[3].attn.qkv.weight.detach(), qkv, atol=1e-3, rtol=1e-3
    )


def test_export_of_an_unfinished_run_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no final.pt"):
        export_run(tmp_path, tmp_path / "enc.safetensors")
