"""One identify call against a BIOSCAN-size bank (1.1 M specimens) with real-size towers: p50 / p95 and the split.

    python -m bench.bench_identify_scale --bank /tmp/hirviz-bank --bundle /tmp/hirviz-bank-bundle
                                         [--calls 100] [--threads 2] [--quantize] [--channels-last]
    python -m bench.bench_identify_scale --threads-matrix [--calls 6] [--quantize]

1. **bundle** (once; skipped when ``--bundle`` already holds one): a bundle whose model has the papers' tower sizes
   with random weights (:data:`bench.bench_app.PAPER_SIZE`: open_clip ViT-B/16 at 224 px, 512-d, as BioCLIP; a
   BERT of BarcodeBERT's size, hidden 768 x 12 layers, over non-overlapping 5-mers), written by
   :func:`hirviz.bundle.save.save_bundle`, around the bank that ``python -m bench.bench_bank --out BANK`` built
   (its ``reference.h5`` and saved FAISS indexes are hard-linked into the bundle and its ``reference_index``
   manifest copied into ``config.json``). The candidates are the bank's 8,000 lineages, pre-embedded as a bundle
   stores them (``text_embeddings.npy``: the bank's DNA-space species centres; with random weights any text
   embedding is as meaningless, and 8,000 passes of a random ViT-B/16 text tower would change no timing). The bank
   gets map layouts (``umap/<space>`` in ``reference.h5``) when it has none: a fixed random 2-D projection of the
   embeddings, which keeps the clusters; placing a point costs the same whatever fitted the layout.
2. **measure**: open the bundle as the app does (``load_bundle``, :class:`hirviz.ui.Engine`, ``warm_up``), then
   ``--calls`` identify calls, each a photo and a 658-bp barcode with its own seed and noise: ``hirviz.ui.identify``
   (what one request runs: the image and DNA towers, the four queries, the hits from the index, the result
   tables and charts) followed by the placement of the specimen on the image, DNA and fused maps
   (``ReferenceMap.place``, what the Geometry tab adds). The split comes from timers wrapped around the model's
   towers and the map's search and placement (time of a nested call goes to the outer one: the placement's own
   neighbour search counts as placement). ``--quantize`` replaces the model by
   ``torch.ao.quantization.quantize_dynamic`` (int8 ``Linear`` layers) and reports how close its queries stay to
   the float32 model's on ``--compare`` specimens; ``--channels-last`` converts the model to channels-last memory.

``--threads-matrix`` needs no bank: only the towers (photo + barcode), at 1 and 2 torch threads with 1 and 2 calls
running at once (:func:`threads_matrix`), what ``app.py``'s thread setting is chosen from.

Prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.bench_app import PAPER_SIZE, query_specimen
from bench.bench_bank import LEVELS, SPACES, Bank

REPO = Path(__file__).resolve().parents[1]
CHUNK = 131_072


# ------------------------------------------------------------------------------------------------------ bundle


def add_layouts(reference_file: Path, seed: int = 0) -> bool:
    """Give a bank's ``reference.h5`` a 2-D layout per space (a random projection) if it has none; True if added."""
    import h5py

    with h5py.File(reference_file, "a") as h5:
        if all(f"umap/{space}" in h5 for space in SPACES):
            return False
        rng = np.random.default_rng(seed)
        for space in SPACES:
            emb = h5[f"embeddings/{space}"]
            axes = rng.standard_normal((emb.shape[1], 2)).astype(np.float32)
            layout = np.empty((emb.shape[0], 2), dtype=np.float32)
            for start in range(0, emb.shape[0], CHUNK):
                layout[start:start + CHUNK] = np.asarray(emb[start:start + CHUNK], dtype=np.float32) @ axes
            if f"umap/{space}" in h5:
                del h5[f"umap/{space}"]
            h5.create_dataset(f"umap/{space}", data=layout)
    return True


def make_bundle(bank_dir: Path, out: Path, seed: int = 0) -> Path:
    """Write a paper-size, random-weight bundle at ``out`` whose reference is the bank at ``bank_dir``."""
    import torch

    from hirviz.bundle.files import CONFIG_FILE, REFERENCE_FILE, read_json, write_json
    from hirviz.bundle.reference import Reference
    from hirviz.bundle.save import save_bundle
    from hirviz.model import build_model
    from hirviz.taxonomy import Taxonomy

    info = json.loads((bank_dir / "bench_build.json").read_text())
    add_layouts(bank_dir / REFERENCE_FILE, seed)
    population = Bank(info["species"], info["dim"], info["seed"])
    table = population.table
    # The bank's labels are pandas.factorize codes of its lineage table: the taxonomy keeps that order.
    names = {level: [str(n) for n in pd.factorize(table[level])[1]] for level in LEVELS}
    parents = {child: dict(zip(table[child], table[parent])) for parent, child in zip(LEVELS, LEVELS[1:])}
    taxonomy = Taxonomy(names, parents)
    candidate_ranks = [tuple(row) for row in table[list(LEVELS)].itertuples(index=False, name=None)]
    candidates = [" ".join(row) for row in candidate_ranks]
    torch.manual_seed(seed)
    model = build_model(PAPER_SIZE).eval()
    bank = Reference.load(bank_dir / REFERENCE_FILE)
    head = slice(0, 64)  # save_bundle writes a small stand-in; the bank's own files replace it below
    small = Reference(ids=bank.ids[head], ranks=bank.ranks[head], labels=bank.labels[head],
                      barcodes=bank.barcodes[head], embeddings={s: np.asarray(v[head]) for s, v in bank.embeddings.items()},
                      has_image=bank.has_image[head], has_dna=bank.has_dna[head])
    del bank
    save_bundle(out, name="bank-1.1M-paper-size", model=model, taxonomy=taxonomy, candidates=candidates,
                candidate_ranks=candidate_ranks, text_embeddings=population.centre["dna"], reference=small,
                training_config={"data": {"metadata": "synthetic", "images": "synthetic"},
                                 "loss": {"objective": "clibd-hir-fuse", "fusion_weight": 1.0}},
                objective="clibd-hir-fuse", provenance={"bench": "bench_identify_scale", "weights": "random"},
                card="Timing bundle: paper-size towers with random weights over a synthetic 1.1M-specimen bank.",
                fusion_trained=True, index="flat")
    bank_config = read_json(bank_dir / CONFIG_FILE)
    for name in [REFERENCE_FILE, *(entry["file"] for entry in (bank_config.get("reference_index") or {}).values())]:
        (out / name).unlink(missing_ok=True)
        try:
            os.link(bank_dir / name, out / name)  # no copy of 7 GB
        except OSError:
            shutil.copyfile(bank_dir / name, out / name)
    config = read_json(out / CONFIG_FILE)
    config["reference_index"] = bank_config.get("reference_index") or {}
    write_json(out / CONFIG_FILE, config)
    return out


# ----------------------------------------------------------------------------------------------------- timing


class Split:
    """Wall and CPU time (this process, all threads) of wrapped methods per part, one row per call; a call nested in
    another is the outer one's. CPU time is what a machine shared with other jobs cannot inflate."""

    def __init__(self) -> None:
        self.calls: list[dict[str, float]] = []
        self.cpu: list[dict[str, float]] = []
        self._depth = 0

    def wrap(self, owner: Any, attribute: str, part: str) -> None:
        method = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if self._depth:
                return method(*args, **kwargs)
            self._depth += 1
            started, cpu = time.perf_counter(), time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                self._depth -= 1
                if self.calls:
                    row, cpu_row = self.calls[-1], self.cpu[-1]
                    row[part] = row.get(part, 0.0) + time.perf_counter() - started
                    cpu_row[part] = cpu_row.get(part, 0.0) + time.process_time() - cpu

        setattr(owner, attribute, timed)

    def start(self) -> None:
        self.calls.append({})
        self.cpu.append({})


def percentile_row(label: str, seconds: list[float], cpu_seconds: list[float]) -> str:
    ms, cpu = np.asarray(seconds) * 1000, np.asarray(cpu_seconds) * 1000
    return (f"| {label} | {np.percentile(ms, 50):.1f} | {np.percentile(ms, 95):.1f} | {np.percentile(cpu, 50):.1f} | "
            f"{np.percentile(cpu, 95):.1f} |")


def closeness(reference_model: Any, predictor: Any, image: str, barcode: str, n: int) -> dict[str, float]:
    """How close ``predictor`` (e.g. quantised) stays to ``reference_model`` on ``n`` noisy variants of a specimen."""
    from hirviz.degrade import DnaNoise

    quantised = predictor.model
    cosines: dict[str, list[float]] = defaultdict(list)
    top1, hits = [], []
    for i in range(n):
        noise = DnaNoise(substitution=0.01 * (i % 5))
        outputs = []
        for model in (reference_model, quantised):
            predictor.model = model
            outputs.append(predictor.predict(image, barcode, blur_kernel=i % 4, dna_noise=noise, seed=i))
        predictor.model = quantised
        full, small = outputs
        for query, result in full.queries.items():
            a, b = result.embedding, small.queries[query].embedding
            cosines[query].append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
            top1.append(result.candidates[0][0] == small.queries[query].candidates[0][0])
            rows_a = {h["row"] for h in result.neighbours}
            rows_b = {h["row"] for h in small.queries[query].neighbours}
            if rows_a:
                hits.append(len(rows_a & rows_b) / len(rows_a))
    out = {f"min cosine {q}": min(v) for q, v in cosines.items()}
    out["top-1 candidate agreement"] = float(np.mean(top1))
    out["hit overlap (top 5)"] = float(np.mean(hits)) if hits else float("nan")
    return out


def measure(bundle_dir: Path, calls: int, threads: int | None, quantize: bool, channels_last: bool,
            compare: int, examples: Path | None) -> dict[str, Any]:
    import torch

    from hirviz import load_bundle
    from hirviz.degrade import DnaNoise
    from hirviz.ui import Engine, NoiseSettings, identify

    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    bundle = load_bundle(bundle_dir)
    engine = Engine({bundle.name: bundle})
    predictor = engine.predictor(bundle.name)
    original = predictor.model
    if quantize:  # quantize_dynamic returns a quantised copy and leaves the float32 model as it was
        predictor.model = torch.ao.quantization.quantize_dynamic(original, {torch.nn.Linear}, dtype=torch.qint8)
    if channels_last:
        predictor.model = predictor.model.to(memory_format=torch.channels_last)
    engine.warm_up()
    ready = time.perf_counter() - started
    image, barcode = query_specimen(examples)
    reference_map = predictor.reference_map
    map_spaces = list(engine.layouts(bundle.name))
    split = Split()
    model = predictor.model
    split.wrap(predictor, "preprocess", "photo decode + transform")
    split.wrap(model, "encode_image", "image tower")
    split.wrap(model, "tokenize_dna", "DNA tower")
    split.wrap(model, "encode_dna", "DNA tower")
    split.wrap(reference_map, "neighbours", "search (hits)")
    split.wrap(reference_map, "place", "map placement")
    totals: list[float] = []
    cpu_totals: list[float] = []

    def one_call(i: int) -> None:
        noise = NoiseSettings(blur_kernel=i % 4, dna=DnaNoise(substitution=0.01 * (i % 3)) if i % 3 else
                              DnaNoise.off(), seed=i)
        view = identify(engine, image, barcode, noise)
        if not view.ok:
            raise RuntimeError(f"identify failed: {view.status}")
        embeddings = view.session["embeddings"][bundle.name]
        for space in map_spaces:
            reference_map.place(np.asarray(embeddings[space], dtype=np.float32), space)

    for i in range(3):  # warm-up calls: allocator, first-touch of the index pages
        one_call(10_000 + i)
    for i in range(calls):
        split.start()
        t0, c0 = time.perf_counter(), time.process_time()
        one_call(i)
        totals.append(time.perf_counter() - t0)
        cpu_totals.append(time.process_time() - c0)
    parts = sorted({p for row in split.calls for p in row}, key=lambda p: list(_PART_ORDER).index(p))
    rows = [percentile_row(p, [row.get(p, 0.0) for row in split.calls], [row.get(p, 0.0) for row in split.cpu])
            for p in parts]
    other = [t - sum(row.values()) for t, row in zip(totals, split.calls)]
    other_cpu = [t - sum(row.values()) for t, row in zip(cpu_totals, split.cpu)]
    rows.append(percentile_row("rest (noise, scoring, result tables, charts)", other, other_cpu))
    rows.append(percentile_row("**total**", totals, cpu_totals))
    result = {"ready_s": ready, "threads": torch.get_num_threads(), "rows": rows, "map_spaces": map_spaces,
              "p50_ms": float(np.percentile(totals, 50) * 1000), "p95_ms": float(np.percentile(totals, 95) * 1000),
              "cpu_p95_ms": float(np.percentile(cpu_totals, 95) * 1000),
              "reference": len(bundle.reference), "candidates": len(bundle.candidates)}
    if quantize and compare:
        result["closeness"] = closeness(original, predictor, image, barcode, compare)
    return result


def threads_matrix(calls: int, quantize: bool, examples: Path | None) -> list[str]:
    """Markdown rows: wall time of one photo + barcode through both paper-size towers (random weights), the process's
    CPU time per call and the calls answered per second, per torch thread count (1, 2) and number of such calls
    running at once (1, 2: the app's ``concurrency_limit``), each call in its own Python thread as Gradio's workers
    run them."""
    import threading

    import torch

    from hirviz.model import build_model, int8_model
    from hirviz.predict import load_image

    torch.manual_seed(0)
    model = build_model(PAPER_SIZE).eval()
    model = int8_model(model) if quantize else model
    image, barcode = query_specimen(examples)
    pixels = model.image_transform(train=False)(load_image(image))[None]

    def one() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            model.encode_image(pixels)
            model.encode_dna(**model.tokenize_dna([barcode]))
        return time.perf_counter() - started

    rows = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for concurrent in (1, 2):
            one()  # warm-up at this setting
            wall: list[float] = []
            started, cpu = time.perf_counter(), time.process_time()
            for _ in range(calls):
                workers = [threading.Thread(target=lambda out=wall: out.append(one())) for _ in range(concurrent)]
                for worker in workers:
                    worker.start()
                for worker in workers:
                    worker.join()
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            rows.append(f"| {threads} | {concurrent} | {np.percentile(wall, 50) * 1000:.0f} | "
                        f"{np.percentile(wall, 95) * 1000:.0f} | {cpu / len(wall) * 1000:.0f} | "
                        f"{len(wall) / elapsed:.2f} |")
            print(rows[-1], file=sys.stderr)
    return rows


_PART_ORDER = ("photo decode + transform", "image tower", "DNA tower", "search (hits)", "map placement")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bank", type=Path, help="a bank built by python -m bench.bench_bank --out")
    parser.add_argument("--bundle", type=Path, help="where the timing bundle is (or is written)")
    parser.add_argument("--calls", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--quantize", action="store_true", help="int8 dynamic quantisation of Linear layers")
    parser.add_argument("--compare", type=int, default=20, help="--quantize: specimens compared with float32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--examples", default=str(REPO / "assets" / "examples"))
    parser.add_argument("--threads-matrix", action="store_true",
                        help="only the towers: 1 vs 2 torch threads under 1 and 2 calls at once (no bank needed)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    examples = Path(args.examples)
    if args.threads_matrix:
        rows = threads_matrix(args.calls, args.quantize, examples if examples.is_dir() else None)
        print("| torch threads | calls at once | wall p50 ms | wall p95 ms | CPU per call ms | calls/s |\n"
              "|---:|---:|---:|---:|---:|---:|\n" + "\n".join(rows))
        return 0
    from hirviz.bundle.files import CONFIG_FILE

    if args.bank is None or args.bundle is None:
        parser.error("--bank and --bundle are needed (except with --threads-matrix)")
    if not (args.bundle / CONFIG_FILE).is_file():
        started = time.perf_counter()
        make_bundle(args.bank, args.bundle)
        print(f"bundle written to {args.bundle} in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    result = measure(args.bundle, args.calls, args.threads, args.quantize, args.channels_last, args.compare,
                     examples if examples.is_dir() else None)
    setting = ", ".join([f"{result['threads']} torch threads"] + ["int8 dynamic quantisation"] * args.quantize
                        + ["channels-last"] * args.channels_last)
    print(f"Bundle opened and warmed up in {result['ready_s']:.1f} s; {result['reference']:,} reference specimens, "
          f"{result['candidates']:,} candidates; maps placed: {', '.join(result['map_spaces'])}; {setting}; "
          f"{args.calls} calls.\n")
    print("| part | wall p50 ms | wall p95 ms | CPU p50 ms | CPU p95 ms |\n|---|---:|---:|---:|---:|")
    print("\n".join(result["rows"]))
    if "closeness" in result:
        print("\nQuantised against float32: " + ", ".join(f"{k} {v:.4f}" for k, v in result["closeness"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
