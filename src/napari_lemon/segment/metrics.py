"""Instance-segmentation scores: AJI, panoptic quality and detection F1.

Both inputs are label images (0 = background, one integer per instance). The
scores follow their published definitions:

- **Aggregated Jaccard Index** (Kumar et al., IEEE TMI 36(7), 2017): every
  ground-truth instance is paired with the predicted instance of highest IoU
  (a prediction may serve several of them); the intersections of the pairs over
  the unions of the pairs, plus the area of every ground-truth instance that
  overlaps no prediction and of every prediction that no ground truth chose.
- **Panoptic quality** (Kirillov et al., CVPR 2019): a prediction and a ground
  truth match when their IoU exceeds 0.5, which makes the matching unique.
  ``DQ = TP / (TP + FP/2 + FN/2)`` (detection), ``SQ`` = mean IoU of the
  matches (segmentation), ``PQ = DQ * SQ``.
- **Detection F1 at an IoU threshold**: one-to-one matching that maximises the
  summed IoU over pairs at or above the threshold; at 0.5 it equals DQ except
  for pairs with an IoU of exactly 0.5.

No small maintained library gives all three: ``stardist.matching`` has PQ and
F1 but no AJI, ``cellpose.metrics`` has AJI but comes with cellpose, and
``panoptica`` targets 3-D medical volumes. Hence this module, on numpy and scipy.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass
class Overlaps:
    """Pixel counts of every overlapping (ground truth, prediction) pair.

    Attributes
    ----------
    gt_area : ndarray of shape (n_gt,), int64
        Pixels of each ground-truth instance.
    pred_area : ndarray of shape (n_pred,), int64
        Pixels of each predicted instance.
    gt_index, pred_index : ndarray of shape (n_pairs,), intp
        Instances (0-based, in increasing label order) that overlap.
    intersection : ndarray of shape (n_pairs,), int64
        Pixels the pair shares.
    """

    gt_area: np.ndarray
    pred_area: np.ndarray
    gt_index: np.ndarray
    pred_index: np.ndarray
    intersection: np.ndarray

    @property
    def union(self) -> np.ndarray:
        """Pixels of the union of each pair, (n_pairs,) int64."""
        pair_areas = self.gt_area[self.gt_index] + self.pred_area[self.pred_index]
        return pair_areas - self.intersection

    @property
    def iou(self) -> np.ndarray:
        """Intersection over union of each pair, (n_pairs,) float64."""
        return self.intersection / self.union


@dataclass
class InstanceScores:
    """Scores of one prediction against one ground truth (or pooled counts).

    Attributes
    ----------
    aji : float
        Aggregated Jaccard Index, ``aji_intersection / aji_union``.
    pq, dq, sq : float
        Panoptic, detection and segmentation quality (matches at IoU > 0.5).
    f1, precision, recall : float
        Detection scores at IoU >= ``iou_threshold``.
    n_gt, n_pred : int
        Instances in each image.
    tp : int
        Matches at IoU > 0.5 (PQ).
    iou_sum : float
        Summed IoU of those matches.
    tp_f1 : int
        Matches at IoU >= ``iou_threshold`` (F1).
    aji_intersection, aji_union : int
        The two sums whose ratio is the AJI.
    """

    aji: float
    pq: float
    dq: float
    sq: float
    f1: float
    precision: float
    recall: float
    n_gt: int
    n_pred: int
    tp: int
    iou_sum: float
    tp_f1: int
    aji_intersection: int
    aji_union: int

    def as_dict(self) -> dict:
        """The scores as a plain dict (JSON-ready)."""
        return asdict(self)


def overlaps(gt: np.ndarray, pred: np.ndarray) -> Overlaps:
    """Areas and pairwise intersections of two label images.

    Parameters
    ----------
    gt, pred : ndarray of shape (rows, cols), int
        Instance labels, 0 = background; values need not be consecutive.

    Returns
    -------
    Overlaps
    """
    gt, pred = np.asarray(gt), np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(
            f"gt has shape {gt.shape} and pred {pred.shape}; label images must "
            "have the same shape (resample the prediction to the ground truth)"
        )
    gt_flat, n_gt = _consecutive(gt)
    pred_flat, n_pred = _consecutive(pred)

    # areas, then the pixels both label as something
    gt_area = np.bincount(gt_flat[gt_flat >= 0], minlength=n_gt)
    pred_area = np.bincount(pred_flat[pred_flat >= 0], minlength=n_pred)
    both = (gt_flat >= 0) & (pred_flat >= 0)
    keys, counts = np.unique(
        gt_flat[both].astype(np.int64) * max(n_pred, 1) + pred_flat[both],
        return_counts=True,
    )
    gt_index, pred_index = np.divmod(keys, max(n_pred, 1))
    return Overlaps(gt_area, pred_area, gt_index, pred_index, counts)


def _consecutive(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Flat 0-based instance indices (background -1) and the instance count."""
    ids, flat = np.unique(labels.ravel(), return_inverse=True)
    has_background = int(ids[0] == 0) if len(ids) else 0
    return flat.ravel() - has_background, len(ids) - has_background


def aggregated_jaccard_index(ov: Overlaps) -> tuple[int, int]:
    """Intersection and union sums of the AJI (Kumar et al., 2017).

    Returns
    -------
    (int, int)
        ``(intersection, union)``; the AJI is their ratio.
    """
    # for each ground truth, the overlapping prediction of highest IoU
    iou = ov.iou
    order = np.lexsort((-iou, ov.gt_index))  # by gt, best IoU first
    first = np.ones(len(order), dtype=bool)
    first[1:] = ov.gt_index[order][1:] != ov.gt_index[order][:-1]
    best = order[first]

    # paired sums; unpaired ground truth and unchosen predictions join the union
    intersection = int(ov.intersection[best].sum())
    union = int(ov.union[best].sum())
    paired_gt = np.zeros(len(ov.gt_area), dtype=bool)
    paired_gt[ov.gt_index[best]] = True
    chosen = np.zeros(len(ov.pred_area), dtype=bool)
    chosen[ov.pred_index[best]] = True
    union += int(ov.gt_area[~paired_gt].sum() + ov.pred_area[~chosen].sum())
    return intersection, union


def match_at_iou(ov: Overlaps, iou_threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs with IoU >= ``iou_threshold``, maximising summed IoU.

    Returns
    -------
    gt_index, pred_index : ndarray of shape (n_matches,), intp
    """
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold={iou_threshold!r} must be in (0, 1]")
    keep = ov.iou >= iou_threshold
    if not keep.any():
        return np.empty(0, np.intp), np.empty(0, np.intp)

    # assignment on the (small) table of candidate pairs only
    gts, g = np.unique(ov.gt_index[keep], return_inverse=True)
    preds, p = np.unique(ov.pred_index[keep], return_inverse=True)
    cost = np.zeros((len(gts), len(preds)))
    cost[g, p] = -ov.iou[keep]
    rows, cols = linear_sum_assignment(cost)
    matched = cost[rows, cols] < 0
    return gts[rows[matched]], preds[cols[matched]]


def score_instances(
    gt: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5
) -> InstanceScores:
    """AJI, PQ (DQ, SQ) and detection F1 of a predicted label image.

    Parameters
    ----------
    gt, pred : ndarray of shape (rows, cols), int
        Ground-truth and predicted instance labels, 0 = background.
    iou_threshold : float
        IoU a pair needs to count as a detection for F1.

    Returns
    -------
    InstanceScores
        Scores that divide by zero (no instances in either image) are NaN.

    Examples
    --------
    >>> a = np.zeros((4, 4), int); a[:2, :2] = 1
    >>> score_instances(a, a).pq
    1.0
    """
    ov = overlaps(gt, pred)
    n_gt, n_pred = len(ov.gt_area), len(ov.pred_area)

    # panoptic quality: IoU > 0.5 pairs are unique by construction
    iou = ov.iou
    strict = iou > 0.5
    tp, iou_sum = int(strict.sum()), float(iou[strict].sum())
    tp_f1 = len(match_at_iou(ov, iou_threshold)[0])
    aji_intersection, aji_union = aggregated_jaccard_index(ov)
    return scores_from_counts(
        n_gt, n_pred, tp, iou_sum, tp_f1, aji_intersection, aji_union
    )


def scores_from_counts(
    n_gt: int,
    n_pred: int,
    tp: int,
    iou_sum: float,
    tp_f1: int,
    aji_intersection: int,
    aji_union: int,
) -> InstanceScores:
    """Scores from match counts, e.g. counts summed over several images."""
    dq = _ratio(tp, tp + (n_pred - tp) / 2 + (n_gt - tp) / 2)
    sq = _ratio(iou_sum, tp)
    return InstanceScores(
        aji=_ratio(aji_intersection, aji_union),
        pq=dq * sq if tp else (0.0 if n_gt + n_pred else float("nan")),
        dq=dq,
        sq=sq,
        f1=_ratio(2 * tp_f1, n_gt + n_pred),
        precision=_ratio(tp_f1, n_pred),
        recall=_ratio(tp_f1, n_gt),
        n_gt=n_gt,
        n_pred=n_pred,
        tp=tp,
        iou_sum=iou_sum,
        tp_f1=tp_f1,
        aji_intersection=aji_intersection,
        aji_union=aji_union,
    )


def pool_scores(scores: list[InstanceScores]) -> InstanceScores:
    """Scores of several images pooled: counts and sums added, then divided."""
    fields = ("n_gt", "n_pred", "tp", "iou_sum", "tp_f1")
    fields += ("aji_intersection", "aji_union")
    return scores_from_counts(*(sum(getattr(s, f) for s in scores) for f in fields))


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else float("nan")
