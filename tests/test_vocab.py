"""A run that names no barcode vocabulary (or a missing one) trains a BPE one on its training split."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hirviz.dna_tokenizers import BPETokenizer, load_dna_tokenizer
from train.__main__ import add_fit_arguments as add_arguments
from train.__main__ import run_fit as run
from train.config import load_config
from train.vocab import resolve_dna_vocabulary, train_barcode_bpe

REAL_DNA = Path(__file__).resolve().parents[1] / "train" / "configs" / "real_dna.yaml"


@pytest.fixture(scope="module")
def barcode_tsv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A barcode TSV of 40 specimens, 4 species of 2 genera, each species with its own motif."""
    rng = np.random.default_rng(0)
    rows = []
    for s in range(4):
        motif = "".join(rng.choice(list("ACGT"), 30))
        for i in range(10):
            tail = "".join(rng.choice(list("ACGT"), 60))
            rows.append({"processid": f"P{s}{i:02d}", "order": "Diptera", "family": "Phoridae",
                         "genus": f"Genus{s // 2}", "species": f"Genus{s // 2} sp{s}", "dna_barcode": motif * 4 + tail})
    path = tmp_path_factory.mktemp("barcodes") / "barcodes.tsv"
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return path


def _fit(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return run(parser.parse_args(list(argv)))


def test_a_missing_vocabulary_is_trained_on_the_training_split_and_bundled(
    barcode_tsv: Path, tmp_path: Path, no_umap: None
) -> None:
    out, bundle_dir = tmp_path / "run", tmp_path / "bundle"
    assert _fit("--config", str(REAL_DNA), "--max-steps", "1", "--export", str(bundle_dir),
                f"data.metadata={barcode_tsv}", f"run.out_dir={out}", "data.batch_size=10",
                f"model.dna_tokenizer={tmp_path / 'not-there'}") == 0
    vocab = out / "dna_tokenizer" / "tokenizer.json"
    assert vocab.is_file()
    # The run's config points at it, so --resume and export use the same vocabulary.
    assert load_config(out / "config.yaml").model.dna_tokenizer == str(out / "dna_tokenizer")

    # Trained on exactly the training rows of the run's split (the test rows never reach it), deterministically.
    split = np.load(out / "split.npz")
    barcodes = pd.read_csv(barcode_tsv, sep="\t", dtype=str)["dna_barcode"]
    again = train_barcode_bpe(barcodes.iloc[split["train"]], tmp_path / "again")
    assert again.read_bytes() == vocab.read_bytes()
    assert again.read_bytes() != train_barcode_bpe(barcodes, tmp_path / "all").read_bytes()

    # The bundle carries a copy and tokenises as the run did.
    from hirviz.bundle import load_bundle

    tokenizer = load_bundle(bundle_dir).model.dna_tokenizer
    assert isinstance(tokenizer, BPETokenizer) and tokenizer.tokenizer_file.parent == bundle_dir
    run_tokenizer = load_dna_tokenizer(out / "dna_tokenizer")
    sample = list(barcodes.iloc[:3])
    for key, value in run_tokenizer(sample).items():
        assert value.equal(tokenizer(sample)[key]), key
    # A motif repeated in every barcode of a species is worth merging: tokens are longer than single bases.
    assert tokenizer(sample)["attention_mask"].sum(1).max() < len(sample[0]) // 2


def test_bpe_spec_asks_for_a_vocabulary_of_that_size(barcode_tsv: Path, tmp_path: Path) -> None:
    cfg = load_config(REAL_DNA, [f"data.metadata={barcode_tsv}", "model.dna_tokenizer=bpe:64"])
    barcodes = pd.read_csv(barcode_tsv, sep="\t", dtype=str)["dna_barcode"]
    resolved = resolve_dna_vocabulary(cfg, barcodes, tmp_path)
    tokenizer = load_dna_tokenizer(resolved.model.dna_tokenizer)
    assert tokenizer.vocab_size == 64
    with pytest.raises(ValueError, match="'bpe' or 'bpe:N'"):
        resolve_dna_vocabulary(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dna_tokenizer="bpe:x")),
                               barcodes, tmp_path)


def test_existing_vocabularies_are_left_alone_and_a_pretrained_encoder_needs_its_own(tmp_path: Path) -> None:
    cfg = load_config(REAL_DNA, ["model.dna_tokenizer=kmer:4"])
    assert resolve_dna_vocabulary(cfg, [], tmp_path) is cfg
    assert not (tmp_path / "dna_tokenizer").exists()
    pretrained = load_config(REAL_DNA, ["model.dna_encoder=auto", "model.dna_model=some/dna-model",
                                        f"model.dna_tokenizer={tmp_path / 'missing.json'}"])
    with pytest.raises(FileNotFoundError, match="missing.json.*some/dna-model needs its own vocabulary"):
        resolve_dna_vocabulary(pretrained, ["ACGT"], tmp_path)


def test_missing_input_files_are_one_line_errors(barcode_tsv: Path, tmp_path: Path) -> None:
    cases = [
        (["--config", str(tmp_path / "nope.yaml")], "nope.yaml"),
        ([f"data.metadata={tmp_path / 'missing.tsv'}"], "metadata file not found: .*missing.tsv"),
        ([f"data.metadata={barcode_tsv}", f"data.images={tmp_path / 'missing.hdf5'}",
          "model.dna_tokenizer=kmer"], "not found: .*missing.hdf5"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit, match=message) as exc:
            _fit(*argv, f"run.out_dir={tmp_path / 'run'}")
        assert "\n" not in str(exc.value.code) and str(exc.value.code).startswith("python -m train fit:")
