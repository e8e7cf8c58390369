"""The real-barcode study: DNA+text models (CLIBD, HiR on DNA, hyperbolic CLIBD) against k-mer nearest neighbours.

    python studies/real_barcodes.py                 # 22 runs, 2 at a time (2-3 h on 2 cores); resumes if killed
    python studies/real_barcodes.py --smoke         # every arm and code path, tiny, 1 seed: a few minutes
    python studies/real_barcodes.py --report-only   # tables, JSON and plots from the runs finished so far
    python studies/real_barcodes.py --splits open --arms clibd hyperbolic   # 6 runs: hyperbolic vs Euclidean, unseen
    # v1 measured 6.5-13 min training per run of real_dna.yaml on 2 shared cores; the smoke's runs train in ~100 s

On ``barcodes.tsv`` (real COI barcodes, ``--data``, default ``../shared/data/real_dna``) every arm trains with
``train/configs/real_dna.yaml`` for every seed, on two splits:

- ``closed``: the seeded closed-set split (every test taxon also trained on), scored DNA -> text per rank, clean
  and with METHOD.md's DNA degradation (plus a sweep of its strength), and DNA -> DNA against the training
  barcodes; the same models then place ``partial_reads_313bp.tsv`` (313-bp reads from another country);
- ``open``: CLIBD's partition (``data.split=clibd``; species with >= 9 records split seen / unseen, the rest
  unseen: an unseen species' records are never trained on), scored for the test split's seen and unseen
  species separately (:mod:`studies.openset`): DNA -> DNA retrieval against every key (``eval --retrieval
  clibd``) and DNA -> text with the training names or zero-shot with the unseen names among the candidates.

Arms: ``clibd`` (and, one seed, ``clibd-paper-recipe``: no training-time degradation), ``hir`` (CLIBD-HiR on DNA,
corrected paper-mode loss; lambda picked among :data:`LAMBDAS` on a validation slice of the closed split's
training records, never on test) and ``hyperbolic`` (Lorentz CLIBD, SEL entailment, weight 1). The k-mer search
is scored on the same splits and noisy barcodes. Writes ``docs/results/real_barcodes.md`` / ``.json`` /
``_dna_noise.png``; runs stay in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from studies import openset  # noqa: E402
from studies.plots import plot_sweeps  # noqa: E402
from studies.real_barcodes_report import report  # noqa: E402
from train.data import closed_set_split, read_metadata  # noqa: E402
from train.rundir import read_split  # noqa: E402
from train.study import (  # noqa: E402
    Arm,
    Study,
    add_study_arguments,
    aggregate,
    relative_paths,
    run_arms,
    run_step,
    use_smoke_folders,
)

CONFIG = ROOT / "train" / "configs" / "real_dna.yaml"
LAMBDAS = (0.01, 0.1, 1.0)
# --retrieval: each test barcode's nearest training barcode in the model's DNA space (the learned counterpart of
# the k-mer search); the reference bank holds every training barcode.
CLOSED_EVAL = ("--conditions", "clean,noisy_dna", "--sweep", "--retrieval")
OPEN_EVAL = ("--conditions", "clean", "--retrieval", "clibd")
HYPERBOLIC = ("loss.objective=clibd", "model.geometry=lorentz", "model.learn_temperature=true",
              "model.learn_curvature=true", "loss.entailment=sel", "loss.entail_weight=1.0")
FAMILIES = ("paper-recipe", "clibd", "hir", "hyperbolic")
SMOKE = ("optim.epochs=1", "data.max_specimens=1500")


def hir(lam: float) -> tuple[str, ...]:
    return ("loss.objective=clibd-hir", "loss.hir_modality=dna", "loss.hir_mode=paper", f"loss.hir_weight={lam:g}")


def arms(split: str, lam: float | None, families) -> list[Arm]:
    """The arms of one split; ``lam`` = the picked HiR weight (None: HiR left out)."""
    prefix, extra = ("", ()) if split == "closed" else ("open-", ("data.split=clibd",))
    out = []
    if "paper-recipe" in families and split == "closed":
        out.append(Arm("clibd-paper-recipe", ("loss.objective=clibd", "data.dna_augment=0"), seeds=(0,)))
    if "clibd" in families:
        out.append(Arm(f"{prefix}clibd", ("loss.objective=clibd", *extra)))
    if "hir" in families and lam is not None:
        out.append(Arm(f"{prefix}hir-dna-l{lam:g}", (*hir(lam), *extra)))
    if "hyperbolic" in families:
        out.append(Arm(f"{prefix}hyperbolic", (*HYPERBOLIC, *extra)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "real_dna"))
    add_study_arguments(parser, ROOT / "data" / "studies" / "real_barcodes", ROOT / "docs" / "results")
    parser.add_argument("--splits", nargs="+", choices=("closed", "open"), default=["closed", "open"])
    parser.add_argument("--arms", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--smoke", action="store_true", help="tiny runs, seed 0, own --work and --out: checks "
                        "every arm and code path in a few minutes (numbers meaningless)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.seeds, args.overrides = [0], [*SMOKE, *args.overrides]
        use_smoke_folders(args, parser)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    import torch

    torch.set_num_threads(1)  # the in-process scoring (open set, k-mer) beside the training lanes
    started = time.time()
    data, work, out = Path(args.data), Path(args.work), Path(args.out)
    barcodes, partial = data / "barcodes.tsv", data / "partial_reads_313bp.tsv"
    if not barcodes.is_file():
        raise SystemExit(f"{barcodes} not found: pass --data, the folder holding barcodes.tsv")
    out.mkdir(parents=True, exist_ok=True)
    study = Study(work=work, config=CONFIG, metadata=barcodes, common=tuple(args.overrides), lanes=args.lanes,
                  eval_args=CLOSED_EVAL, max_reference=100_000)
    run = _collect if args.report_only else run_arms

    lam, selection = None, None
    if "hir" in args.arms:
        selection = pick_lambda(study, barcodes, args.report_only)
        lam = selection.get("picked")
    closed = open_ = kmer = kmer_partial = coverage = open_kmer = None
    partial_runs: dict = {}
    if "closed" in args.splits:
        closed_arms = arms("closed", lam, args.arms)
        closed = run(study, closed_arms, args.seeds)
        split_run = next((study.run_dir(a, s) for a in closed_arms for s in args.seeds
                          if (study.run_dir(a, s) / "split.npz").is_file()), None)  # every run has the same split
        if split_run is not None:
            kmer = _kmer(work, barcodes, split_run, "kmer", ["--sweep"], args.report_only)
            if partial.is_file():
                partial_args = ["--metadata", partial, "--conditions", "clean", "--retrieval",
                                *(["--max-specimens", "300"] if args.smoke else [])]
                partial_runs = {a.name: [r for s in args.seeds if a.seeds is None or s in a.seeds
                                         if (r := _score_partial(study, a, s, partial_args, args.report_only))]
                                for a in closed_arms}
                kmer_partial = _kmer(work, barcodes, split_run, "kmer-partial", ["--queries", partial],
                                     args.report_only)
                coverage = _coverage(barcodes, split_run, partial)
    if "open" in args.splits:
        frame, labels, source = openset.partition(barcodes)
        open_arms = arms("open", lam, args.arms)
        open_ = {name: [{**r, "openset_text": openset.cached(
                    work / "results" / f"{r['_meta']['bundle']}-openset-text.json",
                    lambda r=r: openset.text_scores(work / "bundles" / r["_meta"]["bundle"], frame, labels))}
                        for r in runs] for name, runs in run(replace(study, eval_args=OPEN_EVAL), open_arms, args.seeds).items()}
        open_kmer = openset.cached(work / "results" / "kmer-openset.json",
                                   lambda: {**openset.kmer_scores(frame, labels), "partition": source})
    minutes = (time.time() - started) / 60

    agg = {name: aggregate(r) for name, r in (closed or {}).items() if r}
    open_agg = {name: aggregate(r) for name, r in (open_ or {}).items() if r}
    partial_agg = {name: aggregate(r) for name, r in partial_runs.items() if r}
    plots = plot_sweeps(agg, out / "real_barcodes", images=False,
                        extra_dna={"k-mer NN": kmer["sweep"]} if kmer else None) if agg else []
    payload = {"models": agg, "kmer": kmer, "partial_reads": partial_agg, "kmer_partial_reads": kmer_partial,
               "partial_reads_coverage": coverage, "open_set": open_agg, "kmer_open_set": open_kmer,
               "lambda_selection": selection, "seeds": args.seeds, "overrides": args.overrides}
    payload = relative_paths(payload, ROOT)  # the JSON and the report name no machine-specific folder
    (out / "real_barcodes.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    text = report(payload, args, minutes, plots)
    (out / "real_barcodes.md").write_text(text, encoding="utf-8")
    print(text.split("## Answers", 1)[-1].split("\n## ", 1)[0] if "## Answers" in text else "")
    print(out / "real_barcodes.md")
    return 0


def _collect(study: Study, arm_list, seeds) -> dict[str, list[dict]]:
    """``run_arms``'s result for the runs already finished (``--report-only``): no training."""
    found = {}
    for arm in arm_list:
        files = [study.results_file(arm, s) for s in seeds if arm.seeds is None or s in arm.seeds]
        found[arm.name] = [json.loads(f.read_text(encoding="utf-8")) for f in files if f.is_file()]
    return found


def pick_lambda(study: Study, barcodes: Path, report_only: bool) -> dict:
    """HiR's lambda, chosen on a validation slice of the closed split's training records (never on test).

    The closed split's training rows become their own barcode table; its closed split (same settings) gives a
    training part and a validation part. One seed per lambda; the pick maximises the mean of clean and noisy-DNA
    DNA -> text Global top-1 on the validation part.
    """
    val_dir = study.work / "lambda"
    table = val_dir / "train_rows.tsv"
    if not table.is_file():
        val_dir.mkdir(parents=True, exist_ok=True)
        frame = read_metadata(barcodes)
        train_rows, _ = closed_set_split(frame, 0.2, 0)  # real_dna.yaml's test_fraction and split_seed
        raw = pd.read_csv(barcodes, sep="\t", dtype=str, keep_default_na=False)
        raw.iloc[sorted(frame.index[train_rows])].to_csv(table, sep="\t", index=False)
    val = Study(work=val_dir, config=study.config, metadata=table, common=study.common, lanes=study.lanes,
                eval_args=("--conditions", "clean,noisy_dna"), max_reference=study.max_reference)
    lam_arms = [Arm(f"hir-dna-l{lam:g}", hir(lam)) for lam in LAMBDAS]
    found = (_collect if report_only else run_arms)(val, lam_arms, (0,))
    scores = {}
    for lam, arm in zip(LAMBDAS, lam_arms):
        if found[arm.name]:
            r = found[arm.name][0]
            scores[f"{lam:g}"] = {c: r[c]["dna"]["global"]["top1"] for c in ("clean", "noisy_dna")}
    return {"scores": scores, "picked": choose_lambda(scores), "criterion": "mean of clean and noisy-DNA DNA->text Global top-1 on "
            "a validation slice (20 %, closed-set) of the closed split's training records, seed 0"}


def choose_lambda(scores: dict[str, dict[str, float]]) -> float | None:
    """The lambda (of :data:`LAMBDAS`) with the highest mean validation score; None until every lambda has one.
    A tie goes to the smaller lambda (the paper's 0.01 first)."""
    if any(f"{lam:g}" not in scores for lam in LAMBDAS):
        return None
    return max(LAMBDAS, key=lambda lam: (sum(scores[f"{lam:g}"].values()), -lam))


def _score_partial(study: Study, arm: Arm, seed: int, eval_args: list, report_only: bool) -> dict | None:
    if report_only or not study.results_file(arm, seed).is_file():
        path = study.work / "results" / f"{arm.name}-s{seed}-partial.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    return study.score_on(arm, seed, "partial", eval_args)


def _kmer(work: Path, barcodes: Path, split_run: Path, tag: str, extra: list, report_only: bool) -> dict | None:
    path = work / "results" / f"{tag}.json"
    if not path.is_file():
        if report_only:
            return None
        run_step([sys.executable, "-m", "train", "kmer-baseline", "--metadata", barcodes, "--split", split_run,
                  *extra, "--out", path], work / "logs" / f"{tag}.log")
    return json.loads(path.read_text(encoding="utf-8"))


def _coverage(barcodes: Path, split_run: Path, partial: Path) -> dict[str, float]:
    """Percent of the partial reads labelled at each level whose name occurs in the training split: the best any
    closed-vocabulary method can score there."""
    from hirviz.taxonomy import LEVELS

    frame = read_metadata(barcodes)
    train = frame.iloc[read_split(split_run).train]
    reads = read_metadata(partial)
    out = {}
    for level in LEVELS:
        labelled = reads[level].dropna()
        out[level] = round(100.0 * labelled.isin(set(train[level].dropna())).mean(), 1) if len(labelled) else None
        out[f"{level}_n"] = int(len(labelled))
    return out


if __name__ == "__main__":
    raise SystemExit(main())
