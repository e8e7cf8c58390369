"""Command line: ``python -m train {synth,fit,eval,export,demo} ...``.

Each subcommand lives in the module that does the work; that module exposes ``add_arguments(parser)`` and
``run(args)``, and this file only wires them together. ``fit --export`` chains two of them (fit, then export)
and is composed here, so that the training loop never depends on the exporter.
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
    "calibrate": ("train.calibrate", "calibrate a bundle's abstention policy on held-out specimens (abstention.json)"),
    "kmer-baseline": ("train.kmer_baseline", "nearest-neighbour identification on k-mer profiles (a BOLD-style baseline)"),
    "demo": ("train.demo", "rebuild the embedded demo bundles in assets/ from scratch"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    composed = {"fit": (add_fit_arguments, run_fit)}
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name in composed:
            add, run = composed[name]
        else:
            module = importlib.import_module(module_name)
            add, run = module.add_arguments, module.run
        add(p)
        p.set_defaults(_run=run)
    return parser


def add_fit_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``fit``: the loop's, and ``--export BUNDLE_DIR``."""
    from train.loop import add_arguments

    add_arguments(parser)
    parser.add_argument("--export", metavar="BUNDLE_DIR", default=None,
                        help="after training, export the run as a bundle here (as `python -m train export` does)")


def run_fit(args: argparse.Namespace) -> int:
    """``fit``, then (with ``--export``) ``export`` of the finished run with the exporter's defaults."""
    from train import distributed
    from train.loop import fit_from_args

    out = fit_from_args(args)
    print(out)
    if args.export and distributed.launched_rank() == 0:  # under torchrun, one rank exports
        from train.export import export

        print(export(out, args.export))
    return 0


def main(argv: list[str] | None = None) -> int:
    # Our own progress at INFO; libraries (open_clip logs every step of building a model) at WARNING.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in ("train", "hirviz"):
        logging.getLogger(name).setLevel(logging.INFO)
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
