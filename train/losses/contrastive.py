"""Cross-modal contrastive loss (METHOD.md section 1), rank-gathered under DDP.

Distributed training: when ``torch.distributed`` is initialised with more than one rank and gathering is on,
every rank passes its *local* batch. Features (and taxonomy-string ids) are all-gathered so that the negatives
come from the global batch; each rank scores only its own anchor rows. The returned value is the loss of the
whole global batch (identical on every rank), and its gradient is scaled so that after DDP *averages*
gradients across ranks the update equals the single-process gradient of the global-batch loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

DEFAULT_TAU = 0.07


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
# Cross-modal contrastive loss (METHOD.md section 1)
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


def _row_loss_sum(logits: Tensor, anchor_ids: Tensor | None, candidate_ids: Tensor | None, offset: int) -> Tensor:
    """Sum over anchor rows of ``-mean_{p in P(i)} log softmax_j(logits_i)_p`` (METHOD.md section 1 targets).

    Anchor row i is candidate ``offset + i``. With ids, the positives of an anchor are all candidates with the
    same id (itself included); without ids, only itself. Shared by the Euclidean (dot-product logits) and the
    hyperbolic (negative geodesic distance logits) losses.
    """
    log_prob = F.log_softmax(logits, dim=1)
    if anchor_ids is None or candidate_ids is None:
        own = torch.arange(logits.shape[0], device=logits.device) + offset
        return -log_prob.gather(1, own[:, None]).sum()
    positive = anchor_ids[:, None] == candidate_ids[None, :]
    per_row = torch.where(positive, log_prob, 0.0).sum(1) / positive.sum(1)
    return -per_row.sum()


def _directed_row_loss_sum(
    anchors: Tensor,
    candidates: Tensor,
    anchor_ids: Tensor | None,
    candidate_ids: Tensor | None,
    logit_scale: Tensor | float,
    offset: int,
) -> Tensor:
    """Sum over the (local) anchor rows of ``-mean_{p in P(i)} log softmax_j(s * a_i . c_j)_p``.

    ``candidates`` is the global batch and anchor row i is global row ``offset + i``.
    """
    return _row_loss_sum(logit_scale * anchors @ candidates.T, anchor_ids, candidate_ids, offset)


def _dot_logits(scale: Tensor | float) -> Callable[[Tensor, Tensor], Tensor]:
    """Logits of the Euclidean losses: ``scale * a_i . c_j`` (L2-normalised embeddings)."""
    return lambda anchors, candidates: scale * anchors @ candidates.T


def _pair_shares(
    a_local: Tensor,
    b_local: Tensor,
    a_global: Tensor,
    b_global: Tensor,
    ids_local: Tensor | None,
    ids_global: Tensor | None,
    logit_scale: Tensor | float,
    layout: _Layout,
    logits: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """This rank's share of the symmetric loss ``(L(a->b) + L(b->a)) / 2`` over the global batch.

    ``logits(anchors, candidates)`` defaults to the scaled dot product; the hyperbolic losses pass negative
    geodesic distances instead (METHOD.md section 9).
    """
    logits = logits or _dot_logits(logit_scale)
    forward = _row_loss_sum(logits(a_local, b_global), ids_local, ids_global, layout.start)
    backward = _row_loss_sum(logits(b_local, a_global), ids_local, ids_global, layout.start)
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
