"""CLIBD's open-set partition and its retrieval protocol: unseen species are never trained on, yet retrievable."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hirviz.taxonomy import LEVELS
from train.data import clibd_partition, load_partition, read_metadata, read_partition
from train.data.clibd_split import SIDE_FILE, TRAINING, bioscan5m_partition
from train.evaluate.retrieval import PAIRS, clibd_scores
from train.synthetic import METADATA_COLUMNS

UNSEEN_QUERIES = ("val_unseen_query", "test_unseen_query")


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """400 specimens over 16 species, most labelled to species, so several species have >= 9 records."""
    from train.synthetic import SynthConfig, generate

    out = tmp_path_factory.mktemp("clibd-synth")
    generate(out, SynthConfig(specimens=400, seed=5, orders=2, families=4, genera=8, species=16, family_known=0.9,
                              genus_known=0.8, species_known=0.7, image_height=32, workers=1))
    return out


def species_of(frame: pd.DataFrame, labels: np.ndarray, *wanted: str) -> set[str]:
    return set(frame["species"][np.isin(labels, wanted) & frame["species"].notna().to_numpy()])


def test_the_partition_keeps_unseen_species_out_of_training_and_gives_each_queries_and_keys(synth):
    frame = read_metadata(synth / "metadata.tsv")
    labels = clibd_partition(frame, seed=0)
    sizes = frame["species"].value_counts()
    unseen = species_of(frame, labels, *UNSEEN_QUERIES, "val_unseen_key", "test_unseen_key")
    seen = species_of(frame, labels, "val_seen_query", "test_seen_query", "seen_key")
    assert unseen and seen and not unseen & seen
    assert not unseen & species_of(frame, labels, *TRAINING)
    val = species_of(frame, labels, "val_unseen_query", "val_unseen_key")
    test = species_of(frame, labels, "test_unseen_query", "test_unseen_key")
    assert val and test and not val & test and val | test == unseen
    for split in ("val", "test"):
        assert species_of(frame, labels, f"{split}_unseen_query") == species_of(frame, labels, f"{split}_unseen_key")
    for name in seen:  # 70/10/10/10: training, both query sets and the keys
        own = set(labels[(frame["species"] == name).to_numpy()])
        assert own == {"train", "val_seen_query", "test_seen_query", "seen_key"}
        assert sizes[name] >= 9
    assert set(labels[frame["species"].isna().to_numpy()]) == {"train"}
    assert species_of(frame, labels, "heldout") == set(sizes.index[sizes == 1])
    # Species with fewer than min_records records are never seen; the threshold is a parameter.
    assert all(sizes[s] >= 20 for s in species_of(frame, clibd_partition(frame, 0, min_records=20), "seen_key"))


def test_the_partition_is_deterministic_for_a_seed_and_synth_writes_it(synth):
    frame = read_metadata(synth / "metadata.tsv")
    first = clibd_partition(frame, seed=3)
    assert np.array_equal(first, clibd_partition(frame, seed=3))
    assert not np.array_equal(first, clibd_partition(frame, seed=4))
    side = read_partition(synth / SIDE_FILE)  # synth's side file: seeded by the benchmark's seed (5)
    assert np.array_equal(side.loc[frame["sampleid"]].to_numpy(), clibd_partition(frame, seed=5))
    labels, source = load_partition(synth / "metadata.tsv")  # found beside the metadata
    assert source.endswith(SIDE_FILE) and np.array_equal(labels, clibd_partition(frame, seed=5))
    assert tuple(pd.read_csv(synth / "metadata.tsv", sep="\t", nrows=0).columns) == METADATA_COLUMNS  # unchanged


def test_bioscan5m_split_column_maps_to_the_partition(tmp_path):
    rows = [("S1", "pretrain", ""), ("S2", "train", "a"), ("S3", "val", "a"), ("S4", "test", "a"),
            ("S5", "val_unseen", "b"), ("S6", "key_unseen", "b"), ("S7", "test_unseen", "c"),
            ("S8", "key_unseen", "c"), ("S9", "key_unseen", "d"), ("S10", "other_heldout", "e")]
    table = pd.DataFrame({"processid": [f"P{i}" for i in range(len(rows))], "sampleid": [r[0] for r in rows],
                          "order": "Diptera", "family": "Cecidomyiidae", "genus": "g",
                          "species": [r[2] or "not_classified" for r in rows], "dna_barcode": "ACGT" * 50,
                          "split": [r[1] for r in rows]})
    path = tmp_path / "BIOSCAN_5M_Insect_Dataset_metadata.csv"
    table.to_csv(path, index=False)
    labels, source = load_partition(path)
    assert "split column" in source
    assert list(labels) == ["train", "train_key", "val_seen_query", "test_seen_query", "val_unseen_query",
                            "val_unseen_key", "test_unseen_query", "test_unseen_key", "unseen_key", "heldout"]
    table.loc[0, "split"] = "bogus"
    table.to_csv(path, index=False)
    with pytest.raises(ValueError, match="unknown split values"):
        bioscan5m_partition(path)


def test_the_authors_bioscan1m_partition_files_are_read(tmp_path, synth):
    frame = read_metadata(synth / "metadata.tsv")
    files = {"no_split": [], "train_seen": [], "seen_keys": [], "single_species": [], "val_seen": [],
             "test_seen": [], "val_unseen": [], "test_unseen": [], "val_unseen_keys": [], "test_unseen_keys": []}
    names = list(files)
    for i, sid in enumerate(frame["sampleid"]):
        files[names[i % len(names)]].append(sid)
    folder = tmp_path / "CLIBD_partitioning"
    folder.mkdir()
    for name, ids in files.items():
        (folder / f"{name}.txt").write_text("".join(f"{s}\n" for s in ids))
    (tmp_path / "meta.tsv").write_text((synth / "metadata.tsv").read_text())
    labels, source = load_partition(tmp_path / "meta.tsv")
    assert source == str(folder)
    assert labels[0] == "train" and labels[2] == "seen_key" and labels[9] == "test_unseen_key"
    (folder / "seen_keys.txt").unlink()
    with pytest.raises(FileNotFoundError, match="seen_keys.txt"):
        load_partition(tmp_path / "meta.tsv")


def test_tight_species_clusters_retrieve_unseen_species_from_their_own_keys(synth):
    frame = read_metadata(synth / "metadata.tsv")
    labels = clibd_partition(frame, seed=0)
    rng = np.random.default_rng(0)
    names = frame["species"].fillna("").to_numpy(dtype=str)
    centres = {n: rng.normal(size=16) for n in np.unique(names)}
    emb = np.stack([centres[n] if n else rng.normal(size=16) for n in names]) + 1e-3 * rng.normal(size=(len(names), 16))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    has = np.ones(len(frame), bool)
    ranks = frame[list(LEVELS)].to_numpy(dtype=object)
    scores = clibd_scores({"image": (emb, has), "dna": (emb, has)}, ranks, labels)
    for split in ("val", "test"):
        assert set(scores[split]) == {f"{q}->{k}" for q, k in PAIRS}
        for pair in scores[split].values():
            for group in ("seen", "unseen"):
                assert pair[group]["n"] > 0
                assert pair[group]["micro"]["species"]["top1"] == 100.0
                assert pair[group]["macro"]["species"]["top1"] == 100.0
    # Without the unseen species' own keys (keys = training records, the closed-set reference bank), the same
    # embeddings cannot name an unseen species: the reason the partition puts their keys in the database.
    closed = np.where(np.isin(labels, ["val_unseen_key", "test_unseen_key"]), "heldout", labels)
    closed = np.where(closed == "train", "train_key", closed)
    without = clibd_scores({"dna": (emb, has)}, ranks, closed)
    assert without["test"]["dna->dna"]["unseen"]["micro"]["species"]["top1"] == 0.0


def test_synth_fit_export_eval_retrieves_unseen_species(synth, tmp_path, no_umap):
    from conftest import CI_CONFIG, tiny_overrides
    from train.__main__ import main
    from train.config import load_config
    from train.export import export
    from train.loop import fit

    cfg = load_config(CI_CONFIG, tiny_overrides(synth, tmp_path / "run", "data.split=clibd", "optim.epochs=1"))
    run = fit(cfg, max_steps=4)
    frame = read_metadata(synth / "metadata.tsv")
    labels = read_partition(synth / SIDE_FILE).loc[frame["sampleid"]].to_numpy()
    with np.load(run / "split.npz", allow_pickle=True) as saved:
        trained = set(labels[saved["train"]])
    assert trained <= TRAINING  # only the training partition was trained on
    export(run, tmp_path / "bundle", umap=False)
    out = tmp_path / "eval.json"
    assert main(["eval", "--bundle", str(tmp_path / "bundle"), "--metadata", str(synth / "metadata.tsv"),
                 "--images", str(synth / "images.hdf5"), "--split", str(run), "--conditions", "clean",
                 "--retrieval", "clibd", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    clibd = results["retrieval_clibd"]
    assert clibd["trained_on_partition"] and clibd["queries_or_keys_in_reference_bank"] == 0
    assert clibd["partition"].endswith(SIDE_FILE)
    assert set(clibd["test"]) == {"image->image", "dna->dna", "image->dna"}
    assert clibd["test"]["dna->dna"]["unseen"]["n"] > 0
    assert clibd["test"]["dna->dna"]["unseen"]["micro"]["species"]["top1"] > 0
    assert "clean" in results and "retrieval" not in results  # the other keys are as before


def test_a_subset_run_trains_on_the_partition_of_the_whole_file(synth):
    from train.config import load_config
    from train.rundir import load_training_split

    cfg = load_config(None, [f"data.metadata={synth / 'metadata.tsv'}", "data.split=clibd", "data.max_specimens=150"])
    frame, train_idx, test_idx = load_training_split(cfg)
    whole = read_partition(synth / SIDE_FILE)
    assert len(frame) == 150 and not np.intersect1d(train_idx, test_idx).size
    assert set(whole.loc[frame["sampleid"].iloc[train_idx]]) <= TRAINING
    assert not set(whole.loc[frame["sampleid"].iloc[test_idx]]) & (TRAINING | {"heldout"})
    with pytest.raises(ValueError, match="data.split"):
        load_config(None, ["data.split=open"])
