"""Seen and unseen species, scored the CLIBD way: the open-set half of the real-barcode and hyperbolic studies.

A study trains some arms with ``data.split=clibd`` (CLIBD's partition, :mod:`train.data.clibd_split`: the unseen
species' records are never trained on) and evaluates them with ``python -m train eval --retrieval clibd``, which
gives DNA -> DNA retrieval per rank for the test split's seen and unseen queries against every key of the
partition. This module adds what that protocol lacks and the studies need:

- :func:`text_scores`: DNA -> text classification of the test split's seen and unseen queries, separately, with
  two candidate sets: ``closed`` = the bundle's candidates (the training taxonomy strings: an unseen species
  cannot be named, its genus only when the genus was trained on) and ``open`` = zero-shot, the training strings
  plus the strings of every validation and test record (the unseen names among the candidates, CLIBD's zero-shot
  reading); both ranked by the model's own geometry (cosine, or geodesic distance for a Lorentz model);
- :func:`kmer_scores`: the k-mer nearest-neighbour baseline (:mod:`train.kmer_baseline`) in the same protocol,
  every query against every key;
- :func:`openset_table`: one markdown table of seen / unseen top-1 per rank for any number of arms.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hirviz.taxonomy import LEVELS
from train.data import load_partition, read_metadata
from train.data.clibd_split import HELDOUT, KEYS, query_label
from train.evaluate import score_cell

GROUPS = ("seen", "unseen")


def partition(metadata: str | Path, split_seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, str]:
    """The metadata frame (row positions as index) and its CLIBD label per row, found or computed as training does."""
    frame = read_metadata(metadata).reset_index(drop=True)
    labels, source = load_partition(metadata, None, frame, split_seed)
    return frame, np.asarray(labels, dtype=object), source


def queries(frame: pd.DataFrame, labels: np.ndarray, group: str, split: str = "test") -> pd.DataFrame:
    """The ``split``'s seen or unseen queries (``group``) that have a barcode."""
    rows = (labels == query_label(split, group == "seen")) & frame["barcode"].fillna("").ne("").to_numpy()
    return frame[rows].reset_index(drop=True)


def text_scores(bundle_dir: str | Path, frame: pd.DataFrame, labels: np.ndarray, split: str = "test") -> dict:
    """DNA -> text per rank (top-1/top-5 %, hierarchy metrics) of the seen and unseen queries, closed and open
    candidates: ``{"closed"|"open": {"seen"|"unseen": {"n": int, "not_a_candidate": int, level: scores,
    "hierarchy": ...}}, "candidates": {"closed": n, "open": n}}`` (``not_a_candidate``: queries whose whole
    taxonomy string is not among the candidates, so no Global hit is possible)."""
    from hirviz.bundle import load_bundle
    from hirviz.candidates import CandidateSet
    from train.embed import frame_candidates
    from train.evaluate.orchestration import evaluate_model

    bundle = load_bundle(bundle_dir)
    known = frame[labels != HELDOUT]  # training records and every validation / test query and key
    sets = {"closed": CandidateSet.from_bundle(bundle), "open": frame_candidates(bundle.model, known)}
    out: dict[str, Any] = {"candidates": {name: len(c) for name, c in sets.items()}}
    for name, cands in sets.items():
        out[name] = {}
        for group in GROUPS:
            sub = queries(frame, labels, group, split)
            if sub.empty:
                continue
            res = evaluate_model(bundle.model, sub, cands, None, ("clean",), queries=("dna",))
            missing = res["_meta"]["candidates"]["specimens_whose_string_is_not_a_candidate"]
            out[name][group] = {"n": int(len(sub)), "not_a_candidate": int(missing), **res["clean"]["dna"]}
    return out


def kmer_scores(frame: pd.DataFrame, labels: np.ndarray, split: str = "test") -> dict:
    """k-mer nearest neighbour, each seen / unseen query against every key of the partition (CLIBD's key database):
    ``{"seen"|"unseen": {"n": int, level: {"top1", "top5"}}, "keys": n}``."""
    from train.kmer_baseline import evaluate_kmer_baseline, fit_references

    keys = frame[np.isin(labels, sorted(KEYS))]
    index = fit_references(keys)
    out: dict[str, Any] = {"keys": int(keys["barcode"].notna().sum())}
    for group in GROUPS:
        sub = queries(frame, labels, group, split)
        if not sub.empty:
            out[group] = {"n": int(len(sub)), **evaluate_kmer_baseline(keys, sub, index=index)[0]}
    return out


def cached(path: Path, compute) -> dict:
    """``compute()`` once: its JSON is kept at ``path`` and read back on a re-run (a killed study resumes)."""
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".partial.json")
    tmp.write_text(json.dumps(result, indent=1), encoding="utf-8")
    tmp.replace(path)
    return result


def dna_dna(results: Mapping[str, Any], group: str, split: str = "test") -> dict | None:
    """Micro per-rank scores of ``eval --retrieval clibd``'s DNA -> DNA retrieval for one group."""
    found = (((results.get("retrieval_clibd") or {}).get(split) or {}).get("dna->dna") or {}).get(group) or {}
    return found.get("micro")


def openset_rows(name: str, agg: Mapping[str, Any], levels: Sequence[str] = LEVELS) -> list[str]:
    """Markdown rows (top-1 %, mean ± sd) of one aggregated arm: DNA -> text open and closed, DNA -> DNA."""
    text = agg.get("openset_text") or {}
    rows = []
    for group in GROUPS:
        for label, scores in (("DNA->text zero-shot", (text.get("open") or {}).get(group)),
                              ("DNA->text training names", (text.get("closed") or {}).get(group)),
                              ("DNA->DNA (keys)", dna_dna(agg, group))):
            rows.append(f"| {name} | {group} | {label} | "
                        + " | ".join(score_cell((scores or {}).get(level), ("top1",)) for level in levels) + " |")
    return rows


def kmer_rows(kmer: Mapping[str, Any], levels: Sequence[str] = LEVELS) -> list[str]:
    return [f"| k-mer NN (k=6) | {group} | DNA->DNA (keys) | "
            + " | ".join(score_cell(((kmer.get(group) or {}).get(level)), ("top1",)) for level in levels) + " |"
            for group in GROUPS]


def openset_table(aggs: Mapping[str, Mapping[str, Any]], kmer: Mapping[str, Any] | None = None,
                  levels: Sequence[str] = LEVELS) -> str:
    """Seen / unseen top-1 per rank for every arm (and the k-mer baseline), one table."""
    lines = ["| Arm | Species | Task | " + " | ".join(level.capitalize() for level in levels) + " |",
             "|---" * (len(levels) + 3) + "|"]
    for name, agg in aggs.items():
        lines += openset_rows(name, agg, levels)
    if kmer:
        lines += kmer_rows(kmer, levels)
    return "\n".join(lines)


def group_counts(agg: Mapping[str, Any]) -> dict[str, int]:
    """How many seen / unseen test queries an aggregated arm was scored on."""
    text = (agg.get("openset_text") or {}).get("open") or {}
    return {group: int((text.get(group) or {}).get("n") or 0) for group in GROUPS}


def difference(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> str:
    """``a - b`` of two aggregated top-1 cells with the sd of the difference (independent seeds), e.g. ``+3.1±2.0``."""
    if not a or not b or a.get("top1") is None or b.get("top1") is None:
        return "–"
    if a.get("top1_sd") is None or b.get("top1_sd") is None:
        return f"{a['top1'] - b['top1']:+.1f} (one seed: no sd)"
    return f"{a['top1'] - b['top1']:+.1f}±{np.hypot(a['top1_sd'], b['top1_sd']):.1f}"


def finished(aggs: Mapping[str, Mapping[str, Any]]) -> str:
    """``"arm: n seeds, ..."`` of aggregated arms, for a report's header (a study may be part-way)."""
    return ", ".join(f"{name}: {agg['_meta'].get('n_seeds')}" for name, agg in aggs.items()) or "none"
