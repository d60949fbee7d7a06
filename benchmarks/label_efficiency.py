"""Few-click cell typing: balanced accuracy against labelled nuclei per type, on CRC.

How good is the plugin's linear probe when the user has labelled only N nuclei
of each type? On CRCHistoPhenotypes (17,801 typed nuclei of 80 images, four
types), for the bundled encoder and for the handcrafted features:

- **splits**: the five grouped, class-stratified folds of
  :func:`lemon_training.evaluate.probe.make_folds` (about 16 images each): each
  fold's images are held apart for scoring, the typed nuclei of the other
  images are the pool the labels are drawn from;
- **random picks** (standing in for brushing): N nuclei of each type drawn at
  random from the pool, ``--seeds`` draws per split; the sets are nested (the
  first N of one seeded order per type), as a user adds labels;
- **suggest next** (active learning): the first ``--start`` random picks of each
  type, then rounds of :func:`napari_lemon.analysis.suggest.suggest_next`
  (``--batch`` nuclei a round, the least sure and diverse ones of the pool under
  the probe fitted so far), each labelled with its true type, until the total
  equals 4 x N; the picks need not be balanced across types, so the methods are
  compared at the same total number of labels;
- **probe**: :func:`napari_lemon.analysis.probe.fit_probe` with its defaults
  (class-balanced logistic regression, C = ``probe.DEFAULT_C``), as the plugin
  fits it; the JSON records the C it ran with;
- **score**: balanced accuracy on every typed nucleus of the held-apart images;
  mean and sd over splits x seeds. The **ceiling** is the probe fitted on the
  whole pool of each split (mean and sd over splits).

Features come from ``lemon_training.evaluate`` (the benchmark's crops and
encoders, CRC at 0.5 um/px resampled to the encoder's 0.25 um/px, 40 x 40 px)
and are cached under ``--cache`` (``benchmarks/.fixtures/``, ignored by git),
so a rerun only refits the probes. The bundled encoder runs in the precision
``auto`` resolves to here (bf16 autocast on a CPU with AMX, as the plugin).

    python benchmarks/label_efficiency.py        # JSON and a markdown table
    python benchmarks/label_efficiency.py --report \
        benchmarks/results/label_efficiency.json   # the table of a recorded run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np

FEATURES = ("bundled", "handcrafted")
METHODS = ("random", "suggest")
DEFAULT_NS = (5, 10, 25, 50, 100)


@dataclass
class Problem:
    """Features, true types and images of every typed nucleus.

    Attributes
    ----------
    features : ndarray of shape (n, dim), float32
    labels : ndarray of shape (n,), str
    groups : ndarray of shape (n,), str
        The image of each nucleus; splits never divide an image.
    """

    features: np.ndarray
    labels: np.ndarray
    groups: np.ndarray


# ---------------------------------------------------------------------------
# picks


def random_order(labels: np.ndarray, classes: Sequence[str], rng) -> dict[str, list]:
    """One random order of the rows of each type: the first N are N random picks."""
    return {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}


def random_picks(order: dict[str, np.ndarray], n: int) -> np.ndarray:
    """The first ``n`` rows of each type's order (nested across ``n``)."""
    short = {c: len(rows) for c, rows in order.items() if len(rows) < n}
    if short:
        raise ValueError(
            f"n={n!r} labels per type: the pool has only {short} of those types; "
            "lower --n or hold apart fewer images"
        )
    return np.concatenate([rows[:n] for rows in order.values()])


def suggest_rounds(
    features: np.ndarray,
    labels: np.ndarray,
    start: np.ndarray,
    totals: Sequence[int],
    fit: Callable[[np.ndarray, np.ndarray], object],
    batch: int = 20,
    seed: int = 0,
) -> dict[int, np.ndarray]:
    """Rows labelled by rounds of ``suggest_next``, at each total in ``totals``.

    Parameters
    ----------
    features : ndarray of shape (n_pool, dim)
        The pool.
    labels : ndarray of shape (n_pool,)
        True types: the answer the user gives for a suggested nucleus.
    start : ndarray of int
        Rows labelled before the first suggestion.
    totals : sequence of int
        Numbers of labelled rows at which to report the labelled set;
        at least ``len(start)``.
    fit : callable
        ``fit(features, labels)`` -> a probe with ``predict_proba``.
    batch : int
        Suggestions labelled per round; the last round before a total takes
        only the first (least sure) suggestions it needs.

    Returns
    -------
    dict mapping each total to the labelled rows (start first, then in the
    order they were suggested)
    """
    if batch < 1:
        raise ValueError(f"batch={batch!r}: suggestions per round must be at least 1")
    if min(totals) < len(start) or max(totals) > len(features):
        raise ValueError(
            f"totals={list(totals)!r} must lie between the {len(start)} starting "
            f"labels and the pool's {len(features)} nuclei"
        )
    from napari_lemon.analysis.suggest import suggest_next

    labelled = np.zeros(len(features), dtype=bool)
    labelled[start] = True
    order, out = list(start), {}
    for step, total in enumerate(sorted(totals)):
        while len(order) < total:
            probe = fit(features[order], labels[order])
            proba = probe.predict_proba(features)
            n = min(batch, total - len(order))
            rows = suggest_next(proba, features, labelled, n=n, seed=seed + step)
            rows = [int(r) for r in rows if not labelled[r]][:n]
            if not rows:
                raise RuntimeError(
                    f"suggest_next returned no unlabelled row with {len(order)} of "
                    f"{len(features)} nuclei labelled"
                )
            labelled[rows] = True
            order.extend(rows)
        out[total] = np.asarray(order[:total], dtype=np.int64)
    return out


# ---------------------------------------------------------------------------
# scoring


def fit_plugin_probe(features: np.ndarray, labels: np.ndarray):
    """The plugin's probe with its defaults (class-balanced LR, its ``DEFAULT_C``)."""
    from napari_lemon.analysis.probe import fit_probe

    return fit_probe(features, labels)


def score(probe, features: np.ndarray, labels: np.ndarray) -> float:
    """Balanced accuracy of ``probe`` on ``features`` against ``labels``."""
    from sklearn.metrics import balanced_accuracy_score

    proba = probe.predict_proba(features)
    predicted = np.asarray(probe.classes, dtype=object)[np.argmax(proba, axis=1)]
    return float(balanced_accuracy_score(labels.astype(str), predicted.astype(str)))


def label_curves(
    problem: Problem,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    ns: Sequence[int] = DEFAULT_NS,
    seeds: int = 10,
    suggest_seeds: int | None = None,
    start: int = 5,
    batch: int = 20,
    fit: Callable = fit_plugin_probe,
) -> dict:
    """Scores of random and suggested picks at each N per type, and the ceiling.

    Parameters
    ----------
    problem : Problem
    folds : sequence of (pool_index, test_index)
        Row indices of each split; pool and test images never overlap.
    ns : sequence of int
        Labelled nuclei per type (the suggest runs compare at ``4 x N`` labels
        in all, for four types).
    seeds : int
        Random draws per split.
    suggest_seeds : int, optional
        Suggest runs per split, each from the random start of that seed
        (default: ``seeds``).
    start : int
        Random labels per type before the first suggestion; at most ``min(ns)``.

    Returns
    -------
    dict with ``random`` and ``suggest`` ({N: list of scores, split-major}),
    ``ceiling`` (one score per split), ``ceiling_warnings`` (the distinct
    warnings of each split's ceiling fit, e.g. not converged),
    ``suggest_class_share`` ({N: mean share of each type among the suggested
    labels}) and ``classes``
    """
    ns = sorted(int(n) for n in ns)
    if not ns or ns[0] < 1:
        raise ValueError(f"ns={ns!r}: give positive numbers of labels per type")
    if not 1 <= start <= ns[0]:
        raise ValueError(
            f"start={start!r}: the suggest runs start from 1 to min(ns)={ns[0]} "
            "random labels per type"
        )
    classes = sorted({str(c) for c in problem.labels})
    suggest_seeds = seeds if suggest_seeds is None else suggest_seeds
    out: dict = {"classes": classes, "ceiling": [], "ceiling_warnings": []}
    for method in METHODS:
        out[method] = {n: [] for n in ns}
    share = {n: [] for n in ns}

    for split, (pool, test) in enumerate(folds):
        _check_split(problem, pool, test, classes, split)
        x, y = problem.features[pool], problem.labels[pool]
        x_test, y_test = problem.features[test], problem.labels[test]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ceiling = fit(x, y)
        out["ceiling"].append(score(ceiling, x_test, y_test))
        out["ceiling_warnings"].append(sorted({str(w.message)[:80] for w in caught}))

        for seed in range(seeds):
            rng = np.random.default_rng([split, seed])
            order = random_order(y, classes, rng)
            for n in ns:
                rows = random_picks(order, n)
                out["random"][n].append(score(fit(x[rows], y[rows]), x_test, y_test))
            if seed >= suggest_seeds:
                continue

            # the same seed's first picks, then suggestions up to 4 x N labels
            totals = [len(classes) * n for n in ns]
            first = random_picks(order, start)
            runs = suggest_rounds(x, y, first, totals, fit, batch, seed)
            for n, total in zip(ns, totals, strict=True):
                rows = runs[total]
                out["suggest"][n].append(score(fit(x[rows], y[rows]), x_test, y_test))
                types = y[rows]
                share[n].append([float(np.mean(types == c)) for c in classes])
    out["suggest_class_share"] = {
        n: np.mean(s, axis=0).round(3).tolist() for n, s in share.items() if s
    }
    return out


def _check_split(problem, pool, test, classes, split) -> None:
    """Refuse a split whose pool and test share an image or lack a type."""
    shared = set(problem.groups[pool]) & set(problem.groups[test])
    if shared:
        raise ValueError(
            f"split {split}: images {sorted(shared)[:5]} are in both the pool and "
            "the held-apart set; splits must be by image"
        )
    for name, rows in (("pool", pool), ("held-apart set", test)):
        missing = sorted(set(classes) - {str(c) for c in problem.labels[rows]})
        if missing:
            raise ValueError(
                f"split {split}: the {name} has no nuclei of {missing}; use fewer "
                "splits or another --fold-seed"
            )


def summarise(curves: dict) -> dict:
    """Mean and sd (ddof 1) of each list of scores in ``curves``.

    ``suggest_minus_random`` pairs the runs that share a split and a seed (the
    same random start): mean and sd of the differences, and the share of runs
    in which the suggested labels scored higher.
    """

    def stats(scores) -> dict:
        scores = np.asarray(scores, dtype=float)
        sd = scores.std(ddof=1) if len(scores) > 1 else 0.0
        return {"mean": round(float(scores.mean()), 4), "sd": round(float(sd), 4)}

    out = {m: {n: stats(s) for n, s in curves[m].items() if s} for m in METHODS}
    out["ceiling"] = stats(curves["ceiling"])

    # suggest runs are the first seeds of each split: pair them with those
    out["suggest_minus_random"] = {}
    per_split = len(curves["ceiling"])
    for n, suggested in curves["suggest"].items():
        if not suggested:
            continue
        random = np.reshape(curves["random"][n], (per_split, -1))
        suggested = np.reshape(suggested, (per_split, -1))
        diff = suggested - random[:, : suggested.shape[1]]
        out["suggest_minus_random"][n] = stats(diff.ravel()) | {
            "wins": round(float(np.mean(diff > 0)), 3)
        }
    return out


# ---------------------------------------------------------------------------
# features


def crc_problem(spec: str, data_root: Path, cache: Path) -> tuple[Problem, dict]:
    """Features of ``spec`` (``bundled`` or ``handcrafted``) for the CRC nuclei."""
    if spec not in FEATURES:
        raise ValueError(f"features={spec!r}: choose from {FEATURES}")

    from lemon_training.evaluate.benchmark import cached_features
    from lemon_training.evaluate.datasets import load_probe_dataset
    from lemon_training.evaluate.encoders import create_probe_encoder
    from napari_lemon.precision import resolve_precision

    dataset = load_probe_dataset("crc", data_root)
    encoder = create_probe_encoder(spec, device="cpu")
    started = time.perf_counter()
    features, rate = cached_features(encoder, dataset, cache, progress=False)
    info = {
        "key": encoder.key,
        "dim": int(features.shape[1]),
        "crop": f"{encoder.crop_size} px at {encoder.mpp} um/px",
        "precision": resolve_precision("auto", "cpu") if spec == "bundled" else None,
        "seconds": round(time.perf_counter() - started, 1),
        "nuclei_per_s": None if rate is None else round(rate, 1),
    }
    features = np.asarray(features, dtype=np.float32)
    return Problem(features, dataset.y, dataset.groups), info


# ---------------------------------------------------------------------------
# report


def markdown_table(summary: dict, ns: Sequence[int], n_types: int = 4) -> str:
    """N per type x {features} x {random, suggest}, mean (sd); the ceiling last."""

    def cell(entry) -> str:
        return f"{entry['mean']:.3f} ({entry['sd']:.3f})" if entry else ""

    head = ["N per type", "labels", *(f"{f} {m}" for f in summary for m in METHODS)]
    rows = [
        [str(n), str(n_types * n)]
        + [cell(_at(per[m], n)) for per in summary.values() for m in METHODS]
        for n in ns
    ]
    rows.append(
        ["all (ceiling)", "pool"]
        + [c for per in summary.values() for c in (cell(per["ceiling"]), "")]
    )
    return _markdown(head, rows)


def paired_table(summary: dict, ns: Sequence[int], n_types: int = 4) -> str:
    """Suggest minus random per run of the same split and seed: mean (sd), wins."""

    def cell(entry) -> str:
        if not entry:
            return ""
        return f"{entry['mean']:+.3f} ({entry['sd']:.3f}), {entry['wins']:.0%}"

    head = ["N per type", "labels", *(f"{f}: suggest - random, wins" for f in summary)]
    rows = [
        [str(n), str(n_types * n)]
        + [
            cell(_at(per.get("suggest_minus_random", {}), n))
            for per in summary.values()
        ]
        for n in ns
    ]
    return _markdown(head, rows)


def _at(mapping: dict, n: int):
    """``mapping[n]``, whether its keys are ints or (read back from JSON) strings."""
    return mapping.get(n) or mapping.get(str(n))


def _markdown(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data", type=Path)
    parser.add_argument(
        "--cache", default="benchmarks/.fixtures/probe-cache", type=Path
    )
    parser.add_argument("--features", nargs="+", default=list(FEATURES))
    parser.add_argument("--n", nargs="+", type=int, default=list(DEFAULT_NS))
    parser.add_argument("--folds", type=int, default=5, help="image-level splits")
    parser.add_argument("--fold-seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=10, help="random draws per split")
    parser.add_argument("--suggest-seeds", type=int, help="default: --seeds")
    parser.add_argument("--start", type=int, default=5, help="random labels per type")
    parser.add_argument("--batch", type=int, default=20, help="suggestions per round")
    parser.add_argument("--out", default="benchmarks/results/label_efficiency.json")
    parser.add_argument("--report", type=Path, help="print the table of a JSON file")
    args = parser.parse_args(argv)
    if args.report:
        result = json.loads(args.report.read_text())
        ns = result["parameters"]["n"]
        print(markdown_table(result["summary"], ns))
        print(f"\n{paired_table(result['summary'], ns)}")
        return

    from machine import describe
    from threadpoolctl import threadpool_limits

    from lemon_training.evaluate.probe import make_folds
    from napari_lemon.analysis import probe

    started = time.perf_counter()
    result: dict = {
        "date": date.today().isoformat(),
        "machine": describe(),
        "versions": _versions(),
        "probe": (
            "napari_lemon.analysis.probe.fit_probe defaults "
            f"(C={probe.DEFAULT_C}, balanced, max_iter={probe.MAX_ITER})"
        ),
        "probe_C": probe.DEFAULT_C,
        "suggest": "napari_lemon.analysis.suggest.suggest_next (pool_factor=10)",
        "parameters": {k: v for k, v in vars(args).items() if k != "report"},
        "features": {},
        "summary": {},
        "scores": {},
    }
    for key in ("data", "cache"):
        result["parameters"][key] = str(result["parameters"][key])
    for spec in args.features:
        problem, info = crc_problem(spec, args.data, args.cache)
        folds = make_folds(problem.groups, problem.labels, args.folds, args.fold_seed)
        info["held_apart_images"] = [len(set(problem.groups[t])) for _, t in folds]
        info["pool_nuclei"] = [len(p) for p, _ in folds]

        # small dense fits: one BLAS thread (see lemon_training.evaluate.probe)
        fitting = time.perf_counter()
        with threadpool_limits(1, user_api="blas"):
            curves = label_curves(
                problem,
                folds,
                args.n,
                args.seeds,
                args.suggest_seeds,
                args.start,
                args.batch,
            )
        info["fit_seconds"] = round(time.perf_counter() - fitting, 1)
        result["features"][spec] = info
        result["summary"][spec] = summarise(curves)
        result["scores"][spec] = curves
        print(f"{spec}: {info}", file=sys.stderr, flush=True)

    result["seconds"] = round(time.perf_counter() - started, 1)
    result["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=_json) + "\n")
    print(markdown_table(result["summary"], args.n))
    print(f"\n{paired_table(result['summary'], args.n)}")
    print(f"wrote {args.out} in {result['seconds']} s")


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("napari-lemon", "numpy", "scikit-learn", "torch")
    return {name: version(name) for name in names}


def _json(value):
    if isinstance(value, np.integer | np.floating):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    main()
