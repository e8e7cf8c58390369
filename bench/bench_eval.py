"""Embedding throughput of ``python -m train eval``: specimens per second, images and DNA, demo and paper-size towers.

    python -m bench.bench_eval [--specimens 256] [--paper-specimens 32] [--batch-size 64] [--threads 1]
                               [--device cpu] [--data DIR] [--models demo paper]

``train eval`` spends its time in :class:`train.evaluate.embedding.QueryEmbedder`: one image pass and one DNA pass
over the evaluated rows per degradation (``train.embed.embed_frame`` through the data loader: HDF5 read, eval
transform, tower forward), from which ``avg`` and ``fused`` are composed. This script times exactly that, for a
clean image pass and a clean DNA pass over a synthetic benchmark (``python -m train synth`` format, generated at
BIOSCAN's 256-px image height into a temporary directory, or ``--data DIR``):

- **demo**: the model of ``assets/demo-hir-fuse`` (``hirviz-tiny`` image tower, 2-layer k-mer BERT);
- **paper**: the papers' tower sizes with random weights (:data:`bench.bench_app.PAPER_SIZE`: open_clip ViT-B/16 at
  224 px, 512-d, as BioCLIP; a BERT of BarcodeBERT's size, 768 x 12, over non-overlapping 5-mers of the 658-bp
  barcodes).

Specimens/s is wall clock (and CPU time, which a machine shared with other jobs does not inflate). The default
evaluation (clean, noisy image, noisy DNA, both noisy) makes two passes of each modality, so its embedding time is
about 2 x (image + DNA pass); ``--sweep`` adds one pass per noise strength.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script as well as with -m

import torch  # noqa: E402

from bench.bench_app import PAPER_SIZE  # noqa: E402
from hirviz.degrade import DnaNoise  # noqa: E402
from hirviz.model import build_model  # noqa: E402
from train.data import open_images, read_metadata  # noqa: E402
from train.evaluate.embedding import QueryEmbedder  # noqa: E402
from train.synthetic import SynthConfig, generate  # noqa: E402


def demo_model() -> Any:
    from hirviz import load_bundle

    return load_bundle(REPO / "assets" / "demo-hir-fuse").model


def paper_model() -> Any:
    torch.manual_seed(0)
    return build_model(PAPER_SIZE).eval()


MODELS = {"demo": demo_model, "paper": paper_model}


def timed(fn: Any) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(model: Any, data: Path, n: int, batch_size: int, device: str) -> dict[str, float]:
    """Seconds (wall, CPU) of one clean image pass and one clean DNA pass over the first ``n`` specimens."""
    frame = read_metadata(data / "metadata.tsv").iloc[:n].reset_index(drop=True)
    images = open_images(data / "images.hdf5")
    try:
        model = model.to(device)
        # One small pass first: lazy set-up (allocator, tokenizer caches) is not what a long evaluation pays per row.
        QueryEmbedder(model, frame.iloc[:4], images, batch_size=batch_size, device=device).image(0, keep=False)
        QueryEmbedder(model, frame.iloc[:4], images, batch_size=batch_size, device=device).dna(None, keep=False)
        embedder = QueryEmbedder(model, frame, images, batch_size=batch_size, device=device)
        image_wall, image_cpu = timed(lambda: embedder.image(0, keep=False))
        dna_wall, dna_cpu = timed(lambda: embedder.dna(DnaNoise.off(), keep=False))
    finally:
        images.close()
    return {"n": len(frame), "image_wall": image_wall, "image_cpu": image_cpu, "dna_wall": dna_wall,
            "dna_cpu": dna_cpu}


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specimens", type=int, default=256, help="specimens embedded with the demo model")
    parser.add_argument("--paper-specimens", type=int, default=32, help="specimens embedded with paper-size towers")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=None, help="a python -m train synth output (else generated)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = {"demo": args.specimens, "paper": args.paper_specimens}
    tmp = None
    data = args.data
    if data is None:
        tmp = data = Path(tempfile.mkdtemp(prefix="bench_eval_"))
        generate(tmp, SynthConfig(specimens=max(sizes[m] for m in args.models), image_height=256, seed=0))
    rows = []
    try:
        for name in args.models:
            r = measure(MODELS[name](), data, sizes[name], args.batch_size, args.device)
            r["model"] = name
            rows.append(r)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"torch threads {torch.get_num_threads()}, device {args.device}, batch {args.batch_size}\n")
    print("specimens per second, wall clock / per second of CPU time\n")
    print("| model | specimens | image pass | DNA pass | image + DNA |\n|---|---:|---:|---:|---:|")
    for r in rows:
        both_wall, both_cpu = r["image_wall"] + r["dna_wall"], r["image_cpu"] + r["dna_cpu"]
        print(f"| {r['model']} | {r['n']} | {r['n'] / r['image_wall']:.2f} / {r['n'] / r['image_cpu']:.2f} | "
              f"{r['n'] / r['dna_wall']:.2f} / {r['n'] / r['dna_cpu']:.2f} | "
              f"{r['n'] / both_wall:.2f} / {r['n'] / both_cpu:.2f} |")
    return rows


if __name__ == "__main__":
    main()
