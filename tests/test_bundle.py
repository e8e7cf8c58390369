"""Bundles: save/load round trip, lazy loading, clear errors, hub ids offline, a self-contained BPE tokenizer."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from hirviz.bundle import (
    EVAL_END,
    EVAL_START,
    Bundle,
    BundleError,
    Reference,
    load_bundle,
    save_bundle,
)
from hirviz.model import ModelConfig, build_model
from hirviz.taxonomy import Taxonomy

REPO_ROOT = Path(__file__).resolve().parents[1]

# The CI config's tiny model (train/configs/ci.yaml), built directly.
TINY = dict(
    embed_dim=32,
    clip_overrides={"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "layers": 1, "width": 32,
                                                    "head_width": 16},
                    "text_cfg": {"layers": 1, "width": 32, "heads": 2}},
    dna_hidden=32, dna_layers=1, dna_heads=2, dna_intermediate=64, dna_dropout=0.0,
)
LINEAGES = [
    ("Diptera", "Cecidomyiidae", None, None),
    ("Diptera", "Sciaridae", "Bradysia", None),
    ("Hymenoptera", "Apidae", "Apis", "Apis mellifera"),
]
CANDIDATES = ["Diptera Cecidomyiidae", "Diptera Sciaridae Bradysia", "Hymenoptera Apidae Apis Apis mellifera"]
BARCODES = ["ACGTTGCA" * 60, "ACGGTTCA" * 55, "TTGACCGA" * 70]


def _embed(model, pixels: torch.Tensor, barcodes: list[str], texts: list[str]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        tokens = model.tokenize_dna(barcodes)
        image = model.encode_image(pixels)
        dna = model.encode_dna(tokens["input_ids"], tokens["attention_mask"])
        fused, _ = model.fuse(image, dna)
        text = model.encode_text(model.tokenize_text(texts))
    return {k: v.numpy() for k, v in dict(image=image, dna=dna, fused=fused, text=text).items()}


def _write(out: Path, model, **overrides) -> Path:
    """Save a bundle of ``model`` over the three-specimen toy data set."""
    torch.manual_seed(1)
    pixels = torch.randn(len(LINEAGES), 3, *model.image_size)
    z = _embed(model, pixels, BARCODES, CANDIDATES)
    reference = {
        "ids": ["S0", "S1", "S2"], "ranks": LINEAGES, "barcodes": BARCODES,
        "image": z["image"], "dna": z["dna"], "fused": z["fused"],
        "has_image": [True, True, False], "has_dna": [True, True, True],
        "layouts": {"dna": np.arange(6, dtype=np.float32).reshape(3, 2)},
    }
    kwargs = dict(name="toy", model=model, taxonomy=Taxonomy.from_lineages(LINEAGES), candidates=CANDIDATES,
                  candidate_ranks=LINEAGES, text_embeddings=z["text"], reference=reference,
                  training_config={"optim": {"epochs": 1}}, objective="clibd-hir-fuse",
                  provenance={"run": "toy"}, card="# toy\n\nA toy model.\n")
    kwargs.update(overrides)
    return save_bundle(out, **kwargs)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(ModelConfig(**TINY)).eval()


@pytest.fixture()
def bundle_dir(tmp_path: Path, tiny_model) -> Path:
    return _write(tmp_path / "bundle", tiny_model)


def test_round_trip_gives_identical_embeddings(bundle_dir: Path, tiny_model) -> None:
    bundle = load_bundle(bundle_dir)
    assert bundle.name == "toy" and bundle.objective == "clibd-hir-fuse"
    assert bundle.training == {"optim": {"epochs": 1}} and bundle.provenance == {"run": "toy"}
    assert bundle.candidates == CANDIDATES
    assert bundle.candidate_ranks == LINEAGES
    assert bundle.taxonomy.to_dict() == Taxonomy.from_lineages(LINEAGES).to_dict()
    assert bundle.model_config == tiny_model.config
    assert bundle.eval_results is None

    pixels = torch.randn(4, 3, *tiny_model.image_size)
    barcodes = ["ACGTAC" * 90, "GGTACA" * 20, "TTAGCA" * 100, "ACGT" * 10]
    expected = _embed(tiny_model, pixels, barcodes, CANDIDATES)
    got = _embed(bundle.model, pixels, barcodes, CANDIDATES)
    assert not bundle.model.training
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    np.testing.assert_array_equal(bundle.text_embeddings, expected["text"])

    ref = bundle.reference
    assert len(ref) == 3 and ref.ids.tolist() == ["S0", "S1", "S2"]
    assert ref.ranks[0].tolist() == ["Diptera", "Cecidomyiidae", "", ""]
    np.testing.assert_array_equal(ref.labels, bundle.taxonomy.encode(LINEAGES))
    assert ref.barcodes.tolist() == BARCODES
    assert sorted(ref.embeddings) == ["dna", "fused", "image"]
    assert all(v.dtype == np.float32 and v.shape == (3, 32) for v in ref.embeddings.values())
    assert ref.has_image.tolist() == [True, True, False]
    np.testing.assert_array_equal(ref.layouts["dna"], np.arange(6, dtype=np.float32).reshape(3, 2))


def test_files_are_readable_by_plain_tools(bundle_dir: Path) -> None:
    config = json.loads((bundle_dir / "config.json").read_text())
    assert config["format_version"] == 1 and config["model"]["embed_dim"] == 32
    text = np.load(bundle_dir / "text_embeddings.npy")
    assert text.dtype == np.float32 and text.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(text, axis=1), 1.0, atol=1e-5)
    with h5py.File(bundle_dir / "reference.h5") as h5:
        assert h5.attrs["format_version"] == 1
        assert h5["embeddings/image"].dtype == np.float32
        assert h5["ranks"].shape == (3, 4) and h5["ranks"].asstr()[2, 3] == "Apis mellifera"
    from safetensors.numpy import load_file

    assert len(load_file(bundle_dir / "model.safetensors")) > 10
    assert "# toy" in (bundle_dir / "README.md").read_text()


def test_model_and_reference_load_lazily(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hirviz.model

    def refuse(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(hirviz.model, "build_model", refuse)
    reads = []
    original_load = Reference.load.__func__
    monkeypatch.setattr(Reference, "load",
                        classmethod(lambda cls, path: reads.append(path) or original_load(cls, path)))
    bundle = load_bundle(bundle_dir)
    assert bundle.text_embeddings.shape == (3, 32) and bundle.candidates  # cheap parts are there already
    assert reads == []
    assert bundle.reference is bundle.reference
    assert len(reads) == 1
    with pytest.raises(AssertionError, match="the model was built"):
        _ = bundle.model


def test_opening_a_bundle_imports_neither_train_nor_open_clip(bundle_dir: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        import hirviz.bundle
        assert not [m for m in sys.modules if m == "train" or m.startswith("train.")], "train imported"
        bundle = hirviz.load_bundle({str(bundle_dir)!r})
        bundle.candidates, bundle.text_embeddings, bundle.reference
        assert "open_clip" not in sys.modules, "open_clip imported before the model was asked for"
        bundle.model
        assert not [m for m in sys.modules if m == "train" or m.startswith("train.")], "train imported"
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
    # The weights come from the bundle: open_clip's random-initialisation warning would only mislead.
    assert "initialized randomly" not in result.stderr


def test_newer_format_version_is_refused(bundle_dir: Path) -> None:
    config = json.loads((bundle_dir / "config.json").read_text())
    config["format_version"] = 2
    (bundle_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="format_version 2, newer than this hirviz understands"):
        load_bundle(bundle_dir)
    del config["format_version"]
    (bundle_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="not a hirviz bundle"):
        load_bundle(bundle_dir)


def test_newer_reference_version_is_refused(bundle_dir: Path) -> None:
    with h5py.File(bundle_dir / "reference.h5", "a") as h5:
        h5.attrs["format_version"] = 3
    with pytest.raises(BundleError, match="reference.h5 has format_version 3"):
        load_bundle(bundle_dir)


def test_files_that_disagree_are_reported(bundle_dir: Path, tmp_path: Path) -> None:
    np.save(bundle_dir / "text_embeddings.npy", np.eye(2, 32, dtype=np.float32))
    with pytest.raises(BundleError, match=r"text embeddings have shape \(2, 32\), expected \(3, 32\)"):
        load_bundle(bundle_dir)

    other = _write(tmp_path / "other", build_model(ModelConfig(**TINY)).eval())
    with h5py.File(other / "reference.h5", "a") as h5:
        del h5["embeddings/dna"]
        h5["embeddings/dna"] = np.zeros((3, 16), dtype=np.float32)
    with pytest.raises(BundleError, match=r"embeddings/dna has shape \(3, 16\), expected \(3, 32\)"):
        load_bundle(other)

    (other / "model.safetensors").unlink()
    with pytest.raises(BundleError, match="missing model.safetensors"):
        load_bundle(other)


def test_weights_that_do_not_fit_the_config_are_reported(bundle_dir: Path) -> None:
    config = json.loads((bundle_dir / "config.json").read_text())
    config["model"]["dna_layers"] = 2
    (bundle_dir / "config.json").write_text(json.dumps(config))
    bundle = load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="does not match the model config: .* missing tensors"):
        _ = bundle.model


def test_hub_id_offline_fails_fast_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # huggingface_hub reads the variable once, on import
    with pytest.raises(BundleError) as info:
        load_bundle("hirviz-tests/no-such-bundle")
    message = str(info.value)
    assert "\n" not in message
    assert "hirviz-tests/no-such-bundle" in message and "HF_HUB_OFFLINE" in message


def test_bad_paths_are_reported(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no bundle directory at"):
        load_bundle(tmp_path / "missing")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(BundleError, match="is a file"):
        load_bundle(tmp_path / "file.txt")
    with pytest.raises(BundleError, match="not a complete hirviz bundle: missing config.json"):
        load_bundle(tmp_path)


def test_save_replaces_a_bundle_but_not_other_folders(tmp_path: Path, tiny_model) -> None:
    out = _write(tmp_path / "b", tiny_model)
    _write(out, tiny_model, name="again")
    assert load_bundle(out).name == "again"
    assert [p.name for p in tmp_path.iterdir()] == ["b"]  # no temporary or backup folders left behind
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not a bundle; refusing to overwrite"):
        _write(precious, tiny_model)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_reference_rows_must_agree(tiny_model, tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"ranks has shape \(2, 4\), expected \(3, 4\)"):
        Reference.from_dict({"ids": ["a", "b", "c"], "ranks": LINEAGES[:2], "dna": np.zeros((3, 32))},
                            taxonomy=Taxonomy.from_lineages(LINEAGES))
    with pytest.raises(BundleError, match="text embeddings are not L2-normalised"):
        _write(tmp_path / "b", tiny_model, text_embeddings=np.ones((3, 32), dtype=np.float32))


def test_update_eval_writes_results_and_refreshes_the_card(bundle_dir: Path) -> None:
    bundle = load_bundle(bundle_dir)
    assert "Not evaluated yet" in bundle.card
    results = {"clean": {"dna": {"order": {"top1": 97.0, "top5": 100.0}, "species": {"top1": 41.5, "top5": 70.0}},
                         "image": {"order": {"top1": 88.0, "top5": 99.0}, "species": {"top1": 12.0, "top5": 30.0}}},
               "sweep": [{"strength": 1.0}]}
    bundle.update_eval(results)
    again = load_bundle(bundle_dir)
    assert again.eval_results == results
    card = again.card
    assert "Not evaluated yet" not in card and card.count(EVAL_START) == 1 and card.count(EVAL_END) == 1
    assert "| dna | 97.0 / 100.0 | 41.5 / 70.0 |" in card
    assert "# toy" in card  # the rest of the card is kept
    bundle.update_eval({"clean": {"fused": {"order": {"top1": 99.0, "top5": 100.0}}}})
    card = load_bundle(bundle_dir).card
    assert "| fused | 99.0 / 100.0 |" in card and "| dna |" not in card


def test_bpe_tokenizer_travels_with_the_bundle(shared_data: Path, tmp_path: Path) -> None:
    source = tmp_path / "tokenizer" / "tokenizer.json"
    source.parent.mkdir()
    shutil.copy(shared_data / "tokenizers" / "barcode_bpe_4096" / "tokenizer.json", source)
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**TINY, "dna_tokenizer": str(source)})).eval()
    out = _write(tmp_path / "bundle", model)
    shutil.rmtree(source.parent)  # the bundle must not need the original file
    moved = tmp_path / "elsewhere" / "bundle"
    shutil.move(out, moved)

    bundle = load_bundle(moved)
    spec = bundle.config["model"]["dna_tokenizer"]
    assert spec["type"] == "bpe" and (moved / spec["tokenizer_file"]).is_file()
    assert bundle.model.dna_tokenizer.tokenizer_file.parent == moved
    barcodes = ["ACGTTGCAACGT" * 40, "TTGACCGA" * 30]
    ids = bundle.model.tokenize_dna(barcodes)["input_ids"]
    assert ids.tolist() == model.tokenize_dna(barcodes)["input_ids"].tolist()
    pixels = torch.zeros(2, 3, *model.image_size)
    np.testing.assert_array_equal(_embed(bundle.model, pixels, barcodes, CANDIDATES)["dna"],
                                  _embed(model, pixels, barcodes, CANDIDATES)["dna"])


def test_bundle_class_is_what_load_bundle_returns(bundle_dir: Path) -> None:
    import hirviz

    bundle = hirviz.load_bundle(str(bundle_dir))
    assert isinstance(bundle, Bundle) and bundle.path == bundle_dir
    assert "toy" in repr(bundle)


def test_reading_a_bundle_leaves_no_hdf5_file_open(bundle_dir: Path) -> None:
    def open_files() -> set[str]:
        return {Path(f.name.decode()).name for f in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)}

    bundle = load_bundle(bundle_dir)  # checks the reference header
    assert len(bundle.reference) == 3  # reads the whole bank
    assert "reference.h5" not in open_files()
    with pytest.raises(BundleError):
        Reference.load(bundle_dir / "config.json")  # not HDF5: refused, and nothing left open
    assert "reference.h5" not in open_files() and "config.json" not in open_files()


def test_fusion_trained_is_the_bundle_s_explicit_flag(tmp_path: Path, tiny_model) -> None:

    # written by save_bundle (from the training config when not given) and read back as it is
    inferred = load_bundle(_write(tmp_path / "inferred", tiny_model))
    assert json.loads((inferred.path / "config.json").read_text())["fusion_trained"] is True
    assert inferred.fusion_trained
    assert not load_bundle(_write(tmp_path / "explicit", tiny_model, fusion_trained=False)).fusion_trained
    # a bad flag is refused on opening, with its key named
    config = json.loads((inferred.path / "config.json").read_text())
    (inferred.path / "config.json").write_text(json.dumps({**config, "fusion_trained": "yes"}))
    with pytest.raises(BundleError, match="fusion_trained"):
        load_bundle(inferred.path)
