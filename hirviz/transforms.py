"""The image preprocessing of an image tower: one pipeline for training, evaluation and the app.

Every deterministic view of a photograph (the model's own :meth:`hirviz.model.HirvizModel.image_transform`, the
trainer's default view :func:`eval_transform`) is OpenCLIP's evaluation transform: resize the shortest side
(bicubic), centre crop, convert to RGB, to a tensor, normalise. Building all of them here keeps the pixels a
model sees in training, evaluation and use the same.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from PIL import Image

__all__ = ["CLIP_MEAN", "CLIP_STD", "eval_transform", "tower_transform"]

# open_clip's (and BioCLIP's) normalisation, which the paper's image encoder was pre-trained with.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


def tower_transform(
    preprocess_cfg: Mapping[str, Any], train: bool = False, aug_cfg: Mapping[str, Any] | None = None
) -> Callable[[Image.Image], torch.Tensor]:
    """OpenCLIP's ``preprocess_val`` (or, with ``train``, ``preprocess_train``) for an image tower's settings.

    Args:
        preprocess_cfg: ``open_clip.transform.PreprocessCfg`` fields (``size``, ``mean``, ``std``,
            ``interpolation``, ``resize_mode``, ...); missing ones take OpenCLIP's defaults.
        train: the random resized crop of OpenCLIP's training transform instead of the deterministic view.
        aug_cfg: ``open_clip.AugmentationCfg`` fields for the training transform.
    """
    # Imported here, not at the top: open_clip is slow to import, and readers of metadata alone (which import
    # the trainer's data package, and with it this module) never need it.
    from hirviz.torchvision_compat import ensure_torchvision

    ensure_torchvision()  # open_clip imports torchvision, which needs the shim on a CPU-only torch
    import open_clip

    cfg = open_clip.transform.PreprocessCfg(**preprocess_cfg)
    return open_clip.transform.image_transform_v2(cfg, is_train=train, aug_cfg=dict(aug_cfg) if aug_cfg else None)


def eval_transform(
    image_size: int = 224, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> Callable[[Image.Image], torch.Tensor]:
    """The deterministic view: resize the shortest side to ``image_size`` (bicubic), centre crop, normalise."""
    return tower_transform({"size": image_size, "mean": tuple(mean), "std": tuple(std)})
