"""The k-mer nearest-neighbour baseline: profiles, identification and scoring in train.evaluate's schema."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from hirviz.degrade import DnaNoise
from hirviz.taxonomy import LEVELS, taxonomy_string
from train.data import closed_set_split, read_metadata
from train.evaluate import EVAL_LEVELS, classification_scores
from train.kmer_baseline import KmerNearestNeighbour, KmerProfiler, evaluate_kmer_baseline

BASES = np.array(list("ACGT"))


def random_seq(rng: np.random.Generator, length: int) -> str:
    return "".join(rng.choice(BASES, length))


def mutate(rng: np.random.Generator, seq: str, rate: float) -> str:
    """Substitute each base with probability ``rate`` (by a different base)."""
    arr = np.array(list(seq))
    hit = rng.random(len(arr)) < rate
    for i in np.flatnonzero(hit):
        arr[i] = rng.choice([b for b in BASES if b != arr[i]])
    return "".join(arr)


def frame(rows: list[tuple]) -> pd.DataFrame:
    """A normalised-metadata-like frame from (order, family, genus, species, barcode) rows."""
    df = pd.DataFrame(rows, columns=[*LEVELS, "barcode"])
    df["taxonomy"] = [taxonomy_string(r) for r in df[list(LEVELS)].itertuples(index=False, name=None)]
    return df


@pytest.fixture(scope="module")
def hierarchy() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Reference and query frames: 2 orders x 2 families x 2 genera x 3 species of 400 bp barcodes.

    Lineages are nested (species 3% from their genus ancestor, genera 10% from their family, ...), so the
    k-mer space carries the hierarchy the way real COI barcodes do; each species has 3 references and 2 queries,
    all mildly (1%) mutated copies of the species' sequence.
    """
    rng = np.random.default_rng(0)
    refs, queries = [], []
    for o in range(2):
        o_seq = random_seq(rng, 400)
        for f in range(2):
            f_seq = mutate(rng, o_seq, 0.2)
            for g in range(2):
                g_seq = mutate(rng, f_seq, 0.1)
                for s in range(3):
                    s_seq = mutate(rng, g_seq, 0.03)
                    ranks = (f"O{o}", f"F{o}{f}", f"G{o}{f}{g}", f"G{o}{f}{g} s{s}")
                    refs += [(*ranks, mutate(rng, s_seq, 0.01)) for _ in range(3)]
                    queries += [(*ranks, mutate(rng, s_seq, 0.01)) for _ in range(2)]
    return frame(refs), frame(queries)


# ---------------------------------------------------------------------------------------------------------
# Profiles


def test_profile_counts_every_kmer_and_skips_those_with_n():
    profiler = KmerProfiler(k=2)
    counts = profiler.counts(["ACGTNAC"])[0]
    # AC, CG, GT, AC; "TN" and "NA" cover the N. Index = bases read in base 4: AC=1, CG=6, GT=11.
    assert counts.sum() == 4
    assert {i: counts[i] for i in np.flatnonzero(counts)} == {1: 2, 6: 1, 11: 1}


def test_profile_matches_a_plain_count_for_k6():
    rng = np.random.default_rng(1)
    seqs = [random_seq(rng, n) for n in (6, 50, 333)] + ["ACGTAC" * 5 + "N" + "TTTTTTT"]
    counts = KmerProfiler().counts(seqs)
    assert counts.shape == (4, 4 ** 6)
    code = {b: i for i, b in enumerate("ACGT")}
    for row, seq in zip(counts, seqs):
        expected = Counter(seq[i:i + 6] for i in range(len(seq) - 5) if "N" not in seq[i:i + 6])
        got = {i: row[i] for i in np.flatnonzero(row)}
        assert got == {sum(code[b] * 4 ** (5 - j) for j, b in enumerate(kmer)): n for kmer, n in expected.items()}


def test_profiles_are_unit_norm_float32_and_clean_up_like_parse_barcode():
    profiler = KmerProfiler(k=3)
    profiles = profiler(["acg-tac\nGT", "ACGTACGT", "NNNN", "AC", None, ""])
    assert profiles.dtype == np.float32 and profiles.shape == (6, 64)
    # Case, gaps and line breaks do not change a barcode.
    np.testing.assert_array_equal(profiles[0], profiles[1])
    np.testing.assert_allclose(np.linalg.norm(profiles[:2], axis=1), 1.0, rtol=1e-6)
    # No valid k-mer (all N, shorter than k, missing, empty): the zero vector rather than NaN.
    np.testing.assert_array_equal(profiles[2:], 0.0)


def test_profiles_do_not_mix_neighbouring_barcodes():
    # Were the sequences read as one string, "...AC" + "GT..." would count ACG and CGT.
    counts = KmerProfiler(k=3).counts(["TTAC", "GTTT"])
    assert counts.sum() == 4 and counts[:, 0b000110].sum() == 0 and counts[:, 0b011011].sum() == 0


def test_profiler_rejects_bad_input():
    with pytest.raises(ValueError, match="not DNA"):
        KmerProfiler()(["ACGTQZ"])
    with pytest.raises(TypeError, match="list of barcodes"):
        KmerProfiler()("ACGT")
    with pytest.raises(ValueError, match="k must be"):
        KmerProfiler(0)


# ---------------------------------------------------------------------------------------------------------
# Nearest neighbour


def test_nearest_neighbour_recovers_the_label_of_a_mutated_copy(hierarchy):
    refs, queries = hierarchy
    model = KmerNearestNeighbour().fit(refs["barcode"].tolist(), refs[list(LEVELS)].to_numpy(dtype=object))
    predicted = model.predict(queries["barcode"].tolist(), k=5)
    assert predicted.shape == (len(queries), 5, 4)
    np.testing.assert_array_equal(predicted[:, 0], queries[list(LEVELS)].to_numpy(dtype=object))


def test_nearest_neighbour_skips_references_without_kmers_and_checks_shapes():
    model = KmerNearestNeighbour(k=3).fit(["NNNN", "ACGTACGTAA"], [["o", "f", "g", "a"], ["o", "f", "g", "b"]])
    assert model.index.ntotal == 1 and model.predict(["ACGTACG"], k=3).shape == (1, 1, 4)
    with pytest.raises(ValueError, match="ranks must be"):
        KmerNearestNeighbour().fit(["ACGTACGT"], [["o", "f", "g"]])
    with pytest.raises(ValueError, match="valid 6-mer"):
        KmerNearestNeighbour().fit(["ACG"], [["o", "f", "g", "s"]])
    with pytest.raises(RuntimeError, match="fit"):
        KmerNearestNeighbour().predict(["ACGTACGT"])


# ---------------------------------------------------------------------------------------------------------
# Scoring


def test_scores_follow_train_evaluate_semantics_and_schema():
    refs = frame([("O", "F", "G", "G a", "AAAAAAACCCCCCC"), ("O", "F", "G", "G b", "GGGGGGGTTTTTTT")])
    queries = frame([
        ("O", "F", "G", "G a", "AAAAAAACCCCCC"),  # right species
        ("O", "F", "G", "G b", "AAAAAAACCCCCC"),  # wrong species at top 1, right at top 2
        ("O", "F", "G", None, "GGGGGGGTTTTTT"),  # unknown species: not in the species denominator
        ("O", "F", "G", "G a", None),  # no barcode: not scored at all
    ])
    scores, n = evaluate_kmer_baseline(refs, queries)
    assert n == {"order": 3, "family": 3, "genus": 3, "species": 2, "global": 3}
    assert scores["species"] == {"top1": 50.0, "top5": 100.0}
    assert scores["genus"] == {"top1": 100.0, "top5": 100.0}
    # "O F G" is no reference's taxonomy string: the third query never matches globally.
    assert scores["global"]["top1"] == pytest.approx(100 / 3, abs=1e-3)
    assert scores["global"]["top5"] == pytest.approx(200 / 3, abs=1e-3)

    truth = np.array([[0, 0, 0, 0, 0]])
    reference, _ = classification_scores(np.eye(2, dtype=np.float32)[:1], truth, np.eye(2, dtype=np.float32),
                                         np.array([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]))
    assert list(scores) == list(reference) == list(EVAL_LEVELS)
    assert all(set(scores[level]) == set(reference[level]) for level in EVAL_LEVELS)


def test_strong_noise_lowers_accuracy(hierarchy):
    refs, queries = hierarchy
    clean, _ = evaluate_kmer_baseline(refs, queries)
    strong = DnaNoise().scaled(20)  # 20% substitutions, 6% N, 4% indels each, 100% N run cap, half cut off
    noisy, _ = evaluate_kmer_baseline(refs, queries, noise=strong, seed=0)
    assert clean["species"]["top1"] == 100.0
    assert noisy["species"]["top1"] < clean["species"]["top1"]
    # Mild noise on barcodes 3% apart from their sister species still finds the genus.
    mild, _ = evaluate_kmer_baseline(refs, queries, noise=DnaNoise(), seed=0)
    assert mild["genus"]["top1"] == 100.0


def test_noisy_queries_are_reproducible(hierarchy):
    refs, queries = hierarchy
    strong = DnaNoise().scaled(15)
    first, _ = evaluate_kmer_baseline(refs, queries, noise=strong, seed=3)
    assert first == evaluate_kmer_baseline(refs, queries, noise=strong, seed=3)[0]


def test_real_barcodes_are_identified(shared_data):
    data = read_metadata(shared_data / "real_dna" / "barcodes.tsv", nrows=600).reset_index(drop=True)
    train_idx, test_idx = closed_set_split(data, 0.2, 0)
    scores, n = evaluate_kmer_baseline(data.iloc[train_idx], data.iloc[test_idx])
    assert n["order"] > 0
    for level in EVAL_LEVELS:
        if scores[level]["top1"] is not None:
            assert 0.0 <= scores[level]["top1"] <= scores[level]["top5"] <= 100.0
    # Same-species COI barcodes are far closer than sister species: a closed-set split is nearly solved.
    assert scores["order"]["top1"] > 90.0


def test_cli_scores_a_split_in_the_evaluate_schema(hierarchy, tmp_path):
    import argparse
    import json

    from train.kmer_baseline import add_arguments, run

    refs, queries = hierarchy
    both = pd.concat([refs, queries], ignore_index=True)
    table = both.rename(columns={"barcode": "dna_barcode"}).drop(columns="taxonomy")
    table.insert(0, "processid", [f"P{i}" for i in range(len(table))])
    table.to_csv(tmp_path / "barcodes.tsv", sep="\t", index=False)
    np.savez(tmp_path / "split.npz", train=np.arange(len(refs)), test=np.arange(len(refs), len(both)))

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--metadata", str(tmp_path / "barcodes.tsv"), "--split", str(tmp_path),
                              "--out", str(tmp_path / "out.json")])
    assert run(args) == 0
    results = json.loads((tmp_path / "out.json").read_text())
    assert set(results) == {"clean", "noisy_dna", "_meta"}
    assert list(results["clean"]["dna"]) == list(EVAL_LEVELS)
    assert results["clean"]["dna"]["species"]["top1"] == 100.0
    assert results["_meta"]["n_labelled"]["dna"]["species"] == len(queries)


def test_cli_queries_another_file_and_sweeps_noise(hierarchy, tmp_path):
    import argparse
    import json

    from train.evaluate import SWEEP_DNA_SCALES
    from train.kmer_baseline import add_arguments, run

    refs, queries = hierarchy
    for name, df in (("refs.tsv", refs), ("queries.tsv", queries)):
        table = df.rename(columns={"barcode": "dna_barcode"}).drop(columns="taxonomy")
        table.insert(0, "processid", [f"{name[0]}{i}" for i in range(len(table))])
        table.to_csv(tmp_path / name, sep="\t", index=False)
    np.savez(tmp_path / "split.npz", train=np.arange(len(refs) - 6), test=np.arange(len(refs) - 6, len(refs)))

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--metadata", str(tmp_path / "refs.tsv"), "--split", str(tmp_path), "--queries",
                              str(tmp_path / "queries.tsv"), "--sweep", "--out", str(tmp_path / "out.json")])
    assert run(args) == 0
    results = json.loads((tmp_path / "out.json").read_text())
    assert results["_meta"]["specimens"] == len(queries)  # every row of the query file, not the split's test rows
    assert results["clean"]["dna"]["order"]["top1"] == 100.0
    sweep = [r for r in results["sweep"] if r["level"] == "global"]
    assert [r["strength"] for r in sweep] == list(SWEEP_DNA_SCALES)
    assert sweep[0]["top1"] == results["clean"]["dna"]["global"]["top1"]
    assert sweep[-1]["top1"] < sweep[0]["top1"]  # x8 the paper's noise costs accuracy
