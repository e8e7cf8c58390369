"""Degradation models used at inference to test robustness: noisy DNA barcodes and blurred images.

DNA (the paper's model, applied in this order): clean-up, substitution, N-masking, deletion / insertion,
one contiguous run of N, tail truncation. Each sequence draws its randomness from its own
``numpy.random.SeedSequence((seed, key))``, so a barcode is degraded the same way whatever batch it is in
(the authors' code seeds per batch, so its results change with the batch size). Every random number is drawn
whatever the parameter values, which couples sweeps: raising one rate adds events and never moves the others.

Images: a normalised k x k box blur.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = ["DnaNoise", "Edit", "degrade_barcode", "degrade_barcode_with_edits", "degrade_barcodes", "box_blur"]

_N = 4  # base codes: A C G T = 0..3, N = 4
_ALPHABET = np.frombuffer(b"ACGTN", dtype=np.uint8)
_CODE = np.full(256, 255, dtype=np.uint8)  # 255 = dropped by the clean-up
for _code, _base in enumerate("ACGTN"):
    _CODE[ord(_base)] = _CODE[ord(_base.lower())] = _code


@dataclass(frozen=True)
class DnaNoise:
    """Rates of the DNA degradations; the defaults are the paper's values, every one may be set to 0.

    Attributes:
        substitution: probability that an A/C/G/T becomes one of the other three (uniformly).
        n_mask: probability that a base becomes N.
        deletion: probability that a base is deleted.
        insertion: probability that a random base is inserted after a (not deleted) base.
        n_run: length of the one contiguous run of N, as a fraction of the length (rounded; 0 = no run).
        truncation: fraction of the tail cut off (the first ``round((1 - truncation) * L)`` bases are kept).
    """

    substitution: float = 0.01
    n_mask: float = 0.003
    deletion: float = 0.002
    insertion: float = 0.002
    n_run: float = 0.05
    truncation: float = 0.10

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"DnaNoise.{field.name} must be a number, got {value!r}")
            if not 0.0 <= value <= 1.0:  # also rejects NaN
                raise ValueError(f"DnaNoise.{field.name} must be between 0 and 1, got {value!r}")

    @classmethod
    def off(cls) -> DnaNoise:
        """No degradation at all."""
        return cls(**{field.name: 0.0 for field in fields(cls)})

    def scaled(self, factor: float) -> DnaNoise:
        """Every rate times ``factor`` (clipped to 1), for severity sweeps; ``scaled(0)`` is :meth:`off`."""
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 0 or math.isinf(factor):
            raise ValueError(f"the scale factor must be a finite number >= 0, got {factor!r}")
        return replace(self, **{f.name: min(1.0, getattr(self, f.name) * factor) for f in fields(self)})

    def is_off(self) -> bool:
        """Whether this noise changes nothing."""
        return all(getattr(self, f.name) == 0 for f in fields(self))


@dataclass(frozen=True)
class Edit:
    """One change made by :func:`degrade_barcode_with_edits`.

    ``position`` counts in the degraded output before truncation, so it indexes the returned sequence directly;
    positions at or past its end lie in the truncated tail. By kind:

    - ``substitution`` / ``mask``: output[position] changed from ``before`` (the clean base) to ``after``.
      A base that is substituted and then masked is reported once, as a mask.
    - ``deletion``: the clean base ``before`` was removed just before output[position] (no substitution or
      mask is reported for a deleted base).
    - ``insertion``: output[position] is the inserted base ``after``.
    - ``n_run``: output[position : position + length] was set to N; ``before`` is what it held.
    - ``truncation``: the tail ``before`` was cut off from ``position`` = the output's length.
    """

    kind: str
    position: int
    before: str
    after: str

    @property
    def length(self) -> int:
        """How many bases the edit covers."""
        return max(len(self.before), len(self.after))


def degrade_barcode(seq: str, noise: DnaNoise, seed: int, key: int = 0) -> str:
    """Degrade one barcode; the result depends only on ``(seq, noise, seed, key)``."""
    return _decode(_degrade(_clean_codes(seq), noise, _rng(seed, key)).output)


def degrade_barcode_with_edits(seq: str, noise: DnaNoise, seed: int, key: int = 0) -> tuple[str, list[Edit]]:
    """Degrade one barcode as :func:`degrade_barcode` does, and say what changed where (see :class:`Edit`).

    The edits refer to the clean-up of ``seq`` (upper case, only A/C/G/T/N kept), which is ``seq`` itself for
    the output of :func:`hirviz.barcode.parse_barcode`.
    """
    result = _degrade(_clean_codes(seq), noise, _rng(seed, key))
    return _decode(result.output), result.edits()


def degrade_barcodes(
    seqs: Sequence[str], noise: DnaNoise, seed: int, keys: Sequence[int] | None = None
) -> list[str]:
    """Degrade many barcodes; sequence ``i`` gets the randomness of ``(seed, keys[i])`` (default key ``i``).

    Give each specimen a stable key (e.g. its row in the dataset) to get the same noisy barcode in any batch
    size or order.
    """
    if isinstance(seqs, str):
        raise TypeError("pass a list of sequences, not a single string (use degrade_barcode for one)")
    keys = range(len(seqs)) if keys is None else keys
    if len(keys) != len(seqs):
        raise ValueError(f"got {len(keys)} keys for {len(seqs)} sequences")
    return [degrade_barcode(seq, noise, seed, key) for seq, key in zip(seqs, keys)]


def _rng(seed: int, key: int) -> np.random.Generator:
    for name, value in (("seed", seed), ("key", key)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(key)]))


def _clean_codes(seq: str) -> np.ndarray:
    """Upper-case and keep A/C/G/T/N, as base codes 0..4."""
    if not isinstance(seq, str):
        raise TypeError(f"a barcode must be a str, got {type(seq).__name__}")
    codes = _CODE[np.frombuffer(seq.encode("ascii", "ignore"), dtype=np.uint8)]
    return codes[codes != 255]


def _decode(codes: np.ndarray) -> str:
    return _ALPHABET[codes].tobytes().decode("ascii")


@dataclass(frozen=True)
class _Trace:
    """The result of every stage of one degradation; :meth:`edits` describes the changes from them."""

    clean: np.ndarray  # base codes after the clean-up
    point: np.ndarray  # after substitution and masking (same length as clean)
    deleted: np.ndarray  # per clean base
    inserted: np.ndarray  # per clean base: a random base was inserted after it
    start: np.ndarray  # per clean base: its position after the indels (for a deleted one: the next base's)
    indel: np.ndarray  # after the indels
    run_start: int
    run_length: int
    noisy: np.ndarray  # after the N run
    kept: int  # bases kept by the truncation

    @property
    def output(self) -> np.ndarray:
        return self.noisy[: self.kept]

    def edits(self) -> list[Edit]:
        """Point changes and indels in output order, then the N run, then the truncation."""
        edits = []
        changed = (self.point != self.clean) & ~self.deleted
        for i in np.flatnonzero(changed | self.deleted | self.inserted):
            position, clean_base = int(self.start[i]), "ACGTN"[self.clean[i]]
            if self.deleted[i]:
                edits.append(Edit("deletion", position, clean_base, ""))
                continue
            if changed[i]:
                kind = "mask" if self.point[i] == _N else "substitution"
                edits.append(Edit(kind, position, clean_base, "ACGTN"[self.point[i]]))
            if self.inserted[i]:
                edits.append(Edit("insertion", position + 1, "", "ACGTN"[self.indel[position + 1]]))
        if self.run_length:
            span = self.indel[self.run_start : self.run_start + self.run_length]
            edits.append(Edit("n_run", self.run_start, _decode(span), "N" * self.run_length))
        if self.kept < len(self.noisy):
            edits.append(Edit("truncation", self.kept, _decode(self.noisy[self.kept :]), ""))
        return edits


def _degrade(codes: np.ndarray, noise: DnaNoise, rng: np.random.Generator) -> _Trace:
    """Apply the noise model to base codes; every step is one array operation over the whole sequence."""
    if not isinstance(noise, DnaNoise):
        raise TypeError(f"noise must be a DnaNoise, got {type(noise).__name__}")
    length = len(codes)
    # Always draw everything, in a fixed layout, so that one rate never shifts another's random numbers.
    uniform = rng.random((6, length))
    run_uniform = rng.random()
    shift = 1 + (uniform[4] * 3).astype(np.uint8)  # 1..3: to one of the other three bases
    new_base = (uniform[5] * 4).astype(np.uint8)

    point = codes.copy()
    substituted = (uniform[0] < noise.substitution) & (codes < _N)
    point[substituted] = (codes[substituted] + shift[substituted]) % 4
    point[uniform[1] < noise.n_mask] = _N

    deleted = uniform[2] < noise.deletion
    inserted = ~deleted & (uniform[3] < noise.insertion)
    emitted = (~deleted).astype(np.int64) + inserted
    start = np.cumsum(emitted) - emitted
    indel = np.empty(int(emitted.sum()), dtype=np.uint8)
    indel[start[~deleted]] = point[~deleted]
    indel[start[inserted] + 1] = new_base[inserted]

    run_length = round(noise.n_run * len(indel))
    run_start = int(run_uniform * (len(indel) - run_length + 1))
    noisy = indel.copy()
    noisy[run_start : run_start + run_length] = _N
    kept = round((1.0 - noise.truncation) * len(noisy))
    return _Trace(codes, point, deleted, inserted, start, indel, run_start, run_length, noisy, kept)


# ---------------------------------------------------------------------------------------------------- images


def box_blur(image: Image.Image | torch.Tensor, kernel_size: int) -> Image.Image | torch.Tensor:
    """Blur with a normalised ``kernel_size x kernel_size`` averaging kernel (every weight ``1 / k**2``).

    ``image`` is a PIL image (returned as a PIL image of the same size and mode, values rounded; palette and
    bilevel images are blurred as RGB(A) / L and returned in that mode, since averaging palette indices means
    nothing) or a float tensor ``[C, H, W]`` or ``[B, C, H, W]`` (same shape and dtype back). Borders are padded
    by replicating the edge pixels, so a uniform image stays uniform up to its edges (zero padding would
    darken the white background of specimen photos). An even ``kernel_size`` has no centre pixel: its window
    reaches ``k // 2 - 1`` pixels up/left and ``k // 2`` down/right. ``kernel_size <= 1`` returns the input.
    """
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)):
        raise TypeError(f"kernel_size must be an integer, got {kernel_size!r}")
    if isinstance(image, Image.Image):
        return _blur_pil(image, int(kernel_size))
    if isinstance(image, torch.Tensor):
        return _blur_tensor(image, int(kernel_size))
    raise TypeError(f"box_blur takes a PIL image or a torch tensor, got {type(image).__name__}")


def _blur_tensor(image: torch.Tensor, kernel_size: int) -> torch.Tensor:
    if not image.is_floating_point():
        raise TypeError(f"box_blur needs a float tensor (e.g. image.float() / 255), got {image.dtype}")
    if image.ndim not in (3, 4):
        raise ValueError(f"box_blur needs a tensor [C, H, W] or [B, C, H, W], got shape {tuple(image.shape)}")
    if kernel_size <= 1:
        return image
    batch = image if image.ndim == 4 else image.unsqueeze(0)
    before, after = (kernel_size - 1) // 2, kernel_size // 2
    padded = F.pad(batch, (before, after, before, after), mode="replicate")
    # Stride-1 average pooling is exactly a convolution with the normalised box kernel, in one call for all channels.
    blurred = F.avg_pool2d(padded, kernel_size, stride=1)
    return blurred if image.ndim == 4 else blurred.squeeze(0)


def _working_mode(image: Image.Image) -> str:
    """The mode to blur in: palette indices and single bits cannot be averaged, their colours can."""
    if image.mode == "1":
        return "L"
    if image.mode in ("P", "PA"):
        return "RGBA" if image.mode == "PA" or "transparency" in image.info else "RGB"
    return image.mode


def _blur_pil(image: Image.Image, kernel_size: int) -> Image.Image:
    if kernel_size <= 1:
        return image.copy()
    if _working_mode(image) != image.mode:
        image = image.convert(_working_mode(image))
    array = np.asarray(image)
    channels_last = array.reshape(array.shape[0], array.shape[1], -1)
    tensor = torch.from_numpy(channels_last.astype(np.float32)).permute(2, 0, 1)
    blurred = _blur_tensor(tensor, kernel_size).permute(1, 2, 0).numpy().reshape(array.shape)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        blurred = np.clip(np.rint(blurred), info.min, info.max)
    return Image.frombytes(image.mode, image.size, blurred.astype(array.dtype).tobytes())
