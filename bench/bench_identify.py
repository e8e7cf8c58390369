"""Latency of COI barcode identification (``hirviz.identify_barcode``): input checks + reference hits + model.

    python bench/bench_identify.py [--references ../shared/data/real_dna/barcodes.tsv] [--queries 200]
                                   [--batch 1000] [--threads 1] [--bundle assets/real-coi | --no-model]

The references are every record of the barcode TSV (8,926 real barcodes by default); the queries are records of
the same file drawn with a fixed seed (each is also a reference: the search does the same work either way). It
prints markdown tables: the one-off cost of loading and indexing the references, per-barcode latency p50 / p95
split into the checks (pyhmmer COI-5P search, stop codons), the hits (k-mer prefilter + parasail alignments), the
protein hits (the same candidates aligned as proteins, :mod:`hirviz.coi_protein`) and
the model (the bundle's :class:`hirviz.predict.Predictor` on the barcode, as ``identify_barcode`` calls it), and
the wall time of ``identify_fasta`` over a FASTA of ``--batch`` barcodes (with the model too).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def default_references() -> Path:
    shared = Path(os.environ.get("HIRVIZ_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    return shared / "real_dna" / "barcodes.tsv"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--references", type=Path, default=default_references(), help="barcode TSV")
    parser.add_argument("--queries", type=int, default=200, help="barcodes timed one by one (default 200)")
    parser.add_argument("--batch", type=int, default=1000, help="barcodes in the batch run (0: skip)")
    parser.add_argument("--threads", type=int, default=1, help="FAISS / BLAS threads (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bundle", type=Path, default=REPO_ROOT / "assets" / "real-coi",
                        help="bundle whose model is timed (default: the shipped real COI bundle)")
    parser.add_argument("--no-model", action="store_true", help="time checks + hits only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, float]:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import faiss
    import pandas as pd

    from hirviz.coi import _model_levels, assemble, identify_fasta
    from hirviz.coi_check import check_barcode, coding_protein
    from hirviz.coi_refs import ReferenceSet, protein_verdicts, rank_verdicts

    faiss.omp_set_num_threads(args.threads)
    if not args.references.is_file():
        raise SystemExit(f"references not found: {args.references} (pass --references or set HIRVIZ_SHARED_DATA)")
    out: dict[str, float] = {}
    predictor = None
    if not args.no_model:
        import torch

        from hirviz.bundle import load_bundle

        torch.set_num_threads(args.threads)
        started = time.perf_counter()
        predictor = load_bundle(args.bundle).predictor()
        out["model_load_s"] = time.perf_counter() - started
    started = time.perf_counter()
    refs = ReferenceSet.from_tsv(args.references)
    out["load_s"] = time.perf_counter() - started
    started = time.perf_counter()
    refs._faiss_index()  # built lazily on the first search: timed here so that it is not in the first query
    out["index_s"] = time.perf_counter() - started
    started = time.perf_counter()
    refs.protein_hits("", [])  # the references' proteins, also translated on the first search
    out["proteins_s"] = time.perf_counter() - started

    frame = pd.read_csv(args.references, sep="\t", dtype=str, keep_default_na=False)
    rng = np.random.default_rng(args.seed)
    rows = rng.choice(len(frame), min(args.queries, len(frame)), replace=False)
    warm = check_barcode(frame["dna_barcode"].iloc[rows[0]])  # loads the HMM once, as a running service would have
    if predictor is not None:
        _model_levels(predictor, warm.sequence)  # and the model's first call
    checks, hits, proteins, model = [], [], [], []
    cpu_started = time.process_time()
    for row in rows:
        t0 = time.perf_counter()
        check = check_barcode(frame["dna_barcode"].iloc[row])
        t1 = time.perf_counter()
        found = refs.hits(check.sequence)
        rank_verdicts(found)
        t2 = time.perf_counter()
        by_protein = refs.protein_hits(coding_protein(check.sequence, check.region), found)
        protein_verdicts(by_protein)
        t3 = time.perf_counter()
        if predictor is not None:
            assemble(check, found, _model_levels(predictor, check.sequence), protein_hits=by_protein)
        t4 = time.perf_counter()
        checks.append(t1 - t0)
        hits.append(t2 - t1)
        proteins.append(t3 - t2)
        model.append(t4 - t3)
    out["cpu_ms_per_barcode"] = 1000 * (time.process_time() - cpu_started) / len(rows)
    checks_ms, hits_ms, model_ms = 1000 * np.array(checks), 1000 * np.array(hits), 1000 * np.array(model)
    proteins_ms = 1000 * np.array(proteins)
    total_ms = checks_ms + hits_ms + proteins_ms + model_ms
    for name, values in (("checks", checks_ms), ("hits", hits_ms), ("protein", proteins_ms), ("model", model_ms),
                         ("total", total_ms)):
        out[f"{name}_p50_ms"] = float(np.percentile(values, 50))
        out[f"{name}_p95_ms"] = float(np.percentile(values, 95))

    print(f"references: {len(refs):,} barcodes from {args.references.name}; load {out['load_s']:.2f} s, "
          f"k-mer index {out['index_s']:.2f} s, proteins {out['proteins_s']:.2f} s; {args.threads} thread(s)\n")
    print(f"| one barcode ({len(rows)} queries), wall time | p50 ms | p95 ms |\n|---|---:|---:|")
    for name, label in (("checks", "checks (COI-5P HMM both strands, stop codons)"),
                        ("hits", "hits (k-mer prefilter top 50 + 50 alignments + verdict)"),
                        ("protein", "protein hits (translation + the 50 candidates' protein alignments + verdict)"),
                        ("model", "model (Predictor on the barcode + reconciliation)" if predictor is not None
                         else "model (not run: --no-model)"), ("total", "total")):
        print(f"| {label} | {out[f'{name}_p50_ms']:.1f} | {out[f'{name}_p95_ms']:.1f} |")
    # CPU time is what a busy machine does not inflate: it tells what an otherwise idle core would take.
    print(f"\nCPU time per barcode (process time, all threads): {out['cpu_ms_per_barcode']:.1f} ms")

    if args.batch:
        batch_rows = rng.choice(len(frame), min(args.batch, len(frame)), replace=False)
        fasta = "".join(f">{frame['processid'].iloc[r]}\n{frame['dna_barcode'].iloc[r]}\n" for r in batch_rows)
        started, cpu_started = time.perf_counter(), time.process_time()
        done = sum(1 for _ in identify_fasta(fasta, refs, predictor))
        out["batch_s"] = time.perf_counter() - started
        out["batch_cpu_s"] = time.process_time() - cpu_started
        out["batch_n"] = done
        print(f"\n| batch ({'with' if predictor is not None else 'without'} the model) | barcodes | wall s | CPU s | barcodes/s (wall) |\n|---|---:|---:|---:|---:|\n"
              f"| `identify_fasta` | {done:,} | {out['batch_s']:.1f} | {out['batch_cpu_s']:.1f} | "
              f"{done / out['batch_s']:.1f} |")
    return out


if __name__ == "__main__":
    main()
