"""bench/bench_geometry.py runs end to end on a small bank and prints its tables (no timing is asserted)."""

from __future__ import annotations

import pytest


def test_bench_geometry_lays_out_a_sampled_bank_and_builds_the_map(no_umap, capsys: pytest.CaptureFixture) -> None:
    from bench import bench_geometry

    assert bench_geometry.main(["--specimens", "3000", "--fit", "500", "--dim", "16", "--species", "300",
                                "--queries", "2", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "| layout at export (`fit_large_layout`) | 3,000 | 500 |" in out
    assert "`umap_figure`" in out and "Figure JSON" in out
