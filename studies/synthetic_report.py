"""The numbers of the synthetic study's report (``studies/synthetic.py``): the blur criterion, lambda chosen on the
validation split, the hierarchy comparison, the four questions of docs/results.md, and the training budget.

Every function takes aggregated results (:func:`train.study.aggregate`: means with ``<key>_sd`` beside them) and
returns plain numbers or markdown; nothing here trains or evaluates, so ``--report-only`` rebuilds a report from
finished runs and tests can feed it made-up results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from train.evaluate.blur_criterion import blur_criterion, sweep_kernels
from train.study import plateau

# Model selection on the validation split: the mean of these four Global top-1 cells (setting, condition, query).
SELECTION_CELLS = (("IT clean", "clean", "image"), ("IT noisy", "noisy_image", "image"),
                   ("DT clean", "clean", "dna"), ("DT noisy", "noisy_dna", "dna"))
CONDITION_NAMES = {"clean": "clean", "noisy_dna": "noisy D", "noisy_image": "noisy I", "noisy_both": "noisy I+D"}


def top1(results: Mapping[str, Any] | None, condition: str, query: str, level: str = "global"
         ) -> tuple[float | None, float | None]:
    """(mean, sd) of one top-1 cell of aggregated results; (None, None) when missing."""
    cell = (((results or {}).get(condition) or {}).get(query) or {}).get(level) or {}
    return cell.get("top1"), cell.get("top1_sd")


def fmt(mean: float | None, sd: float | None = None, digits: int = 1) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f"±{sd:.{digits}f}" if sd is not None else "")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


# ----------------------------------------------------------------------------------------------------------------
# The blur criterion


def blur_summary(results: Mapping[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    """CLIBD's blur check (:func:`train.evaluate.blur_criterion.blur_criterion`) as a JSON record and a report line.

    Aggregated results keep the evaluation layout (means in ``top1``), so the library's check reads them as is.
    """
    if not results:
        return None, "(CLIBD has not run)"
    try:
        check = blur_criterion(results)
    except ValueError as err:
        return None, f"Blur criterion not measurable: {err}."
    record = {**asdict(check), "order_loss": check.order_loss, "species_loss": check.species_loss,
              "passed": check.passed}
    if check.order_loss is None or check.species_loss is None:
        return record, (f"Blur criterion not measurable ({check}): CLIBD's clean image->text species or order top-1"
                        " is 0, so there is no relative loss.")
    # The same check at every kernel of the sweep: which default kernel for "noisy image" the criterion allows.
    per_kernel = [blur_criterion(results, k) for k in sweep_kernels(results) if k > 1]
    record["sweep"] = [{**asdict(c), "order_loss": c.order_loss, "species_loss": c.species_loss, "passed": c.passed}
                       for c in per_kernel]
    passing = [str(c.kernel) for c in per_kernel if c.passed]
    lines = "\n".join(f"- {c}" for c in per_kernel)
    return record, (f"CLIBD, mean over seeds: {check}.\n\nThe same check at each kernel of the sweep (the default "
                    f"kernel should be one that passes; passing: {', '.join(passing) or 'none'}):\n\n{lines}")


# ----------------------------------------------------------------------------------------------------------------
# Lambda on the validation split


def selection_score(results: Mapping[str, Any]) -> float | None:
    """The validation criterion: the mean of the :data:`SELECTION_CELLS` Global top-1 means."""
    values = [top1(results, cond, query)[0] for _, cond, query in SELECTION_CELLS]
    return None if None in values else sum(values) / len(values)


def choose_lambda(validation: Mapping[str, Mapping[str, Any]], lambdas: Mapping[str, float]
                  ) -> tuple[str | None, str]:
    """The arm (of ``lambdas``: arm name -> lambda) with the best validation score, and a markdown table of all; a tie
    goes to the arm listed first (the study lists the smallest lambda, the paper's, first)."""
    rows, best = [], (None, float("-inf"))
    for name, lam in lambdas.items():
        results = validation.get(name)
        if results is None:
            rows.append([name, f"{lam:g}", *["not run"] * (len(SELECTION_CELLS) + 1)])
            continue
        score = selection_score(results)
        rows.append([name, f"{lam:g}", *[fmt(*top1(results, c, q)) for _, c, q in SELECTION_CELLS], fmt(score)])
        if score is not None and score > best[1]:
            best = (name, score)
    header = ["Arm", "lambda", *[f"{label} Global" for label, _, _ in SELECTION_CELLS], "criterion (mean)"]
    return best[0], table(header, rows)


# ----------------------------------------------------------------------------------------------------------------
# Comparisons with CLIBD


def difference(a: tuple[float | None, float | None], b: tuple[float | None, float | None]) -> dict[str, float | None]:
    """``a - b`` of two (mean, sd) cells, and that difference in units of the larger sd (None without a spread)."""
    if a[0] is None or b[0] is None:
        return {"delta": None, "in_sd": None}
    sd = max(x for x in (a[1], b[1], 0.0) if x is not None)
    return {"delta": a[0] - b[0], "in_sd": (a[0] - b[0]) / sd if sd > 0 else None}


def _delta(d: Mapping[str, float | None], digits: int = 1) -> str:
    if d["delta"] is None:
        return "–"
    return f"{d['delta']:+.{digits}f}" + (f" ({d['in_sd']:+.1f} sd)" if d["in_sd"] is not None else "")


# digits of each Q1-2 column: rho lives in [-1, 1], severity and drift depth in tree levels, accuracies in %
_Q12_DIGITS = {"rho_image": 3, "rho_dna": 3, "severity_image": 2, "drift_image": 2}


def hierarchy_cell(results: Mapping[str, Any] | None, condition: str, query: str, group: str, key: str
                   ) -> tuple[float | None, float | None]:
    h = ((((results or {}).get(condition) or {}).get(query) or {}).get("hierarchy") or {}).get(group) or {}
    return h.get(key), h.get(f"{key}_sd")


# (column, condition, group, key, digits): severity and agreement on clean queries, drift under the query's noise
HIERARCHY_COLUMNS = (("severity (clean)", "clean", "mistake_severity", "severity", 2),
                     ("HDist@1 (clean)", "clean", "mistake_severity", "hdist@1", 2),
                     ("rho (clean)", "clean", "agreement", "rho", 3),
                     ("drift depth (noisy)", None, "drift", "mean_depth", 2),
                     ("moved (noisy)", None, "drift", "mean_displacement", 3))
NOISY_FOR = {"image": "noisy_image", "dna": "noisy_dna", "avg": "noisy_both", "fused": "noisy_both"}


def hierarchy_table(arms: Mapping[str, Mapping[str, Any]], queries: Sequence[str] = ("image", "dna")) -> str:
    """Mistake severity, tree/embedding agreement and drift under noise per arm and query (mean ± sd)."""
    rows = []
    for query in queries:
        for name, results in arms.items():
            cells = [fmt(*hierarchy_cell(results, cond or NOISY_FOR[query], query, group, key), digits=digits)
                     for _, cond, group, key, digits in HIERARCHY_COLUMNS]
            if any(c != "–" for c in cells):
                rows.append([query, name, *cells])
    return table(["Query", "Arm", *[c[0] for c in HIERARCHY_COLUMNS]], rows) if rows else "(no hierarchy metrics)"


def question_hir(arms: Mapping[str, Mapping[str, Any]], hir_arms: Sequence[str], baseline: str = "clibd"
                 ) -> tuple[str, dict[str, Any]]:
    """Questions 1 and 2: each HiR arm minus CLIBD on consistency (rho up, severity down, drift shallower), clean
    Global (within 1 sd?) and noisy Global (IT under blur, DT under DNA noise)."""
    base = arms.get(baseline)
    rows, numbers = [], {}
    for name in (n for n in hir_arms if n in arms and base is not None):
        r = arms[name]
        d = {
            "rho_image": difference(hierarchy_cell(r, "clean", "image", "agreement", "rho"),
                                    hierarchy_cell(base, "clean", "image", "agreement", "rho")),
            "rho_dna": difference(hierarchy_cell(r, "clean", "dna", "agreement", "rho"),
                                  hierarchy_cell(base, "clean", "dna", "agreement", "rho")),
            "severity_image": difference(hierarchy_cell(r, "clean", "image", "mistake_severity", "severity"),
                                         hierarchy_cell(base, "clean", "image", "mistake_severity", "severity")),
            "drift_image": difference(hierarchy_cell(r, "noisy_image", "image", "drift", "mean_depth"),
                                      hierarchy_cell(base, "noisy_image", "image", "drift", "mean_depth")),
            "it_clean": difference(top1(r, "clean", "image"), top1(base, "clean", "image")),
            "dt_clean": difference(top1(r, "clean", "dna"), top1(base, "clean", "dna")),
            "it_noisy": difference(top1(r, "noisy_image", "image"), top1(base, "noisy_image", "image")),
            "dt_noisy": difference(top1(r, "noisy_dna", "dna"), top1(base, "noisy_dna", "dna")),
        }
        numbers[name] = d
        rows.append([name, *[_delta(d[k], _Q12_DIGITS.get(k, 1)) for k in (
            "rho_image", "rho_dna", "severity_image", "drift_image", "it_clean", "dt_clean", "it_noisy", "dt_noisy")]])
    header = ["Arm − CLIBD", "Δ rho I", "Δ rho D", "Δ severity I", "Δ drift depth I", "Δ IT clean Global",
              "Δ DT clean Global", "Δ IT noisy Global", "Δ DT noisy Global"]
    return (table(header, rows) if rows else "(CLIBD or the HiR arms have not run)"), numbers


def question_fusion(arms: Mapping[str, Mapping[str, Any]], fusion_arms: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """Question 3: per fusion arm and condition, Global top-1 of fused, avg, image and dna, and whether fused is
    >= each of the others (means)."""
    rows, numbers = [], {}
    for name in (n for n in fusion_arms if n in arms):
        for condition in ("clean", "noisy_dna", "noisy_image", "noisy_both"):
            cells = {q: top1(arms[name], condition, q) for q in ("fused", "avg", "image", "dna")}
            fused = cells["fused"][0]
            beats = {q: None if fused is None or cells[q][0] is None else fused >= cells[q][0]
                     for q in ("avg", "image", "dna")}
            numbers.setdefault(name, {})[condition] = {"global": {q: c[0] for q, c in cells.items()},
                                                       "fused_at_least": beats,
                                                       "fused_minus_avg": difference(cells["fused"], cells["avg"])}
            rows.append([name, CONDITION_NAMES[condition], *[fmt(*cells[q]) for q in cells],
                         _delta(numbers[name][condition]["fused_minus_avg"]),
                         " ".join(q for q, ok in beats.items() if ok) or "none"])
    header = ["Arm", "Cond.", "Fused", "Avg", "Image", "DNA", "Fused − Avg", "fused >= "]
    return (table(header, rows) if rows else "(the fusion arms have not run)"), numbers


# ----------------------------------------------------------------------------------------------------------------
# Budget and training evidence


def plateau_table(curves: Mapping[str, Mapping[str, Sequence[float | None]]],
                  keys: Sequence[str] = ("val_image_global", "val_dna_global", "val_image_family")
                  ) -> tuple[str, dict[str, Any]]:
    """Per arm and validation metric: final and best value, the gain over the last quarter of the steps, and whether
    that is a plateau: a gain no larger than the seeds' sd at the last step (``None`` without an sd: one seed)."""
    rows, numbers = [], {}
    for name, curve in curves.items():
        if not curve.get("step"):
            continue
        for key in (k for k in keys if curve.get(k)):
            p = plateau(curve["step"], curve[key])
            sd = (curve.get(f"{key}_sd") or [None])[-1]
            p["final_sd"] = sd
            p["at_plateau"] = None if sd is None or p["tail_gain"] is None else bool(p["tail_gain"] <= sd)
            numbers.setdefault(name, {})[key] = p
            verdict = {None: "–", True: "yes", False: "no"}[p["at_plateau"]]
            rows.append([name, key.removeprefix("val_"), f"{curve['step'][-1]:.0f}", fmt(p["final"]),
                         f"{fmt(p['best'])} @ {p['best_step']:.0f}",
                         f"{p['tail_gain']:+.1f} (from {p['tail_from_step']:.0f})", fmt(sd), verdict])
    header = ["Arm", "Validation top-1", "Steps", "Final", "Best @ step", "Gain over last quarter", "sd at the end",
              "plateau"]
    return (table(header, rows) if rows else "(no learning curves logged)"), numbers


def training_table(summaries: Mapping[str, Mapping[str, float | None]]) -> str:
    """The end of training per arm (means over seeds of the last tenth of the logged steps)."""
    keys = sorted({k for s in summaries.values() for k in s})
    if not keys:
        return "(no training logs)"
    return table(["Arm", *keys], [[name, *[fmt(s.get(k), digits=3) for k in keys]] for name, s in summaries.items()])
