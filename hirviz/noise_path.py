"""A noise path: where one specimen lands on a reference map as its inputs are degraded more and more.

The specimen is re-embedded by the predictor at rising noise strengths (DNA noise scaled, image blurred harder)
and each embedding is placed on the bundle's precomputed layout by :meth:`hirviz.geometry.ReferenceMap.place`.
This lives beside the predictor rather than in :mod:`hirviz.geometry`, which knows only embeddings and indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from hirviz.degrade import DnaNoise

if TYPE_CHECKING:  # only for type hints: predict imports torch and the model
    from hirviz.predict import Predictor

__all__ = ["DEFAULT_STRENGTHS", "noise_path"]

# Noise strengths of a noise path: 0 = clean, 1 = the paper's DNA noise and the default blur, beyond = worse.
DEFAULT_STRENGTHS: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)


def noise_path(
    predictor: Predictor,
    image: Any = None,
    barcode: str | None = None,
    space: str = "fused",
    strengths: Sequence[float] = DEFAULT_STRENGTHS,
    *,
    dna_noise: DnaNoise | None = None,
    blur_kernel: int | None = None,
    seed: int = 0,
    k: int = 10,
    layout: str = "umap",
) -> np.ndarray:
    """Map positions ``[len(strengths), 2]`` of one specimen degraded more and more, on ``predictor``'s reference map.

    At strength ``s`` the barcode gets ``dna_noise.scaled(s)`` (default noise: the paper's) and the image a
    box blur of kernel ``round(s * blur_kernel)`` on the model's input grid (default ``blur_kernel``:
    :meth:`Predictor.default_blur_kernel`); strength 0 is the clean specimen. Every strength uses the same
    ``seed``, so the DNA edits of a weaker strength are a subset of a stronger one's (see
    :mod:`hirviz.degrade`) and the path moves steadily rather than jumping between random draws. ``k``
    neighbours place each point (:meth:`hirviz.geometry.ReferenceMap.place`) on the ``layout`` kind of map
    (``"poincare"``: the disk of a Lorentz bundle).
    """
    reference_map = predictor.reference_map
    if reference_map is None:
        raise ValueError("this predictor has no reference map to draw a noise path on")
    strengths = [float(s) for s in strengths]
    if not strengths or any(not np.isfinite(s) or s < 0 for s in strengths):
        raise ValueError(f"strengths must be finite numbers >= 0, got {strengths}")
    base_noise = dna_noise if dna_noise is not None else DnaNoise()
    base_blur = predictor.default_blur_kernel() if blur_kernel is None else int(blur_kernel)
    kernels = [int(round(s * base_blur)) for s in strengths]
    noises = [base_noise.scaled(s) for s in strengths]
    embedded = predictor.embed(image, barcode, blur_kernels=kernels, dna_noises=noises, seed=seed)
    if space not in embedded.vectors:
        raise ValueError(f"the {space!r} space needs inputs that were not given; have {sorted(embedded.vectors)}")
    return reference_map.place(embedded.vectors[space], space, k, layout=layout)
