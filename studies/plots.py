"""Accuracy-against-noise plots for the studies (PNG, matplotlib; ``pip install -e ".[study]"``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from train.evaluate.metrics import EVAL_LEVELS  # noqa: E402

LEVEL_TITLES = {"order": "Order", "family": "Family", "genus": "Genus", "species": "Species", "global": "Global"}


def _curve(sweep: Sequence[Mapping[str, Any]], kind: str, query: str, level: str) -> tuple[list, list, list]:
    points = sorted((r["strength"], r["top1"], r.get("top1_sd") or 0.0) for r in sweep
                    if r["kind"] == kind and r["query"] == query and r["level"] == level and r["top1"] is not None)
    return [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]


def plot_panels(curves: Mapping[str, Sequence[Mapping[str, Any]]], kind: str, query_by_curve: Mapping[str, str],
                levels: Sequence[str], xlabel: str, title: str, path: Path) -> Path:
    """One panel per level; one line (mean, with a ±sd band) per named sweep; saved as ``path``."""
    fig, axes = plt.subplots(1, len(levels), figsize=(3.2 * len(levels), 3.0), sharex=True, squeeze=False)
    for ax, level in zip(axes[0], levels):
        for name, sweep in curves.items():
            x, y, sd = _curve(sweep, kind, query_by_curve[name], level)
            if not x:
                continue
            line, = ax.plot(x, y, marker="o", markersize=3, label=name)
            if any(sd):
                ax.fill_between(x, [a - b for a, b in zip(y, sd)], [a + b for a, b in zip(y, sd)],
                                color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_title(LEVEL_TITLES.get(level, level))
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("top-1 accuracy (%)")
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sweeps(results_by_arm: Mapping[str, Mapping[str, Any]], stem: Path, images: bool = True,
                extra_dna: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> list[Path]:
    """The study's sweep plots: DNA->text against DNA noise (every arm, plus ``extra_dna`` sweeps such as the k-mer
    baseline), and, with images, image->text against blur and the fusion arm's avg vs fused queries."""
    levels = EVAL_LEVELS
    sweeps = {name: r["sweep"] for name, r in results_by_arm.items() if r.get("sweep")}
    dna_curves = {**sweeps, **(extra_dna or {})}
    paths = [plot_panels(dna_curves, "dna", {n: "dna" for n in dna_curves}, levels, "DNA noise (x METHOD.md rates)",
                         "DNA -> text top-1 against DNA degradation", stem.with_name(stem.name + "_dna_noise.png"))]
    if images:
        paths.append(plot_panels(sweeps, "blur", {n: "image" for n in sweeps}, levels, "box-blur kernel (px)",
                                 "image -> text top-1 against blur", stem.with_name(stem.name + "_blur.png")))
        fuse = next((r["sweep"] for name, r in results_by_arm.items() if name.endswith("fuse") and r.get("sweep")), None)
        if fuse is not None:
            fusion = {"image": fuse, "dna": fuse, "avg": fuse, "fused": fuse}
            for kind, xlabel, suffix in (("dna", "DNA noise (x METHOD.md rates)", "_fusion_dna_noise.png"),
                                         ("blur", "box-blur kernel (px)", "_fusion_blur.png")):
                paths.append(plot_panels(fusion, kind, {q: q for q in fusion}, ("family", "genus", "global"), xlabel,
                                         f"CLIBD-HiR-Fuse: each query as {kind} noise grows",
                                         stem.with_name(stem.name + suffix)))
    return paths
