"""DNA barcodes: read what a user pastes (raw sequence or FASTA) and turn sequences into model tokens.

Parsing is strict about what is *not* DNA (protein, binary files, absurd lengths) and forgiving about
formatting (case, line breaks, GenBank line numbers, alignment gaps, IUPAC ambiguity codes), because the
common failure is a user pasting the right sequence in a slightly different format.

Two tokenizers share one interface (:class:`DnaTokenizer`), so a model does not care which one it got:

- :class:`KmerTokenizer`: BarcodeBERT style, non-overlapping k-mers of a sequence padded or cut to a fixed
  length, one leading CLS.
- :class:`BPETokenizer`: DNABERT-2 style, a Hugging Face ``tokenizers`` BPE model, ``[CLS] ... [SEP]``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

__all__ = [
    "BarcodeError",
    "FastaRecord",
    "parse_barcode",
    "parse_fasta",
    "DnaTokenizer",
    "KmerTokenizer",
    "BPETokenizer",
    "load_dna_tokenizer",
    "TokenizerNotFoundError",
]

# A few N are normal (unread bases); a barcode that is mostly N carries too little to identify anything.
MAX_N_FRACTION = 0.5
IUPAC_AMBIGUITY = "RYSWKMBDHVN"
_DNA = frozenset("ACGTN")
# Deleted while cleaning: alignment gaps, GenBank line numbers, invisible characters that web pages and
# word processors slip into copied text (whitespace itself is removed with str.split, which knows all of it).
_DELETE = "-." + "0123456789" + "\u200b\u200c\u200d\u2060\ufeff"
_CLEAN_TABLE = str.maketrans({"U": "T", **{c: "N" for c in IUPAC_AMBIGUITY}, **{c: None for c in _DELETE}})
# Every control character except ordinary whitespace; their presence means a binary file was pasted.
_BINARY_CHARS = frozenset(chr(i) for i in range(32) if chr(i) not in "\t\n\r\f\v") | {"\ufffd"}


class BarcodeError(ValueError):
    """A pasted barcode or FASTA text that cannot be used; the message is meant for the user."""


class TokenizerNotFoundError(FileNotFoundError, ValueError):
    """A DNA tokenizer spec naming a file or folder that is not there.

    Both a ``FileNotFoundError`` (a command line reports it in one line, as any missing input file) and a
    ``ValueError`` (a bad spec, as callers that validate configs catch it).
    """


@dataclass(frozen=True)
class FastaRecord:
    """One sequence of a FASTA text: its header (without ``>``; empty when there was none) and cleaned bases."""

    name: str
    sequence: str


def parse_barcode(text: str | bytes, max_length: int = 20000) -> str:
    """Clean one pasted DNA barcode into upper-case ``A C G T N``.

    ``text`` is a raw sequence or a single FASTA record. Case, whitespace, line breaks, digits (GenBank line
    numbers) and gap characters ``-`` ``.`` are dropped; IUPAC ambiguity codes (``RYSWKMBDHV``) become ``N`` and
    ``U`` (RNA) becomes ``T``.

    Raises:
        BarcodeError: empty input, no sequence, several FASTA records (use :func:`parse_fasta`), protein or
            other non-DNA text, binary data, a sequence longer than ``max_length`` bp, or one that is mostly N.
    """
    text = _as_text(text)
    _check_raw_size(text, max_length, max_records=1)
    records = _split_fasta(text)
    if len(records) > 1:
        raise BarcodeError(
            f"found {len(records)} FASTA records, but one barcode was expected; "
            "use parse_fasta() to read several sequences"
        )
    name, lines = records[0]
    where = "" if name is None else f" in record {_describe(1, name)}"
    return _clean_sequence("".join(lines), max_length, where)


def parse_fasta(text: str | bytes, max_length: int = 20000, max_records: int = 100000) -> list[FastaRecord]:
    """Read one or many FASTA records, each cleaned as in :func:`parse_barcode`.

    Text without any ``>`` header is read as a single record with an empty name. Lines starting with ``;``
    (old FASTA comments) are skipped.

    Raises:
        BarcodeError: as :func:`parse_barcode`, naming the offending record; also text before the first header
            and more than ``max_records`` records.
    """
    text = _as_text(text)
    _check_raw_size(text, max_length, max_records)
    records = _split_fasta(text)
    if len(records) > max_records:
        raise BarcodeError(f"found {len(records):,} FASTA records; the limit is {max_records:,}")
    out = []
    for index, (name, lines) in enumerate(records, start=1):
        where = "" if name is None else f" in record {_describe(index, name)}"
        out.append(FastaRecord(name or "", _clean_sequence("".join(lines), max_length, where)))
    return out


def _describe(index: int, name: str) -> str:
    return f"{index} ({name!r})" if name else f"{index} (no name)"


def _as_text(text: object) -> str:
    """Decode bytes and refuse anything that is not text (a pasted or uploaded binary file)."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise BarcodeError("the input is binary data, not text: paste a DNA sequence or a FASTA text") from None
    if not isinstance(text, str):
        raise BarcodeError(f"expected text (a DNA sequence or FASTA), got {type(text).__name__}")
    # Sampling the start is enough: binary files show control bytes almost at once, and this stays fast.
    head = text[:4096]
    if "\x00" in head or sum(c in _BINARY_CHARS for c in head) > 0.01 * len(head):
        raise BarcodeError("the input is binary data, not text: paste a DNA sequence or a FASTA text")
    if not text.strip():
        raise BarcodeError("the input is empty: paste a DNA barcode (raw sequence or FASTA)")
    return text


def _check_raw_size(text: str, max_length: int, max_records: int) -> None:
    """Reject an oversized paste before any per-line work, so that a huge input fails fast."""
    # Formatting (line numbers, spaces, headers) rarely triples a sequence's size; past that it cannot fit.
    allowed = max_records * (3 * max_length + 1000)
    if len(text) > allowed:
        raise BarcodeError(
            f"the input is {len(text):,} characters long; the limit is {max_length:,} bp per barcode "
            "(a COI barcode is about 658 bp)"
        )


def _split_fasta(text: str) -> list[tuple[str | None, list[str]]]:
    """Split into (header or None, sequence lines); text without a header is one nameless record."""
    if ">" not in text:
        return [(None, [text])]
    records: list[tuple[str | None, list[str]]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(">"):
            records.append((stripped[1:].strip(), []))
        elif stripped.startswith(";") or not stripped:
            continue
        elif not records:
            raise BarcodeError(
                f"found text before the first FASTA header ('>' line): {stripped[:40]!r}; "
                "paste either a raw sequence or a FASTA text that starts with '>'"
            )
        else:
            records[-1][1].append(stripped)
    return records


def _clean_sequence(raw: str, max_length: int, where: str = "") -> str:
    seq = "".join(raw.split()).upper().translate(_CLEAN_TABLE)
    if not seq:
        raise BarcodeError(f"no DNA sequence found{where}")
    if len(seq) > max_length:
        raise BarcodeError(
            f"the sequence{where} is {len(seq):,} bp long; the limit is {max_length:,} bp "
            "(a COI barcode is about 658 bp)"
        )
    bad = set(seq) - _DNA
    if bad:
        raise BarcodeError(_describe_bad_characters(bad, where))
    n_fraction = seq.count("N") / len(seq)
    if n_fraction > MAX_N_FRACTION:
        raise BarcodeError(
            f"the sequence{where} is {n_fraction:.0%} N (unknown or ambiguous bases); "
            f"at most {MAX_N_FRACTION:.0%} is accepted"
        )
    return seq


def _describe_bad_characters(bad: set[str], where: str) -> str:
    letters = sorted(c for c in bad if c.isascii() and c.isalpha())
    others = sorted(bad - set(letters))
    if letters:
        # Every letter that is not a nucleotide code (E F I J L O P Q X Z) is an amino-acid code.
        return (
            f"the text{where} contains letters that are not nucleotide codes ({', '.join(letters)}): "
            "it looks like a protein sequence (or plain text), not DNA"
        )
    shown = ", ".join(repr(c) for c in others[:10])
    return f"the text{where} contains characters that do not belong in a DNA sequence: {shown}"


# ----------------------------------------------------------------------------------------------- tokenizers


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
