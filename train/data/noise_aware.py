"""Noise-aware training (a project extension; the papers train on clean pairs only): per-sample random degradation
of each modality, so that the fusion gate learns which input to trust.

Each training item, afresh every epoch, draws an :class:`ItemNoise` from its own (seed, epoch, item) generator
(:meth:`train.data.SpecimenDataset._item_seed`): with probability ``drop`` it loses one modality entirely (image or
DNA, equally likely; only when the run trains on both); otherwise each modality is independently degraded with
probability ``rate``: the barcode by :class:`hirviz.degrade.DnaNoise` scaled by a factor drawn uniformly from
``[0, dna_scale]`` (the ``data.dna_augment`` mechanism), the image views by :func:`hirviz.degrade.box_blur` (the
evaluation's and the app's blur, on the model's input grid) with a kernel drawn uniformly from ``2..blur_max``.

A dropped modality keeps its slot in the batch, so batches stay rectangular and the towers run unchanged, but holds
no information (blank image views: zeros after normalisation; a barcode of N of the same length) and is flagged
absent (``image_present`` / ``dna_present``, see :func:`presence`). The objective
(:func:`train.losses.compute_loss` with ``present``) leaves a flagged row out of every term that needs the missing
modality, as anchor and as candidate, and gives the fusion term the present modality's embedding as that row's
fused query, which is what :class:`hirviz.predict.Predictor` answers with when one input is missing (it has no
``fused`` query then). The gate thus never learns from an input it cannot meet at inference: it learns to weigh
its two inputs from the degraded ones, the inputs it meets when a modality is present but poor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["PRESENCE_KEYS", "ItemNoise", "NoiseAware", "draw_item_noise", "presence"]

# Batch keys of the presence flags, per modality (bool [B]; False = dropped).
PRESENCE_KEYS = {"image": "image_present", "dna": "dna_present"}
MODALITIES = tuple(PRESENCE_KEYS)


@dataclass(frozen=True)
class NoiseAware:
    """The settings of noise-aware training (``data.noise_*`` keys; see :class:`train.config.DataConfig`).

    Attributes:
        rate: probability that a (kept) modality of a sample is degraded; image and DNA draw independently.
        dna_scale: a degraded barcode gets METHOD.md's DNA rates times a factor drawn uniformly from
            ``[0, dna_scale]``.
        blur_max: a degraded image's views are box-blurred with a kernel drawn uniformly from ``2..blur_max``.
        drop: probability that a sample loses one modality entirely (image or DNA, equally likely).
    """

    rate: float = 0.5
    dna_scale: float = 2.0
    blur_max: int = 9
    drop: float = 0.1

    def __post_init__(self) -> None:
        for name in ("rate", "drop"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ValueError(f"data.noise_{name} must be a probability between 0 and 1, got {value!r}")
        if isinstance(self.dna_scale, bool) or not isinstance(self.dna_scale, (int, float)) \
                or not 0 <= self.dna_scale <= 100:
            raise ValueError(f"data.noise_dna_scale must be a number between 0 and 100, got {self.dna_scale!r}")
        if isinstance(self.blur_max, bool) or not isinstance(self.blur_max, int) or self.blur_max < 2:
            raise ValueError(f"data.noise_blur_max must be an integer >= 2 (a k x k box), got {self.blur_max!r}")


@dataclass(frozen=True)
class ItemNoise:
    """What noise-aware training does to one item in one epoch.

    Attributes:
        dropped: ``"image"``, ``"dna"`` or ``None``.
        blur_kernel: the box-blur kernel of its image views (0 = sharp).
        degrade_dna: whether its barcode is degraded (the scale is drawn by the dataset, as for ``dna_augment``).
    """

    dropped: str | None
    blur_kernel: int
    degrade_dna: bool


def draw_item_noise(settings: NoiseAware, seed: int, *, both_modalities: bool) -> ItemNoise:
    """The noise of one item, from ``numpy.random.default_rng(seed)``.

    Every number is drawn whatever the settings, in a fixed layout (as :mod:`hirviz.degrade` does), so changing
    one rate never moves another's draws. ``both_modalities``: the run trains on images and barcodes (only then
    is a modality dropped: dropping the only one would leave a sample with text alone).
    """
    rng = np.random.default_rng(seed)
    drop_u, which_u, blur_u, dna_u = rng.random(4)
    kernel = int(rng.integers(2, settings.blur_max + 1))
    dropped = None
    if both_modalities and drop_u < settings.drop:
        dropped = "image" if which_u < 0.5 else "dna"
    return ItemNoise(
        dropped=dropped,
        blur_kernel=kernel if dropped is None and blur_u < settings.rate else 0,
        degrade_dna=dropped is None and dna_u < settings.rate,
    )


def presence(batch: dict[str, Any], device: torch.device | str | None = None) -> dict[str, torch.Tensor] | None:
    """The presence flags of a collated batch as ``{modality: bool [B]}`` (for ``compute_loss(present=...)``), or
    ``None`` when the batch has none (noise-aware training off: every modality of every row is real)."""
    flags = {m: batch[key].to(device) if device is not None else batch[key]
             for m, key in PRESENCE_KEYS.items() if key in batch}
    return flags or None
