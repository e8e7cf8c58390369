"""COI barcodes as proteins: the translated barcode places a specimen whose genus and family the nucleotides lose.

COI is a protein-coding gene. Between genera and families its third codon positions saturate (two barcodes of
one family often differ at 15-20 % of their bases, mostly silent changes, about as much as two of different
orders), while the amino-acid sequence changes slowly. So a read of a genus missing from the references finds
its family and order by its protein better than by its bases: on the open-set validation slice of the real
barcodes (313-bp reads of held-out families, genera and species), the reference with the best protein alignment
carried the right order for 79 % and family for 42 % of the reads, the nearest by nucleotide k-mers for 65 % and
26 % (docs/coi_engine.md).

:func:`hirviz.coi_check.coding_protein` translates the part of a query the COI-5P profile matched, in the reading
frame the profile implies (NCBI table 5, the invertebrate mitochondrial code); :func:`reference_proteins` reads a
whole reference set in the frame without stops; :func:`align_proteins` aligns a query's protein with the proteins
of its candidate references (parasail's striped Smith-Waterman, BLOSUM62, gap open 11 / extend 1 as BLASTP).
:meth:`hirviz.coi_refs.ReferenceSet.protein_hits` makes hits of them and :func:`hirviz.coi_refs.protein_verdicts`
an answer at order and family.
"""

from __future__ import annotations

from collections.abc import Sequence

from hirviz.coi_check import translate

__all__ = ["GAP_EXTEND", "GAP_OPEN", "MIN_RESIDUES", "NEAR_BEST", "THRESHOLDS", "align_proteins",
           "reference_proteins"]

GAP_OPEN, GAP_EXTEND = 11, 1
# A protein alignment shorter than this (a third of a 313-bp read's ~104 residues) is no evidence.
MIN_RESIDUES = 35
THRESHOLDS: dict[str, tuple[float, int]] = {"order": (70.0, MIN_RESIDUES), "family": (75.0, MIN_RESIDUES)}
"""Per rank, the (amino-acid identity, aligned residues) a protein hit needs to vote there; never genus or species
(between congeners and close species the protein often does not change at all). Chosen on the validation slices
of the real barcodes (docs/coi_engine.md): amino-acid identity says little about whether the closest protein's
family is right (on the open-set slice about 40 % of the closest families were right at any identity from 70 to
94 %), so the cut-offs are low and the vote among the nearest hits (:data:`NEAR_BEST`,
:data:`hirviz.coi_refs.AGREEMENT`) does the work: 70 / 75 % named the most families right on every validation
slice, with fewer wrong names among those named on the open-set slice than 80 / 85 or 85 / 90 %."""
NEAR_BEST: dict[str, float] = {"order": 3.0, "family": 3.0}
"""Per rank, how many identity points below the closest protein hit a hit may be and still vote (1 point named
more wrong families on the open-set validation slice, 5 and 10 fewer right ones)."""


def reference_proteins(sequences: Sequence[str]) -> list[str]:
    """The proteins of many reference barcodes (cleaned ``ACGTN``, forward strand): each read in the frame with
    the fewest stop codons (invertebrate mitochondrial code). A COI barcode has no stop in its own frame and
    several in the two others, so this agrees with the profile's frame (:func:`~hirviz.coi_check.coding_protein`)
    without a profile search per reference (about 60 ms each: minutes for a reference set; this: 0.1 s for
    9,000)."""
    out = []
    for seq in sequences:
        frames = [translate(seq[frame:frame + 3 * ((len(seq) - frame) // 3)]) for frame in range(3)
                  if len(seq) - frame >= 3]
        out.append(min(frames, key=lambda p: p.count("*")) if frames else "")
    return out


def align_proteins(query: str, proteins: Sequence[str], rows: Sequence[int]) -> list[tuple[int, int, float, int]]:
    """The query protein aligned with the reference proteins ``rows`` (local alignment, BLOSUM62): per alignment
    ``(row, score, identity, columns)`` (identity = identical residues over the alignment's columns, percent),
    best score first. References without a protein and alignments under :data:`MIN_RESIDUES` columns are left
    out."""
    import parasail

    if not query:
        return []
    out = []
    for row in rows:
        ref = proteins[row]
        if not ref:
            continue
        result = parasail.sw_stats_striped_16(query, ref, GAP_OPEN, GAP_EXTEND, parasail.blosum62)
        if result.length >= MIN_RESIDUES:
            out.append((int(row), int(result.score), 100.0 * result.matches / result.length, int(result.length)))
    out.sort(key=lambda item: (-item[1], -item[2], item[0]))
    return out
