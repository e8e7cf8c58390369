"""A BOLD-style identification baseline: nearest neighbour on k-mer profiles of the barcodes.

Identification engines for DNA barcodes (BOLD's among them) answer a query with the names of the most similar
reference barcodes. This module does the alignment-free version of that: each barcode becomes its vector of
k-mer counts (k = 6 by default, 4**k dimensions), L2-normalised, and a query takes the ranks of its nearest
reference profiles by cosine similarity (a FAISS flat inner-product index, i.e. exact search). No training is
involved, so it is the yardstick a learned DNA encoder has to beat on the same split.

``python -m train kmer-baseline --metadata TSV --split RUN_DIR --out results.json`` scores the test rows of a
run's split against its training rows, clean and with :class:`hirviz.degrade.DnaNoise`, in the results schema
of :mod:`train.evaluate` (query ``"dna"``, conditions ``clean`` and ``noisy_dna``).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hirviz.degrade import DnaNoise, degrade_barcodes
from hirviz.kmer import DEFAULT_K, KmerProfiler
from hirviz.taxonomy import LEVELS
from train.data import read_metadata
from train.evaluate import EVAL_LEVELS, SWEEP_DNA_SCALES, TOP_KS, label_codes, ranked_scores
from train.rundir import select_rows

logger = logging.getLogger(__name__)


class KmerNearestNeighbour:
    """Nearest-neighbour identification on k-mer profiles (exact cosine search with FAISS).

    ``fit`` stores reference barcodes with their ranks; ``predict`` answers each query with the ranks of its
    nearest references. References without a single valid k-mer are left out of the index (they could never be
    a meaningful answer).
    """

    def __init__(self, k: int = DEFAULT_K) -> None:
        self.profiler = KmerProfiler(k)
        self.index = None
        self.ranks: np.ndarray | None = None
        self.reference_rows: np.ndarray | None = None

    def fit(self, barcodes: Sequence[str | None], ranks: np.ndarray | Sequence[Sequence[Any]]) -> KmerNearestNeighbour:
        """Index reference ``barcodes`` with their ``ranks`` (``[N, 4]`` names or ids, order to species).

        Raises ValueError when the two disagree in length or no barcode has a valid k-mer.
        """
        import faiss

        ranks = np.asarray(ranks, dtype=object)
        if ranks.ndim != 2 or ranks.shape[1] != len(LEVELS) or len(ranks) != len(barcodes):
            raise ValueError(f"ranks must be [{len(barcodes)}, {len(LEVELS)}] (one row per barcode, "
                             f"{', '.join(LEVELS)}), got shape {ranks.shape}")
        profiles = self.profiler(barcodes)
        usable = np.flatnonzero(profiles.any(axis=1))
        if not len(usable):
            raise ValueError(f"none of the {len(barcodes)} reference barcodes has a valid {self.profiler.k}-mer")
        if len(usable) < len(barcodes):
            logger.info("left %d of %d references without a valid k-mer out of the index",
                        len(barcodes) - len(usable), len(barcodes))
        self.index = faiss.IndexFlatIP(self.profiler.dim)
        self.index.add(np.ascontiguousarray(profiles[usable]))
        self.ranks, self.reference_rows = ranks[usable], usable
        return self

    def search(self, barcodes: Sequence[str | None], k: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """Cosine similarities and reference rows (positions in the fitted barcodes) of the k nearest, ``[N, k]``.

        ``k`` is capped at the number of indexed references. A query without a valid k-mer is as similar (0) to
        every reference, so its neighbours are arbitrary: scored, it counts as a guess.
        """
        if self.index is None:
            raise RuntimeError("call fit() with reference barcodes before searching")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = min(int(k), self.index.ntotal)
        scores, found = self.index.search(self.profiler(barcodes), k)
        return scores, found

    def neighbours(self, barcodes: Sequence[str | None], k: int = 1) -> np.ndarray:
        """Positions ``[N, k]`` among the indexed references (rows of :attr:`ranks`) of the k nearest, best first."""
        return self.search(barcodes, k)[1] if len(barcodes) else np.zeros((0, min(k, self.index.ntotal)), np.int64)

    def predict(self, barcodes: Sequence[str | None], k: int = 1) -> np.ndarray:
        """Ranks of the k nearest references, object array ``[N, k, 4]`` (``[:, 0]`` is the nearest)."""
        found = self.search(barcodes, k)[1]
        return self.ranks[found]


def _with_barcode(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[(frame["barcode"].notna() & (frame["barcode"].fillna("") != "")).to_numpy()]


def fit_references(train_frame: pd.DataFrame, k: int = DEFAULT_K) -> KmerNearestNeighbour:
    """The k-mer index of ``train_frame``'s barcodes, to pass to :func:`evaluate_kmer_baseline` for many query sets."""
    refs = _with_barcode(train_frame)
    return KmerNearestNeighbour(k).fit(refs["barcode"].tolist(), refs[list(LEVELS)].to_numpy(dtype=object))


def evaluate_kmer_baseline(
    train_frame: pd.DataFrame,
    test_frame: pd.DataFrame,
    noise: DnaNoise | None = None,
    seed: int = 0,
    k: int = DEFAULT_K,
    ks: Sequence[int] = TOP_KS,
    index: KmerNearestNeighbour | None = None,
) -> tuple[dict[str, dict[str, float | None]], dict[str, int]]:
    """Top-k accuracy (percent) per level of nearest-neighbour identification of ``test_frame``'s barcodes.

    The semantics of :func:`train.evaluate.classification_scores`, with the training specimens' ranks in place
    of the candidates: at a level, over the test specimens labelled there, a hit when the true name is among the
    level names of the top-k neighbours; ``global`` when the whole taxonomy string equals a neighbour's. Only
    test specimens with a barcode are scored (as the model's ``dna`` query). With ``noise`` the queries are
    degraded exactly as ``python -m train eval`` degrades them (``seed``, key = position in ``test_frame``), so
    the two can be compared on the same noisy barcodes.

    ``index``: :func:`fit_references` of ``train_frame`` (with ``k``), reused instead of fitted again.

    Returns ``({level: {"top1": acc, "top5": acc}}, {level: n labelled})`` as ``classification_scores`` does.
    """
    for name, frame in (("train_frame", train_frame), ("test_frame", test_frame)):
        missing = [c for c in (*LEVELS, "barcode", "taxonomy") if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} lacks column(s) {missing}: pass frames from train.data.read_metadata")
    test_frame = test_frame.reset_index(drop=True)
    barcodes = test_frame["barcode"].tolist()
    if noise is not None and not noise.is_off():
        present = [i for i, seq in enumerate(barcodes) if isinstance(seq, str)]
        noisy = degrade_barcodes([barcodes[i] for i in present], noise, seed, keys=present)
        for i, seq in zip(present, noisy):
            barcodes[i] = seq or "N"  # as train.embed does: a barcode degraded to nothing is still a query
    has_dna = test_frame["barcode"].notna().to_numpy() & (test_frame["barcode"].fillna("") != "").to_numpy()
    model = fit_references(train_frame, k) if index is None else index
    kept = _with_barcode(train_frame).iloc[model.reference_rows]
    truth, ref_codes = label_codes(test_frame[list(LEVELS)].to_numpy(dtype=object), test_frame["taxonomy"].tolist(),
                                   kept[list(LEVELS)].to_numpy(dtype=object), kept["taxonomy"].tolist())
    truth = truth[has_dna]
    found = model.neighbours([b for b, h in zip(barcodes, has_dna) if h], max(ks))
    return ranked_scores(ref_codes[found], truth, ks)


def evaluate_split(
    metadata: str | Path, split: str | Path, noise: DnaNoise | None = None, seed: int = 0, k: int = DEFAULT_K,
    queries: str | Path | None = None, sweep_scales: Sequence[float] = (),
) -> dict[str, Any]:
    """Both conditions (``clean``, ``noisy_dna``) on a run's split, in :mod:`train.evaluate`'s results schema.

    The references are the split's training rows; the queries its test rows, or every row of the file
    ``queries`` (another barcode table, e.g. partial reads of unseen taxa). ``sweep_scales`` adds a ``sweep``:
    top-1 per level with ``noise`` scaled by each factor, in the records of :func:`train.evaluate.noise_sweep`.
    """
    started = time.perf_counter()
    if queries is None:
        test, info = select_rows(metadata, split, "test")
    else:
        test = read_metadata(queries)
        info = {"queries": str(queries)}
    train, _ = select_rows(metadata, split, "train")
    noise = DnaNoise() if noise is None else noise
    results: dict[str, Any] = {}
    counts: dict[str, int] = {}
    index = fit_references(train, k)  # one index for every condition and sweep point
    for condition, degrade in (("clean", None), ("noisy_dna", noise)):
        results[condition] = {}
        results[condition]["dna"], counts = evaluate_kmer_baseline(train, test, degrade, seed, k, index=index)
    if sweep_scales:
        results["sweep"] = [
            {"kind": "dna", "strength": float(scale), "query": "dna", "level": level, "top1": scores["top1"]}
            for scale in sweep_scales
            for level, scores in evaluate_kmer_baseline(train, test, noise.scaled(scale), seed, k, ks=(1,),
                                                        index=index)[0].items()
        ]
    results["_meta"] = {
        "method": f"k-mer nearest neighbour (k={k}, cosine, exact)",
        "format": test.attrs.get("format"),
        "specimens": int(len(test)),
        "references": int(train["barcode"].notna().sum()),
        "queries": ["dna"],
        "n_labelled": {"dna": counts},
        "conditions": ["clean", "noisy_dna"],
        "dna_noise": asdict(noise),
        "noise_seed": int(seed),
        "levels": list(EVAL_LEVELS),
        "data": info,
        "metric": "top-k accuracy in percent over the specimens labelled at each level (a hit when the true name "
                  "is among the names of the k nearest references); global = exact match of the whole taxonomy "
                  "string",
        "seconds": round(time.perf_counter() - started, 2),
    }
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m train kmer-baseline``."""
    parser.add_argument("--metadata", required=True, help="metadata file the run was trained on")
    parser.add_argument("--split", required=True, help="run directory (or its split.npz): test rows are queried "
                                                       "against the training rows")
    parser.add_argument("--out", default=None, help="write the results JSON here")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help="k-mer length (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the DNA noise (default %(default)s)")
    parser.add_argument("--queries", default=None,
                        help="query every barcode of this file instead of the split's test rows")
    parser.add_argument("--sweep", action="store_true",
                        help="also score DNA noise x " + ", ".join(f"{s:g}" for s in SWEEP_DNA_SCALES))


def run(args: argparse.Namespace) -> int:
    """Score the baseline on a split and print (and optionally save) the per-level table."""
    results = evaluate_split(args.metadata, args.split, seed=args.seed, k=args.k, queries=args.queries,
                             sweep_scales=SWEEP_DNA_SCALES if args.sweep else ())
    print(format_results(results))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=2)
    return 0


def format_results(results: dict[str, Any]) -> str:
    """A markdown table: condition rows, ``top1 / top5`` per level."""
    lines = ["| condition | " + " | ".join(EVAL_LEVELS) + " |", "|---" * (len(EVAL_LEVELS) + 1) + "|"]
    for condition in ("clean", "noisy_dna"):
        if condition not in results:
            continue
        cells = []
        for level in EVAL_LEVELS:
            s = results[condition]["dna"][level]
            cells.append("-" if s["top1"] is None else f"{s['top1']:.1f} / {s['top5']:.1f}")
        lines.append(f"| {condition} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
