"""The Geometry map of a BIOSCAN-size bank: export-time layout cost, then the per-query map figure.

    python -m bench.bench_geometry [--specimens 1100000] [--dim 512] [--species 8000] [--space fused]
                                   [--fit 50000] [--queries 20] [--threads 2] [--index flat]
    python -m bench.bench_geometry --bank DIR [--fit 5000] [--threads 1]     # give a saved bank its maps

1. **layout** (export time): ``--specimens`` synthetic specimens of one space from :mod:`bench.bench_bank`'s
   population (same lineages, Zipf species sizes, family/genus-only identifications, float16 embeddings), laid out
   by :func:`hirviz.layout_scale.fit_large_layout` as ``python -m train export`` does: UMAP on a per-taxon
   stratified sample of ``--fit`` rows, every other row placed by its 10 nearest fitted rows. Times both parts.
2. **map** (app): a ``Reference`` holding the bank and its layout, a ``ReferenceMap`` over it (``--index``:
   ``flat`` = exact search over all rows, slower than the large bank's saved IVF index measured by
   ``bench_bank.py``, so the search share here is pessimistic; ``auto`` builds that IVF index, minutes). First the
   one-time summary of the layout (density image, taxon codes, marker sample; :func:`hirviz.map_layers.map_summary`),
   then per query (a new specimen of a sampled species) the calls the Geometry tab makes: ``place`` (the star),
   ``neighbours`` + ``near_taxa`` (the coloured genera), ``umap_figure``; and the figure's JSON size in bytes
   (``Figure.to_json``, what the browser receives).

Nothing is written to disk. Prints markdown tables.

``--bank DIR`` instead lays out a saved bank (``python -m bench.bench_bank --out DIR``, or a bundle around one):
every space of its ``reference.h5`` by :func:`~hirviz.layout_scale.fit_large_layout` on a ``--fit`` sample
stratified by :func:`~hirviz.placement.taxon_keys` of its ranks, written as ``umap/<space>`` (replacing any there),
so that the app serving it has its maps. The layouts are computed first and written at the end, in one short
write, so the file is never left half-updated by an interrupted run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from bench.bench_bank import LEVELS, Bank, specimens


def population(n: int, dim: int, n_species: int, space: str, seed: int):
    """float16 embeddings ``[n, dim]`` of one space, their ranks ``[n, 4]`` (bench_bank's population) and the bank."""
    bank = Bank(n_species, dim, seed)
    rng = np.random.default_rng(seed + 100)
    species = bank.draw(n, rng)
    embeddings = np.empty((n, dim), dtype=np.float16)
    for start in range(0, n, 65_536):
        embeddings[start:start + 65_536] = specimens(bank.centre, species[start:start + 65_536], rng)[space]
    depth = rng.choice([1, 2, 3, 4], size=n, p=[0.05, 0.62, 0.23, 0.10])
    names = bank.table[list(LEVELS)].to_numpy(dtype=str)[species]
    names[np.arange(4)[None, :] >= depth[:, None]] = ""
    return embeddings, names, bank


def layout_bank(bank_dir: Path, fit: int, seed: int = 0) -> list[dict[str, float | int]]:
    """Write a ``fit_large_layout`` layout of every space into a saved bank's ``reference.h5``; per-space timings."""
    import h5py

    from hirviz.bundle import Reference
    from hirviz.bundle.files import REFERENCE_FILE
    from hirviz.layout_scale import fit_large_layout
    from hirviz.placement import taxon_keys

    path = bank_dir / REFERENCE_FILE
    reference = Reference.load(path)  # float16 embeddings memory-mapped: nothing copied whole
    strata = taxon_keys(reference.ranks)
    layouts, timings = {}, []
    for space, vectors in reference.embeddings.items():
        layouts[space], timing = fit_large_layout(vectors, strata, seed=seed, max_fit=fit)
        timings.append({"space": space, **timing})
        print(f"layout {space}: {timing}", file=sys.stderr)
    del reference
    with h5py.File(path, "a") as h5:
        for space, layout in layouts.items():
            if f"umap/{space}" in h5:
                del h5[f"umap/{space}"]
            h5.create_dataset(f"umap/{space}", data=layout)
    return timings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specimens", type=int, default=1_100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--species", type=int, default=8_000)
    parser.add_argument("--space", default="fused", choices=("image", "dna", "fused"))
    parser.add_argument("--fit", type=int, default=None, help="UMAP sample size (default: hirviz's LAYOUT_SAMPLE)")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2, help="FAISS threads")
    parser.add_argument("--index", default="flat", help="flat (exact) or auto (the large bank's IVF index)")
    parser.add_argument("--colour-by", default="genus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bank", type=Path, default=None, help="lay out this saved bank's spaces into its file")
    args = parser.parse_args(argv)

    import faiss

    from hirviz import figures
    from hirviz.bundle import Reference
    from hirviz.geometry import ReferenceMap
    from hirviz.index import build_faiss
    from hirviz.layout_scale import LAYOUT_SAMPLE, fit_large_layout
    from hirviz.map_layers import NEAR_NEIGHBOURS, map_summary, near_taxa
    from hirviz.placement import taxon_keys

    faiss.omp_set_num_threads(args.threads)
    if args.bank is not None:
        timings = layout_bank(args.bank, args.fit or LAYOUT_SAMPLE, args.seed)
        print("| space | points | UMAP-fitted | fit s | placement s | total s |\n|---|---:|---:|---:|---:|---:|")
        for t in timings:
            print(f"| {t['space']} | {t['points']:,} | {t['fitted']:,} | {t['fit_s']:.1f} | {t['place_s']:.1f} | "
                  f"{t['fit_s'] + t['place_s']:.1f} |")
        return 0
    started = time.perf_counter()
    embeddings, names, bank = population(args.specimens, args.dim, args.species, args.space, args.seed)
    generated = time.perf_counter() - started
    print(f"generated {args.specimens:,} x {args.dim} ({args.space}) in {generated:.1f} s", file=sys.stderr)

    layout, timing = fit_large_layout(embeddings, taxon_keys(names), seed=args.seed, max_fit=args.fit or LAYOUT_SAMPLE)
    print(f"layout: {timing}", file=sys.stderr)

    n = args.specimens
    reference = Reference(ids=np.char.add("BIOUG", np.arange(n).astype(str)), ranks=names,
                          labels=np.full((n, 4), -1), barcodes=np.full(n, ""), embeddings={args.space: embeddings},
                          has_image=np.ones(n, bool), has_dna=np.ones(n, bool), layouts={args.space: layout})
    refmap = ReferenceMap(reference)
    started = time.perf_counter()
    # Set the index directly to choose its kind (the app opens the bundle's saved one).
    refmap._indices[args.space] = build_faiss(embeddings, refmap.members(args.space), kind=args.index, seed=args.seed)
    index_s = time.perf_counter() - started
    layout = refmap.layout(args.space)
    started = time.perf_counter()
    summary = map_summary(layout, reference.ranks, reference.ids)
    summary.overlay(LEVELS.index(args.colour_by))
    summary_s = time.perf_counter() - started

    rng = np.random.default_rng(args.seed + 999)
    queries = specimens(bank.centre, bank.draw(args.queries, rng), rng)[args.space]
    parts: dict[str, list[float]] = {"place": [], "near": [], "figure": [], "total": []}
    sizes, markers = [], []
    for z in queries:
        t0 = time.perf_counter()
        star = refmap.place(z, args.space)
        t1 = time.perf_counter()
        highlight = near_taxa(reference.ranks, refmap.neighbours(z, args.space, k=NEAR_NEIGHBOURS).rows,
                              args.colour_by)
        t2 = time.perf_counter()
        figure = figures.umap_figure(layout, reference.ranks, args.colour_by, ids=reference.ids, query=star,
                                     highlight=highlight, title="bench")
        t3 = time.perf_counter()
        for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
            parts[key].append(value * 1000)
        sizes.append(len(figure.to_json()))
        markers.append(sum(len(t.x) for t in figure.data if t.type in ("scatter", "scattergl")))

    print(f"| step | points | UMAP-fitted | fit s | placement s | total s |\n|---|---:|---:|---:|---:|---:|\n"
          f"| layout at export (`fit_large_layout`) | {timing['points']:,} | {timing['fitted']:,} | "
          f"{timing['fit_s']:.1f} | {timing['place_s']:.1f} | {timing['fit_s'] + timing['place_s']:.1f} |\n")
    print(f"Map summary (density {summary.density[0].shape if summary.density else None}, taxon codes, marker "
          f"sample), once per layout: {summary_s:.2f} s. Search index `{args.index}` built in {index_s:.1f} s "
          f"({args.threads} FAISS threads).\n")
    print("| per query | p50 ms | p95 ms |\n|---|---:|---:|")
    labels = {"place": "`ReferenceMap.place` (the star)", "near": f"`neighbours` k={NEAR_NEIGHBOURS} + `near_taxa`",
              "figure": "`umap_figure`", "total": "total"}
    for key, values in parts.items():
        print(f"| {labels[key]} | {np.percentile(values, 50):.1f} | {np.percentile(values, 95):.1f} |")
    print(f"\nFigure JSON {np.median(sizes) / 1e3:.0f} kB (median), {int(np.median(markers)):,} markers; "
          f"{args.queries} queries, colour by {args.colour_by}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
