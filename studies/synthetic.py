"""The synthetic-benchmark study (v3: v2's arms, trained 3x longer): CLIBD, CLIBD-HiR (three lambdas, two clamp
scopes, hmce, shared denominator), CLIBD-HiR-Fuse (clean and noise-aware training) and hyperbolic CLIBD, each over
seeds, trained to a plateau.

    python studies/synthetic.py                 # the whole study (hours, see Budget); resumes if killed
    python studies/synthetic.py --smoke         # every arm and code path on a tiny set, in minutes (not a result)
    python studies/synthetic.py --report-only   # rebuild the report from the runs finished so far

It writes a synthetic BIOSCAN-format benchmark (images + DNA + text), trains every arm below for every seed with
``train/configs/study_synth.yaml`` (same data, split, schedule and model for all; only the arm's overrides differ),
and scores each on the held-out test split (clean, noisy DNA, blurred images, both; hierarchy metrics; noise sweeps).
During training each run scores a validation split carved from its training rows every ``run.eval_every`` steps
(learning curves; never the test rows). CLIBD-HiR's lambda is chosen on that validation split (the mean of IT/DT
clean/noisy Global top-1, :data:`studies.synthetic_report.SELECTION_CELLS`) and the report gives the chosen arm's
test numbers. Output: ``docs/results/synthetic.md`` (tables, mean ± sd over seeds; the four questions of
docs/results.md answered with numbers), ``docs/results/synthetic.json`` and ``docs/results/synthetic_*.png``. Runs,
bundles and logs stay in ``--work`` (not committed); a re-run skips every finished (arm, seed).

The report checks the blur criterion at the default "noisy image" kernel and at every kernel of the sweep; when it
picks another kernel, set ``train.evaluate.DEFAULT_BLUR_KERNEL`` and re-run: finished runs are then re-scored from
their bundles (results, validation and gate caches record their kernel), not trained again.

An arm whose overrides the config does not know (``data.noise_aware`` before noise-aware training exists) is skipped
and flagged in the report, not fatal.

Budget. One optimizer step of the study config (batch 100, 96-px images, 1 CPU thread) measured 0.84 s compute +
0.37 s data for CLIBD and 1.4 s + 0.9 s for CLIBD-HiR (two image views), medians over 30-step runs while other jobs
shared the 2 cores (pessimistic; study v1's runs, two at a time, trained at 0.94-1.54 s a step). 5000 specimens leave
about 3630 training rows after test (20 %) and validation (10 % of training): 37 steps an epoch, so the config's 15
epochs are 555 steps (v1 stopped at 205). Why 555: a 10-epoch (370-step) CLIBD probe of this config, seed 0,
validation curve every 30 steps on 300 validation specimens (one specimen = 0.3 points), on the v1 photos: DNA->text
family reached 98 % at step 180 and stayed; DNA Global 19.0 -> 23.0 from step 270 to 370 (23.0 at 360 and 370);
image->text family 78.7 -> 85.3 -> 87.6 at steps 270, 300, 370 and image Global 9-12 % from step 240 on. The images
were still gaining about 2 points over the last 70 steps, so the study trains 1.5x longer.

v3 trains 3x longer again (45 epochs, 1665 steps). Study v2's 555 steps left every arm's image tower learning
(image->text validation family +1.8 to +7.8 points over the last quarter, three seeds; docs/results.md). A 45-epoch
CLIBD probe, seed 0, on the v2 photos (validation every 25 steps, 300 specimens): image->text family 79.8, 89.5,
93.8, 95.3, 95.3 % at steps 425, 625, 1125, 1225, 1665 (flat over the last quarter), image Global 8.0 -> 10.7 %
over it (within a few specimens), DNA Global 21.3 % at the end (17.2 at 555 steps); 17 min with one other run
beside it. A probe at 15 epochs and max LR 3e-3 reached image family 93.4 % but cost DNA Global (15.7 %), so the
schedule, not the rate, moves. v2's runs and report stay reproducible from the commit that ran them
(``epochs: 15``) in their own ``--work``.

Per (arm, seed), at v1's rates: CLIBD about 9 min, each HiR or Fuse arm about 14 min, hyperbolic about 12 min, plus
about 3.5 min for the validation passes (every 25 steps, 300 specimens), export, the test evaluation with sweep, the
validation evaluation and the gate summary. Ten arms (eight with the HiR term) x 3 seeds on two lanes: about 4-5
hours on an otherwise idle 2-core machine was the estimate for v2; measured, v2's 30 runs took 6.4 h of run time
summed over runs (two at a time on a shared machine). v3's 3x the steps make that about 16-19 h of run time, 8-10 h
on two lanes, resumed across sessions. Whether the steps reach a plateau is read off the report's "Training
budget and plateau" table (the gain over the last quarter of the steps, per arm); if they do not, raise
``optim.epochs`` in the config and start a fresh ``--work``.

``--smoke`` (300 specimens, 6 steps, seed 0, every arm) took 18.5 min with ``--lanes 2`` while about 15 other
processes shared the 2 cores (its time is mostly the start-up of some 40 ``python -m train`` processes); re-running
it with every run finished took 52 s.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studies import synthetic_report as rep  # noqa: E402
from studies.plots import plot_learning_curves, plot_sweeps  # noqa: E402
from train.evaluate import format_table1, format_table2  # noqa: E402
from train.study import (  # noqa: E402
    Arm,
    Study,
    add_study_arguments,
    aggregate,
    aggregate_curves,
    finished_runs,
    learning_curve,
    relative_paths,
    run_arms,
    synthetic_benchmark,
    training_summary,
    use_smoke_folders,
)

CONFIG = ROOT / "train" / "configs" / "study_synth.yaml"
SWEEP = ("--sweep",)
HIR = ("loss.objective=clibd-hir", "loss.hir_mode=paper")
# lambda of HiR paper mode -> arm; the selection is made among these on the validation split
LAMBDAS = {"hir-paper-l0.01": 0.01, "hir-paper-l0.1": 0.1, "hir-paper-l1": 1.0}
# The side arms (clamp scope, hmce, the shared denominator) run at lambda 1, where v1 showed HiR's term at 0.01 to be
# indistinguishable from CLIBD: a variant has to be strong enough to differ (or, shared-denominator, to collapse).
SIDE_LAMBDA = "loss.hir_weight=1.0"
HYPERBOLIC = ("model.geometry=lorentz", "model.curvature=1.0", "model.learn_curvature=true", "model.temperature=0.07",
              "model.learn_temperature=true", "loss.objective=clibd", "loss.entailment=sel", "loss.entail_weight=1.0",
              "loss.hyperbolic_reduction=sum3", "optim.decay_hyperbolic_params=false")  # as hyperbolic_cpu.yaml
ARMS = [
    Arm("clibd", ("loss.objective=clibd",), SWEEP),
    *[Arm(name, (*HIR, f"loss.hir_weight={lam}"), SWEEP) for name, lam in LAMBDAS.items()],
    Arm("hir-paper-anchor", (*HIR, SIDE_LAMBDA, "loss.hir_max_scope=anchor"), SWEEP),
    Arm("hir-hmce", ("loss.objective=clibd-hir", "loss.hir_mode=hmce", SIDE_LAMBDA), SWEEP),
    Arm("hir-shared", ("loss.objective=clibd-hir", "loss.hir_mode=shared-denominator", SIDE_LAMBDA), SWEEP),
    Arm("fuse", ("loss.objective=clibd-hir-fuse", "loss.hir_mode=paper"), SWEEP),
    Arm("fuse-noise-aware", ("loss.objective=clibd-hir-fuse", "loss.hir_mode=paper", "data.noise_aware=true"), SWEEP),
    Arm("hyperbolic", HYPERBOLIC, SWEEP),
]
HIR_ARMS = [*LAMBDAS, "hir-paper-anchor", "hir-hmce", "hir-shared"]
FUSION_ARMS = ["fuse", "fuse-noise-aware"]
TABLE1_ARMS = ["clibd", *HIR_ARMS, "hyperbolic"]
# --smoke: a few hundred specimens, a few steps, one seed; every arm, validation, sweep and report path runs
SMOKE_SPECIMENS = 300
SMOKE_OVERRIDES = ("optim.epochs=1", "data.batch_size=40", "run.eval_every=3", "run.eval_specimens=40",
                   "run.checkpoint_every=4")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_study_arguments(parser, ROOT / "data" / "studies" / "synthetic", ROOT / "docs" / "results")
    parser.add_argument("--specimens", type=int, default=5000)
    parser.add_argument("--smoke", action="store_true", help="tiny data, few steps, seed 0 only: checks every code "
                        "path in minutes; writes its report under --work, never docs/results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.smoke:
        use_smoke_folders(args, parser)
        args.specimens, args.seeds = SMOKE_SPECIMENS, [0]
        args.overrides = [*SMOKE_OVERRIDES, *args.overrides]
    started = time.time()
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    metadata = synthetic_benchmark(work, args.specimens, 32 if args.smoke else 96, args.report_only)
    study = Study(work=work, config=CONFIG, metadata=metadata, images=metadata.with_name("images.hdf5"),
                  common=tuple(args.overrides), lanes=args.lanes, max_reference=2000 if not args.smoke else 100)
    skipped = {arm.name: reason for arm in ARMS if (reason := study.rejected(arm))}
    arms = [arm for arm in ARMS if arm.name not in skipped]
    for name, reason in skipped.items():
        logging.warning("arm %s skipped: %s", name, reason)
    if not args.report_only:
        run_arms(study, arms, args.seeds, keep_going=True)
        validation_results(study, arms, args.seeds, compute=True)
        gate_values(study, arms, args.seeds, compute=True)
    report = build_report(study, arms, args, skipped, out, minutes=(time.time() - started) / 60)
    print(report)
    return 0


def validation_results(study: Study, arms: list[Arm], seeds: list[int], compute: bool = False
                       ) -> dict[str, dict[str, Any]]:
    """The lambda arms scored on their validation rows (all four conditions), aggregated over seeds; with
    ``compute`` the missing evaluations are run, else only cached ones are read."""
    out: dict[str, dict[str, Any]] = {}
    for arm in (a for a in arms if a.name in LAMBDAS):
        runs = []
        for seed in seeds:
            cached = study.work / "results" / f"{arm.name}-s{seed}-val.json"
            if cached.is_file():
                runs.append(json.loads(cached.read_text(encoding="utf-8")))
            elif compute and study.results_file(arm, seed).is_file():
                runs.append(study.score_on(arm, seed, "val", [
                    "--metadata", study.metadata, "--images", study.images, "--split", study.run_dir(arm, seed),
                    "--subset", "val"]))
        if runs:
            out[arm.name] = aggregate(runs)
    return out


def gate_values(study: Study, arms: list[Arm], seeds: list[int], compute: bool = False
                ) -> dict[str, dict[str, float | None]]:
    """The fusion arms' mean gate (1 = all image, 0 = all DNA) on the test rows under each condition, mean over
    seeds: does the gate move towards the clean modality? Cached per run; with ``compute`` missing ones are run."""
    per_arm: dict[str, dict[str, float | None]] = {}
    for arm in (a for a in arms if a.name in FUSION_ARMS):
        values = []
        for seed in seeds:
            cache = study.work / "results" / f"{arm.name}-s{seed}-gate.json"
            saved = json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() else None
            # a cache without its kernel predates the record: recomputed like a stale one
            if (saved is None or "_meta" not in saved or study.stale(saved)) and compute \
                    and study.results_file(arm, seed).is_file():
                saved = _mean_gate(study, arm, seed)
                cache.write_text(json.dumps(saved), encoding="utf-8")
            if saved is not None:
                values.append({c: v for c, v in saved.items() if c != "_meta"})
        if values:
            per_arm[arm.name] = {c: sum(v[c] for v in values) / len(values) for c in values[0]}
    return per_arm


def _mean_gate(study: Study, arm: Arm, seed: int) -> dict[str, Any]:
    import torch

    from hirviz.bundle import load_bundle
    from hirviz.degrade import DnaNoise
    from train.data import open_images
    from train.embed import Degradation, embed_frame
    from train.evaluate import CONDITIONS, DEFAULT_BLUR_KERNEL
    from train.rundir import select_rows

    torch.set_num_threads(1)  # beside the other lane's runs
    frame, _ = select_rows(study.metadata, study.run_dir(arm, seed), "test")
    model = load_bundle(study.bundle_dir(arm, seed)).model
    images = open_images(study.images)
    try:
        out: dict[str, Any] = {"_meta": {"blur_kernel": DEFAULT_BLUR_KERNEL}}
        for condition in CONDITIONS:  # the evaluation's conditions and noise seed (train.evaluate)
            degradation = Degradation(dna=DnaNoise() if "dna" in condition or "both" in condition else None,
                                      blur_kernel=DEFAULT_BLUR_KERNEL if "image" in condition or "both" in condition
                                      else 0, seed=0)
            emb = embed_frame(model, frame, images, degradation)
            both = emb["has_image"] & emb["has_dna"]
            out[condition] = float(emb["gate"][both].mean()) if both.any() else None
        return out
    finally:
        images.close()


def build_report(study: Study, arms: list[Arm], args: argparse.Namespace, skipped: dict[str, str], out: Path,
                 minutes: float) -> Path:
    """Tables, JSON and plots from whatever has finished; returns the markdown file."""
    runs = finished_runs(study, arms, args.seeds)
    agg = {name: aggregate(results) for name, results in runs.items()}
    curves = {arm.name: aggregate_curves([learning_curve(study.run_dir(arm, s)) for s in args.seeds])
              for arm in arms}
    training = {arm.name: _mean_summary([training_summary(study.run_dir(arm, s)) for s in args.seeds])
                for arm in arms}
    validation = validation_results(study, arms, args.seeds)
    chosen, lambda_table = rep.choose_lambda(validation, LAMBDAS)
    criterion, blur_line = rep.blur_summary(agg.get("clibd"))
    q12_table, q12 = rep.question_hir(agg, HIR_ARMS)
    q3_table, q3 = rep.question_fusion(agg, FUSION_ARMS)
    plateau_md, plateau = rep.plateau_table(curves)
    gates = gate_values(study, arms, args.seeds)

    stem = out / "synthetic"
    plots = plot_sweeps(agg, stem, images=True, fusion_arms=FUSION_ARMS) if agg else []
    curve_plot = plot_learning_curves(curves, stem.with_name("synthetic_learning_curves.png"))
    plots += [curve_plot] if curve_plot else []
    summary = {"arms": agg, "validation": validation, "lambda_chosen": chosen, "blur_criterion": criterion,
               "questions": {"hir_vs_clibd": q12, "fusion": q3}, "plateau": plateau, "curves": curves,
               "training_end": training, "gates": gates, "skipped_arms": skipped,
               "settings": {"specimens": args.specimens, "seeds": args.seeds, "lanes": args.lanes,
                            "overrides": list(args.overrides), "smoke": args.smoke}}
    (out / "synthetic.json").write_text(json.dumps(relative_paths(summary, ROOT), indent=1), encoding="utf-8")
    text = markdown(agg, args, skipped, minutes, plots, chosen, lambda_table, blur_line, q12_table, q3_table,
                    plateau_md, training, gates)
    path = out / "synthetic.md"
    path.write_text(text, encoding="utf-8")
    return path


def _mean_summary(summaries: list[dict[str, float]]) -> dict[str, float]:
    summaries = [s for s in summaries if s]
    keys = {k for s in summaries for k in s}
    return {k: sum(s[k] for s in summaries if k in s) / sum(k in s for s in summaries) for k in sorted(keys)}


def markdown(agg: dict[str, Any], args: argparse.Namespace, skipped: dict[str, str], minutes: float,
             plots: list[Path], chosen: str | None, lambda_table: str, blur_line: str, q12_table: str,
             q3_table: str, plateau_md: str, training: dict[str, dict[str, float]],
             gates: dict[str, dict[str, float | None]]) -> str:
    meta = next(iter(agg.values()))["_meta"] if agg else {}
    seconds = [s for a in agg.values() for s in a["_meta"]["train_seconds"] if s]
    table1 = {n: agg[n] for n in TABLE1_ARMS if n in agg}
    lines = [
        "# Synthetic benchmark (study v3): generated tables",
        "",
        f"Generated by `python studies/synthetic.py{' --smoke' if args.smoke else ''}` "
        f"({minutes:.0f} min this invocation; {args.lanes} runs in parallel, one CPU thread each"
        + (f"; a run trains in {min(seconds):.0f}-{max(seconds):.0f} s" if seconds else "") + "). "
        f"{args.specimens} synthetic specimens, {meta.get('specimens')} held out for test; "
        f"{meta.get('candidates', {}).get('count')} candidate taxonomy strings; seeds {args.seeds}. Cells: top-1 / "
        f"top-5 accuracy (%), mean ± sample sd over seeds. Noisy I = {meta.get('blur_kernel')}x"
        f"{meta.get('blur_kernel')} box blur; noisy D = METHOD.md's DNA degradation.",
        "",
    ]
    if args.smoke:
        lines += ["**Smoke run: a few steps on a few hundred specimens. These numbers check the code, not the "
                  "method.**", ""]
    if skipped:
        lines += ["Arms skipped (the config does not accept their overrides in this version):", ""]
        lines += [f"- `{name}`: {reason}" for name, reason in skipped.items()] + [""]
    missing = [a.name for a in ARMS if a.name not in agg and a.name not in skipped]
    if missing:
        lines += [f"Not finished yet (rerun `--report-only` when they are): {', '.join(missing)}.", ""]
    lines += ["## Blur criterion", "", blur_line, ""]
    lines += ["## Lambda chosen on the validation split (CLIBD-HiR, paper mode)", "", lambda_table, "",
              f"Validation picks **{chosen or '–'}**"
              + (f" (lambda {LAMBDAS[chosen]:g}); its test numbers are its rows below." if chosen else "."), ""]
    lines += ["## Table 1 layout: baseline vs HiR vs hyperbolic (no fusion)", "", format_table1(table1), ""]
    for name in (n for n in FUSION_ARMS if n in agg):
        lines += [f"## Table 2 layout: {name}", "", format_table2(agg[name]), ""]
    lines += ["## Global top-1 (%) at a glance", "",
              rep.table(["Arm", "DT clean", "DT noisy D", "IT clean", "IT noisy I", "Avg noisy I+D", "Fused noisy I+D"],
                        [[name, *[rep.fmt(*rep.top1(a, c, q)) for c, q in
                                  (("clean", "dna"), ("noisy_dna", "dna"), ("clean", "image"),
                                   ("noisy_image", "image"), ("noisy_both", "avg"), ("noisy_both", "fused"))]]
                         for name, a in agg.items()]), ""]
    lines += ["## Hierarchy consistency", "",
              "Severity: mean tree distance of the top-1 mistakes; HDist@k: of the top-k strings; rho: rank "
              "correlation of tree and embedding distances over fixed specimen pairs; drift: depth of the common "
              "ancestor (and distance moved) between a query's nearest reference clean and under its noise.", "",
              rep.hierarchy_table(agg), ""]
    lines += ["## Questions for docs/results.md (numbers; the prose is written there)", "",
              "### Questions 1-2: corrected HiR vs CLIBD", "",
              "Each arm minus CLIBD; in brackets the difference in units of the larger sd. Consistency: rho up, "
              "severity down, drift depth up (shallower mistakes); then clean and noisy accuracy.", "",
              q12_table, "",
              "### Question 3: fusion", "",
              "Global top-1 per condition. The paper: fused +2.5 over avg when both inputs are noisy; the target: "
              "noise-aware fused >= avg and >= each modality in all four conditions.", "", q3_table, "",
              "### Question 4: evidence where it does not reproduce", "",
              "The end of training per arm (means over seeds of the last tenth of the logged steps: the loss terms and "
              "the share of HiR pairs clamped per level), with the learning curves and the plateau table below.", "",
              training_table_or_none(training), "",
              "Mean fusion gate on the test rows (1 = all image, 0 = all DNA), mean over seeds:", "",
              rep.table(["Arm", *[rep.CONDITION_NAMES[c] for c in rep.CONDITION_NAMES]],
                        [[name, *[rep.fmt(g.get(c), digits=3) for c in rep.CONDITION_NAMES]]
                         for name, g in gates.items()]) if gates else "(no fusion arm has run)", ""]
    lines += ["## Training budget and plateau", "",
              "Validation top-1 (mean over seeds) at the last step, the best, and the gain over the last quarter of "
              "the steps: a gain no larger than the seeds' sd at the last step means the arm trained to a plateau.", "",
              plateau_md, ""]
    lines += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(lines)


def training_table_or_none(training: dict[str, dict[str, float]]) -> str:
    return rep.training_table({k: v for k, v in training.items() if v})


if __name__ == "__main__":
    raise SystemExit(main())
