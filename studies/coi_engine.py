"""The COI identification engine on real barcodes: k-mer NN, alignment hits, the DNA model, and their reconciliation.

    python studies/coi_engine.py         # resumes from --work; the model is the one `python -m train fit` made:
    python -m train fit --config train/configs/real_dna.yaml data.metadata=../shared/data/real_dna/barcodes.tsv \\
        run.out_dir=runs/real-dna --export runs/real-dna-bundle

On the seeded closed-set split of ``barcodes.tsv`` saved with that run (references = the training rows only) it
scores, per rank, (a) the k-mer nearest neighbour (:mod:`train.kmer_baseline`), (b) the engine's alignment
verdicts alone (:func:`hirviz.coi_refs.rank_verdicts`), (c) the reconciled answer of :func:`hirviz.coi.assemble`
with the model and (d) the model alone (its top name), on the clean test barcodes, on the same barcodes degraded
as METHOD.md says (:class:`hirviz.degrade.DnaNoise`, seeded by row) and on ``partial_reads_313bp.tsv``. A rank's
accuracy is over the queries labelled there, an abstention counting as wrong; the abstention rate and the error
rate among named answers are reported beside it. The same scores on a validation slice of the training split
(a closed-set split of it, searched against the rest; partial reads simulated as the last 313 bp of each barcode)
are what any engine setting is chosen on: the test rows are never used for a choice.

The expensive parts (input checks + aligned hits, model answers) are cached per query set in ``--work``; the
scores are recomputed from them, so a change of verdict or reconciliation rules re-scores in seconds. Writes
``docs/results/coi_engine.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pickle
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hirviz import coi, coi_protein, coi_refs  # noqa: E402
from hirviz.barcode import BarcodeError  # noqa: E402
from hirviz.coi import assemble  # noqa: E402
from hirviz.coi_check import check_barcode, coding_protein  # noqa: E402
from hirviz.coi_refs import ReferenceSet  # noqa: E402
from hirviz.degrade import DnaNoise, degrade_barcodes  # noqa: E402
from hirviz.taxonomy import LEVELS  # noqa: E402
from train.data import closed_set_split, read_metadata  # noqa: E402
from train.data.readers import specimen_ids  # noqa: E402
from train.kmer_baseline import KmerNearestNeighbour  # noqa: E402
from train.rundir import read_split, select_rows  # noqa: E402

PARTIAL_BP = 313
METHODS = ("k-mer NN", "alignment", "reconciled", "model")
# The engine's settings before each change, then each change, cumulatively (constants of hirviz.coi_refs, or
# hirviz.coi for "coi.*"; the last step is the shipped default). Every choice was made on the val/* rows.
_OLD_RECONCILE = {"coi.AGREE": {}, "coi.MODEL_ALONE": {level: 0.5 for level in LEVELS}, "coi.RESUME_BELOW": False}
STEPS: list[tuple[str, dict[str, Any]]] = [
    ("before: every hit above the threshold votes; species 98 %",
     {"NEAR_BEST": {level: 100.0 for level in LEVELS}, "CONSENSUS": {}, "AGREEMENT": 0.9,
      "RANK_THRESHOLDS": {**coi_refs.RANK_THRESHOLDS, "species": (98.0, 400)}, **_OLD_RECONCILE}),
    ("+ only hits within 3 points of the closest vote",
     {"CONSENSUS": {}, "AGREEMENT": 0.9, "RANK_THRESHOLDS": {**coi_refs.RANK_THRESHOLDS, "species": (98.0, 400)},
      **_OLD_RECONCILE}),
    ("+ order / family from >= 3 agreeing hits at >= 80 / 85 %",
     {"AGREEMENT": 0.9, "RANK_THRESHOLDS": {**coi_refs.RANK_THRESHOLDS, "species": (98.0, 400)}, **_OLD_RECONCILE}),
    ("+ species at 97 % (previous defaults)", {"AGREEMENT": 0.9, **_OLD_RECONCILE}),
    ("+ 75 % of the near votes suffice (was 90 %)", _OLD_RECONCILE),
    ("+ nearest hits and model agreeing name a rank (75 / 80 / 92 / 95 %)",
     {"coi.MODEL_ALONE": {level: 0.5 for level in LEVELS}, "coi.RESUME_BELOW": False}),
    ("+ close hits name ranks below one named with the model", {"coi.MODEL_ALONE": {level: 0.5 for level in LEVELS}}),
    ("+ model alone at order / family only", {"protein.THRESHOLDS": {}}),
    ("+ protein hits name order / family (shipped defaults)", {}),
]

# Candidate reconciliation rules compared on the val/* slices only (with a model that has not seen them:
# --val-bundle), to choose whether the model alone may name genus / species and how it names families.
_ALONE = coi.MODEL_ALONE
CANDIDATES: list[tuple[str, dict[str, Any]]] = [
    ("shipped defaults", {}),
    *[(f"model alone at order / family >= {t:g}", {"coi.MODEL_ALONE": {"order": 0.5, "family": t}})
      for t in (0.3, 0.7)],
    *[(f"model alone also at genus >= {t:g}", {"coi.MODEL_ALONE": {**_ALONE, "genus": t}})
      for t in (0.2, 0.3, 0.5, 0.7, 0.9)],
    *[(f"model alone also at genus and species >= {t:g}", {"coi.MODEL_ALONE": {**_ALONE, "genus": t, "species": t}})
      for t in (0.5, 0.7, 0.9)],
    ("hits + model agreeing at family from 75 % (was 80)",
     {"coi.AGREE": {**coi.AGREE, "family": (75.0, 0.1)}}),
    ("hits + model agreeing at genus / species from 88 / 92 % (was 92 / 95)",
     {"coi.AGREE": {**coi.AGREE, "genus": (88.0, 0.1), "species": (92.0, 0.1)}}),
    *[(f"{level} from {identity:g} % (was {coi_refs.RANK_THRESHOLDS[level][0]:g})",
       {"RANK_THRESHOLDS": {**coi_refs.RANK_THRESHOLDS, level: (identity, coi_refs.RANK_THRESHOLDS[level][1])}})
      for level, identity in (("species", 96.0), ("species", 95.0), ("genus", 94.0), ("genus", 93.0))],
    ("no protein hits", {"protein.THRESHOLDS": {}}),
    *[(f"protein hits at order / family from {o:g} / {f:g} % amino-acid identity",
       {"protein.THRESHOLDS": {"order": (o, coi_protein.MIN_RESIDUES), "family": (f, coi_protein.MIN_RESIDUES)}})
      for o, f in ((0, 0), (80, 85), (85, 90), (90, 95), (95, 97))],
    ("protein hits at order only", {"protein.THRESHOLDS": {"order": coi_protein.THRESHOLDS["order"]}}),
    *[(f"protein hits within {w:g} points of the closest vote",
       {"protein.NEAR_BEST": {"order": w, "family": w}}) for w in (1, 5, 10)],
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "real_dna"))
    parser.add_argument("--run", default=str(ROOT / "runs" / "real-dna"), help="the fit run (its split.npz)")
    parser.add_argument("--bundle", default=str(ROOT / "runs" / "real-dna-bundle"), help="its exported bundle")
    parser.add_argument("--work", default=str(ROOT / "runs" / "coi-engine"), help="cache of hits and model answers")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results"))
    parser.add_argument("--seed", type=int, default=0, help="DNA noise and validation split seed")
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--val-bundle", default=None,
                        help="the model that answers the val/* slices: one trained without them (--write-partition); "
                             "default --bundle (then its validation scores are optimistic)")
    parser.add_argument("--no-model", action="store_true", help="score without the model (c and d left out)")
    parser.add_argument("--write-partition", metavar="TSV",
                        help="only write the partition that trains a model honest on the val/* slices, and exit")
    args = parser.parse_args(argv)
    if args.write_partition:
        validation_partition(Path(args.data) / "barcodes.tsv", args.run, Path(args.write_partition),
                             args.val_fraction, args.seed)
        return 0
    started = time.time()
    data, work, out = Path(args.data), Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)

    barcodes = data / "barcodes.tsv"
    train, _ = select_rows(barcodes, args.run, "train")
    test, _ = select_rows(barcodes, args.run, "test")
    partial = read_metadata(data / "partial_reads_313bp.tsv")
    train, test, partial = (f.reset_index(drop=True) for f in (train, test, partial))
    val_refs_rows, val_rows = closed_set_split(train, args.val_fraction, args.seed)
    val_refs, val = train.iloc[val_refs_rows].reset_index(drop=True), train.iloc[val_rows].reset_index(drop=True)

    predictor = None if args.no_model else _predictor(args.bundle)
    val_bundle = args.val_bundle or args.bundle
    val_predictor = None if args.no_model else (_predictor(val_bundle) if args.val_bundle else predictor)
    noise = DnaNoise()
    sets: dict[str, tuple[pd.DataFrame, list[str], pd.DataFrame]] = {}
    for split, queries, refs_frame in (("val", val, val_refs), ("test", test, train)):
        clean = queries["barcode"].fillna("").tolist()
        sets[f"{split}/clean"] = (queries, clean, refs_frame)
        sets[f"{split}/degraded"] = (queries, _degrade(clean, noise, args.seed), refs_frame)
    sets["val/partial"] = (val, [_last_bp(s, PARTIAL_BP) for s in sets["val/clean"][1]], val_refs)
    open_refs, open_queries = open_set_split(train, args.seed)
    sets["val/open"] = (open_queries, [_last_bp(s, PARTIAL_BP) for s in open_queries["barcode"].fillna("")],
                        open_refs)
    # The same held-out rows as whole barcodes, clean and degraded: what a relaxed genus or species rule risks on
    # full-length queries of taxa the references lack.
    sets["val/open-full"] = (open_queries, open_queries["barcode"].fillna("").tolist(), open_refs)
    sets["val/open-full-degraded"] = (open_queries, _degrade(sets["val/open-full"][1], noise, args.seed), open_refs)
    sets["test/partial"] = (partial, partial["barcode"].fillna("").tolist(), train)

    cached: dict[str, dict[str, Any]] = {}
    engines: dict[int, ReferenceSet] = {}
    for name, (_, seqs, refs_frame) in sets.items():
        key = id(refs_frame)
        if key not in engines:
            engines[key] = _references(refs_frame)
        stem = name.replace("/", "_") + ".pkl"
        model, bundle = (val_predictor, val_bundle) if name.startswith("val/") else (predictor, args.bundle)
        model_dir = work / ("model-" + _fingerprint(bundle)) if model is not None else None
        cached[name] = _cached(work / stem, seqs, engines[key], model, model_dir and model_dir / stem)

    results: dict[str, Any] = {"_meta": {
        "references": {"test": int(train["barcode"].notna().sum()), "val": int(val_refs["barcode"].notna().sum()),
                       "val/open": int(open_refs["barcode"].notna().sum())},
        "bundle": str(args.bundle) if predictor is not None else None,
        "val_bundle": str(val_bundle) if predictor is not None else None,
        "queries": {name: len(s[1]) for name, s in sets.items()}, "dna_noise": noise.__dict__, "seed": args.seed,
        "metric": "per rank, over the queries labelled there: accuracy (abstention = wrong), abstention rate, "
                  "error rate among named answers (percent)",
    }}
    results["steps"] = {}
    for name, (frame, seqs, refs_frame) in sets.items():
        truth = frame[list(LEVELS)].fillna("").astype(str).to_numpy(dtype=object)
        answers = _answers(cached[name], seqs, refs_frame, predictor is not None)
        results[name] = {method: score(names, truth) for method, names in answers.items()}
        results[name]["_seconds_per_query"] = cached[name]["seconds"] / max(len(seqs), 1)
        results["steps"][name] = {}
        for step, settings in STEPS:
            with _settings(settings):
                answers = _answers(cached[name], seqs, refs_frame, predictor is not None, kmer=False)
            results["steps"][name][step] = {method: score(names, truth) for method, names in answers.items()}
        if name.startswith("val/") and predictor is not None:
            results.setdefault("choices", {})[name] = {}
            for label, settings in CANDIDATES:
                with _settings(settings):
                    answers = _answers(cached[name], seqs, refs_frame, True, kmer=False)
                results["choices"][name][label] = score(answers["reconciled"], truth)
    (out / "coi_engine.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    (out / "coi_engine.md").write_text(report(results, (time.time() - started) / 60), encoding="utf-8")
    print(report(results, (time.time() - started) / 60))
    return 0


def _predictor(bundle: str):
    import torch

    from hirviz.bundle import load_bundle
    from hirviz.predict import Predictor

    torch.set_num_threads(1)
    if not Path(bundle).is_dir():
        raise SystemExit(f"no bundle at {bundle}: train it first (module docstring) or pass --no-model")
    return Predictor(load_bundle(bundle))


def _degrade(seqs: list[str], noise: DnaNoise, seed: int) -> list[str]:
    """As ``python -m train kmer-baseline`` degrades test barcodes: key = position, an emptied barcode is "N"."""
    present = [i for i, s in enumerate(seqs) if s]
    out = list(seqs)
    for i, seq in zip(present, degrade_barcodes([seqs[i] for i in present], noise, seed, keys=present)):
        out[i] = seq or "N"
    return out


def _last_bp(seq: str, n: int) -> str:
    """The last ``n`` bases before trailing Ns: the partial reads cover the 3' end of the barcode region."""
    return seq.rstrip("N")[-n:]


def _references(frame: pd.DataFrame) -> ReferenceSet:
    rows = frame[frame["barcode"].fillna("") != ""]
    return ReferenceSet(rows["processid"].astype(str).tolist(), rows[list(LEVELS)].fillna("").to_numpy(dtype=object), rows["barcode"].tolist())


def open_set_split(frame: pd.DataFrame, seed: int, size: int = 700) -> tuple[pd.DataFrame, pd.DataFrame]:
    """An open-set validation slice of the training split, shaped like the partial reads (whose families are
    mostly known, genera mostly and species all unknown): ``(references, queries)``, where the references lack
    every row of 20 % of the families, of 15 % of the remaining genera and of 10 % of the remaining species, and
    the ``size`` queries are drawn from those rows (20 % from held-out families, 70 % genera, 10 % species)."""
    held, picked = open_set_rows(frame, seed, size)
    return frame[~held].reset_index(drop=True), frame.iloc[picked].reset_index(drop=True)


def open_set_rows(frame: pd.DataFrame, seed: int, size: int = 700) -> tuple[np.ndarray, np.ndarray]:
    """:func:`open_set_split` as ``(held, picked)``: a bool mask of the rows the references lack, and the sorted
    row positions of the queries."""
    rng = np.random.default_rng([seed, 313])
    held = np.zeros(len(frame), bool)
    pools = []
    for level, share, n in (("family", 0.2, 0.2), ("genus", 0.15, 0.7), ("species", 0.1, 0.1)):
        names = frame.loc[~held & (frame[level].fillna("") != ""), level].unique()
        out = set(rng.choice(names, int(round(share * len(names))), replace=False).tolist())
        rows = ~held & frame[level].isin(out).to_numpy() & frame["barcode"].notna().to_numpy()
        pools.append((np.flatnonzero(rows), n))
        held |= frame[level].isin(out).to_numpy()
    picked = np.concatenate([rng.choice(rows, min(len(rows), int(n * size)), replace=False) for rows, n in pools])
    return held, np.sort(picked)


def validation_partition(barcodes: Path, run: str, out: Path, val_fraction: float, seed: int) -> Path:
    """A partition file (``sampleid``, ``partition``) that trains a model honest on every ``val/*`` slice:
    ``train`` = the training rows that are references of both validation searches (so the model has seen no
    validation query, and no row of the taxa the open-set slice holds out), ``test_seen_query`` = the run's test
    rows, ``heldout`` = the rest. ``python -m train fit ... data.split=clibd data.partition=PATH`` trains on it."""
    frame = read_metadata(barcodes).reset_index(drop=True)
    train, _ = select_rows(barcodes, run, "train")  # verifies the run's split against the file
    saved = read_split(run)
    train_pos, test_pos = saved.train, saved.test
    train = train.reset_index(drop=True)
    _, val_rows = closed_set_split(train, val_fraction, seed)
    held, _ = open_set_rows(train, seed)
    label = np.full(len(frame), "heldout", dtype=object)
    label[test_pos] = "test_seen_query"
    keep = ~held
    keep[val_rows] = False
    label[train_pos[keep]] = "train"
    table = pd.DataFrame({"sampleid": specimen_ids(frame), "partition": label})
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, sep="\t", index=False)
    print(f"{out}: {dict(table['partition'].value_counts())}")
    return out


def _fingerprint(bundle: str) -> str:
    """Which model answered (the model cache is per bundle weights)."""
    import hashlib

    return hashlib.sha256((Path(bundle) / "model.safetensors").read_bytes()).hexdigest()[:12]


def _cached(path: Path, seqs: list[str], refs: ReferenceSet, predictor, model_path: Path | None) -> dict[str, Any]:
    """Checks, all aligned hits and the model's per-rank answers of every query (computed once, then read; the
    model's answers are cached per bundle, so a new model reuses the hits)."""
    if path.is_file():
        cached = pickle.loads(path.read_bytes())
    else:
        started = time.perf_counter()
        checks: list[Any] = []
        for seq in seqs:
            try:
                checks.append(check_barcode(seq))
            except BarcodeError as err:
                checks.append(str(err))
        ok = [i for i, c in enumerate(checks) if not isinstance(c, str) and c.coi_found]
        hits: list[Any] = [None] * len(seqs)
        for i, found in zip(ok, refs.hits_many([checks[i].sequence for i in ok])):
            hits[i] = found
        cached = {"checks": checks, "hits": hits, "seconds": time.perf_counter() - started}
        path.write_bytes(pickle.dumps(cached))
    if "protein" not in cached:  # caches written before the protein hits existed get them added
        started = time.perf_counter()
        cached["protein"] = [None if found is None else refs.protein_hits(coding_protein(c.sequence, c.region), found)
                             for c, found in zip(cached["checks"], cached["hits"])]
        cached["protein_seconds"] = time.perf_counter() - started
        path.write_bytes(pickle.dumps(cached))
    cached["model"] = None
    if predictor is not None and model_path is not None:
        if model_path.is_file():
            cached["model"] = pickle.loads(model_path.read_bytes())
        else:
            started = time.perf_counter()
            cached["model"] = [_model(predictor, c.sequence if not isinstance(c, str) else s)
                               for c, s in zip(cached["checks"], seqs)]
            cached["model_seconds"] = time.perf_counter() - started
            model_path.parent.mkdir(parents=True, exist_ok=True)
            model_path.write_bytes(pickle.dumps(cached["model"]))
    return cached


def _model(predictor, seq: str) -> dict[str, list[tuple[str, float]]] | None:
    try:
        levels = predictor.predict(barcode=seq or "N", neighbours=0).queries["dna"].levels
    except (BarcodeError, ValueError):
        return None
    return {level: [(str(n), float(s)) for n, s in levels.get(level, [])] for level in LEVELS}


@contextlib.contextmanager
def _settings(settings: dict[str, Any]) -> Iterator[None]:
    """Temporarily replace constants of :mod:`hirviz.coi_refs` (``NAME``), :mod:`hirviz.coi` (``coi.NAME``) or
    :mod:`hirviz.coi_protein` (``protein.NAME``), which ``rank_verdicts`` and the reconciliation read at each call."""
    def target(key: str) -> tuple[Any, str]:
        module, _, name = key.rpartition(".")
        return {"coi": coi, "protein": coi_protein, "": coi_refs}[module], name

    saved = {key: getattr(*target(key)) for key in settings}
    try:
        for key, value in settings.items():
            setattr(*target(key), value)
        yield
    finally:
        for key, value in saved.items():
            setattr(*target(key), value)


def _answers(cached: dict[str, Any], seqs: list[str], refs_frame: pd.DataFrame, with_model: bool,
             engine: Callable = assemble, kmer: bool = True) -> dict[str, np.ndarray]:
    """The name each method gives at each rank (``[N, 4]``, "" = abstention)."""
    out = {}
    if kmer:
        refs = refs_frame[refs_frame["barcode"].fillna("") != ""]
        index = KmerNearestNeighbour().fit(refs["barcode"].tolist(),
                                           refs[list(LEVELS)].fillna("").to_numpy(dtype=object))
        out["k-mer NN"] = np.asarray(index.predict([s or "N" for s in seqs], 1)[:, 0], dtype=object)
    arms = (("alignment", False), ("reconciled", True)) if with_model else (("alignment", False),)
    for method, use_model in arms:
        names = np.full((len(seqs), len(LEVELS)), "", dtype=object)
        for i, check in enumerate(cached["checks"]):
            if isinstance(check, str):
                continue
            levels = cached["model"][i] if use_model else None
            # "alignment" is the nucleotide hits' verdicts alone; the protein hits join the reconciled answer
            result = engine(check, cached["hits"][i], levels, 5, cached["protein"][i] if use_model else None)
            names[i] = [result.answers[level].name for level in LEVELS]
        out[method] = names
    if with_model and kmer:
        out["model"] = np.asarray([[(m or {}).get(level, [("", 0.0)])[0][0] if m else "" for level in LEVELS]
                                   for m in cached["model"]], dtype=object).reshape(-1, len(LEVELS))
    return out


def score(names: np.ndarray, truth: np.ndarray) -> dict[str, dict[str, float | int]]:
    """Per rank over the queries labelled there: accuracy, abstention and error-among-named rates (percent)."""
    out = {}
    for j, level in enumerate(LEVELS):
        labelled = truth[:, j] != ""
        n = int(labelled.sum())
        given, true = names[labelled, j].astype(str), truth[labelled, j].astype(str)
        named = given != ""
        out[level] = {
            "n": n,
            "accuracy": 100.0 * float((given == true).sum()) / n if n else None,
            "abstain": 100.0 * float((~named).sum()) / n if n else None,
            "wrong_named": 100.0 * float((named & (given != true)).sum()) / int(named.sum()) if named.any() else None,
        }
    return out


def _cell(s: dict) -> str:
    if s["accuracy"] is None:
        return "–"
    wrong = "–" if s["wrong_named"] is None else f"{s['wrong_named']:.1f}"
    return f"{s['accuracy']:.1f} ({s['abstain']:.0f} / {wrong})"


def table(results: dict[str, Any], names: list[str]) -> list[str]:
    """Rows ``set, method`` x ranks: accuracy (abstention % / error % among named)."""
    lines = ["| queries | method | " + " | ".join(LEVELS) + " |", "|---|---" + "|---" * len(LEVELS) + "|"]
    for name in names:
        for method in METHODS:
            if method in results[name]:
                lines.append(f"| {name} | {method} | "
                             + " | ".join(_cell(results[name][method][level]) for level in LEVELS) + " |")
    return lines


def steps_table(results: dict[str, Any]) -> list[str]:
    lines = ["| queries | step | method | " + " | ".join(LEVELS) + " |", "|---|---|---" + "|---" * len(LEVELS) + "|"]
    for name, steps in results["steps"].items():
        for step, scores in steps.items():
            for method, per_level in scores.items():
                lines.append(f"| {name} | {step} | {method} | "
                             + " | ".join(_cell(per_level[level]) for level in LEVELS) + " |")
    return lines


def choices_table(results: dict[str, Any]) -> list[str]:
    lines = ["| queries | rule (reconciled answer) | " + " | ".join(LEVELS) + " |",
             "|---|---" + "|---" * len(LEVELS) + "|"]
    for name, rules in results.get("choices", {}).items():
        for label, per_level in rules.items():
            lines.append(f"| {name} | {label} | " + " | ".join(_cell(per_level[level]) for level in LEVELS) + " |")
    return lines


def report(results: dict[str, Any], minutes: float) -> str:
    meta = results["_meta"]
    lines = [
        "# COI engine on real barcodes: generated tables",
        "",
        f"Generated by `python studies/coi_engine.py` ({minutes:.1f} min with a warm cache). References: the "
        f"{meta['references']['test']:,} training barcodes of the seeded closed-set split (`test/*`), or for the "
        f"validation slice the {meta['references']['val']:,} training barcodes outside it (`val/*`; for the open-set "
        f"slice `val/open`, the {meta['references'].get('val/open', 0):,} outside its held-out families, genera and "
        "species, its reads cut to their last 313 bp). Queries: "
        + ", ".join(f"{k} {v:,}" for k, v in meta["queries"].items()) + ". Degraded = METHOD.md's DNA noise "
        f"(seed {meta['seed']}).",
        "",
        "Cells: top-1 accuracy % (abstention % / error % among named answers); an abstention counts as wrong.",
        "",
        "## Test",
        "",
        *table(results, [n for n in results if n.startswith("test/")]),
        "",
        "## What each engine change bought (engine columns; cumulative, top to bottom)",
        "",
        *steps_table(results),
        "",
        "## Validation slice of the training split (where settings are chosen)",
        "",
        *table(results, [n for n in results if n.startswith("val/")]),
        "",
        "## Candidate rules on the validation slices",
        "",
        f"Model on `val/*`: `{meta.get('val_bundle')}`; on `test/*`: `{meta.get('bundle')}`.",
        "",
        *choices_table(results),
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
