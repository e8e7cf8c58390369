"""Hierarchical Information Regularization, HiR (METHOD.md section 2)."""

from __future__ import annotations

import torch
from torch import Tensor

from hirviz.taxonomy import LEVELS
from train.losses.contrastive import DEFAULT_TAU

HIR_MODES = ("paper", "shared-denominator", "hmce")
HIR_MAX_SCOPES = ("batch", "anchor")


def check_hir_options(mode: str, max_scope: str) -> None:
    """Raise a ``ValueError`` naming the option when ``mode`` or ``max_scope`` is not a valid HiR setting."""
    if mode not in HIR_MODES:
        raise ValueError(f"unknown HiR mode {mode!r}; valid modes: {', '.join(HIR_MODES)}")
    if max_scope not in HIR_MAX_SCOPES:
        raise ValueError(f"unknown HiR max scope {max_scope!r}; valid scopes: {', '.join(HIR_MAX_SCOPES)}")
    if mode == "hmce" and max_scope != "batch":
        raise ValueError("HiR max scope 'anchor' applies to the pair-clamping modes (paper, shared-denominator); "
                         "hmce lifts level means, which have no per-anchor maximum")


def _check_hir_inputs(views: object, labels: object, tau: float, mode: str, max_scope: str) -> None:
    check_hir_options(mode, max_scope)
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


def _level_pair_losses(sim: Tensor, positive: Tensor) -> Tensor:
    """Eq. 3 with the level's own negatives: ``ell(a, p) = log(e^{s_ap} + sum_{n in N(a)} e^{s_an}) - s_ap``.

    ``sim`` [2B, 2B] holds ``s(a, k)``; ``positive`` [2B, 2B] is ``P_l``; ``N_l(a)`` is every other view that is
    not a positive. Only the entries at positives are meaningful.
    """
    eye = torch.eye(sim.shape[0], dtype=torch.bool, device=sim.device)
    negative = ~positive & ~eye
    has_negative = negative.any(1, keepdim=True)
    # A row without negatives (every other view is a positive) gets a finite dummy row, so that logsumexp never
    # sees an all -inf row (its gradient would be NaN); its result is then replaced by -inf (no negatives).
    masked = torch.where(negative, sim, float("-inf"))
    masked = torch.where(has_negative, masked, 0.0)
    log_negatives = torch.where(has_negative, torch.logsumexp(masked, dim=1, keepdim=True), float("-inf"))
    return torch.logaddexp(sim, log_negatives) - sim


def _hir_rectified(
    views: Tensor, labels: Tensor, tau: float, per_level_negatives: bool, max_scope: str
) -> tuple[Tensor, Tensor]:
    """METHOD.md Eq. 3-7 with uniform weights, levels order -> species.

    ``per_level_negatives``: the paper's pair loss (positive + ``N_l(a)`` in the denominator); else the
    ``shared-denominator`` ablation (all 2B-1 other views, the same pair loss at every level). Returns the loss
    and, per level, the fraction of positive pairs whose loss the clamp of Eq. 6 raised (NaN: level inactive).
    """
    positive, active = _positive_masks(labels)
    z = views.reshape(-1, views.shape[-1])
    sim = z @ z.T / tau
    shared = None if per_level_negatives else _view_pair_losses(views, tau)
    total = views.new_zeros(())
    n_active = views.new_zeros(())
    clamped = []
    # M of the nearest coarser active level: a scalar (batch scope) or one value per anchor row (anchor scope);
    # -inf until a level is active, so that max(ell, M) = ell there.
    shape = () if max_scope == "batch" else (z.shape[0], 1)
    coarser_max = views.new_full(shape, float("-inf"))
    # Activity stays on the device (no host sync): an inactive level adds nothing and leaves M untouched.
    for level in range(len(LEVELS)):
        pos = positive[level]
        pair_loss = shared if shared is not None else _level_pair_losses(sim, pos)
        rectified = torch.maximum(pair_loss, coarser_max)
        level_loss = _mean_over_positives(rectified, pos)
        at_positives = rectified.masked_fill(~pos, float("-inf"))
        level_max = at_positives.amax() if max_scope == "batch" else at_positives.amax(1, keepdim=True)
        total = total + torch.where(active[level], level_loss, 0.0)
        n_active = n_active + active[level]
        coarser_max = torch.where(active[level], level_max, coarser_max)
        with torch.no_grad():
            raised = ((rectified > pair_loss) & pos).sum().to(views.dtype)  # pairs the clamp raised
            share = raised / pos.sum().to(views.dtype)
        clamped.append(torch.where(active[level], share, float("nan")))
    # No active level: 0 * sum(views) keeps the result attached to the graph so backward still works.
    loss = torch.where(n_active > 0, total / n_active.clamp(min=1), 0.0) + 0.0 * views.sum()
    return loss, torch.stack(clamped)


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


def hir_loss(
    views: Tensor,
    labels: Tensor,
    tau: float = DEFAULT_TAU,
    mode: str = "paper",
    max_scope: str = "batch",
    *,
    return_stats: bool = False,
) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
    """Hierarchical Information Regularization (METHOD.md section 2).

    Args:
        views: float [B, 2, d], two L2-normalised views (augmentations) per specimen.
        labels: long [B, 4], (order, family, genus, species) ids per specimen; -1 = unknown.
        tau: temperature of the pair loss.
        mode: ``"paper"`` -- Eq. 3-7. The positives ``P_l(a)`` of anchor view a at level l are its other view
            plus every view of every other specimen with the same *known* level-l label; the negatives
            ``N_l(a)`` are every other view not in ``P_l(a)``, and the pair loss (Eq. 3) has only the positive
            and ``N_l(a)`` in its denominator, so it grows from order to species. Levels run order -> species;
            a level is active when two distinct specimens share a known label at it (inactive levels are
            skipped); each pair loss of an active level is clamped from below by ``M``, the largest rectified
            positive-pair loss of the nearest coarser active level (no detach; no clamp for the first active
            level); the result is the mean over active levels of ``mean_a mean_{p in P_l(a)}`` of the
            rectified losses. ``"shared-denominator"`` -- an ablation (METHOD.md's erratum): the same, but every
            pair loss has all 2B-1 other views in its denominator, so it does not depend on the level and the
            clamp pins every finer level to ``M_order``. ``"hmce"`` -- the authors' code: per-level SupCon
            batch means, species -> order, each coarser level lifted to the running max of the finer ones,
            weights 2^(1/k) for the k-th level (species 2, genus 2^(1/2), family 2^(1/3), order 2^(1/4)),
            summed over levels with a known label and divided by their number; after each level the batch is
            de-duplicated (rows with an unknown label kept, of the rows sharing a known label only the first in
            batch order).
        max_scope: where ``M`` of Eq. 5 is taken (``paper`` and ``shared-denominator``): ``"batch"`` -- over all
            positive pairs of the level (the paper); ``"anchor"`` -- ``M(a)`` over anchor a's own positives only
            (HiConE's per-anchor maximum).
        return_stats: also return ``{level: fraction}``, per level the share of positive pairs whose loss the
            clamp raised (0-dim tensors; NaN for an inactive level; empty for ``hmce``, which clamps no pairs).

    Returns:
        A scalar tensor (or ``(loss, stats)``). With no active level it is a zero that is still connected to
        ``views``.
    """
    _check_hir_inputs(views, labels, tau, mode, max_scope)
    labels = labels.to(device=views.device, dtype=torch.long)
    stats: dict[str, Tensor] = {}
    if mode == "hmce":
        loss = _hir_hmce(views, labels, tau)
    else:
        loss, clamped = _hir_rectified(views, labels, tau, mode == "paper", max_scope)
        stats = {level: clamped[i].detach() for i, level in enumerate(LEVELS)}
    return (loss, stats) if return_stats else loss
