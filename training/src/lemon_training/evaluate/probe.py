"""Linear probes scored by grouped cross-validation.

A frozen encoder is judged by how well a linear model reads a label off its
embeddings, as in the LEMON paper (Table 1):

- classification: logistic regression, class-balanced, on standardised
  features; score = balanced accuracy (mean recall over classes);
- regression: ridge regression on standardised features, its penalty chosen
  by efficient leave-one-out inside the training folds; score = Pearson r
  between prediction and truth, averaged over the targets.

Folds are grouped: every nucleus of an image (or slide) is in the same fold,
because nuclei of one image share stain, scanner and patient, and a probe
tested on its training images would be scored too high. Classification folds
are also stratified by class (:class:`sklearn.model_selection.StratifiedGroupKFold`).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger("lemon_training")

METRICS = {"classification": "balanced_accuracy", "regression": "pearson_r"}
RIDGE_ALPHAS = np.logspace(-2, 5, 8)
# NOTE: the probes are small dense problems; multithreaded BLAS spin-waits on a
# shared CPU and was measured 25x slower than one thread (2 cores, busy machine)
BLAS_THREADS = 1


@dataclass
class Fold:
    """One fold's score and sizes."""

    score: float
    n_train: int
    n_test: int
    test_groups: list[str]


def make_folds(
    groups: np.ndarray,
    labels: np.ndarray | None = None,
    n_folds: int = 5,
    seed: int = 0,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Train and test indices of ``n_folds`` folds that never split a group.

    Parameters
    ----------
    groups : ndarray of shape (n,)
        Image or slide of each nucleus.
    labels : ndarray of shape (n,), optional
        Classes: the folds are then stratified, and every class needs at least
        ``n_folds`` members.
    n_folds : int
        Number of folds (at least 2, at most the number of groups).
    seed : int
        Shuffles which groups fall together (classification only).

    Returns
    -------
    list of (train_index, test_index), int64 arrays
    """
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    groups = np.asarray(groups)
    n_groups = len(np.unique(groups))
    if n_folds < 2 or n_folds > n_groups:
        raise ValueError(
            f"n_folds={n_folds!r} must be between 2 and the number of groups "
            f"(images or slides), {n_groups}; lower --folds or add images"
        )
    if labels is None:
        splitter = GroupKFold(n_splits=n_folds)
        return list(splitter.split(groups, groups=groups))

    # every test fold needs each class, so each class needs n_folds groups
    labels = np.asarray(labels)
    pairs = np.unique(np.stack([labels.astype(str), groups.astype(str)]), axis=1)
    classes, n_class_groups = np.unique(pairs[0], return_counts=True)
    if n_class_groups.min() < n_folds:
        rare = {
            str(c): int(k)
            for c, k in zip(classes, n_class_groups, strict=True)
            if k < n_folds
        }
        raise ValueError(
            f"class(es) {rare} occur in fewer groups (images or slides) than "
            f"n_folds={n_folds}; every test fold needs each class: lower --folds, "
            "or drop or merge the class"
        )
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = list(splitter.split(groups, labels, groups=groups))
    for i, (_, test) in enumerate(folds):
        missing = sorted(set(classes) - set(labels[test].astype(str)))
        if missing:
            raise ValueError(
                f"test fold {i} of {n_folds} (seed={seed}) holds no nuclei of "
                f"{missing}; lower --folds or try another --seed"
            )
    return folds


def score_classification(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    seed: int = 0,
) -> float:
    """Balanced accuracy of a class-balanced logistic regression on scaled features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    probe = make_pipeline(
        StandardScaler(),
        LogisticRegression(max_iter=3000, class_weight="balanced", random_state=seed),
    )
    with threadpool_limits(BLAS_THREADS, user_api="blas"):
        probe.fit(train_x, train_y)
        predicted = probe.predict(test_x)
    return float(balanced_accuracy_score(test_y, predicted))


def score_regression(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
) -> float:
    """Pearson r of a ridge regression on scaled features, averaged over targets.

    A target that is constant in the test fold, or predicted as a constant, has
    no correlation: it is left out of the average, with a warning.
    """
    from scipy.stats import pearsonr
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    train_y, test_y = _as_2d(train_y), _as_2d(test_y)
    probe = make_pipeline(StandardScaler(), RidgeCV(alphas=RIDGE_ALPHAS))
    with threadpool_limits(BLAS_THREADS, user_api="blas"):
        predicted = _as_2d(probe.fit(train_x, train_y).predict(test_x))

    # one correlation per target; undefined ones are skipped
    r = np.full(test_y.shape[1], np.nan)
    for j in range(test_y.shape[1]):
        if np.ptp(test_y[:, j]) > 0 and np.ptp(predicted[:, j]) > 0:
            r[j] = pearsonr(test_y[:, j], predicted[:, j]).statistic
    if np.isnan(r).any():
        warnings.warn(
            f"{int(np.isnan(r).sum())} of {len(r)} targets are constant in a test "
            "fold or in their prediction; left out of the mean Pearson r",
            stacklevel=2,
        )
    return float(np.nanmean(r)) if not np.isnan(r).all() else float("nan")


def _as_2d(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64)
    return y[:, None] if y.ndim == 1 else y


def cross_validate(
    features: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    task: str = "classification",
    n_folds: int = 5,
    seed: int = 0,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> list[Fold]:
    """Fit and score a linear probe on each grouped fold.

    Parameters
    ----------
    features : ndarray of shape (n, dim), float
        One embedding (or feature vector) per nucleus.
    y : ndarray of shape (n,) or (n, n_targets)
        Class of each nucleus, or its numeric targets.
    groups : ndarray of shape (n,)
        Image or slide of each nucleus.
    task : str
        ``"classification"`` or ``"regression"``.

    Returns
    -------
    list of Fold, one per fold, in fold order
    """
    if task not in METRICS:
        raise ValueError(f"task={task!r}: choose one of {tuple(METRICS)}")
    if len(features) != len(y) or len(y) != len(groups):
        raise ValueError(
            f"features ({len(features)}), y ({len(y)}) and groups ({len(groups)}) "
            "must have one row per nucleus"
        )
    labels = y if task == "classification" else None
    folds = make_folds(groups, labels, n_folds, seed)

    out = []
    for train, test in progress(folds) if progress else folds:
        args = (features[train], y[train], features[test], y[test])
        if task == "classification":
            score = score_classification(*args, seed=seed)
        else:
            score = score_regression(*args)
        test_groups = sorted({str(g) for g in groups[test]})
        out.append(Fold(score, len(train), len(test), test_groups))
        logger.debug("fold %d: %s=%.4f", len(out), METRICS[task], score)
    return out
