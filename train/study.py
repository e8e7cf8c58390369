"""Run a study: many (arm, seed) trainings through the documented CLI, then mean and spread over seeds.

A study script (``studies/*.py``) lists its arms (a name and ``section.key=value`` overrides of one config);
:func:`run_arms` trains, exports and evaluates every arm for every seed with ``python -m train fit / export /
eval``, a few at a time on one CPU thread each. Each finished run leaves its results JSON, and a re-run skips
it, so a killed study resumes where it stopped. :func:`aggregate` turns the per-seed results into the same
nested layout with means and sample standard deviations, which :func:`train.evaluate.format_table1` and
:func:`~train.evaluate.format_table2` print as ``mean ± sd``.

For model selection and training budgets: :meth:`Study.rejected` says why the config refuses an arm (a key this
version does not know), :func:`finished_runs` collects only what has already run (to rebuild a report while runs
go on), :func:`learning_curve` reads a run's validation curve (``run.eval_every``) and :func:`aggregate_curves`
averages curves over seeds; :func:`plateau` summarises how flat a curve's end is.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from train.config import load_config
from train.evaluate import score_cell
from train.rundir import CHECKPOINT, METRICS
from train.validation import validation_curve

logger = logging.getLogger(__name__)

SCORE_KEYS = ("top1", "top3", "top5")
# `train` is not installed, only importable from the repository root: every step runs there.
REPO_ROOT = Path(__file__).resolve().parents[1]


def run_step(cmd: Sequence[str], log: Path) -> None:
    """Run one pipeline command with one CPU thread, its output appended to ``log``; a failure names the log.

    The command runs in the repository root with it on ``PYTHONPATH``, so ``python -m train`` works wherever the
    study was started; paths in ``cmd`` and ``log`` should therefore be absolute.
    """
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"), "PYTHONPATH": path}
    with open(log, "a", encoding="utf-8") as fh:
        fh.write("$ " + " ".join(map(str, cmd)) + "\n")
        fh.flush()
        done = subprocess.run(list(map(str, cmd)), stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"step failed ({' '.join(map(str, cmd[2:5]))}...): see {log}")


@dataclass(frozen=True)
class Arm:
    """One configuration of a study: a name and the overrides that make it differ from the study's config."""

    name: str
    overrides: tuple[str, ...] = ()
    eval_args: tuple[str, ...] = ()  # extra ``python -m train eval`` arguments, e.g. ("--sweep",)
    seeds: tuple[int, ...] | None = None  # only these of the study's seeds (a side arm on a smaller budget)


@dataclass
class Study:
    """Where a study's runs go and how each is trained and scored.

    ``metadata`` / ``images``: the data (``images`` None for DNA-only data); ``config``: the YAML every arm
    starts from; ``common``: overrides for every arm; ``lanes``: runs in parallel (one thread each).
    """

    work: Path
    config: Path
    metadata: Path
    images: Path | None = None
    common: tuple[str, ...] = ()
    lanes: int = 2
    eval_args: tuple[str, ...] = ()
    max_reference: int = 2000  # training specimens in each bundle's reference bank (retrieval keys)

    def __post_init__(self) -> None:
        # the steps run in the repository root (run_step): a path relative to where the study started must not move
        self.work, self.config, self.metadata = (Path(p).resolve() for p in (self.work, self.config, self.metadata))
        self.images = Path(self.images).resolve() if self.images else None

    def run_dir(self, arm: Arm, seed: int) -> Path:
        return self.work / "runs" / f"{arm.name}-s{seed}"

    def bundle_dir(self, arm: Arm, seed: int) -> Path:
        return self.work / "bundles" / f"{arm.name}-s{seed}"

    def results_file(self, arm: Arm, seed: int) -> Path:
        return self.work / "results" / f"{arm.name}-s{seed}.json"

    def rejected(self, arm: Arm) -> str | None:
        """Why the study's config refuses ``arm``'s overrides (e.g. a key this version lacks), or None if it loads."""
        try:
            load_config(self.config, [*self.common, *arm.overrides])
        except (ValueError, TypeError) as err:
            return str(err)
        return None

    def stale(self, results: dict[str, Any]) -> bool:
        """Whether saved results were scored with another "noisy image" blur kernel than today's default
        (:data:`train.evaluate.DEFAULT_BLUR_KERNEL`, chosen from the study's own blur criterion): they are then
        re-scored from the run's bundle, without training again."""
        from train.evaluate import DEFAULT_BLUR_KERNEL

        kernel = (results.get("_meta") or {}).get("blur_kernel")
        return self.images is not None and kernel is not None and int(kernel) != DEFAULT_BLUR_KERNEL

    def run_one(self, arm: Arm, seed: int) -> dict[str, Any]:
        """fit -> export -> eval for one arm and seed; reuses a finished run's results (re-scored when stale)."""
        out = self.results_file(arm, seed)
        if out.is_file():
            saved = json.loads(out.read_text(encoding="utf-8"))
            if not (self.stale(saved) and self.bundle_dir(arm, seed).is_dir()):
                return saved
            results = self._score(arm, seed, out)
            results["_meta"].update({k: v for k, v in saved["_meta"].items() if k.endswith("_seconds")})
            out.write_text(json.dumps(results, indent=1), encoding="utf-8")
            logger.info("%s seed %d: re-scored (blur kernel %s -> %s)", arm.name, seed,
                        saved["_meta"].get("blur_kernel"), results["_meta"].get("blur_kernel"))
            return results
        for sub in ("runs", "bundles", "results", "logs"):
            (self.work / sub).mkdir(parents=True, exist_ok=True)
        run, bundle, log = self.run_dir(arm, seed), self.bundle_dir(arm, seed), self.work / "logs" / f"{arm.name}-s{seed}.log"
        py = [sys.executable, "-m", "train"]
        data = [f"data.metadata={self.metadata}", f"data.images={self.images if self.images else 'null'}"]
        t0 = time.time()
        fit = [*py, "fit", "--config", self.config, *data, f"run.out_dir={run}", f"run.seed={seed}",
               *self.common, *arm.overrides]
        # a killed study leaves a checkpoint: resume it rather than start over
        run_step(fit + (["--resume"] if (run / CHECKPOINT).is_file() else []), log)
        trained = time.time() - t0
        run_step([*py, "export", "--run", run, "--out", bundle, "--name", f"{arm.name}-s{seed}",
                  "--max-reference", self.max_reference, "--no-umap"], log)
        results = self._score(arm, seed, out)
        results.setdefault("_meta", {})["train_seconds"] = round(trained, 1)
        results["_meta"]["total_seconds"] = round(time.time() - t0, 1)
        out.write_text(json.dumps(results, indent=1), encoding="utf-8")
        logger.info("%s seed %d: %.0f s (training %.0f s)", arm.name, seed, time.time() - t0, trained)
        return results

    def _score(self, arm: Arm, seed: int, out: Path) -> dict[str, Any]:
        """``python -m train eval`` of a trained arm's bundle on its own test rows, into ``out``."""
        images = ["--images", self.images] if self.images else []
        return _evaluate(self.bundle_dir(arm, seed), out, self.work / "logs" / f"{arm.name}-s{seed}.log",
                         ["--metadata", self.metadata, *images, "--split", self.run_dir(arm, seed),
                          *self.eval_args, *arm.eval_args])

    def score_on(self, arm: Arm, seed: int, tag: str, eval_args: Sequence[str]) -> dict[str, Any]:
        """Evaluate a trained arm's bundle on other data (``eval_args``: ``--metadata FILE`` ...), cached by ``tag``
        (re-scored when :meth:`stale`)."""
        out = self.work / "results" / f"{arm.name}-s{seed}-{tag}.json"
        if out.is_file():
            saved = json.loads(out.read_text(encoding="utf-8"))
            if not self.stale(saved):
                return saved
        return _evaluate(self.bundle_dir(arm, seed), out, self.work / "logs" / f"{arm.name}-s{seed}.log", eval_args)


def finished_runs(study: Study, arms: Sequence[Arm], seeds: Sequence[int]) -> dict[str, list[dict[str, Any]]]:
    """The results of every (arm, seed) that has finished, without training anything: ``{arm: [results]}`` (arms
    with no finished seed are left out)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for arm in arms:
        for seed in seeds:
            path = study.results_file(arm, seed)
            if (arm.seeds is None or seed in arm.seeds) and path.is_file():
                out.setdefault(arm.name, []).append(json.loads(path.read_text(encoding="utf-8")))
    return out


def learning_curve(run_dir: Path, keys: Sequence[str] | None = None) -> dict[str, list[float]]:
    """A run's validation curve from its ``metrics.jsonl``: ``{"step": [...], "<key>": [...]}`` for every ``val_*``
    key (or ``keys``) logged at all validation steps; ``{}`` when the run logged none."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return {}
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    keys = keys or sorted({k for r in records for k in r if k.startswith("val_") and k not in
                           ("val_specimens", "val_seconds")})
    curve: dict[str, list[float]] = {}
    for key in keys:
        steps, values = validation_curve(records, key)
        if not len(steps):
            continue
        if "step" in curve and curve["step"] != steps.tolist():
            continue  # a key logged at other steps than the first one's is not part of this curve
        curve["step"] = steps.tolist()
        curve[key] = values.tolist()
    return curve


# What a training line of metrics.jsonl says about the objective at the end of a run (question 4's evidence)
TRAINING_KEYS = ("loss", "clip", "hir", "fuse", "hir_clamped_family", "hir_clamped_genus", "hir_clamped_species")


def training_summary(run_dir: Path, keys: Sequence[str] = TRAINING_KEYS, tail: float = 0.1) -> dict[str, float]:
    """Means of the training-loss terms (and HiR's clamp fractions) over the last ``tail`` share of a run's logged
    training lines, plus ``last_logged_step``; ``{}`` without a log."""
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return {}
    records = [r for r in (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
               if "loss" in r]
    if not records:
        return {}
    by_step = {int(r["step"]): r for r in records}  # a resumed run may log a step twice: the last one wins
    last = [by_step[s] for s in sorted(by_step)][-max(1, int(round(tail * len(by_step)))):]
    out = {"last_logged_step": float(max(by_step))}
    for key in keys:
        values = [r[key] for r in last if r.get(key) is not None]
        if values:
            out[key] = float(np.mean(values))
    return out


def aggregate_curves(curves: Sequence[Mapping[str, Sequence[float]]]) -> dict[str, list[float | None]]:
    """Mean and sample sd (``<key>_sd``) over seeds, per step present in every curve."""
    curves = [c for c in curves if c.get("step")]
    if not curves:
        return {}
    steps = sorted(set.intersection(*(set(c["step"]) for c in curves)))
    out: dict[str, list[float | None]] = {"step": [float(s) for s in steps]}
    for key in (k for k in curves[0] if k != "step" and all(k in c for c in curves)):
        at = [dict(zip(c["step"], c[key])) for c in curves]
        stats = [_mean_sd([a[s] for a in at]) for s in steps]
        out[key], out[f"{key}_sd"] = [m for m, _ in stats], [sd for _, sd in stats]
    return out


def plateau(steps: Sequence[float], values: Sequence[float | None], tail: float = 0.25) -> dict[str, float | None]:
    """How flat a curve's end is: the last value, the best, and the gain over the last ``tail`` share of steps (last
    value minus the value at the last point before that share); a gain near 0 (within the seeds' sd) is a plateau."""
    points = [(s, v) for s, v in zip(steps, values) if v is not None]
    if not points:
        return {"final": None, "best": None, "best_step": None, "tail_gain": None, "tail_from_step": None}
    xs = [s for s, _ in points]
    # the tail starts at the last point at or before the cut, so it always spans at least two points
    start = max(i for i, s in enumerate(xs) if s <= xs[-1] - tail * (xs[-1] - xs[0]))
    best = max(points, key=lambda p: p[1])
    return {"final": points[-1][1], "best": best[1], "best_step": best[0],
            "tail_gain": points[-1][1] - points[start][1], "tail_from_step": xs[start]}


def _evaluate(bundle: Path, out: Path, log: Path, eval_args: Sequence[Any]) -> dict[str, Any]:
    """``python -m train eval`` on one thread into ``out``, written only when complete."""
    tmp = out.with_suffix(".partial.json")
    run_step([sys.executable, "-m", "train", "eval", "--bundle", bundle, "--threads", "1", *eval_args, "--out", tmp],
             log)
    results = json.loads(tmp.read_text(encoding="utf-8"))
    out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    tmp.unlink()
    return results


def add_study_arguments(parser: argparse.ArgumentParser, work: Path, out: Path) -> None:
    """The options every study script shares: where runs and outputs go, seeds, lanes, extra overrides."""
    parser.add_argument("--work", default=str(work), help="runs, bundles and logs (default %(default)s)")
    parser.add_argument("--out", default=str(out), help="tables, JSON and plots (default %(default)s)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lanes", type=int, default=2, help="runs in parallel, one CPU thread each")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra section.key=value for every arm "
                                                                     "(e.g. optim.epochs=1 for a smoke test)")
    parser.add_argument("--report-only", action="store_true", help="no training: report the finished runs")


def synthetic_benchmark(work: Path, specimens: int, image_height: int, report_only: bool = False) -> Path:
    """The study's synthetic benchmark in ``work/synth`` (written once, seed 0); its ``metadata.tsv``.

    A report-only run never writes one: without it there is no study to report, which it says.
    """
    synth = Path(work) / "synth"
    if not (synth / "metadata.tsv").is_file():
        if report_only:
            raise SystemExit(f"no study in {work} (no {synth / 'metadata.tsv'}): run the study first")
        from train.synthetic import SynthConfig, generate

        generate(synth, SynthConfig(specimens=specimens, seed=0, image_height=image_height))
    return synth / "metadata.tsv"


def use_smoke_folders(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """A ``--smoke`` run keeps its runs and report apart: ``<work>-smoke`` and its ``report`` unless given."""
    if args.work == parser.get_default("work"):
        args.work = str(Path(args.work).with_name(Path(args.work).name + "-smoke"))
    if args.out == parser.get_default("out"):
        args.out = str(Path(args.work) / "report")


def run_arms(study: Study, arms: Sequence[Arm], seeds: Sequence[int], keep_going: bool = False
             ) -> dict[str, list[dict[str, Any]]]:
    """Every arm for every seed, ``study.lanes`` at a time; returns ``{arm name: [results per seed]}``.

    A failed run raises, unless ``keep_going``: then it is logged (its log file names the cause), the other runs go
    on, and its seed is missing from the results (a re-run retries it).
    """
    # seed-major: a partial study has every arm once
    jobs = [(arm, seed) for seed in seeds for arm in arms if arm.seeds is None or seed in arm.seeds]
    with ThreadPoolExecutor(max_workers=max(1, study.lanes)) as pool:
        futures = {(arm.name, seed): pool.submit(study.run_one, arm, seed) for arm, seed in jobs}
        results: dict[str, list[dict[str, Any]]] = {arm.name: [] for arm in arms}
        for (name, seed), future in futures.items():
            try:
                results[name].append(future.result())
            except RuntimeError as err:
                if not keep_going:
                    raise
                logger.error("%s seed %d failed, the study goes on without it: %s", name, seed, err)
    return results


# ----------------------------------------------------------------------------------------------------------------
# Mean and spread over seeds


def _is_score(node: Any) -> bool:
    return isinstance(node, Mapping) and "top1" in node and not isinstance(node["top1"], Mapping)


def _mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    kept = np.array([v for v in values if v is not None], dtype=float)
    if kept.size == 0:
        return None, None
    return float(kept.mean()), float(kept.std(ddof=1)) if kept.size > 1 else None  # one seed: no spread


def _merge_numbers(nodes: Sequence[Any]) -> Any:
    """Mean of every number (``<key>_sd`` beside it) in same-shaped nested dicts; other leaves from the first."""
    if all(isinstance(n, Mapping) for n in nodes):
        out: dict[str, Any] = {}
        for key in (k for k in nodes[0] if all(k in n for n in nodes)):
            values = [n[key] for n in nodes]
            numeric = [v for v in values if v is not None]
            if numeric and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numeric):
                out[key], out[f"{key}_sd"] = _mean_sd(values)
            else:
                out[key] = _merge_numbers(values)
        return out
    return nodes[0]


def aggregate(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-seed results (the ``eval`` JSON) -> one dict of the same layout holding means, with ``<key>_sd`` beside
    every score (sample standard deviation over seeds) and ``n_seeds`` in ``_meta``; sweeps are averaged per point,
    and so is every number of a query's ``hierarchy`` block (severity, agreement, drift).
    """
    if not runs:
        raise ValueError("no runs to aggregate")

    def merge(nodes: Sequence[Any], key: str | None = None) -> Any:
        if key == "hierarchy":
            return _merge_numbers(nodes)
        if _is_score(nodes[0]):
            out: dict[str, Any] = {}
            for key in SCORE_KEYS:
                if key in nodes[0]:
                    out[key], out[f"{key}_sd"] = _mean_sd([n.get(key) for n in nodes])
            return out
        if isinstance(nodes[0], Mapping):
            common = [k for k in nodes[0] if all(isinstance(n, Mapping) and k in n for n in nodes)]
            return {k: merge([n[k] for n in nodes], k) for k in common}
        return nodes[0]

    result = {k: merge([r[k] for r in runs]) for k in runs[0] if k not in ("_meta", "sweep") and all(k in r for r in runs)}
    result["_meta"] = {**runs[0].get("_meta", {}), "n_seeds": len(runs),
                       "train_seconds": [r.get("_meta", {}).get("train_seconds") for r in runs]}
    if all(r.get("sweep") for r in runs):
        result["sweep"] = aggregate_sweep([r["sweep"] for r in runs])
    return result


def aggregate_sweep(sweeps: Sequence[Sequence[Mapping[str, Any]]]) -> list[dict[str, Any]]:
    """Sweep records of several seeds -> one record per (kind, strength, query, level) with ``top1`` / ``top1_sd``."""
    points: dict[tuple, list[float | None]] = {}
    for records in sweeps:
        for r in records:
            points.setdefault((r["kind"], r["strength"], r["query"], r["level"]), []).append(r["top1"])
    out = []
    for (kind, strength, query, level), values in points.items():
        mean, sd = _mean_sd(values)
        out.append({"kind": kind, "strength": strength, "query": query, "level": level, "top1": mean, "top1_sd": sd})
    return out


def global_top1(results: Mapping[str, Any], condition: str, query: str, level: str = "global") -> str:
    """Top-1 ``mean±sd`` of one cell of aggregated results, for prose and small tables."""
    return score_cell(((results.get(condition) or {}).get(query) or {}).get(level), ("top1",))


def relative_paths(node: Any, root: str | os.PathLike) -> Any:
    """``node`` with every absolute path string made relative to ``root``: results written into the repository
    then name no machine-specific folder (``../shared/data/...`` instead of an absolute path)."""
    if isinstance(node, Mapping):
        return {k: relative_paths(v, root) for k, v in node.items()}
    if isinstance(node, list):
        return [relative_paths(v, root) for v in node]
    if isinstance(node, str) and os.path.isabs(node) and "\n" not in node:
        return os.path.relpath(node, root)
    return node
