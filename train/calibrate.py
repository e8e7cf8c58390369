"""Calibrate a bundle's abstention policy on held-out specimens and write its ``abstention.json``.

``python -m train calibrate --bundle BUNDLE --metadata META [--images IMAGES] [--split RUN_DIR]``

Every held-out specimen is identified by the bundle's own :class:`hirviz.predict.Predictor` (clean inputs, the
policy switched off), so the signals calibrated on are exactly those the app measures (:mod:`hirviz.abstain`).
The held-out rows are cut in two by a seeded permutation: the thresholds are chosen on the *calibration* half
and the rejection and confident-wrong rates are reported on the other half, which tuned nothing.

Which rows are held out: with ``--split RUN_DIR`` the run's saved test split (checked by
:func:`train.rundir.select_rows`); without it the split is re-derived from the settings recorded in the bundle's
training config (:func:`train.rundir.load_training_split`) and checked against the bundle: its train/test
counts must match the provenance and every reference specimen must be a training row. ``python -m train export``
calls :func:`calibrate_bundle` on the run's test rows itself.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hirviz.abstain import DNA_QUERIES, AbstentionPolicy, calibrate
from hirviz.bundle import load_bundle
from hirviz.taxonomy import LEVELS
from train.config import TrainConfig
from train.data import ImageStore, open_images
from train.rundir import load_training_split, select_rows

logger = logging.getLogger(__name__)

DEFAULT_TARGET = 0.05
# A bundle is a real COI-barcode model when this share of its held-out barcodes matches the COI-5P HMM; a query
# sequence without a match is then out of its range (synthetic barcodes match nothing).
COI_BUNDLE_SHARE = 0.9


def heldout_evidence(bundle: Any, frame: pd.DataFrame, images: ImageStore | None
                     ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Signals, correctness and hard-limit rejections of every query over the rows of ``frame``.

    Returns ``(signals[query][signal], correct[query], hard[query])``, one value per row that has the query's
    inputs (rows without them are left out of that query). ``correct`` is False where the query's deepest
    confident rank names the wrong taxon; a query naming nothing is not wrong.
    """
    predictor = bundle.predictor()
    predictor.abstention = None  # hard limits only: the signals must not depend on an older policy
    rows: dict[str, list[tuple[dict[str, float], bool, bool]]] = {}
    files = frame["image_file"].tolist() if images is not None and "image_file" in frame else [None] * len(frame)
    for i, (record, image_file) in enumerate(zip(frame.itertuples(index=False), files)):
        image = images.get(image_file) if image_file else None
        barcode = record.barcode if isinstance(record.barcode, str) and record.barcode else None
        if image is None and barcode is None:
            continue
        prediction = predictor.predict(image=image, barcode=barcode, neighbours=0)
        truth = {level: getattr(record, level) for level in LEVELS}
        for query, result in prediction.queries.items():
            rank = result.deepest_rank
            named = result.levels[rank][0][0] if rank else None
            known = rank is not None and isinstance(truth[rank], str) and truth[rank]
            correct = not known or named == truth[rank]
            rows.setdefault(query, []).append((result.signals, correct, result.abstained))
        if (i + 1) % 200 == 0:
            logger.info("abstention signals: %d / %d held-out specimens", i + 1, len(frame))
    signals, correct, hard = {}, {}, {}
    for query, items in rows.items():
        names = list(items[0][0])
        signals[query] = {n: np.array([s.get(n, np.nan) for s, _, _ in items], dtype=np.float64) for n in names}
        correct[query] = np.array([c for _, c, _ in items], dtype=bool)
        hard[query] = np.array([h for _, _, h in items], dtype=bool)
    return signals, correct, hard


def _subset(data: dict[str, np.ndarray] | dict[str, dict[str, np.ndarray]], pick: dict[str, np.ndarray]) -> dict:
    return {q: ({k: v[pick[q]] for k, v in d.items()} if isinstance(d, dict) else d[pick[q]]) for q, d in data.items()}


def calibrate_bundle(bundle_dir: str | Path, heldout: pd.DataFrame, images: ImageStore | None, *,
                     target_reject: float = DEFAULT_TARGET, seed: int = 0, source: str = "") -> AbstentionPolicy:
    """Calibrate on half of the held-out rows, report on the other half, write ``abstention.json``."""
    bundle = load_bundle(bundle_dir)
    signals, correct, hard = heldout_evidence(bundle, heldout.reset_index(drop=True), images)
    calib, report = {}, {}
    for query, ok in correct.items():
        # Per query, as queries cover different rows (an image-only specimen has no DNA query).
        order = np.random.default_rng(seed).permutation(len(ok))
        calib[query], report[query] = np.sort(order[: len(ok) // 2]), np.sort(order[len(ok) // 2:])
    hits = signals.get("dna", {}).get("coi_hit")
    require_coi = bool(hits is not None and len(calib["dna"]) and hits[calib["dna"]].mean() >= COI_BUNDLE_SHARE)
    if require_coi:  # the hard limit the app will apply: a sequence with no COI-5P match is refused
        for query in DNA_QUERIES:
            if query in signals:
                hard[query] = hard[query] | (signals[query]["coi_hit"] < 1)
    policy = calibrate(_subset(signals, calib), _subset(correct, calib), target_reject,
                       hard=_subset(hard, calib), require_coi=require_coi)
    policy.report(_subset(signals, report), _subset(correct, report), _subset(hard, report))
    policy.data = {"heldout_source": source, "heldout_specimens": int(len(heldout)), "split_seed": int(seed),
                   "calibration_rows": {q: int(len(v)) for q, v in calib.items()},
                   "report_rows": {q: int(len(v)) for q, v in report.items()}}
    path = policy.save(bundle_dir)
    for query, stats in policy.stats.items():
        logger.info("abstention %s: %s", query, stats.get("report"))
    logger.info("wrote %s", path)
    return policy


def rederived_heldout(bundle: Any, metadata: str) -> pd.DataFrame:
    """The held-out rows of a bundle's training run, re-split from the settings its config recorded, and checked
    against the bundle (train/test counts of the provenance; every reference specimen among the training rows)."""
    cfg = TrainConfig.from_dict(bundle.training)
    cfg.data.metadata = str(metadata)
    frame, train_idx, test_idx = load_training_split(cfg)
    want = (bundle.provenance.get("train_specimens"), bundle.provenance.get("test_specimens"))
    if want != (len(train_idx), len(test_idx)):
        raise ValueError(f"re-splitting {metadata} gives {len(train_idx)} train / {len(test_idx)} held-out rows, but "
                         f"the bundle was trained on {want[0]} / {want[1]}: not the bundle's training data")
    train_ids = set(frame["sampleid"].iloc[train_idx].astype(str))
    strays = [i for i in bundle.reference.ids if str(i) not in train_ids]
    if strays:
        raise ValueError(f"{len(strays)} reference specimens of the bundle (e.g. {strays[0]}) are not training rows "
                         f"of the re-derived split of {metadata}: not the bundle's training data")
    return frame.iloc[test_idx].reset_index(drop=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", required=True, help="bundle directory to calibrate (abstention.json is written)")
    parser.add_argument("--metadata", required=True, help="the metadata the bundle's run was trained on")
    parser.add_argument("--images", default=None, help="the run's images (HDF5 or folder)")
    parser.add_argument("--split", default=None, metavar="RUN_DIR",
                        help="the run directory (its saved split); default: re-derive the split from the bundle")
    parser.add_argument("--target", type=float, default=DEFAULT_TARGET,
                        help="largest share of held-out specimens to reject, per query (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the calibration / report halves")


def run(args: argparse.Namespace) -> int:
    try:
        if args.split:
            heldout, _ = select_rows(args.metadata, args.split, "test")
            source = "the run's saved test split"
        else:
            heldout = rederived_heldout(load_bundle(args.bundle), args.metadata)
            source = "the test split re-derived from the bundle's recorded split settings"
        images = open_images(args.images) if args.images else None
        policy = calibrate_bundle(args.bundle, heldout, images, target_reject=args.target, seed=args.seed,
                                  source=source)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(str(err)) from err
    print(Path(args.bundle) / "abstention.json")
    for query, stats in policy.stats.items():
        print(query, stats.get("report"))
    return 0
