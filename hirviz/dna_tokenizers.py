"""DNA tokenizers: turn cleaned barcodes (as :func:`hirviz.barcode.parse_barcode` returns them) into model tokens.

Two tokenizers share one interface (:class:`DnaTokenizer`), so a model does not care which one it got:

- :class:`KmerTokenizer`: BarcodeBERT style, non-overlapping k-mers of a sequence padded or cut to a fixed
  length, one leading CLS.
- :class:`BPETokenizer`: DNABERT-2 style, a Hugging Face ``tokenizers`` BPE model, ``[CLS] ... [SEP]``.

:func:`load_dna_tokenizer` builds either from a short spec or a saved config.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = [
    "BPETokenizer",
    "DnaTokenizer",
    "KmerTokenizer",
    "TokenizerNotFoundError",
    "load_dna_tokenizer",
]


class TokenizerNotFoundError(FileNotFoundError, ValueError):
    """A DNA tokenizer spec naming a file or folder that is not there.

    Both a ``FileNotFoundError`` (a command line reports it in one line, as any missing input file) and a
    ``ValueError`` (a bad spec, as callers that validate configs catch it).
    """


@runtime_checkable
class DnaTokenizer(Protocol):
    """What a DNA encoder needs from a tokenizer (both :class:`KmerTokenizer` and :class:`BPETokenizer`)."""

    vocab_size: int
    pad_token_id: int
    cls_token_id: int
    unk_token_id: int
    mask_token_id: int | None
    max_tokens: int

    def __call__(self, sequences: Sequence[str]) -> dict[str, torch.Tensor]: ...

    def to_config(self) -> dict[str, Any]: ...


def _check_batch(sequences: Sequence[str]) -> list[str]:
    # A lone string is also a Sequence[str] (of letters): encoding it letter by letter is never wanted.
    if isinstance(sequences, str):
        raise TypeError("pass a list of sequences, e.g. tokenizer([seq]), not a single string")
    batch = list(sequences)
    for i, seq in enumerate(batch):
        if not isinstance(seq, str):
            raise TypeError(f"sequence {i} is a {type(seq).__name__}, expected str")
    return batch


# Bases as codes 0..3 in lexicographic order; everything else (N, stray characters) is 4.
_BASE_CODE = np.full(256, 4, dtype=np.uint8)
for _code, _base in enumerate("ACGT"):
    _BASE_CODE[ord(_base)] = _code
    _BASE_CODE[ord(_base.lower())] = _code


class KmerTokenizer:
    """BarcodeBERT tokenisation: pad with N or cut to ``max_bp``, split into non-overlapping k-mers, prepend CLS.

    Ids: ``MASK=0``, ``CLS=1``, ``UNK=2``, then the ``4**k`` k-mers in lexicographic ``ACGT`` order from 3
    (``AAAAA=3``, ``AAAAC=4``, ...). A k-mer containing anything but ``ACGT`` (typically N) is UNK. Every
    sequence gives ``max_bp // k + 1`` tokens (133 for the defaults); when ``max_bp`` is not a multiple of ``k``
    the last ``max_bp % k`` bases are not used. K-mers made only of the padding added past a sequence's end
    get ``attention_mask`` 0 so that pooling can skip them; their id is UNK, which is also ``pad_token_id``.
    """

    MASK_ID = 0
    CLS_ID = 1
    UNK_ID = 2
    NUM_SPECIAL = 3

    def __init__(self, k: int = 5, max_bp: int = 660) -> None:
        if not isinstance(k, int) or not 1 <= k <= 10:
            raise ValueError(f"k must be an integer from 1 to 10 (vocabulary 4**k), got {k!r}")
        if not isinstance(max_bp, int) or max_bp < k:
            raise ValueError(f"max_bp must be an integer of at least k={k}, got {max_bp!r}")
        self.k = k
        self.max_bp = max_bp
        self.num_kmers = max_bp // k
        self.max_tokens = self.num_kmers + 1
        self.vocab_size = 4**k + self.NUM_SPECIAL
        self.mask_token_id = self.MASK_ID
        self.cls_token_id = self.CLS_ID
        self.unk_token_id = self.UNK_ID
        self.pad_token_id = self.UNK_ID
        self._place_values = 4 ** np.arange(k - 1, -1, -1, dtype=np.int64)

    def __repr__(self) -> str:
        return f"KmerTokenizer(k={self.k}, max_bp={self.max_bp})"

    def __call__(self, sequences: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise a batch: ``input_ids`` and ``attention_mask``, both long ``[B, max_tokens]``."""
        batch = _check_batch(sequences)
        used_bp = self.num_kmers * self.k
        codes = self._base_codes(batch, used_bp).reshape(len(batch), self.num_kmers, self.k)
        ids = np.minimum(codes, 3).astype(np.int64) @ self._place_values + self.NUM_SPECIAL
        ids[(codes == 4).any(axis=-1)] = self.UNK_ID
        lengths = np.fromiter((min(len(s), used_bp) for s in batch), dtype=np.int64, count=len(batch))
        real = np.arange(self.num_kmers) * self.k < lengths[:, None]
        cls = np.full((len(batch), 1), self.CLS_ID, dtype=np.int64)
        return {
            "input_ids": torch.from_numpy(np.concatenate([cls, ids], axis=1)),
            "attention_mask": torch.from_numpy(np.concatenate([np.ones_like(cls), real.astype(np.int64)], axis=1)),
        }

    @staticmethod
    def _base_codes(batch: list[str], width: int) -> np.ndarray:
        """Base codes ``[B, width]``, N-padded; only the row copy is per sequence, the lookup is one array op."""
        raw = np.full((len(batch), width), ord("N"), dtype=np.uint8)
        for row, seq in enumerate(batch):
            # "replace" keeps one byte per character, so stray non-ASCII characters stay in place (and become UNK).
            data = seq[:width].encode("ascii", "replace")
            raw[row, : len(data)] = np.frombuffer(data, dtype=np.uint8)
        return _BASE_CODE[raw]

    def to_config(self) -> dict[str, Any]:
        """Settings that rebuild this tokenizer through :meth:`from_config` or :func:`load_dna_tokenizer`."""
        return {"type": "kmer", "k": self.k, "max_bp": self.max_bp}

    @classmethod
    def from_config(cls, config: Mapping[str, Any], base_dir: str | os.PathLike | None = None) -> KmerTokenizer:
        """Rebuild from :meth:`to_config` output (``base_dir`` is accepted for symmetry and unused)."""
        return cls(k=int(config.get("k", 5)), max_bp=int(config.get("max_bp", 660)))


_SPECIAL_ROLES = {"cls": "[CLS]", "sep": "[SEP]", "pad": "[PAD]", "unk": "[UNK]", "mask": "[MASK]"}


class BPETokenizer:
    """DNABERT-2 tokenisation with a Hugging Face ``tokenizers`` JSON: ``[CLS] ... [SEP]``.

    A batch is padded to its longest sequence and every sequence is truncated to ``max_tokens`` tokens including
    ``[CLS]`` and ``[SEP]``; ``attention_mask`` is 0 on padding. Sequences are upper-cased first (the
    vocabularies are upper case). Special tokens come from ``special_tokens`` if given, else from a
    ``special_tokens_map.json`` beside the file, else the BERT names (``[CLS]``, ``[SEP]``, ``[PAD]``,
    ``[UNK]``, ``[MASK]``).

    The attribute ``tokenizer_file`` is the JSON in use: a bundle copies it, and :meth:`to_config` records its
    file name to be resolved against the bundle directory when loading.
    """

    def __init__(
        self,
        tokenizer_file: str | os.PathLike,
        max_tokens: int = 512,
        special_tokens: Mapping[str, str] | None = None,
    ) -> None:
        from tokenizers import Tokenizer
        from tokenizers.processors import TemplateProcessing

        path = Path(tokenizer_file)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        if not isinstance(max_tokens, int) or max_tokens < 2:
            raise ValueError(f"max_tokens must be an integer of at least 2 ([CLS] and [SEP]), got {max_tokens!r}")
        self.tokenizer_file = path
        self.max_tokens = max_tokens
        self._tokenizer = Tokenizer.from_file(str(path))
        self.special_tokens = dict(special_tokens) if special_tokens else _read_special_tokens(path)
        ids = self._special_ids()
        self.cls_token_id, self.sep_token_id = ids["cls"], ids["sep"]
        self.pad_token_id, self.unk_token_id, self.mask_token_id = ids["pad"], ids["unk"], ids["mask"]
        self.vocab_size = self._tokenizer.get_vocab_size(with_added_tokens=True)
        # Set explicitly rather than trusting each JSON: the model expects exactly [CLS] seq [SEP].
        cls, sep = self.special_tokens["cls"], self.special_tokens["sep"]
        self._tokenizer.post_processor = TemplateProcessing(
            single=f"{cls} $A {sep}", special_tokens=[(cls, self.cls_token_id), (sep, self.sep_token_id)]
        )
        self._tokenizer.enable_truncation(max_length=max_tokens)
        self._tokenizer.enable_padding(pad_id=self.pad_token_id, pad_token=self.special_tokens["pad"])

    def _special_ids(self) -> dict[str, int | None]:
        ids: dict[str, int | None] = {}
        for role in _SPECIAL_ROLES:
            token = self.special_tokens.get(role)
            ids[role] = None if token is None else self._tokenizer.token_to_id(token)
            if ids[role] is None and role != "mask":
                raise ValueError(f"{self.tokenizer_file}: the {role} token {token!r} is not in the vocabulary")
        return ids

    def __repr__(self) -> str:
        return f"BPETokenizer({str(self.tokenizer_file)!r}, max_tokens={self.max_tokens})"

    def __call__(self, sequences: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise a batch: ``input_ids`` and ``attention_mask``, long ``[B, T]``, T = longest (<= max_tokens)."""
        batch = _check_batch(sequences)
        if not batch:
            empty = torch.zeros((0, 0), dtype=torch.long)
            return {"input_ids": empty, "attention_mask": empty.clone()}
        encodings = self._tokenizer.encode_batch([s.upper() for s in batch])
        return {
            "input_ids": torch.tensor([e.ids for e in encodings], dtype=torch.long),
            "attention_mask": torch.tensor([e.attention_mask for e in encodings], dtype=torch.long),
        }

    def to_config(self) -> dict[str, Any]:
        """Settings that rebuild this tokenizer; ``tokenizer_file`` is a bare file name, resolved on loading."""
        return {
            "type": "bpe",
            "tokenizer_file": self.tokenizer_file.name,
            "max_tokens": self.max_tokens,
            "special_tokens": dict(self.special_tokens),
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any], base_dir: str | os.PathLike | None = None) -> BPETokenizer:
        """Rebuild from :meth:`to_config` output; a relative ``tokenizer_file`` is looked up in ``base_dir``."""
        if "tokenizer_file" not in config:
            raise ValueError("a BPE tokenizer config needs 'tokenizer_file'")
        path = Path(config["tokenizer_file"])
        if base_dir is not None and not path.is_absolute():
            path = Path(base_dir) / path
        return cls(path, max_tokens=int(config.get("max_tokens", 512)), special_tokens=config.get("special_tokens"))


def _read_special_tokens(tokenizer_file: Path) -> dict[str, str]:
    """Special token strings by role, from ``special_tokens_map.json`` beside the file when there is one."""
    tokens = dict(_SPECIAL_ROLES)
    map_file = tokenizer_file.parent / "special_tokens_map.json"
    if map_file.is_file():
        for key, value in json.loads(map_file.read_text(encoding="utf-8")).items():
            role = key.removesuffix("_token")
            if role in tokens:
                # The map writes a token either as a string or as {"content": ..., "lstrip": ...}.
                tokens[role] = value["content"] if isinstance(value, dict) else str(value)
    return tokens


_TOKENIZER_TYPES = {"kmer": KmerTokenizer, "bpe": BPETokenizer}


def load_dna_tokenizer(
    spec: str | os.PathLike | Mapping[str, Any], base_dir: str | os.PathLike | None = None
) -> KmerTokenizer | BPETokenizer:
    """Build a DNA tokenizer from a short spec or a saved config.

    ``spec`` is one of: ``"kmer"`` (k=5, 660 bp), ``"kmer:K"``; a path to a ``tokenizer.json`` or to a folder
    holding one (BPE); or a dict from ``to_config()``. Relative paths, in a string or in a config, are looked
    up in ``base_dir`` when it is given (a bundle directory).
    """
    if isinstance(spec, Mapping):
        kind = spec.get("type")
        if kind not in _TOKENIZER_TYPES:
            raise ValueError(f"unknown tokenizer type {kind!r} in config; expected one of {sorted(_TOKENIZER_TYPES)}")
        return _TOKENIZER_TYPES[kind].from_config(spec, base_dir)
    text = os.fspath(spec)
    if text == "kmer" or text.startswith("kmer:"):
        k_text = text.partition(":")[2] or "5"
        if not k_text.isdigit():
            raise ValueError(f"bad tokenizer spec {text!r}: expected 'kmer' or 'kmer:K' with K an integer")
        return KmerTokenizer(k=int(k_text))
    path = Path(text)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise TokenizerNotFoundError(
            f"bad tokenizer spec {text!r}: no such file; expected 'kmer', 'kmer:K', or a tokenizer.json file or a "
            "folder holding one"
        )
    return BPETokenizer(path)
