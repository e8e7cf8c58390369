"""Studies: every (arm, seed) trained once through the CLI, resumable, summarised as mean ± sd over seeds."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from train.evaluate import format_table1
from train.study import Arm, Study, aggregate, global_top1, run_arms
from train.synthetic import SynthConfig, generate

REPO = Path(__file__).resolve().parents[1]


def _results(top1: float, sweep_top1: float) -> dict:
    level = {"top1": top1, "top5": top1 + 10}
    return {"clean": {"dna": {"order": level, "global": {"top1": top1 / 2, "top5": None}}},
            "_meta": {"specimens": 10, "train_seconds": 5.0},
            "sweep": [{"kind": "dna", "strength": 1.0, "query": "dna", "level": "global", "top1": sweep_top1}]}


def test_aggregate_gives_mean_and_sample_sd_in_the_same_layout():
    agg = aggregate([_results(60.0, 10.0), _results(70.0, 20.0), _results(80.0, 30.0)])
    order = agg["clean"]["dna"]["order"]
    assert order["top1"] == pytest.approx(70.0) and order["top1_sd"] == pytest.approx(10.0)
    assert order["top5"] == pytest.approx(80.0)
    assert agg["clean"]["dna"]["global"]["top5"] is None  # no value in any seed stays missing
    assert agg["_meta"]["n_seeds"] == 3 and agg["_meta"]["train_seconds"] == [5.0, 5.0, 5.0]
    assert agg["sweep"] == [{"kind": "dna", "strength": 1.0, "query": "dna", "level": "global",
                             "top1": pytest.approx(20.0), "top1_sd": pytest.approx(10.0)}]
    assert global_top1(agg, "clean", "dna") == "35.0±5.0"
    # the paper-layout tables print the spread beside each mean
    assert "70.0±10.0 / 80.0±10.0" in format_table1({"m": agg})
    with pytest.raises(ValueError):
        aggregate([])


def test_sweep_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    from studies.plots import plot_sweeps

    agg = aggregate([_results(60.0, 10.0), _results(70.0, 20.0)])
    paths = plot_sweeps({"m": agg}, tmp_path / "study", images=False, extra_dna={"k-mer": _results(1, 5)["sweep"]})
    assert [p.name for p in paths] == ["study_dna_noise.png"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_study_trains_each_arm_once_and_a_rerun_reuses_it(tmp_path):
    synth = tmp_path / "synth"
    generate(synth, SynthConfig(specimens=150, seed=1, image_height=32, workers=1))
    study = Study(work=tmp_path / "work", config=REPO / "train" / "configs" / "ci.yaml",
                  metadata=synth / "metadata.tsv", images=synth / "images.hdf5", lanes=1,
                  common=("optim.epochs=1", "data.batch_size=10"), eval_args=("--conditions", "clean,noisy_dna"))
    arm = Arm("tiny", ("loss.objective=clibd",))
    first = run_arms(study, [arm], [0])["tiny"][0]
    assert set(first) >= {"clean", "noisy_dna", "_meta"} and first["_meta"]["train_seconds"] > 0
    assert (study.bundle_dir(arm, 0) / "model.safetensors").is_file()
    saved = json.loads(study.results_file(arm, 0).read_text())
    assert saved == first
    # a finished run is not trained again (its bundle could even be gone)
    (study.run_dir(arm, 0) / "checkpoint.pt").unlink()
    assert run_arms(study, [arm], [0])["tiny"][0] == first
    assert not (study.run_dir(arm, 0) / "checkpoint.pt").exists()


def test_results_scored_with_another_blur_kernel_are_rescored_without_training(tmp_path, monkeypatch):
    """When the default "noisy image" kernel changes (chosen from the study's blur criterion), finished runs are
    re-scored from their bundles, keeping their training time, and never trained again."""
    import train.study as study_module
    from train.evaluate import DEFAULT_BLUR_KERNEL

    study = Study(work=tmp_path, config=REPO / "train" / "configs" / "ci.yaml", metadata=tmp_path / "m.tsv",
                  images=tmp_path / "images.hdf5")
    arm = Arm("a")
    study.bundle_dir(arm, 0).mkdir(parents=True)
    study.results_file(arm, 0).parent.mkdir(parents=True)
    old = {**_results(50.0, 40.0), "_meta": {"blur_kernel": DEFAULT_BLUR_KERNEL + 2, "train_seconds": 5.0}}
    study.results_file(arm, 0).write_text(json.dumps(old))
    calls = []

    def fake_evaluate(bundle, out, log, eval_args):
        calls.append(bundle)
        return {**_results(60.0, 40.0), "_meta": {"blur_kernel": DEFAULT_BLUR_KERNEL}}

    monkeypatch.setattr(study_module, "_evaluate", fake_evaluate)
    monkeypatch.setattr(study_module, "run_step", lambda *a, **k: pytest.fail("nothing may be trained"))
    fresh = study.run_one(arm, 0)
    assert calls == [study.bundle_dir(arm, 0)]
    assert fresh["clean"]["dna"]["order"]["top1"] == 60.0 and fresh["_meta"]["train_seconds"] == 5.0
    assert json.loads(study.results_file(arm, 0).read_text()) == fresh
    assert study.run_one(arm, 0) == fresh and len(calls) == 1  # now current: read, not re-scored
    assert not Study(work=tmp_path, config=study.config, metadata=study.metadata).stale(old)  # DNA-only: no blur


def test_results_name_no_absolute_paths(tmp_path):
    from train.study import relative_paths

    root = tmp_path / "repo"
    got = relative_paths({"data": str(tmp_path / "shared" / "x.tsv"), "runs": [str(root / "runs" / "a")],
                          "name": "clibd", "n": 3}, root)
    assert got == {"data": "../shared/x.tsv", "runs": ["runs/a"], "name": "clibd", "n": 3}


def test_run_step_starts_the_trainer_from_any_working_directory(tmp_path, monkeypatch):
    # `train` is not installed: a study started outside the repository must still find `python -m train`.
    import sys

    from train.study import run_step

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    log = tmp_path / "step.log"
    run_step([sys.executable, "-m", "train", "fit", "--help"], log)
    assert "--resume" in log.read_text()
    # a study's own relative paths still mean where it was started
    study = Study(work=Path("work"), config=Path("c.yaml"), metadata=Path("m.tsv"))
    assert study.work == elsewhere / "work" and study.metadata == elsewhere / "m.tsv" and study.images is None


def test_a_smoke_run_keeps_its_runs_and_report_out_of_the_real_study(tmp_path):
    from train.study import add_study_arguments, use_smoke_folders

    parser = argparse.ArgumentParser()
    add_study_arguments(parser, tmp_path / "studies" / "synthetic", tmp_path / "docs" / "results")
    args = parser.parse_args([])
    use_smoke_folders(args, parser)
    assert Path(args.work) == tmp_path / "studies" / "synthetic-smoke"
    assert Path(args.out) == tmp_path / "studies" / "synthetic-smoke" / "report"
    given = parser.parse_args(["--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")])
    use_smoke_folders(given, parser)
    assert (given.work, given.out) == (str(tmp_path / "w"), str(tmp_path / "o"))  # explicit folders are kept
