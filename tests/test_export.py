"""Run -> bundle export, end to end on a tiny synthetic run (a few optimizer steps of the CI model)."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from hirviz.bundle import load_bundle
from hirviz.taxonomy import LEVELS, Taxonomy, taxonomy_string
from train import export
from train.config import load_config
from train.data import open_images
from train.embed import Degradation, embed_frame
from train.loop import fit
from train.rundir import load_training_split
from train.synthetic import SynthConfig, generate

REPO_ROOT = Path(__file__).resolve().parents[1]
MAX_REFERENCE = 60
EVAL = {"clean": {"dna": {"order": {"top1": 91.0, "top5": 100.0}, "species": {"top1": 33.0, "top5": 61.0}}}}


def _stand_in_layout(embeddings: np.ndarray, seed: int = 0, **kwargs) -> np.ndarray:
    """A cheap stand-in for UMAP with its contract ([N, 2] float32, NaN for all-zero rows).

    The real fit pays tens of seconds of numba compilation per process; hirviz.geometry's tests cover it, and
    these tests check what export does with it.
    """
    out = np.asarray(embeddings, dtype=np.float32)[:, :2].copy()
    out[np.linalg.norm(embeddings, axis=1) == 0] = np.nan
    _stand_in_layout.calls.append((len(embeddings), seed))
    return out


_stand_in_layout.calls = []


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    export.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("export")
    data = generate(root / "synth", SynthConfig(specimens=300, seed=0, image_height=48, workers=1))
    cfg = load_config(REPO_ROOT / "train" / "configs" / "ci.yaml", [
        f"data.metadata={data / 'metadata.tsv'}", f"data.images={data / 'images.hdf5'}",
        f"run.out_dir={root / 'run'}", "run.device=cpu"])
    run_dir = fit(cfg, max_steps=5)
    (root / "eval.json").write_text(json.dumps(EVAL))
    args = _parse("--run", str(run_dir), "--out", str(root / "bundle"), "--max-reference", str(MAX_REFERENCE),
                  "--eval", str(root / "eval.json"), "--clibd-h5", str(root / "clibd.h5"), "--seed", "3",
                  "--device", "cpu")
    with pytest.MonkeyPatch.context() as mp:
        import hirviz.geometry

        mp.setattr(hirviz.geometry, "fit_layout", _stand_in_layout)
        assert export.run(args) == 0
    frame, train_idx, test_idx = load_training_split(cfg)
    return {"root": root, "cfg": cfg, "run": run_dir, "bundle": root / "bundle", "clibd": root / "clibd.h5",
            "frame": frame, "train": frame.iloc[train_idx], "test": frame.iloc[test_idx]}


def test_export_writes_every_file(exported: dict) -> None:
    files = {p.name for p in exported["bundle"].iterdir()}
    assert files == {"config.json", "model.safetensors", "taxonomy.json", "text_embeddings.npy", "reference.h5",
                     "eval.json", "README.md", "abstention.json"}
    bundle = load_bundle(exported["bundle"])
    assert bundle.name == exported["run"].name and bundle.objective == "clibd-hir-fuse"
    assert bundle.training == exported["cfg"].to_dict()
    prov = bundle.provenance
    assert prov["run"] == "run" and prov["metadata"] == "metadata.tsv" and prov["steps"] == 5
    assert (prov["train_specimens"], prov["test_specimens"]) == (len(exported["train"]), len(exported["test"]))
    assert prov["date"] and "git_commit" in prov
    assert bundle.eval_results == EVAL
    card = bundle.card
    assert "| dna | 91.0 / 100.0 | 33.0 / 61.0 |" in card and "Not evaluated yet" not in card
    assert "metadata.tsv" in card and "CLIBD-HiR-Fuse" in card


def test_candidates_cover_the_training_split(exported: dict) -> None:
    bundle = load_bundle(exported["bundle"])
    train, test = exported["train"], exported["test"]
    expected = sorted(set(train["taxonomy"]) - {""})
    assert bundle.candidates == expected
    for text, ranks in zip(bundle.candidates, bundle.candidate_ranks):
        assert taxonomy_string(ranks) == text
    assert set(test["taxonomy"]) <= set(bundle.candidates)  # the closed-set split: every test string is a candidate
    assert bundle.text_embeddings.shape == (len(expected), 32)


def test_reference_bank_and_layouts(exported: dict) -> None:
    bundle = load_bundle(exported["bundle"])
    ref, train = bundle.reference, exported["train"]
    assert len(ref) == MAX_REFERENCE < len(train)
    assert set(ref.ids) <= set(train["sampleid"])
    assert len(set(ref.ids)) == MAX_REFERENCE
    for level in ("order", "family"):  # stratified: every order and family of the training split is there
        assert set(ref.ranks[:, LEVELS.index(level)]) - {""} == set(train[level].dropna())
    np.testing.assert_array_equal(ref.labels, bundle.taxonomy.encode([[r or None for r in row] for row in ref.ranks]))
    assert sorted(ref.embeddings) == ["avg", "dna", "fused", "image"]
    assert all(v.shape == (MAX_REFERENCE, 32) and v.dtype == np.float32 for v in ref.embeddings.values())
    assert sorted(ref.layouts) == ["dna", "fused", "image"]
    assert all(v.shape == (MAX_REFERENCE, 2) for v in ref.layouts.values())
    assert _stand_in_layout.calls == [(MAX_REFERENCE, 3)] * 3  # one seeded fit per space
    by_id = train.set_index("sampleid")
    assert ref.barcodes.tolist() == by_id.loc[ref.ids, "barcode"].fillna("").tolist()


def test_bundle_model_reproduces_the_exported_embeddings(exported: dict) -> None:
    bundle = load_bundle(exported["bundle"])
    ref = bundle.reference
    rows = exported["train"].set_index("sampleid").loc[ref.ids].reset_index()
    again = embed_frame(bundle.model, rows, open_images(exported["cfg"].data.images), Degradation())
    for space, values in ref.embeddings.items():
        np.testing.assert_allclose(again[space], values, atol=1e-5, err_msg=space)
    np.testing.assert_array_equal(again["has_image"], ref.has_image)


def test_clibd_h5_has_the_test_split(exported: dict) -> None:
    bundle = load_bundle(exported["bundle"])
    test = exported["test"]
    with h5py.File(exported["clibd"]) as h5:
        for name in ("encoded_image_feature", "encoded_dna_feature", "encoded_language_feature"):
            assert h5[name].shape == (len(test), 32) and h5[name].dtype == np.float32
        assert h5["sampleid"].asstr()[()].tolist() == test["sampleid"].tolist()
        assert h5["processid"].asstr()[()].tolist() == test["processid"].tolist()
        for level in LEVELS:
            assert h5[f"{level}_list"].asstr()[()].tolist() == test[level].fillna("not_classified").tolist()
        language = h5["encoded_language_feature"][()]
    # Each specimen's language feature is its taxonomy string's embedding, as in the bundle's candidates.
    rows = [bundle.candidates.index(t) for t in test["taxonomy"]]
    np.testing.assert_allclose(language, bundle.text_embeddings[rows], atol=1e-5)


def test_select_reference_covers_taxa_within_the_cap() -> None:
    frame = pd.DataFrame({"order": ["A"] * 50 + ["B"] + [None] * 9,
                          "family": ["a1"] * 40 + ["a2"] * 10 + ["b1"] + [None] * 9})
    rows = export.select_reference(frame, 5, seed=1)
    assert len(rows) == 5 and np.all(np.diff(rows) > 0)
    assert set(frame.loc[rows, "order"].dropna()) == {"A", "B"}
    assert set(frame.loc[rows, "family"].dropna()) == {"a1", "a2", "b1"}
    np.testing.assert_array_equal(rows, export.select_reference(frame, 5, seed=1))
    assert not np.array_equal(rows, export.select_reference(frame, 5, seed=2))
    np.testing.assert_array_equal(export.select_reference(frame, 100), np.arange(60))


def test_export_refuses_metadata_that_gives_another_split(exported: dict, tmp_path: Path) -> None:
    changed = tmp_path / "metadata.tsv"
    lines = (Path(exported["cfg"].data.metadata)).read_text().splitlines(keepends=True)
    changed.write_text("".join(lines[:1] + lines[2:]))  # one specimen fewer
    args = _parse("--run", str(exported["run"]), "--out", str(tmp_path / "b"), "--metadata", str(changed),
                  "--no-umap", "--device", "cpu")
    with pytest.raises(SystemExit, match="does not give the split saved in"):
        export.run(args)
    assert not (tmp_path / "b").exists()


def test_export_of_a_missing_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="not a finished run directory: no config.yaml"):
        export.run(_parse("--run", str(tmp_path), "--out", str(tmp_path / "b")))


def _card(*overrides: str) -> str:
    """The model card of a (never trained) CI config with these loss overrides."""
    from hirviz.bundle import Reference

    cfg = load_config(REPO_ROOT / "train" / "configs" / "ci.yaml", list(overrides))
    taxonomy = Taxonomy.from_lineages([("O", "F", "G", "S")])
    reference = Reference.from_dict({"ids": [], "ranks": np.zeros((0, 4), dtype=str), "labels": np.zeros((0, 4))})
    return export.model_card("m", cfg, {}, taxonomy, 1, reference)


def test_model_card_states_the_objective_s_terms_and_their_variants() -> None:
    card = _card("loss.objective=clibd-hir-fuse", "loss.hir_max_scope=anchor", "loss.fusion_direction=fused_anchor",
                 "loss.hir_weight=0.5", "loss.fusion_weight=2.0")
    objective = next(line for line in card.splitlines() if line.startswith("- objective:"))
    assert "HiR weight 0.5" in objective and "max over anchor" in objective
    assert "fusion weight 2.0" in objective and "fused_anchor" in objective
    plain = next(line for line in _card("loss.objective=clibd").splitlines() if line.startswith("- objective:"))
    assert "HiR" not in plain.split(":", 1)[1].replace("CLIBD-HiR", "") and "fusion" not in plain
    hir = next(line for line in _card("loss.objective=clibd-hir").splitlines() if line.startswith("- objective:"))
    assert "max over batch" in hir and "fusion weight" not in hir


def test_export_records_whether_the_fusion_gate_was_trained(exported: dict, tmp_path: Path, no_umap) -> None:
    assert json.loads((exported["bundle"] / "config.json").read_text())["fusion_trained"] is True
    assert load_bundle(exported["bundle"]).fusion_trained
    # the same weights under a config that never trained the gate (CLIBD, or a zero fusion weight)
    for i, loss in enumerate(({"objective": "clibd"}, {"objective": "clibd-hir-fuse", "fusion_weight": 0.0})):
        run = tmp_path / f"run{i}"
        shutil.copytree(exported["run"], run)
        config = yaml.safe_load((run / "config.yaml").read_text())
        config["loss"].update(loss)
        (run / "config.yaml").write_text(yaml.safe_dump(config))
        bundle = export.export(run, tmp_path / f"bundle{i}", max_reference=20, umap=False)
        assert json.loads((bundle / "config.json").read_text())["fusion_trained"] is False
        assert not load_bundle(bundle).fusion_trained
    # evaluation reads the flag too: no fused query for the CLIBD bundle, with a note saying why
    from train.evaluate import evaluate_bundle

    results = evaluate_bundle(load_bundle(tmp_path / "bundle0"), exported["test"].reset_index(drop=True).head(20),
                              exported["root"] / "synth" / "images.hdf5", conditions=("clean",))
    assert set(results["clean"]) == {"image", "dna", "avg"} and "fusion" in results["_meta"]["note"]


def test_split_files_load_without_pickle_and_old_ones_are_not_unpickled(exported: dict, tmp_path: Path,
                                                                        caplog) -> None:
    from train.rundir import check_split, read_split, split_ids

    with np.load(exported["run"] / "split.npz", allow_pickle=False) as saved:
        assert saved["sampleid"].dtype.kind == "U"
        np.testing.assert_array_equal(saved["sampleid"], split_ids(exported["frame"]))
    split = read_split(exported["run"])
    np.testing.assert_array_equal(split.ids, split_ids(exported["frame"]))

    # A split written with the ids as an object array (numpy pickles those): its ids are not unpickled; the split
    # is still read, and still checked by its length.
    old = tmp_path / "split.npz"
    np.savez(old, train=split.train, test=split.test, sampleid=split.ids.astype(object))
    with caplog.at_level("WARNING", logger="train.rundir"):
        legacy = read_split(old)
    assert legacy.ids is None and "pickled" in caplog.text
    np.testing.assert_array_equal(legacy.train, split.train)
    with pytest.raises(ValueError, match="specimens but the split"):
        check_split(legacy, exported["frame"].iloc[:-1], "metadata.tsv")


def _open_hdf5_files() -> set[str]:
    """The HDF5 files this process holds open."""
    return {str(Path(f.name.decode()).resolve()) for f in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)}


def test_training_and_export_close_the_image_store_they_open(exported: dict, tmp_path: Path, monkeypatch,
                                                            no_umap) -> None:
    import train.loop

    opened = []

    def recording(path, *args, **kwargs):
        opened.append(open_images(path, *args, **kwargs))
        return opened[-1]

    images = str(Path(exported["cfg"].data.images).resolve())  # other tests' stores are theirs to close
    assert images not in _open_hdf5_files()
    for module in (train.loop, export):
        monkeypatch.setattr(module, "open_images", recording)
    cfg = load_config(REPO_ROOT / "train" / "configs" / "ci.yaml", [
        f"data.metadata={exported['cfg'].data.metadata}", f"data.images={exported['cfg'].data.images}",
        f"run.out_dir={tmp_path / 'run'}"])
    run = fit(cfg, max_steps=1)
    export.export(run, tmp_path / "bundle", max_reference=20, umap=False)
    assert len(opened) == 2  # both stores are still referenced here, yet no handle is left open
    assert images not in _open_hdf5_files()
    # a closed store reopens on the next read, and closes again as a context manager
    with opened[0] as store:
        assert store.get(store.keys()[0]) is not None and images in _open_hdf5_files()
    assert images not in _open_hdf5_files()
