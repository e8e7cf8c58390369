"""The fusion loss of CLIBD-HiR-Fuse (METHOD.md section 4, Eq. 11), in either direction."""

from __future__ import annotations

from torch import Tensor

from train.losses.contrastive import DEFAULT_TAU, directed_contrastive_loss

# text_anchor: the authors' code (text rows, softmax over the fused embeddings);
# fused_anchor: the paper's Eq. 11 (the fused embedding's "taxonomy logits" over the text candidates).
FUSION_DIRECTIONS = ("text_anchor", "fused_anchor")


def check_fusion_direction(direction: str) -> None:
    """Raise a ``ValueError`` listing the valid directions when ``direction`` is not one of them."""
    if direction not in FUSION_DIRECTIONS:
        raise ValueError(f"unknown fusion direction {direction!r}; valid directions: {', '.join(FUSION_DIRECTIONS)}")


def fusion_loss(
    fused: Tensor,
    text: Tensor,
    text_ids: Tensor | None = None,
    logit_scale: Tensor | float = 1.0 / DEFAULT_TAU,
    *,
    direction: str = "text_anchor",
    gather: bool = True,
) -> Tensor:
    """``L_fuse`` (METHOD.md Eq. 11) between the fused and the text embeddings.

    ``direction="text_anchor"`` (default, the authors' code): ``L(text -> fused)``, text rows softmaxed over the
    fused embeddings. ``"fused_anchor"`` (the paper's Eq. 11): ``L(fused -> text)``, each fused embedding
    softmaxed over the text candidates. Same temperature and (multi-)positives as the cross-modal terms;
    other arguments as :func:`train.losses.contrastive_loss`.
    """
    check_fusion_direction(direction)
    if direction == "text_anchor":
        return directed_contrastive_loss(text, fused, text_ids, logit_scale, gather=gather)
    return directed_contrastive_loss(fused, text, text_ids, logit_scale, gather=gather)
