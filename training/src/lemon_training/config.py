"""Run configuration: defaults with every key, experiment files and overrides.

A config is a two-level mapping, ``section -> key -> value``, as in
``configs/defaults.yaml``. :func:`load_config` merges an experiment file and
``section.key=value`` overrides over the defaults and refuses keys that do not
exist, naming the close matches.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

Config = dict[str, dict[str, Any]]


class ConfigError(ValueError):
    """A config that cannot be run, with what to change."""


def defaults() -> Config:
    """The default config: every section and key."""
    text = resources.files(__package__).joinpath("configs/defaults.yaml").read_text()
    return yaml.safe_load(text)


def dotted_keys(config: Config) -> list[str]:
    """``section.key`` names of every key in ``config``."""
    return [f"{s}.{k}" for s, keys in config.items() for k in keys]


def merge(base: Config, update: dict[str, Any], origin: str) -> Config:
    """``update`` (nested or ``section.key`` flat) over ``base``, keys checked.

    ``origin`` names where ``update`` came from, for the error message.
    """
    merged = copy.deepcopy(base)
    for name, value in _flatten(update):
        section, _, key = name.partition(".")
        if section not in merged or key not in merged[section]:
            raise ConfigError(_unknown_key_message(name, merged, origin))
        merged[section][key] = value
    return merged


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``["optim.steps=200", ...]`` -> ``{"optim.steps": 200, ...}`` (YAML values)."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise ConfigError(
                f"override {pair!r} is not section.key=value "
                "(for example optim.steps=200)"
            )
        out[name.strip()] = yaml.safe_load(value)
    return out


def load_config(
    path: str | Path | None = None, overrides: Iterable[str] = ()
) -> Config:
    """Defaults, then the YAML file at ``path``, then ``section.key=value`` pairs."""
    config = defaults()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist")
        config = merge(config, yaml.safe_load(path.read_text()) or {}, str(path))
    return check_values(merge(config, parse_overrides(overrides), "the command line"))


def resolve(config: dict[str, Any] | None = None) -> Config:
    """A complete config from a partial one (nested or dotted keys)."""
    return check_values(merge(defaults(), config or {}, "the config"))


# keys that must be > 0 (or >= 0) when set; None means "not set" where allowed
POSITIVE = (
    "optim.batch_size",
    "optim.steps",
    "optim.max_minutes",
    "optim.clip_grad",
    "run.threads",
    "run.log_every",
    "run.checkpoint_every",
    "mocov3.temperature",
)
NON_NEGATIVE = (
    "optim.base_lr",  # 0 trains nothing: a run that only checks the pipeline
    "optim.warmup_steps",
    "optim.weight_decay",
    "data.memory_limit_gb",
)


def check_values(config: Config) -> Config:
    """``config`` if each number is a number of the default's kind and in
    range, else a :class:`ConfigError` naming the key, the value and the
    default."""
    default = dict(_flatten(defaults()))
    for name, value in _flatten(config):
        kind = type(default.get(name))
        if kind in (int, float) and value is not None:
            integral = isinstance(value, int) and not isinstance(value, bool)
            number = integral or isinstance(value, float)
            if not number or (kind is int and not integral):
                what = "a whole number" if kind is int else "a number"
                raise ConfigError(
                    f"{name}={value!r} must be {what} (default {default[name]!r})"
                )
    flat = dict(_flatten(config))
    for name in POSITIVE + NON_NEGATIVE:
        value = flat.get(name)
        if value is None or not isinstance(value, (int, float)):
            continue
        strict = name in POSITIVE
        if value < 0 or (strict and value == 0):
            bound = "greater than 0" if strict else "0 or more"
            raise ConfigError(f"{name}={value!r} must be {bound}")
    return config


def differences(a: Config, b: Config, ignore: Iterable[str] = ()) -> list[str]:
    """``section.key: a -> b`` for every key whose value differs."""
    skip = set(ignore)
    flat_a, flat_b = dict(_flatten(a)), dict(_flatten(b))
    return [
        f"{k}: {flat_a.get(k)!r} -> {flat_b.get(k)!r}"
        for k in sorted(set(flat_a) | set(flat_b))
        if k not in skip and flat_a.get(k) != flat_b.get(k)
    ]


def _flatten(update: dict[str, Any]) -> list[tuple[str, Any]]:
    """Nested ``{section: {key: v}}`` or flat ``{"section.key": v}`` as pairs."""
    pairs = []
    for name, value in update.items():
        if "." in name or not isinstance(value, dict):
            pairs.append((name, value))
        else:
            pairs += [(f"{name}.{k}", v) for k, v in value.items()]
    return pairs


def _unknown_key_message(name: str, config: Config, origin: str) -> str:
    close = difflib.get_close_matches(name, dotted_keys(config), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return (
        f"unknown config key {name!r} in {origin}{hint} "
        "(configs/defaults.yaml lists every key)"
    )
