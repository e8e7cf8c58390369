"""A BPE barcode vocabulary for a run that names none (or names one that is not there).

``model.dna_tokenizer`` is resolved before the model is built:

- ``"kmer"``, ``"kmer:K"``, a config dict, or an existing ``tokenizer.json`` (or folder holding one): used as is;
- ``"bpe"`` or ``"bpe:N"``: a vocabulary of N tokens (default 4096) is trained on the *training split's* barcodes;
- a path that does not exist: the same training, with a warning, when the DNA encoder is trained from scratch
  (``dna_encoder: kmer-bert``, whose embedding table follows the vocabulary); a pretrained encoder
  (``dna_encoder: auto``) needs its own vocabulary, so that is a :class:`FileNotFoundError`.

The trained vocabulary is written to ``<run>/dna_tokenizer/tokenizer.json`` and the run's config points at it, so
``--resume``, ``export`` (which copies it into the bundle) and ``eval`` all use the same one. Training uses the
Hugging Face ``tokenizers`` BPE trainer on upper-cased barcodes in split order, which gives the same vocabulary on
every run; only test-split barcodes never reach it, so held-out scores are not helped by the vocabulary.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from train import distributed
from train.config import TrainConfig

logger = logging.getLogger(__name__)

DEFAULT_VOCAB_SIZE = 4096
VOCAB_DIR = "dna_tokenizer"
# The names hirviz.dna_tokenizers.BPETokenizer expects by default; [UNK] first so that unseen symbols have an id.
SPECIAL_TOKENS = ("[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]")
ALPHABET = ("A", "C", "G", "T", "N")


def train_barcode_bpe(barcodes: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Path:
    """Train a BPE vocabulary on ``barcodes`` and save it as ``out_dir/tokenizer.json``; returns that path.

    Each barcode is one word (no pre-tokenizer: a barcode has no spaces to split on), the alphabet is ACGTN, and
    the special tokens are the BERT names :class:`hirviz.dna_tokenizers.BPETokenizer` uses. A small training set gives
    fewer than ``vocab_size`` tokens (BPE stops when no pair occurs twice).
    """
    from tokenizers import Tokenizer, models, trainers

    if not isinstance(vocab_size, int) or vocab_size < len(SPECIAL_TOKENS) + len(ALPHABET) + 1:
        raise ValueError(f"a BPE vocabulary needs room for the special tokens and ACGTN, got size {vocab_size!r}")
    sequences = [b.upper() for b in barcodes if b]
    if not sequences:
        raise ValueError("cannot train a BPE barcode vocabulary: the training split has no barcodes "
                         "(set model.dna_tokenizer=kmer, or use metadata with a barcode column)")
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=list(ALPHABET), show_progress=False)
    tokenizer.train_from_iterator(sequences, trainer=trainer, length=len(sequences))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tokenizer.json"
    tmp = path.with_name(path.name + ".tmp")
    tokenizer.save(str(tmp))
    os.replace(tmp, path)  # a killed run never leaves a half-written vocabulary for --resume to read
    return path


def _requested_size(spec: object) -> int | None:
    """N for ``"bpe"`` / ``"bpe:N"``, else None."""
    if not isinstance(spec, str) or not (spec == "bpe" or spec.startswith("bpe:")):
        return None
    size = spec.partition(":")[2] or str(DEFAULT_VOCAB_SIZE)
    if not size.isdigit():
        raise ValueError(f"model.dna_tokenizer={spec!r}: expected 'bpe' or 'bpe:N' with N an integer")
    return int(size)


def _names_existing_vocabulary(spec: str) -> bool:
    if spec == "kmer" or spec.startswith("kmer:"):
        return True
    path = Path(spec)
    return path.is_file() or (path / "tokenizer.json").is_file()


def resolve_dna_vocabulary(cfg: TrainConfig, train_barcodes: Iterable[str | None], out_dir: str | os.PathLike,
                           is_main: bool = True) -> TrainConfig:
    """``cfg`` with ``model.dna_tokenizer`` pointing at a vocabulary that exists (see the module docstring).

    Under torchrun the main rank trains and writes the vocabulary, the others wait for it; a vocabulary already in
    the run directory (a resumed run) is reused rather than retrained.
    """
    spec = cfg.model.dna_tokenizer
    if not isinstance(spec, str):
        return cfg
    size = _requested_size(spec)
    if size is None:
        if _names_existing_vocabulary(spec):
            return cfg
        if cfg.model.dna_encoder != "kmer-bert":
            raise FileNotFoundError(f"DNA tokenizer not found: {spec} (model.dna_tokenizer); the pretrained "
                                    f"{cfg.model.dna_model} needs its own vocabulary")
        size = DEFAULT_VOCAB_SIZE
        if is_main:
            logger.warning("DNA tokenizer %s not found: training a %d-token BPE vocabulary on the training barcodes",
                           spec, size)
    vocab_dir = Path(out_dir) / VOCAB_DIR
    if is_main and not (vocab_dir / "tokenizer.json").is_file():
        path = train_barcode_bpe((b for b in train_barcodes if b is not None), vocab_dir, size)
        logger.info("trained a BPE barcode vocabulary of %d tokens: %s", _vocab_size(path), path)
    distributed.barrier()
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dna_tokenizer=str(vocab_dir)))


def _vocab_size(path: Path) -> int:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
