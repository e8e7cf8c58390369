"""Losses of the hyperbolic (Lorentz) variant of CLIBD: geodesic contrastive alignment and entailment cones.

The specification is ``docs/METHOD.md`` section 9 (with the multi-positive targets of section 1); the geometry
lives in :mod:`hirviz.lorentz`. Inputs are SPACE parts on the hyperboloid (``LorentzProjector.embed`` outputs),
not L2-normalised vectors. Public API:

* :func:`hyperbolic_contrastive_loss` -- symmetric InfoNCE with logits ``-d(x, y) * scale``, DDP-gathered.
* :func:`entailment_loss` -- ``L_ent(parent, child)``: cone violation on matched pairs, optionally pushing
  mismatched pairs of the batch out of the cone.
* :func:`rank_prompts`, :func:`rank_prompts_from_ids`, :func:`rank_edges` -- the per-rank prompts of SEL.
* :func:`sel_intra_loss` -- SEL's intra-text cones along order > family > genus > species.
* :class:`HyperbolicLossConfig` and :func:`hyperbolic_objective` -- contrastive + weight * entailment, returning
  ``(total, parts)`` like :func:`train.losses.compute_loss`.

Under DDP the contrastive terms gather features across ranks exactly as :mod:`train.losses` does (its gather
and gradient-scaling helpers are reused). Entailment cones are computed on each rank's local matched pairs
only; their logged value is the local one.

The module runs past the usual ~400 lines because the contrastive terms, the cones and the objective that
combines them share their input checks and masks; split, each part would be a fragment of the other.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from hirviz.lorentz import (
    DEFAULT_MIN_RADIUS,
    exterior_angle,
    half_aperture,
    pairwise_distance,
    pairwise_exterior_angle,
)
from hirviz.taxonomy import LEVELS, Taxonomy, clean_lineage
from train.losses.contrastive import (
    DEFAULT_TAU,
    _as_logit_scale,
    _check_features,
    _check_ids,
    _gather_features,
    _gather_ids,
    _globalise,
    _layout,
    _pair_shares,
)

__all__ = [
    "ENTAILMENT_VARIANTS",
    "REDUCTIONS",
    "HyperbolicLossConfig",
    "entailment_loss",
    "hyperbolic_contrastive_loss",
    "hyperbolic_objective",
    "rank_edges",
    "rank_prompts",
    "rank_prompts_from_ids",
    "sel_intra_loss",
]

REDUCTIONS = ("sum3", "mean6")
ENTAILMENT_VARIANTS = ("sel", "a", "b", "c", "none")
# (parent, child) modality edges of each variant (METHOD.md section 9); SEL's inter-modal edges are C's.
_VARIANT_EDGES = {
    "a": (("text", "image"), ("text", "dna")),
    "b": (("text", "dna"), ("dna", "image")),
    "c": (("text", "dna"), ("dna", "image"), ("text", "image")),
    "sel": (("text", "image"), ("text", "dna"), ("dna", "image")),
    "none": (),
}
_PAIRS = (("image_dna", "image", "dna"), ("image_text", "image", "text"), ("dna_text", "dna", "text"))

Curvature = Tensor | float


# --------------------------------------------------------------------------------------------------------------
# Contrastive alignment with geodesic logits
# --------------------------------------------------------------------------------------------------------------


def _geodesic_logits(scale: Tensor | float, c: Curvature) -> Callable[[Tensor, Tensor], Tensor]:
    """Logits ``-scale * d(x, y)`` (computed in float32 by :func:`hirviz.lorentz.pairwise_distance`)."""
    return lambda anchors, candidates: -scale * pairwise_distance(anchors, candidates, c)


def hyperbolic_contrastive_loss(
    a: Tensor,
    b: Tensor,
    text_ids: Tensor | None = None,
    curvature: Curvature = 1.0,
    logit_scale: Tensor | float = 1.0 / DEFAULT_TAU,
    *,
    gather: bool = True,
) -> Tensor:
    """Symmetric InfoNCE between two modalities with logits ``-d(x, y) * scale`` (METHOD.md section 9).

    Args:
        a, b: space parts on the hyperboloid [B, d]; row i of both describes the same specimen.
        text_ids: taxonomy-string id per sample: samples sharing an id are positives (section 1); ``None``:
            one positive per row.
        curvature: c (a tensor from ``LorentzProjector.curvature()`` receives a gradient).
        logit_scale: 1/tau, e.g. ``LorentzProjector.logit_scale()``.
        gather: all-gather across ranks under DDP, as :func:`train.losses.contrastive_loss`.

    Returns:
        The scalar loss of the global batch.
    """
    a = _check_features("a", a)
    b = _check_features("b", b, a.shape[0], a.shape[1])
    if text_ids is not None:
        text_ids = _check_ids("text_ids", text_ids, a.shape[0]).to(a.device)
    scale = _as_logit_scale(logit_scale)
    layout = _layout(a.shape[0], a.device, gather)
    ids_global = None if text_ids is None else _gather_ids(text_ids, layout)
    share = _pair_shares(
        a, b, _gather_features(a, layout), _gather_features(b, layout), text_ids, ids_global, scale, layout,
        _geodesic_logits(scale, curvature),
    )  # fmt: skip
    return _globalise({"loss": share}, layout)["loss"]


# --------------------------------------------------------------------------------------------------------------
# Entailment cones
# --------------------------------------------------------------------------------------------------------------


def _check_labels(labels: object, batch: int) -> Tensor:
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a tensor, got {type(labels).__name__}")
    if labels.shape != (batch, len(LEVELS)) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(
            f"labels must be an integer tensor [B, 4] = [{batch}, 4] (order, family, genus, species; -1 unknown), "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    return labels.long()


def _deepest(labels: Tensor) -> Tensor:
    """Index of each row's deepest known rank, -1 where none is known."""
    levels = torch.arange(len(LEVELS), device=labels.device)
    return torch.where(labels >= 0, levels, -1).amax(1)


def _mismatched(labels: Tensor, level: Tensor) -> Tensor:
    """[B, B]: specimen j provably lies outside parent i's taxon at rank ``level[i]`` (both known, different)."""
    safe = level.clamp(min=0)
    own = labels.gather(1, safe[:, None])  # [B, 1]: y_{level_i}(i)
    other = labels.T[safe]  # [B, B]: y_{level_i}(j)
    return (level[:, None] >= 0) & (own >= 0) & (other >= 0) & (own != other)


def _positive_cone(parent: Tensor, child: Tensor, c: Curvature, min_radius: float) -> Tensor:
    """Per row, ``max(0, ext(parent_i, child_i) - aper(parent_i))``."""
    return torch.relu(exterior_angle(parent, child, c) - half_aperture(parent, c, min_radius))


def _negative_cone(parent: Tensor, child: Tensor, c: Curvature, min_radius: float) -> Tensor:
    """[B, B]: ``max(0, aper(parent_i) - ext(parent_i, child_j))`` (child j inside i's cone)."""
    return torch.relu(half_aperture(parent, c, min_radius)[:, None] - pairwise_exterior_angle(parent, child, c))


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask``; a zero still connected to the graph when the mask is empty."""
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp(min=1)


def entailment_loss(
    parent: Tensor,
    child: Tensor,
    c: Curvature = 1.0,
    min_radius: float = DEFAULT_MIN_RADIUS,
    *,
    rows: Tensor | None = None,
    mismatched: Tensor | None = None,
) -> Tensor:
    """``L_ent(parent, child)`` on LOCAL matched pairs (METHOD.md section 9).

    ``mean_i max(0, ext(parent_i, child_i) - aper(parent_i))`` over the rows selected by ``rows`` (bool [B],
    default all), plus, when ``mismatched`` (bool [B, B]) is given, ``mean_{(i, j) mismatched}
    max(0, aper(parent_i) - ext(parent_i, child_j))``, which pushes children of other taxa out of the cone.
    """
    parent = _check_features("parent", parent)
    child = _check_features("child", child, parent.shape[0], parent.shape[1])
    rows = torch.ones(parent.shape[0], dtype=torch.bool, device=parent.device) if rows is None else rows
    loss = _masked_mean(_positive_cone(parent, child, c, min_radius), rows)
    if mismatched is not None:
        if mismatched.shape != (parent.shape[0], parent.shape[0]):
            raise ValueError(f"mismatched must be a [B, B] mask, got {tuple(mismatched.shape)}")
        loss = loss + _masked_mean(_negative_cone(parent, child, c, min_radius), mismatched)
    return loss + 0.0 * (parent.sum() + child.sum())


def rank_prompts(ranks: Sequence[object]) -> tuple[str | None, ...]:
    """SEL's per-rank prompts of one lineage (order, family, genus, species): the prompt of rank l names the known
    ranks up to l, e.g. ``"Order: Diptera; Family: Cecidomyiidae"``; ``None`` where rank l is unknown."""
    clean = clean_lineage(ranks)
    prompts: list[str | None] = []
    parts: list[str] = []
    for level, name in zip(LEVELS, clean):
        if name is not None:
            parts.append(f"{level.capitalize()}: {name}")
        prompts.append("; ".join(parts) if name is not None else None)
    return tuple(prompts)


def rank_prompts_from_ids(label_ids: Sequence[int], taxonomy: Taxonomy) -> tuple[str | None, ...]:
    """:func:`rank_prompts` of a labels row (ids per rank, -1 unknown) decoded with ``taxonomy``."""
    return rank_prompts([taxonomy.name_of(level, int(i)) for level, i in zip(LEVELS, label_ids)])


def rank_edges(labels: Tensor) -> Tensor:
    """bool [B, 3]: the specimen has the intra-text edge order>family, family>genus, genus>species (both ranks
    known)."""
    known = labels >= 0
    return known[:, :-1] & known[:, 1:]


def sel_intra_loss(
    rank_text: Tensor,
    labels: Tensor,
    c: Curvature = 1.0,
    min_radius: float = DEFAULT_MIN_RADIUS,
    *,
    edges: Tensor | None = None,
    negatives: bool = True,
) -> Tensor:
    """SEL's intra-text cones along order > family > genus > species (METHOD.md section 9).

    Args:
        rank_text: [B, 4, d] space parts of each specimen's per-rank prompts (:func:`rank_prompts`); rows of
            unknown ranks may hold any finite values (they are masked out).
        labels: long [B, 4], -1 unknown. edges: bool [B, 3] (default :func:`rank_edges`).
        negatives: add, per edge, the mean over pairs (i, j) whose parent-rank labels are known and differ of
            ``max(0, aper(T_l(i)) - ext(T_l(i), T_{l+1}(j)))``.

    Returns:
        Mean over specimens with at least one edge of the mean over their edges of the cone violation, plus
        the negative term pooled over all mismatched (edge, i, j).
    """
    if rank_text.dim() != 3 or rank_text.shape[1] != len(LEVELS):
        raise ValueError(f"rank_text must have shape [B, 4, d] (one prompt per rank), got {tuple(rank_text.shape)}")
    labels = _check_labels(labels, rank_text.shape[0]).to(rank_text.device)
    edges = rank_edges(labels) if edges is None else edges.to(device=rank_text.device, dtype=torch.bool)
    if edges.shape != (rank_text.shape[0], len(LEVELS) - 1):
        raise ValueError(f"edges must be a bool [B, 3] mask, got {tuple(edges.shape)}")
    positive_sum = rank_text.new_zeros(rank_text.shape[0], dtype=torch.float32)
    negative_sum = rank_text.new_zeros((), dtype=torch.float32)
    n_negative = rank_text.new_zeros((), dtype=torch.float32)
    level = torch.zeros(rank_text.shape[0], dtype=torch.long, device=rank_text.device)
    for edge in range(len(LEVELS) - 1):  # a loop over the three edges, vectorised over the batch
        parent, child, has = rank_text[:, edge], rank_text[:, edge + 1], edges[:, edge]
        positive_sum = positive_sum + torch.where(has, _positive_cone(parent, child, c, min_radius), 0.0)
        if negatives:
            pairs = _mismatched(labels, level + edge) & has[:, None] & has[None, :]
            negative_sum = negative_sum + torch.where(pairs, _negative_cone(parent, child, c, min_radius), 0.0).sum()
            n_negative = n_negative + pairs.sum()
    n_edges = edges.sum(1)
    per_specimen = positive_sum / n_edges.clamp(min=1)
    loss = _masked_mean(per_specimen, n_edges > 0) + negative_sum / n_negative.clamp(min=1)
    return loss + 0.0 * rank_text.sum()


# --------------------------------------------------------------------------------------------------------------
# The objective
# --------------------------------------------------------------------------------------------------------------


@dataclass
class HyperbolicLossConfig:
    """The hyperbolic objective: contrastive + ``entail_weight`` * entailment (METHOD.md section 9).

    Attributes:
        reduction: ``"sum3"`` (default): the sum of the three symmetric pair losses, as section 1;
            ``"mean6"``: the authors' average of the six directed losses (= sum3 / 3). The entailment weight
            is relative to this, so the same weight is three times stronger under mean6.
        multi_positive: samples sharing a taxonomy string are positives (else one-positive InfoNCE).
        entailment: ``"sel"`` (default, the paper by the second-hand reading), ``"a"`` (T>I, T>D), ``"b"``
            (T>D>I), ``"c"`` (B plus T>I) or ``"none"``.
        entail_weight: the entailment weight (1.0 the paper, 0.2 MERU and the authors' early code).
        entail_negatives: also push mismatched pairs out of the cones; ``None`` = on for SEL, off for A/B/C.
        min_radius: K of the cone aperture.
        gather: all-gather contrastive features across ranks under DDP.
    """

    reduction: str = "sum3"
    multi_positive: bool = True
    entailment: str = "sel"
    entail_weight: float = 1.0
    entail_negatives: bool | None = None
    min_radius: float = DEFAULT_MIN_RADIUS
    gather: bool = True

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {self.reduction!r}; valid: {', '.join(REDUCTIONS)}")
        if self.entailment not in ENTAILMENT_VARIANTS:
            raise ValueError(f"unknown entailment {self.entailment!r}; valid: {', '.join(ENTAILMENT_VARIANTS)}")
        if not (math.isfinite(self.entail_weight) and self.entail_weight >= 0):
            raise ValueError(f"entail_weight must be a finite number >= 0, got {self.entail_weight}")
        if not self.min_radius > 0:
            raise ValueError(f"min_radius must be > 0, got {self.min_radius}")

    @property
    def negatives(self) -> bool:
        return self.entailment == "sel" if self.entail_negatives is None else self.entail_negatives


def _contrastive_terms(
    features: dict[str, Tensor], ids: Tensor | None, c: Curvature, scale: Tensor | float, gather: bool
) -> dict[str, Tensor]:
    """The symmetric pair losses of the available pairs, each modality gathered once."""
    pairs = [p for p in _PAIRS if p[1] in features and p[2] in features]
    if not pairs:
        return {}
    first = next(iter(features.values()))
    layout = _layout(first.shape[0], first.device, gather)
    ids_global = None if ids is None else _gather_ids(ids, layout)
    needed = {m for _, a, b in pairs for m in (a, b)}
    # Collectives must run in the same order on every rank: iterate the dict, never the set (string hashes, and
    # so set order, differ between processes).
    global_features = {m: _gather_features(features[m], layout) for m in features if m in needed}
    shares = {
        name: _pair_shares(
            features[a], features[b], global_features[a], global_features[b], ids, ids_global, scale, layout,
            _geodesic_logits(scale, c),
        )
        for name, a, b in pairs
    }
    return _globalise(shares, layout)


def _inter_modal(
    nodes: dict[str, Tensor], edges: Sequence[tuple[str, str]], labels: Tensor, cfg: HyperbolicLossConfig,
    c: Curvature,
) -> Tensor | None:  # fmt: skip
    """Mean over the variant's available (parent, child) edges of ``L_ent``; a parent stands for the specimen's
    taxon at its deepest known rank (that is where mismatches are decided)."""
    deepest = _deepest(labels)
    rows = deepest >= 0
    mismatched = _mismatched(labels, deepest) if cfg.negatives else None
    terms = [
        entailment_loss(nodes[p], nodes[ch], c, cfg.min_radius, rows=rows, mismatched=mismatched)
        for p, ch in edges
        if p in nodes and ch in nodes
    ]
    return torch.stack(terms).mean() if terms else None


def hyperbolic_objective(
    outputs: Mapping[str, Tensor | None],
    text_ids: Tensor | None,
    labels: Tensor | None,
    cfg: HyperbolicLossConfig,
    curvature: Curvature = 1.0,
    logit_scale: Tensor | float = 1.0 / DEFAULT_TAU,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Contrastive + ``cfg.entail_weight`` * entailment for the hyperbolic model (METHOD.md section 9).

    Args:
        outputs: space parts on the hyperboloid: ``image``, ``dna``, ``text`` [B, d] (a missing key or ``None``
            drops its terms), and for SEL ``rank_text`` [B, 4, d], the per-rank prompts (:func:`rank_prompts`);
            SEL's inter-modal cones use the deepest known rank's prompt from it.
        text_ids: taxonomy-string id per sample (needed when ``cfg.multi_positive``).
        labels: long [B, 4], -1 unknown (needed by the entailment terms).
        cfg: the objective. curvature, logit_scale: c and 1/tau, e.g. from ``LorentzProjector``.

    Returns:
        ``(total, parts)``: the loss to back-propagate and the detached terms: the symmetric pair losses
        ``image_dna``, ``image_text``, ``dna_text`` (those computed), the reduced contrastive loss ``clip``
        (sum3 or mean6), the unweighted ``entail`` and, for SEL, ``entail_intra`` and ``entail_inter``.

    Raises:
        ValueError: a needed input is missing or malformed, or no term can be computed.
    """
    if not isinstance(cfg, HyperbolicLossConfig):
        raise TypeError(f"cfg must be a HyperbolicLossConfig, got {type(cfg).__name__}")
    features: dict[str, Tensor] = {}
    batch: int | None = None
    dim: int | None = None
    for key in ("image", "dna", "text"):
        value = outputs.get(key)
        if value is not None:
            features[key] = _check_features(f"outputs[{key!r}]", value, batch, dim)
            batch, dim = value.shape[0], value.shape[1]

    ids: Tensor | None = None
    if cfg.multi_positive and len(features) >= 2:
        if text_ids is None:
            raise ValueError("multi_positive=True needs text_ids (one taxonomy-string id per sample)")
        ids = _check_ids("text_ids", text_ids, batch).to(next(iter(features.values())).device)
    scale = _as_logit_scale(logit_scale)

    parts: dict[str, Tensor] = {}
    total: Tensor | None = None
    pair_losses = _contrastive_terms(features, ids, curvature, scale, cfg.gather)
    if pair_losses:
        clip = sum(pair_losses.values())
        if cfg.reduction == "mean6":
            clip = clip / len(pair_losses)
        parts.update({name: value.detach() for name, value in pair_losses.items()})
        parts["clip"] = clip.detach()
        total = clip

    if cfg.entailment != "none" and cfg.entail_weight > 0:
        entail = _entailment(outputs, features, labels, cfg, curvature, parts)
        if entail is not None:
            parts["entail"] = entail.detach()
            total = cfg.entail_weight * entail if total is None else total + cfg.entail_weight * entail

    if total is None:
        raise ValueError(
            "no hyperbolic loss term can be computed from outputs with keys "
            f"{sorted(k for k, v in outputs.items() if v is not None)}; the contrastive loss needs at least two "
            "of 'image', 'dna', 'text'"
        )
    return total, parts


def _entailment(
    outputs: Mapping[str, Tensor | None], features: dict[str, Tensor], labels: Tensor | None,
    cfg: HyperbolicLossConfig, c: Curvature, parts: dict[str, Tensor],
) -> Tensor | None:  # fmt: skip
    """The selected variant's entailment loss on the local batch (SEL's two terms are logged into ``parts``)."""
    if labels is None:
        raise ValueError(f"entailment {cfg.entailment!r} needs labels [B, 4] (order, family, genus, species)")
    if not features:
        return None
    first = next(iter(features.values()))
    labels = _check_labels(labels, first.shape[0]).to(first.device)
    if cfg.entailment != "sel":
        return _inter_modal(features, _VARIANT_EDGES[cfg.entailment], labels, cfg, c)
    rank_text = outputs.get("rank_text")
    if rank_text is None:
        raise ValueError("entailment 'sel' needs outputs['rank_text'] [B, 4, d]: the per-rank prompt embeddings")
    if rank_text.dim() != 3 or rank_text.shape[0] != first.shape[0] or rank_text.shape[2] != first.shape[1]:
        raise ValueError(
            f"outputs['rank_text'] must have shape [B, 4, d] = [{first.shape[0]}, 4, {first.shape[1]}], "
            f"got {tuple(rank_text.shape)}"
        )
    intra = sel_intra_loss(rank_text, labels, c, cfg.min_radius, negatives=cfg.negatives)
    deepest = _deepest(labels).clamp(min=0)
    nodes = {k: v for k, v in features.items() if k != "text"}
    nodes["text"] = rank_text[torch.arange(rank_text.shape[0], device=rank_text.device), deepest]
    inter = _inter_modal(nodes, _VARIANT_EDGES["sel"], labels, cfg, c)
    parts["entail_intra"] = intra.detach()
    if inter is None:
        return intra
    parts["entail_inter"] = inter.detach()
    return intra + inter
