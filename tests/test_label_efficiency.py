"""The few-click benchmark's core, on a small synthetic cell-typing problem."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import label_efficiency as le  # noqa: E402

CLASSES = ("epithelial", "fibroblast", "inflammatory", "others")


def blobs(n_images=10, per_type=30, spread=0.6, dim=8, seed=0) -> le.Problem:
    """Four types as Gaussian blobs; every image holds nuclei of every type."""
    rng = np.random.default_rng(seed)
    centres = 3.0 * rng.standard_normal((len(CLASSES), dim))
    features, labels, groups = [], [], []
    for image in range(n_images):
        for k, name in enumerate(CLASSES):
            features.append(centres[k] + spread * rng.standard_normal((per_type, dim)))
            labels += [name] * per_type
            groups += [f"img{image}"] * per_type
    return le.Problem(
        np.concatenate(features).astype(np.float32),
        np.array(labels, dtype=object),
        np.array(groups, dtype=object),
    )


def image_folds(problem: le.Problem, n_folds: int):
    """Pool and held-apart rows, the images dealt round-robin to the folds."""
    images = sorted(set(problem.groups))
    folds = []
    for i in range(n_folds):
        held = set(images[i::n_folds])
        test = np.flatnonzero([g in held for g in problem.groups])
        pool = np.flatnonzero([g not in held for g in problem.groups])
        folds.append((pool, test))
    return folds


def test_random_picks_take_n_of_each_type_nested_across_n():
    labels = np.array(list("aaaaabbbbbbcccc"))
    order = le.random_order(labels, ["a", "b", "c"], np.random.default_rng(0))
    three, four = le.random_picks(order, 3), le.random_picks(order, 4)

    assert sorted(labels[three]) == list("aaabbbccc")
    assert set(three) <= set(four) and len(set(four)) == 12


def test_random_picks_refuse_more_than_the_pool_holds():
    labels = np.array(list("aaabbbbbb"))
    order = le.random_order(labels, ["a", "b"], np.random.default_rng(0))

    with pytest.raises(ValueError, match=r"n=4 labels per type.*\{'a': 3\}"):
        le.random_picks(order, 4)


def test_suggest_rounds_label_exactly_each_total_from_the_start():
    problem = blobs(n_images=4, per_type=20)
    start = np.array([0, 20, 40, 60])  # one of each type of the first image
    runs = le.suggest_rounds(
        problem.features,
        problem.labels,
        start,
        [4, 12, 30],
        le.fit_plugin_probe,
        batch=7,
    )

    assert sorted(runs) == [4, 12, 30]
    assert runs[4].tolist() == start.tolist()
    for total, rows in runs.items():
        assert len(rows) == total == len(set(rows.tolist()))
        assert rows[:4].tolist() == start.tolist()
    assert runs[12].tolist() == runs[30][:12].tolist()  # one growing labelled set


def test_suggest_rounds_refuse_bad_batch_and_totals():
    problem = blobs(n_images=2, per_type=5)
    start = np.array([0, 5, 10, 15])
    args = (problem.features, problem.labels, start)

    with pytest.raises(ValueError, match="batch=0"):
        le.suggest_rounds(*args, [8], le.fit_plugin_probe, batch=0)
    with pytest.raises(ValueError, match=r"totals=\[3\] must lie between the 4"):
        le.suggest_rounds(*args, [3], le.fit_plugin_probe)
    with pytest.raises(ValueError, match="pool's 40 nuclei"):
        le.suggest_rounds(*args, [41], le.fit_plugin_probe)


def test_label_curves_score_every_split_and_seed():
    problem = blobs(n_images=6, per_type=15)
    folds = image_folds(problem, 3)
    curves = le.label_curves(
        problem, folds, ns=(2, 5), seeds=2, suggest_seeds=1, start=2, batch=4
    )

    assert curves["classes"] == list(CLASSES)
    assert all(len(curves["random"][n]) == 3 * 2 for n in (2, 5))
    assert all(len(curves["suggest"][n]) == 3 * 1 for n in (2, 5))
    # separable blobs: the probe on the whole pool types the held-apart images
    assert len(curves["ceiling"]) == 3 and min(curves["ceiling"]) > 0.95
    shares = curves["suggest_class_share"][5]
    assert len(shares) == 4 and sum(shares) == pytest.approx(1.0, abs=0.01)


def test_label_curves_suggest_at_start_equals_random_at_start():
    problem = blobs(n_images=4, per_type=10, spread=2.0)
    curves = le.label_curves(
        problem, image_folds(problem, 2), ns=(3, 6), seeds=2, start=3, batch=5
    )

    # with N equal to the start, both methods label the same random picks
    assert curves["suggest"][3] == curves["random"][3]


def test_noisy_labels_score_below_the_separable_ceiling():
    # the score must respond to the problem: overlapping types score lower
    easy, hard = blobs(n_images=4, spread=0.3), blobs(n_images=4, spread=6.0)
    scores = {}
    for name, problem in (("easy", easy), ("hard", hard)):
        curves = le.label_curves(problem, image_folds(problem, 2), ns=(5,), seeds=1)
        scores[name] = np.mean(curves["random"][5])
    assert scores["easy"] > 0.95 and scores["hard"] < 0.8


def test_label_curves_refuse_a_split_that_shares_an_image():
    problem = blobs(n_images=4, per_type=5)
    pool, test = image_folds(problem, 2)[0]
    leaky = (np.concatenate([pool, test[:1]]), test)

    with pytest.raises(ValueError, match="split 0: images .* in both the pool"):
        le.label_curves(problem, [leaky], ns=(2,), seeds=1, start=1)


def test_label_curves_refuse_a_held_apart_set_without_a_type():
    problem = blobs(n_images=4, per_type=5)
    pool, test = image_folds(problem, 2)[1]
    test = test[problem.labels[test] != "others"]

    with pytest.raises(
        ValueError, match=r"held-apart set has no nuclei of \['others'\]"
    ):
        le.label_curves(problem, [(pool, test)], ns=(2,), seeds=1, start=1)


def test_label_curves_refuse_bad_ns_and_start():
    problem = blobs(n_images=2, per_type=5)
    folds = image_folds(problem, 2)

    with pytest.raises(ValueError, match=r"ns=\[0, 2\]"):
        le.label_curves(problem, folds, ns=(2, 0))
    with pytest.raises(ValueError, match="start=5: .* min\\(ns\\)=2"):
        le.label_curves(problem, folds, ns=(2, 4), start=5)


def test_crc_problem_refuses_unknown_features(tmp_path):
    with pytest.raises(ValueError, match=r"features='timm'.*bundled"):
        le.crc_problem("timm", tmp_path, tmp_path)


def test_summary_and_table_match_the_scores():
    curves = {  # two splits, one seed each
        "random": {5: [0.5, 0.7], 10: [0.8, 0.9]},
        "suggest": {5: [0.6, 0.6], 10: [1.0, 0.8]},
        "ceiling": [0.9, 0.95],
    }
    summary = le.summarise(curves)
    paired = summary["suggest_minus_random"]
    table = le.markdown_table({"bundled": summary}, [5, 10]).splitlines()

    assert summary["random"][5] == {
        "mean": 0.6,
        "sd": round(np.std([0.5, 0.7], ddof=1), 4),
    }
    assert paired[5]["mean"] == 0.0 and paired[5]["wins"] == 0.5
    assert paired[10] == {"mean": 0.05, "sd": 0.2121, "wins": 0.5}
    assert table[0] == "| N per type | labels | bundled random | bundled suggest |"
    assert table[2] == "| 5 | 20 | 0.600 (0.141) | 0.600 (0.000) |"
    assert table[-1] == "| all (ceiling) | pool | 0.925 (0.035) |  |"
    paired_rows = le.paired_table({"bundled": summary}, [5, 10]).splitlines()
    assert paired_rows[3] == "| 10 | 40 | +0.050 (0.212), 50% |"


def test_paired_differences_match_runs_of_the_same_split_and_seed():
    # 2 splits x 3 random seeds, suggest on the first 2 seeds of each split
    random = [0.1, 0.2, 0.9, 0.3, 0.4, 0.9]
    suggest = [0.2, 0.2, 0.5, 0.6]
    curves = {"random": {5: random}, "suggest": {5: suggest}, "ceiling": [1, 1]}
    diffs = np.array([0.1, 0.0, 0.2, 0.2])

    paired = le.summarise(curves)["suggest_minus_random"][5]
    assert paired["mean"] == round(diffs.mean(), 4)
    assert paired["sd"] == round(diffs.std(ddof=1), 4)
    assert paired["wins"] == 0.75


def test_command_line_writes_json_and_reports_it(tmp_path, monkeypatch, capsys):
    problem = blobs(n_images=6, per_type=12)
    monkeypatch.setattr(le, "crc_problem", lambda spec, data, cache: (problem, {}))
    out = tmp_path / "curves.json"
    le.main(
        [
            "--features",
            "handcrafted",
            "--n",
            "3",
            "6",
            "--folds",
            "3",
            "--seeds",
            "2",
            "--start",
            "3",
            "--batch",
            "6",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())

    assert result["machine"] and result["parameters"]["n"] == [3, 6]
    assert sum(result["features"]["handcrafted"]["held_apart_images"]) == 6
    assert len(result["scores"]["handcrafted"]["random"]["6"]) == 3 * 2
    le.main(["--report", str(out)])
    assert capsys.readouterr().out == printed.split("wrote")[0]


def test_recorded_results_agree_with_their_scores():
    path = BENCHMARKS / "results" / "label_efficiency.json"
    if not path.is_file():
        pytest.skip(f"{path.name} not recorded yet")
    result = json.loads(path.read_text())

    for spec, summary in result["summary"].items():
        assert summary == json.loads(json.dumps(le.summarise(result["scores"][spec])))


def test_recorded_results_were_made_with_the_probe_of_today():
    from napari_lemon.analysis.probe import DEFAULT_C

    path = BENCHMARKS / "results" / "label_efficiency.json"
    if not path.is_file():
        pytest.skip(f"{path.name} not recorded yet")
    result = json.loads(path.read_text())

    assert result["probe_C"] == DEFAULT_C, (
        "the probe's default C changed: rerun benchmarks/label_efficiency.py"
    )
