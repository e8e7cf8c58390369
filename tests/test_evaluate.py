"""Evaluation: top-k level logic, retrieval against a brute-force loop, the results schema, tables and the CLI."""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hirviz.bundle import load_bundle
from hirviz.degrade import DnaNoise
from hirviz.taxonomy import LEVELS
from train import evaluate as ev
from train.config import load_config
from train.data import open_images, read_metadata
from train.embed import Degradation, embed_frame
from train.export import export
from train.loop import fit
from train.synthetic import SynthConfig, generate

REPO = Path(__file__).resolve().parents[1]
CI_CONFIG = REPO / "train" / "configs" / "ci.yaml"


# ----------------------------------------------------------------------------------------------------------------
# A tiny trained model and its bundle, built once


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch on one thread: on a busy CPU the tiny model trains ~15x faster than with threads that spin."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _tests_on_one_thread() -> Iterator[None]:
    with _one_thread():
        yield


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict:
    with _one_thread():
        return _train(tmp_path_factory.mktemp("evaluate"))


def _train(root: Path) -> dict:
    synth = root / "synth"
    generate(synth, SynthConfig(specimens=300, seed=5, image_height=32, workers=1))
    run = root / "run"
    cfg = load_config(CI_CONFIG, [f"data.metadata={synth / 'metadata.tsv'}", f"data.images={synth / 'images.hdf5'}",
                                  f"run.out_dir={run}", "optim.epochs=3", "optim.max_lr=3.0e-3",
                                  "run.checkpoint_every=1000"])
    fit(cfg)
    bundle = load_bundle(export(run, root / "bundle", name="tiny", umap=False))
    frame, _ = ev.select_rows(synth / "metadata.tsv", run, "test")
    return {"synth": synth, "run": run, "bundle": bundle, "test": frame,
            "images": open_images(synth / "images.hdf5")}


@pytest.fixture(scope="session")
def full_eval(trained) -> dict:
    """Every condition, the sweep and retrieval on the test rows (computed once, checked by several tests)."""
    with _one_thread():
        return ev.evaluate_bundle(trained["bundle"], trained["test"], trained["images"], sweep=True, retrieval=True)


# ----------------------------------------------------------------------------------------------------------------
# Top-k classification logic on hand-made embeddings


def _handmade():
    cand_ranks = [("O1", "F1", "G1", "S1"), ("O1", "F1", "G1", "S2"), ("O1", "F2", "G2", "S3")]
    cand_texts = ["O1 F1 G1 S1", "O1 F1 G1 S2", "O1 F2 G2 S3"]
    cand_emb = np.eye(3, dtype=np.float32)
    truth_ranks = [
        ("O1", "F1", "G1", "S2"),  # nearest is S1 (wrong species, right genus); S2 second
        ("O1", "F2", "G2", None),  # not identified to species: no species denominator; its string is no candidate
    ]
    truth_texts = ["O1 F1 G1 S2", "O1 F2 G2"]
    queries = np.array([[0.9, 0.43, 0.0], [0.0, 0.1, 0.99]], dtype=np.float32)
    return cand_ranks, cand_texts, cand_emb, truth_ranks, truth_texts, queries


def test_top1_wrong_species_right_genus_unknowns_excluded_global_exact():
    cand_ranks, cand_texts, cand_emb, truth_ranks, truth_texts, queries = _handmade()
    truth, cand = ev.label_codes(np.array(truth_ranks, dtype=object), truth_texts,
                                 np.array(cand_ranks, dtype=object), cand_texts)
    scores, n = ev.classification_scores(queries, truth, cand_emb, cand)
    assert n == {"order": 2, "family": 2, "genus": 2, "species": 1, "global": 2}
    assert scores["genus"] == {"top1": 100.0, "top5": 100.0}
    assert scores["species"] == {"top1": 0.0, "top5": 100.0}  # only the first query counts at species
    # Global is an exact string match: the first query's string is second in its ranking, the second's is absent.
    assert scores["global"] == {"top1": 0.0, "top5": 50.0}

    # Nobody labelled at a level: the accuracy is undefined, not 0.
    scores, n = ev.classification_scores(queries[1:], truth[1:], cand_emb, cand)
    assert n["species"] == 0 and scores["species"] == {"top1": None, "top5": None}


def test_a_candidate_without_a_rank_never_matches_a_known_truth():
    truth, cand = ev.label_codes(np.array([("O1", "F1", None, None)], dtype=object), ["O1 F1"],
                                 np.array([("O1", None, None, None)], dtype=object), ["O1"])
    scores, _ = ev.classification_scores(np.ones((1, 2), np.float32), truth, np.ones((1, 2), np.float32), cand)
    assert scores["order"]["top1"] == 100.0 and scores["family"]["top1"] == 0.0
    assert scores["genus"]["top1"] is None


def test_top_k_agrees_with_a_full_sort_across_chunks(monkeypatch):
    rng = np.random.default_rng(0)
    queries, keys = rng.normal(size=(37, 8)).astype(np.float32), rng.normal(size=(23, 8)).astype(np.float32)
    monkeypatch.setattr(ev.metrics, "_SCORE_BUDGET", 23 * 5)  # 5 rows per chunk
    expected = np.argsort(-(queries @ keys.T), axis=1)
    assert np.array_equal(ev.top_k(queries, keys, 5), expected[:, :5])
    assert np.array_equal(ev.top_k(queries, keys, 50), expected)  # k beyond the number of keys


# ----------------------------------------------------------------------------------------------------------------
# Retrieval


def _brute_force_retrieval(q, q_codes, k, k_codes, q_ids, k_ids, ks=(1, 3, 5)):
    species = {c for c in k_codes[:, 3] if c >= 0}
    out = {"seen": {}, "unseen": {}}
    groups = {"seen": [], "unseen": [], "all": list(range(len(q)))}
    for i in range(len(q)):
        groups["seen" if q_codes[i, 3] >= 0 and q_codes[i, 3] in species else "unseen"].append(i)
    for group, members in groups.items():
        out[group] = {"n": len(members), "micro": {}, "macro": {}}
        for j, level in enumerate(LEVELS):
            out[group]["micro"][level], out[group]["macro"][level] = {}, {}
            for kk in ks:
                hits, per_class = [], {}
                for i in members:
                    if q_codes[i, j] < 0:
                        continue
                    order = [m for m in np.argsort(-(k @ q[i]), kind="stable") if k_ids[m] != q_ids[i]][:kk]
                    hit = any(k_codes[m, j] == q_codes[i, j] for m in order)
                    hits.append(hit)
                    per_class.setdefault(q_codes[i, j], []).append(hit)
                micro = 100 * np.mean(hits) if hits else None
                macro = 100 * np.mean([np.mean(v) for v in per_class.values()]) if per_class else None
                out[group]["micro"][level][f"top{kk}"] = micro
                out[group]["macro"][level][f"top{kk}"] = macro
    return out


def test_retrieval_micro_macro_match_a_brute_force_loop():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(60, 6)).astype(np.float32)
    k = rng.normal(size=(40, 6)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    k /= np.linalg.norm(k, axis=1, keepdims=True)
    q_codes = rng.integers(-1, 4, size=(60, 4))
    k_codes = rng.integers(-1, 4, size=(40, 4))
    q_codes[:, 3] = rng.integers(-1, 8, size=60)  # species 4..7 are never keys: unseen
    k[5] = q[7]  # query 7 is also key 5 (same id): it must not find itself
    q_ids = np.array([f"q{i}" for i in range(60)], dtype=object)
    k_ids = np.array([f"k{i}" for i in range(40)], dtype=object)
    k_ids[5] = "q7"
    got = ev.retrieval_scores(q, q_codes, k, k_codes, q_ids, k_ids)
    want = _brute_force_retrieval(q, q_codes, k, k_codes, q_ids, k_ids)
    assert got["seen"]["n"] == want["seen"]["n"] > 0 and got["unseen"]["n"] == want["unseen"]["n"] > 0
    assert got["all"]["n"] == 60
    for group in ("seen", "unseen", "all"):
        for average in ("micro", "macro"):
            for level in LEVELS:
                for key, value in want[group][average][level].items():
                    assert got[group][average][level][key] == pytest.approx(value, abs=1e-3), (group, average, level)


def test_seen_unseen_split():
    keys = np.eye(3, dtype=np.float32)
    key_ranks = np.array([("O", "F", "G", "S1"), ("O", "F", "G", "S1"), ("O", "F", "G", None)], dtype=object)
    q_ranks = np.array([("O", "F", "G", "S1"), ("O", "F", "G", "S2"), ("O", "F", "G", None)], dtype=object)
    codes = [ev.metrics._factorize(q_ranks[:, j], key_ranks[:, j]) for j in range(4)]
    q_codes, k_codes = (np.stack([c[i] for c in codes], axis=1) for i in (0, 1))
    got = ev.retrieval_scores(keys[[2, 2, 2]], q_codes, keys, k_codes)
    assert got["seen"]["n"] == 1  # S1 is among the keys
    assert got["unseen"]["n"] == 2  # S2 is not; the unidentified one is not seen either
    # The unidentified query counts at genus but not at species, so species is scored on S2 alone.
    assert got["unseen"]["micro"]["genus"]["top1"] == 100.0
    assert got["unseen"]["micro"]["species"] == {"top1": 0.0, "top3": 0.0, "top5": 0.0}
    assert got["seen"]["micro"]["species"]["top1"] == 0.0 and got["seen"]["micro"]["species"]["top3"] == 100.0


# ----------------------------------------------------------------------------------------------------------------
# The results schema, the noise conditions and the sweep on a trained tiny model


def test_results_schema(full_eval, trained):
    assert list(full_eval)[:4] == list(ev.CONDITIONS)
    assert set(full_eval) == {*ev.CONDITIONS, "_meta", "sweep", "retrieval"}
    for condition in ev.CONDITIONS:
        assert list(full_eval[condition]) == list(ev.QUERIES)  # trained with the fusion loss: fused included
        for per_level in full_eval[condition].values():
            assert list(per_level) == ["order", "family", "genus", "species", "global", "hierarchy"]
            for scores in (per_level[level] for level in ev.EVAL_LEVELS):
                assert set(scores) == {"top1", "top5"}
                assert all(isinstance(v, float) and 0 <= v <= 100 for v in scores.values())
                assert scores["top1"] <= scores["top5"]
    meta = full_eval["_meta"]
    assert meta["bundle"] == "tiny" and meta["specimens"] == len(trained["test"])
    assert meta["blur_kernel"] == ev.DEFAULT_BLUR_KERNEL and meta["dna_noise"]["substitution"] == 0.01
    assert meta["n_labelled"]["dna"]["order"] == trained["test"]["order"].notna().sum()
    json.dumps(full_eval)  # plain JSON

    records = full_eval["sweep"]
    assert {tuple(sorted(r)) for r in records} == {("kind", "level", "query", "strength", "top1")}
    assert sorted({r["strength"] for r in records if r["kind"] == "dna"}) == list(ev.SWEEP_DNA_SCALES)
    assert sorted({r["strength"] for r in records if r["kind"] == "blur"}) == list(ev.SWEEP_BLUR_KERNELS)

    retrieval = full_eval["retrieval"]
    for group in ("seen", "unseen"):
        micro = retrieval["clean"]["dna"][group]["micro"]
        assert list(micro) == list(LEVELS) and set(micro["order"]) == {"top1", "top3", "top5"}
    assert retrieval["clean"]["dna"]["seen"]["n"] + retrieval["clean"]["dna"]["unseen"]["n"] == len(trained["test"])


def test_noise_conditions_change_only_what_they_degrade(full_eval):
    clean, noisy_dna, noisy_image = full_eval["clean"], full_eval["noisy_dna"], full_eval["noisy_image"]
    assert noisy_dna["image"] == clean["image"] and noisy_image["dna"] == clean["dna"]
    assert noisy_dna["dna"] != clean["dna"] and noisy_image["image"] != clean["image"]
    # The trained model reads its barcodes: heavy DNA noise costs accuracy, and the sweep's ends are the conditions.
    sweep = {(r["kind"], r["strength"], r["query"], r["level"]): r["top1"] for r in full_eval["sweep"]}
    assert clean["dna"]["order"]["top1"] > 60
    assert sweep[("dna", 8.0, "dna", "family")] < clean["dna"]["family"]["top1"] - 10
    assert sweep[("dna", 0.0, "dna", "global")] == clean["dna"]["global"]["top1"]
    assert sweep[("dna", 1.0, "dna", "global")] == noisy_dna["dna"]["global"]["top1"]
    assert sweep[("blur", 5, "image", "global")] == noisy_image["image"]["global"]["top1"]


def test_composed_queries_equal_embedding_both_degradations_at_once(trained):
    model, frame = trained["bundle"].model, trained["test"].iloc[:40].reset_index(drop=True)
    noise = DnaNoise()
    embedder = ev.QueryEmbedder(model, frame, trained["images"], seed=3, batch_size=16)
    composed = embedder.queries(embedder.image(5), embedder.dna(noise))
    direct = embed_frame(model, frame, trained["images"], Degradation(dna=noise, blur_kernel=5, seed=3), batch_size=7)
    for query in ev.QUERIES:
        np.testing.assert_allclose(composed[query][0], direct[query], atol=1e-5)


def test_hierarchy_numbers_for_every_space_and_condition(full_eval, trained):
    assert full_eval["_meta"]["per_level"] == "string"
    for condition in ev.CONDITIONS:
        for query, per_level in full_eval[condition].items():
            h = per_level["hierarchy"]
            severity, agreement, drift = h["mistake_severity"], h["agreement"], h["drift"]
            assert severity["specimens"] == full_eval["_meta"]["n_labelled"][query]["order"]
            assert severity["mistakes"] + severity["correct"] + severity["undecided"] == severity["specimens"]
            assert severity["severity"] is None or 0 < severity["severity"] <= 4
            assert 0 <= severity["hdist@1"] <= 4 and 0 <= severity["hdist@5"] <= 4
            assert 0 < agreement["pairs"] <= ev.AGREEMENT_PAIRS and -1 <= agreement["rho"] <= 1
            assert drift["specimens"] >= severity["specimens"]  # drift also covers specimens with no known rank
            assert sum(drift["distribution"].values()) == pytest.approx(1.0)
            assert 0 <= drift["mean_depth"] <= 4
    # Without noise nothing moves; each noise moves exactly the spaces that read the degraded modality.
    for query in ev.QUERIES:
        assert full_eval["clean"][query]["hierarchy"]["drift"]["mean_displacement"] == pytest.approx(0, abs=1e-9)
        assert full_eval["noisy_both"][query]["hierarchy"]["drift"]["mean_displacement"] > 0
    assert full_eval["noisy_dna"]["image"]["hierarchy"] == full_eval["clean"]["image"]["hierarchy"]
    assert full_eval["noisy_dna"]["dna"]["hierarchy"]["drift"]["mean_displacement"] > 0
    # hdist@k covers the specimens identified to species (in the synthetic data every rank above is known then).
    clean_dna = full_eval["clean"]["dna"]
    assert clean_dna["hierarchy"]["mistake_severity"]["hdist_specimens"] == \
        full_eval["_meta"]["n_labelled"]["dna"]["species"]


def test_independent_levels_can_put_family_below_genus():
    """A query nearest to its true string, but whose family's other strings lie around it: the family that
    ranks first on its own is the wrong one, although the first string (and so the string reading) is right."""
    cand_ranks = np.array([("O1", "F1", "G1", "S1"), ("O1", "F2", "G2", "S2"), ("O1", "F2", "G3", "S3")], dtype=object)
    cand_texts = [" ".join(r) for r in cand_ranks]
    cand_emb = np.array([[0.9, 0.0, np.sqrt(1 - 0.81)], [1, 1, 0], [1, -1, 0]], dtype=np.float32)
    cand_emb /= np.linalg.norm(cand_emb, axis=1, keepdims=True)  # S2, S3 at cos 0.71 of the query, S1 at 0.9
    query = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)  # the mean of F2's strings points exactly here
    truth, cand = ev.label_codes(cand_ranks[:1], cand_texts[:1], cand_ranks, cand_texts)

    string, _ = ev.classification_scores(query, truth, cand_emb, cand)
    assert string["family"]["top1"] == string["genus"]["top1"] == 100.0  # the string reading cannot differ

    independent = ev.independent_level_scores(query, truth, ev.LevelCandidates(cand_emb, cand))
    assert independent["genus"]["top1"] == 100.0 and independent["species"]["top1"] == 100.0
    assert independent["family"]["top1"] == 0.0 < independent["family"]["top5"]
    assert independent["order"] == {"top1": 100.0, "top5": 100.0}


def test_per_level_independent_is_recorded_and_keeps_global(trained, full_eval):
    frame = trained["test"].iloc[:60]
    results = ev.evaluate_bundle(trained["bundle"], frame, trained["images"], ["clean"], per_level="independent")
    assert results["_meta"]["per_level"] == "independent"
    string = ev.evaluate_bundle(trained["bundle"], frame, trained["images"], ["clean"])
    for query in results["clean"]:
        assert results["clean"][query]["global"] == string["clean"][query]["global"]
        assert results["clean"][query]["hierarchy"] == string["clean"][query]["hierarchy"]
    with pytest.raises(ValueError, match="per_level"):
        ev.evaluate_bundle(trained["bundle"], frame, trained["images"], ["clean"], per_level="both")


# ----------------------------------------------------------------------------------------------------------------
# Tables


def test_tables_follow_the_papers_layout(full_eval):
    text = ev.format_tables(full_eval)
    lines = text.splitlines()
    t1 = lines.index("| Setting | Method | Cond. | Order | Family | Genus | Species | Global |")
    rows = [line.split(" | ")[:3] for line in lines[t1 + 2:t1 + 6]]
    assert rows == [["| IT", "tiny", "Clean"], ["| IT", "tiny", "Noisy"], ["| DT", "tiny", "Clean"],
                    ["| DT", "tiny", "Noisy"]]
    t2 = lines.index("| Method | Cond. | Order | Family | Genus | Species | Global |")
    rows = [line.split(" | ")[:2] for line in lines[t2 + 2:t2 + 12]]
    assert rows == [["| IT", "Clean"], ["| ", "Noisy I"], ["| DT", "Clean"], ["| ", "Noisy D"],
                    ["| I+DT (Avg)", "Clean"], ["| ", "Noisy D"], ["| ", "Noisy I+D"],
                    ["| I+DT (Fused)", "Clean"], ["| ", "Noisy D"], ["| ", "Noisy I+D"]]
    th = lines.index("| Query | Cond. | Severity | HDist@1 | HDist@5 | rho | Depth | Moved |")
    first = lines[th + 2].split(" | ")
    severity = full_eval["clean"]["image"]["hierarchy"]["mistake_severity"]["severity"]
    assert first[:2] == ["| image", "clean"] and first[2] == ("–" if severity is None else f"{severity:.2f}")
    dt_noisy = lines[t1 + 5].split(" | ")
    family = full_eval["noisy_dna"]["dna"]["family"]
    assert dt_noisy[4] == f"{family['top1']:.1f} / {family['top5']:.1f}"


def test_table2_leaves_out_what_was_not_measured():
    scores = {lvl: {"top1": 50.0, "top5": 75.0} for lvl in ev.EVAL_LEVELS}
    scores["species"] = {"top1": None, "top5": None}
    text = ev.format_table2({"clean": {"dna": scores}, "noisy_dna": {"dna": scores}})
    cells = "50.0 / 75.0 | 50.0 / 75.0 | 50.0 / 75.0 | – / – | 50.0 / 75.0 |"
    assert text.splitlines()[0] == "| Method | Cond. | Order | Family | Genus | Species | Global |"
    assert text.splitlines()[2:] == [f"| DT | Clean | {cells}", f"|  | Noisy D | {cells}"]


# ----------------------------------------------------------------------------------------------------------------
# Choosing rows, the command line, barcode-only data


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    ev.add_arguments(parser)
    return ev.run(parser.parse_args(list(argv)))


def test_split_selects_the_runs_test_rows(trained):
    synth, run = trained["synth"], trained["run"]
    saved = np.load(run / "split.npz", allow_pickle=True)
    full = read_metadata(synth / "metadata.tsv")
    for subset in ("test", "train"):
        frame, info = ev.select_rows(synth / "metadata.tsv", run / "split.npz", subset)
        assert frame["sampleid"].tolist() == full["sampleid"].iloc[saved[subset]].tolist()
        assert info["subset"] == subset
    with pytest.raises(ValueError, match="needs --split"):
        ev.select_rows(synth / "metadata.tsv", None, "test")


def test_a_split_of_another_frame_is_refused(trained, tmp_path):
    synth, run = trained["synth"], trained["run"]
    # The same file with its rows shuffled: the split's indices would point at other specimens.
    lines = (synth / "metadata.tsv").read_text().splitlines(keepends=True)
    shuffled = tmp_path / "shuffled.tsv"
    shuffled.write_text(lines[0] + "".join(lines[1:][::-1]))
    with pytest.raises(ValueError, match="does not come out of|sample ids"):
        ev.select_rows(shuffled, run, "test")
    # Without the run's config only the saved sample ids can tell, and they do.
    (tmp_path / "alone").mkdir()
    (tmp_path / "alone" / "split.npz").write_bytes((run / "split.npz").read_bytes())
    with pytest.raises(ValueError, match="sample ids"):
        ev.select_rows(shuffled, tmp_path / "alone" / "split.npz", "test")
    # A frame subset differently (a max_specimens run) has another length.
    short = tmp_path / "short.tsv"
    short.write_text("".join(lines[:100]))
    with pytest.raises(ValueError, match="was made on"):
        ev.select_rows(short, tmp_path / "alone" / "split.npz", "test")


def test_cli_writes_results_and_tables(trained, tmp_path):
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    assert _cli("--bundle", str(trained["bundle"].path), "--metadata", str(trained["synth"] / "metadata.tsv"),
                "--images", str(trained["synth"] / "images.hdf5"), "--split", str(trained["run"]),
                "--conditions", "clean,noisy_dna", "--max-specimens", "30", "--per-level", "independent",
                "--out", str(out), "--markdown", str(md)) == 0
    results = json.loads(out.read_text())
    assert [k for k in results if not k.startswith("_")] == ["clean", "noisy_dna"]
    assert results["_meta"]["per_level"] == "independent" and "--per-level independent" in md.read_text()
    assert "| dna | noisy_dna |" in md.read_text()  # the hierarchy table
    assert results["_meta"]["subset"] == "test" and results["_meta"]["specimens"] == 30
    assert results["_meta"]["specimens_in_reference_bank"] == 0  # the bank holds the training rows
    assert "| DT | tiny | Noisy |" in md.read_text()


def test_cli_refuses_the_training_data_without_a_split(trained, tmp_path):
    args = ["--bundle", str(trained["bundle"].path), "--metadata", str(trained["synth"] / "metadata.tsv"),
            "--out", str(tmp_path / "r.json")]
    with pytest.raises(SystemExit, match="--split"):
        _cli(*args)
    assert not (tmp_path / "r.json").exists()


def _write_barcode_tsv(frame: pd.DataFrame, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, delimiter="\t")
        writer.writerow(["processid", *LEVELS, "dna_barcode"])
        for row in frame.itertuples(index=False):
            writer.writerow([row.sampleid, *[getattr(row, lvl) or "" for lvl in LEVELS], row.barcode or ""])


@pytest.mark.parametrize("candidates", ["bundle", "dataset"])
def test_barcode_only_tsv_gives_dna_queries_only(trained, tmp_path, candidates):
    tsv = tmp_path / "barcodes.tsv"
    _write_barcode_tsv(trained["test"].iloc[:60], tsv)
    out = tmp_path / "r.json"
    assert _cli("--bundle", str(trained["bundle"].path), "--metadata", str(tsv), "--candidates", candidates,
                "--out", str(out)) == 0
    results = json.loads(out.read_text())
    assert [k for k in results if not k.startswith("_")] == ["clean", "noisy_dna"]
    assert all(list(results[c]) == ["dna"] for c in ("clean", "noisy_dna"))
    assert set(results["_meta"]["skipped_conditions"]) == {"noisy_image", "noisy_both"}
    assert results["_meta"]["candidates"]["source"] == candidates
    # The same specimens as in the full evaluation, read from another format, score the same at order level
    # when the candidates are the same.
    if candidates == "bundle":
        again = ev.evaluate_bundle(trained["bundle"], trained["test"].iloc[:60], None, ["clean"])
        assert results["clean"]["dna"] == again["clean"]["dna"]


def test_real_barcode_tsv(trained, shared_data, tmp_path):
    out = tmp_path / "real.json"
    assert _cli("--bundle", str(trained["bundle"].path), "--metadata",
                str(shared_data / "real_dna" / "barcodes.tsv"), "--candidates", "dataset", "--max-specimens", "150",
                "--conditions", "clean", "--out", str(out)) == 0
    results = json.loads(out.read_text())
    assert list(results["clean"]) == ["dna"]
    meta = results["_meta"]
    assert meta["specimens"] == 150 and meta["format"] == "barcode_tsv"
    assert meta["candidates"]["specimens_whose_string_is_not_a_candidate"] == 0
    assert 0 < meta["n_labelled"]["dna"]["species"] < meta["n_labelled"]["dna"]["global"] <= 150
