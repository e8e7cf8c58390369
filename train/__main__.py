"""Command line: ``python -m train {synth,fit,eval,export,demo} ...``.

Each subcommand lives in the module that does the work; that module exposes ``add_arguments(parser)`` and
``run(args)``, and this file only wires them together.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS = {
    "synth": ("train.synthetic", "write a synthetic benchmark in the BIOSCAN-1M format (metadata.tsv + images.hdf5)"),
    "fit": ("train.loop", "train a model (one process, or data-parallel under torchrun)"),
    "eval": ("train.evaluate", "score a bundle on a dataset: the papers' per-level tables, clean and noisy"),
    "export": ("train.export", "turn a run directory into a model bundle"),
    "kmer-baseline": ("train.kmer_baseline", "nearest-neighbour identification on k-mer profiles (a BOLD-style baseline)"),
    "demo": ("train.demo", "rebuild the embedded demo bundles in assets/ from scratch"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Our own progress at INFO; libraries (open_clip logs every step of building a model) at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("train", "hirviz"):
        logging.getLogger(name).setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
