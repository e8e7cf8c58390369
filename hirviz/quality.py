"""Input quality of a query: is there enough of a photo or a barcode to identify anything from?

Image signals are measured on the picture the image tower saw (the model input after the eval transform and any
blur, un-normalised to RGB in [0, 1]), so they describe the evidence the model had, whatever the photo's own size:

* ``sharpness``: variance of the Laplacian of the grey image (blur and flat images score ~0);
* ``contrast``: standard deviation of the grey values (a blank or washed-out image scores ~0);
* ``subject``: fraction of pixels that stand out from the background, i.e. differ from the image's median colour
  by more than :data:`SUBJECT_DELTA` in some channel (an empty BIOSCAN well is white-ish glass throughout);
* ``colour``: standard deviation of the chroma (max - min channel) over the pixels (a grey square scores 0).

Barcode signals are measured on the sequence the DNA tower saw (after any noise): ``length`` (A/C/G/T/N bases),
``acgt_fraction`` (1 - the share of N), and, through :func:`hirviz.coi_check.check_barcode`, ``coi_hit`` (a
significant match to the COI-5P profile HMM) and ``stop_codons`` (in-frame internal stops, table 5).

:func:`image_limits` and :func:`barcode_limits` apply the hard limits: inputs that carry no usable evidence
whatever the model, refused with a plain-language reason before any calibration is consulted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = [
    "MIN_IMAGE_SIDE",
    "MIN_BARCODE_BP",
    "BarcodeQuality",
    "ImageQuality",
    "barcode_limits",
    "barcode_quality",
    "image_limits",
    "image_quality",
]

# A photo smaller than this per side holds no more than a smudge of an insect, whatever it is resized to.
MIN_IMAGE_SIDE = 32
# Below this grey-level spread (on 0..1) the model input is one flat colour: nothing to identify.
MIN_CONTRAST = 0.01
# A pixel belongs to the subject when some channel differs from the background (median) colour by more than this.
SUBJECT_DELTA = 0.2
# Fewer subject pixels than this share of the model input: no specimen visible (an empty well, a blank sheet).
MIN_SUBJECT = 0.002
# Barcodes shorter than this carry too few sites to place even an order (mini-barcodes are ~100-150 bp).
MIN_BARCODE_BP = 50
# More N than this share of the bases: mostly unread.
MAX_N_FRACTION = 0.5


@dataclass(frozen=True)
class ImageQuality:
    """Quality signals of one image (see the module docstring); ``width`` / ``height`` are the photo's own size."""

    width: int
    height: int
    sharpness: float
    contrast: float
    subject: float
    colour: float

    def signals(self) -> dict[str, float]:
        """The signals calibration thresholds (higher = better evidence)."""
        return {"sharpness": self.sharpness, "contrast": self.contrast, "subject": self.subject,
                "colour": self.colour}


@dataclass(frozen=True)
class BarcodeQuality:
    """Quality signals of one barcode (see the module docstring)."""

    length: int
    acgt_fraction: float
    coi_hit: bool
    stop_codons: int

    def signals(self) -> dict[str, float]:
        """The signals calibration thresholds (higher = better evidence)."""
        return {"length": float(self.length), "acgt_fraction": self.acgt_fraction,
                "coi_hit": float(self.coi_hit), "no_stop_codons": -float(self.stop_codons)}


def image_quality(rgb: np.ndarray, size: tuple[int, int]) -> ImageQuality:
    """Signals of a model input ``rgb`` (``[H, W, 3]`` floats in [0, 1]) of a photo of ``size`` = (width, height)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB array [H, W, 3], got shape {rgb.shape}")
    grey = rgb @ np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma, as PIL's convert("L")
    background = np.median(rgb.reshape(-1, 3), axis=0)
    subject = np.abs(rgb - background).max(axis=2) > SUBJECT_DELTA
    chroma = rgb.max(axis=2) - rgb.min(axis=2)
    return ImageQuality(
        width=int(size[0]), height=int(size[1]),
        sharpness=float(ndimage.laplace(grey, mode="nearest").var()),
        contrast=float(grey.std()),
        subject=float(subject.mean()),
        colour=float(chroma.std()),
    )


def image_limits(quality: ImageQuality) -> str | None:
    """The plain-language reason an image is unusable whatever the model, or ``None`` when it passes."""
    if min(quality.width, quality.height) < MIN_IMAGE_SIDE:
        return (f"the image is only {quality.width} x {quality.height} pixels: too small to show a specimen "
                f"(at least {MIN_IMAGE_SIDE} pixels per side are needed)")
    if quality.contrast < MIN_CONTRAST:
        return "the image is blank: one flat colour, with nothing to identify"
    if quality.subject < MIN_SUBJECT:
        return "no specimen is visible: nothing stands out from the background (an empty well or a blank photo?)"
    return None


def barcode_quality(sequence: str) -> BarcodeQuality:
    """Signals of the sequence the DNA tower saw (A/C/G/T/N, as :func:`hirviz.barcode.parse_barcode` returns)."""
    from hirviz.barcode import BarcodeError
    from hirviz.coi_check import check_barcode

    length = len(sequence)
    acgt = sum(sequence.count(b) for b in "ACGT") / length if length else 0.0
    try:
        check = check_barcode(sequence)
        coi_hit, stops = check.coi_found, len(check.stop_codons)
    except BarcodeError:  # mostly N or otherwise unusable: no COI evidence at all
        coi_hit, stops = False, 0
    return BarcodeQuality(length=length, acgt_fraction=float(acgt), coi_hit=bool(coi_hit), stop_codons=stops)


def barcode_limits(quality: BarcodeQuality, require_coi: bool = False) -> str | None:
    """The plain-language reason a barcode is unusable, or ``None``. ``require_coi``: the model was trained on
    real COI-5P barcodes, so a sequence with no COI-5P match is out of its range."""
    if quality.length < MIN_BARCODE_BP:
        return (f"the barcode is only {quality.length} bp long: too short to identify anything (at least "
                f"{MIN_BARCODE_BP} bp are needed; a full COI barcode is about 658 bp)")
    if 1.0 - quality.acgt_fraction > MAX_N_FRACTION:
        return f"the barcode is mostly unread: {1.0 - quality.acgt_fraction:.0%} of its bases are N"
    if require_coi and not quality.coi_hit:
        return ("the sequence is not a COI barcode: it does not match the COI-5P barcode region on either strand "
                "(another gene, non-coding DNA or not DNA), and this model knows only COI barcodes")
    return None
