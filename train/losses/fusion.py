"""The fusion loss of CLIBD-HiR-Fuse (METHOD.md section 4, Eq. 11)."""

from __future__ import annotations

from torch import Tensor

from train.losses.contrastive import DEFAULT_TAU, directed_contrastive_loss


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
