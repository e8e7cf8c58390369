"""Checks of a query COI barcode: what was cleaned, where the COI-5P region is, and whether it reads as protein.

:func:`check_barcode` takes what a user pastes (raw sequence or FASTA, via :mod:`hirviz.barcode`'s parser) and
returns a :class:`BarcodeCheck`:

- **notes**: every change made to the input, in plain language (RNA ``U`` read as ``T``, IUPAC codes turned into
  ``N``, gaps / digits / spaces removed, lower case, which FASTA record was used, reverse complement, trimming);
- **the COI-5P region**, located with the profile HMM of the 658-bp barcode region (``hirviz/data/COI-5P.hmm``,
  from naturalis/barcode_validator) by pyhmmer's nhmmer pipeline on both strands: a query that hits only on the
  reverse strand is turned around. No significant hit means the sequence is not a COI barcode (another gene,
  non-coding DNA, random text);
- **internal stop codons** in the reading frame the HMM alignment implies, translated with the invertebrate
  mitochondrial code (NCBI table 5): a stop inside the barcode region points to a pseudogene (NUMT) or a
  sequencing error, since the real COI-5P region codes for protein throughout.

Unusable input (empty, binary, protein, too long, mostly N) raises :class:`hirviz.barcode.BarcodeError`.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from hirviz.barcode import IUPAC_AMBIGUITY, BarcodeError, parse_fasta

__all__ = [
    "COI_MAX_EVALUE",
    "HMM_LENGTH",
    "MAX_INPUT_BP",
    "MIN_SPECIES_BP",
    "BarcodeCheck",
    "CoiRegion",
    "check_barcode",
    "coding_protein",
    "input_notes",
    "reverse_complement",
    "translate",
]

# The longest sequence accepted (the app's limit): a whole mitogenome (~16 kb) fits; anything longer is refused
# before any alignment work, so a huge paste fails at once instead of hanging.
MAX_INPUT_BP = 20_000
# Sequences longer than this are cut to the COI-5P region the HMM found (a barcode is ~658 bp; longer input is a
# larger fragment or a mitogenome, and aligning the rest to barcodes only dilutes identity and coverage).
TRIM_ABOVE_BP = 1_000
# Below this, a barcode carries too few informative sites for a species-level call (BOLD's ID engine asks for
# 500+ bp for its full-length identifications; 100 bp mini-barcodes identify genera at best).
MIN_SPECIES_BP = 100
# An nhmmer hit this significant is taken as COI-5P. Real barcodes score E < 1e-30 even as 150-bp fragments,
# random or non-COI sequences get no hit at all or E > 1e-3, so the cut-off is not delicate.
COI_MAX_EVALUE = 1e-5
HMM_LENGTH = 658
# The 658-bp region starts at the second position of a codon: HMM positions 2, 5, 8, ... are first codon positions
# (measured on the real barcodes: this frame gives no stop codon for 99 % of them).
_FIRST_CODON_PHASE = 2
_MITO_INVERTEBRATE_CODE = 5
_COMPLEMENT = str.maketrans("ACGTN", "TGCAN")
_INVISIBLE = "\u200b\u200c\u200d\u2060\ufeff"


@dataclass(frozen=True)
class CoiRegion:
    """Where the query matches the COI-5P profile.

    ``hmm_from``/``hmm_to``: the covered part of the 658-bp region (1-based, inclusive); ``query_from``/
    ``query_to``: the matching part of the (oriented, trimmed) query; ``score`` in bits and ``evalue``.
    """

    hmm_from: int
    hmm_to: int
    query_from: int
    query_to: int
    score: float
    evalue: float

    @property
    def significant(self) -> bool:
        return self.evalue <= COI_MAX_EVALUE

    def describe(self) -> str:
        return (f"COI-5P region positions {self.hmm_from}-{self.hmm_to} of {HMM_LENGTH} "
                f"(query bases {self.query_from}-{self.query_to}; score {self.score:.1f} bits, "
                f"E-value {self.evalue:.2g})")


@dataclass
class BarcodeCheck:
    """The result of :func:`check_barcode`.

    Attributes:
        sequence: the cleaned query, turned around if only its reverse complement matched COI-5P, and cut to the
            COI-5P region when longer than :data:`TRIM_ABOVE_BP`. This is what is compared with references.
        name: the FASTA header of the record used ("" for a raw sequence).
        notes: the changes made to the input, in plain language.
        warnings: problems a user should know about (not COI, too short, stop codons).
        orientation: ``"forward"``, ``"reverse-complement"`` or ``"unknown"`` (no COI-5P hit to orient by).
        region: the best COI-5P hit (``None`` when there was none at all; see :attr:`coi_found`).
        stop_codons: 1-based positions in :attr:`sequence` of in-frame internal stop codons (table 5).
    """

    sequence: str
    name: str = ""
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    orientation: str = "unknown"
    region: CoiRegion | None = None
    stop_codons: list[int] = field(default_factory=list)

    @property
    def coi_found(self) -> bool:
        """Whether a significant COI-5P match was found (E-value at most :data:`COI_MAX_EVALUE`)."""
        return self.region is not None and self.region.significant


def reverse_complement(seq: str) -> str:
    """The reverse complement of an ``ACGTN`` sequence."""
    return seq.translate(_COMPLEMENT)[::-1]


def check_barcode(text: str | bytes, max_length: int = MAX_INPUT_BP) -> BarcodeCheck:
    """Clean, orient and check one query barcode (raw sequence or FASTA text; of several records the first).

    Raises:
        BarcodeError: input that cannot be a DNA barcode; the message says why (see :func:`hirviz.barcode.parse_fasta`).
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise BarcodeError("the input is binary data, not text: paste a DNA sequence or a FASTA text") from None
    records = parse_fasta(text, max_length=max_length)
    first = records[0]
    check = BarcodeCheck(sequence=first.sequence, name=first.name, notes=input_notes(text, records))
    _locate_coi(check)
    if len(check.sequence) < MIN_SPECIES_BP:
        check.warnings.append(f"the sequence is only {len(check.sequence)} bp long: too short for a species-level "
                              f"identification (a full COI barcode is {HMM_LENGTH} bp)")
    if check.coi_found:
        _find_stop_codons(check)
    return check


# ---------------------------------------------------------------------------------------------------- cleaning


def input_notes(text: str, records: list | None = None) -> list[str]:
    """What reading ``text`` as one barcode changes, in plain language: which FASTA record was used and what the
    parser cleaned in it (the first notes of :func:`check_barcode`, before any orientation or trimming).

    ``records`` are ``parse_fasta(text)``'s records when already parsed. Raises :class:`BarcodeError` like it.
    """
    records = parse_fasta(text) if records is None else records
    notes = []
    if len(records) > 1:
        notes.append(f"the FASTA text holds {len(records)} records; only the first "
                     f"({records[0].name or 'no name'!r}) was used")
    return notes + _cleaning_notes(_first_record_body(text))


def _first_record_body(text: str) -> str:
    """The raw sequence lines of the first record, to describe what cleaning changed in them."""
    if ">" not in text:
        return text
    body, started = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(">"):
            if started:
                break
            started = True
        elif started and not stripped.startswith(";"):
            body.append(stripped)
    return "\n".join(body)


def _cleaning_notes(raw: str) -> list[str]:
    """Plain-language notes of what :func:`hirviz.barcode.parse_fasta` changed in a record's raw text."""
    raw = raw.strip()
    notes = []
    letters = [c for c in raw if c.isalpha()]
    if any(c.islower() for c in letters):
        notes.append("lower-case letters were read as upper case")
    count_u = sum(c in "Uu" for c in raw)
    if count_u:
        notes.append(f"{count_u} U (RNA) read as T")
    ambiguous = sorted({c.upper() for c in raw if c.upper() in IUPAC_AMBIGUITY and c.upper() != "N"})
    if ambiguous:
        n_amb = sum(c.upper() in ambiguous for c in raw)
        notes.append(f"{n_amb} IUPAC ambiguity code(s) ({', '.join(ambiguous)}) replaced by N")
    gaps = sum(c in "-." for c in raw)
    if gaps:
        notes.append(f"{gaps} alignment gap character(s) ('-', '.') removed")
    if any(c.isdigit() for c in raw):
        notes.append("digits removed (GenBank-style position numbers)")
    if any(c.isspace() for c in raw):
        notes.append("spaces and line breaks inside the sequence removed")
    if any(c in _INVISIBLE for c in raw):
        notes.append("invisible formatting characters removed")
    return notes


# ---------------------------------------------------------------------------------------------------- the HMM


@functools.lru_cache(maxsize=1)
def _profile():
    """The COI-5P HMM and the alphabet it was built on, loaded once per process."""
    from pyhmmer import plan7

    with resources.as_file(resources.files("hirviz") / "data" / "COI-5P.hmm") as path, plan7.HMMFile(path) as handle:
        hmm = handle.read()
    return hmm, hmm.alphabet


# A pyhmmer pipeline keeps state between searches. It is not safe to share: two app users checking barcodes at
# once on one pipeline crashed the process (segmentation fault), so each thread gets its own. And it adds every
# search's residues to the search space its E-values are computed for: without clear() a barcode's E-value grew
# with the number of barcodes checked before it in the process (doubled by the second search).
_THREAD = threading.local()


def _pipeline() -> Any:
    """This thread's long-target (nhmmer) pipeline, reset for a new search."""
    from pyhmmer import plan7

    if getattr(_THREAD, "pipeline", None) is None:
        _THREAD.pipeline = plan7.LongTargetsPipeline(_profile()[1])
    _THREAD.pipeline.clear()
    return _THREAD.pipeline


def _best_domain(seq: str) -> Any:
    """The best-scoring COI-5P domain (pyhmmer, either strand) of ``seq``, ``None`` when there is none."""
    from pyhmmer import easel

    hmm, alphabet = _profile()
    target = easel.TextSequence(name=b"query", sequence=seq).digitize(alphabet)
    domains = [d for hit in _pipeline().search_hmm(hmm, easel.DigitalSequenceBlock(alphabet, [target]))
               for d in hit.domains]
    return max(domains, key=lambda d: d.score) if domains else None


def _region(domain: Any, length: int, offset: int = 0) -> CoiRegion:
    """A pyhmmer domain as a :class:`CoiRegion` in the sequence turned to its strand (``length`` bases), less
    ``offset`` bases cut from its start."""
    ali = domain.alignment
    start, end = ali.target_from, ali.target_to
    if domain.strand == "-":
        start, end = length - start + 1, length - end + 1
    return CoiRegion(int(ali.hmm_from), int(ali.hmm_to), int(start - offset), int(end - offset), float(domain.score),
                     float(domain.i_evalue))


def _coding_start(region: CoiRegion) -> int:
    """The 1-based position of the first whole codon in ``region``: HMM position h is a first codon position when
    (h - _FIRST_CODON_PHASE) % 3 == 0."""
    return region.query_from + (_FIRST_CODON_PHASE - region.hmm_from) % 3


def coding_protein(sequence: str, region: CoiRegion | None) -> str:
    """The amino-acid sequence of ``sequence``'s COI-5P ``region`` in the frame the profile implies, with the
    invertebrate mitochondrial code (NCBI table 5; ``*`` = stop, ``X`` = a codon with an N); "" when there is no
    region or no whole codon in it."""
    if region is None:
        return ""
    start = _coding_start(region)
    n_codons = (region.query_to - start + 1) // 3
    if n_codons < 1:
        return ""
    return translate(sequence[start - 1:start - 1 + 3 * n_codons])


def translate(coding: str) -> str:
    """Whole codons of ``ACGTN`` DNA as amino acids, invertebrate mitochondrial code (NCBI table 5; ``*`` = stop,
    ``X`` = a codon with an N)."""
    from pyhmmer import easel

    alphabet, code = _genetic_code()
    return easel.TextSequence(sequence=coding).digitize(alphabet).translate(code).textize().sequence


@functools.lru_cache(maxsize=1)
def _genetic_code():
    """The DNA alphabet and table 5, made once per process (translating a reference set calls for them 27,000
    times)."""
    from pyhmmer import easel

    return easel.Alphabet.dna(), easel.GeneticCode(_MITO_INVERTEBRATE_CODE)


def _locate_coi(check: BarcodeCheck) -> None:
    """Search both strands; orient, trim and record the best hit (or warn that there is no COI-5P)."""
    seq = check.sequence
    best = _best_domain(seq)
    if best is None:
        check.warnings.append("not COI: no match to the COI-5P barcode region on either strand (another gene, "
                              "non-coding DNA, or not a DNA sequence at all)")
        return
    reverse = best.strand == "-"
    if reverse:
        check.sequence = seq = reverse_complement(seq)
        check.orientation = "reverse-complement"
        check.notes.append("the sequence matched COI-5P on the reverse strand and was reverse-complemented")
    else:
        check.orientation = "forward"
    env_from, env_to = sorted((best.env_from, best.env_to))
    if reverse:
        env_from, env_to = len(seq) - env_to + 1, len(seq) - env_from + 1
    offset = 0
    if len(seq) > TRIM_ABOVE_BP:
        check.sequence = seq[env_from - 1:env_to]
        check.notes.append(f"the {len(seq):,}-bp sequence was cut to its COI-5P region, bases {env_from:,}-{env_to:,}")
        offset = env_from - 1
    check.region = _region(best, len(seq), offset)
    if not check.region.significant:
        check.warnings.append(f"not COI: the best match to the COI-5P region is not significant "
                              f"(E-value {best.i_evalue:.2g} > {COI_MAX_EVALUE:g})")


def _find_stop_codons(check: BarcodeCheck) -> None:
    """Translate the matched region in its HMM-implied frame (NCBI table 5) and record internal stops."""
    region = check.region
    assert region is not None
    start = _coding_start(region)
    protein = coding_protein(check.sequence, region)
    check.stop_codons = [start + 3 * i for i, aa in enumerate(protein) if aa == "*"]
    if check.stop_codons:
        shown = ", ".join(str(p) for p in check.stop_codons[:5]) + (" ..." if len(check.stop_codons) > 5 else "")
        check.warnings.append(
            f"{len(check.stop_codons)} stop codon(s) inside the COI-5P reading frame (invertebrate mitochondrial "
            f"code) at base(s) {shown}: a possible pseudogene (NUMT) or a sequencing error")
