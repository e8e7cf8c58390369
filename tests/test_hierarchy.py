"""Hierarchy-consistency metrics on a hand-built two-order taxonomy whose answers are known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from hirviz.hierarchy import (
    DEPTH_NAMES,
    describe_drift,
    drift_under_noise,
    lca_height,
    mistake_severity,
    sample_pairs,
    specimen_drift,
    tree_embedding_agreement,
)

# Order 0 > family 0 > genus 0 > species 0, 1; genus 1 > species 2; order 0 > family 1 > genus 2 > species 3;
# order 1 > family 2 > genus 3 > species 4.
S0, S1, S2, S3, S4 = (0, 0, 0, 0), (0, 0, 0, 1), (0, 0, 1, 2), (0, 1, 2, 3), (1, 2, 3, 4)
SPECIES = np.array([S0, S1, S2, S3, S4])
FAMILY_ONLY = (0, 0, -1, -1)
UNKNOWN = (-1, -1, -1, -1)
NAN = np.nan


def hierarchical_embeddings(labels: np.ndarray) -> np.ndarray:
    """Order, family, genus and species directions weighted 8, 4, 2, 1: closer relatives share more weight."""
    out = np.zeros((len(labels), 4 + 3 + 4 + 5))
    offsets, weights = (0, 4, 7, 11), (8.0, 4.0, 2.0, 1.0)
    for level, (offset, weight) in enumerate(zip(offsets, weights)):
        out[np.arange(len(labels)), offset + labels[:, level]] = weight
    return out


@pytest.mark.parametrize(("a", "b", "height"), [
    (S0, S0, 0.0), (S0, S1, 1.0), (S0, S2, 2.0), (S0, S3, 3.0), (S0, S4, 4.0),
    (FAMILY_ONLY, S3, 3.0),  # differ at family, where both are known: certain
    (FAMILY_ONLY, S4, 4.0),
    (FAMILY_ONLY, S0, NAN),  # agree down to family, then one stops: the LCA could be anywhere below
    (FAMILY_ONLY, FAMILY_ONLY, NAN),
    (UNKNOWN, S0, NAN),
    ((0, 0, -1, 1), S1, NAN),  # a species under an unknown genus is not compared on its own
    ((0, 0, 0, -1), (0, 0, 0, -1), NAN),
])
def test_lca_height_of_specimens(a, b, height) -> None:
    got = lca_height(np.array([a]), np.array([b]))
    np.testing.assert_array_equal(got, [height])
    np.testing.assert_array_equal(lca_height(np.array([b]), np.array([a])), [height])  # symmetric


def test_predicted_taxa_are_nodes_but_unknown_truth_stays_undecided() -> None:
    # A prediction that stops at genus 0 is that genus: against a specimen of species 0 the LCA is genus 0.
    np.testing.assert_array_equal(lca_height(np.array([S0]), np.array([(0, 0, 0, -1)]), b_is_taxon=True), [1.0])
    np.testing.assert_array_equal(lca_height(np.array([S0]), np.array([(0, -1, -1, -1)]), b_is_taxon=True), [3.0])
    # The truth's unknown ranks still make it uncertain.
    assert np.isnan(lca_height(np.array([FAMILY_ONLY]), np.array([S0]), b_is_taxon=True)).all()


def test_lca_height_broadcasts_over_ranked_predictions_and_rejects_bad_shapes() -> None:
    got = lca_height(np.array([S0, S4])[:, None, :], np.array([[S0, S1, S4], [S4, S3, S2]]))
    np.testing.assert_array_equal(got, [[0, 1, 4], [0, 4, 4]])
    # A fifth (whole-string) column is ignored.
    np.testing.assert_array_equal(lca_height(np.array([(*S0, 7)]), np.array([(*S1, 9)])), [1.0])
    with pytest.raises(ValueError, match="rank ids"):
        lca_height(np.zeros((2, 3), int), np.zeros((2, 3), int))
    with pytest.raises(ValueError, match="integer"):
        lca_height(np.full((1, 4), 0.5), np.zeros((1, 4)))
    with pytest.raises(ValueError, match="integer"):
        lca_height(np.full((1, 4), np.inf), np.zeros((1, 4)))
    with pytest.raises(ValueError, match="integer"):
        lca_height(np.array([["Diptera", "", "", ""]]), np.zeros((1, 4)))
    # Whole-number floats (e.g. read back from a table) are accepted.
    np.testing.assert_array_equal(lca_height(np.array([S0], float), np.array([S2], float)), [2.0])


def test_mistake_severity_swap_within_genus_vs_across_orders() -> None:
    truth = np.array([S0, S1, S4])
    within = np.array([S1, S0, S4])  # two congeners swapped, one right
    across = np.array([S4, S4, S0])  # every answer in the other order
    mild, bad = mistake_severity(truth, within), mistake_severity(truth, across)
    assert (mild["severity"], mild["mistakes"], mild["correct"], mild["undecided"]) == (1.0, 2, 1, 0)
    assert (bad["severity"], bad["mistakes"], bad["correct"]) == (4.0, 3, 0)
    assert mild["hdist@1"] == pytest.approx(2 / 3) and bad["hdist@1"] == 4.0


def test_mistake_severity_mixed_answers_unknown_ranks_and_hdist_at_k() -> None:
    truth = np.array([S0, S2, S3, S4, FAMILY_ONLY, FAMILY_ONLY, (0, 0, 1, -1), UNKNOWN])
    ranked = np.array([
        [S0, S1, S4],               # right; heights 0 1 4
        [S0, S2, S3],               # same family; heights 2 0 3
        [S4, S3, S3],               # other order; heights 4 0 0
        [S4, S0, S0],               # right; heights 0 4 4
        [S3, S0, S0],               # family-only truth, other family: a certain mistake of height 3
        [S1, S4, S4],               # agrees with everything the truth knows: undecided
        [(0, 0, 1, -1), S0, S0],    # exactly the truth's lineage (to genus): correct
        [S0, S0, S0],               # truth with no known rank: left out
    ])
    got = mistake_severity(truth, ranked, ks=(1, 2, 5))
    assert got["specimens"] == 7 and got["correct"] == 3 and got["mistakes"] == 3 and got["undecided"] == 1
    assert got["severity"] == pytest.approx((2 + 4 + 3) / 3)
    # hdist over the four specimens identified to species; k=5 uses the three predictions given.
    assert got["hdist_specimens"] == 4
    assert got["hdist@1"] == pytest.approx((0 + 2 + 4 + 0) / 4)
    assert got["hdist@2"] == pytest.approx((0 + 1 + 2 + 0 + 4 + 0 + 0 + 4) / 8)
    assert got["hdist@5"] == pytest.approx((5 + 5 + 4 + 8) / 12)
    # Top-1 only, as [N, 4].
    assert mistake_severity(truth, ranked[:, 0])["severity"] == got["severity"]


def test_mistake_severity_without_mistakes_and_bad_input() -> None:
    got = mistake_severity(np.array([S0, S3]), np.array([S0, S3]))
    assert got["severity"] is None and got["mistakes"] == 0 and got["hdist@1"] == 0.0
    with pytest.raises(ValueError, match="must match"):
        mistake_severity(np.array([S0, S3]), np.array([[S0]]))
    with pytest.raises(ValueError, match="ks"):
        mistake_severity(np.array([S0]), np.array([S0]), ks=(0,))


def test_hierarchical_embeddings_agree_with_the_tree_random_ones_do_not() -> None:
    rng = np.random.default_rng(1)
    labels = SPECIES[rng.integers(0, 5, size=200)]
    tree = tree_embedding_agreement(hierarchical_embeddings(labels), labels)
    assert tree["pairs"] == 200 * 199 // 2  # fewer pairs than n_pairs: every pair once
    assert tree["rho"] == pytest.approx(1.0)
    dist = tree["mean_distance_by_height"]
    # Cosine distance 1 - shared weight / 85 for weights 8, 4, 2, 1.
    for h, shared in zip("01234", (85, 84, 80, 64, 0)):
        assert dist[h] == pytest.approx(1 - shared / 85)
    noise = tree_embedding_agreement(rng.normal(size=(200, 16)), labels)
    assert abs(noise["rho"]) < 0.05
    # Scrambling which specimen has which embedding destroys the agreement.
    scrambled = tree_embedding_agreement(hierarchical_embeddings(labels)[rng.permutation(200)], labels)
    assert abs(scrambled["rho"]) < 0.1


def test_agreement_pairs_are_fixed_and_undecided_pairs_left_out() -> None:
    i1, j1 = sample_pairs(1000, 500, seed=3)
    i2, j2 = sample_pairs(1000, 500, seed=3)
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(j1, j2)
    assert len(i1) == 500 and (i1 != j1).all()
    assert not np.array_equal(sample_pairs(1000, 500, seed=4)[0], i1)
    labels = np.array([S0, S1, FAMILY_ONLY, S4])
    got = tree_embedding_agreement(hierarchical_embeddings(np.array([S0, S1, S0, S4])), labels)
    # Of the 6 pairs, (S0, family-only) and (S1, family-only) have no certain height.
    assert got["pairs"] == 4
    with pytest.raises(ValueError, match="non-zero"):
        tree_embedding_agreement(np.zeros((4, 3)), labels)


@pytest.fixture
def bank() -> tuple[np.ndarray, np.ndarray]:
    return hierarchical_embeddings(SPECIES), SPECIES


def test_drift_to_a_congener_keeps_the_genus_zero_noise_keeps_the_species(bank) -> None:
    refs, ref_labels = bank
    labels = np.array([S0, S0, S0, FAMILY_ONLY])
    clean = refs[[0, 0, 0, 0]]
    degraded = refs[[0, 1, 4, 1]]  # unchanged, moved onto a congener, onto the other order, onto a congener
    got = drift_under_noise(clean, degraded, refs, ref_labels, labels)
    assert got["specimens"] == 4
    assert got["mean_depth"] == pytest.approx((4 + 3 + 0 + 2) / 4)
    assert got["distribution"] == {"none": 0.25, "order": 0.0, "family": 0.25, "genus": 0.25, "species": 0.25}
    moved = [0.0, 1 - 84 / 85, 1.0, 1 - 84 / 85]
    assert got["mean_displacement"] == pytest.approx(np.mean(moved))
    still = drift_under_noise(clean[:1], clean[:1], refs, ref_labels, labels[:1])
    assert still["distribution"]["species"] == 1.0 and still["mean_displacement"] == pytest.approx(0.0, abs=1e-12)
    assert tuple(DEPTH_NAMES) == ("none", "order", "family", "genus", "species")


def test_drift_skips_the_specimens_own_reference_row(bank) -> None:
    refs, ref_labels = bank
    # Species 0 itself is in the bank; skipping its row, its nearest other reference is its congener.
    got = drift_under_noise(refs[:1], refs[:1], refs, ref_labels, ref_labels[:1], self_rows=np.array([0]))
    assert got["distribution"]["genus"] == 1.0


def test_specimen_drift_and_its_sentence(bank) -> None:
    refs, ref_labels = bank
    drift = specimen_drift(refs[0], refs[1], refs, ref_labels, np.array(S0))
    assert (drift.rank, drift.depth, drift.reference_row, drift.basis) == ("genus", 3, 1, "label")
    assert drift.displacement == pytest.approx(1 - 84 / 85)
    text = describe_drift(drift)
    assert "still shares your specimen's genus, but not the species" in text and "0.012" in text
    # Without a label the noisy input is compared with where its clean version was.
    same = specimen_drift(refs[3], refs[3] + 0.01, refs, ref_labels)
    assert (same.rank, same.basis) == ("species", "clean")
    assert "same species" in describe_drift(same)
    far = specimen_drift(refs[0], refs[4], refs, ref_labels, np.array(S0))
    assert far.rank is None and "not even of the same order" in describe_drift(far)
    # A nearest reference identified only to family cannot be compared below it.
    partial = ref_labels.copy()
    partial[1] = FAMILY_ONLY
    unsure = specimen_drift(refs[0], refs[1], refs, partial, np.array(S0))
    assert unsure.rank == "family" and "whether the genus agrees is unknown" in describe_drift(unsure)
    vague = specimen_drift(refs[0], refs[1], refs, ref_labels, np.array(FAMILY_ONLY))
    assert vague.rank == "family" and "deepest rank known" in describe_drift(vague)
    with pytest.raises(ValueError, match="one specimen"):
        specimen_drift(refs[:2], refs[:2], refs, ref_labels)
