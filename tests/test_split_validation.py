"""carve_validation: a seeded, closed-set validation share of the training rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from train.data.split import carve_validation, closed_set_split


def _frame(n_lineages: int = 30, per: int = 10) -> pd.DataFrame:
    rows = [{"order": f"o{i % 3}", "family": f"f{i % 6}", "genus": f"g{i}", "species": f"s{i}", "taxonomy": f"t{i}"}
            for i in range(n_lineages) for _ in range(per)]
    return pd.DataFrame(rows)


def test_validation_is_a_seeded_closed_set_share_of_training():
    frame = _frame()
    train, test = closed_set_split(frame, 0.2, seed=0)
    kept, val = carve_validation(frame, train, 0.25, seed=0)
    assert np.array_equal(np.sort(np.concatenate([kept, val])), train)
    assert 0.15 < len(val) / len(train) < 0.35
    assert not np.intersect1d(val, test).size
    assert set(frame["taxonomy"].iloc[val]) <= set(frame["taxonomy"].iloc[kept])
    again = carve_validation(frame, train, 0.25, seed=0)
    other = carve_validation(frame, train, 0.25, seed=1)
    assert np.array_equal(again[1], val) and not np.array_equal(other[1], val)


def test_no_validation_by_default_and_a_bad_fraction_is_refused():
    frame = _frame()
    train = np.arange(len(frame))
    kept, val = carve_validation(frame, train, 0.0)
    assert np.array_equal(kept, train) and len(val) == 0
    with pytest.raises(ValueError, match="validation fraction"):
        carve_validation(frame, train, 1.0)
