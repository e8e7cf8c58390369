"""Image transforms: the random augmented view for training, and the deterministic view."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from PIL import Image
from torchvision import transforms as T

# open_clip's (and BioCLIP's) normalisation, which the paper's image encoder was pre-trained with.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)


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


def eval_transform(
    image_size: int = 224, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> Callable[[Image.Image], torch.Tensor]:
    """The deterministic view: resize the shortest side, centre crop, normalise."""
    return T.Compose(
        [
            T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
