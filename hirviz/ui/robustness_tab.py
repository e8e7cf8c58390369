"""The Robustness tab: accuracy against noise strength, how far the sweeps reach, and the bundles'
hierarchy-consistency numbers and evaluation tables (callbacks, then the tab's layout and wiring)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gradio as gr
import plotly.graph_objects as go

from hirviz import figures
from hirviz.predict import QUERIES
from hirviz.ui.engine import (
    DNA_SLIDERS,
    PAPER_NOISE,
    SWEEP_LEVELS,
    Engine,
    trained_fusion,
)
from hirviz.ui.render import query_label

logger = logging.getLogger(__name__)

__all__ = ["hierarchy_tables", "robustness", "sweep_coverage", "eval_tables", "hierarchy_markdown", "hierarchy_cells",
           "HIERARCHY_EXPLANATIONS", "RobustnessTab", "robustness_tab", "wire_robustness"]


def hierarchy_tables(engine: Engine) -> str:
    """Each bundle's hierarchy-consistency numbers from its evaluation, as Markdown with what each column means."""
    tables = [hierarchy_markdown(name, getattr(engine.bundles[name], "eval_results", None),
                                 fusion=trained_fusion(engine.bundles[name])) for name in engine.names]
    return "\n\n".join([*tables, "\n".join(f"- {line}" for line in HIERARCHY_EXPLANATIONS)])


def robustness(engine: Engine, level: str) -> tuple[go.Figure, go.Figure]:
    """Accuracy against DNA noise and against blur, averaged vs gated fusion, for every bundle."""
    level = level if level in SWEEP_LEVELS else "species"
    sweeps = engine.sweeps()
    return (
        figures.robustness_figure(sweeps, "dna", level, queries=("dna", "avg", "fused"),
                                  title=f"Top-1 {level} accuracy as DNA noise rises"),
        figures.robustness_figure(sweeps, "blur", level, queries=("image", "avg", "fused"),
                                  title=f"Top-1 {level} accuracy as image blur rises"),
    )


def sweep_coverage(engine: Engine) -> str:
    """In plain words, how far the evaluation sweeps reach compared with what the Identify sliders allow.

    The sweeps are measured offline at a few strengths; the curves stop at the last one rather than guess
    beyond it, so this says where the sliders go further than any measurement.
    """
    measured = {kind: sorted({float(r["strength"]) for records in engine.sweeps().values() for r in records
                              if r.get("kind") == kind and "strength" in r}) for kind in ("dna", "blur")}
    lines = []
    if measured["blur"]:
        top = measured["blur"][-1]
        lines.append(f"Blur: measured at kernels {', '.join(f'{k:g}' for k in measured['blur'])} px; the Identify "
                     f"slider goes to {engine.blur_limit()} px" + (f", so nothing beyond {top:g} px was measured."
                                                                     if top < engine.blur_limit() else "."))
    if measured["dna"]:
        top = measured["dna"][-1]
        reach = {field: limit / getattr(PAPER_NOISE, field) for field, _, limit, _ in DNA_SLIDERS
                 if getattr(PAPER_NOISE, field) > 0}
        lines.append(f"DNA noise: strength k means every one of the paper's rates times k, measured up to {top:g}x; "
                     f"the Identify sliders move one rate at a time, each up to {min(reach.values()):.0f}x to "
                     f"{max(reach.values()):.0f}x its paper rate, so a slider past {top:g}x its paper rate is "
                     "beyond what was measured.")
    if not lines:
        return "No model here was evaluated with a noise sweep, so there are no curves to show."
    return "\n\n".join(lines)


def eval_tables(engine: Engine) -> str:
    """Each bundle's evaluation tables (clean and noisy conditions) as Markdown."""
    from hirviz.bundle import eval_markdown

    parts = []
    for name in engine.names:
        results = getattr(engine.bundles[name], "eval_results", None)
        parts.append(f"### {name}\n\n{eval_markdown(results)}")
    return "\n\n".join(parts)


# ------------------------------------------------------------------------------------------------ examples


# ------------------------------------------------------------------------------------- hierarchy consistency

# The noisy condition of each space: the one that degrades what the space reads.
_NOISY_CONDITION = {"image": ("noisy_image", "blurred photo"), "dna": ("noisy_dna", "noisy barcode"),
                    "avg": ("noisy_both", "both degraded"), "fused": ("noisy_both", "both degraded")}
HIERARCHY_EXPLANATIONS: tuple[str, ...] = (
    "**Mistake severity**: how far off the wrong first answers are in the tree of life. Lower is better: 1 = "
    "mistakes stay within the genus, 2 = within the family, 3 = within the order, 4 = another order.",
    "**Tree agreement**: whether specimens that are closer in the tree also lie closer in the embedding space. "
    "Higher is better: 1 = the space orders every pair as the tree does, 0 = it ignores the tree.",
    "**Nearest reference shares**: down to which rank the reference specimen nearest to a specimen still has "
    "the same name, on average. Higher is better: 4 = same species, 3 = genus, 2 = family, 1 = order.",
    "**Moved by the noise**: how far the noise moves a specimen's embedding (cosine distance; 0 = not at all).",
)


def _num(value: Any, digits: int = 2) -> str:
    return "–" if not isinstance(value, (int, float)) else f"{float(value):.{digits}f}"


def _pair(clean: Any, noisy: Any) -> str:
    return f"{_num(clean)} → {_num(noisy)}"


def hierarchy_cells(results: Mapping[str, Any] | None, query: str) -> dict[str, str] | None:
    """One query's hierarchy-consistency numbers from an evaluation, each "without noise → with noise" (the noise
    of :data:`_NOISY_CONDITION`); None when the evaluation has none for that query."""
    noisy_condition, noise = _NOISY_CONDITION[query]
    clean = (((results or {}).get("clean") or {}).get(query) or {}).get("hierarchy")
    noisy = (((results or {}).get(noisy_condition) or {}).get(query) or {}).get("hierarchy")
    if not isinstance(clean, Mapping):
        return None
    noisy = noisy if isinstance(noisy, Mapping) else {}

    def pair(block: str, key: str) -> str:
        return _pair((clean.get(block) or {}).get(key), (noisy.get(block) or {}).get(key))

    return {"noise": noise, "severity": pair("mistake_severity", "severity"), "agreement": pair("agreement", "rho"),
            "shares": pair("drift", "mean_depth"), "moved": _num((noisy.get("drift") or {}).get("mean_displacement"), 3)}


def hierarchy_markdown(name: str, results: Mapping[str, Any] | None, *, fusion: bool = True) -> str:
    """One model's hierarchy-consistency numbers (from its ``eval.json``) as a Markdown table: one row per
    query, each cell "without noise → with noise"; a line saying so when the evaluation has none."""
    rows = []
    for query in QUERIES:
        cells = hierarchy_cells(results, query) if query != "fused" or fusion else None
        if cells is not None:
            rows.append(f"| {query_label(query)} | {cells['noise']} | {cells['severity']} | {cells['agreement']} | "
                        f"{cells['shares']} | {cells['moved']} |")
    if not rows:
        return f"**{name}**: no hierarchy numbers in its evaluation (its evaluation predates them)."
    header = ["| Query | Noise | Mistake severity | Tree agreement | Nearest reference shares | Moved by the noise |",
              "|---|---|---|---|---|---|"]
    return "\n".join([f"**{name}** (without noise → with noise)", "", *header, *rows])


# ---------------------------------------------------------------------------------------------------- layout


@dataclass
class RobustnessTab:
    """The Robustness tab's components that its events read or write."""

    level: gr.Radio
    dna_plot: gr.Plot
    blur_plot: gr.Plot


def robustness_tab(engine: Engine) -> RobustnessTab:
    """Lay out the Robustness tab (inside ``gr.Tabs``)."""
    with gr.Tab("Robustness", id="robustness"):
        gr.Markdown("Accuracy against noise strength from each model's evaluation sweep: the degraded "
                    "modality alone, averaged and gated fusion (colour), model vs model (dash).")
        gr.Markdown(sweep_coverage(engine), elem_id="hz-sweep-coverage")
        level = gr.Radio(list(SWEEP_LEVELS), value="species", label="Level")
        dna_figure, blur_figure = robustness(engine, "species")
        with gr.Row(equal_height=False):
            dna_plot = gr.Plot(dna_figure, show_label=False, elem_id="hz-sweep-dna")
            blur_plot = gr.Plot(blur_figure, show_label=False, elem_id="hz-sweep-blur")
        with gr.Accordion("Hierarchy consistency: how wrong the models are when they are wrong", open=True):
            gr.Markdown(hierarchy_tables(engine), elem_id="hz-hierarchy")
        with gr.Accordion("Evaluation tables", open=False):
            gr.Markdown(eval_tables(engine))
    return RobustnessTab(level, dna_plot, blur_plot)


def wire_robustness(engine: Engine, tab: RobustnessTab,
                    guard: Callable[[int, Callable[..., tuple]], Callable[..., tuple]]) -> None:
    """Wire the level control (endpoint ``robustness``); ``guard`` wraps callbacks as the layout does."""
    def run_robustness(level):
        """Accuracy against DNA noise and against blur from the models' evaluation sweeps."""
        return robustness(engine, level)

    tab.level.change(guard(2, run_robustness), tab.level, [tab.dna_plot, tab.blur_plot], api_name="robustness",
                     trigger_mode="always_last")
