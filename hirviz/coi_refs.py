"""Reference hits for a COI barcode: k-mer prefilter (FAISS), pairwise alignment (parasail), BOLD-style verdict.

A :class:`ReferenceSet` holds reference barcodes with their taxonomy. :meth:`ReferenceSet.hits` finds a query's
closest references in two steps, as BLAST-like identification engines do: a cheap alignment-free prefilter (the
:data:`PREFILTER` references with the most similar k-mer profiles, exact cosine search in a FAISS flat index)
and a real alignment of each of them (parasail's striped semi-global alignment, end gaps free, so a partial
query or a longer reference is not penalised for the part the other lacks). Percent identity is counted on the
alignment: identical columns over all columns between the first and last column where both sequences have a
base (terminal overhangs are not columns of the alignment; internal gaps are), leaving out columns with an N in
either sequence: an unread base is no evidence for or against a reference, so a query with an N-run or masked
bases keeps the identity its read bases have (otherwise 5 % of N would cost every hit 5 points and push true
conspecifics below the species threshold). ``aligned`` counts the same compared columns.

:func:`rank_verdicts` turns the hits into one answer per rank with the thresholds of :data:`RANK_THRESHOLDS`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hirviz import coi_protein
from hirviz.kmer import DEFAULT_K, KmerProfiler
from hirviz.taxonomy import LEVELS

__all__ = [
    "AGREEMENT",
    "CONSENSUS",
    "NEAR_BEST",
    "PREFILTER",
    "RANK_THRESHOLDS",
    "Hit",
    "RankVerdict",
    "ReferenceError",
    "ReferenceSet",
    "protein_verdicts",
    "rank_verdicts",
]

PREFILTER = 50
MIN_OVERLAP_BP = 100
# Share of the qualifying hits that must carry a name. Public reference libraries hold some misidentified or
# contaminated records (about 1 in 25 close hits in the real test data; e.g. a Hymenoptera record on a gall-midge
# sequence), so strict unanimity would let one bad record veto an otherwise clear answer. 0.9 still let one such
# record veto four good ones; 0.75 named 1.3 / 0.8 % more validation queries at order / family (6 % more order on
# the open-set slice) with 0.2 % more wrong names among those named (2.5 % more at family on the open-set slice),
# and still refuses a name when an alternative has 1 vote in 4.
AGREEMENT = 0.75
# Nucleotide scoring of BLASTN (reward 2, penalty -3, gap open 5, extend 2); N scores 0 against everything, so
# an unread base neither helps nor hurts. BLAST charges 5 + 2L for a gap of length L, parasail open + (L-1) extend.
_MATCH, _MISMATCH, _GAP_OPEN, _GAP_EXTEND = 2, -3, 7, 2
TSV_COLUMNS = ("processid", *LEVELS, "dna_barcode")

RANK_THRESHOLDS: dict[str, tuple[float, int]] = {
    "order": (85.0, 100),
    "family": (90.0, 200),
    "genus": (95.0, 200),
    "species": (97.0, 400),
}
"""Per rank, the (minimum percent identity, minimum aligned columns) a reference hit needs to support a name there.

The identities are the ones BOLDigger (Buchner & Leese 2020, Metabarcoding and Metagenomics 4: e53535) applies to
BOLD's identification engine results: 98 % species, 95 % genus, 90 % family, 85 % order. 98 % is the common COI
species cut-off (intraspecific distances in insects are mostly below 2 %; BOLD's BINs use 2.2 %), and the
coarser ones follow the typical divergence between congeners, confamilials and members of an order. The aligned
length guards the species call: at 400 bp, 98 % still allows 8 differences, while on a short fragment a single
mismatch moves identity by a percent or more and closely related species are not told apart (BOLD itself wants
500+ bp for its barcode-compliant records). Shorter queries can still be placed at genus and above.

Species uses 97 % (Hebert et al. 2003's 3 % threshold) instead of BOLDigger's 98 %: a query carrying sequencing
error (METHOD.md's degradation adds about 1.4 % of substitutions and indels) falls below 98 % to its own species,
and on the validation slice of the real barcodes 98 % refused the species to 18 % of the degraded queries, 97 %
to 3 %, with no wrong species named at either cut-off, clean or degraded.
"""


NEAR_BEST: dict[str, float] = {level: 3.0 for level in LEVELS}
"""Per rank, how many identity points below the closest qualifying hit a hit may be and still vote there.

COI saturates: at 85-90 % identity, hits from other orders and families are close to random, so with every hit
above the order threshold voting, a query with a 100 % conspecific was often refused an order because a dozen
distant hits of another order "disagreed" (8 % of the validation queries abstained at order, half of them that
way). Only hits about as close as the best one are evidence. On the validation slice any window of 0.5 to 5
points gave the same accuracy within 0.5 points; 3 is in the middle of that plateau.
"""
CONSENSUS: dict[str, tuple[float, int]] = {"order": (80.0, 3), "family": (85.0, 3)}
"""Per rank, a lower (identity, agreeing hits) rule used when no hit reaches :data:`RANK_THRESHOLDS`: order
and family are named from at least 3 agreeing hits at >= 80 / 85 % (and :data:`AGREEMENT` of the votes), which
on the validation slice named 1-2 % more queries correctly at each of the two ranks with no added wrong name."""

class ReferenceError(ValueError):
    """Reference data that cannot be used (missing file or column, no barcodes); the message says which."""


@dataclass(frozen=True)
class Hit:
    """One aligned reference: ``identity`` and ``coverage`` in percent, ``aligned`` columns, k-mer ``cosine``."""

    id: str
    ranks: dict[str, str]
    identity: float
    coverage: float
    aligned: int
    cosine: float

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, **self.ranks, "identity": round(self.identity, 2), "coverage": round(self.coverage, 1),
                "aligned": self.aligned, "cosine": round(self.cosine, 4)}


@dataclass
class RankVerdict:
    """The references' answer at one rank: ``name`` ("" = none), the best supporting ``identity`` (percent),
    ``support`` (hits carrying the name at or above the rank's threshold) and a ``note`` (e.g. a disagreement)."""

    name: str = ""
    identity: float = 0.0
    support: int = 0
    note: str = ""
    conflict: bool = False


@dataclass
class ReferenceSet:
    """Reference barcodes with their taxonomy: ``ids`` [N], ``ranks`` [N, 4] (order..species, "" = unknown) and
    ``sequences`` [N] (cleaned to upper-case ``ACGTN``). Build one with :meth:`from_tsv`, :meth:`from_bundle` or
    directly; the k-mer index is built on the first search."""

    ids: list[str]
    ranks: np.ndarray
    sequences: list[str]
    k: int = DEFAULT_K
    _index: Any = field(default=None, init=False, repr=False)
    _proteins: list[str] | None = field(default=None, init=False, repr=False)
    _rows: dict[str, int] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.ids = [str(i) for i in self.ids]
        self.ranks = np.asarray(
            [["" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in row] for row in self.ranks], dtype=object
        ).reshape(-1, len(LEVELS))
        self.sequences = [_clean_reference(s) for s in self.sequences]
        if not (len(self.ids) == len(self.ranks) == len(self.sequences)):
            raise ReferenceError(f"references disagree in length: {len(self.ids)} ids, {len(self.ranks)} rank rows, "
                                 f"{len(self.sequences)} sequences")
        keep = [i for i, s in enumerate(self.sequences) if s.strip("N")]
        if not keep:
            raise ReferenceError("none of the references has a DNA sequence")
        if len(keep) < len(self.sequences):
            self.ids = [self.ids[i] for i in keep]
            self.ranks = self.ranks[keep]
            self.sequences = [self.sequences[i] for i in keep]

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def from_tsv(cls, path: str | os.PathLike) -> ReferenceSet:
        """Read a barcode TSV with the columns ``processid, order, family, genus, species, dna_barcode``."""
        import pandas as pd

        try:
            frame = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
        except (OSError, ValueError) as err:
            raise ReferenceError(f"cannot read references from {path}: {err}") from None
        missing = [c for c in TSV_COLUMNS if c not in frame.columns]
        if missing:
            raise ReferenceError(f"{path} lacks the column(s) {', '.join(missing)}; a barcode TSV needs "
                                 f"{', '.join(TSV_COLUMNS)}")
        return cls(frame["processid"].tolist(), frame[list(LEVELS)].to_numpy(dtype=object),
                   frame["dna_barcode"].tolist())

    @classmethod
    def from_bundle(cls, bundle: Any) -> ReferenceSet:
        """The reference specimens of a bundle (a :class:`hirviz.bundle.Bundle` or its path) that have a barcode."""
        if isinstance(bundle, (str, os.PathLike, Path)):
            from hirviz.bundle import load_bundle

            bundle = load_bundle(bundle)
        ref = bundle.reference
        rows = np.flatnonzero(ref.has_dna & (np.char.str_len(ref.barcodes.astype(str)) > 0))
        if not len(rows):
            raise ReferenceError(f"the bundle {bundle.name!r} holds no reference barcodes")
        return cls(ref.ids[rows].tolist(), ref.ranks[rows], ref.barcodes[rows].tolist())

    def _faiss_index(self):
        if self._index is None:
            import faiss

            profiles = KmerProfiler(self.k)(self.sequences)
            index = faiss.IndexFlatIP(profiles.shape[1])
            index.add(np.ascontiguousarray(profiles))
            self._index = index
        return self._index

    def hits(self, query: str, k: int = 5, prefilter: int = PREFILTER) -> list[Hit]:
        """The ``prefilter`` candidates aligned, best first (identity, then coverage); the first ``k`` are the top
        hits, the rest is what :func:`rank_verdicts` checks for agreement. Alignments overlapping less than
        :data:`MIN_OVERLAP_BP` (or half a shorter query) are left out. ``query`` is clean ``ACGTN``."""
        return self.hits_many([query], k, prefilter)[0]

    def hits_many(self, queries: Sequence[str], k: int = 5, prefilter: int = PREFILTER) -> list[list[Hit]]:
        """:meth:`hits` for many queries, with one k-mer prefilter search for all of them (a batch of FASTA
        records costs one FAISS call instead of one per record)."""
        out: list[list[Hit]] = [[] for _ in queries]
        present = [i for i, q in enumerate(queries) if q]
        if not present:
            return out
        profiles = KmerProfiler(self.k)([queries[i] for i in present])
        cosines, rows = self._faiss_index().search(profiles, min(max(prefilter, k), len(self)))
        for i, cos_row, ref_row in zip(present, cosines, rows):
            query = queries[i]
            hits = [_align(query, self.sequences[r], self.ids[r], self.ranks[r], float(c))
                    for c, r in zip(cos_row, ref_row) if r >= 0]
            # A few identical bases are all an unrelated reference may share with the query (100 % identity over
            # 3 columns): an alignment overlapping less than half the query (or 100 bp) is no hit.
            overlap = min(MIN_OVERLAP_BP, len(query) // 2)
            hits = [h for h in hits if h.aligned >= overlap]
            hits.sort(key=lambda h: (-h.identity, -h.coverage, h.id))
            out[i] = hits
        return out

    def protein_hits(self, protein: str, candidates: Sequence[Hit]) -> list[Hit]:
        """The query's COI protein (:func:`hirviz.coi_check.coding_protein`) aligned with the proteins of the
        references it has nucleotide ``candidates`` for (:meth:`hits`), best protein alignment first
        (:func:`hirviz.coi_protein.align_proteins`; ``identity`` in amino acids, ``aligned`` = residue columns,
        ``coverage`` = those over the query's length). The references' proteins are translated on the first call."""
        if self._proteins is None:
            self._proteins = coi_protein.reference_proteins(self.sequences)
            self._rows = {ref_id: row for row, ref_id in enumerate(self.ids)}
        assert self._rows is not None
        cosine = {h.id: h.cosine for h in candidates}
        rows = [self._rows[h.id] for h in candidates if h.id in self._rows]
        return [Hit(self.ids[row], dict(zip(LEVELS, (str(x) for x in self.ranks[row]))), identity,
                    100.0 * min(columns, len(protein)) / len(protein), columns, cosine[self.ids[row]])
                for row, _, identity, columns in coi_protein.align_proteins(protein, self._proteins, rows)]


def _clean_reference(seq: Any) -> str:
    if not isinstance(seq, str):
        return ""
    seq = "".join(seq.split()).upper().replace("-", "").replace(".", "").replace("U", "T")
    return "".join(c if c in "ACGT" else "N" for c in seq)


@functools.lru_cache(maxsize=1)
def _matrix():
    import parasail

    matrix = parasail.matrix_create("ACGTN", _MATCH, _MISMATCH).copy()
    for i in range(5):
        matrix[4, i] = 0
        matrix[i, 4] = 0
    return matrix


def _align(query: str, ref: str, ref_id: str, ranks: np.ndarray, cosine: float) -> Hit:
    """Semi-global alignment; identity (over columns without N) and coverage between the first and last column
    with two bases."""
    import parasail

    trace = parasail.sg_trace_scan_16(query, ref, _GAP_OPEN, _GAP_EXTEND, _matrix()).traceback
    q, r = np.frombuffer(trace.query.encode(), np.uint8), np.frombuffer(trace.ref.encode(), np.uint8)
    gap = ord("-")
    both = np.flatnonzero((q != gap) & (r != gap))
    if not len(both):
        return Hit(ref_id, dict(zip(LEVELS, ranks)), 0.0, 0.0, 0, cosine)
    q, r = q[both[0]:both[-1] + 1], r[both[0]:both[-1] + 1]
    read = (q != ord("N")) & (r != ord("N"))
    matches = int(((q == r) & read).sum())
    columns = int(read.sum())
    covered = int((q != gap).sum())
    return Hit(ref_id, dict(zip(LEVELS, (str(x) for x in ranks))), 100.0 * matches / max(columns, 1),
               100.0 * covered / len(query), columns, cosine)


def rank_verdicts(hits: Sequence[Hit], thresholds: dict[str, tuple[float, int]] | None = None,
                  near_best: dict[str, float] | None = None,
                  consensus: dict[str, tuple[float, int]] | None = None, walk: bool = True) -> dict[str, RankVerdict]:
    """One :class:`RankVerdict` per rank from aligned hits, walking down from order.

    At each rank the hits meeting ``thresholds`` (default :data:`RANK_THRESHOLDS`) and within ``near_best``
    (default :data:`NEAR_BEST`) points of the closest of them vote; hits whose reference is unknown at that rank
    abstain. A name needs :data:`AGREEMENT` of the votes and the closest voting hit; otherwise the hits disagree,
    the rank is not named and the ``note`` lists the names. The walk stops at the first rank with no qualifying
    hit or a disagreement, so a finer name is never given under an undecided coarser rank; a rank the references
    leave unnamed is passed over. Outvoted minority names are kept in the ``note``. With ``walk=False`` every rank
    is judged on its own (no stop): what the reconciliation uses below a coarser rank named another way, after
    checking that the name hangs under it. Ranks missing from ``thresholds`` (and those below them) are not named.
    """
    thresholds = RANK_THRESHOLDS if thresholds is None else thresholds
    near_best = NEAR_BEST if near_best is None else near_best
    consensus = CONSENSUS if consensus is None else consensus
    out = {level: RankVerdict() for level in LEVELS}
    for level in LEVELS:
        if level not in thresholds:  # a rank this evidence never names (e.g. protein hits below family)
            break
        min_identity, min_aligned = thresholds[level]
        close = [h for h in hits if h.identity >= min_identity and h.aligned >= min_aligned]
        needed = 1
        if not close and level in consensus:
            # No single hit is close enough, but many agreeing hits a little further away still place it.
            min_identity, needed = consensus[level]
            close = [h for h in hits if h.identity >= min_identity and h.aligned >= min_aligned]
        if not close:
            out[level].note = f"no hit at >= {min_identity:g} % identity over >= {min_aligned} bp"
            if walk:
                break
            continue
        nearest = max(h.identity for h in close)
        close = [h for h in close if h.identity >= nearest - near_best[level]]
        votes: dict[str, list[Hit]] = {}
        for hit in close:
            if hit.ranks.get(level):
                votes.setdefault(hit.ranks[level], []).append(hit)
        if not votes:
            out[level].note = f"the {len(close)} close hit(s) are not identified to {level}"
            continue
        ranked = sorted(votes.items(), key=lambda item: (-len(item[1]), -max(h.identity for h in item[1]), item[0]))
        shown = ", ".join(f"{name} ({len(v)})" for name, v in ranked)
        name, support = ranked[0]
        total = sum(len(v) for v in votes.values())
        closest = max((h for v in votes.values() for h in v), key=lambda h: h.identity)
        if len(support) < needed:
            out[level].note = (f"only {len(support)} hit(s) at >= {min_identity:g} % name {name}; {needed} needed "
                               f"without a hit at >= {thresholds[level][0]:g} %")
            if walk:
                break
            continue
        if len(support) < AGREEMENT * total or closest.ranks[level] != name:
            out[level] = RankVerdict(note=f"hits at >= {min_identity:g} % disagree at {level}: {shown}", conflict=True)
            if walk:
                break
            continue
        note = f"outvoted at >= {min_identity:g} %: {shown}" if len(votes) > 1 else ""
        out[level] = RankVerdict(name, max(h.identity for h in support), len(support), note)
    return out


def protein_verdicts(hits: Sequence[Hit]) -> dict[str, RankVerdict]:
    """The protein hits' answer per rank (:func:`rank_verdicts` with :data:`hirviz.coi_protein.THRESHOLDS` and
    :data:`hirviz.coi_protein.NEAR_BEST`; genus and species are never named)."""
    return rank_verdicts(hits, coi_protein.THRESHOLDS, coi_protein.NEAR_BEST, consensus={})
