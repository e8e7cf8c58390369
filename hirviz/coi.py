"""Identify a COI barcode: input checks, reference hits and a model, reconciled into one answer per rank.

:func:`identify_barcode` runs, for one pasted barcode (raw or FASTA):

1. :func:`hirviz.coi_check.check_barcode`: cleaning notes, the COI-5P region (pyhmmer, both strands), stop codons;
2. :meth:`hirviz.coi_refs.ReferenceSet.hits`: the closest reference barcodes by real alignment, and
   :func:`hirviz.coi_refs.rank_verdicts`: the BOLD-style answer per rank; the same candidates aligned as proteins
   (:meth:`hirviz.coi_refs.ReferenceSet.protein_hits`);
3. optionally a model (a :class:`hirviz.predict.Predictor` or any callable giving per-rank ``(name, score)``
   lists for a DNA sequence), which places the specimen where no reference is close enough.

Reconciliation, rank by rank from order down: close hits decide (``decided_by = "alignment"``); where they name
nothing, at order and family the translated barcode's closest references may (``"protein"``,
:mod:`hirviz.coi_protein`: COI's protein changes more slowly than its bases, so it still places a read whose genus
the references lack); else the rank is named when the model's top name is carried by one of the nearest hits at :data:`AGREE`
identity (``decided_by = "alignment+model"``, with a note naming the agreeing hit), else by the model alone
when it scores >= :data:`MODEL_ALONE` (``"model"``); below a rank named that way, close hits again decide finer
ranks on their own (:data:`RESUME_BELOW`). A finer name is never given under an open coarser rank or a coarser
name it contradicts; where the hits disagree and the model sides with none of them, or nothing supports a name,
the rank is left empty. A sequence that is not COI gets no name at all.

:func:`identify_fasta` does the same for every record of a FASTA file or text, yielding :data:`ROW_COLUMNS` rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hirviz import coi_protein, coi_refs
from hirviz.barcode import BarcodeError
from hirviz.coi_check import BarcodeCheck, check_barcode, coding_protein
from hirviz.coi_refs import RANK_THRESHOLDS, Hit, RankVerdict, ReferenceSet, protein_verdicts, rank_verdicts
from hirviz.taxonomy import LEVELS

__all__ = ["MODEL_THRESHOLD", "ROW_COLUMNS", "Identification", "RankAnswer", "assemble", "fasta_records",
           "identify_barcode",
           "identify_fasta", "load_references"]

# The model names a rank on its own when its top name there scores at least this (the Predictor's deepest_rank
# rule), where no reference hit is close and the nearest hits do not contradict it.
MODEL_THRESHOLD = 0.5
MODEL_ALONE: dict[str, float] = {"order": MODEL_THRESHOLD, "family": MODEL_THRESHOLD}
"""Per rank, the score the model needs to name it alone. Never at genus or species: a query with no close hit
there is mostly from a genus or species the references (and so the model's label set) lack, and the model can
only answer with a name it knows. Re-checked with a model that had not seen the validation slices
(docs/coi_engine.md): at genus, >= 0.2 or 0.3 named no genus right on any slice and only wrong ones on the
open-set slice; >= 0.5 named nothing at all."""
AGREE: dict[str, tuple[float, float]] = {"order": (75.0, 0.1), "family": (80.0, 0.1), "genus": (92.0, 0.1),
                                         "species": (95.0, 0.1)}
"""Per rank, (minimum identity of the nearest hit, minimum model score): below :data:`RANK_THRESHOLDS`, a rank is
named by the model and the hits together (``decided_by = "alignment+model"``; a note gives the agreeing hit's
identity) when the model's top name
is carried by one of the nearest hits (those within ``NEAR_BEST`` points of the closest) and they reach these. An
alignment and a model agreeing is evidence neither gives alone: on the closed-set validation slices this named
1-4 points more queries correctly at order and family, with up to 1.2 points more wrong names among those named.
Genus and species need 92 / 95 %: at 85 / 88 % the open-set slice (held-out genera) got a wrong genus for 7 % of
its reads, at 92 / 95 % for 2 %."""
RESUME_BELOW = True
"""Below a rank the model (or the model and the hits together) named, the close hits still decide finer ranks
on their own (:func:`~hirviz.coi_refs.rank_verdicts` with ``walk=False``), when their name hangs under it."""
# Records checked before their references are searched together (one k-mer prefilter call per batch).
_BATCH = 256
ROW_COLUMNS: tuple[str, ...] = (
    "id", *LEVELS, "deepest_rank", *(f"score_{level}" for level in LEVELS), "decided_by", "best_hit", "identity",
    "coverage", "orientation", "coi_found", "stop_codons", "notes",
)

Levels = Mapping[str, Sequence[tuple[str, float]]]
# A Predictor (anything with .predict(barcode=...)) or a callable sequence -> {level: [(name, score)]}.
ModelLike = Callable[[str], Levels] | Any
# A ReferenceSet, a barcode TSV path, or a Bundle (anything with .reference).
ReferencesLike = ReferenceSet | str | os.PathLike | Any | None


@dataclass
class RankAnswer:
    """The answer at one rank: ``name`` ("" = abstain), ``score`` (the best supporting identity / 100 when
    decided by alignment or protein hits, the model's score otherwise) and ``decided_by``: ``"alignment"`` (close
    hits), ``"protein"`` (the protein hits, at order and family),
    ``"alignment+model"`` (the model's name, carried by the nearest hits below the close-hit thresholds),
    ``"model"`` (the model alone) or ``""`` (not named)."""

    name: str = ""
    score: float = 0.0
    decided_by: str = ""


@dataclass
class Identification:
    """What :func:`identify_barcode` found.

    Attributes:
        check: the input checks (cleaned sequence, notes, warnings, COI-5P region, stop codons).
        hits: the top-k reference hits (identity and coverage in percent), best first.
        verdicts: the references' answer per rank (:func:`hirviz.coi_refs.rank_verdicts`).
        protein_hits: the same candidate references aligned as proteins, best first (:mod:`hirviz.coi_protein`).
        protein_verdicts: their answer per rank (order and family only; :func:`hirviz.coi_refs.protein_verdicts`).
        model_levels: the model's per-rank ``(name, score)`` lists, or ``None`` without a model.
        answers: the reconciled answer per rank.
        notes: everything worth telling the user: input changes, warnings, disagreements.
    """

    check: BarcodeCheck
    hits: list[Hit] = field(default_factory=list)
    verdicts: dict[str, RankVerdict] = field(default_factory=dict)
    protein_hits: list[Hit] = field(default_factory=list)
    protein_verdicts: dict[str, RankVerdict] = field(default_factory=dict)
    model_levels: dict[str, list[tuple[str, float]]] | None = None
    answers: dict[str, RankAnswer] = field(default_factory=lambda: {level: RankAnswer() for level in LEVELS})
    notes: list[str] = field(default_factory=list)

    @property
    def deepest_rank(self) -> str | None:
        """The deepest rank with a name (``None`` when nothing is named)."""
        named = [level for level in LEVELS if self.answers[level].name]
        return named[-1] if named else None

    def to_row(self, id: str | None = None) -> dict[str, Any]:
        """One flat row with the :data:`ROW_COLUMNS` (identity / coverage of the best hit, in percent)."""
        best = self.hits[0] if self.hits else None
        return {
            "id": id if id is not None else (self.check.name.split()[0] if self.check.name else ""),
            **{level: self.answers[level].name for level in LEVELS},
            "deepest_rank": self.deepest_rank or "",
            **{f"score_{level}": round(self.answers[level].score, 4) for level in LEVELS},
            "decided_by": " ".join(f"{level}:{self.answers[level].decided_by}" for level in LEVELS
                                   if self.answers[level].decided_by),
            "best_hit": best.id if best else "",
            "identity": round(best.identity, 2) if best else "",
            "coverage": round(best.coverage, 1) if best else "",
            "orientation": self.check.orientation,
            "coi_found": self.check.coi_found,
            "stop_codons": len(self.check.stop_codons),
            "notes": "; ".join(self.notes),
        }


def load_references(references: ReferencesLike) -> ReferenceSet | None:
    """A :class:`ReferenceSet` from a ReferenceSet, a barcode TSV path, a bundle (or ``None``)."""
    if references is None or isinstance(references, ReferenceSet):
        return references
    if isinstance(references, (str, os.PathLike)):
        return ReferenceSet.from_tsv(references)
    return ReferenceSet.from_bundle(references)


def identify_barcode(text: str | bytes, references: ReferencesLike = None, predictor: ModelLike | None = None,
                     k: int = 5) -> Identification:
    """Identify one barcode (raw sequence or FASTA text) against ``references`` and optionally a model.

    ``references``: a :class:`~hirviz.coi_refs.ReferenceSet`, a barcode TSV path or a bundle (pass a loaded
    ReferenceSet when identifying many barcodes: its index is built once). ``predictor``: a
    :class:`hirviz.predict.Predictor` or a callable ``sequence -> {level: [(name, score), ...]}``. ``k``: hits kept.

    Raises:
        BarcodeError: input that cannot be a DNA barcode (empty, protein, binary, too long); the message says why.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive whole number, got {k!r}")
    check = check_barcode(text)
    if not check.coi_found:
        return assemble(check)
    refs = load_references(references)
    aligned = refs.hits(check.sequence, k=k) if refs is not None else None
    proteins = _protein_hits(refs, check, aligned)
    model_levels = _model_levels(predictor, check.sequence) if predictor is not None else None
    return assemble(check, aligned, model_levels, k, proteins)


def _protein_hits(refs: ReferenceSet | None, check: BarcodeCheck, hits: Sequence[Hit] | None) -> list[Hit] | None:
    if refs is None or hits is None:
        return None
    return refs.protein_hits(coding_protein(check.sequence, check.region), hits)


def assemble(check: BarcodeCheck, hits: Sequence[Hit] | None = None,
             model_levels: Levels | None = None, k: int = 5,
             protein_hits: Sequence[Hit] | None = None) -> Identification:
    """The :class:`Identification` of checked input from its aligned reference ``hits`` (all of
    :meth:`~hirviz.coi_refs.ReferenceSet.hits`, best first; ``None`` = no references), the model's per-rank
    ``(name, score)`` lists (``None`` = no model) and the protein hits
    (:meth:`~hirviz.coi_refs.ReferenceSet.protein_hits`; ``None`` = not searched): the last step of :func:`identify_barcode`, for callers that
    search references in batches (:func:`identify_fasta`) or keep hits and model answers to score them."""
    result = Identification(check=check, notes=[*check.notes, *check.warnings])
    if not check.coi_found:
        result.notes.append("no identification: the sequence is not a COI-5P barcode")
        return result
    if hits is not None:
        result.hits = list(hits[:k])
        result.verdicts = rank_verdicts(hits)
        result.notes.extend(f"{level}: {v.note}" for level, v in result.verdicts.items() if v.note)
    if protein_hits:
        result.protein_hits = list(protein_hits[:k])
        result.protein_verdicts = protein_verdicts(protein_hits)
    if model_levels is not None:
        result.model_levels = {level: [(str(n), float(s)) for n, s in model_levels.get(level, [])]
                               for level in LEVELS}
    _reconcile(result, hits or [], protein_hits or [])
    return result


def _model_levels(predictor: ModelLike, sequence: str) -> dict[str, list[tuple[str, float]]]:
    if hasattr(predictor, "predict"):
        return predictor.predict(barcode=sequence, neighbours=0).queries["dna"].levels
    return predictor(sequence)


def _reconcile(result: Identification, hits: Sequence[Hit], proteins: Sequence[Hit]) -> None:
    """Fill ``result.answers`` rank by rank from order down (module docstring): close hits, else the protein
    hits (:data:`hirviz.coi_protein.THRESHOLDS`), else the hits and the model agreeing (:data:`AGREE`),
    else the model alone (:data:`MODEL_ALONE`), else stop."""
    answers = result.answers
    free: dict[str, RankVerdict] | None = None
    for level in LEVELS:
        verdict = result.verdicts.get(level)
        if verdict is not None and verdict.name:
            answers[level] = RankAnswer(verdict.name, verdict.identity / 100.0, "alignment")
    if result.model_levels is None and not result.protein_verdicts:
        return
    model_ok = True  # False once the model contradicts a rank the references named: its finer names hang there
    for i, level in enumerate(LEVELS):
        name, score = ((result.model_levels or {}).get(level) or [("", 0.0)])[0]
        answer, verdict = answers[level], result.verdicts.get(level)
        if answer.decided_by == "alignment":
            if name and answer.name != name and model_ok:
                result.notes.append(f"{level}: the model says {name} ({score:.2f}); the reference hits decide")
                model_ok = False
            continue
        if any(not answers[up].name for up in LEVELS[:i]):
            break  # never a finer name under an open coarser rank
        if free is None:
            free = rank_verdicts(hits, walk=False)
        own = free[level]
        if RESUME_BELOW and own.name and _under(hits, level, own.name, answers):
            # The close hits name this rank on their own; only a coarser rank needed the model.
            answers[level] = RankAnswer(own.name, own.identity / 100.0, "alignment")
            continue
        protein = result.protein_verdicts.get(level)
        if protein is not None and protein.name and _under(proteins, level, protein.name, answers):
            answers[level] = RankAnswer(protein.name, protein.identity / 100.0, "protein")
            result.notes.append(f"{level}: {protein.name} from the translated barcode's closest references "
                                f"({protein.identity:.1f} % amino-acid identity, {protein.support} hit(s))")
            continue
        if result.model_levels is None:
            break
        if not model_ok or not name or any(answers[up].name != _top(result, up) for up in LEVELS[:i]):
            break
        near = _near_names(hits, level)
        min_identity, min_score = AGREE.get(level, (101.0, 2.0))
        if near and near[0][1] >= min_identity and name in {n for n, _ in near} and score >= min_score:
            answers[level] = RankAnswer(name, score, "alignment+model")
            result.notes.append(f"{level}: the model's {name} ({score:.2f}) agrees with a hit at "
                                f"{max(ident for n, ident in near if n == name):.1f} % identity")
            continue
        if verdict is not None and verdict.conflict:
            result.notes.append(f"{level}: the model's {name} ({score:.2f}) is not used: the close hits disagree")
            break
        # Nearest hits naming something else below the thresholds are no veto: on the open-set validation slice
        # such a veto (at 85 %) cost 2 points of family and named no fewer wrong families.
        if score >= MODEL_ALONE.get(level, 2.0):
            answers[level] = RankAnswer(name, score, "model")
            continue
        break
    thresholds = ", ".join(f"{lvl} {t[0]:g} %/{t[1]} bp" for lvl, t in RANK_THRESHOLDS.items())
    if any(a.decided_by in ("model", "alignment+model") for a in answers.values()):
        result.notes.append(f"ranks without a close reference hit ({thresholds}) named by the model, alone or "
                            "agreeing with the nearest hits")
    if any(a.decided_by == "protein" for a in answers.values()):
        named = ", ".join(f"{lvl} {t[0]:g} %" for lvl, t in coi_protein.THRESHOLDS.items())
        result.notes.append(f"ranks without a close reference hit named by the protein hits ({named} amino-acid "
                            "identity): COI's protein changes more slowly than its bases, so it still places a "
                            "read whose genus the references lack")


def _top(result: Identification, level: str) -> str:
    return ((result.model_levels or {}).get(level) or [("", 0.0)])[0][0]


def _under(hits: Sequence[Hit], level: str, name: str, answers: Mapping[str, RankAnswer]) -> bool:
    """Whether a hit named ``name`` at ``level`` carries every coarser name already answered (same lineage)."""
    coarser = [up for up in LEVELS[:LEVELS.index(level)] if answers[up].name]
    return any(h.ranks.get(level) == name and all(h.ranks.get(up) == answers[up].name for up in coarser)
               for h in hits)


def _near_names(hits: Sequence[Hit], level: str) -> list[tuple[str, float]]:
    """``(name, identity)`` of the hits within :data:`~hirviz.coi_refs.NEAR_BEST` points of the nearest one that
    are identified at ``level``, nearest first."""
    named = [h for h in hits if h.ranks.get(level)]
    if not named:
        return []
    best = max(h.identity for h in named)
    window = coi_refs.NEAR_BEST.get(level, 3.0)
    return [(h.ranks[level], h.identity) for h in sorted(named, key=lambda h: -h.identity)
            if h.identity >= best - window]


def identify_fasta(path_or_text: str | os.PathLike, references: ReferencesLike = None,
                   predictor: ModelLike | None = None, k: int = 5) -> Iterator[dict[str, Any]]:
    """Identify every record of a FASTA file (a path) or text; yields one :data:`ROW_COLUMNS` row per record.

    A record that cannot be used gets a row with empty names and its error message in ``notes``, so one bad
    sequence never stops a batch. The references are loaded (and indexed) once.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive whole number, got {k!r}")
    text = _read_text(path_or_text)
    refs = load_references(references)
    batch: list[tuple[str, BarcodeCheck | str]] = []
    for number, chunk in enumerate(fasta_records(text), start=1):
        header = chunk.split("\n", 1)[0][1:].strip() if chunk.startswith(">") else ""
        record_id = header.split()[0] if header else f"query{number}"
        try:
            batch.append((record_id, check_barcode(chunk)))
        except BarcodeError as err:
            batch.append((record_id, str(err)))
        if len(batch) == _BATCH:
            yield from _identify_batch(batch, refs, predictor, k)
            batch = []
    yield from _identify_batch(batch, refs, predictor, k)


def _identify_batch(batch: list[tuple[str, BarcodeCheck | str]], refs: ReferenceSet | None,
                    predictor: ModelLike | None, k: int) -> Iterator[dict[str, Any]]:
    """Rows for checked records; the reference prefilter runs once for the whole batch."""
    found = [check for _, check in batch if isinstance(check, BarcodeCheck) and check.coi_found]
    hits = iter(refs.hits_many([c.sequence for c in found], k=k) if refs is not None and found else [])
    for record_id, check in batch:
        if not isinstance(check, BarcodeCheck):
            yield _error_row(record_id, check)
            continue
        if not check.coi_found:
            yield assemble(check).to_row(record_id)
            continue
        model_levels = _model_levels(predictor, check.sequence) if predictor is not None else None
        found = next(hits) if refs is not None else None
        yield assemble(check, found, model_levels, k, _protein_hits(refs, check, found)).to_row(record_id)


def _read_text(path_or_text: str | os.PathLike) -> str:
    if isinstance(path_or_text, os.PathLike) or (isinstance(path_or_text, str) and "\n" not in path_or_text
                                                 and len(path_or_text) < 4096 and Path(path_or_text).is_file()):
        try:
            return Path(path_or_text).read_text(encoding="utf-8", errors="replace")
        except OSError as err:
            raise BarcodeError(f"cannot read {path_or_text}: {err.strerror or err}") from None
    if not isinstance(path_or_text, str):
        raise BarcodeError(f"expected a FASTA path or text, got {type(path_or_text).__name__}")
    return path_or_text


def fasta_records(text: str) -> Iterator[str]:
    """The text of each FASTA record (a text without headers is one record); parsing is left to each record.

    :func:`identify_fasta` yields one row per item, so ``len(list(fasta_records(text)))`` is a batch's size."""
    if ">" not in text:
        yield text
        return
    lines: list[str] = []
    for line in text.splitlines():
        if line.lstrip().startswith(">") and lines:
            yield "\n".join(lines)
            lines = []
        if lines or line.strip():
            lines.append(line)
    if lines:
        yield "\n".join(lines)


def _error_row(record_id: str, message: str) -> dict[str, Any]:
    row: dict[str, Any] = {column: "" for column in ROW_COLUMNS}
    row.update({"id": record_id, "orientation": "unknown", "coi_found": False, "stop_codons": 0,
                "notes": "not identified: " + message, **{f"score_{level}": 0.0 for level in LEVELS}})
    return row
