"""The benchmark table: encoders by datasets, ``mean (sd)`` over folds.

Laid out like Table 1 of the LEMON paper: one row per encoder, one column per
dataset, each cell the mean of the per-fold scores and, in brackets, their
sample standard deviation (``ddof=1``). Three files are written:

- ``table.md``: the table in Markdown, the best mean of each column in bold;
- ``table.csv``: one row per (encoder, dataset): mean, sd, number of folds,
  nuclei and groups, and a status (``ok`` or why the encoder was skipped);
- ``folds.json``: every result with its per-fold scores and sizes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

METRIC_NAMES = {"balanced_accuracy": "balanced accuracy", "pearson_r": "Pearson r"}
PROTOCOLS = {
    "classification": "lemon-train benchmark: class-balanced logistic regression on "
    "standardised embeddings, folds grouped by image or slide",
    "regression": "lemon-train benchmark: ridge regression on standardised "
    "embeddings, Pearson r averaged over targets, folds grouped by image or slide",
}


@dataclass
class ProbeResult:
    """The cross-validated probe of one encoder on one dataset."""

    encoder: str
    dataset: str
    task: str
    metric: str
    folds: list[float] = field(default_factory=list)
    n_train: list[int] = field(default_factory=list)
    n_test: list[int] = field(default_factory=list)
    test_groups: list[list[str]] = field(default_factory=list)
    n_nuclei: int = 0
    n_groups: int = 0
    encoder_key: str = ""
    nuclei_per_s: float | None = None  # embedding speed; None when cached
    status: str = "ok"

    @property
    def mean(self) -> float:
        return float(np.mean(self.folds)) if self.folds else float("nan")

    @property
    def sd(self) -> float:
        return float(np.std(self.folds, ddof=1)) if len(self.folds) > 1 else 0.0


def results_frame(results: list[ProbeResult]) -> pd.DataFrame:
    """One row per result: encoder, dataset, task, metric, mean, sd, counts, status."""
    rows = [
        {
            "encoder": r.encoder,
            "dataset": r.dataset,
            "task": r.task,
            "metric": r.metric,
            "mean": r.mean,
            "sd": r.sd,
            "n_folds": len(r.folds),
            "n_nuclei": r.n_nuclei,
            "n_groups": r.n_groups,
            "status": r.status,
        }
        for r in results
    ]
    return pd.DataFrame(rows, columns=list(rows[0]) if rows else None)


def markdown_table(results: list[ProbeResult], digits: int = 3) -> str:
    """Encoders as rows, datasets as columns, cells ``mean (sd)``; best in bold."""
    encoders = list(dict.fromkeys(r.encoder for r in results))
    datasets = list(dict.fromkeys(r.dataset for r in results))
    cells = {(r.encoder, r.dataset): r for r in results}

    # column headers name the metric; the best mean of each column is bold
    header = ["encoder"]
    best = {}
    for d in datasets:
        done = [r for r in results if r.dataset == d and r.status == "ok"]
        metric = done[0].metric if done else ""
        header.append(f"{d} ({METRIC_NAMES.get(metric, metric)})" if metric else d)
        best[d] = max((r.mean for r in done), default=None)

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for e in encoders:
        row = [e]
        for d in datasets:
            r = cells.get((e, d))
            row.append(_cell(r, best[d], digits))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n" + _footnotes(results)


def _cell(result: ProbeResult | None, best: float | None, digits: int) -> str:
    if result is None or result.status != "ok":
        return "n/a"
    text = f"{result.mean:.{digits}f} ({result.sd:.{digits}f})"
    return f"**{text}**" if best is not None and result.mean == best else text


def _footnotes(results: list[ProbeResult]) -> str:
    """Sizes of each dataset and why encoders were skipped."""
    notes = []
    for d in dict.fromkeys(r.dataset for r in results):
        done = [r for r in results if r.dataset == d and r.status == "ok"]
        if done:
            r = done[0]
            notes.append(
                f"{d}: {r.n_nuclei} nuclei in {r.n_groups} groups, "
                f"{len(r.folds)} grouped folds; mean (sample sd) over folds."
            )
    for r in results:
        if r.status != "ok":
            notes.append(f"{r.encoder} on {r.dataset}: {r.status}")
    return "\n" + "\n".join(f"- {n}" for n in notes) + "\n" if notes else ""


def write_tables(results: list[ProbeResult], out: str | Path) -> dict[str, Path]:
    """Write ``table.md``, ``table.csv`` and ``folds.json`` into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("table.md", "table.csv", "folds.json")}
    paths["table.md"].write_text(markdown_table(results))
    results_frame(results).to_csv(paths["table.csv"], index=False)
    records = [asdict(r) | {"mean": r.mean, "sd": r.sd} for r in results]
    paths["folds.json"].write_text(json.dumps(records, indent=2) + "\n")
    return paths


def card_benchmarks(results: list[ProbeResult]) -> dict:
    """The table as a checkpoint card records it: per dataset, each encoder's
    mean, sd and per-fold scores (skipped encoders left out)."""
    out: dict[str, dict] = {}
    for r in results:
        if r.status != "ok":
            continue
        entry = out.setdefault(
            f"{r.dataset}_linear_probe",
            {
                "metric": r.metric,
                "protocol": PROTOCOLS[r.task],
                "folds": len(r.folds),
                "nuclei": r.n_nuclei,
                "groups": r.n_groups,
                "encoders": {},
            },
        )
        entry["encoders"][r.encoder] = {
            "mean": round(r.mean, 4),
            "sd": round(r.sd, 4),
            "folds": [round(f, 4) for f in r.folds],
        }
    return out


def read_results(path: str | Path) -> list[ProbeResult]:
    """Results back from a ``folds.json``."""
    records = json.loads(Path(path).read_text())
    known = ProbeResult.__dataclass_fields__
    return [ProbeResult(**{k: v for k, v in r.items() if k in known}) for r in records]
