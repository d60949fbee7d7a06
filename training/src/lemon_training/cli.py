"""``lemon-train``: curate crops, train, benchmark and export nucleus encoders."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

DEFAULT_DATA = Path("../shared/data")


class UserError(Exception):
    """Bad input from the command line: one line to stderr, exit status 2."""


def cmd_fit(args) -> None:
    from . import distributed
    from .config import load_config
    from .fit import fit

    config = load_config(args.config, args.overrides)
    run = fit(config)
    if distributed.is_main():
        print(f"run finished: {run}")


def cmd_config(args) -> None:
    import yaml

    from .config import load_config

    print(yaml.safe_dump(load_config(args.config, args.overrides), sort_keys=False))


def cmd_probe(args) -> None:
    from .evaluate.crc_probe import crc_probe

    result = crc_probe(args.encoder, Path(args.data_root) / "crc", seed=args.seed)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def cmd_export(args) -> None:
    from .export import export_run

    path = export_run(args.run, args.out, _card_benchmarks(args.benchmarks))
    print(f"exported {path} (+ {path.with_suffix('.json').name})")


def _card_benchmarks(path: str | None) -> dict:
    """Results for the card: a benchmark's ``folds.json`` (made into its
    table) or a JSON object recorded as it is."""
    from .evaluate.table import card_benchmarks, read_results

    if not path:
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(
            f"--benchmarks {path}: cannot read it as JSON ({err})"
        ) from None
    if isinstance(data, list):
        if not all(isinstance(r, dict) and "encoder" in r for r in data):
            raise UserError(
                f"--benchmarks {path}: a list, but not the folds.json of "
                "`lemon-train benchmark` (records with an 'encoder')"
            )
        return card_benchmarks(read_results(path))
    if not isinstance(data, dict):
        raise UserError(
            f"--benchmarks {path}: expected a benchmark's folds.json or a JSON "
            f"object, got {type(data).__name__}"
        )
    return data


def _fit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", help="YAML experiment file (optional)")
    p.add_argument(
        "overrides", nargs="*", help="section.key=value, e.g. optim.steps=200"
    )


def _split_config(args) -> None:
    """``fit optim.steps=2`` has no file: the first word is an override."""
    if args.config and "=" in args.config:
        args.config, args.overrides = None, [args.config, *args.overrides]


def build_parser() -> argparse.ArgumentParser:
    from .augment.grid import add_augment_grid_arguments, run_augment_grid
    from .data.curate import add_curate_arguments, run_curate
    from .evaluate.benchmark import add_benchmark_arguments, run_benchmark

    parser = argparse.ArgumentParser(
        prog="lemon-train",
        description="Curate crops, train, benchmark and export nucleus encoders.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("curate", help="segment, sample and crop nuclei into zarr")
    add_curate_arguments(p)
    p.set_defaults(func=run_curate)

    p = sub.add_parser("augment-grid", help="PNG of example views per policy")
    add_augment_grid_arguments(p)
    p.set_defaults(func=lambda a: print(f"wrote {run_augment_grid(a)}"))

    p = sub.add_parser("fit", help="train; CONFIG is YAML, then section.key=value")
    _fit_arguments(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("config", help="print the merged config of a run")
    _fit_arguments(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("benchmark", help="linear-probe table of encoders")
    add_benchmark_arguments(p)
    p.set_defaults(func=run_benchmark)

    p = sub.add_parser("probe", help="CRC linear probe of one encoder (quick)")
    p.add_argument("--encoder", required=True, help="'bundled', 'random' or a path")
    p.add_argument("--data-root", default=str(DEFAULT_DATA))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("export", help="write a run as safetensors + card")
    p.add_argument("run")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--benchmarks",
        help="results to put in the card: the folds.json of `lemon-train "
        "benchmark`, or any JSON object",
    )
    p.set_defaults(func=cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .fit import TrainingDiverged

    args = build_parser().parse_args(argv)
    if hasattr(args, "overrides"):
        _split_config(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        args.func(args)
    except (UserError, ValueError, FileNotFoundError, TrainingDiverged) as err:
        # ConfigError, CurationError, DatasetError and CheckpointError are
        # ValueErrors whose message says what to do
        print(f"lemon-train: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
