"""What a prediction says: per-level scores of the candidate taxa and the result objects of a query.

A query embedding scores the candidate taxonomy strings with :func:`softmax_scores`
(``softmax(cos(z, z_T) / tau)``; Lorentz, METHOD.md section 9: ``softmax(-d(z, z_T) * scale)``); a name's score at
a level is the total probability of the candidates carrying it (:meth:`hirviz.candidates.CandidateSet.aggregate`).
:func:`deepest_rank` and :func:`agreement` summarise those scores; :class:`QueryResult`, :class:`Prediction` and
:class:`Embedded` hold what :class:`hirviz.predict.Predictor` computes, with :meth:`Prediction.to_rows`
(columns :data:`ROW_COLUMNS`) and ``to_dict`` for output.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from hirviz.candidates import CandidateSet
from hirviz.degrade import Edit
from hirviz.geometry import EUCLIDEAN, Geometry
from hirviz.taxonomy import LEVELS

__all__ = [
    "ROW_COLUMNS",
    "Embedded",
    "Prediction",
    "QueryResult",
    "agreement",
    "deepest_rank",
    "softmax_scores",
]

ROW_COLUMNS: tuple[str, ...] = ("file_name", "barcode_id", "query", "rank", *LEVELS, "score")


def softmax_scores(z: np.ndarray, text_embeddings: np.ndarray, logit_scale: float,
                   geometry: Geometry = EUCLIDEAN) -> np.ndarray:
    """``softmax(logit_scale * cos)`` over the candidates (Lorentz: ``softmax(-logit_scale * d)``), ``[n, C]`` for
    queries ``[n, d]`` (float64)."""
    logits = geometry.logits(z, text_embeddings, logit_scale)
    logits -= logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=-1, keepdims=True)


def deepest_rank(levels: dict[str, list[tuple[str, float]]], threshold: float = 0.5) -> str | None:
    """The deepest level whose top-1 score is at least ``threshold``, going down from order.

    The walk stops at the first level that falls short (or has no names), so a confident species under an
    uncertain genus does not count. ``None`` when even the order is uncertain.
    """
    deepest = None
    for level in LEVELS:
        ranked = levels.get(level) or []
        if not ranked or ranked[0][1] < threshold:
            break
        deepest = level
    return deepest


def agreement(levels_by_query: dict[str, dict[str, list[tuple[str, float]]]]) -> dict[str, bool]:
    """Per level, whether every query's top-1 name is the same (a lone query agrees with itself).

    A query with no name at a level (no candidate known that deep) disagrees.
    """
    out = {}
    for level in LEVELS:
        tops = [ranked[level][0][0] if ranked.get(level) else None for ranked in levels_by_query.values()]
        out[level] = bool(tops) and None not in tops and len(set(tops)) == 1
    return out



@dataclass
class QueryResult:
    """What one query (image, dna, avg or fused) says.

    Attributes:
        query: the query's name.
        embedding: the query embedding ``[d]`` (L2-normalised, or a Lorentz space part).
        probabilities: probability of every candidate ``[C]`` (aligned with ``bundle.candidates``).
        levels: per level, the top-k ``(name, score)``; a score sums the probabilities of the candidates with
            that name at that level.
        unassigned: per level, the probability mass of candidates unknown at that level.
        candidates: the top-k whole taxonomy strings ``(string, probability)``.
        deepest_rank: see :func:`deepest_rank`.
        neighbours: nearest reference specimens, ``{"id", "row", "ranks", "similarity"}`` each.
        abstained: whether the query answers "no confident match" (:mod:`hirviz.abstain`): its names are kept
            for inspection but are not an identification.
        reason: why it abstained, in plain language (``None`` when it did not).
        signals: the abstention signals measured for it (higher = better evidence).
    """

    query: str
    embedding: np.ndarray
    probabilities: np.ndarray
    levels: dict[str, list[tuple[str, float]]]
    unassigned: dict[str, float]
    candidates: list[tuple[str, float]]
    deepest_rank: str | None
    neighbours: list[dict[str, Any]] = field(default_factory=list)
    abstained: bool = False
    reason: str | None = None
    signals: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (the full probability vector is left out; the top candidates are in)."""
        return {
            "embedding": [float(x) for x in self.embedding],
            "levels": {lvl: [{"name": n, "score": s} for n, s in ranked] for lvl, ranked in self.levels.items()},
            "unassigned": dict(self.unassigned),
            "candidates": [{"taxonomy": t, "score": s} for t, s in self.candidates],
            "deepest_rank": self.deepest_rank,
            "neighbours": [dict(n, ranks=dict(n["ranks"])) for n in self.neighbours],
            "abstained": self.abstained,
            "reason": self.reason,
            "signals": {k: (v if np.isfinite(v) else None) for k, v in self.signals.items()},
        }


@dataclass
class Prediction:
    """The answer of :meth:`hirviz.predict.Predictor.predict`.

    Attributes:
        queries: the queries the inputs support (image only: ``image``; barcode only: ``dna``; both: all four, or
            ``image``, ``dna`` and ``avg`` when the model's fusion gate was never trained).
        agreement: per level, whether the top-1 names of all queries agree.
        gate: mean of the fusion gate g over dimensions: how much the fused embedding leaned on the image (1)
            rather than the DNA (0); ``None`` without both inputs or when the gate was never trained.
        gate_vector: the per-dimension gate ``[d]`` or ``None``.
        barcode: the parsed clean barcode, ``barcode_id`` its FASTA header's first word (or ``None``).
        degraded_barcode: the barcode the model saw when DNA noise was applied, else ``None``.
        barcode_edits: the changes the noise made (:class:`hirviz.degrade.Edit`).
        model_input_image: what the image tower saw (after the eval transform and blur), enlarged for display.
        settings: the degradation settings used (blur kernel, DNA noise, seed, threshold).
        fusion_trained: whether the model's fusion gate was trained
            (see :attr:`hirviz.predict.Predictor.fusion_trained`).
        candidate_set: the candidates the probabilities refer to.
    """

    queries: dict[str, QueryResult]
    agreement: dict[str, bool]
    gate: float | None = None
    gate_vector: np.ndarray | None = None
    barcode: str | None = None
    barcode_id: str | None = None
    degraded_barcode: str | None = None
    barcode_edits: list[Edit] = field(default_factory=list)
    model_input_image: Image.Image | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    fusion_trained: bool = True
    candidate_set: CandidateSet | None = field(default=None, repr=False)

    def to_rows(self, file_name: str | None = None, barcode_id: str | None = None) -> list[dict[str, Any]]:
        """One row per query x level x top-k name, pybioclip-style (columns :data:`ROW_COLUMNS`).

        ``rank`` is the row's level; the level columns hold the name's lineage down to that level ("" where
        unknown or below). ``barcode_id`` defaults to the FASTA header of the barcode.
        """
        barcode_id = self.barcode_id if barcode_id is None else barcode_id
        rows = []
        for query, result in self.queries.items():
            for level, ranked in result.levels.items():
                for name, score in ranked:
                    lineage = self.candidate_set.lineage(level, name) if self.candidate_set else {level: name}
                    rows.append({
                        "file_name": file_name or "", "barcode_id": barcode_id or "", "query": query, "rank": level,
                        **{lvl: lineage.get(lvl) or "" for lvl in LEVELS}, "score": score,
                    })
        return rows

    @property
    def verdict(self) -> tuple[str | None, str | None]:
        """``(query, deepest rank)`` of the first non-abstaining query, joint evidence first
        (:func:`hirviz.abstain.verdict`); ``(None, None)`` when every query abstains."""
        from hirviz.abstain import verdict

        return verdict(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (everything but the display image and full probability vectors)."""
        return {
            "queries": {name: result.to_dict() for name, result in self.queries.items()},
            "agreement": dict(self.agreement),
            "gate": self.gate,
            "gate_vector": None if self.gate_vector is None else [float(x) for x in self.gate_vector],
            "barcode": self.barcode,
            "barcode_id": self.barcode_id,
            "degraded_barcode": self.degraded_barcode,
            "barcode_edits": [asdict(e) for e in self.barcode_edits],
            "settings": dict(self.settings),
            "fusion_trained": self.fusion_trained,
        }


@dataclass
class Embedded:
    """Query embeddings of ``m`` variants of one specimen (one per degradation setting).

    ``vectors`` maps each available query to ``[m, d]``; ``gate`` is ``[m, d]`` when both inputs were given;
    ``pixels`` ``[m, C, H, W]`` is the normalised model input; ``clean_barcode`` the parsed barcode and
    ``barcodes`` / ``edits`` what the DNA tower saw.
    """

    vectors: dict[str, np.ndarray]
    gate: np.ndarray | None = None
    pixels: torch.Tensor | None = None
    clean_barcode: str | None = None
    barcodes: list[str] | None = None
    edits: list[list[Edit]] | None = None
