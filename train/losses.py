"""Training losses: cross-modal contrastive (rank-gathered), HiR (paper and hmce), fusion, objectives.

The specification is ``docs/METHOD.md`` sections 1-4. Public API:

* :func:`contrastive_loss` -- symmetric InfoNCE ``L(a, b)`` with multi-positive targets, DDP-gathered.
* :func:`directed_contrastive_loss` -- one direction ``L(anchors -> candidates)``.
* :func:`fusion_loss` -- ``L(text -> fused)``, the fusion term of CLIBD-HiR-Fuse.
* :func:`hir_loss` -- Hierarchical Information Regularization, ``mode="paper"`` or ``"hmce"``.
* :class:`LossConfig` and :func:`compute_loss` -- the three objectives (CLIBD, CLIBD-HiR, CLIBD-HiR-Fuse).

Distributed training: when ``torch.distributed`` is initialised with more than one rank and gathering is on,
every rank passes its *local* batch. Features (and taxonomy-string ids) are all-gathered so that the negatives
come from the global batch; each rank scores only its own anchor rows. The returned value is the loss of the
whole global batch (identical on every rank), and its gradient is scaled so that after DDP *averages*
gradients across ranks the update equals the single-process gradient of the global-batch loss.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "HIR_MODES",
    "LEVELS",
    "OBJECTIVES",
    "LossConfig",
    "compute_loss",
    "contrastive_loss",
    "directed_contrastive_loss",
    "fusion_loss",
    "hir_loss",
]

DEFAULT_TAU = 0.07
LEVELS = ("order", "family", "genus", "species")
HIR_MODES = ("paper", "hmce")
OBJECTIVES = ("clibd", "clibd-hir", "clibd-hir-fuse")
HIR_MODALITIES = ("image", "dna")

# Which model output feeds HiR for each ``LossConfig.hir_modality``.
_VIEWS_KEY = {"image": "image_views", "dna": "dna_views"}


# --------------------------------------------------------------------------------------------------------------
# Distributed helpers
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    """Where this rank's rows sit in the global batch (rank-major concatenation of the local batches)."""

    rank: int
    world: int
    sizes: tuple[int, ...]

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def start(self) -> int:
        return sum(self.sizes[: self.rank])

    @property
    def n_local(self) -> int:
        return self.sizes[self.rank]

    @property
    def n_global(self) -> int:
        return sum(self.sizes)


def _layout(n_local: int, device: torch.device, gather: bool) -> _Layout:
    """The global-batch layout; exchanges the local batch sizes so that ranks may hold unequal batches."""
    if not (gather and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return _Layout(rank=0, world=1, sizes=(n_local,))
    world = dist.get_world_size()
    # NCCL only moves CUDA tensors, so the size exchange lives on the features' device.
    size = torch.tensor([n_local], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    return _Layout(rank=dist.get_rank(), world=world, sizes=tuple(torch.cat(sizes).tolist()))


def _pad_rows(x: Tensor, rows: int) -> Tensor:
    """``x`` with zero rows appended up to ``rows`` (collectives need equal shapes on every rank)."""
    if x.shape[0] == rows:
        return x
    return torch.cat([x, x.new_zeros((rows - x.shape[0], *x.shape[1:]))])


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns to each rank the gradient of its own slice, summed over
    the ranks (every rank used every slice in its loss)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        ctx.rows = x.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        # An all-reduce works on every backend (gloo has no reduce-scatter); the gathered embeddings are
        # small next to the model, so the extra traffic is negligible.
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce is in place: never touch autograd's
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def _gather_features(x: Tensor, layout: _Layout) -> Tensor:
    """All-gather ``x`` [n_local, d] into [n_global, d]; the gradient reaches the local slice on every rank.

    In backward each rank receives, for its own rows, the *sum* over all ranks of the gradients of their
    losses: the scaling in :func:`_globalise` relies on it.
    """
    if not layout.distributed:
        return x
    padded_rows = max(layout.sizes)
    gathered = _AllGatherWithGrad.apply(_pad_rows(x, padded_rows))
    keep = torch.cat([torch.arange(n, device=x.device) + r * padded_rows for r, n in enumerate(layout.sizes)])
    return gathered[keep]


def _gather_ids(ids: Tensor, layout: _Layout) -> Tensor:
    """All-gather integer ids [n_local] into [n_global] (no gradient)."""
    if not layout.distributed:
        return ids
    padded = _pad_rows(ids, max(layout.sizes))
    parts = [torch.empty_like(padded) for _ in range(layout.world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, layout.sizes)])


def _globalise(contributions: dict[str, Tensor], layout: _Layout) -> dict[str, Tensor]:
    """Turn each rank's share of a global-batch loss into that loss, with DDP-correct gradients.

    ``contributions[k]`` is this rank's share ``c_r`` of loss ``k`` (the shares of all ranks sum to the
    global-batch loss ``L``). DDP averages gradients over the W ranks, so each rank back-propagates
    ``W * c_r``: the average of the ranks' gradients is then ``sum_r grad c_r = grad L``. The value is
    replaced by ``L`` itself (one all-reduce of the detached shares) so that every rank logs the same,
    single-process number.
    """
    if not layout.distributed or not contributions:
        return contributions
    keys = list(contributions)
    scaled = {k: contributions[k] * layout.world for k in keys}
    # Reduce in at least float32 (a bf16 sum of shares would lose the logged value's precision).
    dtype = torch.float64 if any(c.dtype == torch.float64 for c in contributions.values()) else torch.float32
    totals = torch.stack([contributions[k].detach().to(dtype) for k in keys])
    dist.all_reduce(totals)
    return {k: scaled[k] + (totals[i].to(scaled[k].dtype) - scaled[k].detach()) for i, k in enumerate(keys)}


# --------------------------------------------------------------------------------------------------------------
# Cross-modal contrastive loss (METHOD.md section 1) and fusion loss (section 4)
# --------------------------------------------------------------------------------------------------------------


def _as_logit_scale(logit_scale: Tensor | float) -> Tensor | float:
    if isinstance(logit_scale, Tensor):
        if logit_scale.numel() != 1:
            raise ValueError(f"logit_scale must be a scalar (1/tau), got a tensor of shape {tuple(logit_scale.shape)}")
        return logit_scale.reshape(())
    if not logit_scale > 0:
        raise ValueError(f"logit_scale must be positive (it is 1/tau), got {logit_scale}")
    return float(logit_scale)


def _check_features(name: str, x: object, batch: int | None = None, dim: int | None = None) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape [B, d], got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if batch is not None and x.shape[0] != batch:
        raise ValueError(f"{name} has batch size {x.shape[0]}, expected {batch} (all inputs share one batch)")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} has embedding dim {x.shape[1]}, expected {dim}")
    return x


def _check_ids(name: str, ids: object, batch: int) -> Tensor:
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(ids).__name__}")
    if ids.dim() != 1 or ids.shape[0] != batch:
        raise ValueError(f"{name} must have shape [{batch}] (one id per sample), got {tuple(ids.shape)}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {ids.dtype}")
    return ids


def _directed_row_loss_sum(
    anchors: Tensor,
    candidates: Tensor,
    anchor_ids: Tensor | None,
    candidate_ids: Tensor | None,
    logit_scale: Tensor | float,
    offset: int,
) -> Tensor:
    """Sum over the (local) anchor rows of ``-mean_{p in P(i)} log softmax_j(s * a_i . c_j)_p``.

    ``candidates`` is the global batch and anchor row i is global row ``offset + i``. With ids, the positives
    of an anchor are all candidates with the same id (itself included); without ids, only itself.
    """
    logits = logit_scale * anchors @ candidates.T
    log_prob = F.log_softmax(logits, dim=1)
    if anchor_ids is None or candidate_ids is None:
        own = torch.arange(anchors.shape[0], device=anchors.device) + offset
        return -log_prob.gather(1, own[:, None]).sum()
    positive = anchor_ids[:, None] == candidate_ids[None, :]
    per_row = torch.where(positive, log_prob, 0.0).sum(1) / positive.sum(1)
    return -per_row.sum()


def _pair_shares(
    a_local: Tensor,
    b_local: Tensor,
    a_global: Tensor,
    b_global: Tensor,
    ids_local: Tensor | None,
    ids_global: Tensor | None,
    logit_scale: Tensor | float,
    layout: _Layout,
) -> Tensor:
    """This rank's share of the symmetric loss ``(L(a->b) + L(b->a)) / 2`` over the global batch."""
    forward = _directed_row_loss_sum(a_local, b_global, ids_local, ids_global, logit_scale, layout.start)
    backward = _directed_row_loss_sum(b_local, a_global, ids_local, ids_global, logit_scale, layout.start)
    return (forward + backward) / (2 * layout.n_global)


def contrastive_loss(
    a: Tensor,
    b: Tensor,
    text_ids: Tensor | None = None,
    logit_scale: Tensor | float = 1.0 / DEFAULT_TAU,
    *,
    gather: bool = True,
) -> Tensor:
    """Symmetric InfoNCE ``L(a, b) = (L(a->b) + L(b->a)) / 2`` between two modalities (METHOD.md section 1).

    Args:
        a, b: L2-normalised embeddings [B, d]; row i of ``a`` and row i of ``b`` describe the same specimen.
        text_ids: long [B], the id of each sample's taxonomy string. Given, all samples with the same id are
            positives of each other (SupCon-style: the anchor's loss is the mean of ``-log p`` over its
            positives). ``None``: plain one-positive InfoNCE.
        logit_scale: ``1 / tau``; a tensor (e.g. a learnable model parameter, already exponentiated) receives
            a gradient.
        gather: under an initialised process group with more than one rank, all-gather the features so the
            negatives come from the global batch (see the module docstring for the gradient scaling).

    Returns:
        A scalar tensor: the loss of the global batch.
    """
    a = _check_features("a", a)
    b = _check_features("b", b, a.shape[0], a.shape[1])
    if text_ids is not None:
        text_ids = _check_ids("text_ids", text_ids, a.shape[0])
    scale = _as_logit_scale(logit_scale)
    layout = _layout(a.shape[0], a.device, gather)
    ids_global = None if text_ids is None else _gather_ids(text_ids, layout)
    share = _pair_shares(
        a, b, _gather_features(a, layout), _gather_features(b, layout), text_ids, ids_global, scale, layout
    )
    return _globalise({"loss": share}, layout)["loss"]


def directed_contrastive_loss(
    anchors: Tensor,
    candidates: Tensor,
    text_ids: Tensor | None = None,
    logit_scale: Tensor | float = 1.0 / DEFAULT_TAU,
    *,
    gather: bool = True,
) -> Tensor:
    """Directed InfoNCE ``L(anchors -> candidates)``: each anchor row is softmaxed over the candidates.

    Arguments as :func:`contrastive_loss`. Under gathering only the candidates need to be global; each
    rank scores its own anchors.
    """
    anchors = _check_features("anchors", anchors)
    candidates = _check_features("candidates", candidates, anchors.shape[0], anchors.shape[1])
    if text_ids is not None:
        text_ids = _check_ids("text_ids", text_ids, anchors.shape[0])
    scale = _as_logit_scale(logit_scale)
    layout = _layout(anchors.shape[0], anchors.device, gather)
    ids_global = None if text_ids is None else _gather_ids(text_ids, layout)
    total = _directed_row_loss_sum(
        anchors, _gather_features(candidates, layout), text_ids, ids_global, scale, layout.start
    )
    return _globalise({"loss": total / layout.n_global}, layout)["loss"]


def fusion_loss(
    fused: Tensor,
    text: Tensor,
    text_ids: Tensor | None = None,
    logit_scale: Tensor | float = 1.0 / DEFAULT_TAU,
    *,
    gather: bool = True,
) -> Tensor:
    """``L_fuse = L(text -> fused)`` (METHOD.md Eq. 11): rows are the text embeddings, softmax over fused ones.

    Same temperature and positives as the cross-modal terms; arguments as :func:`contrastive_loss`.
    """
    return directed_contrastive_loss(text, fused, text_ids, logit_scale, gather=gather)


# --------------------------------------------------------------------------------------------------------------
# HiR (METHOD.md section 2)
# --------------------------------------------------------------------------------------------------------------


def _check_hir_inputs(views: object, labels: object, tau: float, mode: str) -> None:
    if mode not in HIR_MODES:
        raise ValueError(f"unknown HiR mode {mode!r}; valid modes: {', '.join(HIR_MODES)}")
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    if not isinstance(views, Tensor) or not isinstance(labels, Tensor):
        raise TypeError("views and labels must be tensors")
    if views.dim() != 3 or views.shape[1] != 2 or views.shape[0] < 1:
        raise ValueError(
            f"views must have shape [B, 2, d] with B >= 1 (two views per specimen), got {tuple(views.shape)}"
        )
    if not views.is_floating_point():
        raise TypeError(f"views must be a floating-point tensor, got {views.dtype}")
    if labels.shape != (views.shape[0], len(LEVELS)):
        raise ValueError(
            f"labels must have shape [B, 4] = [{views.shape[0]}, 4] (order, family, genus, species), "
            f"got {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor (-1 = unknown), got {labels.dtype}")
    if labels.numel() and int(labels.min()) < -1:
        raise ValueError(f"labels must be >= -1 (-1 = unknown), got a minimum of {int(labels.min())}")


def _view_pair_losses(views: Tensor, tau: float, columns: Tensor | None = None) -> Tensor:
    """``ell(a, k) = -log(exp(s_ak) / sum_{k' != a, k' in columns} exp(s_ak'))`` for all view pairs.

    Views are flattened specimen-major (view row ``2 i + v``). ``columns`` [2B] bool restricts the
    denominator to a subset of the views (hmce's de-duplicated batch); the self-similarity never counts.
    """
    z = views.reshape(-1, views.shape[-1])
    sim = z @ z.T / tau
    excluded = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    if columns is not None:
        excluded = excluded | ~columns[None, :]
    log_denominator = torch.logsumexp(sim.masked_fill(excluded, float("-inf")), dim=1, keepdim=True)
    return log_denominator - sim


def _positive_masks(labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-level positive masks over view pairs, and which levels have any cross-specimen positive.

    Returns ``positive`` [4, 2B, 2B] (the other view of the same specimen, plus every view of every *other*
    specimen with the same known label at that level) and ``shared`` [4] (at least two distinct specimens
    share a known label at that level).
    """
    n_views = 2 * labels.shape[0]
    specimen = torch.arange(n_views, device=labels.device) // 2
    y = labels[specimen].T  # [4, 2B]: the level labels of each view
    same_specimen = specimen[:, None] == specimen[None, :]
    other_view = same_specimen & ~torch.eye(n_views, dtype=torch.bool, device=labels.device)
    relatives = (y[:, :, None] == y[:, None, :]) & (y[:, :, None] >= 0) & ~same_specimen
    return other_view | relatives, relatives.flatten(1).any(1)


def _mean_over_positives(pair_loss: Tensor, positive: Tensor, anchors: Tensor | None = None) -> Tensor:
    """``mean_a mean_{p in P(a)} pair_loss(a, p)`` over the anchor rows selected by ``anchors`` (default all)."""
    per_anchor = torch.where(positive, pair_loss, 0.0).sum(1) / positive.sum(1).clamp(min=1)
    if anchors is None:
        return per_anchor.mean()
    return (per_anchor * anchors).sum() / anchors.sum().clamp(min=1)


def _hir_paper(views: Tensor, labels: Tensor, tau: float) -> Tensor:
    """METHOD.md Eq. 3-7 with uniform weights, levels order -> species."""
    pair_loss = _view_pair_losses(views, tau)  # level-independent (Eq. 3)
    positive, active = _positive_masks(labels)
    total = views.new_zeros(())
    n_active = views.new_zeros(())
    # M of the nearest coarser active level; -inf until a level is active, so that max(ell, M) = ell there.
    coarser_max = views.new_full((), float("-inf"))
    # Activity stays on the device (no host sync): an inactive level adds nothing and leaves M untouched.
    for level in range(len(LEVELS)):
        rectified = torch.maximum(pair_loss, coarser_max)
        level_loss = _mean_over_positives(rectified, positive[level])
        level_max = rectified.masked_fill(~positive[level], float("-inf")).amax()
        total = total + torch.where(active[level], level_loss, 0.0)
        n_active = n_active + active[level]
        coarser_max = torch.where(active[level], level_max, coarser_max)
    # No active level: 0 * sum(views) keeps the result attached to the graph so backward still works.
    return torch.where(n_active > 0, total / n_active.clamp(min=1), 0.0) + 0.0 * views.sum()


def _hir_hmce(views: Tensor, labels: Tensor, tau: float) -> Tensor:
    """The authors' code: batch-mean SupCon per level, species -> order, lifted to the running max of the finer
    levels, weights 2^(1/k), de-duplication after each level, divided by the number of active levels."""
    batch = labels.shape[0]
    device = labels.device
    positive_all, _ = _positive_masks(labels)
    earlier = torch.ones(batch, batch, dtype=torch.bool, device=device).tril(-1)  # [i, j]: j before i
    kept = torch.ones(batch, dtype=torch.bool, device=device)  # specimens still in the batch
    total = views.new_zeros(())
    n_active = views.new_zeros(())
    finer_max = views.new_full((), float("-inf"))
    # The de-duplicated batch is a mask, not a gather, so there is no host sync; a dropped specimen neither
    # anchors nor appears in any denominator.
    for k, level in enumerate(reversed(range(len(LEVELS))), start=1):
        y = labels[:, level]
        kept_views = kept.repeat_interleave(2)
        active = (kept & (y >= 0)).any()
        pair_loss = _view_pair_losses(views, tau, columns=kept_views)
        positive = positive_all[level] & kept_views[:, None] & kept_views[None, :]
        level_loss = torch.maximum(_mean_over_positives(pair_loss, positive, kept_views), finer_max)
        total = total + torch.where(active, (2.0 ** (1.0 / k)) * level_loss, 0.0)
        n_active = n_active + active
        finer_max = torch.where(active, level_loss, finer_max)
        # Keep unknown rows and, of the kept rows sharing a known label, the first in batch order.
        same = (y[:, None] == y[None, :]) & kept[None, :] & earlier
        kept = kept & ~((y >= 0) & same.any(1))
    return torch.where(n_active > 0, total / n_active.clamp(min=1), 0.0) + 0.0 * views.sum()


def hir_loss(views: Tensor, labels: Tensor, tau: float = DEFAULT_TAU, mode: str = "paper") -> Tensor:
    """Hierarchical Information Regularization (METHOD.md section 2).

    Args:
        views: float [B, 2, d], two L2-normalised views (augmentations) per specimen.
        labels: long [B, 4], (order, family, genus, species) ids per specimen; -1 = unknown.
        tau: temperature of the pair loss.
        mode: ``"paper"`` -- Eq. 3-7: pair losses over all 2B-1 other views; positives of an anchor at level l
            are its other view plus every view of every other specimen with the same known label; levels run
            order -> species, a level is active when two distinct specimens share a known label at it; each
            pair loss of an active level is clamped from below by the largest (rectified) positive-pair loss
            of the nearest coarser active level (no detach); the result is the mean of the active levels'
            ``mean_a mean_p`` losses. ``"hmce"`` -- the authors' code: per-level SupCon batch means, species
            -> order, each coarser level lifted to the running max of the finer ones, weights 2^(1/k) for the
            k-th level (species 2, genus 2^(1/2), family 2^(1/3), order 2^(1/4)), summed over levels with a
            known label and divided by their number; after each level the batch is de-duplicated (rows with
            an unknown label kept, of the rows sharing a known label only the first in batch order).

    Returns:
        A scalar tensor. With no active level it is a zero that is still connected to ``views``.
    """
    _check_hir_inputs(views, labels, tau, mode)
    labels = labels.to(device=views.device, dtype=torch.long)
    if mode == "paper":
        return _hir_paper(views, labels, tau)
    return _hir_hmce(views, labels, tau)


# --------------------------------------------------------------------------------------------------------------
# Objectives (METHOD.md section 3)
# --------------------------------------------------------------------------------------------------------------


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
