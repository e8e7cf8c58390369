"""The scores of an evaluation: label codes, top-k ranking, per-level top-k accuracy and CLIBD's retrieval accuracy.

Pure numpy (and FAISS for retrieval); nothing here knows about models or files. The definitions are in the package
docstring of :mod:`train.evaluate` (METHOD.md section 8, REFERENCE_CODE.md 7.2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hirviz.taxonomy import LEVELS

if TYPE_CHECKING:
    from hirviz.geometry import Geometry

EVAL_LEVELS: tuple[str, ...] = (*LEVELS, "global")
TOP_KS: tuple[int, ...] = (1, 5)
RETRIEVAL_KS: tuple[int, ...] = (1, 3, 5)
SEEN_DEFINITION = ("seen: the query's species is known and is the species of at least one key of the searched "
                   "space; unseen: every other query (species absent from the keys, or unknown species, which "
                   "then counts only at the levels it is labelled at); all: every query")
# Score-matrix rows per chunk: keeps a chunk's [rows, candidates] float32 scores near 64 MB.
_SCORE_BUDGET = 1 << 24


# ----------------------------------------------------------------------------------------------------------------
# Labels


def _factorize(*columns: Sequence[Any]) -> list[np.ndarray]:
    """Integer codes shared across ``columns`` (equal values, equal codes); None / "" / NaN -> -1."""
    values = pd.Series(np.concatenate([np.asarray(c, dtype=object) for c in columns]), dtype=object)
    values = values.where(values.notna() & (values != ""), None)
    codes = pd.factorize(values)[0].astype(np.int64)
    return np.split(codes, np.cumsum([len(c) for c in columns])[:-1])


def label_codes(
    truth_ranks: np.ndarray, truth_strings: Sequence[str | None],
    cand_ranks: np.ndarray, cand_strings: Sequence[str | None],
) -> tuple[np.ndarray, np.ndarray]:
    """Codes ``[N, 5]`` and ``[C, 5]`` (order, family, genus, species, whole string) comparable across the two.

    Names (and strings) are compared exactly; an unknown name gets -1, which never counts as a match because
    unknown truths are left out of a level's denominator.
    """
    truth_ranks = np.asarray(truth_ranks, dtype=object).reshape(-1, len(LEVELS))
    cand_ranks = np.asarray(cand_ranks, dtype=object).reshape(-1, len(LEVELS))
    truth, cand = np.empty((len(truth_ranks), 5), np.int64), np.empty((len(cand_ranks), 5), np.int64)
    for j in range(len(LEVELS)):
        truth[:, j], cand[:, j] = _factorize(truth_ranks[:, j], cand_ranks[:, j])
    truth[:, 4], cand[:, 4] = _factorize(list(truth_strings), list(cand_strings))
    return truth, cand


# ----------------------------------------------------------------------------------------------------------------
# Ranking and top-k accuracy


def top_k(queries: np.ndarray, keys: np.ndarray, k: int, geometry: Geometry | None = None) -> np.ndarray:
    """Indices ``[N, min(k, K)]`` of each query's most similar keys (inner product), best first.

    One matrix product per chunk of rows (chunks keep the score matrix near 64 MB whatever the number of
    keys), ``argpartition`` for the k best, then a sort of those k only. ``geometry`` (a
    :class:`hirviz.geometry.Geometry`) replaces the inner product by its similarity: for a Lorentz geometry the
    Lorentzian inner product (float64), i.e. nearest by geodesic distance.
    """
    lorentz = geometry is not None and geometry.lorentz
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    keys = np.ascontiguousarray(keys, dtype=np.float32)
    k = min(k, len(keys))
    out = np.empty((len(queries), k), dtype=np.int64)
    step = max(1, _SCORE_BUDGET // max(1, len(keys)))
    for start in range(0, len(queries), step):
        scores = geometry.similarity(queries[start:start + step], keys) if lorentz else queries[start:start + step] @ keys.T
        # The k largest sit after position K - k once partitioned (no negated copy of the scores needed).
        part = np.argpartition(scores, len(keys) - k, axis=1)[:, len(keys) - k:] if k < len(keys) else \
            np.broadcast_to(np.arange(len(keys)), scores.shape)
        best = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
        out[start:start + step] = np.take_along_axis(part, best, axis=1)
    return out


def hits_at_k(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """``[N, k, L]`` bool: whether any of the first j+1 predictions equals the (known) truth, per level.

    ``predicted`` ``[N, k, L]`` label codes of the ranked predictions, ``truth`` ``[N, L]`` (-1 = unknown).
    """
    match = (predicted == truth[:, None, :]) & (truth[:, None, :] >= 0)
    return np.logical_or.accumulate(match, axis=1)


def classification_scores(
    queries: np.ndarray, truth: np.ndarray, candidates: np.ndarray, cand_codes: np.ndarray,
    ks: Sequence[int] = TOP_KS, geometry: Geometry | None = None,
) -> tuple[dict[str, dict[str, float | None]], dict[str, int]]:
    """Top-k accuracy (percent) per level of queries ranking candidate embeddings (by ``geometry``, see :func:`top_k`).

    Args:
        queries: ``[N, d]`` query embeddings (only the rows to score).
        truth: ``[N, 5]`` label codes of the queries (see :func:`label_codes`).
        candidates: ``[C, d]`` candidate embeddings; ``cand_codes`` their ``[C, 5]`` codes.

    Returns ``({level: {"top1": acc, "top5": acc}}, {level: n labelled})``; an accuracy is None where no
    query is labelled at that level.
    """
    ranked = top_k(queries, candidates, max(ks), geometry)
    return ranked_scores(cand_codes[ranked], truth, ks)


def ranked_scores(
    ranked_codes: np.ndarray, truth: np.ndarray, ks: Sequence[int] = TOP_KS,
) -> tuple[dict[str, dict[str, float | None]], dict[str, int]]:
    """Top-k accuracy per level from each query's ranked predictions (``[N, k, 5]`` label codes, best first).

    Whatever ranked them (text candidates, reference specimens, k-mer neighbours), a query scores at a level when
    its true label is among the level labels of its first k predictions; only queries labelled at a level count.
    """
    hits = hits_at_k(ranked_codes, truth)  # [N, k', 5]
    labelled = (truth >= 0).sum(axis=0)
    scores: dict[str, dict[str, float | None]] = {}
    for j, level in enumerate(EVAL_LEVELS):
        scores[level] = {}
        for k in ks:
            col = hits[:, min(k, hits.shape[1]) - 1, j] if hits.shape[1] else np.zeros(len(truth), bool)
            scores[level][f"top{k}"] = _percent(col.sum(), labelled[j])
    return scores, {level: int(labelled[j]) for j, level in enumerate(EVAL_LEVELS)}


def _percent(num: float, den: float) -> float | None:
    return None if den == 0 else round(100.0 * float(num) / float(den), 4)


# ----------------------------------------------------------------------------------------------------------------
# Retrieval (CLIBD)


def retrieval_scores(
    queries: np.ndarray, query_codes: np.ndarray, keys: np.ndarray, key_codes: np.ndarray,
    query_ids: Sequence[str | None] | None = None, key_ids: Sequence[str] | None = None,
    ks: Sequence[int] = RETRIEVAL_KS, groups: Mapping[str, np.ndarray] | None = None,
    geometry: Geometry | None = None,
) -> dict[str, Any]:
    """CLIBD's key-query retrieval accuracy, split into seen and unseen queries (see the module docstring).

    Args:
        queries: ``[N, d]`` L2-normalised query embeddings; ``query_codes`` ``[N, 4]`` label codes.
        keys: ``[M, d]`` L2-normalised key embeddings; ``key_codes`` ``[M, 4]``, in the same code space.
        query_ids, key_ids: a key whose id equals the query's is skipped (None ids never match).
        groups: ``{name: [N] bool}`` query groups to score; by default ``seen`` (the query's species is among the
            keys'), ``unseen`` (every other query) and ``all``. CLIBD's partition passes its own seen and unseen
            queries, whose unseen species do have keys.
        geometry: a Lorentz :class:`hirviz.geometry.Geometry` searches by geodesic distance (the inner product of
            its augmented search vectors); ``None``: inner product of the given vectors.

    Returns ``{group: {"n": int, "micro"|"macro": {level: {"top1", "top3", "top5"}}}}``.
    """
    import faiss

    kmax = max(ks)
    keys = np.ascontiguousarray(keys, dtype=np.float32)
    if geometry is not None:
        keys, queries = geometry.search_vectors(keys, "key"), geometry.search_vectors(queries, "query")
    index = faiss.IndexFlatIP(keys.shape[1])
    index.add(keys)
    exclude_self = query_ids is not None and key_ids is not None
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), kmax + int(exclude_self))
    invalid = found < 0  # fewer keys than asked for
    if exclude_self:
        key_ids = np.asarray(key_ids, dtype=object)
        own = np.asarray(query_ids, dtype=object)[:, None]
        invalid |= (key_ids[np.maximum(found, 0)] == own) & pd.notna(own)
    # Stable: the valid neighbours keep their rank order; at most kmax of them are used.
    keep = np.argsort(invalid, axis=1, kind="stable")[:, :kmax]
    neighbours = np.take_along_axis(found, keep, axis=1)
    valid = ~np.take_along_axis(invalid, keep, axis=1)
    predicted = np.where(valid[:, :, None], key_codes[np.maximum(neighbours, 0)], -1)
    hits = hits_at_k(predicted, query_codes)  # [N, kmax, 4]

    if groups is None:
        species = len(LEVELS) - 1
        key_species = np.unique(key_codes[:, species][key_codes[:, species] >= 0])
        seen = (query_codes[:, species] >= 0) & np.isin(query_codes[:, species], key_species)
        everyone = np.ones(len(seen), dtype=bool)  # "all": the nearest-neighbour identification of every query
        groups = {"seen": seen, "unseen": ~seen, "all": everyone}
    return {group: _retrieval_group(hits[mask], query_codes[mask], ks) for group, mask in groups.items()}


def _retrieval_group(hits: np.ndarray, codes: np.ndarray, ks: Sequence[int]) -> dict[str, Any]:
    out: dict[str, Any] = {"n": int(len(codes)), "micro": {}, "macro": {}}
    for j, level in enumerate(LEVELS):
        labelled = codes[:, j] >= 0
        classes = np.unique(codes[labelled, j], return_inverse=True)[1]
        out["micro"][level], out["macro"][level] = {}, {}
        for k in ks:
            hit = hits[labelled, min(k, hits.shape[1]) - 1, j] if hits.shape[1] else np.zeros(labelled.sum(), bool)
            out["micro"][level][f"top{k}"] = _percent(hit.sum(), labelled.sum())
            if labelled.any():
                per_class = np.bincount(classes, weights=hit) / np.bincount(classes)
                out["macro"][level][f"top{k}"] = round(100.0 * float(per_class.mean()), 4)
            else:
                out["macro"][level][f"top{k}"] = None
    return out

