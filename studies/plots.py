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
                extra_dna: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
                fusion_arms: Sequence[str] | None = None) -> list[Path]:
    """The study's sweep plots: DNA->text against DNA noise (every arm, plus ``extra_dna`` sweeps such as the k-mer
    baseline), and, with images, image->text against blur and each fusion arm's image/dna/avg/fused queries
    (``fusion_arms``; default: the first arm whose name ends in "fuse"), one pair of plots per fusion arm."""
    levels = EVAL_LEVELS
    sweeps = {name: r["sweep"] for name, r in results_by_arm.items() if r.get("sweep")}
    dna_curves = {**sweeps, **(extra_dna or {})}
    paths = [plot_panels(dna_curves, "dna", {n: "dna" for n in dna_curves}, levels, "DNA noise (x METHOD.md rates)",
                         "DNA -> text top-1 against DNA degradation", stem.with_name(stem.name + "_dna_noise.png"))]
    if images:
        paths.append(plot_panels(sweeps, "blur", {n: "image" for n in sweeps}, levels, "box-blur kernel (px)",
                                 "image -> text top-1 against blur", stem.with_name(stem.name + "_blur.png")))
        if fusion_arms is None:
            fusion_arms = [next((name for name in sweeps if name.endswith("fuse")), None)]
        for index, arm in enumerate(a for a in fusion_arms if a in sweeps):
            fuse = sweeps[arm]
            fusion = {"image": fuse, "dna": fuse, "avg": fuse, "fused": fuse}
            tag = "_fusion" if index == 0 and arm.endswith("fuse") else f"_fusion_{arm}"
            for kind, xlabel, suffix in (("dna", "DNA noise (x METHOD.md rates)", "_dna_noise.png"),
                                         ("blur", "box-blur kernel (px)", "_blur.png")):
                paths.append(plot_panels(fusion, kind, {q: q for q in fusion}, ("family", "genus", "global"), xlabel,
                                         f"{arm}: each query as {kind} noise grows",
                                         stem.with_name(stem.name + tag + suffix)))
    return paths


CURVE_PANELS = (("val_image_family", "image -> text, family"), ("val_image_global", "image -> text, Global"),
                ("val_dna_family", "DNA -> text, family"), ("val_dna_global", "DNA -> text, Global"))


def plot_learning_curves(curves_by_arm: Mapping[str, Mapping[str, Sequence[float | None]]], path: Path,
                         panels: Sequence[tuple[str, str]] = CURVE_PANELS) -> Path | None:
    """Validation top-1 against optimizer steps: one panel per metric, one line per arm (mean over seeds, ±sd band),
    from :func:`train.study.aggregate_curves`; None when no arm logged a curve."""
    curves = {name: c for name, c in curves_by_arm.items() if c.get("step")}
    if not curves:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.2), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for name, curve in curves.items():
            points = [(s, v, sd or 0.0) for s, v, sd in zip(curve["step"], curve.get(key) or [],
                                                               curve.get(f"{key}_sd") or [None] * len(curve["step"]))
                      if v is not None]
            if not points:
                continue
            x, y, sd = zip(*points)
            line, = ax.plot(x, y, linewidth=1.2, label=name)
            if any(sd):
                ax.fill_between(x, [a - b for a, b in zip(y, sd)], [a + b for a, b in zip(y, sd)],
                                color=line.get_color(), alpha=0.12, linewidth=0)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("validation top-1 (%)")
    axes[0][-1].legend(fontsize=6, loc="best")
    fig.suptitle("Learning curves on the validation split (mean over seeds)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
