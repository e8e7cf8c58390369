"""The run directory of ``python -m train fit``: its file names, and the training split saved in it.

A run directory holds ``config.yaml``, ``taxonomy.json``, ``split.npz`` (train/validation/test indices into the
metadata, and the sample ids they were made on), ``metrics.jsonl`` and ``checkpoint.pt``. Everything that reads a run
(export, evaluation, the k-mer baseline, the studies) re-reads its metadata and must get the very rows the run trained
and held out on: :func:`check_split` is the one place that verifies it, and :func:`select_rows` picks a split's rows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from train.config import TrainConfig
from train.data import closed_set_split, load_partition, read_metadata
from train.data.clibd_split import HELDOUT, TRAINING
from train.data.split import carve_validation

logger = logging.getLogger(__name__)

CONFIG = "config.yaml"
TAXONOMY = "taxonomy.json"
SPLIT = "split.npz"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
SUBSETS = ("test", "train", "val", "all")


# ----------------------------------------------------------------------------------------------------------------
# Making and saving the split


def split_ids(frame: pd.DataFrame) -> np.ndarray:
    """The sample ids saved with a split (``""`` where a format has none), to check a re-read gives the same rows.

    A fixed-width unicode array: numpy stores it without pickling, so ``split.npz`` loads with ``allow_pickle=False``.
    """
    return np.asarray(frame["sampleid"].fillna("").astype(str).tolist(), dtype=np.str_)


@dataclass(frozen=True)
class RunSplit:
    """A run's metadata frame and its row positions: ``train`` (trained on), ``val`` (carved from training by
    ``data.val_fraction``, never trained on; empty by default) and ``test`` (held out)."""

    frame: pd.DataFrame
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def load_run_split(cfg: TrainConfig, out_dir: Path | None = None) -> RunSplit:
    """The metadata and its train/validation/test split (saved in the run dir when ``out_dir`` is given).

    ``data.split=closed``: the seeded closed-set split. ``data.split=clibd``: train = CLIBD's training records
    (``train``, ``train_key``), test = every other record but ``heldout`` (queries and keys of validation and
    test), from :func:`train.data.load_partition`. Either way ``data.val_fraction`` of the training rows then go to
    validation (:func:`train.data.split.carve_validation`), leaving the test rows as they were.
    """
    frame = read_metadata(cfg.data.metadata)
    # The partition of the whole file (as evaluation reads it), before any subsetting.
    labels = load_partition(cfg.data.metadata, cfg.data.partition, frame, cfg.data.split_seed)[0] \
        if cfg.data.split == "clibd" else None
    if cfg.data.max_specimens is not None and len(frame) > cfg.data.max_specimens:
        frame = frame.sample(n=cfg.data.max_specimens, random_state=cfg.data.split_seed).sort_index()
    rows = frame.index.to_numpy()  # read_metadata's index is the row position
    frame = frame.reset_index(drop=True)
    if labels is not None:
        labels = labels[rows]
        training = np.isin(labels, sorted(TRAINING))
        train_idx, test_idx = np.flatnonzero(training), np.flatnonzero(~training & (labels != HELDOUT))
    else:
        train_idx, test_idx = closed_set_split(frame, cfg.data.test_fraction, cfg.data.split_seed)
    train_idx, val_idx = carve_validation(frame, train_idx, cfg.data.val_fraction, cfg.data.split_seed)
    if out_dir is not None:
        np.savez(Path(out_dir) / SPLIT, train=train_idx, test=test_idx, val=val_idx, sampleid=split_ids(frame))
    return RunSplit(frame, train_idx, val_idx, test_idx)


def load_training_split(cfg: TrainConfig, out_dir: Path | None = None
                        ) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    """The metadata, its training rows (without any validation rows) and its test rows: :func:`load_run_split`."""
    split = load_run_split(cfg, out_dir)
    return split.frame, split.train, split.test


def split_settings(training: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config values that decide a split (from a training config dict, e.g. a bundle's ``training``)."""
    data = (training or {}).get("data") or {}
    settings = {k: data.get(k) for k in ("test_fraction", "split_seed", "max_specimens")}
    if data.get("val_fraction"):  # runs without a validation split (the default) compare as before it existed
        settings["val_fraction"] = data["val_fraction"]
    if data.get("split", "closed") != "closed":  # runs from before data.split existed were closed-set
        settings.update(split=data.get("split"), partition=data.get("partition"))
    return settings


# ----------------------------------------------------------------------------------------------------------------
# Reading and verifying it


@dataclass(frozen=True)
class SavedSplit:
    """A ``split.npz``: its path, train and test row indices, the sample ids (None in old files) and the validation
    rows (empty when the run had none, None in files from before validation splits)."""

    path: Path
    train: np.ndarray
    test: np.ndarray
    ids: np.ndarray | None
    val: np.ndarray | None = None

    @property
    def n_rows(self) -> int:
        """How many rows the metadata had when the split was made."""
        if self.ids is not None:
            return len(self.ids)
        val = self.val if self.val is not None else np.empty(0, np.int64)
        return int(max(self.train.max(initial=-1), self.test.max(initial=-1), val.max(initial=-1))) + 1


def split_file(run_or_npz: str | os.PathLike) -> Path:
    """``RUN_DIR/split.npz`` for a run directory, the path itself for a file."""
    path = Path(run_or_npz)
    return path / SPLIT if path.is_dir() else path


def read_split(run_or_npz: str | os.PathLike) -> SavedSplit:
    """The split saved in a run directory (or the ``split.npz`` named)."""
    npz = split_file(run_or_npz)
    if not npz.is_file():
        raise FileNotFoundError(f"no split file at {npz} (expected a run directory or its split.npz)")
    with np.load(npz, allow_pickle=False) as saved:
        missing = {"train", "test"} - set(saved.files)
        if missing:
            raise ValueError(f"{npz} lacks the arrays {sorted(missing)}")
        train_idx, test_idx = saved["train"].astype(np.int64), saved["test"].astype(np.int64)
        val_idx = saved["val"].astype(np.int64) if "val" in saved.files else None
        if "sampleid" not in saved.files:
            return SavedSplit(npz, train_idx, test_idx, None, val_idx)
        try:
            return SavedSplit(npz, train_idx, test_idx, saved["sampleid"].astype(str), val_idx)
        except ValueError:  # numpy refuses to unpickle an object array without allow_pickle
            pass
    # Older trainers could store the ids as an object array, which numpy pickles: never unpickle a file we are
    # handed. The split stays usable, checked by its length and (with the run's config) by re-splitting.
    logger.warning("%s stores its sample ids pickled (an older run): they are not read, so the metadata is checked "
                   "by its length and the re-split only", npz)
    return SavedSplit(npz, train_idx, test_idx, None, val_idx)


def check_split(saved: SavedSplit, frame: pd.DataFrame, metadata: str | os.PathLike,
                resplit: tuple[np.ndarray, ...] | None = None, cfg: TrainConfig | None = None) -> None:
    """Refuse a metadata frame that is not the one ``saved`` was made on (a wrong frame mixes train into test).

    ``resplit``: the ``(train, test)`` or ``(train, test, val)`` that re-splitting ``frame`` with the run's config
    ``cfg`` gives, which must equal the saved split. Either way train, validation and test must be disjoint, the
    frame as long as the split's, and its sample ids those saved with the split. Raises ValueError saying which
    check failed.
    """
    val = saved.val if saved.val is not None else np.empty(0, np.int64)
    if np.intersect1d(saved.train, saved.test).size:
        raise ValueError(f"{saved.path}: train and test rows overlap")
    if np.intersect1d(val, saved.train).size or np.intersect1d(val, saved.test).size:
        raise ValueError(f"{saved.path}: the validation rows overlap the train or test rows")
    if resplit is not None and not (np.array_equal(resplit[0], saved.train)
                                    and np.array_equal(resplit[1], saved.test)
                                    and (len(resplit) < 3 or np.array_equal(resplit[2], val))):
        settings = "" if cfg is None else (f" (max_specimens={cfg.data.max_specimens}, "
                                           f"split_seed={cfg.data.split_seed})")
        raise ValueError(f"re-reading {metadata} does not give the split saved in {saved.path}: the split does not "
                         f"come out of it with the run's settings{settings}; the metadata changed since training, "
                         "or it is another file")
    if len(frame) != saved.n_rows:
        raise ValueError(f"{metadata} has {len(frame)} specimens but the split in {saved.path} was made on "
                         f"{saved.n_rows}; pass the run directory (its config.yaml says how the run subset the "
                         "metadata)")
    if saved.ids is not None and not np.array_equal(split_ids(frame), saved.ids):
        raise ValueError(f"the sample ids of {metadata} differ from those saved with {saved.path}: a different file "
                         "or order")


def select_rows(
    metadata: str | os.PathLike, split: str | os.PathLike | None = None, subset: str | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows to evaluate and a description of them.

    With ``split`` (a run directory or its ``split.npz``) the split's ``subset`` rows (default ``test``) are
    chosen. Split indices refer to the metadata after the run's ``max_specimens`` subsetting, so when the run's
    ``config.yaml`` is beside the split, the run's own loader rebuilds that frame and the split must come out
    identical; either way the frame is verified against the split (:func:`check_split`). Any mismatch is an
    error: a wrong frame would quietly mix training rows into the test set.
    """
    if subset is not None and subset not in SUBSETS:
        raise ValueError(f"subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
    if split is None:
        if subset not in (None, "all"):
            raise ValueError(f"--subset {subset} needs --split RUN_DIR (or RUN_DIR/split.npz) to know the rows")
        frame = read_metadata(metadata).reset_index(drop=True)
        return frame, {"metadata": str(metadata), "format": frame.attrs.get("format"), "subset": "all",
                       "split": None}
    subset = subset or "test"
    saved = read_split(split)
    config = saved.path.parent / CONFIG
    run_config = resplit = None
    if config.is_file():
        with open(config, encoding="utf-8") as fh:
            run_config = TrainConfig.from_dict(yaml.safe_load(fh) or {})
        run_config.data.metadata = str(metadata)
        again = load_run_split(run_config)
        frame, resplit = again.frame, (again.train, again.test, again.val)
    else:
        frame = read_metadata(metadata).reset_index(drop=True)
    check_split(saved, frame, metadata, resplit, run_config)
    if subset == "val" and (saved.val is None or not len(saved.val)):
        raise ValueError(f"{saved.path} has no validation rows: the run was trained with data.val_fraction=0 (or "
                         "before validation splits existed); evaluate --subset test or retrain with a val_fraction")
    rows = {"test": saved.test, "train": saved.train, "val": saved.val, "all": np.arange(len(frame))}[subset]
    info = {"metadata": str(metadata), "format": frame.attrs.get("format"), "subset": subset, "split": str(saved.path),
            "split_rows": {"train": int(len(saved.train)), "test": int(len(saved.test)),
                           "val": 0 if saved.val is None else int(len(saved.val))}}
    if run_config is not None:
        info["split_settings"] = split_settings(run_config.to_dict())
    return frame.iloc[rows].reset_index(drop=True), info
