"""The two readings of a per-level accuracy: the level-l name of one predicted string, or a ranking per level.

METHOD.md section 8. The paper reports top-k accuracy at order, family, genus and species but does not say how a
level's prediction is made. Two readings:

- ``string`` (the default): the query ranks the candidate taxonomy strings once; its level-l prediction is the
  level-l name of a predicted string. Then a correct genus implies a correct family, so family accuracy can never
  fall below genus accuracy.
- ``independent``: each level ranks its own candidates, the distinct level-l prefixes (order .. l) of the
  candidate strings; the level-l prediction is the level-l name of the best prefix. Levels can then disagree
  (the paper's Table 1 has family below genus under DNA noise, which only this reading can produce).

A prefix's embedding is the renormalised mean of the text embeddings of the candidate strings that share it. The
paper does not say how it did this; the alternative, the text tower on the prefix string, needs the text tower at
evaluation time (the bundle's candidates come with precomputed embeddings) and puts an order-only string where
training rarely had one (few specimens are identified to order only), while the mean stays where the model put
that prefix's own strings. ``global`` is the exact whole string in both readings (from the string ranking).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hirviz.taxonomy import LEVELS
from train.evaluate.metrics import TOP_KS, ranked_scores, top_k

__all__ = ["PER_LEVEL_READINGS", "LevelCandidates", "independent_level_scores"]

PER_LEVEL_READINGS: tuple[str, ...] = ("string", "independent")


class LevelCandidates:
    """Per level, the distinct prefixes of the candidate strings: their embeddings and their label codes.

    ``embeddings[j]`` is ``[P_j, d]`` (unit rows), ``codes[j]`` the ``[P_j, 5]`` codes of each prefix: its ranks
    from order down to level j, -1 below (and in the whole-string column).
    """

    def __init__(self, candidate_embeddings: np.ndarray, cand_codes: np.ndarray) -> None:
        emb = np.asarray(candidate_embeddings, dtype=np.float64)
        codes = np.asarray(cand_codes, dtype=np.int64)
        if emb.ndim != 2 or codes.ndim != 2 or len(emb) != len(codes) or codes.shape[1] < len(LEVELS):
            raise ValueError(f"need candidate embeddings [C, d] and codes [C, >= {len(LEVELS)}], got {emb.shape} "
                             f"and {codes.shape}")
        self.embeddings: list[np.ndarray] = []
        self.codes: list[np.ndarray] = []
        for j in range(len(LEVELS)):
            rows = np.flatnonzero(codes[:, j] >= 0)  # a string that stops above level j has no level-j prefix
            prefixes, group = np.unique(codes[rows, :j + 1], axis=0, return_inverse=True)
            summed = np.zeros((len(prefixes), emb.shape[1]))
            np.add.at(summed, group.reshape(-1), emb[rows])
            norms = np.linalg.norm(summed, axis=1, keepdims=True)
            self.embeddings.append((summed / np.where(norms > 0, norms, 1.0)).astype(np.float32))
            full = np.full((len(prefixes), codes.shape[1]), -1, dtype=np.int64)
            full[:, :j + 1] = prefixes
            self.codes.append(full)


def independent_level_scores(queries: np.ndarray, truth: np.ndarray, prefixes: LevelCandidates,
                             ks: Sequence[int] = TOP_KS) -> dict[str, dict[str, float | None]]:
    """Top-k accuracy (percent) at each of order .. species, each level ranking its own prefixes.

    ``queries`` ``[N, d]``, ``truth`` ``[N, 5]`` label codes in the code space of the prefixes. Returns
    ``{level: {"top1", "top5"}}`` for the four levels (not ``global``), None where nobody is labelled there.
    """
    out: dict[str, dict[str, float | None]] = {}
    for j, level in enumerate(LEVELS):
        if len(prefixes.embeddings[j]) == 0:
            labelled = bool((truth[:, j] >= 0).any())
            out[level] = {f"top{k}": (0.0 if labelled else None) for k in ks}
            continue
        ranked = top_k(queries, prefixes.embeddings[j], max(ks))
        scores, _ = ranked_scores(prefixes.codes[j][ranked], truth, ks)
        out[level] = scores[level]
    return out
