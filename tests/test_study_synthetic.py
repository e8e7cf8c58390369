"""The synthetic study's report side: learning curves and plateaus, lambda chosen on validation, the blur criterion,
the fusion comparison, and ``--report-only`` rebuilding the report from finished runs (no training here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import load_repo_module
from studies import synthetic_report as rep
from train.study import Arm, Study, aggregate_curves, finished_runs, learning_curve, plateau, training_summary

REPO = Path(__file__).resolve().parents[1]


def _level(top1: float) -> dict:
    return {"top1": top1, "top5": min(100.0, top1 + 10)}


def _results(image: dict[str, float], dna_global: float, fused: float | None = None, noisy_dna_global: float = 5.0,
             species_noisy: float = 10.0, order_noisy: float = 85.0) -> dict:
    """An eval JSON with the cells the report reads."""
    def query(glob: float, order: float = 90.0, species: float = 30.0) -> dict:
        return {"order": _level(order), "family": _level(60.0), "genus": _level(40.0), "species": _level(species),
                "global": _level(glob),
                "hierarchy": {"mistake_severity": {"severity": 2.0, "hdist@1": 1.0, "hdist@5": 1.5},
                              "agreement": {"rho": 0.4}, "drift": {"mean_depth": 2.5, "mean_displacement": 0.1}}}

    out = {"clean": {"image": query(image["clean"]), "dna": query(dna_global)},
           "noisy_image": {"image": query(image["noisy"], order=order_noisy, species=species_noisy),
                           "dna": query(dna_global)},
           "noisy_dna": {"image": query(image["clean"]), "dna": query(noisy_dna_global)},
           "noisy_both": {"image": query(image["noisy"]), "dna": query(noisy_dna_global)},
           "_meta": {"specimens": 100, "blur_kernel": 5, "candidates": {"count": 40}, "train_seconds": 3.0}}
    if fused is not None:
        for cond in out:
            if cond != "_meta":
                out[cond]["fused"] = query(fused)
                out[cond]["avg"] = query(fused - 1)
    return out


def _metrics(run: Path, values: list[float], losses: list[float]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    lines = [{"step": s + 1, "loss": loss, "hir": 0.5, "hir_clamped_species": 0.25} for s, loss in enumerate(losses)]
    lines += [{"step": 10 * (i + 1), "epoch": 0, "val_dna_global": v, "val_image_global": v / 2,
               "val_specimens": 50} for i, v in enumerate(values)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")


def test_learning_curves_average_over_seeds_and_the_plateau_shows_a_flat_end(tmp_path):
    _metrics(tmp_path / "a", [10, 30, 40, 41], [3.0] * 40)
    _metrics(tmp_path / "b", [20, 40, 50, 51], [2.0] * 40)
    curves = [learning_curve(tmp_path / "a"), learning_curve(tmp_path / "b")]
    assert curves[0]["step"] == [10, 20, 30, 40] and curves[0]["val_dna_global"] == [10, 30, 40, 41]
    mean = aggregate_curves(curves)
    assert mean["val_dna_global"] == [15, 35, 45, 46] and mean["val_dna_global_sd"][0] == pytest.approx(7.0710678)
    flat = plateau(mean["step"], mean["val_dna_global"])
    assert flat["final"] == 46 and flat["tail_gain"] == pytest.approx(1.0) and flat["tail_from_step"] == 30
    rising = plateau([1, 2, 3, 4, 5], [0, 10, 20, 30, 40])
    assert rising["tail_gain"] == pytest.approx(10.0) and rising["best_step"] == 5
    assert plateau([7], [3.0])["tail_gain"] == 0.0
    assert learning_curve(tmp_path / "missing") == {}
    summary = training_summary(tmp_path / "a")
    assert summary["loss"] == pytest.approx(3.0) and summary["hir_clamped_species"] == 0.25 and summary["last_logged_step"] == 40


def test_the_plateau_table_says_which_curves_still_rise_beyond_the_seeds_spread(tmp_path):
    _metrics(tmp_path / "a", [10, 30, 40, 41], [3.0] * 40)  # DNA: +1 over the tail, seeds 10 apart
    _metrics(tmp_path / "b", [20, 40, 50, 51], [2.0] * 40)
    curves = {"arm": aggregate_curves([learning_curve(tmp_path / "a"), learning_curve(tmp_path / "b")])}
    curves["arm"]["val_image_family"] = [10.0, 20.0, 30.0, 40.0]  # still rising, and the same in both seeds
    curves["arm"]["val_image_family_sd"] = [0.5] * 4
    markdown, numbers = rep.plateau_table(curves)
    assert numbers["arm"]["val_dna_global"]["at_plateau"] is True
    assert numbers["arm"]["val_image_family"]["at_plateau"] is False
    assert "| arm | image_family | 40 | 40.0 |" in markdown and markdown.rstrip().endswith("| no |")
    one_seed, _ = rep.plateau_table({"arm": learning_curve(tmp_path / "a")})
    assert "| – |" in one_seed


def test_the_report_states_the_blur_criterion_of_clibds_mean_results():
    hurt, line = rep.blur_summary(_results({"clean": 20, "noisy": 10}, 30, species_noisy=15.0, order_noisy=85.0))
    assert hurt["species_loss"] == pytest.approx(0.5) and hurt["passed"] is True and "PASS" in line
    mild, line = rep.blur_summary(_results({"clean": 20, "noisy": 10}, 30, species_noisy=25.0))
    assert mild["passed"] is False and "FAIL" in line
    assert rep.blur_summary(None) == (None, "(CLIBD has not run)")
    # With a sweep, every kernel is checked too, so the report says which default kernel the criterion allows.
    swept = _results({"clean": 20, "noisy": 10}, 30, species_noisy=25.0)
    swept["sweep"] = [{"kind": "blur", "strength": k, "query": "image", "level": level, "top1": top1}
                      for k, order, species in ((1, 90.0, 40.0), (5, 88.0, 30.0), (7, 80.0, 20.0), (9, 70.0, 10.0))
                      for level, top1 in (("order", order), ("species", species))]
    record, line = rep.blur_summary(swept)
    assert [c["kernel"] for c in record["sweep"]] == [5, 7, 9]
    assert [c["passed"] for c in record["sweep"]] == [False, True, False]
    assert "passing: 7" in line and "9x9 box blur" in line
    assert rep.blur_summary({"_meta": {}})[0] is None  # no image results: said, not crashed


def test_lambda_is_chosen_by_the_validation_criterion_and_fusion_is_compared_per_condition():
    validation = {"l-small": _results({"clean": 20, "noisy": 10}, 30), "l-big": _results({"clean": 25, "noisy": 12}, 30)}
    chosen, md = rep.choose_lambda(validation, {"l-small": 0.01, "l-big": 1.0, "l-never": 0.1})
    assert chosen == "l-big" and "not run" in md
    _, numbers = rep.question_fusion({"f": _results({"clean": 20, "noisy": 10}, 30, fused=50.0)}, ["f", "absent"])
    assert set(numbers) == {"f"}
    clean = numbers["f"]["clean"]
    assert clean["fused_at_least"] == {"avg": True, "image": True, "dna": True}
    assert clean["fused_minus_avg"]["delta"] == pytest.approx(1.0)
    _, deltas = rep.question_hir({"clibd": _results({"clean": 20, "noisy": 10}, 30),
                                  "h": _results({"clean": 22, "noisy": 15}, 30)}, ["h"])
    assert deltas["h"]["it_noisy"]["delta"] == pytest.approx(5.0)


def test_report_only_rebuilds_the_report_from_finished_runs_and_flags_what_is_missing(tmp_path):
    synthetic = load_repo_module("studies_synthetic", "studies/synthetic.py")
    work = tmp_path / "work"
    (work / "synth").mkdir(parents=True)
    (work / "synth" / "metadata.tsv").write_text("")  # only its presence is checked in --report-only
    study = Study(work=work, config=synthetic.CONFIG, metadata=work / "synth" / "metadata.tsv")
    (work / "results").mkdir()
    made = {"clibd": _results({"clean": 20, "noisy": 10}, 30),
            "hir-paper-l0.1": _results({"clean": 21, "noisy": 14}, 31),
            "fuse": _results({"clean": 20, "noisy": 10}, 30, fused=40.0)}
    for name, results in made.items():
        for seed in (0, 1):
            study.results_file(Arm(name), seed).write_text(json.dumps(results))
            _metrics(study.run_dir(Arm(name), seed), [10, 20, 30, 30 + seed], [1.0] * 20)
    (work / "results" / "hir-paper-l0.1-s0-val.json").write_text(json.dumps(made["hir-paper-l0.1"]))
    out = tmp_path / "out"
    assert synthetic.main(["--report-only", "--work", str(work), "--out", str(out), "--seeds", "0", "1"]) == 0

    text = (out / "synthetic.md").read_text()
    assert "Validation picks **hir-paper-l0.1**" in text
    assert "Not finished yet" in text and "hyperbolic" in text
    # the Q1-2 row: IT noisy Global 14 vs CLIBD's 10 (one value per seed: no sd)
    assert any(line.startswith("| hir-paper-l0.1 | +0.000") and "+4.0" in line for line in text.splitlines())
    summary = json.loads((out / "synthetic.json").read_text())
    assert summary["lambda_chosen"] == "hir-paper-l0.1"
    assert summary["curves"]["clibd"]["val_dna_global"][-1] == pytest.approx(30.5)
    assert (out / "synthetic_learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert set(finished_runs(study, [Arm(n) for n in (*made, "hyperbolic")], [0, 1])) == set(made)


def test_an_arm_the_config_does_not_know_is_rejected_with_the_reason(tmp_path):
    study = Study(work=tmp_path, config=REPO / "train" / "configs" / "study_synth.yaml", metadata=tmp_path / "m.tsv")
    assert study.rejected(Arm("ok", ("loss.objective=clibd",))) is None
    assert "no_such_key" in study.rejected(Arm("new", ("data.no_such_key=true",)))


def test_keep_going_leaves_a_failed_run_out_and_finishes_the_others(tmp_path):
    from train.study import run_arms

    class Flaky(Study):
        def run_one(self, arm: Arm, seed: int) -> dict:
            if arm.name == "broken":
                raise RuntimeError("step failed (fit ...): see its log")
            return {"seed": seed}

    study = Flaky(work=tmp_path, config=REPO / "train" / "configs" / "study_synth.yaml", metadata=tmp_path / "m.tsv",
                  lanes=2)
    arms = [Arm("fine"), Arm("broken")]
    assert run_arms(study, arms, [0, 1], keep_going=True) == {"fine": [{"seed": 0}, {"seed": 1}], "broken": []}
    with pytest.raises(RuntimeError, match="see its log"):
        run_arms(study, arms, [0])
