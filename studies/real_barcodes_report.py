"""The markdown report of ``studies/real_barcodes.py`` (kept apart so the study script stays a readable pipeline).

:func:`report` takes the study's JSON payload (aggregated results per arm, k-mer baselines, the lambda selection)
and writes the answers first (HiR on DNA vs CLIBD vs k-mer; hyperbolic vs Euclidean CLIBD on unseen species),
then every table. Arms missing from the payload (a study still running, ``--splits`` / ``--arms``) are left out.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from studies import openset
from train.evaluate import EVAL_LEVELS, format_table1, score_cell

HEADER = "| Method | " + " | ".join(level.capitalize() for level in EVAL_LEVELS) + " |"
RULE = "|---" * (len(EVAL_LEVELS) + 1) + "|"


def _cell(results: Mapping | None, condition: str, level: str, query: str = "dna") -> dict | None:
    return (((results or {}).get(condition) or {}).get(query) or {}).get(level)


def _nearest(results: Mapping, condition: str) -> dict | None:
    """Per-rank scores of the DNA->DNA nearest-neighbour identification (retrieval, every query) in ``results``."""
    found = (((results.get("retrieval") or {}).get(condition) or {}).get("dna") or {}).get("all") or {}
    return found.get("micro")


def _row(name: str, per_level: Mapping | None) -> str:
    return f"| {name} | " + " | ".join(score_cell((per_level or {}).get(level), ("top1",)) for level in EVAL_LEVELS) + " |"


def hierarchy_table(aggs: Mapping[str, Mapping[str, Any]], conditions=("clean", "noisy_dna")) -> str:
    """Mistake severity, tree/embedding agreement and drift of every arm's DNA query (mean over seeds)."""
    def num(v, digits=2):
        return "–" if v is None else f"{float(v):.{digits}f}"

    lines = ["| Arm | Cond. | Severity | HDist@1 | HDist@5 | rho | Drift depth |", "|---|---|---|---|---|---|---|"]
    for name, agg in aggs.items():
        for condition in conditions:
            h = ((agg.get(condition) or {}).get("dna") or {}).get("hierarchy")
            if not h:
                continue
            sev, agree, drift = h.get("mistake_severity") or {}, h.get("agreement") or {}, h.get("drift") or {}
            lines.append(f"| {name} | {condition} | {num(sev.get('severity'))} | {num(sev.get('hdist@1'))} | "
                         f"{num(sev.get('hdist@5'))} | {num(agree.get('rho'))} | {num(drift.get('mean_depth'))} |")
    return "\n".join(lines) if len(lines) > 2 else "(no hierarchy metrics in these results)"


def _seconds(*groups: Mapping[str, Mapping[str, Any]]) -> str:
    seconds = [s for g in groups for a in g.values() for s in a["_meta"].get("train_seconds") or [] if s]
    return f"{min(seconds):.0f}-{max(seconds):.0f} s" if seconds else "–"


def answers(payload: Mapping[str, Any]) -> list[str]:
    """The issue's two questions, answered with the measured numbers (mean ± sd over seeds)."""
    agg, kmer, open_agg = payload["models"], payload.get("kmer"), payload["open_set"]
    lines = ["## Answers", ""]
    hir = next((n for n in agg if n.startswith("hir-dna")), None)
    if "clibd" in agg:
        lines.append("**HiR on DNA vs CLIBD vs k-mer (closed split, DNA -> text Global top-1 %; DNA -> DNA species "
                     "top-1 %)**")
        lines.append("")
        for condition, label in (("clean", "clean"), ("noisy_dna", "noisy DNA")):
            parts = [f"CLIBD {score_cell(_cell(agg['clibd'], condition, 'global'), ('top1',))}"]
            if hir:
                parts.append(f"{hir} {score_cell(_cell(agg[hir], condition, 'global'), ('top1',))} (difference "
                             f"{openset.difference(_cell(agg[hir], condition, 'global'), _cell(agg['clibd'], condition, 'global'))})")
            if "hyperbolic" in agg:
                parts.append(f"hyperbolic {score_cell(_cell(agg['hyperbolic'], condition, 'global'), ('top1',))}")
            if kmer:
                parts.append(f"k-mer NN {score_cell(_cell(kmer, condition, 'global'), ('top1',))}")
            lines.append(f"- {label}: " + "; ".join(parts) + ".")
        for condition, label in (("clean", "clean"), ("noisy_dna", "noisy DNA")):
            parts = [f"{n} {score_cell((_nearest(a, condition) or {}).get('species'), ('top1',))}"
                     for n, a in agg.items() if n != "clibd-paper-recipe"]
            if kmer:
                parts.append(f"k-mer NN {score_cell(_cell(kmer, condition, 'species'), ('top1',))}")
            lines.append(f"- DNA -> DNA species, {label}: " + "; ".join(parts) + ".")
        lines.append("")
    if "open-clibd" in open_agg and "open-hyperbolic" in open_agg:
        e, h = open_agg["open-clibd"], open_agg["open-hyperbolic"]
        lines += ["**Hyperbolic vs Euclidean CLIBD on unseen species from DNA barcodes (open split, test queries, "
                  f"top-1 %; {openset.group_counts(e)['unseen']} unseen and {openset.group_counts(e)['seen']} seen "
                  "queries)**", ""]
        for group in openset.GROUPS:
            for level in ("genus", "species"):
                dd = [openset.dna_dna(a, group) or {} for a in (h, e)]
                zs = [((a.get("openset_text") or {}).get("open") or {}).get(group) or {} for a in (h, e)]
                lines.append(
                    f"- {group} species, {level}: DNA -> DNA hyperbolic {score_cell(dd[0].get(level), ('top1',))} vs "
                    f"Euclidean {score_cell(dd[1].get(level), ('top1',))} (difference "
                    f"{openset.difference(dd[0].get(level), dd[1].get(level))}); DNA -> text zero-shot hyperbolic "
                    f"{score_cell(zs[0].get(level), ('top1',))} vs Euclidean {score_cell(zs[1].get(level), ('top1',))} "
                    f"(difference {openset.difference(zs[0].get(level), zs[1].get(level))}).")
        kmer_open = payload.get("kmer_open_set") or {}
        if kmer_open.get("unseen"):
            lines.append(f"- k-mer NN on the same keys, unseen species: genus "
                         f"{score_cell(kmer_open['unseen'].get('genus'), ('top1',))}, species "
                         f"{score_cell(kmer_open['unseen'].get('species'), ('top1',))}.")
        lines += ["- A difference is mean(hyperbolic) - mean(Euclidean) ± the sd of that difference (seeds "
                  "independent); beyond 2 sd is the bar for calling it real.", ""]
    return lines


def report(payload: Mapping[str, Any], args, minutes: float, plots: list[Path]) -> str:
    agg, kmer, open_agg = payload["models"], payload.get("kmer"), payload["open_set"]
    partial_agg, kmer_partial, coverage = (payload["partial_reads"], payload.get("kmer_partial_reads"),
                                           payload.get("partial_reads_coverage"))
    sel = payload.get("lambda_selection") or {}
    lines = [
        "# Real barcodes: generated tables", "",
        f"Generated by `python studies/real_barcodes.py{' --smoke' if args.smoke else ''}{' --report-only' if args.report_only else ''}` "
        f"(this invocation {minutes:.0f} min; {args.lanes} runs in parallel, one CPU thread each, on a CPU shared "
        f"with other work, so times are pessimistic; a run trains in {_seconds(agg, open_agg)}). Seeds "
        f"{args.seeds}; mean ± sample sd over the seeds each arm finished ({openset.finished({**agg, **open_agg})}). "
        f"Extra overrides: "
        f"{list(args.overrides) or 'none'}.", "",
        "Arms: `clibd` (real_dna.yaml: training barcodes degraded afresh each epoch), `clibd-paper-recipe` (no "
        "training-time degradation, one seed), `hir-dna-l<lambda>` (CLIBD-HiR on DNA, corrected paper-mode loss, "
        "two dropout views per barcode), `hyperbolic` (Lorentz CLIBD, SEL entailment, weight 1.0, sum of the pair "
        "losses, learned curvature and logit scale); `open-*` = the same trained on CLIBD's partition.", "",
    ]
    if sel:
        lines += [f"HiR lambda: picked **{sel.get('picked')}** among 0.01 / 0.1 / 1 on {sel.get('criterion', '–')}; "
                  "validation scores (clean, noisy DNA): " + "; ".join(
                      f"{lam}: {s['clean']:.1f}, {s['noisy_dna']:.1f}" for lam, s in sel.get("scores", {}).items())
                  + ".", ""]
    lines += answers(payload)
    if agg:
        meta = next(iter(agg.values()))["_meta"]
        lines += ["## Closed split: DNA -> text, Table 1 layout (top-1 / top-5, %)", "",
                  f"`barcodes.tsv`, seeded closed-set split: {meta.get('specimens')} test specimens"
                  + (f", {kmer['_meta']['references']} training barcodes (the k-mer references)" if kmer else "")
                  + ". Candidates = the training split's taxonomy strings.", "",
                  format_table1({**agg, **({"k-mer NN (k=6)": kmer} if kmer else {})}), "",
                  "## Closed split: nearest training barcode, the model's DNA space vs k-mer profiles (top-1 %)", "",
                  "Both identify a barcode by the labels of its nearest training barcode; the model measures "
                  "nearness in its DNA embedding (geodesic distance for the hyperbolic model), the k-mer search by "
                  "cosine of 6-mer counts (no Global: retrieval is scored per rank).", "", HEADER, RULE]
        for condition, label in (("clean", "clean"), ("noisy_dna", "noisy DNA")):
            lines += [_row(f"{name} DNA->DNA, {label}", _nearest(a, condition)) for name, a in agg.items()]
            if kmer:
                lines.append(_row(f"k-mer NN, {label}", kmer[condition]["dna"]))
        lines += ["", "## Closed split: hierarchy metrics of the DNA query (mean over seeds)", "",
                  "Severity = mean LCA height of top-1 mistakes (lower is better); HDist@k = mean LCA height of the "
                  "top-k; rho = tree/embedding distance agreement (higher is better); drift depth = deepest rank "
                  "at which a degraded embedding's nearest reference still agrees.", "", hierarchy_table(agg), ""]
    if partial_agg and kmer_partial and coverage:
        lines += ["## Partial reads (`partial_reads_313bp.tsv`): top-1 (%)", "",
                  f"{kmer_partial['_meta']['specimens']} reads of 313 bp (models scored on "
                  f"{next(iter(partial_agg.values()))['_meta'].get('specimens')}). A read whose name at a level is "
                  "absent from the training split cannot be right there; the first row is that ceiling.", "",
                  HEADER, RULE, "| ceiling (name in training split) | " + " | ".join(
                      "–" if coverage.get(level) is None else f"{coverage[level]:.1f}" for level in EVAL_LEVELS[:4])
                  + " | – |"]
        lines += [_row(f"{name} DNA->text", (a.get("clean") or {}).get("dna"))
                  for name, a in partial_agg.items()]
        lines += [_row(f"{name} DNA->DNA", _nearest(a, "clean")) for name, a in partial_agg.items()]
        lines += [_row("k-mer NN (k=6)", kmer_partial["clean"]["dna"]), ""]
    if open_agg:
        kmer_open = payload.get("kmer_open_set") or {}
        clibd_meta = (next(iter(open_agg.values())).get("retrieval_clibd") or {})
        lines += ["## Open split (CLIBD's partition): seen and unseen species, test queries (top-1 %)", "",
                  f"Partition: {clibd_meta.get('partition') or kmer_open.get('partition')}; records per part: "
                  f"{clibd_meta.get('records')}. Unseen species' records are never trained on. DNA->DNA: each "
                  "query's nearest key among every key of the partition (eval --retrieval clibd, micro). DNA->text "
                  "zero-shot: candidates = training strings plus every validation/test record's string "
                  f"({(next(iter(open_agg.values())).get('openset_text') or {}).get('candidates')}); training names: "
                  "the bundle's candidates only (an unseen species cannot be named).", "",
                  openset.openset_table(open_agg, kmer_open), "",
                  "### Open split: hierarchy metrics of the DNA query (all held-out records, training names)", "",
                  hierarchy_table(open_agg, ("clean",)), ""]
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(lines)
