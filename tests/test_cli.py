"""``python -m hirviz predict``: the same answers as the Python API, and one clear line for bad input."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hirviz.__main__ import DEFAULT_BUNDLE, EXIT_BAD_INPUT, main
from hirviz.barcode import BarcodeError, parse_barcode
from hirviz.degrade import DnaNoise
from hirviz.predict import ROW_COLUMNS
from hirviz.taxonomy import LEVELS

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from test_predict import make_tiny_bundle, specimen_barcode, specimen_image

    from hirviz.bundle import load_bundle

    root = tmp_path_factory.mktemp("cli")
    bundle_dir = make_tiny_bundle(root / "tiny")
    image = root / "beetle.png"
    specimen_image(40, size=(60, 45)).save(image)
    fasta = root / "beetle.fasta"
    fasta.write_text(f">BIOUG001-24 some beetle\n{specimen_barcode(40)}\n")
    return {"bundle": bundle_dir, "image": image, "fasta": fasta, "predictor": load_bundle(bundle_dir).predictor()}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "hirviz", *args], capture_output=True, text=True, env=env,
                          cwd=REPO_ROOT, timeout=300)


def test_csv_output_equals_the_api_rows(setup):
    args = ["--bundle", str(setup["bundle"]), "--image", str(setup["image"]), "--barcode", str(setup["fasta"]),
            "--blur", "3", "--dna-noise", "2", "--seed", "5", "--top-k", "3"]
    done = run_cli("predict", *args, "--format", "csv")
    assert done.returncode == 0, done.stderr
    got = list(csv.DictReader(io.StringIO(done.stdout)))
    assert done.stdout.splitlines()[0].split(",") == list(ROW_COLUMNS)

    fasta_text = setup["fasta"].read_text()
    expected = setup["predictor"].predict(setup["image"], fasta_text, blur_kernel=3,
                                          dna_noise=DnaNoise().scaled(2), seed=5, top_k=3)
    rows = expected.to_rows(file_name="beetle.png")
    assert len(got) == len(rows) and {g["query"] for g in got} == {"image", "dna", "avg", "fused"}
    for g, r in zip(got, rows):
        assert {k: g[k] for k in ROW_COLUMNS if k != "score"} == {k: str(r[k]) for k in ROW_COLUMNS if k != "score"}
        assert float(g["score"]) == pytest.approx(r["score"], abs=1e-6)
    assert {g["barcode_id"] for g in got} == {"BIOUG001-24"}


def test_json_output_equals_the_api_dict(setup, capsys):
    sequence = parse_barcode(setup["fasta"].read_text())
    code = main(["predict", "--bundle", str(setup["bundle"]), "--barcode", sequence, "--format", "json",
                 "--neighbours", "2"])
    assert code == 0
    got = json.loads(capsys.readouterr().out)
    expected = setup["predictor"].predict(barcode=sequence, neighbours=2).to_dict()
    assert list(got["queries"]) == ["dna"] and got["file_name"] is None and got["barcode_id"] is None
    for level in LEVELS:
        names = [e["name"] for e in got["queries"]["dna"]["levels"][level]]
        assert names == [e["name"] for e in expected["queries"]["dna"]["levels"][level]]
    assert [n["id"] for n in got["queries"]["dna"]["neighbours"]] == \
        [n["id"] for n in expected["queries"]["dna"]["neighbours"]]
    assert got["degraded_barcode"] is None and got["barcode"] == sequence


def test_table_output_lists_every_row(setup, capsys):
    code = main(["predict", "--bundle", str(setup["bundle"]), "--image", str(setup["image"]), "--top-k", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[0].split() == list(ROW_COLUMNS)
    assert len(lines) == 1 + 4 * 2  # image only: 1 query x 4 levels x top 2


def test_bad_input_gives_one_line_and_exit_status_2(setup, capsys, tmp_path):
    not_image = tmp_path / "notes.jpg"
    not_image.write_text("hello")
    bundle = ["--bundle", str(setup["bundle"])]
    with pytest.raises(BarcodeError) as protein:
        parse_barcode("MKVLAAGIVALLLAAGCSSHELLS")
    cases = [
        (["predict", *bundle, "--image", str(not_image)], "notes.jpg"),
        (["predict", *bundle, "--barcode", "MKVLAAGIVALLLAAGCSSHELLS"], str(protein.value)),
        (["predict", *bundle], "--image, --barcode or both"),
        (["predict", "--bundle", str(tmp_path / "nowhere"), "--barcode", "ACGT" * 50], "no bundle"),
        (["predict", *bundle, "--image", str(setup["image"]), "--blur", "-2"], "blur kernel"),
        (["predict", *bundle, "--barcode", "ACGT" * 50, "--dna-noise", "-1"], "--dna-noise"),
    ]
    for argv, message in cases:
        code = main(argv)
        err = capsys.readouterr().err
        assert code == EXIT_BAD_INPUT, argv
        assert message in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as usage:
        main(["predict", "--top-k", "many"])
    assert usage.value.code == EXIT_BAD_INPUT and "--top-k" in capsys.readouterr().err


def test_the_process_exits_with_status_2_on_bad_input():
    done = run_cli("predict", "--format", "csv")
    assert done.returncode == EXIT_BAD_INPUT
    assert done.stdout == "" and done.stderr == "error: give --image, --barcode or both\n"


def test_the_default_bundle_is_the_demo_in_assets(capsys, monkeypatch, tmp_path):
    assert DEFAULT_BUNDLE == REPO_ROOT / "assets" / "demo-hir-fuse"
    # A checkout without the demo (e.g. a slim install) gets a clear message instead of a trace.
    import hirviz.__main__ as cli

    monkeypatch.setattr(cli, "DEFAULT_BUNDLE", tmp_path / "missing")
    assert main(["predict", "--barcode", "ACGT" * 50]) == EXIT_BAD_INPUT
    assert "pass --bundle" in capsys.readouterr().err


def test_a_bundle_without_trained_fusion_prints_no_fused_rows(setup, tmp_path, capsys):
    # A CLIBD bundle: the fusion head exists but its gate was never trained, so a fused answer would be noise.
    import shutil

    clibd = tmp_path / "clibd"
    shutil.copytree(setup["bundle"], clibd)
    config = json.loads((clibd / "config.json").read_text())
    config.update(objective="clibd", training={"loss": {"objective": "clibd"}}, fusion_trained=False)
    (clibd / "config.json").write_text(json.dumps(config))
    argv = ["predict", "--image", str(setup["image"]), "--barcode", str(setup["fasta"]), "--top-k", "2"]
    assert main([*argv, "--bundle", str(clibd), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert {r["query"] for r in rows} == {"image", "dna", "avg"}
    assert main([*argv, "--bundle", str(clibd), "--format", "json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    assert list(answer["queries"]) == ["image", "dna", "avg"] and answer["fusion_trained"] is False
    assert answer["gate"] is None
    # the trained bundle it was copied from still answers with its fused query
    assert main([*argv, "--bundle", str(setup["bundle"]), "--format", "csv"]) == 0
    assert "fused" in {r["query"] for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
