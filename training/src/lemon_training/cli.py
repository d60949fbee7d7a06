"""``lemon-train``: curate crops, fit MoCo v3, probe and export an encoder."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

DEFAULT_DATA = Path("../shared/data")


def _parse_overrides(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"override {pair!r} is not key=value (e.g. steps=200)")
        key, value = pair.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def cmd_curate(args) -> None:
    import pandas as pd
    from tqdm import tqdm

    from .data.curate import write_dataset
    from .data.sources import crc_centres, monuseg_centres

    root = Path(args.data_root)
    nuclei = pd.concat(
        [
            monuseg_centres(root / "monuseg", "train"),
            crc_centres(root / "crc", ("train", "validation")),
        ],
        ignore_index=True,
    )
    write_dataset(nuclei, args.out, args.size, args.mpp, progress=tqdm)
    print(f"{len(nuclei)} crops -> {args.out}")


def cmd_fit(args) -> None:
    from .fit import fit

    overrides = list(args.overrides)
    if args.config and "=" in args.config:  # no config file, only overrides
        args.config, overrides = None, [args.config, *overrides]
    if args.config and not Path(args.config).is_file():
        raise SystemExit(f"config file {args.config!r} does not exist")
    config = yaml.safe_load(Path(args.config).read_text()) if args.config else {}
    config.update(_parse_overrides(overrides))
    run = fit(config)
    print(f"run finished: {run}")


def cmd_probe(args) -> None:
    from .evaluate.crc_probe import crc_probe

    result = crc_probe(args.encoder, Path(args.data_root) / "crc", seed=args.seed)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def cmd_export(args) -> None:
    from .export import export_run

    benchmarks = (
        json.loads(Path(args.benchmarks).read_text()) if args.benchmarks else {}
    )
    path = export_run(args.run, args.out, benchmarks)
    print(f"exported {path} (+ {path.with_suffix('.json').name})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="lemon-train", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("curate", help="crop nuclei of the train splits into a dataset")
    p.add_argument("--data-root", default=str(DEFAULT_DATA))
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=60)
    p.add_argument("--mpp", type=float, default=0.25)
    p.set_defaults(func=cmd_curate)

    p = sub.add_parser("fit", help="train MoCo v3; CONFIG is YAML, then key=value")
    p.add_argument("config", nargs="?")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("probe", help="CRC linear probe of an encoder")
    p.add_argument("--encoder", required=True, help="'bundled', 'random' or a path")
    p.add_argument("--data-root", default=str(DEFAULT_DATA))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out")
    p.set_defaults(func=cmd_probe)

    p = sub.add_parser("export", help="write a run as safetensors + card")
    p.add_argument("run")
    p.add_argument("--out", required=True)
    p.add_argument("--benchmarks", help="JSON file of results to put in the card")
    p.set_defaults(func=cmd_export)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
