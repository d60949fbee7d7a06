"""The training loop on a tiny synthetic crop set: every method trains,
checkpoints, resumes to the identical state and exports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lemon_training import fit as fit_module
from lemon_training.cli import main as cli_main
from lemon_training.config import ConfigError
from lemon_training.export import export_run
from lemon_training.fit import TrainingDiverged, fit, progress
from napari_lemon.checkpoint import load_encoder

TINY = {
    "model.embed_dim": 32,
    "model.depth": 2,
    "model.num_heads": 2,
    "optim.batch_size": 8,
    "optim.steps": 4,
    "optim.warmup_steps": 1,
    "mocov3.dim": 16,
    "mocov3.mlp_dim": 32,
    "dinov2.out_dim": 64,
    "dinov2.hidden_dim": 32,
    "dinov2.bottleneck_dim": 16,
    "dinov2.n_local": 2,
    "run.log_every": 1,
    "run.checkpoint_every": 2,
    "run.device": "cpu",
}

METHODS = {
    "mocov3": {"method.name": "mocov3"},
    "dinov2": {"method.name": "dinov2"},
    "dinov2-nol2g": {
        "method.name": "dinov2",
        "dinov2.local_to_global": False,
        "dinov2.n_local": 0,
    },
    "dinov2-nol2g-kde": {
        "method.name": "dinov2",
        "dinov2.local_to_global": False,
        "dinov2.n_local": 0,
        "dinov2.koleo_weight": 0.0,
        "dinov2.kde_weight": 0.05,
    },
}


@pytest.fixture(scope="module")
def crop_dataset(tmp_path_factory):
    from lemon_training.data.dataset import save_dataset

    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (24, 60, 60, 3), dtype=np.uint8)
    return save_dataset(tmp_path_factory.mktemp("crops"), crops)


def tiny_config(dataset, out, **extra):
    return {**TINY, "data.path": str(dataset), "run.out": str(out), **extra}


def kill_at_step(monkeypatch, step):
    """Make the run die like a killed process right after logging ``step``."""
    real_log = fit_module._log

    def dying_log(run, state, *args):
        real_log(run, state, *args)
        if state["step"] == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "_log", dying_log)
    return real_log


def final_weights(run):
    return torch.load(run / "final.pt", weights_only=False)["model"]


def test_progress_follows_steps_or_the_time_budget_whichever_is_further():
    state = {"step": 10, "seconds": 30.0}

    assert progress(state, total=100, budget_s=None) == pytest.approx(0.1)
    assert progress(state, total=100, budget_s=60.0) == pytest.approx(0.5)
    assert progress({"step": 5, "seconds": 90.0}, 100, 60.0) == 1.0


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_trains_resumes_identically_and_exports(
    name, crop_dataset, tmp_path, monkeypatch
):
    config = {**METHODS[name], "augment.policy": "a1"}
    straight = fit(tiny_config(crop_dataset, tmp_path / "straight", **config))

    # kill a second run at step 3, after the checkpoint of step 2, and rerun it
    real_log = kill_at_step(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(crop_dataset, tmp_path / "resumed", **config))
    monkeypatch.setattr(fit_module, "_log", real_log)
    resumed = fit(tiny_config(crop_dataset, tmp_path / "resumed", **config))

    a, b = final_weights(straight), final_weights(resumed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    path = export_run(resumed, tmp_path / "enc.safetensors")
    encoder = load_encoder(path, device="cpu")
    assert encoder.embed(np.zeros((2, 40, 40, 3), np.uint8)).shape == (2, 32)


def test_fit_writes_config_metrics_and_final_state(crop_dataset, tmp_path):
    run = fit(tiny_config(crop_dataset, tmp_path / "run"))

    meta = json.loads((run / "config.json").read_text())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert meta["config"]["optim"]["steps"] == 4 and "torch" in meta["versions"]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) and r["infonce"] for r in records)


def test_time_budget_ends_the_run_with_the_schedule_complete(crop_dataset, tmp_path):
    config = {"optim.steps": 1000, "optim.max_minutes": 1e-4}
    run = fit(tiny_config(crop_dataset, tmp_path / "run", **config))

    final = torch.load(run / "final.pt", weights_only=False)["state"]
    assert final["step"] < 1000 and final["seconds"] >= 60 * 1e-4


def test_a_gmm_policy_fits_stain_statistics_once_and_keeps_them(crop_dataset, tmp_path):
    config = {"augment.policy": "a1+gmm1", "augment.stain_sample": 16}
    run = fit(tiny_config(crop_dataset, tmp_path / "run", **config))

    saved = json.loads((run / "stain_statistics.json").read_text())
    assert saved  # reused on resume, so that views stay identical


def test_resuming_with_another_config_is_refused(crop_dataset, tmp_path, monkeypatch):
    kill_at_step(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(crop_dataset, tmp_path / "run"))

    with pytest.raises(ConfigError, match="optim.base_lr: 0.00015 -> 0.001"):
        fit(tiny_config(crop_dataset, tmp_path / "run", **{"optim.base_lr": 1e-3}))


def test_a_nan_loss_stops_with_the_last_good_checkpoint_kept(
    crop_dataset, tmp_path, monkeypatch
):
    from lemon_training.methods.mocov3 import MoCoV3

    real_forward, calls = MoCoV3.forward, []

    def forward(self, crops):
        loss, parts = real_forward(self, crops)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 3 else loss), parts

    monkeypatch.setattr(MoCoV3, "forward", forward)
    with pytest.raises(
        TrainingDiverged, match="loss is nan at step 3.*step 2\\) is kept"
    ):
        fit(tiny_config(crop_dataset, tmp_path / "run"))

    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert saved["state"]["step"] == 2


def test_batch_larger_than_the_data_is_refused(crop_dataset, tmp_path):
    with pytest.raises(ValueError, match="batch_size=64 is larger than the 24 crops"):
        fit(tiny_config(crop_dataset, tmp_path / "run", **{"optim.batch_size": 64}))


def test_init_from_a_missing_run_is_refused(crop_dataset, tmp_path):
    config = {"run.init_from": str(tmp_path / "nowhere")}
    with pytest.raises(ConfigError, match="run.init_from=.*does not exist"):
        fit(tiny_config(crop_dataset, tmp_path / "run", **config))


def test_init_from_another_architecture_is_refused(crop_dataset, tmp_path):
    first = fit(tiny_config(crop_dataset, tmp_path / "first", **{"optim.steps": 1}))
    config = {"run.init_from": str(first), "model.depth": 3}

    with pytest.raises(ConfigError, match="another method or architecture"):
        fit(tiny_config(crop_dataset, tmp_path / "run", **config))


def test_init_from_starts_from_the_weights_of_a_finished_run(crop_dataset, tmp_path):
    first = fit(tiny_config(crop_dataset, tmp_path / "first", **{"optim.steps": 1}))
    config = {"run.init_from": str(first), "optim.steps": 1, "optim.base_lr": 0.0}

    second = fit(tiny_config(crop_dataset, tmp_path / "second", **config))

    # with a zero learning rate only the momentum branch moves
    a, b = final_weights(first), final_weights(second)
    torch.testing.assert_close(
        a["encoder.blocks.0.mlp.fc1.weight"], b["encoder.blocks.0.mlp.fc1.weight"]
    )


def test_the_cli_reports_a_bad_key_in_one_line(crop_dataset, tmp_path, capsys):
    status = cli_main(["fit", f"data.path={crop_dataset}", "optim.stpes=2"])

    assert status == 2
    assert "did you mean optim.steps" in capsys.readouterr().err


def test_export_of_an_unfinished_run_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no final.pt"):
        export_run(tmp_path, tmp_path / "enc.safetensors")


def test_export_of_a_missing_run_folder_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="run folder .*norun' does not exist"):
        export_run(tmp_path / "norun", tmp_path / "enc.safetensors")


def test_two_processes_train_together_under_torchrun(crop_dataset, tmp_path):
    run = tmp_path / "ddp"
    overrides = [f"{k}={v}" for k, v in tiny_config(crop_dataset, run).items()]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", "-m", "lemon_training.cli", "fit", *overrides]

    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)

    assert done.returncode == 0, done.stderr[-2000:]
    meta = json.loads((run / "config.json").read_text())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert meta["versions"]["processes"] == "2"
    assert [r["images_seen"] for r in records] == [8, 16, 24, 32]


def test_init_from_an_exported_encoder_and_the_card_adds_up_training(
    crop_dataset, tmp_path
):
    import json

    first = fit(tiny_config(crop_dataset, tmp_path / "first", **{"optim.steps": 1}))
    exported = export_run(first, tmp_path / "first.safetensors")
    config = {"run.init_from": str(exported), "optim.steps": 1, "optim.base_lr": 0.0}
    second = fit(tiny_config(crop_dataset, tmp_path / "second", **config))

    # the encoder starts from the exported (fp16) weights; heads start fresh
    start = load_encoder(exported, device="cpu").model.state_dict()
    weights = final_weights(second)
    key = "blocks.0.mlp.fc1.weight"
    torch.testing.assert_close(weights[f"encoder.{key}"], start[key])

    # the continued encoder's card carries the first run's record
    card = json.loads(
        export_run(second, tmp_path / "b.safetensors").with_suffix(".json").read_text()
    )
    earlier = card["training"]["continued_from"]
    first_card = json.loads(exported.with_suffix(".json").read_text())
    assert earlier["sha256"] == first_card["sha256"]
    assert earlier["training"]["steps"] == 1


def test_init_from_a_checkpoint_of_another_architecture_is_refused(
    crop_dataset, tmp_path
):
    first = fit(tiny_config(crop_dataset, tmp_path / "first", **{"optim.steps": 1}))
    exported = export_run(first, tmp_path / "first.safetensors")
    config = {"run.init_from": str(exported), "model.depth": 3}

    with pytest.raises(ConfigError, match="another architecture"):
        fit(tiny_config(crop_dataset, tmp_path / "run", **config))


@pytest.fixture(scope="module")
def finished_run(crop_dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    return fit(tiny_config(crop_dataset, out, **{"optim.steps": 1}))


def test_export_puts_a_benchmark_table_in_the_card(finished_run, tmp_path):
    from lemon_training.evaluate.table import ProbeResult, write_tables

    results = [
        ProbeResult("mine", "crc", "classification", "balanced_accuracy", [0.6, 0.7]),
        ProbeResult("random", "crc", "classification", "balanced_accuracy", [0.5]),
        ProbeResult(
            "official",
            "crc",
            "classification",
            "balanced_accuracy",
            status="skipped: offline",
        ),
    ]
    folds = write_tables(results, tmp_path / "bench")["folds.json"]
    out = tmp_path / "enc.safetensors"

    status = cli_main(
        ["export", str(finished_run), "--out", str(out), "--benchmarks", str(folds)]
    )

    assert status == 0
    probe = json.loads(out.with_suffix(".json").read_text())["benchmarks"][
        "crc_linear_probe"
    ]
    assert probe["metric"] == "balanced_accuracy"
    assert probe["encoders"]["mine"] == {
        "mean": 0.65,
        "sd": 0.0707,
        "folds": [0.6, 0.7],
    }
    assert set(probe["encoders"]) == {"mine", "random"}  # the skipped one left out


def test_export_records_a_json_object_as_it_is(finished_run, tmp_path):
    extra = tmp_path / "extra.json"
    extra.write_text('{"note": {"value": 1}}')
    out = tmp_path / "enc.safetensors"

    cli_main(
        ["export", str(finished_run), "--out", str(out), "--benchmarks", str(extra)]
    )

    card = json.loads(out.with_suffix(".json").read_text())
    assert card["benchmarks"] == {"note": {"value": 1}}


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("{not json", "cannot read it as JSON"),
        ("3", "got int"),
        ("[1, 2]", "not the folds.json"),
    ],
)
def test_export_refuses_benchmarks_that_are_not_results(
    finished_run, tmp_path, capsys, text, match
):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    out = tmp_path / "enc.safetensors"

    status = cli_main(
        ["export", str(finished_run), "--out", str(out), "--benchmarks", str(bad)]
    )

    assert status == 2
    assert match in capsys.readouterr().err
    assert not out.exists()  # nothing written


def test_the_card_counts_the_training_inputs_without_their_paths(
    finished_run, tmp_path
):
    card = json.loads(
        export_run(finished_run, tmp_path / "enc.safetensors")
        .with_suffix(".json")
        .read_text()
    )

    data = card["training"]["data"]
    assert data["n_crops"] == 24 and data["n_inputs"] == 1
    assert "shards" not in data  # where the inputs lay on the training machine


def test_a_bad_value_is_one_line_and_leaves_no_run_folder(
    crop_dataset, tmp_path, capsys
):
    out = tmp_path / "run"
    argv = ["fit", f"data.path={crop_dataset}", f"run.out={out}", "optim.batch_size=0"]

    assert cli_main(argv) == 2

    assert "optim.batch_size=0 must be greater than 0" in capsys.readouterr().err
    assert not out.exists()
