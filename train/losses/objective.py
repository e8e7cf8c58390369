"""The training objectives CLIBD, CLIBD-HiR and CLIBD-HiR-Fuse (METHOD.md section 3), and CLIBD in the Lorentz
geometry (METHOD.md section 9: :func:`compute_loss` with a ``curvature`` hands over to
:func:`train.losses.hyperbolic.hyperbolic_objective`)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from train.losses.contrastive import (
    DEFAULT_TAU,
    _as_logit_scale,
    _check_features,
    _check_ids,
    _directed_row_loss_sum,
    _gather_features,
    _gather_ids,
    _globalise,
    _Layout,
    _layout,
    _pair_shares,
)
from train.losses.fusion import FUSION_DIRECTIONS
from train.losses.hir import HIR_MAX_SCOPES, HIR_MODES, hir_loss
from train.losses.hyperbolic import ENTAILMENT_VARIANTS, REDUCTIONS, HyperbolicLossConfig, hyperbolic_objective

# The terms each objective adds to L_clip (METHOD.md section 3): (HiR, fusion). The one place that maps an
# objective name to its terms; everything else asks LossConfig.uses_hir / uses_fusion.
_OBJECTIVE_TERMS = {"clibd": (False, False), "clibd-hir": (True, False), "clibd-hir-fuse": (True, True)}
OBJECTIVES = tuple(_OBJECTIVE_TERMS)
HIR_MODALITIES = ("image", "dna")
# Levels whose clamp fraction is logged: order is the first level, which is never clamped.
_CLAMP_LOGGED = ("family", "genus", "species")

# Which model output feeds HiR for each ``LossConfig.hir_modality``.
_VIEWS_KEY = {"image": "image_views", "dna": "dna_views"}


@dataclass
class LossConfig:
    """Which objective to train and its weights (METHOD.md section 3).

    Attributes:
        objective: ``"clibd"`` (L_clip), ``"clibd-hir"`` (+ lambda HiR) or ``"clibd-hir-fuse"`` (+ gamma L_fuse).
        tau: fixed temperature, used for the contrastive terms when no ``logit_scale`` is passed, and by HiR.
        multi_positive: samples with the same taxonomy string are positives (else one-positive InfoNCE).
        hir_weight: lambda. fusion_weight: gamma.
        hir_mode: ``"paper"``, ``"shared-denominator"`` (ablation) or ``"hmce"`` (see :func:`hir_loss`).
        hir_max_scope: ``"batch"`` (the paper's Eq. 5) or ``"anchor"`` (HiConE's per-anchor max).
        fusion_direction: ``"text_anchor"`` (the authors' code) or ``"fused_anchor"`` (the paper's Eq. 11); see
            :func:`fusion_loss`.
        hir_modality: ``"image"`` (HiR on ``image_views``) or ``"dna"`` (on ``dna_views``).
        image_dna_weight, image_text_weight, dna_text_weight: per-pair weights in L_clip.
        A zero weight (pair, lambda or gamma) skips its term: it is neither computed nor logged.
        detach_dna_in_id: the authors' code quirk: DNA receives no gradient from the image-DNA term.
        gather: all-gather features across ranks under DDP (negatives from the global batch).
        entailment, entail_weight, hyperbolic_reduction: the Lorentz geometry's entailment variant (``sel``, ``a``,
            ``b``, ``c`` or ``none``), its weight, and how the three pair losses are reduced (``sum3`` as section 1,
            or ``mean6``, the authors' mean of the six directed losses); see
            :class:`train.losses.hyperbolic.HyperbolicLossConfig`. Ignored in the Euclidean geometry.
    """

    objective: str = "clibd-hir"
    tau: float = DEFAULT_TAU
    multi_positive: bool = True
    hir_weight: float = 0.01
    fusion_weight: float = 1.0
    hir_mode: str = "paper"
    hir_max_scope: str = "batch"
    hir_modality: str = "image"
    fusion_direction: str = "text_anchor"
    image_dna_weight: float = 1.0
    image_text_weight: float = 1.0
    dna_text_weight: float = 1.0
    detach_dna_in_id: bool = False
    gather: bool = True
    entailment: str = "sel"
    entail_weight: float = 1.0
    hyperbolic_reduction: str = "sum3"

    def __post_init__(self) -> None:
        for name, valid in (("objective", OBJECTIVES), ("hir_mode", HIR_MODES), ("hir_max_scope", HIR_MAX_SCOPES),
                            ("hir_modality", HIR_MODALITIES), ("fusion_direction", FUSION_DIRECTIONS),
                            ("entailment", ENTAILMENT_VARIANTS), ("hyperbolic_reduction", REDUCTIONS)):
            value = getattr(self, name)
            if value not in valid:
                raise ValueError(f"unknown loss.{name} {value!r}; valid values: {', '.join(valid)}")
        if self.hir_mode == "hmce" and self.hir_max_scope != "batch":
            raise ValueError("loss.hir_max_scope=anchor applies to hir_mode paper or shared-denominator, not hmce "
                             "(which lifts level means and has no per-anchor maximum)")
        if not self.tau > 0:
            raise ValueError(f"loss.tau must be positive, got {self.tau}")
        for name in ("hir_weight", "fusion_weight", "image_dna_weight", "image_text_weight", "dna_text_weight",
                     "entail_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"loss.{name} must be a finite number >= 0, got {value}")

    @property
    def uses_hir(self) -> bool:
        """The objective has the HiR term (whatever its weight)."""
        return _OBJECTIVE_TERMS[self.objective][0]

    @property
    def uses_fusion(self) -> bool:
        """The objective has the fusion term (whatever its weight)."""
        return _OBJECTIVE_TERMS[self.objective][1]

    def hyperbolic(self) -> HyperbolicLossConfig:
        """The Lorentz geometry's objective (METHOD.md section 9) with this config's settings."""
        return HyperbolicLossConfig(reduction=self.hyperbolic_reduction, multi_positive=self.multi_positive,
                                    entailment=self.entailment, entail_weight=self.entail_weight, gather=self.gather)

    def lorentz_conflicts(self) -> list[str]:
        """The settings the Lorentz geometry cannot honour (``key=value`` each); empty when there are none."""
        conflicts = [] if self.objective == "clibd" else [f"loss.objective={self.objective}"]
        conflicts += [f"loss.{name}={getattr(self, name)}" for name in
                      ("image_dna_weight", "image_text_weight", "dna_text_weight") if getattr(self, name) != 1.0]
        if self.detach_dna_in_id:
            conflicts.append("loss.detach_dna_in_id=true")
        return conflicts


def compute_loss(
    outputs: Mapping[str, Tensor | None],
    text_ids: Tensor | None,
    labels: Tensor | None,
    cfg: LossConfig,
    logit_scale: Tensor | float | None = None,
    curvature: Tensor | float | None = None,
    present: Mapping[str, Tensor] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The training objective selected by ``cfg.objective``.

    Args:
        outputs: L2-normalised embeddings: ``image`` [B, d] (first view), ``image_views`` [B, 2, d],
            ``dna`` [B, d], ``dna_views`` [B, 2, d], ``text`` [B, d], ``fused`` [B, d]. A missing key or
            ``None`` means the modality is absent and its terms are dropped. Under DDP every rank must pass
            the same set of modalities.
        text_ids: long [B], taxonomy-string id per sample (needed when ``cfg.multi_positive``).
        labels: long [B, 4], (order, family, genus, species), -1 unknown (needed by HiR).
        cfg: the objective and its weights.
        logit_scale: ``1 / tau`` for the contrastive and fusion terms, e.g. a learnable parameter of the
            model (already exponentiated); ``None`` uses the fixed ``1 / cfg.tau``.
        curvature: c of a Lorentz model: the outputs are then hyperboloid space parts (and ``rank_text`` for
            SEL), and the objective is :func:`~train.losses.hyperbolic.hyperbolic_objective` with
            :meth:`LossConfig.hyperbolic` (its parts: the pair losses, ``clip``, ``entail``, and for SEL
            ``entail_intra`` / ``entail_inter``). Only ``objective="clibd"`` is defined there.
        present: noise-aware training (:mod:`train.data.noise_aware`): ``{"image" | "dna": bool [B]}``, False where
            the sample's modality was dropped (its embedding then describes a blank input). Such a row is left out,
            as anchor and as candidate, of every pair term and of HiR when they need that modality; its fused
            embedding is replaced by the present modality's (the query :class:`hirviz.predict.Predictor` answers
            with when one input is missing), so the gate never sees a blank input. A term left with no row adds a
            zero. ``None``: every modality of every row is real.

    Returns:
        ``(total, parts)``: the loss to back-propagate, and the detached terms for logging: the unweighted
        pair losses ``image_dna``, ``image_text``, ``dna_text`` (those computed), their weighted sum ``clip``,
        and, per objective, the unweighted ``hir`` and ``fuse``; with HiR in a pair-clamping mode also
        ``hir_clamped_family``, ``hir_clamped_genus``, ``hir_clamped_species``: the fraction of the level's
        positive pairs whose loss the clamp raised on this rank's batch (NaN when the level is inactive; drop
        those for logging with :func:`loggable_parts`).

    Raises:
        ValueError: a needed input is missing or has the wrong shape, or no term can be computed.
    """
    if not isinstance(cfg, LossConfig):
        raise TypeError(f"cfg must be a LossConfig, got {type(cfg).__name__}")
    if curvature is not None:
        conflicts = cfg.lorentz_conflicts()
        if conflicts:
            raise ValueError(f"the Lorentz geometry trains CLIBD only; unsupported: {', '.join(conflicts)}")
        if present is not None and not all(bool(flags.all()) for flags in present.values()):
            raise ValueError("the Lorentz geometry cannot leave dropped modalities out of its loss (data.noise_drop=0)")
        scale = 1.0 / cfg.tau if logit_scale is None else logit_scale
        return hyperbolic_objective(outputs, text_ids, labels, cfg.hyperbolic(), curvature, scale)
    features: dict[str, Tensor] = {}
    batch: int | None = None
    dim: int | None = None
    for key in ("image", "dna", "text", "fused"):
        value = outputs.get(key)
        if value is not None:
            features[key] = _check_features(f"outputs[{key!r}]", value, batch, dim)
            batch, dim = value.shape[0], value.shape[1]

    rows = None if present is None else _present_rows(present, features, batch)
    if rows is not None and "fused" in features:
        features["fused"] = _fallback_fused(features, rows)

    pairs = [
        ("image_dna", "image", "dna", cfg.image_dna_weight),
        ("image_text", "image", "text", cfg.image_text_weight),
        ("dna_text", "dna", "text", cfg.dna_text_weight),
    ]
    pairs = [p for p in pairs if p[1] in features and p[2] in features and p[3] > 0]
    fuse = cfg.uses_fusion and cfg.fusion_weight > 0
    if fuse:
        for key in ("fused", "text"):
            if key not in features:
                raise ValueError(f"objective {cfg.objective!r} needs outputs[{key!r}] for the fusion loss")

    ids_local: Tensor | None = None
    if cfg.multi_positive and (pairs or fuse):
        if text_ids is None:
            raise ValueError("multi_positive=True needs text_ids (one taxonomy-string id per sample)")
        ids_local = _check_ids("text_ids", text_ids, batch).to(device=next(iter(features.values())).device)

    scale = _as_logit_scale(1.0 / cfg.tau if logit_scale is None else logit_scale)

    shares: dict[str, Tensor] = {}
    if pairs or fuse:
        first = next(iter(features.values()))
        layout = _layout(first.shape[0], first.device, cfg.gather)
        ids_global = None if ids_local is None else _gather_ids(ids_local, layout)
        # text_anchor: text rows over gathered fused candidates; fused_anchor: fused rows over gathered text.
        fuse_anchor, fuse_candidate = ("text", "fused") if cfg.fusion_direction == "text_anchor" else ("fused", "text")
        needed = {m for _, a, b, _ in pairs for m in (a, b)} | ({fuse_candidate} if fuse else set())
        # Each modality is gathered once and shared by the terms that use it.
        global_features = {key: _gather_features(features[key], layout) for key in features if key in needed}
        present_global = None if rows is None else {
            key: _gather_ids(flags.long(), layout).bool() for key, flags in rows.items()}
        for name, a, b, _ in pairs:
            a_local, b_local = features[a], features[b]
            a_global, b_global = global_features[a], global_features[b]
            if name == "image_dna" and cfg.detach_dna_in_id:
                b_local, b_global = b_local.detach(), b_global.detach()
            if present_global is None:
                shares[name] = _pair_shares(a_local, b_local, a_global, b_global, ids_local, ids_global, scale, layout)
                continue
            keep, keep_global = rows[a] & rows[b], present_global[a] & present_global[b]
            sub = _sub_layout(layout, keep_global)
            shares[name] = (a_local.sum() + b_local.sum()) * 0.0 if sub.n_global == 0 else _pair_shares(
                a_local[keep], b_local[keep], a_global[keep_global], b_global[keep_global], _rows_of(ids_local, keep),
                _rows_of(ids_global, keep_global), scale, sub)
        if fuse:
            anchors, candidates = features[fuse_anchor], global_features[fuse_candidate]
            sub, a_ids, c_ids = layout, ids_local, ids_global
            if present_global is not None:  # rows without image and DNA have no fused query
                keep, keep_global = rows["image"] | rows["dna"], present_global["image"] | present_global["dna"]
                sub = _sub_layout(layout, keep_global)
                anchors, candidates = anchors[keep], candidates[keep_global]
                a_ids, c_ids = _rows_of(ids_local, keep), _rows_of(ids_global, keep_global)
            fused_sum = _directed_row_loss_sum(anchors, candidates, a_ids, c_ids, scale, sub.start)
            shares["fuse"] = fused_sum * 0.0 if sub.n_global == 0 else fused_sum / sub.n_global
        terms = _globalise(shares, layout)
    else:
        terms = {}

    parts: dict[str, Tensor] = {}
    total: Tensor | None = None
    if pairs:
        clip = sum(weight * terms[name] for name, _, _, weight in pairs)
        total = clip
        parts.update({name: terms[name].detach() for name, _, _, _ in pairs})
        parts["clip"] = clip.detach()

    if cfg.uses_hir and cfg.hir_weight > 0:
        views_key = _VIEWS_KEY[cfg.hir_modality]
        views = outputs.get(views_key)
        if views is None:
            raise ValueError(
                f"objective {cfg.objective!r} with hir_modality={cfg.hir_modality!r} needs outputs[{views_key!r}]"
            )
        if labels is None:
            raise ValueError(f"objective {cfg.objective!r} needs labels [B, 4] for HiR")
        if batch is not None and views.shape[0] != batch:
            raise ValueError(f"outputs[{views_key!r}] has batch size {views.shape[0]}, expected {batch}")
        if rows is not None:  # views of a dropped modality are blanks: HiR sees the others
            keep = rows[cfg.hir_modality]
            views, labels = views[keep], labels[keep.to(labels.device)]
        if len(views) == 0:  # every view is a blank: nothing to learn (the zero keeps the graph whole for DDP)
            hir, stats = views.sum() * 0.0, {}
        else:
            # HiR is computed on the local batch: the hierarchical sampler puts relatives in the same rank's batch.
            hir, stats = hir_loss(views, labels, tau=cfg.tau, mode=cfg.hir_mode, max_scope=cfg.hir_max_scope,
                                  return_stats=True)
        parts["hir"] = hir.detach()
        parts.update({f"hir_clamped_{level}": stats[level] for level in _CLAMP_LOGGED if level in stats})
        total = cfg.hir_weight * hir if total is None else total + cfg.hir_weight * hir

    if fuse:
        parts["fuse"] = terms["fuse"].detach()
        total = cfg.fusion_weight * terms["fuse"] if total is None else total + cfg.fusion_weight * terms["fuse"]

    if total is None:
        raise ValueError(
            f"objective {cfg.objective!r}: no loss term can be computed from outputs with keys "
            f"{sorted(k for k, v in outputs.items() if v is not None)}; L_clip needs at least two of "
            "'image', 'dna', 'text'"
        )
    return total, parts


def _present_rows(present: Mapping[str, Tensor], features: Mapping[str, Tensor], batch: int | None
                  ) -> dict[str, Tensor]:
    """``present`` checked, with every modality (text too) as a bool ``[B]`` on the features' device."""
    unknown = set(present) - set(_VIEWS_KEY)
    if unknown:
        raise ValueError(f"present has unknown modalities {sorted(unknown)}; valid: {sorted(_VIEWS_KEY)}")
    device = next(iter(features.values())).device
    rows = {}
    for key in ("image", "dna", "text"):
        flags = present.get(key)
        if flags is None:
            rows[key] = torch.ones(batch, dtype=torch.bool, device=device)
            continue
        if not isinstance(flags, Tensor) or flags.dtype != torch.bool or tuple(flags.shape) != (batch,):
            raise ValueError(f"present[{key!r}] must be a bool tensor of shape [{batch}], got {flags!r}")
        rows[key] = flags.to(device)
    return rows


def _fallback_fused(features: Mapping[str, Tensor], rows: Mapping[str, Tensor]) -> Tensor:
    """The fused embeddings, with a row that lost one modality given the other one's embedding instead."""
    fused = features["fused"]
    fused = torch.where((rows["image"] & ~rows["dna"])[:, None], features["image"], fused)
    return torch.where((rows["dna"] & ~rows["image"])[:, None], features["dna"], fused)


def _sub_layout(layout: _Layout, keep_global: Tensor) -> _Layout:
    """The layout of the rows ``keep_global`` [n_global] selects: per rank, how many of its rows are kept."""
    counts = [int(part.sum()) for part in keep_global.split(list(layout.sizes))]
    return _Layout(rank=layout.rank, world=layout.world, sizes=tuple(counts))


def _rows_of(ids: Tensor | None, keep: Tensor) -> Tensor | None:
    return None if ids is None else ids[keep]


def loggable_parts(parts: Mapping[str, Tensor]) -> dict[str, float]:
    """``parts`` of :func:`compute_loss` as floats for a metrics log, without the clamp fractions of levels that
    were inactive in the batch (NaN). A NaN loss term is kept: it must show."""
    values = {key: float(value) for key, value in parts.items()}
    return {key: v for key, v in values.items() if not (key.startswith("hir_clamped_") and math.isnan(v))}
