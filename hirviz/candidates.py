"""The candidate taxonomy strings a query ranks, with their ranks and (usually) their text embeddings.

Prediction aggregates a query's probabilities over them per level; evaluation ranks them and compares their
ranks with the truth. Both take them from a bundle (:meth:`CandidateSet.from_bundle`: the distinct taxonomy
strings of its training set); evaluation can also encode a dataset's own strings (``train.embed`` does that).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from hirviz.taxonomy import LEVELS

if TYPE_CHECKING:
    from hirviz.bundle import Bundle

__all__ = ["CandidateSet"]


class CandidateSet:
    """Candidate taxonomy strings, indexed per level for aggregating probabilities.

    ``candidates[c]`` is candidate c's taxonomy string and ``ranks[c]`` its (order, family, genus, species)
    names, ``None`` where unknown (``""`` is read as unknown). ``embeddings`` are the strings' L2-normalised
    text embeddings ``[C, d]`` (float32, row-aligned) or ``None``; ``source`` says where the strings came from
    (``"bundle"`` or ``"dataset"``). ``names[level]`` lists the distinct names at a level (sorted),
    ``codes[level][c]`` is the index of candidate c's name in it or -1, and ``lineage(level, name)`` gives the
    ranks above a name.
    """

    def __init__(self, candidates: Sequence[str], candidate_ranks: Sequence[Sequence[str | None]],
                 embeddings: np.ndarray | None = None, source: str = "bundle") -> None:
        if len(candidates) != len(candidate_ranks):
            raise ValueError(f"{len(candidates)} candidates but {len(candidate_ranks)} candidate_ranks")
        self.candidates = list(candidates)
        self.source = source
        ranks = [tuple((r or None) for r in row) for row in candidate_ranks]
        if any(len(row) != len(LEVELS) for row in ranks):
            raise ValueError(f"every candidate needs {len(LEVELS)} ranks ({', '.join(LEVELS)})")
        self.ranks: list[tuple[str | None, ...]] = ranks
        self.embeddings = None if embeddings is None else np.ascontiguousarray(embeddings, dtype=np.float32)
        if self.embeddings is not None and len(self.embeddings) != len(self.candidates):
            raise ValueError(f"candidates disagree: {len(self.candidates)} texts, {len(self.embeddings)} embeddings")
        self.names: dict[str, list[str]] = {}
        self.codes: dict[str, np.ndarray] = {}
        for depth, level in enumerate(LEVELS):
            column = [row[depth] for row in ranks]
            self.names[level] = sorted({n for n in column if n is not None})
            lookup = {n: i for i, n in enumerate(self.names[level])}
            self.codes[level] = np.array([lookup.get(n, -1) if n else -1 for n in column], dtype=np.int64)
        # A name's ancestors: the first known value among the candidates carrying it (one candidate may be
        # identified to genus without its family, another with it).
        self._lineage: dict[str, dict[str, list[str | None]]] = {level: {} for level in LEVELS}
        for row in ranks:
            for depth, level in enumerate(LEVELS):
                if row[depth] is None:
                    continue
                known = self._lineage[level].setdefault(row[depth], [None] * depth)
                for above in range(depth):
                    if known[above] is None:
                        known[above] = row[above]

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> CandidateSet:
        """A bundle's candidates (the distinct taxonomy strings of its training set) with their text embeddings."""
        return cls(bundle.candidates, bundle.candidate_ranks, bundle.text_embeddings, source="bundle")

    def __len__(self) -> int:
        return len(self.candidates)

    def lineage(self, level: str, name: str) -> dict[str, str | None]:
        """``{level: name}`` from order down to ``level`` for a name at ``level`` (``None`` where unknown)."""
        above = self._lineage[level].get(name, [None] * LEVELS.index(level))
        return {**dict(zip(LEVELS, above)), level: name}

    def aggregate(self, probs: np.ndarray, top_k: int) -> tuple[dict[str, list[tuple[str, float]]], dict[str, float]]:
        """Per level, the ``top_k`` names by summed candidate probability, and the unassigned mass.

        ``probs`` is ``[C]`` (one query). Ties are broken by name, so the output is deterministic.
        """
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != (len(self),):
            raise ValueError(f"expected probabilities [{len(self)}], got shape {probs.shape}")
        levels, unassigned = {}, {}
        for level in LEVELS:
            codes = self.codes[level]
            known = codes >= 0
            scores = np.bincount(codes[known], weights=probs[known], minlength=len(self.names[level]))
            order = np.argsort(-scores, kind="stable")[:top_k]  # names are sorted: stable = ties by name
            levels[level] = [(self.names[level][i], float(scores[i])) for i in order]
            unassigned[level] = float(probs[~known].sum())
        return levels, unassigned
