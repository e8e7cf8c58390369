"""Two small pieces the maps share: placing points among neighbours, and drawing a per-taxon stratified sample.

* :func:`interpolate` puts each point at the inverse-squared-distance weighted mean of its neighbours' map
  positions (Shepard interpolation): :meth:`hirviz.geometry.ReferenceMap.place` places a query with it, and
  :func:`hirviz.layout_scale.fit_large_layout` places the bank points UMAP was not fitted on.
* :func:`stratified_sample` picks rows so that every taxon is represented before any taxon gets a second row
  (then a third, ...): the UMAP fit of a large bank and the point overlay of a large map both use it, so rare
  taxa appear in both.
"""

from __future__ import annotations

import numpy as np

from hirviz.taxonomy import LEVELS

__all__ = ["SAME_POINT", "interpolate", "stratified_sample", "taxon_keys"]

# Distance (cosine, or geodesic) under which a query counts as equal to a reference point (float32 round-off).
SAME_POINT = 1e-5


def interpolate(distances: np.ndarray, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Positions ``[n, 2]`` float32 of ``n`` points from their neighbours' ``distances`` and ``rows`` (``[n, k]``).

    Weights ``1 / distance**2`` over the neighbours that exist (row >= 0) and have a finite position in
    ``positions`` (``[N, 2]``): convex weights, so a point lies in the convex hull of its neighbours, and a point
    at distance below :data:`SAME_POINT` from a neighbour takes that neighbour's position exactly (the mean of
    duplicates). Raises ``ValueError`` when a point has no usable neighbour.
    """
    rows = np.asarray(rows)
    dist = np.clip(np.asarray(distances, dtype=np.float64), 0.0, None)
    pos = np.asarray(positions)[np.clip(rows, 0, None)].astype(np.float64)
    usable = (rows >= 0) & np.isfinite(pos).all(axis=-1) & np.isfinite(dist)
    if not usable.any(axis=1).all():
        raise ValueError("a point has no neighbour with a map position")
    dist = np.where(usable, dist, 1.0)
    same = usable & (dist <= SAME_POINT)
    weights = np.where(usable, 1.0 / np.maximum(dist, SAME_POINT) ** 2, 0.0)
    weights = np.where(same.any(axis=1, keepdims=True), same.astype(np.float64), weights)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.einsum("nk,nkc->nc", weights, np.where(usable[..., None], pos, 0.0)).astype(np.float32)


def taxon_keys(ranks: np.ndarray, depth: int = 3) -> np.ndarray:
    """Per row, the deepest known name among the first ``depth`` levels (default: down to genus), ``""`` if none.

    ``ranks`` is ``[N, 4]`` str with ``""`` for unknown (a bundle's ``Reference.ranks``). Names are prefixed with
    their level so that a family and a genus of the same spelling stay apart.
    """
    names = np.asarray(ranks, dtype=str)
    if names.ndim != 2 or names.shape[1] != len(LEVELS) or not 1 <= depth <= len(LEVELS):
        raise ValueError(f"ranks must be [N, {len(LEVELS)}] and depth in 1..{len(LEVELS)}, got {names.shape}, {depth}")
    keys = np.full(len(names), "", dtype=object)
    for i in range(depth):  # deeper levels overwrite shallower ones where known
        known = names[:, i] != ""
        keys[known] = np.char.add(f"{LEVELS[i]}:", names[known, i]).astype(object)
    return keys.astype(str)


def stratified_sample(strata: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sorted row positions of at most ``n`` rows, spread over the strata (e.g. :func:`taxon_keys`) round by round.

    Rows are shuffled (seeded), numbered within their stratum, and taken in order of that number: one row of every
    stratum first, then a second of every stratum that has one, and so on until ``n`` rows are taken. A rare taxon
    therefore keeps all its rows while a common one is thinned; the empty stratum ``""`` (unnamed specimens) is one
    stratum like the others.
    """
    strata = np.asarray(strata)
    if n < 1:
        raise ValueError(f"a sample needs at least one row, got n={n}")
    total = len(strata)
    if total <= n:
        return np.arange(total)
    shuffled = np.random.default_rng(seed).permutation(total)
    codes = np.unique(strata[shuffled], return_inverse=True)[1].ravel()
    by_code = np.argsort(codes, kind="stable")  # positions in `shuffled`, grouped by stratum, random within
    sorted_codes = codes[by_code]
    starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    sizes = np.diff(np.r_[starts, total])
    within = np.empty(total, dtype=np.int64)
    within[by_code] = np.arange(total) - np.repeat(starts, sizes)  # 0 for a stratum's first row, 1 for the second
    order = np.lexsort((np.arange(total), within))
    return np.sort(shuffled[order[:n]])
