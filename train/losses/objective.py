"""The training objectives CLIBD, CLIBD-HiR and CLIBD-HiR-Fuse (METHOD.md section 3)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

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
    _layout,
    _pair_shares,
)
from train.losses.hir import HIR_MODES, hir_loss

OBJECTIVES = ("clibd", "clibd-hir", "clibd-hir-fuse")
HIR_MODALITIES = ("image", "dna")

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
        hir_mode: ``"paper"`` or ``"hmce"`` (see :func:`hir_loss`).
        hir_modality: ``"image"`` (HiR on ``image_views``) or ``"dna"`` (on ``dna_views``).
        image_dna_weight, image_text_weight, dna_text_weight: per-pair weights in L_clip.
        A zero weight (pair, lambda or gamma) skips its term: it is neither computed nor logged.
        detach_dna_in_id: the authors' code quirk: DNA receives no gradient from the image-DNA term.
        gather: all-gather features across ranks under DDP (negatives from the global batch).
    """

    objective: str = "clibd-hir"
    tau: float = DEFAULT_TAU
    multi_positive: bool = True
    hir_weight: float = 0.01
    fusion_weight: float = 1.0
    hir_mode: str = "paper"
    hir_modality: str = "image"
    image_dna_weight: float = 1.0
    image_text_weight: float = 1.0
    dna_text_weight: float = 1.0
    detach_dna_in_id: bool = False
    gather: bool = True

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; valid objectives: {', '.join(OBJECTIVES)}")
        if self.hir_mode not in HIR_MODES:
            raise ValueError(f"unknown hir_mode {self.hir_mode!r}; valid modes: {', '.join(HIR_MODES)}")
        if self.hir_modality not in HIR_MODALITIES:
            raise ValueError(
                f"unknown hir_modality {self.hir_modality!r}; valid modalities: {', '.join(HIR_MODALITIES)}"
            )
        if not self.tau > 0:
            raise ValueError(f"tau must be positive, got {self.tau}")
        for name in ("hir_weight", "fusion_weight", "image_dna_weight", "image_text_weight", "dna_text_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")

    @property
    def uses_hir(self) -> bool:
        return self.objective in ("clibd-hir", "clibd-hir-fuse")

    @property
    def uses_fusion(self) -> bool:
        return self.objective == "clibd-hir-fuse"


def compute_loss(
    outputs: Mapping[str, Tensor | None],
    text_ids: Tensor | None,
    labels: Tensor | None,
    cfg: LossConfig,
    logit_scale: Tensor | float | None = None,
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

    Returns:
        ``(total, parts)``: the loss to back-propagate, and the detached terms for logging: the unweighted
        pair losses ``image_dna``, ``image_text``, ``dna_text`` (those computed), their weighted sum ``clip``,
        and, per objective, the unweighted ``hir`` and ``fuse``.

    Raises:
        ValueError: a needed input is missing or has the wrong shape, or no term can be computed.
    """
    if not isinstance(cfg, LossConfig):
        raise TypeError(f"cfg must be a LossConfig, got {type(cfg).__name__}")
    features: dict[str, Tensor] = {}
    batch: int | None = None
    dim: int | None = None
    for key in ("image", "dna", "text", "fused"):
        value = outputs.get(key)
        if value is not None:
            features[key] = _check_features(f"outputs[{key!r}]", value, batch, dim)
            batch, dim = value.shape[0], value.shape[1]

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
        needed = {m for _, a, b, _ in pairs for m in (a, b)} | ({"fused"} if fuse else set())
        # Each modality is gathered once and shared by the terms that use it.
        global_features = {key: _gather_features(features[key], layout) for key in features if key in needed}
        for name, a, b, _ in pairs:
            a_local, b_local = features[a], features[b]
            a_global, b_global = global_features[a], global_features[b]
            if name == "image_dna" and cfg.detach_dna_in_id:
                b_local, b_global = b_local.detach(), b_global.detach()
            shares[name] = _pair_shares(a_local, b_local, a_global, b_global, ids_local, ids_global, scale, layout)
        if fuse:
            fused_sum = _directed_row_loss_sum(
                features["text"], global_features["fused"], ids_local, ids_global, scale, layout.start
            )
            shares["fuse"] = fused_sum / layout.n_global
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
        # HiR is computed on the local batch: the hierarchical sampler puts relatives in the same rank's batch.
        hir = hir_loss(views, labels, tau=cfg.tau, mode=cfg.hir_mode)
        parts["hir"] = hir.detach()
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
