"""Calibrate a bundle's abstention policy on held-out specimens and write its ``abstention.json``.

``python -m train calibrate --bundle BUNDLE --metadata META [--images IMAGES] [--split RUN_DIR]``

Every held-out specimen is identified by the bundle's own :class:`hirviz.predict.Predictor` (clean inputs, the
policy switched off), so the signals calibrated on are exactly those the app measures (:mod:`hirviz.abstain`).
Each is asked twice, clean and under the evaluation's noisy condition (:func:`calibrate_bundle`). The held-out
specimens are cut in two by a seeded permutation: the thresholds are chosen on the *calibration* half and the
rejection and confident-wrong rates are reported on the other half, which tuned nothing (``report``: both
conditions; ``report_clean`` / ``report_noisy``: each).

Which rows are held out: with ``--split RUN_DIR`` the run's saved test split (checked by
:func:`train.rundir.select_rows`); without it the split is re-derived from the settings recorded in the bundle's
training config (:func:`train.rundir.load_training_split`) and checked against the bundle: its train/test
counts must match the provenance and every reference specimen must be a training row. ``python -m train export``
calls :func:`calibrate_bundle` on the run's test rows itself.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hirviz.abstain import DNA_QUERIES, AbstentionPolicy, calibrate
from hirviz.bundle import load_bundle
from hirviz.degrade import DnaNoise
from hirviz.taxonomy import LEVELS
from train.config import TrainConfig
from train.data import ImageStore, open_images, read_metadata
from train.embed import Degradation
from train.evaluate.orchestration import DEFAULT_BLUR_KERNEL
from train.rundir import load_training_split, select_rows

logger = logging.getLogger(__name__)

DEFAULT_TARGET = 0.05
# A bundle is a real COI-barcode model when this share of its held-out barcodes matches the COI-5P HMM; a query
# sequence without a match is then out of its range (synthetic barcodes match nothing).
COI_BUNDLE_SHARE = 0.9


@dataclass
class Evidence:
    """Per query, one entry per (held-out specimen, condition) that has the query's inputs: ``signals[query]
    [signal]``, ``correct[query]`` (False where the deepest confident rank names the wrong taxon; naming nothing is
    not wrong), ``hard[query]`` (refused by the hard limits), ``specimen[query]`` (row in the held-out frame) and
    ``noisy[query]`` (the entry's inputs were degraded)."""

    signals: dict[str, dict[str, np.ndarray]]
    correct: dict[str, np.ndarray]
    hard: dict[str, np.ndarray]
    specimen: dict[str, np.ndarray]
    noisy: dict[str, np.ndarray]

    def pick(self, keep: dict[str, np.ndarray]) -> Evidence:
        """The entries where ``keep[query]`` (a boolean mask) is True."""
        return Evidence({q: {k: v[keep[q]] for k, v in d.items()} for q, d in self.signals.items()},
                        *({q: a[keep[q]] for q, a in part.items()}
                          for part in (self.correct, self.hard, self.specimen, self.noisy)))


def heldout_evidence(bundle: Any, frame: pd.DataFrame, images: ImageStore | None,
                     conditions: tuple[Degradation, ...] = (Degradation(),)) -> Evidence:
    """Identify every row of ``frame`` under each degradation in ``conditions`` and collect the :class:`Evidence`."""
    predictor = bundle.predictor()
    predictor.abstention = None  # hard limits only: the signals must not depend on an older policy
    rows: dict[str, list[tuple[dict[str, float], bool, bool, int, bool]]] = {}
    files = frame["image_file"].tolist() if images is not None and "image_file" in frame else [None] * len(frame)
    for i, (record, image_file) in enumerate(zip(frame.itertuples(index=False), files)):
        image = images.get(image_file) if image_file else None
        barcode = record.barcode if isinstance(record.barcode, str) and record.barcode else None
        if image is None and barcode is None:
            continue
        truth = {level: getattr(record, level) for level in LEVELS}
        for cond in conditions:
            prediction = predictor.predict(image=image, barcode=barcode, neighbours=0, blur_kernel=cond.blur_kernel,
                                           dna_noise=cond.dna, seed=cond.seed)
            noisy = cond.blur_kernel > 1 or cond.dna is not None
            for query, result in prediction.queries.items():
                rank = result.deepest_rank
                named = result.levels[rank][0][0] if rank else None
                known = rank is not None and isinstance(truth[rank], str) and truth[rank]
                correct = not known or named == truth[rank]
                rows.setdefault(query, []).append((result.signals, correct, result.abstained, i, noisy))
        if (i + 1) % 200 == 0:
            logger.info("abstention signals: %d / %d held-out specimens", i + 1, len(frame))
    out = Evidence({}, {}, {}, {}, {})
    for query, items in rows.items():
        names = list(items[0][0])
        out.signals[query] = {n: np.array([it[0].get(n, np.nan) for it in items], dtype=np.float64) for n in names}
        for part, k, dtype in ((out.correct, 1, bool), (out.hard, 2, bool), (out.specimen, 3, np.int64),
                               (out.noisy, 4, bool)):
            part[query] = np.array([it[k] for it in items], dtype=dtype)
    return out


def calibrate_bundle(bundle_dir: str | Path, heldout: pd.DataFrame, images: ImageStore | None, *,
                     target_reject: float = DEFAULT_TARGET, seed: int = 0, source: str = "") -> AbstentionPolicy:
    """Calibrate on half of the held-out specimens, report on the other half, write ``abstention.json``.

    Each specimen is asked clean and under the noisy condition of the evaluation (the default blur on the model
    input and the paper's DNA noise, both at once): the model's range is what it was evaluated on, so a photo blurred
    as much as the evaluated noisy photos is not refused as out of range.
    """
    bundle = load_bundle(bundle_dir)
    conditions = (Degradation(), Degradation(dna=DnaNoise(), blur_kernel=DEFAULT_BLUR_KERNEL, seed=0))
    ev = heldout_evidence(bundle, heldout.reset_index(drop=True), images, conditions)
    # Halves by specimen, so that a specimen's clean and noisy entries fall on the same side.
    in_calib = np.zeros(len(heldout), dtype=bool)
    in_calib[np.random.default_rng(seed).permutation(len(heldout))[: len(heldout) // 2]] = True
    calib = ev.pick({q: in_calib[s] for q, s in ev.specimen.items()})
    hits = calib.signals.get("dna", {}).get("coi_hit")
    require_coi = bool(hits is not None and len(hits) and hits.mean() >= COI_BUNDLE_SHARE)
    if require_coi:  # the hard limit the app will apply: a sequence with no COI-5P match is refused
        for query in DNA_QUERIES:
            if query in ev.signals:
                ev.hard[query] = ev.hard[query] | (ev.signals[query]["coi_hit"] < 1)
        calib = ev.pick({q: in_calib[s] for q, s in ev.specimen.items()})
    policy = calibrate(calib.signals, calib.correct, target_reject, hard=calib.hard, require_coi=require_coi)
    for key, keep in (("report", lambda q: ~in_calib[ev.specimen[q]]),
                      ("report_clean", lambda q: ~in_calib[ev.specimen[q]] & ~ev.noisy[q]),
                      ("report_noisy", lambda q: ~in_calib[ev.specimen[q]] & ev.noisy[q])):
        part = ev.pick({q: keep(q) for q in ev.signals})
        policy.report(part.signals, part.correct, part.hard, key=key)
    policy.data = {"heldout_source": source, "heldout_specimens": int(len(heldout)), "split_seed": int(seed),
                   "calibration_specimens": int(in_calib.sum()), "report_specimens": int((~in_calib).sum()),
                   "conditions": {"clean": {}, "noisy": {"blur_kernel": DEFAULT_BLUR_KERNEL,
                                                         "dna_noise": asdict(DnaNoise()), "seed": 0}}}
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
    train = frame.iloc[train_idx].set_index(frame["sampleid"].iloc[train_idx].astype(str))
    ref = bundle.reference
    strays = [i for i in ref.ids if str(i) not in train.index]
    if strays:
        raise ValueError(f"{len(strays)} reference specimens of the bundle (e.g. {strays[0]}) are not training rows "
                         f"of the re-derived split of {metadata}: not the bundle's training data")
    given = [b if isinstance(b, str) else "" for b in train.loc[[str(i) for i in ref.ids], "barcode"]]
    stored = ["" if b is None or (isinstance(b, float) and np.isnan(b)) else str(b) for b in ref.barcodes]
    if given != stored:
        raise ValueError(f"the barcodes of {metadata} differ from those of the bundle's reference specimens: "
                         "not the bundle's training data")
    return frame.iloc[test_idx].reset_index(drop=True)


def check_reference_images(bundle: Any, frame: pd.DataFrame, images: ImageStore, n: int = 16) -> None:
    """Re-embed the photos of ``n`` reference specimens from ``images``: they must give the bundle's stored image
    embeddings (the images are those the bundle was built from)."""
    ref = bundle.reference
    if "image" not in ref.embeddings:
        return
    by_id = frame.set_index(frame["sampleid"].astype(str))
    rows = np.flatnonzero(np.asarray(ref.has_image, dtype=bool))[:n]
    predictor = bundle.predictor()
    for row in rows:
        photo = images.get(by_id.loc[str(ref.ids[row]), "image_file"])
        z = predictor.embed(image=photo).vectors["image"][0] if photo is not None else None
        if z is None or float(z @ ref.embeddings["image"][row]) < 0.999:
            raise ValueError(f"the image of reference specimen {ref.ids[row]} does not give the bundle's stored "
                             "embedding: these are not the images the bundle was built from")


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
            bundle = load_bundle(args.bundle)
            heldout = rederived_heldout(bundle, args.metadata)
            source = "the test split re-derived from the bundle's recorded split settings"
        images = open_images(args.images) if args.images else None
        if images is not None and not args.split:
            check_reference_images(bundle, read_metadata(args.metadata), images)
        try:
            policy = calibrate_bundle(args.bundle, heldout, images, target_reject=args.target, seed=args.seed,
                                      source=source)
        finally:
            if images is not None:
                images.close()
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(str(err)) from err
    print(Path(args.bundle) / "abstention.json")
    for query, stats in policy.stats.items():
        print(query, stats.get("report"))
    return 0
