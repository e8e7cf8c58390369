"""``python -m train eval``: choose the rows, refuse to score a bundle on its own training rows, evaluate, write."""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from train.data import open_images, specimen_ids
from train.evaluate.orchestration import CONDITIONS, DEFAULT_BLUR_KERNEL, evaluate_bundle
from train.evaluate.perlevel import PER_LEVEL_READINGS
from train.evaluate.retrieval import clibd_for_bundle, format_clibd
from train.evaluate.tables import format_tables
from train.rundir import SUBSETS, select_rows, split_settings

if TYPE_CHECKING:
    from hirviz.bundle import Bundle

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, help="bundle directory or hub repo id")
    parser.add_argument("--metadata", required=True,
                        help="specimens to evaluate: BIOSCAN TSV/CSV, the authors' CSV or a barcode TSV")
    parser.add_argument("--images", default=None, help="images.hdf5 or a folder; without it only DNA is queried")
    parser.add_argument("--split", default=None, help="a run directory (or its split.npz) whose rows to evaluate")
    parser.add_argument("--subset", choices=SUBSETS, default=None,
                        help="rows of the split to evaluate (default: test with --split, all without)")
    parser.add_argument("--candidates", choices=("bundle", "dataset"), default="bundle",
                        help="rank the bundle's candidate strings, or the evaluated data's own distinct strings")
    parser.add_argument("--conditions", default=",".join(CONDITIONS),
                        help=f"comma-separated subset of {','.join(CONDITIONS)}")
    parser.add_argument("--blur-kernel", type=int, default=DEFAULT_BLUR_KERNEL,
                        help=f"box-blur kernel of the noisy-image conditions, on the model's input grid "
                             f"(default {DEFAULT_BLUR_KERNEL}; the paper's value was lost)")
    parser.add_argument("--noise-seed", type=int, default=0, help="seed of the DNA degradation (default 0)")
    parser.add_argument("--max-specimens", type=int, default=None,
                        help="evaluate a random subset (seed 0) of at most this many of the chosen rows")
    parser.add_argument("--sweep", action="store_true", help="also measure accuracy against noise strength")
    parser.add_argument("--retrieval", nargs="?", const="bank", choices=("bank", "clibd"), default=None,
                        help="also run CLIBD's retrieval protocol: 'bank' (the default) against the bundle's reference "
                             "bank; 'clibd' on CLIBD's partition of --metadata, unseen species retrieved from their "
                             "own keys (results key retrieval_clibd)")
    parser.add_argument("--partition", default=None,
                        help="--retrieval clibd: partition TSV (sampleid, partition); default: the bundle's "
                             "data.partition, clibd_split.tsv beside the metadata, BIOSCAN-5M's split column, ...")
    parser.add_argument("--per-level", choices=PER_LEVEL_READINGS, default="string",
                        help="per-level accuracy from the predicted strings' names (string, default) or from a "
                             "ranking of each level's own distinct prefixes (independent)")
    parser.add_argument("--out", required=True, help="results JSON to write")
    parser.add_argument("--markdown", default=None, help="also write the tables as markdown here")
    parser.add_argument("--batch-size", type=int, default=256, help="specimens per encoder batch")
    parser.add_argument("--num-workers", type=int, default=0, help="data-loader workers for reading images")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice; 1 is fastest for small models on a busy CPU)")


def run(args: argparse.Namespace) -> int:
    from hirviz.bundle import BundleError, load_bundle

    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown or not conditions:
        raise SystemExit(f"--conditions: unknown {unknown}; choose from {', '.join(CONDITIONS)}")
    if args.partition is not None and args.retrieval != "clibd":
        raise SystemExit("--partition is for --retrieval clibd")
    if args.blur_kernel < 1:
        raise SystemExit(f"--blur-kernel must be >= 1, got {args.blur_kernel}")
    if args.max_specimens is not None and args.max_specimens < 1:
        raise SystemExit(f"--max-specimens must be >= 1, got {args.max_specimens}")
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    try:
        bundle = load_bundle(args.bundle)
        frame, info = select_rows(args.metadata, args.split, args.subset)
    except (BundleError, FileNotFoundError, ValueError) as err:
        raise SystemExit(str(err)) from err
    _check_against_bundle(bundle, args.metadata, info, subset_given=args.subset is not None)
    # The reference bank is usually the training set: held-out rows found there mean a mismatched split.
    ids = specimen_ids(frame)
    info["specimens_in_reference_bank"] = int(np.isin(ids[pd.notna(ids)].astype(str), bundle.reference.ids).sum())
    if info["specimens_in_reference_bank"] and info["subset"] == "test":
        logger.warning("%d of the %d test specimens are in the bundle's reference bank (its training set?)",
                       info["specimens_in_reference_bank"], len(frame))
    if args.max_specimens is not None and len(frame) > args.max_specimens:
        rows = np.sort(np.random.default_rng(0).choice(len(frame), args.max_specimens, replace=False))
        frame = frame.iloc[rows].reset_index(drop=True)
        info["max_specimens"] = args.max_specimens
    images = open_images(args.images) if args.images else None
    if images is None and frame["image_file"].notna().any():
        logger.info("no --images given: image queries are skipped")
    try:  # the image store is an open HDF5 file: closed however the evaluation ends
        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        results = evaluate_bundle(bundle, frame, images, conditions, candidates=args.candidates,
                                  blur_kernel=args.blur_kernel, seed=args.noise_seed, sweep=args.sweep,
                                  retrieval=args.retrieval == "bank", per_level=args.per_level,
                                  batch_size=args.batch_size, num_workers=args.num_workers,
                                  device=device, dataset=str(args.metadata))
        results["_meta"].update(info)
        if args.retrieval == "clibd":
            try:
                results["retrieval_clibd"] = clibd_for_bundle(bundle, args.metadata, args.partition, images,
                                                              batch_size=args.batch_size, num_workers=args.num_workers,
                                                              device=device)
            except (FileNotFoundError, ValueError) as err:
                raise SystemExit(f"--retrieval clibd: {err}") from err
    finally:
        if images is not None:
            images.close()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    markdown = format_tables(results)
    if "retrieval_clibd" in results:
        markdown += "\n" + format_clibd(results["retrieval_clibd"])
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(markdown, encoding="utf-8")
    print(markdown)
    return 0


def _check_against_bundle(bundle: Bundle, metadata: str | os.PathLike, info: dict[str, Any],
                          subset_given: bool) -> None:
    """Refuse an evaluation that would score the bundle on its own training rows without being told to."""
    data = (bundle.training or {}).get("data") or {}
    trained_on = data.get("metadata")
    same_file = bool(trained_on) and _same_file(trained_on, metadata)
    if info["split"] is None and same_file and not subset_given:
        raise SystemExit(f"{metadata} is the metadata bundle {bundle.name} was trained on: pass --split RUN_DIR "
                         "--subset test to evaluate its held-out rows, or --subset all to include the training rows")
    if same_file and "split_settings" in info and info["split_settings"] != split_settings(bundle.training):
        raise SystemExit(f"the split's settings {info['split_settings']} differ from those bundle {bundle.name} "
                         f"was trained with {split_settings(bundle.training)}: its test rows may be training rows")
    if info["subset"] in ("all", "train") and same_file:
        logger.warning("evaluating on %s rows of the bundle's own training metadata", info["subset"])


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
