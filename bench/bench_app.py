"""Latency of the app's identify call, in process and under concurrent load.

    python -m bench.bench_app [--bundle assets/demo-hir-fuse] [--calls 30] [--no-paper-size]
                              [--users 20] [--load-seconds 60]

Three measurements, each printing p50 / p95 (milliseconds):

1. **server-side**: ``hirviz.ui.identify`` (what one request runs on the server: the four queries of the
   bundle's model on a photo + barcode, neighbours, result tables, gate and score charts), and the
   bare ``Predictor.predict`` inside it, with the bundle given by ``--bundle``;
2. **paper-size towers**: the same with a BioCLIP-size image tower (ViT-B/16 at 224 px, 512-d) and a
   BarcodeBERT-size DNA tower (BERT, hidden 768, 12 layers, non-overlapping 5-mers), random weights; the
   candidates and reference specimens are the bundle's, with random embeddings of the new width;
3. **load**: ``python app.py`` on 127.0.0.1 with the bundle, and ``--users`` ``gradio_client`` users calling
   ``/identify`` back to back for ``--load-seconds``; every call must succeed (exit status 1 otherwise).

The query specimen is the first of ``--examples`` (``examples.tsv``), else a synthetic photo and barcode.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

import hirviz
from hirviz.bundle import Reference
from hirviz.degrade import DnaNoise
from hirviz.model import ModelConfig, build_model
from hirviz.predict import Predictor
from hirviz.ui import Engine, NoiseSettings, identify

REPO = Path(__file__).resolve().parents[1]
# BioCLIP's image tower (ViT-B/16, 224 px, 512-d space) and BarcodeBERT's DNA encoder (BERT-base over 5-mers).
PAPER_SIZE = ModelConfig(
    embed_dim=512, clip_model="ViT-B-16", clip_pretrained=None, dna_encoder="kmer-bert", dna_hidden=768,
    dna_layers=12, dna_heads=12, dna_intermediate=3072, dna_dropout=0.0, dna_tokenizer="kmer:5",
)


def percentiles(samples_s: list[float]) -> str:
    ms = np.asarray(samples_s) * 1000.0
    return f"p50 {np.percentile(ms, 50):8.1f} ms   p95 {np.percentile(ms, 95):8.1f} ms   (n={len(ms)})"


def time_calls(fn: Callable[[], Any], calls: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def query_specimen(examples: Path | None) -> tuple[str, str]:
    """A photo path and a barcode: the first example specimen, or a synthetic one in a temporary folder."""
    table = examples / "examples.tsv" if examples else None
    if table is not None and table.is_file():
        row = pd.read_csv(table, sep="\t", dtype=str, keep_default_na=False).iloc[0]
        if row["image_file"] and (examples / row["image_file"]).is_file() and row["barcode"]:
            return str(examples / row["image_file"]), row["barcode"]
    rng = np.random.default_rng(0)
    path = Path(tempfile.mkdtemp(prefix="hirviz-bench-")) / "specimen.jpg"
    Image.fromarray(rng.integers(0, 255, (256, 340, 3), dtype=np.uint8)).save(path)
    return str(path), "".join(rng.choice(list("ACGT"), 658))


# --------------------------------------------------------------------------------------------- paper size


class RandomBundle:
    """A bundle-like object around a randomly initialised model of any size (for timing only).

    Candidates, ranks, ids and map layouts come from ``base``; the text and reference embeddings are random
    unit vectors of the new model's width.
    """

    def __init__(self, base: Any, config: ModelConfig, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.name = f"random {config.clip_model} + BERT {config.dna_hidden}x{config.dna_layers}"
        self.objective = "clibd-hir-fuse"
        self.training = {"loss": {"objective": "clibd-hir-fuse", "fusion_weight": 1.0}}
        self.fusion_trained = True
        self.eval_results = None
        self.card = ""
        self.model = build_model(config).eval()
        d = self.model.embed_dim
        self.candidates, self.candidate_ranks = base.candidates, base.candidate_ranks
        self.text_embeddings = _unit(rng.normal(size=(len(self.candidates), d)))
        ref = base.reference
        self.reference = Reference(
            ids=ref.ids, ranks=ref.ranks, labels=ref.labels, barcodes=ref.barcodes,
            embeddings={space: _unit(rng.normal(size=(len(ref), d))) for space in ref.embeddings},
            has_image=ref.has_image, has_dna=ref.has_dna, layouts=ref.layouts,
        )

    def predictor(self) -> Predictor:
        return Predictor(self)


def _unit(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def bench_in_process(label: str, bundle: Any, image: str, barcode: str, calls: int) -> None:
    engine = Engine({bundle.name: bundle})
    started = time.perf_counter()
    engine.warm_up()
    print(f"\n[{label}] {bundle.name}: warm-up {time.perf_counter() - started:.1f} s")
    predictor = engine.predictor(bundle.name)
    view = identify(engine, image, barcode)
    assert view.ok and set(view.predictions[bundle.name].queries) == {"image", "dna", "avg", "fused"}, view.status
    print("  Predictor.predict (4 queries)  ",
          percentiles(time_calls(lambda: predictor.predict(image, barcode), calls)))
    print("  ui.identify (whole request)    ",
          percentiles(time_calls(lambda: identify(engine, image, barcode), calls)))
    noisy = NoiseSettings(blur_kernel=5, dna=DnaNoise(), seed=1)
    print("  ui.identify, blur 5 + DNA noise", percentiles(time_calls(
        lambda: identify(engine, image, barcode, noisy), calls)))


# ------------------------------------------------------------------------------------------------- load


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_app(bundle: str, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HIRVIZ_BUNDLES": bundle, "GRADIO_SERVER_PORT": str(port), "HF_HUB_OFFLINE": "1",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("SPACE_ID", None)  # never listen beyond this machine
    workdir = Path(tempfile.mkdtemp(prefix="hirviz-bench-app-"))
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, str(REPO / "app.py")], cwd=workdir, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the app exited with status {process.returncode}; see {log}")
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return process
        except OSError:
            time.sleep(1)
    process.kill()
    raise SystemExit(f"the app did not answer at {url} within 300 s; see {log}")


def stop_app(process: subprocess.Popen, timeout: float = 30) -> None:
    """Stop an app started by :func:`start_app`: politely, then for good if it has not exited after ``timeout`` s."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()


def load_test(url: str, image: str, barcode: str, users: int, seconds: float,
              request: Callable[[Any, int, int], None] | None = None, httpx_kwargs: dict[str, Any] | None = None
              ) -> tuple[list[float], list[str]]:
    """``users`` threads, each with its own ``gradio_client.Client`` (``httpx_kwargs``, e.g. a timeout, go to it),
    calling back to back for ``seconds``: the latencies of the calls that succeeded and a message per failure.
    ``request(client, user, call)`` makes one call and raises on a wrong answer (default: ``/identify`` with the
    photo and the barcode)."""
    from gradio_client import Client, handle_file

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(users)

    def user(index: int) -> None:
        try:
            client = Client(url, verbose=False, httpx_kwargs=httpx_kwargs)
        except Exception as err:  # count it and let the others go on
            with lock:
                errors.append(f"user {index}: connect: {type(err).__name__}: {err}")
            ready.abort()
            return
        try:
            ready.wait(timeout=120)
        except threading.BrokenBarrierError:
            pass
        deadline = time.monotonic() + seconds
        call = 0
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                if request is not None:
                    request(client, index, call)
                else:
                    # Each user varies the seed and the noise so that nothing can be served from a cache.
                    out = client.predict(image=handle_file(image), barcode=barcode, blur_kernel=call % 4,
                                         substitution=0.01 * (call % 3), seed=index * 1000 + call,
                                         api_name="/identify")
                    if not str(out[0]).startswith("✓"):
                        raise RuntimeError(f"not identified: {out[0]!r}")
                with lock:
                    latencies.append(time.perf_counter() - started)
            except Exception as err:
                with lock:
                    errors.append(f"user {index} call {call}: {type(err).__name__}: {err}")
            call += 1

    threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors


# -------------------------------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", default=str(REPO / "assets" / "demo-hir-fuse"), help="bundle dir or hub id")
    parser.add_argument("--examples", default=str(REPO / "assets" / "examples"), help="examples folder")
    parser.add_argument("--calls", type=int, default=30, help="timed calls per in-process measurement")
    parser.add_argument("--paper-size", action=argparse.BooleanOptionalAction, default=True,
                        help="also time ViT-B/16 + BERT-768x12 towers with random weights")
    parser.add_argument("--users", type=int, default=20, help="concurrent gradio_client users (0 = no load test)")
    parser.add_argument("--load-seconds", type=float, default=60.0, help="length of the load test")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"CPU threads: torch {torch.get_num_threads()}, cores {os.cpu_count()}")
    bundle = hirviz.load_bundle(args.bundle)
    examples = Path(args.examples)
    image, barcode = query_specimen(examples if examples.is_dir() else None)
    print(f"query: {Path(image).name} ({Image.open(image).size[0]}x{Image.open(image).size[1]}), {len(barcode)} bp")

    bench_in_process("bundle", bundle, image, barcode, args.calls)
    if args.paper_size:
        bench_in_process("paper-size towers, random weights", RandomBundle(bundle, PAPER_SIZE), image, barcode,
                         args.calls)

    if args.users <= 0:
        return 0
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="hirviz-bench-log-")) / "app.log"
    print(f"\n[load] starting the app on 127.0.0.1:{port} (log: {log}) ...")
    process = start_app(args.bundle, port, log)
    try:
        started = time.perf_counter()
        latencies, errors = load_test(f"http://127.0.0.1:{port}/", image, barcode, args.users, args.load_seconds)
        wall = time.perf_counter() - started
    finally:
        stop_app(process, timeout=20)
    print(f"[load] {args.users} users, {args.load_seconds:g} s: {len(latencies)} calls ok, {len(errors)} errors, "
          f"{len(latencies) / wall:.1f} calls/s")
    if latencies:
        print("  /identify latency seen by a user", percentiles(latencies),
              f"  max {max(latencies) * 1000:.0f} ms")
    for error in errors[:10]:
        print("  error:", error)
    return 1 if errors or not latencies else 0


if __name__ == "__main__":
    sys.exit(main())
