"""K-mer profiles of DNA barcodes: the alignment-free similarity behind nearest-neighbour search.

Each barcode becomes its vector of k-mer counts (``4**k`` dimensions), L2-normalised, so that the inner product of
two profiles is their cosine similarity (what a FAISS ``IndexFlatIP`` ranks by). Used by the COI identification
engine's candidate prefilter (:mod:`hirviz.coi_refs`) and by the trainer's k-mer baseline.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["DEFAULT_K", "KmerProfiler"]

DEFAULT_K = 6
_INVALID = 4  # base code of N and of the IUPAC ambiguity letters: any k-mer covering one is skipped
_DROPPED = 255  # gaps and whitespace: removed before k-mers are read, as hirviz.barcode.parse_barcode does
_CODES = np.full(256, 254, dtype=np.uint8)  # 254 = not DNA: an error
for _i, _base in enumerate("ACGT"):
    _CODES[ord(_base)] = _CODES[ord(_base.lower())] = _i
for _base in "NRYSWKMBDHV":
    _CODES[ord(_base)] = _CODES[ord(_base.lower())] = _INVALID
_CODES[ord("U")] = _CODES[ord("u")] = 3  # RNA
for _char in "-. \t\r\n":
    _CODES[ord(_char)] = _DROPPED
# Profiles are built this many sequences at a time so the bincount buffer stays near 32 MB for k = 6.
_ROWS_PER_CHUNK = 1024


class KmerProfiler:
    """Barcodes -> L2-normalised k-mer count vectors (float32 ``[N, 4**k]``).

    A k-mer's index is its bases read as a base-4 number (A=0, C=1, G=2, T=3, first base most significant), so
    with k = 2 ``"AC"`` is column 1 and ``"TT"`` column 15. K-mers overlapping an N (or an IUPAC ambiguity code)
    are skipped; gaps (``-``, ``.``) and whitespace are removed first. A barcode without a single valid k-mer
    (missing, empty, shorter than k, all N) gets the zero vector.
    """

    def __init__(self, k: int = DEFAULT_K) -> None:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= 12:
            raise ValueError(f"k must be an integer from 1 to 12 (4**k dimensions), got {k!r}")
        self.k = int(k)
        self.dim = 4 ** self.k

    def __repr__(self) -> str:
        return f"KmerProfiler(k={self.k})"

    def counts(self, barcodes: Sequence[str | None]) -> np.ndarray:
        """Raw k-mer counts, int32 ``[N, 4**k]``."""
        if isinstance(barcodes, str):
            raise TypeError("pass a list of barcodes, not a single string")
        out = np.zeros((len(barcodes), self.dim), dtype=np.int32)
        for start in range(0, len(barcodes), _ROWS_PER_CHUNK):
            chunk = barcodes[start:start + _ROWS_PER_CHUNK]
            rows, index = self._kmers(chunk, start)
            flat = np.bincount(rows * self.dim + index, minlength=len(chunk) * self.dim)
            out[start:start + len(chunk)] = flat.reshape(len(chunk), self.dim)
        return out

    def __call__(self, barcodes: Sequence[str | None]) -> np.ndarray:
        """L2-normalised profiles, float32 ``[N, 4**k]`` (zero rows where a barcode has no valid k-mer)."""
        profiles = self.counts(barcodes).astype(np.float32)
        norms = np.linalg.norm(profiles, axis=1, keepdims=True)
        return np.divide(profiles, norms, out=profiles, where=norms > 0)

    def _kmers(self, barcodes: Sequence[str | None], offset: int) -> tuple[np.ndarray, np.ndarray]:
        """(row within the chunk, k-mer index) of every valid k-mer of the chunk's barcodes."""
        codes = [self._encode(seq, offset + i) for i, seq in enumerate(barcodes)]
        lengths = np.array([len(c) for c in codes], dtype=np.int64)
        # One concatenated array with an invalid base after each sequence: no window spans two barcodes.
        joined = np.concatenate([np.append(c, np.uint8(_INVALID)) for c in codes]) if codes else \
            np.zeros(0, np.uint8)
        if len(joined) < self.k:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        windows = np.lib.stride_tricks.sliding_window_view(joined, self.k)
        valid = (windows < 4).all(axis=1)
        weights = 4 ** np.arange(self.k - 1, -1, -1, dtype=np.int64)
        index = windows[valid].astype(np.int64) @ weights
        rows = np.repeat(np.arange(len(codes), dtype=np.int64), lengths + 1)[:len(windows)][valid]
        return rows, index

    @staticmethod
    def _encode(seq: str | None, row: int) -> np.ndarray:
        if seq is None or (isinstance(seq, float) and np.isnan(seq)):
            return np.zeros(0, np.uint8)
        if not isinstance(seq, str):
            raise TypeError(f"barcode {row} must be a str or None, got {type(seq).__name__}")
        codes = _CODES[np.frombuffer(seq.encode("latin-1", "replace"), dtype=np.uint8)]
        if (codes == 254).any():
            bad = sorted({ch for ch in seq if _CODES[min(ord(ch), 255)] == 254 or ord(ch) > 255})
            raise ValueError(f"barcode {row} has characters that are not DNA: {''.join(bad[:10])!r}")
        return codes[codes != _DROPPED]
