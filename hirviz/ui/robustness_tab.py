"""The Robustness tab's callbacks: accuracy against noise strength, how far the sweeps reach, and the bundles'
hierarchy-consistency numbers and evaluation tables."""

from __future__ import annotations

import logging

import plotly.graph_objects as go

from hirviz import figures
from hirviz.ui.engine import (
    DNA_SLIDERS,
    PAPER_NOISE,
    SWEEP_LEVELS,
    Engine,
    trained_fusion,
)
from hirviz.ui.render import HIERARCHY_EXPLANATIONS, hierarchy_markdown

logger = logging.getLogger(__name__)

__all__ = ["hierarchy_tables", "robustness", "sweep_coverage", "eval_tables"]


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


