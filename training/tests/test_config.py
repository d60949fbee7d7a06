"""Run configs: defaults, experiment files, dotted overrides, clear errors."""

from __future__ import annotations

from importlib import resources

import pytest

from lemon_training.config import (
    ConfigError,
    defaults,
    differences,
    load_config,
    parse_overrides,
    resolve,
)


def test_an_experiment_file_and_overrides_go_over_the_defaults(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("method: {name: dinov2}\noptim:\n  steps: 7\n")

    config = load_config(path, ["optim.steps=9", "dinov2.kde_weight=0.05"])

    assert config["method"]["name"] == "dinov2"
    assert config["optim"]["steps"] == 9
    assert config["dinov2"]["kde_weight"] == 0.05
    assert config["optim"]["batch_size"] == defaults()["optim"]["batch_size"]


def test_values_of_overrides_are_read_as_yaml():
    parsed = parse_overrides(["a.b=3", "a.c=null", "a.d=[1, 2]", "a.e=a1+gray"])

    assert parsed == {"a.b": 3, "a.c": None, "a.d": [1, 2], "a.e": "a1+gray"}


def test_every_shipped_experiment_file_is_valid():
    folder = resources.files("lemon_training").joinpath("configs")
    files = [p for p in folder.iterdir() if p.name.endswith(".yaml")]
    files += list(folder.joinpath("experiments").iterdir())

    assert len(files) >= 12
    for path in files:
        load_config(path)


def test_an_unknown_key_names_the_close_matches():
    with pytest.raises(ConfigError, match="'optim.stpes'.*did you mean optim.steps"):
        load_config(None, ["optim.stpes=3"])


def test_an_unknown_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("mocov3: {temprature: 0.1}\n")

    with pytest.raises(ConfigError, match="exp.yaml; did you mean mocov3.temperature"):
        load_config(path)


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml' does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_an_override_without_a_value_is_refused():
    with pytest.raises(ConfigError, match="'optim.steps' is not section.key=value"):
        parse_overrides(["optim.steps"])


def test_differences_list_changed_keys_except_ignored_ones():
    a = resolve({"optim.steps": 5, "run.threads": 1})
    b = resolve({"optim.steps": 6, "run.threads": 2})

    assert differences(a, b, ignore=["run.threads"]) == ["optim.steps: 5 -> 6"]


@pytest.mark.parametrize(
    ("override", "match"),
    [
        (
            "optim.steps=abc",
            r"optim.steps='abc' must be a whole number \(default 400\)",
        ),
        ("optim.steps=2.5", "optim.steps=2.5 must be a whole number"),
        ("optim.batch_size=0", "optim.batch_size=0 must be greater than 0"),
        ("optim.steps=-1", "optim.steps=-1 must be greater than 0"),
        ("optim.base_lr=fast", "optim.base_lr='fast' must be a number"),
        ("optim.warmup_steps=-5", "optim.warmup_steps=-5 must be 0 or more"),
        ("optim.max_minutes=0", "optim.max_minutes=0 must be greater than 0"),
    ],
)
def test_a_value_of_the_wrong_kind_or_range_is_refused(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(overrides=[override])


def test_numbers_of_a_compatible_kind_and_unset_keys_pass():
    cfg = resolve({"optim.base_lr": 1, "optim.max_minutes": 0.5, "run.threads": None})

    assert cfg["optim"]["base_lr"] == 1 and cfg["optim"]["max_minutes"] == 0.5
