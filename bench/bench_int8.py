"""How often int8 dynamic quantisation (``HIRVIZ_INT8=1``) changes a trained bundle's answers.

    python -m bench.bench_int8 [--bundles assets/demo-hir-fuse assets/demo-clibd assets/demo-hyperbolic]
                               [--coi assets/real-coi] [--barcodes ../shared/data/real_dna/barcodes.tsv] [--held-out 200]

Each bundle is opened twice as the app opens it, :class:`hirviz.ui.Engine` with float32 models and with
``int8=True`` (:func:`hirviz.model.int8_model`), and both answer the same inputs:

* photo bundles: every specimen of ``assets/examples`` as photo only, barcode only and photo + barcode, each clean
  and with noise (blur 3 px, DNA noise at the paper's rates; seeded, so both models see the same input);
* the COI bundle: ``--held-out`` barcodes of ``--barcodes`` that are not in its reference bank (the 20 % held out of
  its training), as the model's DNA query and as the full identification (``hirviz.identify_barcode``: checks,
  aligned reference hits and the model, reconciled per rank).

Per query (image, dna, avg, fused) and rank: the share of inputs whose top-1 name is the same, and the share whose
abstention (:mod:`hirviz.abstain`: "no confident match") is the same; for the COI bundle also the share of
identifications naming the same taxon (or abstaining alike) per rank. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PHOTO_BUNDLES = tuple(str(REPO / "assets" / n) for n in ("demo-hir-fuse", "demo-clibd", "demo-hyperbolic"))
COI_BUNDLE = str(REPO / "assets" / "real-coi")
BARCODES = REPO.parent / "shared" / "data" / "real_dna" / "barcodes.tsv"
LEVELS = ("order", "family", "genus", "species")


class Tally:
    """Counts of same / compared per (what, level); ``share`` gives the agreement."""

    def __init__(self) -> None:
        self.same: dict[tuple[str, str], int] = defaultdict(int)
        self.seen: dict[tuple[str, str], int] = defaultdict(int)

    def add(self, what: str, level: str, same: bool) -> None:
        self.seen[what, level] += 1
        self.same[what, level] += int(same)

    def share(self, what: str, level: str) -> float:
        return self.same[what, level] / self.seen[what, level] if self.seen[what, level] else float("nan")

    def overall(self, prefix: str = "") -> float:
        keys = [k for k in self.seen if k[0].startswith(prefix)]
        return sum(self.same[k] for k in keys) / max(1, sum(self.seen[k] for k in keys))

    def rows(self) -> list[str]:
        whats = list(dict.fromkeys(k[0] for k in self.seen))
        out = []
        for what in whats:
            levels = [lvl for lvl in (*LEVELS, "abstained") if (what, lvl) in self.seen]
            cells = " | ".join(f"{lvl} {self.share(what, lvl):.1%}" for lvl in levels)
            out.append(f"| {what} | {self.seen[what, levels[0]]} | {cells} |")
        return out


def _top1(levels: dict[str, list[tuple[str, float]]], level: str) -> str | None:
    ranked = levels.get(level) or []
    return ranked[0][0] if ranked else None


def compare_predictions(tally: Tally, a: Any, b: Any) -> None:
    """Add two :class:`hirviz.prediction.Prediction` of the same input to ``tally`` (per query: top-1 per rank,
    abstention)."""
    for query, ra in a.queries.items():
        rb = b.queries[query]
        for level in LEVELS:
            tally.add(query, level, _top1(ra.levels, level) == _top1(rb.levels, level))
        tally.add(query, "abstained", ra.abstained == rb.abstained)


def example_inputs(examples: Path) -> Iterator[tuple[str, Any, str | None]]:
    """``(label, image path or None, barcode or None)`` for every example specimen: photo, barcode, both."""
    with open(examples / "examples.tsv", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            image = str(examples / row["image_file"])
            yield "photo", image, None
            yield "barcode", None, row["barcode"]
            yield "both", image, row["barcode"]


def photo_agreement(bundle_dir: str, examples: Path) -> Tally:
    """float32 against int8 answers of one photo bundle on the example specimens (clean and noisy)."""
    from hirviz import load_bundle
    from hirviz.ui import Engine, NoiseSettings
    from hirviz.ui.engine import PAPER_NOISE

    bundle = load_bundle(bundle_dir)
    engines = [Engine({bundle.name: bundle}), Engine({bundle.name: bundle}, int8=True)]
    tally = Tally()
    for seed, noise in enumerate([NoiseSettings(), NoiseSettings(blur_kernel=3, dna=PAPER_NOISE, seed=1)]):
        for _, image, barcode in example_inputs(examples):
            if image is not None and not engines[0].image_trained(bundle.name):
                continue
            settings = NoiseSettings(noise.blur_kernel if image is not None else 0, noise.dna, seed)
            a, b = (engine.predict(bundle.name, image, barcode, settings) for engine in engines)
            compare_predictions(tally, a, b)
    return tally


def held_out_barcodes(bundle: Any, table: Path, n: int, seed: int = 0) -> list[str]:
    """``n`` seeded barcodes of ``table`` whose record is not in the bundle's reference bank (held out of training)."""
    known = set(map(str, bundle.reference.ids))
    with open(table, newline="") as handle:
        rows = [r for r in csv.DictReader(handle, delimiter="\t") if r["processid"] not in known and r["dna_barcode"]]
    pick = np.random.default_rng(seed).choice(len(rows), size=min(n, len(rows)), replace=False)
    return [rows[i]["dna_barcode"] for i in sorted(pick)]


def coi_agreement(bundle_dir: str, barcodes: Sequence[str]) -> Tally:
    """float32 against int8 on held-out barcodes: the model's DNA query and the full identification per rank."""
    from hirviz import identify_barcode, load_bundle
    from hirviz.ui import Engine

    bundle = load_bundle(bundle_dir)
    engines = [Engine({bundle.name: bundle}), Engine({bundle.name: bundle}, int8=True)]
    references = engines[0].coi_references()
    tally = Tally()
    for barcode in barcodes:
        a, b = (engine.predictor(bundle.name).predict(barcode=barcode, neighbours=0) for engine in engines)
        compare_predictions(tally, a, b)
        ia, ib = (identify_barcode(barcode, references, engine.predictor(bundle.name)) for engine in engines)
        for level in LEVELS:
            tally.add("identification", level, ia.answers[level].name == ib.answers[level].name)
    return tally


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", nargs="*", default=list(PHOTO_BUNDLES))
    parser.add_argument("--coi", default=COI_BUNDLE, help="barcode bundle ('' to skip)")
    parser.add_argument("--barcodes", type=Path, default=BARCODES, help="real barcodes (held-out rows are used)")
    parser.add_argument("--held-out", type=int, default=200)
    parser.add_argument("--examples", type=Path, default=REPO / "assets" / "examples")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from hirviz import load_bundle

    torch.set_num_threads(args.threads)
    head = "| query | inputs | top-1 the same (per rank), abstention the same |\n|---|---:|---|"
    for bundle_dir in args.bundles:
        tally = photo_agreement(bundle_dir, args.examples)
        print(f"\n**{Path(bundle_dir).name}** (example specimens x photo / barcode / both x clean / noisy): "
              f"{tally.overall():.1%} of all comparisons the same\n\n{head}")
        print("\n".join(tally.rows()))
    if args.coi and args.barcodes.is_file():
        barcodes = held_out_barcodes(load_bundle(args.coi), args.barcodes, args.held_out)
        tally = coi_agreement(args.coi, barcodes)
        print(f"\n**{Path(args.coi).name}** ({len(barcodes)} held-out barcodes): {tally.overall():.1%} of all "
              f"comparisons the same\n\n{head}")
        print("\n".join(tally.rows()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
