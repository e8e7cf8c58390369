"""A BIOSCAN-size reference bank: build it, then measure start-up, memory and search in a fresh process.

    python -m bench.bench_bank --out /tmp/hirviz-bank [--specimens 1100000] [--dim 512] [--index auto]
                               [--queries 500] [--measure-only]

1. **build**: ``--specimens`` synthetic specimens of clustered 512-d embeddings in three spaces (image, DNA,
   fused) with a realistic taxonomy: lineages from ``../shared/data/taxonomy/bioscan1m_val_labels.tsv`` when it
   is there (else a generated tree of 14 orders / 200 families / 1,200 genera), topped up with unnamed species
   ("Genus sp. 7") to ``--species`` latent species; species sizes follow a Zipf law, and most specimens are
   identified only to family or genus, as in BIOSCAN-1M. Each space draws its own unit centres per order,
   family, genus and species; a specimen is its species' hierarchical centre plus isotropic noise (the image
   space noisier than the DNA space), the fused space the normalised sum of both. Embeddings are generated in
   chunks into float16 and written by the bundle code (:func:`hirviz.bundle.save.save_reference`: float16
   ``reference.h5`` + saved FAISS indexes + ``config.json`` manifest), timing each index build.
2. **measure** (a new process, so its memory is the app's): open the bank (``Reference.load``) and every index
   (``ReferenceMap.index``), report wall time and VmRSS / VmHWM; then per space, ``--queries`` new specimens
   (fresh noise around sampled species) searched one at a time (k=10): p50 / p95 latency, and recall@10
   against exact search over the same stored float16 vectors (FAISS ``knn_ground_truth``, chunked).

Prints a markdown table. The bank goes to ``--out`` (about 3.5 GB at 1.1 M x 512 x 3), never into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
VOCABULARY = REPO.parent / "shared" / "data" / "taxonomy" / "bioscan1m_val_labels.tsv"
LEVELS = ("order", "family", "genus", "species")
SPACES = ("image", "dna", "fused")
NOISE = {"image": 0.9, "dna": 0.55}  # isotropic noise norm around a species centre (unit) in each space
WEIGHTS = (1.0, 0.8, 0.6, 0.5)  # order, family, genus, species parts of a species centre
CHUNK = 65_536


def lineages(n_species: int, seed: int) -> pd.DataFrame:
    """``n_species`` distinct (order, family, genus, species) lineages: the vocabulary's, then unnamed ones."""
    rng = np.random.default_rng(seed)
    if VOCABULARY.is_file():
        named = pd.read_csv(VOCABULARY, sep="\t", dtype=str)[list(LEVELS)].dropna().drop_duplicates()
    else:
        orders = [f"Order{i}" for i in range(14)]
        families = pd.DataFrame({"order": rng.choice(orders, 200), "family": [f"Fam{i}idae" for i in range(200)]})
        genera = families.iloc[rng.integers(0, 200, 1200)].assign(genus=[f"Genus{i}" for i in range(1200)])
        named = genera.iloc[rng.integers(0, 1200, 2500)].reset_index(drop=True)
        named["species"] = [f"{g} s{i}" for i, g in enumerate(named["genus"])]
    named = named.reset_index(drop=True).iloc[:n_species]
    extra = n_species - len(named)
    if extra > 0:
        genera = named.drop_duplicates("genus").reset_index(drop=True)
        picks = genera.iloc[rng.integers(0, len(genera), extra)].reset_index(drop=True)
        picks["species"] = [f"{g} sp. {i}" for i, g in enumerate(picks["genus"])]
        named = pd.concat([named, picks], ignore_index=True)
    return named


def centres(table: pd.DataFrame, dim: int, seed: int) -> np.ndarray:
    """Unit species centres ``[S, dim]``: a weighted sum of random unit vectors per order, family, genus, species."""
    rng = np.random.default_rng(seed)
    total = np.zeros((len(table), dim), dtype=np.float32)
    for level, weight in zip(LEVELS, WEIGHTS):
        codes, names = pd.factorize(table[level])
        vectors = rng.standard_normal((len(names), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        total += weight * vectors[codes]
    return total / np.linalg.norm(total, axis=1, keepdims=True)


def specimens(centre: dict[str, np.ndarray], species: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """float32 unit embeddings of specimens of ``species`` in every space (fresh noise from ``rng``)."""
    out = {}
    for space, sigma in NOISE.items():
        dim = centre[space].shape[1]
        x = centre[space][species] + sigma * rng.standard_normal((len(species), dim)).astype(np.float32) / np.sqrt(dim)
        out[space] = x / np.linalg.norm(x, axis=1, keepdims=True)
    fused = out["image"] + out["dna"]
    out["fused"] = fused / np.linalg.norm(fused, axis=1, keepdims=True)
    return out


class Bank:
    """The synthetic population: lineages, per-space centres and species frequencies (all seeded)."""

    def __init__(self, n_species: int, dim: int, seed: int) -> None:
        self.table = lineages(n_species, seed)
        self.centre = {space: centres(self.table, dim, seed + 1 + i) for i, space in enumerate(NOISE)}
        zipf = 1.0 / np.arange(1, len(self.table) + 1) ** 0.9
        self.p = np.random.default_rng(seed).permutation(zipf / zipf.sum())

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(len(self.table), size=n, p=self.p)


def build(out: Path, n: int, dim: int, n_species: int, index: str, seed: int) -> dict:
    from hirviz.bundle.files import FORMAT_VERSION, write_json
    from hirviz.bundle.reference import Reference
    from hirviz.bundle.save import save_reference

    started = time.perf_counter()
    bank = Bank(n_species, dim, seed)
    rng = np.random.default_rng(seed + 100)
    species = bank.draw(n, rng)
    embeddings = {space: np.empty((n, dim), dtype=np.float16) for space in SPACES}
    for start in range(0, n, CHUNK):
        for space, x in specimens(bank.centre, species[start:start + CHUNK], rng).items():
            embeddings[space][start:start + CHUNK] = x
    # BIOSCAN-1M: most specimens are identified to family or genus only; the cut does not move the embeddings.
    depth = rng.choice([1, 2, 3, 4], size=n, p=[0.05, 0.62, 0.23, 0.10])
    names = bank.table[list(LEVELS)].to_numpy(dtype=object)[species]
    names[np.arange(4)[None, :] >= depth[:, None]] = ""
    labels = np.stack([pd.factorize(bank.table[level])[0] for level in LEVELS], axis=1)[species]
    labels[np.arange(4)[None, :] >= depth[:, None]] = -1
    generated = time.perf_counter() - started
    reference = Reference(ids=np.char.add("BIOUG", np.arange(n).astype(str)), ranks=names, labels=labels,
                          barcodes=np.full(n, ""), embeddings=embeddings, has_image=np.ones(n, bool),
                          has_dna=np.ones(n, bool))
    del names
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    manifest = save_reference(out, reference, index=index, seed=seed)
    saved = time.perf_counter() - started
    write_json(out / "config.json", {"format_version": FORMAT_VERSION, "name": "bench-bank",
                                     "reference_index": manifest})
    np.save(out / "bench_species.npy", species.astype(np.int32))
    info = {"specimens": n, "dim": dim, "species": n_species, "seed": seed, "generate_s": round(generated, 1),
            "save_s": round(saved, 1), "bytes_on_disk": sum(p.stat().st_size for p in out.iterdir()),
            "index": {space: {k: v for k, v in entry.items() if k != "file"} for space, entry in manifest.items()}}
    write_json(out / "bench_build.json", info)
    return info


def rss() -> dict[str, float]:
    """VmRSS and VmHWM (peak) of this process in GB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024**2
    return fields


def measure(out: Path, n_queries: int, seed: int, nprobe: int | None = None) -> dict:
    """Runs in a fresh process: open the bank and its indexes, then time and score searches."""
    import faiss
    from faiss.contrib.exhaustive_search import knn_ground_truth

    from hirviz.bundle.reference import Reference
    from hirviz.geometry import ReferenceMap

    faiss.omp_set_num_threads(1)  # one query at a time, as the app serves one request per thread
    build_info = json.loads((out / "bench_build.json").read_text())
    started = time.perf_counter()
    reference = Reference.load(out / "reference.h5")
    loaded = time.perf_counter() - started
    refmap = ReferenceMap(reference)
    for space in SPACES:
        index = refmap.index(space)
        if nprobe is not None and "nprobe" in index.params:  # try another setting without rebuilding
            faiss.ParameterSpace().set_index_parameter(index.index, "nprobe", nprobe)
            index.params["nprobe"] = nprobe
    ready = time.perf_counter() - started
    memory = rss()
    bank = Bank(build_info["species"], build_info["dim"], build_info["seed"])
    rng = np.random.default_rng(seed + 999)
    queries = specimens(bank.centre, bank.draw(n_queries, rng), rng)
    found, times = {}, {}
    for space in SPACES:
        found[space], times[space] = [], []
        for q in queries[space]:
            t0 = time.perf_counter()
            found[space].append(refmap.neighbours(q, space, k=10).rows)
            times[space].append(time.perf_counter() - t0)
    served = rss()  # the app's memory after serving searches (the exact search below reads the whole bank)
    rows = []
    for space in SPACES:
        index, stored = refmap.index(space), reference.embeddings[space]

        def chunks(stored=stored):
            for s in range(0, len(stored), 131_072):
                yield np.asarray(stored[s:s + 131_072], dtype=np.float32)

        _, exact = knn_ground_truth(queries[space], chunks(), 10, metric_type=faiss.METRIC_INNER_PRODUCT)
        recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found[space], exact)])
        ms = np.asarray(times[space]) * 1000
        rows.append({"space": space, "index": index.params.get("factory"), "params": {
            k: v for k, v in index.params.items() if k in ("nprobe", "efSearch")}, "ntotal": index.ntotal,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)), "recall10": recall})
    return {"load_s": loaded, "ready_s": ready, "rss_gb": memory["VmRSS"], "hwm_gb": memory["VmHWM"],
            "after_search_rss_gb": served["VmRSS"], "after_search_hwm_gb": served["VmHWM"], "queries": n_queries, "spaces": rows, "build": build_info}


def table(result: dict) -> str:
    build_info = result["build"]
    lines = [
        f"Bank: {build_info['specimens']:,} specimens x {build_info['dim']}-d x 3 spaces, {build_info['species']:,} "
        f"latent species; {build_info['bytes_on_disk'] / 1e9:.2f} GB on disk (float16 embeddings + indexes). "
        f"Generated in {build_info['generate_s']} s, saved (reference.h5 + index builds) in {build_info['save_s']} s.",
        "",
        f"Start: bank opened in {result['load_s']:.1f} s, every index ready in {result['ready_s']:.1f} s; "
        f"VmRSS {result['rss_gb']:.2f} GB (peak {result['hwm_gb']:.2f} GB); after the timed searches "
        f"{result['after_search_rss_gb']:.2f} GB (peak {result['after_search_hwm_gb']:.2f} GB).",
        "",
        "| space | index | search params | vectors | build s | p50 ms | p95 ms | recall@10 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["spaces"]:
        built = build_info["index"].get(row["space"], {}).get("build_seconds", "at load")
        lines.append(f"| {row['space']} | `{row['index']}` | {row['params'] or '-'} | {row['ntotal']:,} | {built} | "
                     f"{row['p50_ms']:.2f} | {row['p95_ms']:.2f} | {row['recall10']:.3f} |")
    lines.append(f"\n{result['queries']} queries per space, one at a time, k=10, one FAISS thread.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="where the bank is written (outside the repo)")
    parser.add_argument("--specimens", type=int, default=1_100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--species", type=int, default=8_000, help="latent species (BIOSCAN-1M names ~8k)")
    parser.add_argument("--index", default="auto", help="auto, flat, large or a FAISS factory string")
    parser.add_argument("--queries", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--measure-only", action="store_true", help="measure the bank already at --out")
    parser.add_argument("--nprobe", type=int, default=None, help="measure with this nprobe instead of the saved one")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.out, args.queries, args.seed, args.nprobe)))
        return 0
    if not args.measure_only:
        info = build(args.out, args.specimens, args.dim, args.species, args.index, args.seed)
        print(json.dumps(info), file=sys.stderr)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, "-m", "bench.bench_bank", "--out", str(args.out), "--queries",
                            str(args.queries), "--seed", str(args.seed), "--child",
                            *(["--nprobe", str(args.nprobe)] if args.nprobe else [])], cwd=REPO, env=env,
                           capture_output=True, text=True)
    if child.returncode != 0:
        print(child.stderr, file=sys.stderr)
        return child.returncode
    result = json.loads(child.stdout.strip().splitlines()[-1])
    (args.out / "bench_result.json").write_text(json.dumps(result, indent=1))
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
