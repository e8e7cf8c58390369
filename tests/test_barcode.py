"""Parsing pasted barcodes / FASTA, and the k-mer and BPE tokenizers."""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hirviz.barcode import (
    BarcodeError,
    BPETokenizer,
    FastaRecord,
    KmerTokenizer,
    load_dna_tokenizer,
    parse_barcode,
    parse_fasta,
)

BARCODE = "AACATTATATTTTATTTTTGGAATTTGAGCAGGAATAGTAGGAACTTCATTAAGAATTTTAATTCGAGCTGAATTAGGTCAACCAGGATCATTAATTGG"


# ---------------------------------------------------------------------------------------------------- parsing


def test_raw_sequence_is_returned_upper_case() -> None:
    assert parse_barcode(BARCODE.lower()) == BARCODE


def test_formatting_is_dropped_whitespace_line_numbers_and_gaps() -> None:
    genbank = "        1 aacattatat tttatttttg\n       21 gaat--ttga .gcagg\r\n"
    assert parse_barcode(genbank) == "AACATTATATTTTATTTTTGGAATTTGAGCAGG"
    # Web pages slip in non-breaking and zero-width spaces.
    assert parse_barcode("ACG\u00a0T\u200bAC\tGT") == "ACGTACGT"


def test_iupac_codes_become_n_and_rna_becomes_dna() -> None:
    assert parse_barcode("ACGTRYSWKMBDHVACGTACGTAC") == "ACGT" + "N" * 10 + "ACGTACGTAC"
    assert parse_barcode("acguuacg") == "ACGTTACG"


def test_single_fasta_record() -> None:
    assert parse_barcode(f">BIOUG001-22|Diptera|COI-5P\n{BARCODE[:50]}\n{BARCODE[50:]}\n") == BARCODE


def test_parse_fasta_reads_many_records_with_names_and_skips_comments() -> None:
    text = f">first sample\n{BARCODE}\n\n;a comment\n>second\nacgt\nacgt\n"
    assert parse_fasta(text) == [FastaRecord("first sample", BARCODE), FastaRecord("second", "ACGTACGT")]


def test_parse_fasta_without_header_is_one_nameless_record() -> None:
    assert parse_fasta("acgtacgt") == [FastaRecord("", "ACGTACGT")]


def test_bytes_are_decoded() -> None:
    assert parse_barcode(b">x\nACGTACGT\n") == "ACGTACGT"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        (" \n\t ", "empty"),
        (">only a header\n", "no DNA sequence"),
        ("-- 123 ..", "no DNA sequence"),
        ("MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ", "protein"),
        ("ACGT?ACGT", "'?'"),
        ("ACGTNNNNNNNNNNNNNNNNNNNN", "N (unknown"),
        (f">a\n{BARCODE}\n>b\n{BARCODE}\n", "several as a batch"),
        (f"{BARCODE}\n>b\n{BARCODE}\n", "before the first FASTA header"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary"),
        ("ACGT\x00\x01\x02\x03\x04\x05", "binary"),
        (b"\xff\xfe\xfa ACGT", "binary"),
    ],
)
def test_rejections_have_clear_messages(text: str | bytes, message: str) -> None:
    with pytest.raises(BarcodeError, match=message.replace("?", r"\?").replace("(", r"\(")):
        parse_barcode(text)


def test_non_text_is_rejected() -> None:
    with pytest.raises(BarcodeError, match="expected text"):
        parse_barcode(12345)  # type: ignore[arg-type]


def test_too_long_is_rejected_naming_the_limit() -> None:
    with pytest.raises(BarcodeError, match="limit is 20,000 bp"):
        parse_barcode("ACGT" * 25_000)
    with pytest.raises(BarcodeError, match="limit is 100 bp"):
        parse_barcode("A" * 101, max_length=100)
    assert parse_barcode("A" * 100, max_length=100) == "A" * 100


def test_parse_fasta_errors_name_the_record() -> None:
    with pytest.raises(BarcodeError, match=r"record 2 \('protein'\).*protein"):
        parse_fasta(f">good\n{BARCODE}\n>protein\nMKTAYIAKQRQISFV\n")
    with pytest.raises(BarcodeError, match=r"record 2 \('empty'\)"):
        parse_fasta(f">good\n{BARCODE}\n>empty\n>third\nACGT\n")


def test_parsing_does_not_load_torch_and_the_tokenizers_keep_their_old_import_path() -> None:
    # The tokenizers live in hirviz.dna_tokenizers; code written against hirviz.barcode must keep working.
    code = ("import sys; from hirviz.barcode import parse_barcode; assert parse_barcode('acgt') == 'ACGT'; "
            "assert 'torch' not in sys.modules, 'parsing imported torch'; "
            "import hirviz.barcode as b, hirviz.dna_tokenizers as t; "
            "assert b.KmerTokenizer is t.KmerTokenizer and b.load_dna_tokenizer is t.load_dna_tokenizer; "
            "from hirviz.barcode import BPETokenizer, DnaTokenizer, TokenizerNotFoundError; "
            "assert (BPETokenizer, DnaTokenizer, TokenizerNotFoundError) == "
            "(t.BPETokenizer, t.DnaTokenizer, t.TokenizerNotFoundError); "
            "assert not hasattr(b, 'NoSuchName')")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1], timeout=120)


# ---------------------------------------------------------------------------------------------------- k-mers


def _kmer_id(kmer: str) -> int:
    """The expected id: 3 + rank of the k-mer in lexicographic ACGT order."""
    return 3 + sum("ACGT".index(base) * 4 ** (len(kmer) - 1 - i) for i, base in enumerate(kmer))


def test_kmer_defaults_match_barcodebert() -> None:
    tok = KmerTokenizer()
    assert (tok.k, tok.max_tokens, tok.vocab_size) == (5, 133, 4**5 + 3)
    assert (tok.mask_token_id, tok.cls_token_id, tok.unk_token_id, tok.pad_token_id) == (0, 1, 2, 2)


def test_kmer_ids_are_lexicographic_after_three_specials() -> None:
    tok = KmerTokenizer(k=2, max_bp=32)
    kmers = ["".join(p) for p in itertools.product("ACGT", repeat=2)]
    ids = tok(["".join(kmers)])["input_ids"][0]
    assert ids.tolist() == [1] + list(range(3, 19))
    assert [_kmer_id(k) for k in kmers] == list(range(3, 19))


def test_kmer_batch_shapes_unk_and_padding_mask() -> None:
    tok = KmerTokenizer()
    out = tok([BARCODE, "ACGTNAAAAACCCC", "acgta" * 200])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (3, 133)
    assert ids.dtype == mask.dtype == torch.long
    assert (ids[:, 0] == 1).all() and (mask[:, 0] == 1).all()
    assert ids[0, 1:4].tolist() == [_kmer_id(BARCODE[i : i + 5]) for i in (0, 5, 10)]
    # ACGTN has an N -> UNK; the partial last k-mer CCCC is N-padded -> UNK but still real (mask 1).
    assert ids[1, 1:4].tolist() == [2, 3, 2]
    assert mask[1].tolist() == [1, 1, 1, 1] + [0] * 129
    assert (ids[1, 4:] == tok.pad_token_id).all()
    # 100 bp -> 20 real k-mers; 1000 bp is cut to 660 -> all 132 real, lower case read as upper.
    assert mask.sum(dim=1).tolist() == [21, 4, 133]
    assert (ids[2, 1:] == _kmer_id("ACGTA")).all()


def test_kmer_other_k_and_empty_sequence() -> None:
    tok = KmerTokenizer(k=6)
    assert tok.max_tokens == 111
    out = tok(["", "AAAAAA"])
    assert out["attention_mask"].sum(dim=1).tolist() == [1, 2]
    assert out["input_ids"][1, 1].item() == 3


def test_tokenizer_refuses_a_bare_string() -> None:
    with pytest.raises(TypeError, match="list of sequences"):
        KmerTokenizer()("ACGT")


@pytest.mark.parametrize(("k", "max_bp"), [(0, 660), (11, 660), (5, 4)])
def test_kmer_rejects_bad_settings(k: int, max_bp: int) -> None:
    with pytest.raises(ValueError):
        KmerTokenizer(k=k, max_bp=max_bp)


def test_kmer_config_round_trip_and_specs() -> None:
    tok = KmerTokenizer(k=4, max_bp=400)
    again = load_dna_tokenizer(json.loads(json.dumps(tok.to_config())))
    assert isinstance(again, KmerTokenizer) and again.to_config() == tok.to_config()
    assert load_dna_tokenizer("kmer").to_config() == {"type": "kmer", "k": 5, "max_bp": 660}
    assert load_dna_tokenizer("kmer:6").k == 6
    for bad in ("kmer:x", "no/such/tokenizer"):
        with pytest.raises(ValueError, match="bad tokenizer spec"):
            load_dna_tokenizer(bad)
    # A missing vocabulary is also a missing file, which command lines report in one line.
    with pytest.raises(FileNotFoundError, match="no/such/tokenizer.*no such file"):
        load_dna_tokenizer("no/such/tokenizer")
    with pytest.raises(ValueError, match="unknown tokenizer type"):
        load_dna_tokenizer({"type": "wordpiece"})


# ---------------------------------------------------------------------------------------------------- BPE


@pytest.fixture(params=["dnabert2_bpe", "barcode_bpe_4096"])
def bpe_dir(request: pytest.FixtureRequest, shared_data: Path) -> Path:
    return shared_data / "tokenizers" / request.param


def test_bpe_wraps_cls_sep_pads_to_longest_and_masks(bpe_dir: Path) -> None:
    tok = load_dna_tokenizer(bpe_dir)
    assert isinstance(tok, BPETokenizer)
    assert tok.vocab_size == 4096
    assert (tok.unk_token_id, tok.cls_token_id, tok.pad_token_id, tok.mask_token_id) == (0, 1, 3, 4)
    out = tok([BARCODE * 6, "ACGTACGT", BARCODE.lower()])
    ids, mask = out["input_ids"], out["attention_mask"]
    lengths = mask.sum(dim=1)
    assert ids.shape == mask.shape and ids.shape[1] == lengths.max()
    assert (ids[:, 0] == tok.cls_token_id).all()
    for row, n in enumerate(lengths.tolist()):
        assert ids[row, n - 1] == tok.sep_token_id
        assert (ids[row, n:] == tok.pad_token_id).all() and (mask[row, n:] == 0).all()
    # Upper-casing makes lower-case input tokenise the same; no real k-mer is unknown in a clean barcode.
    assert torch.equal(tok([BARCODE])["input_ids"][0], ids[2, : lengths[2]])
    assert (ids[mask.bool()] != tok.unk_token_id).all()


def test_bpe_truncates_to_max_tokens_keeping_sep(bpe_dir: Path) -> None:
    tok = BPETokenizer(bpe_dir / "tokenizer.json", max_tokens=16)
    out = tok([BARCODE * 5, "ACGT"])
    assert out["input_ids"].shape == (2, 16)
    assert out["input_ids"][0, -1] == tok.sep_token_id
    assert out["attention_mask"][0].all()


def test_bpe_config_round_trip_through_a_bundle_dir(bpe_dir: Path, tmp_path: Path) -> None:
    tok = BPETokenizer(bpe_dir / "tokenizer.json", max_tokens=300)
    config = json.loads(json.dumps(tok.to_config()))
    assert config["tokenizer_file"] == "tokenizer.json"
    # A bundle copies only the JSON: the special tokens must come from the config, not a neighbouring map.
    shutil.copy(tok.tokenizer_file, tmp_path / config["tokenizer_file"])
    again = load_dna_tokenizer(config, base_dir=tmp_path)
    assert isinstance(again, BPETokenizer) and again.max_tokens == 300
    for a, b in zip(tok([BARCODE, "ACGT"]).values(), again([BARCODE, "ACGT"]).values()):
        assert torch.equal(a, b)
    assert load_dna_tokenizer("tokenizer.json", base_dir=tmp_path).vocab_size == 4096


def test_bpe_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        BPETokenizer(tmp_path / "tokenizer.json")
