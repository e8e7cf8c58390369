"""``data.dna_crop``: training barcodes cut to random partial-read windows (so 313-bp reads are in-distribution)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from train.config import DataConfig
from train.data.dataset import CROP_BP, SpecimenDataset


def _frame(n: int = 40) -> tuple[pd.DataFrame, list[str]]:
    rng = np.random.default_rng(0)
    barcodes = ["".join(rng.choice(list("ACGT"), 658)) for _ in range(n)]
    frame = pd.DataFrame({"order": ["Diptera"] * n, "family": None, "genus": None, "species": None,
                          "barcode": barcodes, "image_file": None, "sampleid": [str(i) for i in range(n)],
                          "processid": None})
    frame["taxonomy"] = "Diptera"
    return frame, barcodes


def test_cropped_barcodes_are_windows_of_the_original_of_partial_read_length() -> None:
    frame, barcodes = _frame()
    ds = SpecimenDataset(frame, dna_crop=0.5, seed=1)
    got = [ds[i]["barcode"] for i in range(len(barcodes))]
    cut = [i for i, (g, b) in enumerate(zip(got, barcodes)) if g != b]
    assert 8 <= len(cut) <= 32  # about half, drawn afresh per item
    assert all(got[i] in barcodes[i] and CROP_BP[0] <= len(got[i]) <= CROP_BP[1] for i in cut)
    assert got == [SpecimenDataset(frame, dna_crop=0.5, seed=1)[i]["barcode"] for i in range(len(barcodes))]
    ds.set_epoch(1)
    assert [ds[i]["barcode"] for i in range(len(barcodes))] != got
    assert SpecimenDataset(frame, seed=1)[0]["barcode"] == barcodes[0]  # off by default


def test_crop_share_is_checked() -> None:
    frame, _ = _frame(2)
    with pytest.raises(ValueError, match="needs a seed"):
        SpecimenDataset(frame, dna_crop=0.3)
    with pytest.raises(ValueError, match="dna_crop"):
        DataConfig(dna_crop=1.5)
