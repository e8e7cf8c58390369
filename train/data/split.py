"""The closed-set train/test split: every test taxon also appears in training."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hirviz.taxonomy import LEVELS
from train.data.readers import _lineage_codes


def closed_set_split(
    frame_or_labels: pd.DataFrame | np.ndarray, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded train/test split in which every test taxon also appears in training (the paper's closed set).

    Specimens are grouped by their full lineage (the four ranks and, for a frame, the taxonomy string); each
    group keeps at least one member in training and sends about ``test_fraction`` of its members to test
    (stochastic rounding, so small groups contribute on average). As a group fixes every rank, each taxon of a
    test specimen, at every level, and its taxonomy string are in training. Groups of one stay in training, so
    the test share of all specimens is a little below ``test_fraction`` when there are many.

    Returns sorted int64 row positions ``(train_idx, test_idx)``.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if isinstance(frame_or_labels, pd.DataFrame):
        cols = [c for c in (*LEVELS, "taxonomy") if c in frame_or_labels.columns]
        if not cols:
            raise ValueError(f"the frame has none of the columns {[*LEVELS, 'taxonomy']}")
        group = _lineage_codes(frame_or_labels, cols)
    else:
        arr = np.asarray(frame_or_labels)
        if arr.ndim != 2:
            raise ValueError(f"labels must be a 2-D array [N, levels], got shape {arr.shape}")
        group = np.unique(arr, axis=0, return_inverse=True)[1].reshape(-1) if len(arr) else np.empty(0, np.int64)
    n = len(group)
    if n == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)

    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    order = order[np.argsort(group[order], kind="stable")]  # by group, random within a group
    g_sorted = group[order]
    starts = np.searchsorted(g_sorted, g_sorted, side="left")
    rank = np.arange(n) - starts
    sizes = np.bincount(group)
    n_test = np.minimum(np.floor(sizes * test_fraction + rng.random(len(sizes))), sizes - 1).astype(np.int64)
    in_test = (rank >= 1) & (rank <= n_test[g_sorted])
    return np.sort(order[~in_test]).astype(np.int64), np.sort(order[in_test]).astype(np.int64)


def carve_validation(frame: pd.DataFrame, train_idx: np.ndarray, fraction: float, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """A seeded validation share of the training rows, carved the closed-set way (:func:`closed_set_split`).

    ``train_idx`` are row positions of ``frame``; about ``fraction`` of each lineage's training members move to
    validation, and every lineage keeps at least one member in training, so each validation taxon and taxonomy
    string is also trained on (model selection then measures what the test split measures). The test rows are
    not touched: a run's test split is the same whatever its validation fraction. ``fraction`` 0 gives an empty
    validation set. Returns sorted ``(train_idx, val_idx)``.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the validation fraction must be in [0, 1), got {fraction}")
    train_idx = np.asarray(train_idx, dtype=np.int64)
    if fraction == 0 or len(train_idx) == 0:
        return train_idx, np.empty(0, dtype=np.int64)
    # a stream of its own, so the validation rows are not the test draw's permutation replayed on fewer rows
    val_seed = int(np.random.SeedSequence([seed, 1]).generate_state(1)[0])
    keep, val = closed_set_split(frame.iloc[train_idx].reset_index(drop=True), fraction, val_seed)
    return np.sort(train_idx[keep]), np.sort(train_idx[val])
