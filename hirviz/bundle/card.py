"""The model card's evaluation section: accuracy tables written between markers, so they can be rewritten in place."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["EVAL_START", "EVAL_END", "eval_markdown", "with_eval_section"]

# The model card's evaluation section sits between these markers so that it can be rewritten in place.
EVAL_START = "<!-- hirviz:eval:start -->"
EVAL_END = "<!-- hirviz:eval:end -->"


def eval_markdown(results: Mapping[str, Any] | None) -> str:
    """Markdown accuracy tables of evaluation results (one table per condition, top-1 / top-5 in percent).

    ``results`` follows the evaluation schema ``{condition: {query: {level: {"top1", "top5"}}}}``; the extra
    keys of ``python -m train eval`` (``_meta``, ``sweep``, ``retrieval``) are summarised, not tabulated.
    """
    if not results:
        return "Not evaluated yet."
    blocks = []
    meta = results.get("_meta")
    if isinstance(meta, Mapping) and meta.get("metadata"):
        subset = f"{meta['subset']} rows of " if meta.get("subset") else ""
        blocks.append(f"Measured on the {subset}`{Path(str(meta['metadata'])).name}`.")
    for condition, queries in results.items():
        if condition.startswith("_") or condition in _EXTRA_RESULTS or not _is_table(queries):
            continue
        # A query's other blocks (its "hierarchy" numbers) are not accuracy columns: only scores are.
        levels = list(dict.fromkeys(lvl for per_level in queries.values() for lvl, s in per_level.items()
                                    if isinstance(s, Mapping) and "top1" in s))
        lines = [f"**{condition}** (top-1 / top-5 accuracy, %)", "",
                 "| query | " + " | ".join(levels) + " |", "|---|" + "---|" * len(levels)]
        for query, per_level in queries.items():
            cells = [_cell(per_level.get(lvl)) for lvl in levels]
            lines.append(f"| {query} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    extras = [f"`{key}` ({what})" for key, what in _EXTRA_RESULTS.items() if key in results]
    if extras:
        blocks.append("Also in `eval.json`: " + ", ".join(extras) + ".")
    return "\n\n".join(blocks) if blocks else "Not evaluated yet."


_EXTRA_RESULTS = {"sweep": "accuracy against noise strength", "retrieval": "CLIBD's retrieval protocol"}


def with_eval_section(card: str, results: Mapping[str, Any] | None) -> str:
    """``card`` with its evaluation section (between the markers) set to :func:`eval_markdown` of ``results``.

    A card without the markers gets an "Evaluation" section appended.
    """
    section = f"{EVAL_START}\n{eval_markdown(results)}\n{EVAL_END}"
    start, end = card.find(EVAL_START), card.find(EVAL_END)
    if 0 <= start < end:
        return card[:start] + section + card[end + len(EVAL_END):]
    return card.rstrip("\n") + ("\n\n" if card.strip() else "") + "## Evaluation\n\n" + section + "\n"


def _is_table(queries: Any) -> bool:
    return isinstance(queries, Mapping) and bool(queries) and all(
        isinstance(per_level, Mapping) and all(isinstance(v, Mapping) for v in per_level.values())
        for per_level in queries.values())


def _cell(scores: Mapping[str, Any] | None) -> str:
    if not scores:
        return "-"
    parts = [f"{float(scores[k]):.1f}" if isinstance(scores.get(k), (int, float)) else "-" for k in ("top1", "top5")]
    return " / ".join(parts)
