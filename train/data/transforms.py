"""Image transforms: the random augmented view for training, and the deterministic view.

The deterministic view is :func:`hirviz.transforms.eval_transform` (re-exported here), the one pipeline the model
also uses in evaluation and in the app, so training never preprocesses a photograph differently.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image
from torchvision import transforms as T

from hirviz.transforms import CLIP_MEAN, CLIP_STD, eval_transform

__all__ = ["CLIP_MEAN", "CLIP_STD", "eval_transform", "train_transform"]


def train_transform(
    image_size: int = 224, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> Callable[[Image.Image], torch.Tensor]:
    """A random augmented view: resized crop, flips, small rotation, mild colour jitter, then normalise.

    Specimens are photographed from above in a well plate, so both flips and any small rotation give a
    plausible photograph. Cropping first keeps the remaining steps on a small image (cheap on CPU workers). Hue
    is left alone: colour is a diagnostic trait of many insects, and a hue shift costs as much as all the rest.
    """
    # Rotated corners are filled with the plate's background (BIOSCAN's mean colour) rather than black, so the
    # model cannot learn "black corners = augmented".
    background = (185, 186, 186)
    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=(0.5, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.RandomVerticalFlip(),
            T.RandomRotation(15, interpolation=T.InterpolationMode.BILINEAR, fill=background),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )

