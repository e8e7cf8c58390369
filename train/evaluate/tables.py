"""Markdown tables of a results dict: the papers' Table 1 and Table 2 layouts, the noise sweep and retrieval."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hirviz.queries import QUERIES
from hirviz.taxonomy import LEVELS
from train.evaluate.metrics import EVAL_LEVELS
from train.evaluate.orchestration import CONDITIONS


def score_cell(scores: Mapping[str, Any] | None, keys: Sequence[str] = ("top1", "top5")) -> str:
    """"top-1 / top-5"; with a ``<key>_sd`` beside a score (results aggregated over seeds) "mean ± sd"."""
    if not scores:
        return "–"

    def one(k: str) -> str:
        if scores.get(k) is None:
            return "–"
        sd = scores.get(f"{k}_sd")
        return f"{float(scores[k]):.1f}" + ("" if sd is None else f"±{float(sd):.1f}")

    return " / ".join(one(k) for k in keys)


def _table(header: Sequence[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


_LEVEL_HEADERS = [level.capitalize() for level in EVAL_LEVELS]


def format_table1(results_by_method: Mapping[str, Mapping[str, Any]]) -> str:
    """The paper's Table 1 layout for one or more models: IT and DT, clean and noisy, no fusion.

    Rows: setting (IT = image -> text, DT = DNA -> text) x method x condition (IT's noise is the image blur,
    DT's the DNA noise); columns: order .. species and global, each "top-1 / top-5".
    """
    rows = []
    for setting, query, noisy in (("IT", "image", "noisy_image"), ("DT", "dna", "noisy_dna")):
        for method, results in results_by_method.items():
            for label, condition in (("Clean", "clean"), ("Noisy", noisy)):
                per_level = (results.get(condition) or {}).get(query)
                if per_level:
                    rows.append([setting, method, label, *[score_cell(per_level.get(lvl)) for lvl in EVAL_LEVELS]])
    return _table(["Setting", "Method", "Cond.", *_LEVEL_HEADERS], rows)


def format_table2(results: Mapping[str, Any]) -> str:
    """The paper's Table 2 layout for one model: IT, DT, I+DT (Avg) and I+DT (Fused) under their conditions."""
    blocks = (("IT", "image", (("Clean", "clean"), ("Noisy I", "noisy_image"))),
              ("DT", "dna", (("Clean", "clean"), ("Noisy D", "noisy_dna"))),
              ("I+DT (Avg)", "avg", (("Clean", "clean"), ("Noisy D", "noisy_dna"), ("Noisy I+D", "noisy_both"))),
              ("I+DT (Fused)", "fused", (("Clean", "clean"), ("Noisy D", "noisy_dna"), ("Noisy I+D", "noisy_both"))))
    rows = []
    for method, query, conditions in blocks:
        first = True
        for label, condition in conditions:
            per_level = (results.get(condition) or {}).get(query)
            if per_level:
                rows.append([method if first else "", label, *[score_cell(per_level.get(lvl)) for lvl in EVAL_LEVELS]])
                first = False
    return _table(["Method", "Cond.", *_LEVEL_HEADERS], rows)


def format_tables(results: Mapping[str, Any]) -> str:
    """Markdown of a results dict: Table 1 and Table 2 layouts, then the sweep and retrieval when present."""
    meta = results.get("_meta") or {}
    name = meta.get("bundle") or "model"
    parts = [f"# Evaluation of {name}", ""]
    if meta:
        parts += [f"{meta.get('specimens', '?')} specimens ({meta.get('subset', 'all')} rows of "
                  f"{meta.get('metadata', 'the dataset')}); {meta.get('candidates', {}).get('count', '?')} "
                  f"{meta.get('candidates', {}).get('source', '')} candidates; image noise = {meta.get('blur_kernel')}"
                  f"x{meta.get('blur_kernel')} box blur; DNA noise = the paper's rates, seed {meta.get('noise_seed')}.",
                  ""]
        parts += [_PER_LEVEL_NOTES.get(meta.get("per_level") or "string", ""), ""]
    parts += ["## Table 1 layout: no fusion (Top-1 / Top-5 accuracy, %)", "", format_table1({name: results}), "",
              "## Table 2 layout: fusion (Top-1 / Top-5 accuracy, %)", "", format_table2(results), ""]
    hierarchy = format_hierarchy(results)
    if hierarchy:
        parts += ["## Hierarchy consistency", "", hierarchy, "", _HIERARCHY_NOTE, ""]
    if results.get("sweep"):
        parts += ["## Global top-1 accuracy (%) against noise strength", "", _format_sweep(results["sweep"]), ""]
    retrieval = results.get("retrieval") or {}
    condition = next((c for c in CONDITIONS if c in retrieval), None)
    if condition is not None:
        parts += [f"## Retrieval against the reference bank ({condition}; top-1 / top-3 / top-5, %)", "",
                  _format_retrieval(retrieval[condition]), "",
                  str(retrieval.get("definition", "")) + ". Every condition is in the results JSON.", ""]
    return "\n".join(parts)


_PER_LEVEL_NOTES = {
    "string": "Per-level accuracy: the level's name of the predicted taxonomy strings (`--per-level string`); "
              "Global = the exact whole string.",
    "independent": "Per-level accuracy: each level ranks its own distinct prefixes (`--per-level independent`); "
                   "Global = the exact whole string.",
}
_HIERARCHY_NOTE = (
    "Severity: mean tree distance (LCA height, 0 = same species .. 4 = different orders) of the wrong first answers; "
    "HDist@k: mean tree distance of the first k answers (specimens identified to species); rho: Spearman "
    "correlation of tree and cosine distance over specimen pairs; Depth: ranks (0-4) the nearest reference of the "
    "embedding still shares (clean = no noise); Moved: mean cosine distance clean -> degraded. Lower severity and "
    "HDist, higher rho and depth are better.")


# The conditions that change a query (the others repeat its clean row): the JSON has every one.
_READS = {"image": ("clean", "noisy_image"), "dna": ("clean", "noisy_dna")}


def _number(value: Any, digits: int = 2) -> str:
    return "–" if value is None else f"{float(value):.{digits}f}"


def format_hierarchy(results: Mapping[str, Any]) -> str:
    """The hierarchy-consistency numbers of every query and the conditions that change it, as one table ("" when
    there are none; an image query under DNA noise repeats its clean row, so it is left out here, not in the JSON).
    """
    rows = []
    for query in QUERIES:
        for condition in _READS.get(query, CONDITIONS):
            h = ((results.get(condition) or {}).get(query) or {}).get("hierarchy")
            if not isinstance(h, Mapping):
                continue
            sev, agree, drift = h.get("mistake_severity") or {}, h.get("agreement") or {}, h.get("drift") or {}
            rows.append([query, condition, _number(sev.get("severity")), _number(sev.get("hdist@1")),
                         _number(sev.get("hdist@5")), _number(agree.get("rho")), _number(drift.get("mean_depth")),
                         _number(drift.get("mean_displacement"), 3)])
    if not rows:
        return ""
    return _table(["Query", "Cond.", "Severity", "HDist@1", "HDist@5", "rho", "Depth", "Moved"], rows)


def _format_sweep(records: Sequence[Mapping[str, Any]]) -> str:
    blocks = []
    for kind, title in (("dna", "DNA noise x"), ("blur", "blur kernel")):
        recs = [r for r in records if r["kind"] == kind and r["level"] == "global"]
        if not recs:
            continue
        strengths = list(dict.fromkeys(r["strength"] for r in recs))
        by = {(r["query"], r["strength"]): r["top1"] for r in recs}
        rows = [[q, *["–" if by.get((q, s)) is None else f"{by[(q, s)]:.1f}" for s in strengths]]
                for q in QUERIES if any(r["query"] == q for r in recs)]
        blocks.append(_table(["Query", *[f"{title} {s:g}" for s in strengths]], rows))
    return "\n\n".join(blocks)


def _format_retrieval(per_query: Mapping[str, Any]) -> str:
    rows = []
    for query, groups in per_query.items():
        for group in ("seen", "unseen"):
            g = groups.get(group) or {}
            for average in ("micro", "macro"):
                cells = [score_cell((g.get(average) or {}).get(lvl), ("top1", "top3", "top5")) for lvl in LEVELS]
                rows.append([query, f"{group} ({g.get('n', 0)})", average, *cells])
    return _table(["Query", "Queries", "Average", *[lvl.capitalize() for lvl in LEVELS]], rows)
