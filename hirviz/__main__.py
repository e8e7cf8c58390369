"""Command line: ``python -m hirviz predict --image FILE --barcode TEXT_OR_FASTA_FILE [options]``.

Prints the same answers as the Python API: :meth:`hirviz.predict.Prediction.to_rows` as CSV or an aligned
table, or :meth:`~hirviz.predict.Prediction.to_dict` as JSON. A bad input (image, barcode, bundle, option)
gives one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

# The demo bundle shipped in the repository's assets/ folder (beside the package).
DEFAULT_BUNDLE = Path(__file__).resolve().parent.parent / "assets" / "demo-hir-fuse"
# The real COI-barcode bundle (real BOLD / BIOSCAN-5M barcodes): `identify`'s default references and model.
DEFAULT_COI_BUNDLE = DEFAULT_BUNDLE.parent / "real-coi"
EXIT_BAD_INPUT = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but with the usage errors on one line and the same exit status as other bad input."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(EXIT_BAD_INPUT)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m hirviz", description="Use a hirviz model bundle.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p = sub.add_parser("predict", help="identify a specimen from an image, a DNA barcode or both",
                       description="Identify a specimen from an image, a DNA barcode or both.")
    p.add_argument("--bundle", default=None,
                   help="bundle directory or hub repo id (default: the repository's demo bundle, "
                        f"assets/{DEFAULT_BUNDLE.name})")
    p.add_argument("--image", help="image file (JPEG, PNG, WebP, TIFF, ...)")
    p.add_argument("--barcode", help="a FASTA file, or the DNA sequence itself")
    p.add_argument("--blur", type=int, default=0, metavar="K", help="box-blur kernel on the model's input grid")
    p.add_argument("--dna-noise", type=float, default=None, metavar="FACTOR",
                   help="degrade the barcode with the paper's DNA noise scaled by FACTOR (1 = the paper's rates)")
    p.add_argument("--seed", type=int, default=0, help="seed of the DNA noise (default 0)")
    p.add_argument("--top-k", type=int, default=5, help="names listed per level and query (default 5)")
    p.add_argument("--neighbours", type=int, default=5, help="nearest reference specimens per query (JSON output)")
    p.add_argument("--threshold", type=float, default=0.5, help="score needed for the deepest confident rank")
    p.add_argument("--format", choices=("csv", "json", "table"), default="table", help="output format")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    from hirviz import coi_cli

    coi_cli.add_arguments(sub.add_parser("identify", help="identify COI barcodes of a FASTA file (table of answers)",
                                         description=coi_cli.__doc__.split("\n\n")[0]))
    return parser


def _read_barcode(value: str) -> tuple[str, str | None]:
    """The barcode text and, when ``value`` names a file, the file name (a sequence is taken as is)."""
    try:
        is_file = os.path.isfile(value)
    except (OSError, ValueError):  # a long sequence can exceed the OS's path length limits
        is_file = False
    if not is_file:
        return value, None
    try:
        return Path(value).read_text(encoding="utf-8", errors="replace"), Path(value).name
    except OSError as err:
        raise _BadInput(f"cannot read barcode file {value}: {err.strerror or err}") from None


class _BadInput(Exception):
    pass


def _print_table(rows: list[dict], columns: tuple[str, ...]) -> None:
    cells = [[f"{r[c]:.4f}" if c == "score" else str(r[c]) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    for line in [list(columns), *cells]:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip())


def predict(args: argparse.Namespace) -> int:
    if args.image is None and args.barcode is None:
        raise _BadInput("give --image, --barcode or both")
    # Imported here so that usage errors are reported without loading torch, open_clip and faiss first.
    from hirviz.bundle import BundleError, load_bundle
    from hirviz.degrade import DnaNoise
    from hirviz.model import BackboneUnavailable
    from hirviz.predict import INPUT_ERRORS, ROW_COLUMNS

    noise = None
    if args.dna_noise is not None:
        try:
            noise = DnaNoise().scaled(args.dna_noise)
        except ValueError as err:
            raise _BadInput(f"--dna-noise: {err}") from None
    barcode, barcode_file = _read_barcode(args.barcode) if args.barcode is not None else (None, None)
    bundle_path = args.bundle if args.bundle is not None else DEFAULT_BUNDLE
    if args.bundle is None and not DEFAULT_BUNDLE.is_dir():
        raise _BadInput(f"the demo bundle is not at {DEFAULT_BUNDLE}; pass --bundle DIR_OR_REPO_ID")
    try:
        predictor = load_bundle(bundle_path).predictor(device=args.device)
        prediction = predictor.predict(
            args.image, barcode, blur_kernel=args.blur, dna_noise=noise, seed=args.seed, top_k=args.top_k,
            neighbours=args.neighbours, threshold=args.threshold,
        )
    except (*INPUT_ERRORS, BundleError, BackboneUnavailable) as err:
        raise _BadInput(str(err)) from None

    file_name = Path(args.image).name if args.image is not None else None
    barcode_id = prediction.barcode_id or barcode_file
    if args.format == "json":
        out = {**prediction.to_dict(), "file_name": file_name, "barcode_id": barcode_id}
        json.dump(out, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return 0
    rows = prediction.to_rows(file_name=file_name, barcode_id=barcode_id)
    if args.format == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=list(ROW_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    else:
        _print_table(rows, ROW_COLUMNS)
    return 0


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        if args.command == "identify":
            from hirviz.coi_cli import run

            return run(args, _BadInput, default_bundle=DEFAULT_COI_BUNDLE)
        return predict(args)
    except _BadInput as err:
        sys.stderr.write("error: " + " ".join(str(err).split()) + "\n")
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
