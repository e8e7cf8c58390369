"""What a user gives the predictor, checked before the model sees it: images read into 8-bit RGB.

:func:`load_image` takes a PIL image, a numpy array, a path or the bytes of an image file and refuses, with a
message meant for the user, anything it cannot use (a missing or corrupt file, a non-image, an empty image, an
unusable array, more pixels than :data:`MAX_IMAGE_PIXELS`). Every error a user's input can cause is an
:class:`InputError` or a :class:`hirviz.barcode.BarcodeError`; catch :data:`INPUT_ERRORS` to get both.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from hirviz.barcode import BarcodeError

__all__ = [
    "INPUT_ERRORS",
    "MAX_IMAGE_PIXELS",
    "ImageTooLarge",
    "InputError",
    "InvalidImage",
    "load_image",
]

# Larger photos are refused: decoding one costs hundreds of MB and the model sees a few hundred pixels anyway.
MAX_IMAGE_PIXELS = 40_000_000


class InputError(ValueError):
    """An input the predictor cannot use; the message is meant for the user."""


class InvalidImage(InputError):
    """Not an image, a corrupt or truncated file, or an image of an unusable shape or colour mode."""


class ImageTooLarge(InputError):
    """An image with more pixels than :data:`MAX_IMAGE_PIXELS` (including decompression bombs)."""


# Every error a user's input can cause: the UI and the CLI catch these and show the message.
INPUT_ERRORS: tuple[type[Exception], ...] = (InputError, BarcodeError)


def load_image(image: Any, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Read an image into 8-bit RGB, as the model's transforms expect.

    ``image`` is a PIL image, a numpy array (``[H, W]``, ``[H, W, 1|3|4]``; uint8, uint16, bool, other integers
    or floats in [0, 1]), a path, or the bytes of an image file (JPEG, PNG, WebP, TIFF, BMP, GIF ... anything
    PIL reads; the first frame of an animation). The EXIF orientation of a file is applied. 16-bit and float
    images are scaled to 8 bits (16-bit: ``v / 257``), not clipped; transparency is composited onto white
    (specimen photos are shot on white).

    Raises:
        InvalidImage: a missing file, non-image or corrupt data, an empty image or an unusable array shape.
        ImageTooLarge: more than ``max_pixels`` pixels (checked from the header, before decoding).
    """
    if isinstance(image, Image.Image):
        _check_size(image.size, max_pixels)
        try:
            image.load()  # an image opened lazily by the caller may still hold undecoded, broken data
        except (OSError, ValueError, SyntaxError, EOFError) as err:
            raise InvalidImage(f"the image is corrupt or truncated: {err}") from None
        return _to_rgb(image)
    if isinstance(image, np.ndarray):
        return _to_rgb(_from_array(image, max_pixels))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _open(io.BytesIO(bytes(image)), "the uploaded data", max_pixels)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise InvalidImage(f"image file not found: {path}")
        return _open(path, f"{path.name!r}", max_pixels)
    raise InvalidImage(f"expected an image (PIL image, numpy array, path or bytes), got {type(image).__name__}")


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise InvalidImage(f"the image is empty ({width} x {height} pixels)")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"the image is {width} x {height} = {width * height / 1e6:.1f} megapixels; the limit is "
            f"{max_pixels / 1e6:g} megapixels: downscale it first"
        )


def _open(source: Any, what: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Our own limit (checked next, from the header) is lower than PIL's warning threshold.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                _check_size(img.size, max_pixels)
                img.seek(0)
                img.load()  # decode now, inside the error handling: truncated data fails here
                try:
                    img = ImageOps.exif_transpose(img)
                except Exception:  # a broken EXIF block should not lose the picture itself
                    pass
                return _to_rgb(img)
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(f"{what} is too large to decode safely (a decompression bomb?): {err}") from None
    except UnidentifiedImageError:
        raise InvalidImage(f"{what} is not an image file that can be read (JPEG, PNG, WebP, TIFF, ...)") from None
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise InvalidImage(f"{what} is a corrupt or truncated image: {err}") from None


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale an integer, float or bool array to uint8 by its type's natural range (not by its own extremes)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise InvalidImage("the image holds NaN or infinite values")
    top = float(values.max()) if values.size else 0.0
    if np.issubdtype(array.dtype, np.floating):
        scale = 255.0 if top <= 1.0 else 1.0  # floats: [0, 1] or already [0, 255]
        if top > 255.0:
            scale = 255.0 / 65535.0 if top <= 65535.0 else 255.0 / top
    elif array.dtype == np.uint16 or top > 255:
        # 16-bit data, also when stored in wider integers (PIL's mode "I"); beyond 16 bits: scale by the maximum.
        scale = 1.0 / 257.0 if top <= 65535 else 255.0 / top
    else:
        scale = 1.0
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


def _from_array(array: np.ndarray, max_pixels: int) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise InvalidImage(f"an image array must be [H, W] or [H, W, 1|3|4], got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise InvalidImage(f"an image array must hold numbers, got dtype {array.dtype}")
    _check_size((array.shape[1], array.shape[0]), max_pixels)
    mode = "L" if array.ndim == 2 else {3: "RGB", 4: "RGBA"}[array.shape[2]]
    return Image.fromarray(np.ascontiguousarray(_to_uint8(array)), mode)


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB; high-bit-depth modes rescaled, transparent areas made white."""
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        img = Image.fromarray(_to_uint8(np.asarray(img)), "L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    try:
        if has_alpha:
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            background.alpha_composite(rgba)
            return background.convert("RGB")
        return img.convert("RGB")
    except (ValueError, OSError) as err:
        raise InvalidImage(f"cannot convert an image of mode {img.mode!r} to RGB: {err}") from None
