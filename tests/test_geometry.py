"""ReferenceMap: exact neighbour search per space, placement on precomputed layouts, noise paths."""

from __future__ import annotations

import os
import threading

import numpy as np
import pytest
from scipy.spatial import ConvexHull

from hirviz.bundle import Reference
from hirviz.degrade import DnaNoise
from hirviz.geometry import ReferenceMap, fit_layout
from hirviz.noise_path import noise_path
from hirviz.taxonomy import LEVELS

D = 8
N = 60
NO_IMAGE = np.arange(0, 6)  # rows without a photo


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def reference() -> Reference:
    rng = np.random.default_rng(0)
    has_image = np.ones(N, dtype=bool)
    has_image[NO_IMAGE] = False
    has_dna = np.ones(N, dtype=bool)
    image = np.where(has_image[:, None], unit(rng.normal(size=(N, D))), 0.0)
    dna = unit(rng.normal(size=(N, D)))
    fused = np.where(has_image[:, None], unit(image + dna), 0.0)
    layouts = {"image": np.where(has_image[:, None], rng.normal(size=(N, 2)), np.nan),
               "dna": rng.normal(size=(N, 2)), "fused": np.where(has_image[:, None], rng.normal(size=(N, 2)), np.nan)}
    ranks = [[f"O{i % 2}", f"F{i % 4}" if i % 3 else "", "", ""] for i in range(N)]
    return Reference(ids=[f"S{i}" for i in range(N)], ranks=ranks, labels=np.full((N, 4), -1), barcodes=[""] * N,
                     embeddings={"image": image, "dna": dna, "fused": fused}, has_image=has_image, has_dna=has_dna,
                     layouts=layouts)


@pytest.fixture(scope="module")
def refmap(reference) -> ReferenceMap:
    return ReferenceMap(reference)


def brute_force(reference: Reference, z: np.ndarray, space: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    members = np.flatnonzero(reference.has_image if space in ("image", "fused") else reference.has_dna)
    sims = reference.embeddings[space][members] @ unit(z)
    order = np.argsort(-sims, kind="stable")[:k]
    return members[order], sims[order]


def test_neighbours_equal_brute_force_and_skip_specimens_without_the_modality(reference, refmap):
    queries = np.random.default_rng(1).normal(size=(7, D)) * 3.0  # not normalised: the map normalises
    for space in ("image", "dna", "fused"):
        sims, rows = refmap.neighbours(queries, space, k=5)
        assert sims.shape == rows.shape == (7, 5)
        for q, z in enumerate(queries):
            expected_rows, expected_sims = brute_force(reference, z, space, 5)
            np.testing.assert_array_equal(rows[q], expected_rows)
            np.testing.assert_allclose(sims[q], expected_sims, atol=1e-5)
        if space != "dna":
            assert not np.isin(rows, NO_IMAGE).any()
    one_sims, one_rows = refmap.neighbours(queries[0], "dna", k=3)  # a single query gives 1-D results
    assert one_rows.shape == one_sims.shape == (3,)
    np.testing.assert_array_equal(one_rows, refmap.neighbours(queries, "dna", 3).rows[0])


def test_asking_for_more_neighbours_than_specimens_pads_with_minus_one(reference, refmap):
    sims, rows = refmap.neighbours(np.ones(D), "image", k=N)
    members = N - len(NO_IMAGE)
    assert (rows[:members] >= 0).all() and (rows[members:] == -1).all() and np.isneginf(sims[members:]).all()
    assert len(refmap.records(sims, rows)) == members


def test_bad_queries_and_spaces_are_refused(refmap):
    with pytest.raises(ValueError, match="shape"):
        refmap.neighbours(np.ones(D + 1), "dna")
    with pytest.raises(ValueError, match="non-zero"):
        refmap.neighbours(np.zeros(D), "dna")
    with pytest.raises(ValueError, match="no 'avg' embeddings"):
        refmap.neighbours(np.ones(D), "avg")
    with pytest.raises(ValueError, match="k must be"):
        refmap.neighbours(np.ones(D), "dna", k=0)


def test_records_describe_hits_like_an_identification_engine(reference, refmap):
    sims, rows = refmap.neighbours(reference.embeddings["dna"][9], "dna", k=3)
    hits = refmap.records(sims, rows)
    assert hits[0]["id"] == "S9" and hits[0]["row"] == 9 and hits[0]["similarity"] == pytest.approx(1.0, abs=1e-5)
    for hit in hits:
        assert list(hit["ranks"]) == list(LEVELS)
        assert [hit["ranks"][lvl] or "" for lvl in LEVELS] == list(reference.ranks[hit["row"]])


def test_a_reference_point_is_placed_exactly_on_its_layout_position(reference, refmap):
    for space in ("image", "dna", "fused"):
        rows = refmap.members(space)
        placed = refmap.place(reference.embeddings[space][rows], space, k=10)
        np.testing.assert_array_equal(placed, reference.layouts[space][rows])


def test_placement_lies_within_the_convex_hull_of_its_neighbours(reference, refmap):
    queries = np.random.default_rng(2).normal(size=(25, D))
    for space in ("dna", "fused"):
        placed = refmap.place(queries, space, k=6)
        _, rows = refmap.neighbours(queries, space, k=6)
        for point, nbrs in zip(placed, rows):
            hull = ConvexHull(reference.layouts[space][nbrs].astype(np.float64))
            assert (hull.equations[:, :2] @ point + hull.equations[:, 2] <= 1e-5).all()
        # closer neighbours pull harder: the point is nearer the nearest neighbour than the plain mean is
        first = reference.layouts[space][rows[:, 0]]
        mean = reference.layouts[space][rows].mean(axis=1)
        assert np.mean(np.linalg.norm(placed - first, axis=1)) < np.mean(np.linalg.norm(mean - first, axis=1))
    np.testing.assert_array_equal(refmap.place(queries, "dna"), refmap.place(queries, "dna"))  # deterministic
    np.testing.assert_allclose(refmap.place(queries[3], "dna"), refmap.place(queries, "dna")[3], atol=1e-6)


def test_layout_rows_without_a_position_are_ignored():
    rng = np.random.default_rng(3)
    emb = unit(rng.normal(size=(10, D)))
    layout = rng.normal(size=(10, 2)).astype(np.float32)
    layout[0] = np.nan  # e.g. left out of the UMAP fit
    ref = Reference(ids=[str(i) for i in range(10)], ranks=[[""] * 4] * 10, labels=np.full((10, 4), -1),
                    barcodes=[""] * 10, embeddings={"dna": emb}, has_image=np.zeros(10, bool),
                    has_dna=np.ones(10, bool), layouts={"dna": layout})
    placed = ReferenceMap(ref).place(emb[0], "dna", k=4)
    assert np.isfinite(placed).all()
    with pytest.raises(ValueError, match="no layout"):
        ReferenceMap(ref).place(emb[0], "image")


def test_indices_are_built_once_even_from_many_threads(reference):
    refmap = ReferenceMap(reference)
    built = []
    threads = [threading.Thread(target=lambda: built.append(refmap.index("dna"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(b is built[0] for b in built)
    refmap.warm_up()
    assert set(refmap._indices) == {"image", "dna", "fused"}


# ---------------------------------------------------------------------------------------------------------------
# Noise paths with a real bundle


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    from test_predict import make_tiny_bundle

    from hirviz.bundle import load_bundle

    return load_bundle(make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")).predictor()


def test_noise_path_starts_at_the_clean_specimen_and_moves_with_the_noise(predictor):
    from test_predict import specimen_barcode, specimen_image

    refmap = predictor.reference_map
    refmap.warm_up()
    image, barcode = specimen_image(30), specimen_barcode(30)
    strengths = (0.0, 1.0, 4.0, 8.0)
    for space in ("image", "dna", "fused"):
        path = noise_path(predictor, image, barcode, space, strengths=strengths)
        assert path.shape == (len(strengths), 2) and np.isfinite(path).all()
        clean = predictor.predict(image, barcode, neighbours=0).queries[space].embedding
        np.testing.assert_allclose(path[0], refmap.place(clean, space), atol=1e-5)
        kernel = round(4.0 * predictor.default_blur_kernel())
        noisy = predictor.predict(image, barcode, blur_kernel=kernel, dna_noise=DnaNoise().scaled(4.0),
                                  neighbours=0).queries[space].embedding
        np.testing.assert_allclose(path[2], refmap.place(noisy, space), atol=1e-5)
    dna_only = noise_path(predictor, barcode=barcode, space="dna", strengths=strengths)
    np.testing.assert_allclose(dna_only, noise_path(predictor, image, barcode, "dna", strengths), atol=1e-5)
    with pytest.raises(ValueError, match="needs inputs"):
        noise_path(predictor, barcode=barcode, space="fused")
    with pytest.raises(ValueError, match="strengths"):
        noise_path(predictor, image, barcode, "fused", strengths=(0.0, -1.0))


# ---------------------------------------------------------------------------------------------------------------
# Fitting a layout (umap-learn; its first call compiles for tens of seconds, so the fit itself runs on request)


def test_fit_layout_refuses_bad_input():
    with pytest.raises(ValueError, match="shape"):
        fit_layout(np.zeros(5))
    with pytest.raises(ValueError, match="at least 3"):
        fit_layout(np.zeros((10, D)))


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("HIRVIZ_SLOW_TESTS"), reason="set HIRVIZ_SLOW_TESTS=1 (UMAP compiles ~35 s)")
def test_fit_layout_is_seeded_and_skips_empty_rows():
    x = unit(np.random.default_rng(4).normal(size=(80, D)))
    x[:3] = 0
    a, b = fit_layout(x, seed=1), fit_layout(x, seed=1)
    assert a.shape == (80, 2) and np.isnan(a[:3]).all() and np.isfinite(a[3:]).all()
    np.testing.assert_array_equal(a, b)
