"""The ``python -m train synth`` subcommand."""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import fields

from train.data.clibd_split import DEFAULT_MIN_RECORDS
from train.synthetic.config import SynthConfig
from train.synthetic.writer import generate

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``synth`` subcommand's flags (one per :class:`SynthConfig` field that users tune)."""
    d = SynthConfig()
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--specimens", type=int, default=d.specimens, help="number of specimens (default %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed (default %(default)s)")
    for name in ("orders", "families", "genera", "species"):
        parser.add_argument(f"--{name}", type=int, default=getattr(d, name),
                            help=f"number of {name} (default %(default)s)")
    for level in ("family", "genus", "species"):
        parser.add_argument(f"--{level}-known", type=float, default=getattr(d, f"{level}_known"),
                            help=f"fraction of specimens labelled to {level} (default %(default)s)")
    parser.add_argument("--image-height", type=int, default=d.image_height,
                        help="image height in pixels; width is 1.1-1.45 times it (default %(default)s)")
    parser.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality, help="JPEG quality (default %(default)s)")
    parser.add_argument("--clibd-min-records", type=int, default=DEFAULT_MIN_RECORDS,
                        help="clibd_split.tsv: fewest records of a species that can be seen (default %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="image processes (default: CPU count); the output does not depend on it")


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    """The :class:`SynthConfig` of parsed ``synth`` flags."""
    names = {f.name for f in fields(SynthConfig)}
    return SynthConfig(**{k: v for k, v in vars(args).items() if k in names})


def run(args: argparse.Namespace) -> int:
    if args.clibd_min_records < 4:
        raise SystemExit(f"--clibd-min-records must be at least 4, got {args.clibd_min_records}")
    started = time.perf_counter()
    out = generate(args.out, config_from_args(args), args.clibd_min_records)
    log.info("done in %.1f s: %s", time.perf_counter() - started, out)
    return 0
