"""Instance-segmentation scores checked against values worked out by hand and
against a literal, slow reading of the published definitions."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lemon.segment.metrics import (
    overlaps,
    pool_scores,
    score_instances,
)


def two_nuclei_and_three_predictions() -> tuple[np.ndarray, np.ndarray]:
    """GT: A (2x2) and B (2x2). Predicted: P1 = A plus a column (6 px),
    P2 = the top half of B (2 px), P3 = 2 px overlapping nothing."""
    gt = np.zeros((4, 6), np.int32)
    gt[0:2, 0:2] = 1  # A
    gt[0:2, 4:6] = 2  # B
    pred = np.zeros((4, 6), np.int32)
    pred[0:2, 0:3] = 7  # P1: IoU with A = 4 / 6
    pred[0, 4:6] = 3  # P2: IoU with B = 2 / 4, exactly 0.5
    pred[3, 0:2] = 9  # P3: a false positive
    return gt, pred


def test_scores_of_a_hand_worked_example():
    s = score_instances(*two_nuclei_and_three_predictions())

    # PQ: only (A, P1) has IoU > 0.5; FP = P2, P3; FN = B
    assert (s.n_gt, s.n_pred, s.tp) == (2, 3, 1)
    assert s.dq == pytest.approx(1 / (1 + 2 / 2 + 1 / 2))
    assert s.sq == pytest.approx(4 / 6)
    assert s.pq == pytest.approx(0.4 * 4 / 6)

    # F1 at IoU >= 0.5 also counts (B, P2)
    assert s.tp_f1 == 2
    assert s.f1 == pytest.approx(2 * 2 / (2 + 3))
    assert (s.precision, s.recall) == pytest.approx((2 / 3, 1.0))

    # AJI: (A, P1) 4 / 6, (B, P2) 2 / 4, unchosen P3 adds 2 to the union
    assert (s.aji_intersection, s.aji_union) == (6, 12)
    assert s.aji == pytest.approx(0.5)


def test_a_merged_prediction_is_counted_once_per_nucleus_in_the_aji():
    gt = np.zeros((2, 4), np.int32)
    gt[:, :2], gt[:, 2:] = 1, 2
    pred = (gt > 0).astype(np.int32)  # one prediction over both nuclei
    s = score_instances(gt, pred)
    assert (s.aji_intersection, s.aji_union) == (4 + 4, 8 + 8)
    assert (s.tp, s.pq, s.dq) == (0, 0.0, 0.0)  # IoU 0.5 is not > 0.5
    assert np.isnan(s.sq)


def test_a_missed_nucleus_adds_its_area_to_the_aji_union():
    gt = np.zeros((3, 3), np.int32)
    gt[0, :] = 1
    gt[2, :2] = 2
    pred = np.where(gt == 1, 5, 0)
    s = score_instances(gt, pred)
    assert (s.aji_intersection, s.aji_union) == (3, 3 + 2)
    assert s.pq == pytest.approx(1 / (1 + 0 + 1 / 2))  # SQ 1, DQ 2/3


def test_perfect_prediction_with_other_label_values_scores_one():
    gt = np.zeros((6, 6), np.int32)
    gt[:3, :3], gt[3:, 3:], gt[4:, :2] = 1, 2, 3
    pred = np.select([gt == 1, gt == 2, gt == 3], [40, 7, 1000], 0)
    s = score_instances(gt, pred)
    assert (s.aji, s.pq, s.dq, s.sq, s.f1) == (1.0, 1.0, 1.0, 1.0, 1.0)


def test_empty_images():
    empty = np.zeros((5, 5), np.int32)
    both = score_instances(empty, empty)
    assert np.isnan(both.aji) and np.isnan(both.pq) and np.isnan(both.f1)
    gt = empty.copy()
    gt[1:3, 1:3] = 1
    missed = score_instances(gt, empty)
    assert (missed.aji, missed.pq, missed.dq, missed.f1) == (0.0, 0.0, 0.0, 0.0)
    assert missed.aji_union == 4


def test_f1_at_a_low_threshold_matches_one_to_one():
    gt = np.zeros((1, 10), np.int32)
    gt[0, :6] = 1
    pred = np.zeros_like(gt)
    pred[0, :3], pred[0, 3:6] = 1, 2  # each half has IoU 0.5 with the nucleus
    s = score_instances(gt, pred, iou_threshold=0.3)
    assert s.tp_f1 == 1 and s.f1 == pytest.approx(2 / 3)


def test_pooled_scores_add_counts_before_dividing():
    first = score_instances(*two_nuclei_and_three_predictions())
    gt = np.zeros((4, 4), np.int32)
    gt[:2, :2] = 1
    second = score_instances(gt, gt)
    pooled = pool_scores([first, second])
    assert (pooled.n_gt, pooled.n_pred, pooled.tp) == (3, 4, 2)
    assert pooled.aji == pytest.approx((6 + 4) / (12 + 4))
    assert pooled.sq == pytest.approx((4 / 6 + 1) / 2)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match=r"gt has shape \(4, 4\) and pred \(4, 5\)"):
        overlaps(np.zeros((4, 4), int), np.zeros((4, 5), int))


def test_bad_iou_threshold_is_refused():
    gt = np.ones((2, 2), np.int32)
    with pytest.raises(ValueError, match=r"iou_threshold=1.5 must be in \(0, 1\]"):
        score_instances(gt, gt, iou_threshold=1.5)


# --- against a literal reading of the definitions ---------------------------------


def random_labels(rng: np.random.Generator, shape=(40, 40), n=12) -> np.ndarray:
    """Overlapping random rectangles, later ones on top."""
    labels = np.zeros(shape, np.int32)
    for index in range(1, n + 1):
        r, c = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
        h, w = rng.integers(3, 12, 2)
        labels[r : r + h, c : c + w] = index
    return labels


def slow_aji(gt: np.ndarray, pred: np.ndarray) -> float:
    """Kumar et al. (2017), Algorithm 1, one mask at a time."""
    intersection = union = 0
    used = set()
    pred_ids = [p for p in np.unique(pred) if p]
    for g in (g for g in np.unique(gt) if g):
        mask = gt == g
        ious = [
            ((mask & (pred == p)).sum() / (mask | (pred == p)).sum(), p)
            for p in pred_ids
        ]
        best_iou, best = max(ious, default=(0.0, None), key=lambda t: t[0])
        if best is None or best_iou == 0:
            union += mask.sum()
            continue
        intersection += (mask & (pred == best)).sum()
        union += (mask | (pred == best)).sum()
        used.add(best)
    union += sum((pred == p).sum() for p in pred_ids if p not in used)
    return intersection / union


def slow_pq(gt: np.ndarray, pred: np.ndarray) -> tuple[float, float, float]:
    """Kirillov et al. (2019): pairs with IoU > 0.5, one mask pair at a time."""
    ious = []
    for g in (g for g in np.unique(gt) if g):
        for p in (p for p in np.unique(pred) if p):
            a, b = gt == g, pred == p
            iou = (a & b).sum() / (a | b).sum()
            if iou > 0.5:
                ious.append(iou)
    tp = len(ious)
    fp = len(np.unique(pred)) - 1 - tp
    fn = len(np.unique(gt)) - 1 - tp
    dq = tp / (tp + fp / 2 + fn / 2)
    sq = float(np.mean(ious)) if ious else float("nan")
    return dq * sq if tp else 0.0, dq, sq


@pytest.mark.parametrize("seed", range(5))
def test_aji_and_pq_agree_with_a_literal_implementation(seed):
    rng = np.random.default_rng(seed)
    gt = random_labels(rng)
    pred = np.roll(random_labels(rng) if seed % 2 else gt, rng.integers(0, 3), axis=1)
    s = score_instances(gt, pred)
    assert s.aji == pytest.approx(slow_aji(gt, pred))
    pq, dq, sq = slow_pq(gt, pred)
    assert s.pq == pytest.approx(pq)
    assert s.dq == pytest.approx(dq)
    assert s.sq == pytest.approx(sq, nan_ok=True)
