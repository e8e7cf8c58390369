"""CLIBD's open-set partition (METHOD.md section 8): seen and unseen species, queries and keys.

Every record gets one label of :data:`PARTITIONS`:

====================  ==========================================================================================
``train``             training only: records without a species, and most records of the seen species
``train_key``         training *and* a key of a seen species (BIOSCAN-5M's ``train``: its seen keys are trained on)
``seen_key``          a key of a seen species, held out of training (shared by validation and test)
``val_seen_query``    a validation query of a seen species (``test_seen_query`` likewise)
``val_unseen_query``  a validation query of an unseen species (``test_unseen_query`` likewise)
``val_unseen_key``    a key of a validation-unseen species (``test_unseen_key`` likewise)
``unseen_key``        a key of an unseen species with no query (only from BIOSCAN-5M's ``key_unseen``)
``heldout``           in neither training nor evaluation (a species with one record; BIOSCAN-5M's ``other_heldout``)
====================  ==========================================================================================

All keys together are one reference database, so an unseen species is retrieved from its own keys; validation and
test have different unseen species, and no unseen species is in training.

:func:`clibd_partition` computes the partition as CLIBD's split script does (REFERENCE_CODE.md 7.2): species with at
least ``min_records`` records are split seen/unseen (``unseen_fraction`` of them unseen); a seen species' records
go 70/10/10/10 to train / val query / test query / seen key; unseen species, and species with 2 to
``min_records - 1`` records, go whole to validation or test (half each) and are split half queries, half keys.
METHOD.md says seen species have ">= 9 records", the default here; the authors' script calls species with fewer
than 10 the tail, i.e. ``min_records=10``.

For the real releases: :func:`bioscan5m_partition` maps BIOSCAN-5M's ``split`` column, :func:`bioscan1m_partition`
reads the authors' ``CLIBD_partitioning`` files; :func:`load_partition` picks the right source for a metadata file.
A partition is stored as a TSV of ``sampleid, partition`` (:func:`write_partition`, :func:`read_partition`), keyed
by :func:`specimen_ids` (sample id, else process id).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from train.data.readers import read_metadata, specimen_ids

logger = logging.getLogger(__name__)

TRAIN, TRAIN_KEY, SEEN_KEY, HELDOUT, UNSEEN_KEY = "train", "train_key", "seen_key", "heldout", "unseen_key"
EVAL_SPLITS: tuple[str, ...] = ("val", "test")
PARTITIONS: tuple[str, ...] = (
    TRAIN, TRAIN_KEY, SEEN_KEY, "val_seen_query", "test_seen_query", "val_unseen_query", "val_unseen_key",
    "test_unseen_query", "test_unseen_key", UNSEEN_KEY, HELDOUT,
)
TRAINING: frozenset[str] = frozenset({TRAIN, TRAIN_KEY})
KEYS: frozenset[str] = frozenset({TRAIN_KEY, SEEN_KEY, "val_unseen_key", "test_unseen_key", UNSEEN_KEY})
SIDE_FILE = "clibd_split.tsv"  # written by `python -m train synth` beside metadata.tsv
DEFAULT_MIN_RECORDS = 9
# BIOSCAN-5M's split column -> our label (key_unseen is resolved per species, see bioscan5m_partition).
_BIOSCAN5M = {"pretrain": TRAIN, "train": TRAIN_KEY, "val": "val_seen_query", "test": "test_seen_query",
              "val_unseen": "val_unseen_query", "test_unseen": "test_unseen_query", "other_heldout": HELDOUT}
# The authors' BIOSCAN-1M partition files (CLIBD_partitioning/<name>.txt, one sampleid a line) -> our label.
_BIOSCAN1M = {"no_split": TRAIN, "train_seen": TRAIN, "seen_keys": SEEN_KEY, "single_species": HELDOUT,
              "val_seen": "val_seen_query", "test_seen": "test_seen_query", "val_unseen": "val_unseen_query",
              "test_unseen": "test_unseen_query", "val_unseen_keys": "val_unseen_key",
              "test_unseen_keys": "test_unseen_key"}
BIOSCAN1M_DIR = "CLIBD_partitioning"


def query_label(split: str, seen: bool) -> str:
    """``val_seen_query``, ``test_unseen_query``, ... (``split`` in :data:`EVAL_SPLITS`)."""
    return f"{split}_{'seen' if seen else 'unseen'}_query"


def clibd_partition(frame: pd.DataFrame, seed: int = 0, min_records: int = DEFAULT_MIN_RECORDS,
                    unseen_fraction: float = 0.2) -> np.ndarray:
    """CLIBD's partition of a normalised metadata frame: one label of :data:`PARTITIONS` per row (object array).

    See the module docstring for the rules. Seeded: the same frame and seed give the same labels. Species are
    drawn in sorted-name order, so records without a species (and where they sit) do not change the others' labels.
    """
    if min_records < 4:
        raise ValueError(f"min_records must be at least 4 (a seen species needs train, two queries and a key), "
                         f"got {min_records}")
    if not 0.0 <= unseen_fraction <= 1.0:
        raise ValueError(f"unseen_fraction must be in [0, 1], got {unseen_fraction}")
    labels = np.full(len(frame), TRAIN, dtype=object)
    species = frame["species"].to_numpy(dtype=object)
    named = pd.notna(species)
    if not named.any():
        return labels
    rng = np.random.default_rng(seed)
    names, codes, sizes = np.unique(species[named].astype(str), return_inverse=True, return_counts=True)
    rows_of = np.split(np.flatnonzero(named)[np.argsort(codes, kind="stable")], np.cumsum(sizes)[:-1])

    big = np.flatnonzero(sizes >= min_records)
    n_unseen = int(round(len(big) * unseen_fraction))
    unseen_big = set(rng.permutation(big)[:n_unseen].tolist())
    unseen = np.array(sorted(unseen_big | set(np.flatnonzero((sizes >= 2) & (sizes < min_records)).tolist())),
                      dtype=np.int64)
    for s in big:
        if s in unseen_big:
            continue
        rows = rng.permutation(rows_of[s])
        n_small = max(1, int(0.1 * len(rows)))  # 70/10/10/10, each held-out part at least one record
        labels[rows[:n_small]] = "val_seen_query"
        labels[rows[n_small:2 * n_small]] = "test_seen_query"
        labels[rows[2 * n_small:3 * n_small]] = SEEN_KEY
    order = rng.permutation(unseen)
    for i, s in enumerate(order):
        split = "val" if i < (len(order) + 1) // 2 else "test"
        rows = rng.permutation(rows_of[s])
        half = len(rows) // 2
        labels[rows[:half]] = f"{split}_unseen_query"
        labels[rows[half:]] = f"{split}_unseen_key"
    labels[np.concatenate([rows_of[s] for s in np.flatnonzero(sizes == 1)] or [np.empty(0, np.int64)])] = HELDOUT
    if len(order) < 2:
        logger.warning("only %d unseen species (of %d named): validation or test has none", len(order), len(names))
    return labels


# ----------------------------------------------------------------------------------------------------------------
# Files


def write_partition(path: str | os.PathLike, frame: pd.DataFrame, labels: np.ndarray) -> Path:
    """Write ``sampleid<TAB>partition`` rows (ids from :func:`specimen_ids`); returns the path."""
    ids = specimen_ids(frame)
    if pd.isna(ids).any():
        raise ValueError("every record needs a sample or process id to be written to a partition file")
    path = Path(path)
    pd.DataFrame({"sampleid": ids, "partition": labels}).to_csv(path, sep="\t", index=False)
    return path


def read_partition(path: str | os.PathLike) -> pd.Series:
    """A partition file as a Series ``sampleid -> label``; unknown labels or repeated ids are an error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"partition file not found: {path}")
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if not {"sampleid", "partition"} <= set(table.columns):
        raise ValueError(f"{path} must have the columns sampleid and partition, it has {list(table.columns)}")
    bad = sorted(set(table["partition"]) - set(PARTITIONS))
    if bad:
        raise ValueError(f"{path}: unknown partition labels {bad[:5]}; valid: {', '.join(PARTITIONS)}")
    if table["sampleid"].duplicated().any():
        raise ValueError(f"{path}: repeated sample ids, e.g. {table['sampleid'][table['sampleid'].duplicated()].iloc[0]}")
    return pd.Series(table["partition"].to_numpy(dtype=object), index=table["sampleid"].to_numpy(dtype=object))


def partition_labels(frame: pd.DataFrame, partition: pd.Series, source: str = "the partition") -> np.ndarray:
    """The label of each row of ``frame`` (by :func:`specimen_ids`); a row missing from ``partition`` is an error."""
    labels = pd.Series(specimen_ids(frame)).map(partition).to_numpy(dtype=object)
    missing = pd.isna(labels)
    if missing.any():
        example = specimen_ids(frame)[np.flatnonzero(missing)[0]]
        raise ValueError(f"{int(missing.sum())} of {len(frame)} records are not in {source} (e.g. {example!r}): "
                         "it was made for another metadata file")
    return labels


def bioscan5m_partition(metadata: str | os.PathLike) -> pd.Series:
    """BIOSCAN-5M's own ``split`` column as a partition (``sampleid -> label``).

    ``pretrain`` -> train, ``train`` -> train_key (5M trains on its seen keys), ``val``/``test`` -> seen queries,
    ``val_unseen``/``test_unseen`` -> unseen queries, ``other_heldout`` -> heldout; a ``key_unseen`` record is a
    key of validation or test by its species' queries (``unseen_key`` if its species has none).
    """
    path = Path(metadata)
    sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    raw = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False,
                      usecols=lambda c: c.strip() in ("sampleid", "processid", "species", "split"))
    raw.columns = [c.strip() for c in raw.columns]
    if "split" not in raw:
        raise ValueError(f"{path} has no split column: not a BIOSCAN-5M metadata file")
    split = raw["split"].str.strip()
    bad = sorted(set(split) - set(_BIOSCAN5M) - {"key_unseen"})
    if bad:
        raise ValueError(f"{path}: unknown split values {bad[:5]}; BIOSCAN-5M has "
                         f"{', '.join([*_BIOSCAN5M, 'key_unseen'])}")
    labels = split.map(_BIOSCAN5M).to_numpy(dtype=object)
    species = raw["species"].str.strip() if "species" in raw else pd.Series([""] * len(raw))
    keys = (split == "key_unseen").to_numpy()
    for name in EVAL_SPLITS:
        queried = set(species[split == f"{name}_unseen"])
        labels[keys & species.isin(queried).to_numpy()] = f"{name}_unseen_key"
    labels[keys & pd.isna(labels)] = UNSEEN_KEY
    ids = raw["sampleid"].where(raw["sampleid"].str.strip() != "", raw.get("processid")) if "sampleid" in raw \
        else raw["processid"]
    return pd.Series(labels, index=ids.str.strip().to_numpy(dtype=object))


def bioscan1m_partition(folder: str | os.PathLike) -> pd.Series:
    """The authors' BIOSCAN-1M partition files (``CLIBD_partitioning/*.txt``, one sampleid a line) as a partition."""
    folder = Path(folder)
    parts = []
    for name, label in _BIOSCAN1M.items():
        file = folder / f"{name}.txt"
        if not file.is_file():
            raise FileNotFoundError(f"{folder} lacks {file.name}; it needs {', '.join(f'{n}.txt' for n in _BIOSCAN1M)}")
        ids = pd.read_csv(file, header=None, names=["sampleid"], dtype=str)["sampleid"].str.strip()
        parts.append(pd.Series(label, index=ids.to_numpy(dtype=object), dtype=object))
    out = pd.concat(parts)
    if out.index.duplicated().any():
        raise ValueError(f"{folder}: a sample id is in two partition files, e.g. {out.index[out.index.duplicated()][0]}")
    return out


def load_partition(metadata: str | os.PathLike, partition: str | os.PathLike | None = None,
                   frame: pd.DataFrame | None = None, seed: int = 0) -> tuple[np.ndarray, str]:
    """The CLIBD label of each record of ``metadata`` (in ``frame``'s rows, when given) and where it came from.

    Sources, first that applies: the ``partition`` file named; :data:`SIDE_FILE` beside the metadata; a BIOSCAN-5M
    file's ``split`` column; the authors' ``CLIBD_partitioning`` folder beside a BIOSCAN-1M file; else the
    partition is computed with :func:`clibd_partition` (``seed``) and a warning says so.
    """
    metadata = Path(metadata)
    frame = read_metadata(metadata).reset_index(drop=True) if frame is None else frame
    side = metadata.parent / SIDE_FILE
    if partition is not None or side.is_file():
        path = Path(partition) if partition is not None else side
        return partition_labels(frame, read_partition(path), str(path)), str(path)
    if frame.attrs.get("format") == "bioscan5m":
        return partition_labels(frame, bioscan5m_partition(metadata), f"{metadata}'s split column"), \
            f"{metadata.name}: BIOSCAN-5M split column"
    folder = metadata.parent / BIOSCAN1M_DIR
    if frame.attrs.get("format") == "bioscan1m" and folder.is_dir():
        return partition_labels(frame, bioscan1m_partition(folder), str(folder)), str(folder)
    logger.warning("no partition file for %s: computing CLIBD's partition (seed %d, min_records %d)",
                   metadata, seed, DEFAULT_MIN_RECORDS)
    return clibd_partition(frame, seed=seed), f"computed (seed {seed}, min_records {DEFAULT_MIN_RECORDS})"
