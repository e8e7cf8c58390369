"""The real-barcode study: DNA+text models (baseline vs HiR on DNA) against k-mer nearest neighbours.

    python studies/real_barcodes.py        # about 30 minutes on 2 CPU cores; resumes if killed

On ``barcodes.tsv`` (real COI barcodes, ``--data``, default ``../shared/data/real_dna``) every arm trains with
``train/configs/real_dna.yaml`` on the same seeded closed-set split, for every seed, and is scored DNA -> text
per level, clean and with METHOD.md's DNA degradation (plus a sweep of its strength). A BOLD-style k-mer
nearest-neighbour search is scored on the same split and the same noisy barcodes. Then every model and the k-mer
search place ``partial_reads_313bp.tsv`` (313-bp fragments of specimens from another country, many taxa unseen).
Writes ``docs/results/real_barcodes.md`` / ``.json`` / ``_dna_noise.png``; runs stay in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


from hirviz.taxonomy import LEVELS  # noqa: E402
from studies.plots import plot_sweeps  # noqa: E402
from train.data import read_metadata  # noqa: E402
from train.evaluate import EVAL_LEVELS, format_table1, score_cell  # noqa: E402
from train.rundir import read_split  # noqa: E402
from train.study import Arm, Study, add_study_arguments, aggregate, relative_paths, run_arms, run_step  # noqa: E402

CONFIG = ROOT / "train" / "configs" / "real_dna.yaml"
# --retrieval: each test barcode's nearest training barcode in the model's DNA space (CLIBD's protocol), the
# learned counterpart of the k-mer search; the reference bank holds every training barcode.
EVAL = ("--conditions", "clean,noisy_dna", "--sweep", "--retrieval")
ARMS = [
    # The papers' recipe: no degradation while training.
    Arm("clibd-paper-recipe", ("loss.objective=clibd", "data.dna_augment=0"), seeds=(0,)),
    # real_dna.yaml's default: training barcodes degraded afresh each epoch (not in the papers).
    Arm("clibd", ("loss.objective=clibd",)),
    Arm("hir-dna", ("loss.objective=clibd-hir", "loss.hir_modality=dna")),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "real_dna"))
    add_study_arguments(parser, ROOT / "data" / "studies" / "real_barcodes", ROOT / "docs" / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.time()
    data, work, out = Path(args.data), Path(args.work), Path(args.out)
    barcodes, partial = data / "barcodes.tsv", data / "partial_reads_313bp.tsv"
    if not barcodes.is_file():
        raise SystemExit(f"{barcodes} not found: pass --data, the folder holding barcodes.tsv")
    out.mkdir(parents=True, exist_ok=True)

    study = Study(work=work, config=CONFIG, metadata=barcodes, common=tuple(args.overrides), lanes=args.lanes,
                  eval_args=EVAL, max_reference=100_000)
    runs = run_arms(study, ARMS, args.seeds)
    split_run = study.run_dir(ARMS[0], args.seeds[0])  # every run has the same split (data.split_seed)
    kmer = _kmer(work, barcodes, split_run, "kmer", ["--sweep"])
    partial_runs = {arm.name: [study.score_on(arm, seed, "partial",
                                              ["--metadata", partial, "--conditions", "clean", "--retrieval"])
                               for seed in args.seeds if arm.seeds is None or seed in arm.seeds]
                    for arm in ARMS} if partial.is_file() else {}
    kmer_partial = _kmer(work, barcodes, split_run, "kmer-partial", ["--queries", partial]) if partial_runs else None
    minutes = (time.time() - started) / 60

    agg = {name: aggregate(r) for name, r in runs.items()}
    partial_agg = {name: aggregate(r) for name, r in partial_runs.items()}
    plots = plot_sweeps(agg, out / "real_barcodes", images=False, extra_dna={"k-mer NN": kmer["sweep"]})
    coverage = _coverage(barcodes, split_run, partial) if partial_runs else None
    (out / "real_barcodes.json").write_text(json.dumps(relative_paths(
        {"models": agg, "kmer": kmer, "partial_reads": partial_agg, "kmer_partial_reads": kmer_partial,
         "partial_reads_coverage": coverage}, ROOT), indent=1), encoding="utf-8")
    (out / "real_barcodes.md").write_text(
        report(agg, kmer, partial_agg, kmer_partial, coverage, args, minutes, plots), encoding="utf-8")
    print(out / "real_barcodes.md")
    return 0


def _kmer(work: Path, barcodes: Path, split_run: Path, tag: str, extra: list) -> dict:
    path = work / "results" / f"{tag}.json"
    if not path.is_file():
        run_step([sys.executable, "-m", "train", "kmer-baseline", "--metadata", barcodes, "--split", split_run,
                  *extra, "--out", path], work / "logs" / f"{tag}.log")
    return json.loads(path.read_text(encoding="utf-8"))


def _coverage(barcodes: Path, split_run: Path, partial: Path) -> dict[str, float]:
    """Percent of the partial reads labelled at each level whose name occurs in the training split: the best any
    closed-vocabulary method can score there."""
    frame = read_metadata(barcodes)
    train = frame.iloc[read_split(split_run).train]
    reads = read_metadata(partial)
    out = {}
    for level in LEVELS:
        labelled = reads[level].dropna()
        out[level] = round(100.0 * labelled.isin(set(train[level].dropna())).mean(), 1) if len(labelled) else None
        out[f"{level}_n"] = int(len(labelled))
    return out


def _nearest(results: dict, condition: str) -> dict | None:
    """Per-rank scores of the DNA->DNA nearest-neighbour identification (retrieval, every query) in ``results``."""
    found = (((results.get("retrieval") or {}).get(condition) or {}).get("dna") or {}).get("all") or {}
    return found.get("micro")


def _row(name: str, per_level: dict | None, levels=EVAL_LEVELS) -> str:
    return f"| {name} | " + " | ".join(score_cell((per_level or {}).get(level), ("top1",)) for level in levels) + " |"


def report(agg, kmer, partial_agg, kmer_partial, coverage, args, minutes, plots) -> str:
    meta = next(iter(agg.values()))["_meta"]
    seconds = [s for a in agg.values() for s in a["_meta"]["train_seconds"] if s]
    header = "| Method | " + " | ".join(level.capitalize() for level in EVAL_LEVELS) + " |"
    rule = "|---" * (len(EVAL_LEVELS) + 1) + "|"
    lines = [
        "# Real barcodes: generated tables",
        "",
        f"Generated by `python studies/real_barcodes.py` in {minutes:.0f} min on this machine ({args.lanes} runs in "
        f"parallel, one CPU thread each; a run trains in {min(seconds):.0f}-{max(seconds):.0f} s). "
        f"`barcodes.tsv`, seeded closed-set split: {meta.get('specimens')} test specimens, "
        f"{kmer['_meta']['references']} training barcodes (the k-mer references). Models: mean ± sample sd over "
        f"seeds {args.seeds}. DNA -> text, candidates = the training split's taxonomy strings.",
        "",
        "## DNA -> text, Table 1 layout (top-1 / top-5, %)",
        "",
        format_table1({**agg, "k-mer NN (k=6)": kmer}),
        "",
        "## Top-1 (%) side by side",
        "",
        header, rule,
    ]
    for condition, label in (("clean", "clean"), ("noisy_dna", "noisy DNA")):
        lines += [_row(f"{name}, {label}", (a.get(condition) or {}).get("dna")) for name, a in agg.items()]
        lines.append(_row(f"k-mer NN, {label}", kmer[condition]["dna"]))
    lines += ["", "## Nearest training barcode: the model's DNA space vs k-mer profiles (top-1 %, every test "
              "barcode)", "", "Both identify a barcode by the labels of its nearest training barcode; the model "
              "measures nearness in its learned DNA embedding, the k-mer search by cosine of 6-mer counts "
              "(no Global: retrieval is scored per rank).", "", header, rule]
    for condition, label in (("clean", "clean"), ("noisy_dna", "noisy DNA")):
        lines += [_row(f"{name} DNA->DNA, {label}", _nearest(a, condition)) for name, a in agg.items()]
        lines.append(_row(f"k-mer NN, {label}", kmer[condition]["dna"]))
    if partial_agg:
        lines += ["", "## Partial reads (`partial_reads_313bp.tsv`): top-1 (%)", "",
                  f"{kmer_partial['_meta']['specimens']} reads of 313 bp. A read whose name at a level is absent from "
                  "the training split cannot be right there; the first row is that ceiling.", "",
                  header, rule,
                  "| ceiling (name in training split) | " + " | ".join(
                      "–" if coverage.get(level) is None else f"{coverage[level]:.1f}" for level in EVAL_LEVELS[:4])
                  + " | – |"]
        lines += [_row(f"{name} DNA->text", (a.get("clean") or {}).get("dna")) for name, a in partial_agg.items()]
        lines += [_row(f"{name} DNA->DNA", _nearest(a, "clean")) for name, a in partial_agg.items()]
        lines.append(_row("k-mer NN (k=6)", kmer_partial["clean"]["dna"]))
    lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots] + [""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
