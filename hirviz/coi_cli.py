"""``python -m hirviz identify --fasta F [--out T.tsv] [--bundle B] [--references TSV]``: batch COI identification.

Writes one tab-separated row per FASTA record (:data:`hirviz.coi.ROW_COLUMNS`; ``decided_by`` lists, per named
rank, ``alignment``, ``alignment+model`` or ``model``, e.g. ``order:alignment family:alignment+model``).
References come from
``--references`` (a barcode TSV) or else from the bundle's reference bank; the bundle's model, when a bundle is
given, answers where no reference is close. Without ``--bundle`` and ``--references`` the repository's real COI
bundle (``assets/real-coi``: real BOLD / BIOSCAN-5M barcodes) gives both. A bad record gets a row whose ``notes`` say why; a bad option, file
or bundle is one line on stderr and exit status 2 (as ``predict``).
"""

from __future__ import annotations

import argparse
import csv
import sys
from contextlib import nullcontext
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the ``identify`` subcommand."""
    parser.add_argument("--fasta", required=True, help="FASTA file of query barcodes (or one raw sequence file)")
    parser.add_argument("--out", default="-", help="output TSV (default: standard output)")
    parser.add_argument("--bundle", default=None, help="bundle directory or hub repo id: its model (and its "
                        "reference barcodes unless --references is given); default, when --references is not "
                        "given either: the real COI bundle assets/real-coi")
    parser.add_argument("--references", default=None, help="barcode TSV (processid, order, family, genus, species, "
                        "dna_barcode) to align queries against")
    parser.add_argument("--no-model", action="store_true", help="use the bundle's references only, not its model")
    parser.add_argument("--top-k", type=int, default=5, help="reference hits kept per query (default 5)")


def run(args: argparse.Namespace, bad_input: type[Exception], default_bundle: Path | None = None) -> int:
    """Identify every record and write the table; input problems are raised as ``bad_input``.

    ``default_bundle`` is used when neither ``--bundle`` nor ``--references`` is given."""
    from hirviz.barcode import BarcodeError
    from hirviz.bundle import BundleError, load_bundle
    from hirviz.coi import ROW_COLUMNS, identify_fasta
    from hirviz.coi_refs import ReferenceError, ReferenceSet

    if args.bundle is None and args.references is None:
        if default_bundle is None or not Path(default_bundle).is_dir():
            raise bad_input(f"give --references TSV, --bundle B or both (the default real COI bundle is not at "
                            f"{default_bundle})")
        args.bundle = str(default_bundle)
    if not Path(args.fasta).is_file():
        raise bad_input(f"FASTA file not found: {args.fasta}")
    if args.top_k < 1:
        raise bad_input(f"--top-k must be at least 1, got {args.top_k}")
    try:
        bundle = load_bundle(args.bundle) if args.bundle is not None else None
        references = (ReferenceSet.from_tsv(args.references) if args.references is not None
                      else ReferenceSet.from_bundle(bundle))
        predictor = bundle.predictor() if bundle is not None and not args.no_model else None
        rows = identify_fasta(Path(args.fasta), references, predictor, k=args.top_k)
        with (nullcontext(sys.stdout) if args.out == "-" else open(args.out, "w", encoding="utf-8", newline="")) as fh:
            writer = csv.DictWriter(fh, fieldnames=list(ROW_COLUMNS), delimiter="\t", lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow(row)
    except (BarcodeError, BundleError, ReferenceError, OSError) as err:
        raise bad_input(str(err)) from None
    return 0
