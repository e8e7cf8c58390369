"""``data.dna_crop``: training barcodes cut to random partial-read windows (so 313-bp reads are in-distribution)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from train.config import DataConfig
from train.data.dataset import CROP_BP, SpecimenDataset, collate_specimens
from train.data.noise_aware import NoiseAware


def _frame(n: int = 200) -> tuple[pd.DataFrame, list[str]]:
    rng = np.random.default_rng(0)
    barcodes = ["".join(rng.choice(list("ACGT"), 658)) for _ in range(n)]
    frame = pd.DataFrame({"order": ["Diptera"] * n, "family": None, "genus": None, "species": None,
                          "barcode": barcodes, "image_file": None, "sampleid": [str(i) for i in range(n)],
                          "processid": None})
    frame["taxonomy"] = "Diptera"
    return frame, barcodes


def _batch(ds: SpecimenDataset) -> dict:
    return collate_specimens([ds[i] for i in range(len(ds))])


def test_off_leaves_every_batch_bit_identical() -> None:
    """dna_crop=0 draws nothing: the augmented and the noise-aware batches are those of a run without the key."""
    frame, _ = _frame(30)
    for kwargs in ({"dna_augment": 2.0}, {"noise": NoiseAware()}, {}):
        for epoch in (0, 3):
            plain = SpecimenDataset(frame, seed=5, **kwargs)
            off = SpecimenDataset(frame, seed=5, dna_crop=0.0, **kwargs)
            plain.set_epoch(epoch)
            off.set_epoch(epoch)
            a, b = _batch(plain), _batch(off)
            assert a.keys() == b.keys() and a["barcodes"] == b["barcodes"]
            assert all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a if k not in ("barcodes", "taxonomy"))


def test_cropped_barcodes_are_windows_of_partial_read_length_at_the_configured_rate() -> None:
    frame, barcodes = _frame()
    ds = SpecimenDataset(frame, dna_crop=0.5, seed=1)
    got = [ds[i]["barcode"] for i in range(len(barcodes))]
    cut = [i for i, (g, b) in enumerate(zip(got, barcodes)) if g != b]
    assert 70 <= len(cut) <= 130  # about half (binomial 200 x 0.5: sd 7), drawn afresh per item
    assert all(got[i] in barcodes[i] and CROP_BP[0] <= len(got[i]) <= CROP_BP[1] for i in cut)
    lengths = [len(got[i]) for i in cut]
    assert min(lengths) < 250 and max(lengths) > 350  # the whole range is drawn, not one length
    assert got == [SpecimenDataset(frame, dna_crop=0.5, seed=1)[i]["barcode"] for i in range(len(barcodes))]
    ds.set_epoch(1)
    assert [ds[i]["barcode"] for i in range(len(barcodes))] != got
    every = SpecimenDataset(frame, dna_crop=1.0, seed=1)
    assert all(CROP_BP[0] <= len(every[i]["barcode"]) <= CROP_BP[1] for i in range(len(barcodes)))


def test_crop_comes_before_the_noise_and_leaves_the_noise_draws_alone() -> None:
    """With dna_augment, an uncut item is degraded exactly as without the crop (its own stream of draws)."""
    frame, barcodes = _frame(60)
    plain = SpecimenDataset(frame, dna_augment=2.0, seed=2)
    cropped = SpecimenDataset(frame, dna_augment=2.0, dna_crop=0.5, seed=2)
    crop_only = SpecimenDataset(frame, dna_crop=0.5, seed=2)
    uncut = [i for i in range(len(barcodes)) if crop_only[i]["barcode"] == barcodes[i]]
    assert uncut and len(uncut) < len(barcodes)
    assert all(cropped[i]["barcode"] == plain[i]["barcode"] for i in uncut)
    cut = [i for i in range(len(barcodes)) if i not in uncut]
    assert all(len(cropped[i]["barcode"]) < 500 for i in cut)  # noise on a window, not a window of noise


def test_crop_share_is_checked() -> None:
    frame, _ = _frame(2)
    with pytest.raises(ValueError, match="needs a seed"):
        SpecimenDataset(frame, dna_crop=0.3)
    for bad in (1.5, -0.1, True, "half"):
        with pytest.raises(ValueError, match="dna_crop"):
            DataConfig(dna_crop=bad)
    assert DataConfig(dna_crop=0.5).dna_crop == 0.5
