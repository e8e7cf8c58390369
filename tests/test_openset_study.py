"""The open-set half of the studies: seen / unseen species scored apart, the k-mer baseline on CLIBD's keys, the
HiR lambda picked on validation scores, and reports that state the answers with the measured numbers."""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from studies import openset
from studies.real_barcodes import LAMBDAS, choose_lambda
from studies.real_barcodes_report import report
from train.data.clibd_split import KEYS, TRAINING
from train.study import aggregate


def test_queries_are_the_test_splits_seen_or_unseen_species_and_unseen_ones_were_never_trained(tiny_synth):
    frame, labels, source = openset.partition(tiny_synth / "metadata.tsv")
    assert source.endswith("clibd_split.tsv")  # the benchmark's own partition, as training reads it
    trained = set(frame.loc[np.isin(labels, sorted(TRAINING)), "species"].dropna())
    unseen, seen = openset.queries(frame, labels, "unseen"), openset.queries(frame, labels, "seen")
    assert len(unseen) == int((labels == "test_unseen_query").sum()) > 0
    assert not set(unseen["species"]) & trained
    assert set(seen["species"]) <= trained


def test_kmer_baseline_searches_every_key_and_finds_a_species_from_its_own_keys(tiny_synth):
    frame, labels, _ = openset.partition(tiny_synth / "metadata.tsv")
    result = openset.kmer_scores(frame, labels)
    assert result["keys"] == int(np.isin(labels, sorted(KEYS)).sum())
    assert result["unseen"]["n"] == int((labels == "test_unseen_query").sum())
    # synthetic barcodes of one species differ by 0.5 %: its own keys are the nearest, so most unseen species are
    # named right although no model saw them
    assert result["unseen"]["species"]["top1"] > 50.0


def test_zero_shot_candidates_hold_every_unseen_queries_name(tiny_synth, tiny_run, tmp_path):
    from train.export import export

    frame, labels, _ = openset.partition(tiny_synth / "metadata.tsv")
    bundle = export(tiny_run, tmp_path / "bundle", name="openset", umap=False)
    result = openset.text_scores(bundle, frame, labels)
    assert result["open"]["unseen"]["not_a_candidate"] == 0
    assert result["open"]["unseen"]["n"] == len(openset.queries(frame, labels, "unseen"))
    assert "hierarchy" in result["open"]["unseen"] and "top1" in result["open"]["unseen"]["genus"]


def test_lambda_is_the_best_on_validation_and_undecided_until_every_lambda_ran():
    scores = {"0.01": {"clean": 50.0, "noisy_dna": 40.0}, "0.1": {"clean": 52.0, "noisy_dna": 41.0}}
    assert choose_lambda(scores) is None
    scores["1"] = {"clean": 30.0, "noisy_dna": 20.0}
    assert choose_lambda(scores) == 0.1
    assert choose_lambda({f"{lam:g}": {"clean": 1.0} for lam in LAMBDAS}) == 0.01  # a tie: the paper's value


def _open_run(dd_unseen: float, zs_unseen: float) -> dict:
    cell = {"top1": dd_unseen, "top3": dd_unseen, "top5": dd_unseen}
    per_level = {"genus": cell, "species": cell}
    text = {"n": 10, "not_a_candidate": 0, "genus": {"top1": zs_unseen, "top5": zs_unseen},
            "species": {"top1": zs_unseen, "top5": zs_unseen}}
    return {"retrieval_clibd": {"test": {"dna->dna": {"seen": {"n": 5, "micro": per_level},
                                                     "unseen": {"n": 10, "micro": per_level}}}},
            "openset_text": {"candidates": {"open": 9, "closed": 7}, "open": {"seen": {**text, "n": 5},
                                                                               "unseen": text}},
            "_meta": {"bundle": "x", "train_seconds": 12.0}}


def test_report_answers_hyperbolic_vs_euclidean_with_the_measured_differences():
    open_set = {"open-clibd": aggregate([_open_run(40.0, 20.0), _open_run(50.0, 30.0)]),
                "open-hyperbolic": aggregate([_open_run(60.0, 20.0), _open_run(70.0, 30.0)])}
    payload = {"models": {}, "kmer": None, "open_set": open_set, "kmer_open_set": {}, "partial_reads": {},
               "lambda_selection": None}
    args = argparse.Namespace(smoke=False, report_only=True, lanes=2, seeds=[0, 1], overrides=[])
    text = report(payload, args, 1.0, [])
    answer = text.split("## Answers", 1)[1].split("\n## ", 1)[0]
    assert "10 unseen and 5 seen" in answer
    # DNA->DNA unseen genus: 65±7.1 vs 45±7.1, difference +20.0 with sd hypot(7.07, 7.07) = 10.0
    assert "unseen species, genus: DNA -> DNA hyperbolic 65.0±7.1 vs Euclidean 45.0±7.1 (difference +20.0±10.0)" \
        in answer
    assert "zero-shot hyperbolic 25.0±7.1 vs Euclidean 25.0±7.1 (difference +0.0±10.0)" in answer
    assert openset.difference(None, {"top1": 1.0}) == "–"


@pytest.mark.parametrize("group", openset.GROUPS)
def test_openset_table_has_a_row_per_arm_group_and_task(group):
    agg = aggregate([_open_run(40.0, 20.0)])
    table = openset.openset_table({"a": agg}, {group: {"n": 3, "genus": {"top1": 12.5}}})
    assert f"| a | {group} | DNA->DNA (keys) | – | – | 40.0 | 40.0 |" in table
    assert f"| k-mer NN (k=6) | {group} | DNA->DNA (keys) | – | – | 12.5 | – |" in table
