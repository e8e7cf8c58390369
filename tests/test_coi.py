"""COI barcode identification: input checks, reference hits, per-rank verdicts, reconciliation, batch and CLI.

The synthetic tests need nothing outside the repository: their barcodes descend from the consensus of the shipped
COI-5P profile HMM by seeded substitutions (a tree of orders, families, genera and species), so the HMM finds
them as real COI and their identities to one another follow the tree.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import hirviz
from hirviz.barcode import BarcodeError
from hirviz.coi import ROW_COLUMNS, assemble, identify_barcode, identify_fasta
from hirviz.coi_check import MAX_INPUT_BP, _profile, check_barcode, reverse_complement
from hirviz.coi_refs import RANK_THRESHOLDS, Hit, ReferenceSet, rank_verdicts
from hirviz.taxonomy import LEVELS

BASES = np.array(list("ACGT"))


def consensus() -> str:
    return _profile()[0].consensus.upper()


def substitute(rng: np.random.Generator, seq: str, fraction: float) -> str:
    """Change exactly round(fraction * len) positions, each to a different base."""
    arr = np.array(list(seq))
    for i in rng.choice(len(arr), round(fraction * len(arr)), replace=False):
        arr[i] = rng.choice([b for b in BASES if b != arr[i]])
    return "".join(arr)


@pytest.fixture(scope="module")
def tree() -> dict[str, object]:
    """2 orders x 2 families x 2 genera x 3 species, 3 specimens each, plus one query per species.

    Divergences (substitutions from the parent): order 6 %, family 4 %, genus 3 %, species 1.5 %, specimen
    0.5 %: members of a species are ~99 % identical, congeneric species ~96 %, confamilial genera ~90 %.
    """
    rng = np.random.default_rng(7)
    ids, ranks, seqs, queries = [], [], [], {}
    base = consensus()
    for o in range(2):
        o_seq = substitute(rng, base, 0.06)
        for f in range(2):
            f_seq = substitute(rng, o_seq, 0.04)
            for g in range(2):
                g_seq = substitute(rng, f_seq, 0.03)
                for s in range(3):
                    s_seq = substitute(rng, g_seq, 0.015)
                    lineage = (f"Order{o}", f"Fam{o}{f}", f"Gen{o}{f}{g}", f"Gen{o}{f}{g} sp{s}")
                    for n in range(3):
                        ids.append(f"R{o}{f}{g}{s}{n}")
                        ranks.append(lineage)
                        seqs.append(substitute(rng, s_seq, 0.005))
                    queries[lineage] = substitute(rng, s_seq, 0.005)
    return {"refs": ReferenceSet(ids, ranks, seqs, k=5), "queries": queries, "ids": ids, "ranks": ranks,
            "seqs": seqs}


# ------------------------------------------------------------------------------------------------ input checks


def test_consensus_is_found_and_reverse_complement_is_turned_around() -> None:
    seq = consensus()
    forward = check_barcode(seq)
    assert forward.coi_found and forward.orientation == "forward"
    assert forward.region.hmm_from <= 5 and forward.region.hmm_to >= 650
    backward = check_barcode(reverse_complement(seq))
    assert backward.coi_found and backward.orientation == "reverse-complement"
    assert backward.sequence == seq
    assert any("reverse-complemented" in note for note in backward.notes)


def test_users_checking_barcodes_at_once_get_the_same_answers() -> None:
    """The app serves two users at once: concurrent checks must neither crash the process (a shared pyhmmer
    pipeline did, with a segmentation fault) nor mix their answers up, and an answer (E-value included) must not
    depend on how many barcodes the process checked before."""
    rng = np.random.default_rng(3)
    base = consensus()
    queries = [substitute(rng, base, 0.05) for _ in range(6)]
    queries += [reverse_complement(q) for q in queries[:3]] + [q[100:420] for q in queries[3:]]
    expected = [(c.orientation, c.region, c.sequence) for c in map(check_barcode, queries)]

    def check_all(offset: int) -> list[tuple]:
        order = np.roll(np.arange(len(queries)), offset)
        got = {int(i): check_barcode(queries[i]) for _ in range(8) for i in order}
        return [(got[i].orientation, got[i].region, got[i].sequence) for i in range(len(queries))]

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(check_all, range(4)))
    assert all(a == expected for a in answers)


def test_every_cleaning_step_is_noted() -> None:
    seq = consensus()[:300]
    messy = seq[:60].lower() + "-" * 3 + seq[60:120].replace("T", "U") + "RY" + seq[122:]
    genbank = "\n".join(f"{i * 60 + 1:>9} {messy[i * 60:i * 60 + 30]} {messy[i * 60 + 30:i * 60 + 60]}"
                        for i in range(len(messy) // 60 + 1))
    check = check_barcode(f">first record\n{genbank}\n>second\n{consensus()}\n")
    notes = " | ".join(check.notes)
    assert check.name == "first record"
    for expected in ("2 records; only the first ('first record')", "lower-case", "U (RNA) read as T",
                     "IUPAC ambiguity code(s) (R, Y) replaced by N", "3 alignment gap", "digits removed",
                     "spaces and line breaks"):
        assert expected in notes
    assert check.sequence == seq[:120] + "NN" + seq[122:]
    assert check.coi_found


def test_a_clean_barcode_gets_no_cleaning_notes() -> None:
    assert check_barcode(consensus()).notes == []


@pytest.mark.parametrize("text", ["", "   \n\t ", ">only a header\n"])
def test_empty_input_is_refused_clearly(text: str) -> None:
    with pytest.raises(BarcodeError, match="empty|no DNA sequence"):
        identify_barcode(text)


def test_protein_is_refused_clearly() -> None:
    protein = "MFINRWLFSTNHKDIGTLYLLFGAWAGMVGTALSLLIRAELGQPGTLLGDDQIYNVIVTAHAFVMIFFMVMPIMIGGFGNWLVPLMIG"
    with pytest.raises(BarcodeError, match="protein"):
        identify_barcode(protein)


def test_huge_input_is_refused_and_a_long_one_is_cut_to_the_barcode() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(BarcodeError, match=f"limit is {MAX_INPUT_BP:,} bp"):
        check_barcode("".join(rng.choice(BASES, 100_000)))
    flank = "".join(rng.choice(BASES, 5000))
    long = check_barcode(flank + consensus() + flank)
    assert long.coi_found
    assert 640 <= len(long.sequence) <= 700
    assert any("cut to its COI-5P region" in note for note in long.notes)


def test_short_sequence_is_warned_about() -> None:
    check = check_barcode(consensus()[100:190])
    assert any("too short for a species-level" in w for w in check.warnings)


@pytest.mark.parametrize("kind", ["random", "at_rich"])
def test_non_coi_dna_is_reported_as_not_coi(kind: str, tree: dict) -> None:
    rng = np.random.default_rng(1)
    p = [0.25] * 4 if kind == "random" else [0.38, 0.12, 0.12, 0.38]  # AT-rich like insect rRNA genes
    seq = "".join(rng.choice(BASES, 600, p=p))
    result = identify_barcode(seq, tree["refs"])
    assert not result.check.coi_found
    assert any(w.startswith("not COI") for w in result.check.warnings)
    assert result.deepest_rank is None and result.to_row()["coi_found"] is False


def test_in_frame_stop_codon_is_flagged() -> None:
    seq = consensus()
    clean = check_barcode(seq)
    assert clean.stop_codons == []
    # HMM position 2 is a first codon position, so the consensus' codons start at 2, 5, ...: insert at one.
    at = 2 + 3 * 100 - 1
    check = check_barcode(seq[:at] + "TAA" + seq[at:])
    assert check.stop_codons == [at + 1]
    assert any("stop codon" in w and "NUMT" in w for w in check.warnings)


# ------------------------------------------------------------------------------------------ hits and verdicts


def test_synthetic_species_are_identified_by_alignment(tree: dict) -> None:
    for lineage, query in list(tree["queries"].items())[::5]:
        result = identify_barcode(query, tree["refs"], k=3)
        assert [result.answers[level].name for level in LEVELS] == list(lineage)
        assert all(result.answers[level].decided_by == "alignment" for level in LEVELS)
        assert len(result.hits) == 3 and result.hits[0].identity >= 98.0
        assert result.hits[0].ranks["species"] == lineage[3]
        assert result.hits[0].coverage == pytest.approx(100.0, abs=1.0)


def test_held_out_species_gets_its_genus_but_no_species(tree: dict) -> None:
    lineage = ("Order1", "Fam10", "Gen101", "Gen101 sp2")
    keep = [i for i, r in enumerate(tree["ranks"]) if r != lineage]
    refs = ReferenceSet([tree["ids"][i] for i in keep], [tree["ranks"][i] for i in keep],
                        [tree["seqs"][i] for i in keep], k=5)
    result = identify_barcode(tree["queries"][lineage], refs)
    assert [result.answers[level].name for level in LEVELS] == [*lineage[:3], ""]
    assert 95.0 <= result.hits[0].identity < 98.0


def test_partial_query_has_low_coverage_but_full_identity(tree: dict) -> None:
    lineage, query = next(iter(tree["queries"].items()))
    result = identify_barcode(query[150:450], tree["refs"])
    assert result.hits[0].identity >= 98.0
    assert result.hits[0].coverage == pytest.approx(100.0, abs=1.0)  # the query is covered, not the reference
    # 300 aligned bp are below the species rule's 400, so the species is withheld.
    assert RANK_THRESHOLDS["species"][1] > 300
    assert result.answers["genus"].name == lineage[2] and result.answers["species"].name == ""


def test_disagreeing_close_hits_name_nothing_at_that_rank(tree: dict) -> None:
    lineage, query = next(iter(tree["queries"].items()))
    ids = [f"X{i}" for i in range(4)]
    # Two equally close references from different genera: the genus cannot be named, nor anything below it.
    ranks = [lineage, lineage, (*lineage[:2], "Other", "Other sp"), (*lineage[:2], "Other", "Other sp")]
    refs = ReferenceSet(ids, ranks, [query] * 4, k=5)
    result = identify_barcode(query, refs)
    assert result.answers["family"].name == lineage[1]
    assert result.answers["genus"].name == "" and result.answers["species"].name == ""
    assert result.verdicts["genus"].conflict
    assert any("disagree at genus" in note for note in result.notes)


def test_an_n_run_does_not_lower_identity_or_cost_the_species(tree: dict) -> None:
    lineage, query = next(iter(tree["queries"].items()))
    masked = query[:300] + "N" * 60 + query[360:]  # an unread stretch, as METHOD.md's N-run degradation makes
    clean, holed = identify_barcode(query, tree["refs"]), identify_barcode(masked, tree["refs"])
    assert holed.hits[0].identity == pytest.approx(clean.hits[0].identity, abs=0.5)
    assert holed.hits[0].aligned <= clean.hits[0].aligned - 55  # the N columns are not compared
    assert holed.answers["species"].name == lineage[3]


def test_far_hits_do_not_outvote_close_ones() -> None:
    def hit(identity: float, order: str, n: int) -> Hit:
        return Hit(f"{order}{identity}{n}", {"order": order, "family": f"{order} f", "genus": "", "species": ""},
                   identity, 100.0, 600, 0.5)

    # Two close references of one order and many distant ones of another, all above the order threshold: COI
    # saturates at 85-90 % identity, so distant hits are near-random and must not turn a clear answer into a tie.
    hits = [hit(99.5, "Diptera", 0), hit(99.0, "Diptera", 1), *(hit(86.0, "Lepidoptera", n) for n in range(10))]
    assert rank_verdicts(hits)["order"].name == "Diptera"
    assert rank_verdicts(hits, near_best={level: 100.0 for level in LEVELS})["order"].conflict
    # Equally close hits that disagree still do.
    tie = [hit(99.5, "Diptera", 0), hit(99.4, "Lepidoptera", 0)]
    assert rank_verdicts(tie)["order"].conflict


def test_order_and_family_from_several_agreeing_hits_below_the_threshold() -> None:
    def hit(identity: float, n: int, order: str = "Hymenoptera") -> Hit:
        return Hit(f"r{n}", {"order": order, "family": "Formicidae", "genus": "", "species": ""}, identity, 100.0,
                   560, 0.5)

    # An ant whose genus is missing from the references: its closest hits are confamilial at ~86 % identity.
    three = [hit(86.5, 0), hit(86.2, 1), hit(86.0, 2)]
    verdicts = rank_verdicts(three)
    assert verdicts["order"].name == "Hymenoptera" and verdicts["family"].name == "Formicidae"
    assert verdicts["genus"].name == ""
    # One such hit is not enough below the family threshold (90 %), nor are agreeing hits of mixed orders.
    assert rank_verdicts(three[:1])["family"].name == "" and "3 needed" in rank_verdicts(three[:1])["family"].note
    mixed = [*three, hit(86.1, 3, "Diptera"), hit(86.05, 4, "Diptera")]  # 3 of 5: below AGREEMENT (75 %)
    assert rank_verdicts(mixed)["order"].name == ""


def test_one_outvoted_record_does_not_veto_a_clear_answer(tree: dict) -> None:
    lineage, query = next(iter(tree["queries"].items()))
    hits = identify_barcode(query, tree["refs"], k=50).hits
    # A mislabelled record as close as the second-best hit (inside the near-best window, so it does vote).
    wrong = Hit(hits[-1].id, {**hits[-1].ranks, "order": "Wrong"}, hits[1].identity, 100.0, 650, 0.5)
    verdicts = rank_verdicts([*hits, wrong])
    assert verdicts["order"].name == lineage[0] and "Wrong (1)" in verdicts["order"].note


# ------------------------------------------------------------------------------------------ reconciliation


def model_saying(*names_scores: tuple[str, float]):
    """A model callable; called with no argument, the per-rank answers it gives (for :func:`assemble`)."""
    return lambda seq=None: {level: [ns] for level, ns in zip(LEVELS, names_scores)}


def test_model_places_the_specimen_where_no_reference_is_close(tree: dict) -> None:
    lineage, query = next(iter(tree["queries"].items()))
    far = [i for i, r in enumerate(tree["ranks"]) if r[0] != lineage[0]]  # only the other order remains
    refs = ReferenceSet([tree["ids"][i] for i in far], [tree["ranks"][i] for i in far],
                        [tree["seqs"][i] for i in far], k=5)
    model = model_saying((lineage[0], 0.95), (lineage[1], 0.8), (lineage[2], 0.9), (lineage[3], 0.9))
    result = identify_barcode(query, refs, predictor=model)
    # Alone, the model places it at order and family; a genus or species with no close hit is most likely one
    # the model has never seen, so its confident genus and species are not given.
    assert [result.answers[level].name for level in LEVELS] == [*lineage[:2], "", ""]
    assert [result.answers[level].decided_by for level in LEVELS] == ["model"] * 2 + ["", ""]
    assert result.answers["family"].score == pytest.approx(0.8)
    row = result.to_row("q")
    assert row["decided_by"] == "order:model family:model" and row["deepest_rank"] == "family"


def test_nearest_hits_and_model_agreeing_name_a_rank_below_the_threshold() -> None:
    query = consensus()
    near = [Hit(f"R{i}", {"order": "O", "family": "F", "genus": "G", "species": ""}, 86.0 - 0.5 * i, 100.0, 600,
                0.5) for i in range(2)]
    agreeing = assemble(check_barcode(query), near, model_saying(("O", 0.3), ("F", 0.2), ("G", 0.9), ("G s", 0.9))())
    # order: a hit at 86 % names it; family: below 90 % and 2 hits (3 needed), but the model says F too.
    assert agreeing.answers["order"].decided_by == "alignment"
    assert (agreeing.answers["family"].name, agreeing.answers["family"].decided_by) == ("F", "alignment+model")
    assert "family: the model's F (0.20) agrees with a hit at 86.0 % identity" in agreeing.notes
    assert agreeing.answers["genus"].name == ""  # 86 % is far below a genus, whatever the model says
    other = assemble(check_barcode(query), near, model_saying(("O", 0.3), ("Other", 0.2))())
    assert other.answers["family"].name == "" and other.deepest_rank == "order"


def test_the_page_tells_apart_alignment_model_and_both() -> None:
    """Each decided_by value gets its own words and cell class in the app's answer table."""
    from types import SimpleNamespace

    from hirviz.ui.coi_view import coi_html

    near = [Hit(f"R{i}", {"order": "O", "family": "F", "genus": "G", "species": ""}, 86.0 - 0.5 * i, 100.0, 600,
                0.5) for i in range(2)]
    result = assemble(check_barcode(consensus()), near, model_saying(("O", 0.3), ("F", 0.2))())
    assert [result.answers[level].decided_by for level in LEVELS] == ["alignment", "alignment+model", "", ""]
    engine = SimpleNamespace(coi_name="real-coi", data_kind=lambda name: "real")
    page = coi_html(engine, result)
    assert page.count("class='hz-yes'>decided by alignment") == 1
    assert page.count("class='hz-both'>the model, backed by the nearest hits") == 1
    assert page.count("class='hz-na'>not named") == 2 and ".hz-both" in page


def test_close_hits_name_the_ranks_below_one_the_model_resolved() -> None:
    query = consensus()
    lineage = {"order": "Diptera", "family": "Cecidomyiidae", "genus": "Contarinia", "species": ""}
    good = [Hit(f"R{i}", lineage, 99.5, 100.0, 650, 0.9) for i in range(2)]
    # A contaminated record (a wasp name on a midge sequence) ties the closest hit: the order is disputed.
    bad = Hit("X", {"order": "Hymenoptera", "family": "", "genus": "", "species": ""}, 99.5, 100.0, 650, 0.9)
    hits = [*good, bad]
    assert rank_verdicts(hits)["order"].conflict and not rank_verdicts(hits)["family"].name
    assert rank_verdicts(hits, walk=False)["family"].name == "Cecidomyiidae"
    result = assemble(check_barcode(query), hits, model_saying(("Diptera", 0.9), ("Cecidomyiidae", 0.1))())
    assert [result.answers[level].name for level in LEVELS[:3]] == ["Diptera", "Cecidomyiidae", "Contarinia"]
    assert result.answers["order"].decided_by == "alignment+model"
    assert any("agrees with a hit" in n for n in result.notes)
    assert result.answers["genus"].decided_by == "alignment"
    # Without the model the disputed order stays open and nothing finer is named under it.
    assert assemble(check_barcode(query), hits).deepest_rank is None


def test_alignment_decides_over_a_contradicting_model(tree: dict) -> None:
    lineage, query = next(iter(tree["queries"].items()))
    model = model_saying(("Elsewhere", 0.99), ("Elsewhere f", 0.99), ("Elsewhere g", 0.99), ("Else s", 0.99))
    result = identify_barcode(query, tree["refs"], predictor=model)
    assert [result.answers[level].name for level in LEVELS] == list(lineage)
    assert any("the model says Elsewhere" in note for note in result.notes)


def test_without_references_or_model_it_abstains() -> None:
    result = identify_barcode(consensus())
    assert result.deepest_rank is None and result.hits == []
    assert result.check.coi_found


def test_identify_fasta_gives_one_row_per_record_and_survives_bad_ones(tree: dict) -> None:
    (lineage, query), (lineage2, query2) = list(tree["queries"].items())[:2]
    text = f">q1 first\n{query}\n>q2\nMKVLAAGIVE\n>q3\n{reverse_complement(query2)}\n"
    rows = list(identify_fasta(text, tree["refs"]))
    assert [r["id"] for r in rows] == ["q1", "q2", "q3"]
    assert all(list(r) == list(ROW_COLUMNS) for r in rows)
    assert rows[0]["species"] == lineage[3] and rows[2]["species"] == lineage2[3]
    assert rows[2]["orientation"] == "reverse-complement"
    assert rows[1]["species"] == "" and "protein" in rows[1]["notes"]


def test_batched_fasta_gives_the_same_rows_as_one_barcode_at_a_time(tree: dict, monkeypatch) -> None:
    import hirviz.coi

    monkeypatch.setattr(hirviz.coi, "_BATCH", 2)  # batches of 2: the last one is partial, one holds a bad record
    records = [(f"q{i}", q) for i, q in enumerate(list(tree["queries"].values())[:4])]
    records.insert(2, ("bad", "MKVLAAGIVE"))
    text = "".join(f">{name}\n{seq}\n" for name, seq in records)
    model = model_saying(("Order0", 0.9), ("Fam00", 0.7), ("Gen000", 0.2), ("x", 0.1))
    rows = list(identify_fasta(text, tree["refs"], predictor=model))
    assert [r["id"] for r in rows] == [name for name, _ in records]
    for row, (name, seq) in zip(rows, records):
        if name == "bad":
            assert row["species"] == "" and "protein" in row["notes"]
            continue
        assert row == identify_barcode(seq, tree["refs"], predictor=model).to_row(name)


def test_hits_many_equals_hits_one_by_one(tree: dict) -> None:
    queries = [*list(tree["queries"].values())[:3], ""]
    many = tree["refs"].hits_many(queries, k=5)
    assert many[-1] == [] and [tree["refs"].hits(q) for q in queries[:3]] == many[:3]


def test_package_level_api_and_cli(tree: dict, tmp_path) -> None:
    assert hirviz.identify_barcode is identify_barcode
    refs_tsv = tmp_path / "refs.tsv"
    with open(refs_tsv, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t")
        writer.writerow(["processid", *LEVELS, "dna_barcode"])
        writer.writerows([i, *r, s] for i, r, s in zip(tree["ids"], tree["ranks"], tree["seqs"]))
    lineage, query = next(iter(tree["queries"].items()))
    fasta = tmp_path / "q.fasta"
    fasta.write_text(f">spec1\n{query}\n>junk\nHELLO WORLD\n")
    out = tmp_path / "out.tsv"
    cmd = [sys.executable, "-m", "hirviz", "identify", "--fasta", str(fasta), "--references", str(refs_tsv),
           "--out", str(out)]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(out.open(), delimiter="\t"))
    assert [r["id"] for r in rows] == ["spec1", "junk"]
    assert rows[0]["species"] == lineage[3] and float(rows[0]["identity"]) >= 98.0
    missing = subprocess.run([sys.executable, "-m", "hirviz", "identify", "--fasta", str(fasta), "--bundle",
                              str(tmp_path / "no-such-bundle")], check=False, capture_output=True, text=True,
                             timeout=300)
    assert missing.returncode == 2 and "no-such-bundle" in missing.stderr


# The committed real COI-barcode bundle (real BOLD / BIOSCAN-5M barcodes; see assets/real-coi/README.md).
REAL_COI = Path(os.environ.get("HIRVIZ_REAL_COI", Path(__file__).resolve().parents[1] / "assets" / "real-coi"))


def test_cli_identifies_with_the_real_bundle_by_default(tmp_path, monkeypatch) -> None:
    from hirviz import __main__ as cli

    reference = hirviz.load_bundle(REAL_COI).reference
    row = next(i for i in range(len(reference)) if reference.ranks[i, 3] and len(reference.barcodes[i]) >= 600)
    fasta = tmp_path / "real.fasta"
    fasta.write_text(f">{reference.ids[row]}\n{reference.barcodes[row]}\n")
    out = tmp_path / "real.tsv"
    monkeypatch.setattr(cli, "DEFAULT_COI_BUNDLE", REAL_COI)
    assert cli.main(["identify", "--fasta", str(fasta), "--out", str(out)]) == 0
    rows = list(csv.DictReader(out.open(), delimiter="\t"))
    assert list(rows[0]) == list(ROW_COLUMNS)
    assert [rows[0][level] for level in LEVELS] == list(reference.ranks[row])
    assert rows[0]["best_hit"] == reference.ids[row] and float(rows[0]["identity"]) == 100.0
    assert rows[0]["decided_by"].startswith("order:alignment")
    monkeypatch.setattr(cli, "DEFAULT_COI_BUNDLE", tmp_path / "absent")
    assert cli.main(["identify", "--fasta", str(fasta)]) == 2  # no default bundle: a clear error, not a crash


def test_bench_identify_runs_on_a_small_reference_table(tree: dict, tmp_path, capsys) -> None:

    refs_tsv = tmp_path / "refs.tsv"
    with open(refs_tsv, "w", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t")
        writer.writerow(["processid", *LEVELS, "dna_barcode"])
        writer.writerows([i, *r, s] for i, r, s in zip(tree["ids"], tree["ranks"], tree["seqs"]))
    from conftest import load_repo_module

    bench = load_repo_module("bench_identify", "bench/bench_identify.py")
    out = bench.main(["--references", str(refs_tsv), "--queries", "3", "--batch", "4"])
    assert out["batch_n"] == 4 and out["total_p95_ms"] > 0
    assert "| total |" in capsys.readouterr().out


def test_a_bundle_predictor_is_used_as_the_model() -> None:
    from hirviz.predict import deepest_rank

    bundle_dir = Path(__file__).resolve().parents[1] / "assets" / "demo-hir-fuse"
    if not bundle_dir.is_dir():
        pytest.skip("the demo bundle is not in assets/")
    predictor = hirviz.load_bundle(bundle_dir).predictor()
    result = identify_barcode(consensus(), None, predictor=predictor)
    assert set(result.model_levels) == set(LEVELS) and result.model_levels["order"]
    # Without references the model alone names at most order and family (hirviz.coi.MODEL_ALONE).
    expected = deepest_rank({level: result.model_levels[level] for level in LEVELS[:2]}, 0.5)
    assert result.deepest_rank == expected
    for level in LEVELS[:LEVELS.index(expected) + 1 if expected else 0]:
        assert result.answers[level].name == result.model_levels[level][0][0]
        assert result.answers[level].decided_by == "model"


def test_a_tiny_chance_overlap_is_no_hit() -> None:
    rng = np.random.default_rng(3)
    unrelated = ["".join(rng.choice(BASES, 650)) for _ in range(5)]
    query = consensus()
    refs = ReferenceSet([f"U{i}" for i in range(5)] + ["C"], [("O", "F", "G", "G s")] * 6,
                        [*unrelated, substitute(rng, query, 0.2)], k=5)
    hits = identify_barcode(query, refs).hits
    assert [h.id for h in hits] == ["C"] and hits[0].coverage > 90.0


def test_the_engine_does_not_import_the_trainer() -> None:
    code = ("import sys, hirviz.coi, hirviz.coi_cli, hirviz.kmer; "
            "print(sorted(m for m in sys.modules if m == 'train' or m.startswith('train.')))")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=300)
    assert done.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------- protein hits


def synonymous(rng: np.random.Generator, seq: str, share: float) -> str:
    """``seq`` (a consensus-framed COI: codons start at index 1) with the third base of about ``share`` of its
    codons changed where the amino acid stays the same (invertebrate mitochondrial code)."""
    from hirviz.coi_protein import reference_proteins

    out = list(seq)
    for start in range(1, len(seq) - 2, 3):
        codon = seq[start:start + 3]
        if rng.random() >= share:
            continue
        same = [b for b in "ACGT" if b != codon[2]
                and reference_proteins([codon[:2] + b])[0] == reference_proteins([codon])[0]]
        if same:
            out[start + 2] = str(rng.choice(same))
    return "".join(out)


def test_reference_proteins_read_the_frame_the_profile_finds() -> None:
    from hirviz.coi_check import coding_protein
    from hirviz.coi_protein import reference_proteins

    seq = consensus()
    for shift in ("", "A", "AC"):  # whatever the reference's first codon position, the frame without stops
        check = check_barcode(shift + seq)
        protein = coding_protein(check.sequence, check.region)
        assert len(protein) > 200 and "*" not in protein
        assert protein in reference_proteins([shift + seq])[0]


def test_silent_changes_do_not_hide_the_family_from_the_protein_hits() -> None:
    """References of the query's family differ from it only by silent third-position changes (far by bases, the
    same protein); references of another family of the same order are about as far by bases but change the
    protein. The nucleotides cannot name the family; the protein hits can, and never a genus or species."""
    from types import SimpleNamespace

    from hirviz.ui.coi_view import coi_html

    rng = np.random.default_rng(3)
    query = consensus()
    kin = [synonymous(rng, query, 0.9) for _ in range(3)]
    other = [substitute(rng, query, 0.2) for _ in range(3)]
    ranks = [("O", "F", f"G{i}", f"G{i} s") for i in range(3)] + [("O", "Other", f"H{i}", f"H{i} s") for i in range(3)]
    refs = ReferenceSet([f"R{i}" for i in range(6)], ranks, kin + other, k=5)
    result = identify_barcode(query, refs)
    assert max(h.identity for h in result.hits) < RANK_THRESHOLDS["family"][0]  # no close hit at family
    assert result.verdicts["family"].name == ""
    assert result.protein_hits[0].identity == pytest.approx(100.0) and result.protein_hits[0].ranks["family"] == "F"
    assert result.answers["family"].name == "F" and result.answers["family"].decided_by == "protein"
    assert result.answers["genus"].name == "" and result.answers["species"].name == ""
    assert any("amino-acid identity" in note for note in result.notes)
    page = coi_html(SimpleNamespace(coi_name="real-coi", data_kind=lambda name: "real"), result)
    assert "class='hz-both'>decided by the protein (translated barcode)" in page
