"""Hierarchy consistency of one query space in one condition: the numbers of :mod:`hirviz.hierarchy`, wired to an
evaluation's rankings, embeddings and reference bank (METHOD.md section 8, last item).

:func:`hierarchy_scores` gives ``{"mistake_severity", "agreement", "drift"}`` for one (condition, query):

- ``mistake_severity``: :func:`hirviz.hierarchy.mistake_severity` of the ranked candidate strings (the string
  ranking, whatever ``--per-level`` says): severity of the wrong first answers, hierarchical distance@1 and @5.
- ``agreement``: :func:`hirviz.hierarchy.tree_embedding_agreement` over at most :data:`AGREEMENT_PAIRS` specimen
  pairs drawn with seed 0 from the specimens that have the query: the same pairs in every condition.
- ``drift``: :func:`hirviz.hierarchy.drift_under_noise` of the condition's embeddings against the clean ones, in
  the bundle's reference bank of the same space (a specimen that is itself in the bank skips its own row). In
  ``clean`` it is the baseline: how deep the nearest reference of the undegraded embedding agrees (displacement
  0). None where the reference bank has no specimen in that space.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from hirviz import hierarchy
from hirviz.taxonomy import LEVELS
from train.evaluate.embedding import KeyBank
from train.evaluate.metrics import _factorize

__all__ = ["AGREEMENT_PAIRS", "ReferenceCodes", "hierarchy_scores"]

AGREEMENT_PAIRS = 20000


class ReferenceCodes:
    """A reference bank's label codes in the evaluated frame's code space, and where each specimen sits in it."""

    def __init__(self, bank: KeyBank, frame_ranks: np.ndarray, frame_ids: np.ndarray) -> None:
        ranks = np.asarray(frame_ranks, dtype=object).reshape(-1, len(LEVELS))
        self.frame_codes = np.empty((len(ranks), len(LEVELS)), np.int64)
        self.bank_codes = np.empty((len(bank.ids), len(LEVELS)), np.int64)
        for j in range(len(LEVELS)):
            self.frame_codes[:, j], self.bank_codes[:, j] = _factorize(ranks[:, j], bank.ranks[:, j])
        self.bank, self.frame_ids = bank, np.asarray(frame_ids, dtype=object)

    def space(self, space: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(embeddings [M, d], codes [M, 4], own row of each frame specimen or -1)`` of one space, or None."""
        mask = self.bank.masks.get(space)
        if mask is None or not mask.any():
            return None
        rows = np.flatnonzero(mask)
        where = {str(i): n for n, i in enumerate(self.bank.ids[rows])}
        own = np.array([where.get(str(i), -1) if pd.notna(i) else -1 for i in self.frame_ids], dtype=np.int64)
        return self.bank.embeddings[space][rows], self.bank_codes[rows], own


def hierarchy_scores(embeddings: np.ndarray, clean: np.ndarray, mask: np.ndarray, truth: np.ndarray,
                     ranked_codes: np.ndarray, reference: ReferenceCodes | None, space: str,
                     cosine: bool = True) -> dict[str, Any]:
    """The hierarchy-consistency numbers of one query (see the module docstring).

    ``cosine=False`` (a Lorentz model, whose points are compared by geodesic distance): only the mistake
    severity, which reads the ranking, is computed; agreement and drift are measured with cosine distances and
    are left ``None`` rather than reported in the wrong geometry.

    Args:
        embeddings, clean: ``[N, d]`` embeddings of every evaluated specimen in this condition and without noise.
        mask: ``[N]`` the specimens that have this query.
        truth: ``[N, 5]`` label codes (:func:`train.evaluate.metrics.label_codes`).
        ranked_codes: ``[n, k, 5]`` codes of the ranked candidate strings of the ``mask`` rows, best first.
        reference: the reference bank in the frame's code space (None: no drift).
        space: the query's name, which is also its reference space.
    """
    rows = np.flatnonzero(mask)
    z, labels = embeddings[rows], truth[rows, :len(LEVELS)]
    out: dict[str, Any] = {
        "mistake_severity": hierarchy.mistake_severity(labels, ranked_codes[..., :len(LEVELS)]),
        "agreement": None,
        "drift": None,
    }
    if not cosine:
        return out
    out["agreement"] = hierarchy.tree_embedding_agreement(z, labels, n_pairs=AGREEMENT_PAIRS, seed=0)
    bank = reference.space(space) if reference is not None else None
    if bank is not None and len(bank[0]) >= 2:
        ref_emb, ref_codes, own = bank
        out["drift"] = hierarchy.drift_under_noise(clean[rows], z, ref_emb, ref_codes,
                                                   reference.frame_codes[rows], self_rows=own[rows])
    return out
