"""The app's HTML and tables: one model's answers, the degraded barcode, the neighbours, the image the model saw.

Every function returns a ready-to-show value; :data:`CSS` styles the HTML (pass it to ``Blocks.launch``) and
:data:`KEYBOARD_RELEASE_JS` makes the sliders answer the keyboard.
"""

from __future__ import annotations

import base64
import html
import io
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from hirviz import figures
from hirviz.barcode import BarcodeError
from hirviz.degrade import Edit
from hirviz.predict import QUERIES, Prediction
from hirviz.prediction import agreement
from hirviz.taxonomy import LEVELS
from hirviz.ui.engine import DEFAULT_TOP_K

__all__ = ["CSS", "EDIT_STYLES", "DATA_BADGES", "result_html", "barcode_html", "neighbours_frame", "image_html",
           "status_line", "input_message", "data_badge", "verdict_text",
           "agreement_text", "answering", "plain_reason", "input_changes_html", "KEYBOARD_RELEASE_JS", "RANK_CHOICES",
           "shown_ranks", "top_k_value"]

EDIT_STYLES: dict[str, tuple[str, str]] = {  # kind -> (css class, legend text)
    "substitution": ("hz-sub", "substitution"),
    "mask": ("hz-mask", "masked to N"),
    "insertion": ("hz-ins", "insertion"),
    "deletion": ("hz-del", "deletion (bar before the next base)"),
    "n_run": ("hz-nrun", "N-run dropout"),
    "truncation": ("hz-trunc", "truncated tail (not seen by the model)"),
}

# What each kind of bundle was trained on, shown next to every answer it gives (engine.data_kind).
DATA_BADGES: dict[str, tuple[str, str]] = {
    "real": ("hz-real", "Real model: trained on real public COI barcodes (BOLD Systems, BIOSCAN-5M); names are "
                        "real taxa"),
    "synthetic": ("hz-synthetic", "Synthetic teaching demo: trained on simulated specimens; its taxon names are "
                                  "invented, not real insects"),
}

CSS = """
.hz-badge { display: inline-block; margin: 0 0 6px; padding: 2px 8px; border-radius: 10px; font-size: 12px; }
.hz-real { background: #e3f4e8; color: #14532d; border: 1px solid #9bd3ac; }
.hz-synthetic { background: #fff1d6; color: #7a4b00; border: 1px solid #f0c46b; }
.hz-model { color: #1f4fa3; font-weight: 600; }
.hz-result { font-size: 13px; }
.hz-result h4 { margin: 4px 0 6px; font-size: 15px; }
.hz-result .hz-sub-title { color: #555; font-weight: normal; font-size: 12px; }
.hz-table { border-collapse: collapse; width: 100%; table-layout: fixed; font-size: 12px; }
.hz-table th, .hz-table td { border: 1px solid #e3e3e3; padding: 4px 5px; vertical-align: top; text-align: left; }
.hz-table thead th { background: #f6f6f6; }
.hz-table th.hz-level { width: 68px; font-weight: 600; }
.hz-table ul { margin: 0; padding: 0; list-style: none; }
.hz-table li { margin: 0 0 3px; overflow-wrap: break-word; line-height: 1.25; }
.hz-table li:first-child { font-weight: 600; }
.hz-level div { font-weight: 600; font-size: 11px; margin-top: 2px; }
.hz-score { color: #666; font-variant-numeric: tabular-nums; white-space: nowrap; }
.hz-bar { height: 3px; background: #d62728; opacity: .55; margin-top: 1px; }
.hz-na { color: #999; font-style: italic; }
.hz-yes { color: #1a7f37; font-weight: 600; }
.hz-no { color: #c4320a; font-weight: 600; }
.hz-deepest td, .hz-deepest th { background: #fbfbf4; }
.hz-seq { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; line-height: 1.7;
          word-break: break-all; background: #fafafa; border: 1px solid #eee; padding: 6px 8px; border-radius: 4px; }
.hz-sub { background: #ffb347; }
.hz-mask { background: #b9b9b9; }
.hz-ins { background: #7ddc7d; }
.hz-nrun { background: #d3b8ff; }
.hz-trunc { color: #bbb; text-decoration: line-through; }
.hz-del { border-left: 2px solid #d62728; margin: 0 1px; }
.hz-legend span { display: inline-block; margin-right: 10px; padding: 0 4px; font-size: 12px; }
.hz-summary { font-size: 12px; color: #555; margin: 4px 0; }
.hz-figure { margin: 0; text-align: center; }
.hz-figure img { max-width: 100%; height: auto; image-rendering: pixelated; border: 1px solid #eee; }
.hz-figure figcaption { font-size: 12px; color: #555; }
.hz-abstain { background: #f4f4f4; color: #555; font-size: 12px; }
.hz-abstain b { color: #333; }
.hz-changes ul { margin: 2px 0 4px 18px; padding: 0; }
/* Phones: a wide table scrolls inside its own box, never the page; names keep whole words (no letter columns). */
.hz-scroll { overflow-x: auto; max-width: 100%; }
.hz-scroll .hz-table { min-width: 540px; }
.hz-name { overflow-wrap: normal; word-break: normal; hyphens: none; }
.hz-result, .hz-seq { max-width: 100%; box-sizing: border-box; }
#hz-neighbours, #hz-coi-hits { max-width: 100%; overflow-x: auto; }
#hz-neighbours th span.header, #hz-coi-hits th span.header { white-space: nowrap; overflow-wrap: normal;
  word-break: normal; }
/* Side-by-side answers stack on a phone rather than share 390 px (Gradio's own minimum is 160 px). */
#hz-coi, #hz-coi-hits, .hz-result-box { min-width: min(380px, 100%) !important; }
@media (max-width: 640px) {
  .hz-legend span { margin-right: 4px; }
  .hz-table th.hz-level { width: 62px; }
}
/* No soft wrapping in the barcode box: wrapping one pasted line of 100 kb freezes a browser for seconds. */
#hz-barcode textarea { white-space: pre; overflow-x: auto; font-family: ui-monospace, Menlo, Consolas, monospace; }
"""


# A slider moved with the keyboard fires "input" and "change" but no "release" (Gradio sends that on pointerup and
# on leaving the number box), so keyboard users would never re-identify. On the key's release, the range input gets
# the pointerup it lacks: one request per key press, while dragging still sends one request on release.
KEYBOARD_RELEASE_JS = """() => {
  const keys = new Set(["ArrowLeft", "ArrowRight", "ArrowUp", "ArrowDown", "Home", "End", "PageUp", "PageDown"]);
  document.addEventListener("keyup", (event) => {
    const target = event.target;
    if (target instanceof HTMLInputElement && target.type === "range" && keys.has(event.key)) {
      target.dispatchEvent(new PointerEvent("pointerup", {bubbles: true}));
    }
  });
}"""


# The result tables' rank control: every rank, or one.
RANK_CHOICES: tuple[str, ...] = ("all ranks", *LEVELS)


def shown_ranks(rank: str | None) -> tuple[str, ...]:
    """The ranks a table shows for the rank control's value (:data:`RANK_CHOICES`; anything else: all ranks)."""
    return (rank,) if rank in LEVELS else tuple(LEVELS)


def top_k_value(top_k: Any) -> int:
    """The top-k control's value as a whole number >= 1 (an unreadable value gives the default)."""
    try:
        return max(1, int(float(top_k)))
    except (TypeError, ValueError):
        return DEFAULT_TOP_K


def query_label(query: str) -> str:
    """A query's name as the page shows it ("image only", "gated fusion", ...)."""
    return figures.QUERY_LABELS.get(query, query)


def _needs(query: str, fusion: bool = True, image: bool = True) -> str:
    if query in ("image", "avg", "fused") and not image:
        return "no trained image model (barcodes only)"
    if query == "fused" and not fusion:
        return "no trained fusion in this model"
    return {"image": "needs an image", "dna": "needs a barcode"}.get(query, "needs an image and a barcode")


def answering(prediction: Prediction) -> dict[str, Any]:
    """The queries of a prediction that give an answer (those that did not abstain), in :data:`QUERIES` order."""
    return {q: r for q, r in prediction.queries.items() if not getattr(r, "abstained", False)}


def plain_reason(reason: str | None) -> str:
    """An abstention reason without its leading "no confident match:" (the page says that already)."""
    text = (reason or "the evidence is too weak").strip()
    prefix = "no confident match:"
    if text.lower().startswith(prefix):
        text = text[len(prefix):].strip()
    return text[:1].upper() + text[1:]


def data_badge(kind: str) -> str:
    """The marker of what a model was trained on: ``"real"`` or ``"synthetic"`` (:data:`DATA_BADGES`)."""
    css, text = DATA_BADGES.get(kind, DATA_BADGES["synthetic"])
    return f"<div class='hz-badge {css}' data-kind='{html.escape(kind)}'>{html.escape(text)}</div>"


def result_html(name: str, prediction: Prediction | None, *, note: str = "", fusion: bool = True,
                data: str = "", image: bool = True, top_k: int = DEFAULT_TOP_K, rank: str | None = None) -> str:
    """One model's answers as an HTML table: levels down, the four queries across, and their agreement.

    Each cell lists the top names with their scores (a rank's score sums its descendants' probabilities); the
    last row gives the deepest rank each query's evidence supports. A query that abstained shows "no confident
    match" and why, instead of names. ``fusion=False`` says that the model has no trained fusion and
    ``image=False`` that it has no trained image model (their columns explain that instead of asking for
    inputs). ``data`` (``"real"`` or ``"synthetic"``) adds the marker of what the model was trained on.
    ``top_k`` names are listed per cell, and ``rank`` (:data:`RANK_CHOICES`) picks the rank rows shown; the
    "deepest supported" row is always there.
    """
    subtitle = f" <span class='hz-sub-title'>{html.escape(note)}</span>" if note else ""
    title = f"<h4>{html.escape(name)}{subtitle}</h4>" + (data_badge(data) if data else "")
    if prediction is None:
        return f"<div class='hz-result'>{title}<p class='hz-na'>No prediction yet.</p></div>"
    gate = ""
    if prediction.gate is not None:
        gate = f" · gate: image {prediction.gate:.0%} / DNA {1 - prediction.gate:.0%}"
    head = "".join(f"<th>{html.escape(query_label(q))}</th>" for q in QUERIES)
    answers = answering(prediction)
    agreed = agreement({q: r.levels for q, r in answers.items()})
    ranks = shown_ranks(rank)
    top_k = top_k_value(top_k)
    rows = []
    for i, level in enumerate(ranks):
        cells = []
        for query in QUERIES:
            result = prediction.queries.get(query)
            if result is None:
                cells.append(f"<td class='hz-na'>{_needs(query, fusion, image)}</td>")
                continue
            if query not in answers:  # one cell down the whole column: the reason, not names
                if i == 0:
                    cells.append(f"<td class='hz-abstain' rowspan='{len(ranks)}' data-query='{query}'>"
                                 f"<b>no confident match</b><div>{html.escape(plain_reason(result.reason))}</div>"
                                 "</td>")
                continue
            items = "".join(
                f"<li><span class='hz-name'>{html.escape(n)}</span>&nbsp;<span class='hz-score'>{s:.1%}</span>"
                f"<div class='hz-bar' style='width:{max(0.0, min(1.0, s)) * 100:.0f}%'></div></li>"
                for n, s in result.levels.get(level, [])[:top_k]
            )
            cells.append(f"<td><ul>{items}</ul></td>" if items else "<td class='hz-na'>no candidate this deep</td>")
        mark = ""
        if len(answers) > 1:  # agreement among the queries that answer; an abstained one has no name to compare
            count = "" if len(answers) == len(prediction.queries) else f" ({len(answers)} of {len(prediction.queries)})"
            mark = (f"<div class='hz-yes' title='every answering query gives the same top name'>✓ agree{count}</div>"
                    if agreed.get(level) else
                    "<div class='hz-no' title='the queries give different top names'>✗ differ</div>")
        rows.append(f"<tr><th class='hz-level'>{level}{mark}</th>{''.join(cells)}</tr>")
    deepest = "".join(
        ("<td class='hz-na'>–</td>" if (r := prediction.queries.get(q)) is None else
         "<td class='hz-abstain'>no confident match</td>" if q not in answers else
         f"<td>{html.escape(r.deepest_rank or 'none (order uncertain)')}</td>")
        for q in QUERIES
    )
    rows.append(f"<tr class='hz-deepest'><th class='hz-level'>deepest supported</th>{deepest}</tr>")
    return (
        f"<div class='hz-result'>{title}<div class='hz-summary'>{verdict_text(prediction)} "
        f"{agreement_text(prediction)}{gate}</div>"
        f"<div class='hz-scroll'><table class='hz-table'><thead><tr><th class='hz-level'>level</th>{head}</tr>"
        f"</thead><tbody>{''.join(rows)}</tbody></table></div></div>"
    )


def verdict_text(prediction: Prediction) -> str:
    """The overall answer in words, from :attr:`Prediction.verdict` (the first answering query, joint evidence
    first): its name at the deepest rank it supports, the very cell the table shows; "no confident match" when
    every query abstained."""
    query, rank = prediction.verdict
    if query is None:
        reasons = dict.fromkeys(plain_reason(r.reason) for r in prediction.queries.values())
        return f"No confident match: {'; '.join(reasons)}."
    if rank is None:
        return f"{query_label(query)} does not settle even the order."
    top = prediction.queries[query].levels[rank][0]
    return f"{query_label(query)} names the {rank} {top[0]} ({top[1]:.0%})."


def agreement_text(prediction: Prediction) -> str:
    """One sentence on where the answering queries of a prediction agree (the tables' ✓ / ✗ marks)."""
    answers = answering(prediction)
    abstained = [query_label(q).lower() for q in prediction.queries if q not in answers]
    note = f" No confident match from: {', '.join(abstained)}." if abstained else ""
    if len(answers) < 2:
        only = f"One answering query ({query_label(next(iter(answers)))})." if answers else ""
        return (only + note).strip()
    agreed = agreement({q: r.levels for q, r in answers.items()})
    agree = [lvl for lvl in LEVELS if agreed.get(lvl)]
    differ = [lvl for lvl in LEVELS if not agreed.get(lvl)]
    n = len(answers)
    if not differ:
        return f"The {n} answering queries agree at every level.{note}"
    if not agree:
        return f"The {n} answering queries disagree at every level.{note}"
    return f"The {n} answering queries agree at {', '.join(agree)}; they differ at {', '.join(differ)}.{note}"


def input_changes_html(notes: Sequence[str] | None) -> str:
    """Every change made to the pasted text before a model read it (:func:`hirviz.coi_check.input_notes`), or
    that none was made."""
    if not notes:
        return "<div class='hz-summary hz-changes'>Your input was read exactly as pasted: no changes.</div>"
    items = "".join(f"<li>{html.escape(n[:1].upper() + n[1:])}</li>" for n in notes)
    return f"<div class='hz-summary hz-changes'>Changes made to your input:<ul>{items}</ul></div>"


def barcode_html(clean: str | None, degraded: str | None, edits: Sequence[Edit],
                 notes: Sequence[str] | None = None) -> str:
    """The barcode the model saw, each change coloured by kind (legend included).

    ``degraded`` is ``None`` when no DNA noise was applied; the truncated tail is shown struck through after
    the kept bases, and a deletion as a red bar just before the base that followed the deleted one. ``notes``
    lists the changes made to the pasted text before that (cleaning, record chosen, reverse complement).
    """
    if clean is None:
        return "<div class='hz-summary'>No barcode given.</div>"
    changes = input_changes_html(notes)
    if degraded is None:
        return (f"<div class='hz-summary'>Barcode: {len(clean)} bp (no DNA noise added).</div>{changes}"
                f"<div class='hz-seq'>{html.escape(clean)}</div>")
    tail = "".join(e.before for e in edits if e.kind == "truncation")
    full = degraded + tail
    classes = np.full(len(full), "", dtype=object)
    titles = np.full(len(full), "", dtype=object)
    deleted: dict[int, list[str]] = {}
    for edit in edits:
        css = EDIT_STYLES.get(edit.kind, ("", ""))[0]
        if edit.kind == "deletion":
            deleted.setdefault(edit.position, []).append(edit.before)
        elif edit.kind in ("substitution", "mask"):
            classes[edit.position], titles[edit.position] = css, f"{edit.before}→{edit.after} at {edit.position + 1}"
        elif edit.kind == "insertion":
            classes[edit.position], titles[edit.position] = css, f"inserted {edit.after} at {edit.position + 1}"
        elif edit.kind == "n_run":
            classes[edit.position: edit.position + edit.length] = css
            titles[edit.position: edit.position + edit.length] = f"N run of {edit.length} bp"
        elif edit.kind == "truncation":
            classes[edit.position:] = css
            titles[edit.position:] = f"cut off ({len(tail)} bp)"
    parts: list[str] = []
    start = 0
    # Runs of equal style become one span: a 660 bp barcode is a handful of spans, not 660.
    for i in range(1, len(full) + 1):
        if i == len(full) or classes[i] != classes[start] or titles[i] != titles[start] or i in deleted:
            text = html.escape(full[start:i])
            parts.append(f"<span class='{classes[start]}' title='{html.escape(titles[start])}'>{text}</span>"
                         if classes[start] else text)
            start = i
        if i in deleted and i < len(full) + 1:
            parts.append(f"<span class='hz-del' title='deleted {''.join(deleted[i])}'></span>")
    if 0 in deleted:
        parts.insert(0, f"<span class='hz-del' title='deleted {''.join(deleted[0])}'></span>")
    counts = Counter(e.kind for e in edits)
    legend = "".join(
        f"<span class='{css}'>{label}: {counts.get(kind, 0)}</span>" for kind, (css, label) in EDIT_STYLES.items()
    )
    summary = f"Barcode: {len(clean)} bp given, {len(degraded)} bp seen by the model after the noise."
    return (f"<div class='hz-summary'>{summary}</div>{changes}<div class='hz-legend'>{legend}</div>"
            f"<div class='hz-seq'>{''.join(parts)}</div>")


def neighbours_frame(prediction: Prediction | None, top_k: int = DEFAULT_TOP_K, rank: str | None = None
                     ) -> pd.DataFrame:
    """The ``top_k`` nearest reference specimens of every query: rank, id, taxonomy (the ranks of ``rank``,
    :data:`RANK_CHOICES`) and cosine similarity."""
    levels = shown_ranks(rank)
    columns = ["query", "#", "specimen", *levels, "similarity"]
    rows = []
    for query in QUERIES:
        result = prediction.queries.get(query) if prediction is not None else None
        hits = result.neighbours[:top_k_value(top_k)] if result is not None else []
        for number, hit in enumerate(hits, start=1):
            ranks = hit.get("ranks") or {}
            rows.append([query_label(query), number, hit.get("id", ""), *[ranks.get(lvl) or "–" for lvl in levels],
                         round(float(hit.get("similarity", float("nan"))), 4)])
    return pd.DataFrame(rows, columns=columns)


def image_html(image: Image.Image | None, caption: str = "What the image model sees (after blur)") -> str:
    """An image inlined as a data URL: no file is written, and concurrent requests cannot race on one."""
    if image is None:
        return f"<div class='hz-summary'>{html.escape(caption)}: no image given.</div>"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f"<figure class='hz-figure'><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}' "
            f"width='{image.width}' height='{image.height}'><figcaption>{html.escape(caption)}</figcaption></figure>")


def status_line(kind: str, message: str) -> str:
    """A status message with the icon of its kind (``ok``, ``error`` or ``info``)."""
    icon = {"ok": "✓", "error": "✗", "info": "→"}[kind]
    return f"{icon} {message}"


def input_message(err: Exception) -> str:
    """A refused input's message for the page, starting with what was refused."""
    what = "Barcode" if isinstance(err, BarcodeError) else "Input"
    message = str(err) or type(err).__name__
    return f"{what} refused: {message[0].upper()}{message[1:]}"
