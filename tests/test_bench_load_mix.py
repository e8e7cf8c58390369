"""bench_load's users mix /identify and /geometry calls in the asked shares (no app started, no timing)."""

from __future__ import annotations

import pytest

from conftest import load_repo_module


@pytest.mark.parametrize("geometry", [0.0, 0.2, 0.5])
def test_load_users_draw_maps_in_the_asked_share_after_an_identify(geometry: float) -> None:
    bench_load = load_repo_module("bench_load_mix", "bench/bench_load.py")
    calls = bench_load.MixedCalls("photo.jpg", "ACGT", 0.5, geometry)
    kinds = {user: [calls.kind(user, call) for call in range(100)] for user in range(20)}
    assert all(k[0] != "geometry" for k in kinds.values())  # the map needs a specimen identified first
    flat = [kind for k in kinds.values() for kind in k]
    assert abs(flat.count("geometry") / len(flat) - geometry) <= 0.02
    identify = [kind for kind in flat if kind != "geometry"]
    assert abs(identify.count("photo") / len(identify) - 0.5) <= 0.05
