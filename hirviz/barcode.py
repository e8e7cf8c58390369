"""DNA barcodes: read what a user pastes (raw sequence or FASTA) into clean ``A C G T N`` sequences.

Parsing is strict about what is *not* DNA (protein, binary files, absurd lengths) and forgiving about
formatting (case, line breaks, GenBank line numbers, alignment gaps, IUPAC ambiguity codes), because the
common failure is a user pasting the right sequence in a slightly different format.

The tokenizers that turn sequences into model tokens live in :mod:`hirviz.dna_tokenizers`; their names are
still importable from here, loaded on first use so that parsing a barcode does not import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "BarcodeError",
    "FastaRecord",
    "parse_barcode",
    "parse_fasta",
]

# Names that moved to hirviz.dna_tokenizers; ``from hirviz.barcode import KmerTokenizer`` keeps working.
_TOKENIZER_NAMES = frozenset({"DnaTokenizer", "KmerTokenizer", "BPETokenizer", "load_dna_tokenizer",
                              "TokenizerNotFoundError"})

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
            "keep one record, or identify several as a batch"
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


def __getattr__(name: str) -> Any:
    if name in _TOKENIZER_NAMES:
        from hirviz import dna_tokenizers

        return getattr(dna_tokenizers, name)
    raise AttributeError(f"module 'hirviz.barcode' has no attribute {name!r}")
