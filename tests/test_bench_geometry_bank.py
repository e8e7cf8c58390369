"""bench_geometry --bank gives a saved bank its maps: a layout per space written into its reference.h5."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from conftest import load_repo_module
from hirviz.bundle.reference import Reference


def test_layout_bank_writes_a_map_per_space(tmp_path: Path, no_umap) -> None:
    bench_bank = load_repo_module("bench_bank_for_layouts", "bench/bench_bank.py")
    bench_geometry = load_repo_module("bench_geometry_bank", "bench/bench_geometry.py")
    bench_bank.build(tmp_path, 600, 16, 20, "flat", 0)
    timings = bench_geometry.layout_bank(tmp_path, fit=100)
    assert {t["space"] for t in timings} == {"image", "dna", "fused"}
    assert all(t["fitted"] == 100 and t["points"] == 600 for t in timings)  # a sample fitted, the rest placed
    reference = Reference.load(tmp_path / "reference.h5")
    assert sorted(reference.layouts) == ["dna", "fused", "image"]
    for layout in reference.layouts.values():
        assert layout.shape == (600, 2) and np.isfinite(layout).all()
        assert len(np.unique(layout.round(6), axis=0)) > 100  # placed rows are not all on the fitted ones
    assert len(reference) == 600 and reference.embeddings["image"].shape == (600, 16)
