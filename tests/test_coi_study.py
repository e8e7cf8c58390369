"""studies/coi_engine.py: the validation model's partition keeps every validation query out of its training."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "studies"))

import coi_engine  # noqa: E402

from train.data import closed_set_split, read_metadata  # noqa: E402
from train.data.clibd_split import partition_labels, read_partition  # noqa: E402
from train.rundir import split_ids  # noqa: E402


def test_the_validation_partition_trains_on_no_validation_query(shared_data, tmp_path) -> None:
    table = pd.read_csv(shared_data / "real_dna" / "barcodes.tsv", sep="\t", dtype=str, keep_default_na=False)
    barcodes = tmp_path / "barcodes.tsv"
    table.iloc[:1500].to_csv(barcodes, sep="\t", index=False)
    frame = read_metadata(barcodes).reset_index(drop=True)
    train_idx, test_idx = closed_set_split(frame, 0.2, 0)
    run = tmp_path / "run"
    run.mkdir()
    np.savez(run / "split.npz", train=train_idx, test=test_idx, sampleid=split_ids(frame))

    out = coi_engine.validation_partition(barcodes, str(run), tmp_path / "partition.tsv", 0.1, 0)
    label = partition_labels(frame, read_partition(out))
    assert set(label) == {"train", "test_seen_query", "heldout"}
    assert (label[test_idx] == "test_seen_query").all()
    train = frame.iloc[train_idx].reset_index(drop=True)
    _, val_rows = closed_set_split(train, 0.1, 0)
    held, open_queries = coi_engine.open_set_rows(train, 0)
    trained = label[train_idx] == "train"
    # no val/clean|degraded|partial query, no val/open query, no row of a taxon val/open holds out
    assert not trained[val_rows].any() and not trained[open_queries].any() and not trained[held].any()
    assert trained.sum() == len(train) - len(set(val_rows) | set(np.flatnonzero(held)))
    refs, queries = coi_engine.open_set_split(train, 0)
    assert len(refs) == int((~held).sum()) and len(queries) == len(open_queries)
