"""The four queries a specimen can ask (METHOD.md sections 4 and 8), and how the two combined ones are made.

``image`` (z_I) and ``dna`` (z_D) come straight from the towers; ``avg`` = normalize(z_I + z_D) and ``fused`` (the
gated fusion z_F) are composed from them by :func:`compose_queries`, the one place that does it for prediction,
dataset embedding and evaluation alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from hirviz.model import HirvizModel

__all__ = ["QUERIES", "compose_queries"]

QUERIES: tuple[str, ...] = ("image", "dna", "avg", "fused")


def compose_queries(model: HirvizModel, z_image: torch.Tensor, z_dna: torch.Tensor) -> dict[str, torch.Tensor]:
    """The combined queries of paired image and DNA embeddings ``[B, d]``: ``avg``, ``fused`` and the fusion
    ``gate`` (``[B, d]``, 1 = all image), each float32 on the inputs' device. A model without a fusion head (the
    Lorentz geometry, whose ``avg`` is the tangent-space mean) gives ``avg`` only.
    """
    avg = model.average(z_image, z_dna).float()
    if model.fusion is None:
        return {"avg": avg}
    fused, gate = model.fuse(z_image, z_dna)
    return {"avg": avg, "fused": fused.float(), "gate": gate.float()}
