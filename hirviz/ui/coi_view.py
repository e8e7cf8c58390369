"""The app's COI-barcode answers: one pasted barcode (:func:`identify_coi`) and a FASTA batch (:func:`batch_identify`).

Both run the identification engine (:func:`hirviz.coi.identify_barcode`) with the :class:`~hirviz.ui.engine.Engine`'s
COI bundle: its reference barcodes for the hits and its model for the ranks no reference is close enough to name.
The page shows the input checks, the hits with percent identity and coverage, the thresholds in plain words, and
the reconciled answer per rank (which source decided it) beside the model's own answer. Nothing here raises on
bad input: a message comes back instead.
"""

from __future__ import annotations

import csv
import html
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hirviz import coi_protein
from hirviz.barcode import BarcodeError
from hirviz.coi import MODEL_THRESHOLD, ROW_COLUMNS, Identification, fasta_records, identify_barcode, identify_fasta
from hirviz.coi_refs import AGREEMENT, RANK_THRESHOLDS
from hirviz.taxonomy import LEVELS
from hirviz.ui.engine import Engine
from hirviz.ui.render import data_badge, status_line

__all__ = ["CoiView", "HIT_COLUMNS", "MAX_BATCH_RECORDS", "MAX_BATCH_BYTES", "identify_coi", "coi_html",
           "hits_frame", "thresholds_text", "batch_identify", "empty_coi_html"]

HIT_COLUMNS: tuple[str, ...] = ("#", "reference", *LEVELS, "identity %", "coverage %", "aligned bp")
# A batch is identified inside one request: keep it to what finishes in a few minutes on a small CPU.
MAX_BATCH_RECORDS = 1000
MAX_BATCH_BYTES = 5_000_000
_DECIDED = {"alignment": "decided by alignment", "protein": "decided by the protein (translated barcode)",
            "alignment+model": "the model, backed by the nearest hits", "model": "decided by the model",
            "": "not named"}
# Cell classes per decided_by (hirviz.ui.render.CSS has hz-yes / hz-model / hz-na; hz-both is in _CSS below).
_DECIDED_CSS = {"alignment": "hz-yes", "protein": "hz-both", "alignment+model": "hz-both", "model": "hz-model",
                "": "hz-na"}
_CSS = "<style>.hz-both { color: #0f6b5c; font-weight: 600; }</style>"


@dataclass
class CoiView:
    """What the page shows for one barcode: ``ok`` (False when refused), a status line, the HTML answer, the hits
    table and the raw result (the flat :data:`hirviz.coi.ROW_COLUMNS` row plus every hit)."""

    ok: bool
    status: str
    html: str
    hits: pd.DataFrame = field(default_factory=lambda: hits_frame(None))
    raw: dict[str, Any] = field(default_factory=dict)
    result: Identification | None = None  # the engine's answer (None when refused)


def thresholds_text() -> str:
    """The verdict rules in plain words (from :data:`hirviz.coi_refs.RANK_THRESHOLDS`)."""
    rules = "; ".join(f"<b>{level}</b>: at least {identity:g} % identical over at least {bp} aligned bases"
                      for level, (identity, bp) in reversed(list(RANK_THRESHOLDS.items())))
    protein = ", ".join(f"{identity:g} % ({level})" for level, (identity, _) in coi_protein.THRESHOLDS.items())
    return (f"A reference barcode supports a name when it is close enough: {rules}. The name is given when at "
            f"least {AGREEMENT:.0%} of the close references carry it, the closest among them. Where no reference is "
            f"that close, the barcode is translated and compared as a protein: {protein} amino-acid identity can "
            "name the order and family (COI's protein changes more slowly than its bases, so this still places a "
            "read whose genus the references lack; never the genus or species). Then the model names the rank if "
            f"its score is at least {MODEL_THRESHOLD:.0%} and it agrees with every rank already named; otherwise "
            "the rank is left open.")


def empty_coi_html(engine: Engine, message: str = "Paste a barcode to identify it.") -> str:
    """The COI panel before any barcode (or after a refused one)."""
    if engine.coi_name is None:
        return ("<div class='hz-result'><p class='hz-na'>No COI-barcode bundle is loaded: barcodes go to the "
                "demo models only.</p></div>")
    return f"<div class='hz-result'>{_title(engine)}<p class='hz-na'>{html.escape(message)}</p></div>"


def _title(engine: Engine) -> str:
    name = engine.coi_name or ""
    return (f"<h4>COI barcode identification: {html.escape(name)} "
            f"<span class='hz-sub-title'>reference alignment + DNA model</span></h4>"
            f"{data_badge(engine.data_kind(name))}")


def identify_coi(engine: Engine, text: str) -> CoiView:
    """Identify one pasted barcode (raw or FASTA) with the engine's COI bundle; never raises on bad input."""
    if engine.coi_name is None:
        return CoiView(False, status_line("error", "No COI-barcode bundle is loaded."), empty_coi_html(engine))
    try:
        result = identify_barcode(text, engine.coi_references(), engine.predictor(engine.coi_name))
    except BarcodeError as err:
        message = str(err) or type(err).__name__
        message = f"Barcode refused: {message[0].upper()}{message[1:]}"
        return CoiView(False, status_line("error", message), empty_coi_html(engine, message))
    row = result.to_row()
    icon = "ok" if result.deepest_rank is not None else "info"
    return CoiView(True, status_line(icon, _summary(engine, result)), coi_html(engine, result), hits_frame(result),
                   {"row": row, "hits": [h.to_dict() for h in result.hits]}, result)


def _summary(engine: Engine, result: Identification) -> str:
    deepest = result.deepest_rank
    if not result.check.coi_found:
        why = "; ".join(result.check.warnings) or "no match to the COI-5P barcode region"
        return f"{engine.coi_name}: no confident match, the sequence is not a usable COI-5P barcode ({why})."
    if deepest is None:
        return f"{engine.coi_name}: no confident match, not even the order is settled (see the notes)."
    answer = result.answers[deepest]
    how = _DECIDED[answer.decided_by]
    best = f"; best hit {result.hits[0].identity:.1f} % identical" if result.hits else ""
    return f"{engine.coi_name}: {deepest} {answer.name} ({how}{best})."


def coi_html(engine: Engine, result: Identification) -> str:
    """The answer per rank (name, score, which source decided it) beside the references' and the model's own
    answers, then the input checks, the notes and the rules."""
    rows = []
    for level in LEVELS:
        answer, verdict = result.answers[level], result.verdicts.get(level)
        named = (f"<b>{html.escape(answer.name)}</b>&nbsp;<span class='hz-score'>{answer.score:.1%}</span>"
                 if answer.name else "<span class='hz-na'>open</span>")
        refs = (f"{html.escape(verdict.name)} <span class='hz-score'>{verdict.identity:.1f} %, "
                f"{verdict.support} hit{'s' * (verdict.support != 1)}</span>" if verdict is not None and verdict.name
                else f"<span class='hz-na'>{html.escape(verdict.note if verdict is not None else 'no hits')}</span>")
        protein = result.protein_verdicts.get(level)
        if protein is not None and protein.name and not (verdict is not None and verdict.name):
            refs += (f"<br>protein: {html.escape(protein.name)} <span class='hz-score'>{protein.identity:.1f} % "
                     f"amino acids, {protein.support} hit{'s' * (protein.support != 1)}</span>")
        top = (result.model_levels or {}).get(level) or []
        model = (f"{html.escape(top[0][0])} <span class='hz-score'>{top[0][1]:.1%}</span>" if top
                 else "<span class='hz-na'>no model answer</span>")
        css = _DECIDED_CSS[answer.decided_by]
        rows.append(f"<tr><th class='hz-level'>{level}</th><td>{named}</td>"
                    f"<td class='{css}'>{_DECIDED[answer.decided_by]}</td><td>{refs}</td><td>{model}</td></tr>")
    check = result.check
    facts = [check.region.describe() if check.region is not None else "no COI-5P region found",
             f"orientation: {check.orientation}", f"{len(check.sequence)} bp compared",
             "in-frame stop codons at " + ", ".join(map(str, check.stop_codons[:10])) if check.stop_codons
             else "no in-frame stop codon"]
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in result.notes)
    return (
        f"{_CSS}<div class='hz-result hz-coi'>{_title(engine)}"
        "<div class='hz-scroll'><table class='hz-table'><thead><tr><th class='hz-level'>rank</th><th>answer</th>"
        "<th>decided by</th><th>the references say</th><th>the model says</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        f"<div class='hz-summary'>Checks: {html.escape('; '.join(facts))}.</div>"
        + (f"<div class='hz-summary'>Notes:<ul>{notes}</ul></div>" if notes else "")
        + f"<div class='hz-summary'>{thresholds_text()}</div></div>"
    )


def hits_frame(result: Identification | None) -> pd.DataFrame:
    """The closest reference barcodes: id, taxonomy, percent identity and coverage, aligned length."""
    rows = [[n, h.id, *[h.ranks.get(level) or "–" for level in LEVELS], round(h.identity, 2), round(h.coverage, 1),
             h.aligned] for n, h in enumerate(result.hits if result is not None else [], start=1)]
    return pd.DataFrame(rows, columns=list(HIT_COLUMNS))


# ---------------------------------------------------------------------------------------------------- batch


def batch_identify(engine: Engine, upload: Any,
                   progress: Callable[[int, int], None] | None = None) -> tuple[str, str | None, pd.DataFrame]:
    """Identify every record of an uploaded FASTA file with the COI bundle.

    Returns a status line, the path of a TSV with the :data:`hirviz.coi.ROW_COLUMNS` (in a fresh temporary
    folder; ``None`` when refused) and the table itself. ``progress(done, total)`` is called after each record.
    """
    empty = pd.DataFrame(columns=list(ROW_COLUMNS))
    if engine.coi_name is None:
        return status_line("error", "No COI-barcode bundle is loaded."), None, empty
    path = upload.get("path") if isinstance(upload, dict) else upload
    if not path:
        return status_line("error", "Upload a FASTA file of barcodes (one record per specimen) first."), None, empty
    try:
        size = os.path.getsize(path)
        if size > MAX_BATCH_BYTES:
            raise BarcodeError(f"the file is {size / 1e6:.1f} MB; the app takes up to {MAX_BATCH_BYTES / 1e6:g} MB "
                               "(use `python -m hirviz identify --fasta FILE` for larger batches)")
        raw = Path(path).read_bytes()
        if b"\0" in raw[:4096]:
            raise BarcodeError("the file is binary, not a FASTA text file")
        text = raw.decode("utf-8", errors="replace")
        records = list(fasta_records(text))
        if not records or not text.strip():
            raise BarcodeError("the file holds no sequence")
        if len(records) > MAX_BATCH_RECORDS:
            raise BarcodeError(f"the file holds {len(records)} records; the app takes up to {MAX_BATCH_RECORDS} "
                               "(use `python -m hirviz identify --fasta FILE` for larger batches)")
    except (OSError, BarcodeError) as err:
        return status_line("error", f"File refused: {err}"), None, empty
    rows = []
    predictor = engine.predictor(engine.coi_name)
    for row in identify_fasta(text, engine.coi_references(), predictor):
        rows.append(row)
        if progress is not None:
            progress(len(rows), len(records))
    out = Path(tempfile.mkdtemp(prefix="hirviz-batch-")) / f"{Path(str(path)).stem or 'barcodes'}-identified.tsv"
    with open(out, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(ROW_COLUMNS), delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    frame = pd.DataFrame(rows, columns=list(ROW_COLUMNS))
    named = int((frame["deepest_rank"] != "").sum())
    species = int((frame["species"] != "").sum())
    return (status_line("ok", f"Identified {len(rows)} record{'s' * (len(rows) != 1)} with {engine.coi_name}: "
                              f"{named} named at some rank, {species} to species. Download the table below."),
            str(out), frame)
