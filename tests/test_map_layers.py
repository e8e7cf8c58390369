"""The reference maps at any size: stratified samples, neighbour placement of a large layout, the density layer
and the colouring of only the taxa near the specimen."""

from __future__ import annotations

import numpy as np
import pytest

from hirviz import figures
from hirviz.layout_scale import fit_large_layout
from hirviz.map_layers import (
    HIGHLIGHT_COLOURS,
    OTHER_COLOUR,
    UNKNOWN_COLOUR,
    map_summary,
    near_taxa,
)
from hirviz.placement import interpolate, stratified_sample, taxon_keys


def test_stratified_sample_takes_every_taxon_before_a_second_of_any():
    rng = np.random.default_rng(0)
    # Zipf-like: one taxon of 5,000 rows, many with a handful, several singletons.
    strata = np.concatenate([np.full(5000, "big"), np.repeat([f"mid{i}" for i in range(20)], 10),
                             [f"rare{i}" for i in range(30)]])
    rng.shuffle(strata)
    rows = stratified_sample(strata, 100, seed=1)
    assert len(rows) == 100 and len(np.unique(rows)) == 100 and (np.diff(rows) > 0).all()
    kept = strata[rows]
    assert {f"rare{i}" for i in range(30)} <= set(kept)  # every singleton is in
    assert all((kept == f"mid{i}").sum() >= 2 for i in range(20))
    assert (kept == "big").sum() <= 4  # the common taxon is thinned, not proportional (it would get 96)
    assert np.array_equal(rows, stratified_sample(strata, 100, seed=1))
    assert not np.array_equal(rows, stratified_sample(strata, 100, seed=2))
    assert np.array_equal(stratified_sample(strata[:50], 100), np.arange(50))
    with pytest.raises(ValueError):
        stratified_sample(strata, 0)


def test_taxon_keys_take_the_deepest_name_down_to_genus():
    ranks = np.array([["O", "F", "G", "S"], ["O", "F", "", ""], ["O", "", "", ""], ["", "", "", ""],
                      ["O", "X", "", ""], ["O", "", "X", ""]])
    assert taxon_keys(ranks).tolist() == ["genus:G", "family:F", "order:O", "", "family:X", "genus:X"]
    with pytest.raises(ValueError):
        taxon_keys(ranks[:, :3])


def test_interpolate_is_convex_and_exact_on_a_neighbour():
    positions = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [np.nan, np.nan]], dtype=np.float32)
    placed = interpolate(np.array([[0.5, 0.5, 0.5, 0.1], [0.0, 0.3, 0.2, 0.1]]),
                         np.array([[0, 1, 2, 3], [1, 0, -1, 3]]), positions)
    np.testing.assert_allclose(placed[0], [2 / 3, 2 / 3], atol=1e-6)  # equal distances: the centroid
    np.testing.assert_allclose(placed[1], [2.0, 0.0])  # distance 0: exactly on that neighbour
    with pytest.raises(ValueError, match="no neighbour"):
        interpolate(np.array([[0.1]]), np.array([[3]]), positions)


def test_a_large_layout_is_fitted_on_a_sample_and_the_rest_lands_among_its_taxon(no_umap):
    # Well-separated taxa: every row placed by neighbours must land beside the fitted rows of its own taxon.
    rng = np.random.default_rng(0)
    n, d, taxa = 1200, 16, 12
    centres = np.eye(d)[:taxa] * 5.0
    labels = rng.integers(0, taxa, n)
    x = (centres[labels] + rng.normal(scale=0.3, size=(n, d))).astype(np.float16)
    x[:4] = 0  # rows without the modality
    strata = np.array([f"g{t}" for t in labels])
    layout, info = fit_large_layout(x, strata, seed=0, max_fit=300)
    assert layout.shape == (n, 2) and layout.dtype == np.float32
    assert np.isnan(layout[:4]).all() and np.isfinite(layout[4:]).all()
    assert info["points"] == n - 4 and info["fitted"] == 300
    # The stand-in layout is the first two (normalised) coordinates: taxon 0 sits near (1, 0), taxon 1 near (0, 1).
    for t in (0, 1):
        mine = layout[4:][labels[4:] == t]
        assert np.allclose(np.median(mine, axis=0), np.eye(2)[t], atol=0.15)
    # At or under the cap: one fit of every row, as a small bundle always had.
    small, info = fit_large_layout(x[:200], strata[:200], max_fit=300)
    assert info["fitted"] == 196 and np.isnan(small[:4]).all()


def _bank(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    genera = np.minimum(rng.zipf(1.5, n), 400)
    ranks = np.array([["O1", f"F{g % 9}", f"G{g}" if g % 7 else "", ""] for g in genera])
    layout = rng.normal(size=(n, 2)).astype(np.float32) + genera[:, None] / 40.0
    return layout, ranks


def test_only_the_highlighted_taxa_are_coloured_and_every_small_map_point_is_drawn():
    layout, ranks = _bank(2000)
    layout[:10] = np.nan  # left out of this space
    near = ["G2", "G3", "G999"]  # G999 is not on the map: skipped
    fig = figures.umap_figure(layout, ranks, "genus", highlight=near, query=np.zeros(2))
    refs = fig.data[:-1]
    assert sum(len(t.x) for t in refs) == 1990  # small map: all points, no density image
    assert all(t.type in ("scatter", "scattergl") for t in refs)
    coloured = [t for t in refs if t.marker.color in HIGHLIGHT_COLOURS]
    assert [t.name for t in coloured] == ["G2", "G3"]
    assert len({t.marker.color for t in coloured}) == 2
    greys = {t.name.split(" (")[0]: t for t in refs if t.marker.color in (OTHER_COLOUR, UNKNOWN_COLOUR)}
    assert set(greys) == {"other genus", "genus unknown"}
    assert len(greys["genus unknown"].x) == int((ranks[10:, 2] == "").sum())
    # The legend lists the coloured taxa first; greys are drawn under the coloured points.
    order = sorted(fig.data, key=lambda t: t.legendrank)
    assert [t.name for t in order[:2]] == ["G2", "G3"]
    assert list(fig.data).index(coloured[0]) > list(fig.data).index(greys["other genus"])
    # Without a specimen: the most frequent taxa, at most legend_taxa of them.
    plain = figures.umap_figure(layout, ranks, "genus", legend_taxa=3)
    named = [t.name for t in plain.data if t.marker.color in HIGHLIGHT_COLOURS]
    counts = {g: int((ranks[10:, 2] == g).sum()) for g in set(ranks[10:, 2]) - {""}}
    assert named == sorted(counts, key=lambda g: -counts[g])[:3]


def test_a_large_map_sends_a_density_image_and_a_few_thousand_markers(monkeypatch):
    layout, ranks = _bank(4000, seed=1)
    ids = np.array([f"S{i}" for i in range(4000)])
    fig = figures.umap_figure(layout, ranks, "genus", ids=ids, highlight=["G5"], max_markers=1000,
                              query=np.zeros(2), path=np.zeros((3, 2)))
    heat = [t for t in fig.data if t.type == "heatmap"]
    assert len(heat) == 1 and fig.data[0] is heat[0]  # drawn first, under everything
    counts = np.nan_to_num(np.expm1(np.asarray(heat[0].z, dtype=np.float64)))
    assert round(counts.sum()) == 4000  # every point is in the density
    markers = [t for t in fig.data if t.type in ("scatter", "scattergl") and t.customdata is not None
               and np.ndim(t.customdata) == 2]
    shown = sum(len(t.x) for t in markers)
    assert 1000 < shown < 4000
    # Every genus on the map appears in the sample (rare ones included), and G5 gets all its points.
    drawn_ids = np.concatenate([np.asarray(t.customdata)[:, 0] for t in markers]).astype(str)
    drawn_genera = set(ranks[np.char.lstrip(drawn_ids, "S").astype(int), 2]) - {""}
    assert drawn_genera == set(ranks[:, 2]) - {""}
    g5 = next(t for t in markers if t.name == "G5")
    assert len(g5.x) == min(int((ranks[:, 2] == "G5").sum()), 300)
    # The summary is computed once per layout array, not per request.
    assert map_summary(layout, ranks, ids, max_markers=1000) is map_summary(layout, ranks, ids, max_markers=1000)


def test_near_taxa_rank_by_count_then_nearness():
    ranks = np.array([["O", "F", g, ""] for g in ["A", "B", "B", "", "C", "C", "A"]])
    assert near_taxa(ranks, [0, 1, 2, 3, 4, 5, -1], "genus") == ["B", "C", "A"]  # A, B, C tie-break by nearness
    assert near_taxa(ranks, [6, 0, 1, 2, 4], "genus", n=2) == ["A", "B"]
    assert near_taxa(ranks, [3], "genus") == []
    assert near_taxa(ranks, [0, 1], "family") == ["F"]


def test_large_layouts_are_memory_mapped_and_small_ones_load_as_before(tmp_path):
    from hirviz.bundle import Reference
    from hirviz.index import FLAT_MAX_ROWS

    for n in (50, FLAT_MAX_ROWS):
        emb = np.zeros((n, 4), dtype=np.float32)
        emb[:, 0] = 1
        layout = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)
        ref = Reference(ids=np.arange(n).astype(str), ranks=np.full((n, 4), ""), labels=np.full((n, 4), -1),
                        barcodes=np.full(n, ""), embeddings={"dna": emb}, has_image=np.zeros(n, bool),
                        has_dna=np.ones(n, bool), layouts={"dna": layout})
        ref.save(tmp_path / f"r{n}.h5")
        loaded = Reference.load(tmp_path / f"r{n}.h5")
        np.testing.assert_array_equal(loaded.layouts["dna"], layout)
        assert isinstance(loaded.layouts["dna"].base, np.memmap) == (n >= FLAT_MAX_ROWS)


def test_warm_up_summarises_every_map_before_the_first_request():
    from hirviz.bundle import Reference
    from hirviz.geometry import ReferenceMap

    n = 40
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, 4)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    layout, ranks = _bank(n)
    ref = Reference(ids=np.arange(n).astype(str), ranks=ranks, labels=np.full((n, 4), -1), barcodes=np.full(n, ""),
                    embeddings={"dna": emb}, has_image=np.zeros(n, bool), has_dna=np.ones(n, bool),
                    layouts={"dna": layout})
    ReferenceMap(ref).warm_up()
    summary = map_summary(ref.layouts["dna"], ref.ranks, ref.ids)
    assert sorted(summary._levels) == [0, 1, 2, 3]  # taxon codes of every colour level are ready
