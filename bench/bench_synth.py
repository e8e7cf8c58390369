"""Throughput of the synthetic benchmark generator (``python -m train synth``).

Generates a benchmark into a temporary directory, deletes it, and prints specimens per second and the
total time. Example: ``python bench/bench_synth.py --specimens 20000 --image-height 256 --workers 2``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# Run from a clone without installing: the repository root holds the ``train`` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train.synthetic import SynthConfig, generate  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specimens", type=int, default=100_000)
    parser.add_argument("--image-height", type=int, default=256)
    parser.add_argument("--workers", type=int, default=None, help="image processes (default: CPU count)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    config = SynthConfig(specimens=args.specimens, image_height=args.image_height, workers=args.workers, seed=args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    try:
        started = time.perf_counter()
        generate(tmp, config)
        seconds = time.perf_counter() - started
        size_mb = sum(f.stat().st_size for f in tmp.iterdir()) / 2**20
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    workers = args.workers or os.cpu_count()
    print(f"specimens={args.specimens} image_height={args.image_height} workers={workers}")
    print(f"total_seconds={seconds:.1f} specimens_per_second={args.specimens / seconds:.0f} output_mb={size_mb:.0f}")


if __name__ == "__main__":
    main()
