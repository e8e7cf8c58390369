"""The scale benchmarks (bench_eval, bench_identify_scale, bench_load) run on their smallest settings; no timing
is asserted, only that they measure what their tables say."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import load_repo_module


def test_bench_eval_times_an_image_and_a_dna_pass_of_the_demo_model(capsys: pytest.CaptureFixture) -> None:
    bench_eval = load_repo_module("bench_eval_smoke", "bench/bench_eval.py")
    rows = bench_eval.main(["--specimens", "8", "--models", "demo", "--batch-size", "4"])
    assert [r["model"] for r in rows] == ["demo"]
    assert rows[0]["n"] == 8 and rows[0]["image_wall"] > 0 and rows[0]["dna_wall"] > 0
    assert "| demo | 8 |" in capsys.readouterr().out


def test_split_gives_a_nested_call_to_the_outer_part() -> None:
    scale = load_repo_module("bench_identify_scale_smoke", "bench/bench_identify_scale.py")

    class Map:
        def neighbours(self) -> str:
            return "hits"

        def place(self) -> str:
            return self.neighbours() + " placed"

    split, refmap = scale.Split(), Map()
    split.wrap(refmap, "neighbours", "search")
    split.wrap(refmap, "place", "placement")
    split.start()
    assert refmap.place() == "hits placed"
    assert set(split.calls[-1]) == {"placement"}  # the placement's own search is not counted as search
    refmap.neighbours()
    assert set(split.calls[-1]) == {"placement", "search"}


def test_add_layouts_gives_a_small_bank_a_map_once(tmp_path: Path) -> None:
    bench_bank = load_repo_module("bench_bank_layout_smoke", "bench/bench_bank.py")
    scale = load_repo_module("bench_identify_scale_layouts", "bench/bench_identify_scale.py")
    bench_bank.build(tmp_path, 500, 16, 20, "flat", 0)
    assert scale.add_layouts(tmp_path / "reference.h5") is True
    assert scale.add_layouts(tmp_path / "reference.h5") is False  # already there: left as it is
    from hirviz.bundle.reference import Reference

    reference = Reference.load(tmp_path / "reference.h5")
    assert sorted(reference.layouts) == ["dna", "fused", "image"]
    assert all(v.shape == (500, 2) and np.isfinite(v).all() for v in reference.layouts.values())
    with h5py.File(tmp_path / "reference.h5") as h5:
        assert h5["embeddings/image"].shape == (500, 16)


@pytest.mark.parametrize("share", [0.0, 0.3, 0.5, 1.0])
def test_load_users_mix_photo_and_barcode_calls_in_the_asked_share(share: float) -> None:
    bench_load = load_repo_module("bench_load_smoke", "bench/bench_load.py")
    calls = bench_load.MixedCalls("photo.jpg", "ACGT", share)
    kinds = [calls.kind(user, call) for user in range(20) for call in range(50)]
    assert abs(kinds.count("photo") / len(kinds) - share) <= 0.02
