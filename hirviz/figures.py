"""Plotly figures for the app: reference maps (UMAP, and the Poincare disk of hyperbolic models), the generality
of each rank, prediction scores, robustness curves and the fusion gate.

Every function takes plain data (arrays, dicts, lists of records) rather than predictor or bundle objects,
so the figures can be built, and tested, without a model. The reference layer of the maps (which points, which
colours, the density of a large bank) is :mod:`hirviz.map_layers`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from hirviz.map_layers import DENSITY_THRESHOLD, TOP_TAXA, map_summary, rank_array, reference_traces
from hirviz.queries import QUERIES
from hirviz.taxonomy import LEVELS

__all__ = [
    "QUERY_LABELS",
    "QUERY_COLOURS",
    "empty_figure",
    "umap_figure",
    "poincare_figure",
    "generality_figure",
    "DISK_CAPTION",
    "DISK_LABEL",
    "PATH_START_LABEL",
    "prediction_bars",
    "robustness_figure",
    "gate_figure",
]

QUERY_LABELS: dict[str, str] = {
    "image": "Image only",
    "dna": "DNA only",
    "avg": "Averaged",
    "fused": "Gated fusion",
}
QUERY_COLOURS: dict[str, str] = {"image": "#1f77b4", "dna": "#2ca02c", "avg": "#ff7f0e", "fused": "#d62728"}
SWEEP_LABELS: dict[str, str] = {
    "dna": "DNA noise strength (multiple of the paper's rates)",
    "blur": "image blur kernel (pixels)",
}
PATH_START_LABEL = "no noise (start of the path)"
_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")
_GRID = "#e8ecf2"
_FONT = {"family": "system-ui, -apple-system, Segoe UI, Roboto, sans-serif", "size": 12}


def _base_layout(figure: go.Figure, title: str | None, height: int) -> go.Figure:
    # A few explicit settings in place of the "plotly_white" template, whose lookup deep-copies it: about
    # 20 ms per figure, more than the rest of a request on a small model.
    axis = {"gridcolor": _GRID, "zerolinecolor": _GRID, "linecolor": _GRID, "automargin": True}
    figure.update_layout(
        template="none", paper_bgcolor="white", plot_bgcolor="white",
        title={"text": title, "x": 0.01, "font": {"size": 14}} if title else None,
        height=height,
        margin={"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
        font=_FONT, xaxis=axis, yaxis=axis,
    )
    return figure


def empty_figure(message: str, *, title: str | None = None, height: int = 300) -> go.Figure:
    """A blank figure that says why there is nothing to plot (e.g. "not evaluated")."""
    figure = go.Figure()
    figure.add_annotation(
        text=message, x=0.5, y=0.5, xref="paper", yref="paper", showarrow=False, font={"size": 14, "color": "#666"}
    )
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False)
    return _base_layout(figure, title, height)


# ---------------------------------------------------------------------------------------------- reference map


def umap_figure(
    layout: np.ndarray,
    ranks: np.ndarray | Sequence[Sequence[str]],
    colour_by: str = "order",
    *,
    ids: Sequence[str] | None = None,
    title: str | None = None,
    query: np.ndarray | None = None,
    query_label: str = "your specimen",
    path: np.ndarray | None = None,
    path_labels: Sequence[str] | None = None,
    highlight: Sequence[str] | None = None,
    legend_taxa: int = TOP_TAXA,
    max_markers: int = DENSITY_THRESHOLD,
    height: int = 520,
) -> go.Figure:
    """A 2-D map of the reference specimens, a few taxa at one level in colour and the rest grey, with a query.

    Args:
        layout: ``[N, 2]`` precomputed coordinates (a UMAP layout of one embedding space).
        ranks: ``[N, 4]`` names (order, family, genus, species); ``""`` or ``None`` where unknown.
        colour_by: the level whose names colour the points.
        ids: ``N`` specimen ids shown on hover.
        query: ``[q, 2]`` (or ``[2]``) positions of the current query, drawn as stars.
        path: ``[n, 2]`` positions of the query as noise rises (first row = clean), drawn as a line whose clean
            start has its own marker (:data:`PATH_START_LABEL`).
        path_labels: ``n`` labels of the path points (the noise strengths).
        highlight: the taxa at ``colour_by`` to colour, each with its legend entry (e.g.
            :func:`hirviz.map_layers.near_taxa` of the query's nearest references); ``None``: the ``legend_taxa``
            most frequent. Every other named point is grey ("other ..."), unnamed ones light grey.
        max_markers: a map with more drawable points shows a density image and a sample of markers instead of all
            of them (:mod:`hirviz.map_layers`).
    """
    if colour_by not in LEVELS:
        raise ValueError(f"colour_by must be one of {LEVELS}, got {colour_by!r}")
    summary = map_summary(layout, ranks, ids, max_markers=max_markers)
    figure = go.Figure(data=reference_traces(summary, colour_by, highlight, legend_taxa))

    if path is not None and len(path):
        path = np.asarray(path, dtype=np.float32).reshape(-1, 2)
        labels = list(path_labels) if path_labels else [str(i) for i in range(len(path))]
        # Only the two ends are written on the map (the middle points crowd together); hover names them all.
        ends = [label if i in (0, len(labels) - 1) else "" for i, label in enumerate(labels)]
        figure.add_trace(
            go.Scatter(
                x=path[:, 0], y=path[:, 1], mode="lines+markers+text", name="as noise rises", text=ends,
                customdata=labels, textposition="top center", textfont={"size": 11},
                line={"color": "#111", "width": 2, "dash": "dot"},
                marker={"size": 7, "color": "#111", "symbol": "circle-open"},
                hovertemplate="noise %{customdata}<extra></extra>", legendrank=legend_taxa + 4,
            )
        )
        # The clean end gets its own marker so the direction of the path reads at a glance.
        figure.add_trace(
            go.Scatter(
                x=path[:1, 0], y=path[:1, 1], mode="markers", name=PATH_START_LABEL,
                marker={"size": 12, "symbol": "square", "color": "#2ca02c", "line": {"color": "#111", "width": 1}},
                hovertemplate=f"{PATH_START_LABEL}<extra></extra>", legendrank=legend_taxa + 4,
            )
        )
    if query is not None and len(query):
        query = np.asarray(query, dtype=np.float32).reshape(-1, 2)
        figure.add_trace(
            go.Scatter(
                x=query[:, 0], y=query[:, 1], mode="markers", name=query_label,
                marker={"size": 18, "symbol": "star", "color": "#ffd400", "line": {"color": "#111", "width": 1.5}},
                hovertemplate=f"{query_label}<extra></extra>", legendrank=legend_taxa + 5,
            )
        )
    figure.update_xaxes(visible=False)
    figure.update_yaxes(visible=False, scaleanchor="x", scaleratio=1)
    figure.update_layout(
        legend={"orientation": "h", "yanchor": "top", "y": -0.02, "x": 0, "font": {"size": 10},
                "itemsizing": "constant"},
        hoverlabel={"font_size": 11},
    )
    return _base_layout(figure, title, height)


DISK_CAPTION = ("Poincare disk (exact radial projection): distance from the centre shows the geodesic distance "
                "from the origin, general near the centre, specific toward the rim")
# The disk's own label, short enough for a narrow plot (the tab's caption says the rest).
DISK_LABEL = "Poincare disk: centre = general, rim = specific"


def poincare_figure(
    disk: np.ndarray,
    ranks: np.ndarray | Sequence[Sequence[str]],
    colour_by: str = "order",
    *,
    title: str | None = None,
    **kwargs,
) -> go.Figure:
    """The reference specimens on the unit Poincare disk, with its boundary circle; otherwise as :func:`umap_figure`
    (same colouring, query star and noise path; ``disk`` positions from :func:`hirviz.poincare.poincare_disk`)."""
    figure = umap_figure(disk, ranks, colour_by, title=title, **kwargs)
    figure.add_shape(type="circle", xref="x", yref="y", x0=-1, y0=-1, x1=1, y1=1, layer="below",
                     line={"color": "#555", "width": 1.5}, name="unit circle")
    figure.add_annotation(text=DISK_LABEL, x=0.5, y=1.0, xref="paper", yref="paper", yanchor="bottom",
                          showarrow=False, font={"size": 10, "color": "#666"})
    figure.update_xaxes(range=[-1.05, 1.05])
    figure.update_yaxes(range=[-1.05, 1.05])
    return figure


def deepest_rank(ranks: np.ndarray | Sequence[Sequence[str]]) -> np.ndarray:
    """Per row, the index in :data:`LEVELS` of the deepest known name (-1 where none is known)."""
    names = rank_array(ranks, len(ranks))
    known = names != ""
    return np.where(known.any(axis=1), len(LEVELS) - 1 - np.argmax(known[:, ::-1], axis=1), -1)


def generality_figure(
    groups: Mapping[str, tuple[np.ndarray, np.ndarray | Sequence[Sequence[str]]]],
    *,
    query: float | None = None,
    title: str | None = None,
    height: int = 380,
) -> go.Figure:
    """Geodesic distance from the origin by rank: one box (with its points) per rank and group.

    ``groups`` maps a label (e.g. "taxonomy text", "reference specimens") to ``(distances [N], ranks [N, 4])``;
    each row counts at its deepest known rank (an order-only string is an order). The x axis always holds the four
    ranks in order. ``query`` draws the last specimen's distance as a dashed line.
    """
    figure = go.Figure()
    colours = ("#6a3d9a", "#1f77b4", "#2ca02c", "#ff7f0e")
    for i, (label, (distances, ranks)) in enumerate(groups.items()):
        distances = np.asarray(distances, dtype=np.float64).ravel()
        depth = deepest_rank(ranks) if len(distances) else np.zeros(0, dtype=int)
        keep = (depth >= 0) & np.isfinite(distances)
        if not keep.any():
            continue
        figure.add_trace(go.Box(
            x=np.asarray(LEVELS)[depth[keep]], y=distances[keep], name=label, boxpoints="all", jitter=0.4,
            pointpos=0, marker={"size": 3, "opacity": 0.5, "color": colours[i % len(colours)]},
            line={"width": 1.5}, hovertemplate="%{x}: %{y:.3f}<extra>" + label + "</extra>",
        ))
    if not figure.data:
        return empty_figure("no points with a known rank", title=title, height=height)
    if query is not None and np.isfinite(query):
        figure.add_hline(y=float(query), line={"color": "#111", "dash": "dash", "width": 1.5},
                         annotation_text="your specimen", annotation_position="top left")
    figure.update_layout(boxmode="group", yaxis_title="geodesic distance from the origin",
                         legend={"orientation": "h", "yanchor": "top", "y": -0.15, "x": 0})
    figure.update_xaxes(type="category", categoryorder="array", categoryarray=list(LEVELS), range=[-0.5, 3.5])
    figure.update_yaxes(rangemode="tozero")
    _base_layout(figure, title, height)
    figure.update_layout(margin={"b": 60})
    return figure


# ------------------------------------------------------------------------------------------ prediction scores


def prediction_bars(
    levels_by_query: Mapping[str, Mapping[str, Sequence[tuple[str, float]]]],
    level: str,
    *,
    title: str | None = None,
    height: int = 360,
) -> go.Figure:
    """Grouped horizontal bars: each query's top names at ``level`` and their scores.

    ``levels_by_query`` maps a query (image, dna, avg, fused) to ``{level: [(name, score), ...]}``. Names are
    ordered by their best score over the queries; a name outside a query's list has no bar for it (its score
    is not known, which is not the same as zero).
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    queries = [q for q in QUERIES if q in levels_by_query] + [q for q in levels_by_query if q not in QUERIES]
    best: dict[str, float] = {}
    for query in queries:
        for name, score in levels_by_query[query].get(level, []):
            best[name] = max(best.get(name, -np.inf), float(score))
    if not best:
        return empty_figure(f"no {level} predictions", title=title, height=height)
    # Highest at the top: plotly draws the first category at the bottom of a horizontal bar chart.
    names = sorted(best, key=best.get)
    figure = go.Figure()
    for query in queries:
        scores = dict(levels_by_query[query].get(level, []))
        figure.add_trace(
            go.Bar(
                y=names, x=[scores.get(name) for name in names], orientation="h",
                name=QUERY_LABELS.get(query, query), marker_color=QUERY_COLOURS.get(query),
                hovertemplate="%{y}: %{x:.3f}<extra>" + QUERY_LABELS.get(query, query) + "</extra>",
            )
        )
    figure.update_layout(
        barmode="group", bargap=0.25, bargroupgap=0.05, xaxis_title=f"score ({level})",
        legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0},
    )
    figure.update_xaxes(rangemode="tozero")
    if all(0.0 <= score <= 1.0 for score in best.values()):
        figure.update_xaxes(tickformat=".0%")
    figure.update_yaxes(automargin=True)
    _base_layout(figure, title, max(height, 110 + 22 * len(names)))
    figure.update_layout(margin={"b": 70})  # room for the legend under the axis title
    return figure


# ---------------------------------------------------------------------------------------------- robustness


def robustness_figure(
    sweeps: Mapping[str, Sequence[Mapping]],
    kind: str,
    level: str = "species",
    *,
    queries: Sequence[str] = ("avg", "fused"),
    title: str | None = None,
    height: int = 380,
) -> go.Figure:
    """Top-1 accuracy against noise strength: one line per model and query.

    ``sweeps`` maps a model name to its sweep records ``{"kind", "strength", "query", "level", "top1"}``
    (``top1`` in percent). Colour tells the query, the dash pattern the model. Without matching records the
    figure says "not evaluated".
    """
    figure = go.Figure()
    for index, (model, records) in enumerate(sweeps.items()):
        for query in queries:
            rows = sorted(
                (float(r["strength"]), float(r["top1"]))
                for r in records or ()
                if r.get("kind") == kind and r.get("level") == level and r.get("query") == query
            )
            if not rows:
                continue
            x, y = zip(*rows)
            figure.add_trace(
                go.Scatter(
                    x=x, y=y, mode="lines+markers", name=f"{model} · {QUERY_LABELS.get(query, query)}",
                    line={"color": QUERY_COLOURS.get(query), "dash": _DASHES[index % len(_DASHES)], "width": 2},
                    hovertemplate="strength %{x}: %{y:.1f} %<extra>%{fullData.name}</extra>",
                )
            )
    if not figure.data:
        what = SWEEP_LABELS.get(kind, kind)
        message = f"not evaluated: no {what} sweep at {level} level in these models"
        return empty_figure(message, title=title, height=height)
    figure.update_layout(
        xaxis_title=SWEEP_LABELS.get(kind, kind), yaxis_title=f"top-1 accuracy, {level} (%)",
        legend={"orientation": "h", "yanchor": "top", "y": -0.3, "x": 0},
    )
    figure.update_yaxes(rangemode="tozero")
    _base_layout(figure, title, height)
    figure.update_layout(margin={"b": 80})  # room for the legend under the axis title
    return figure


# ---------------------------------------------------------------------------------------------- fusion gate


def gate_figure(
    gate: float | None,
    gate_vector: np.ndarray | Sequence[float] | None = None,
    *,
    title: str | None = None,
    height: int = 150,
) -> go.Figure:
    """How much the fused embedding leaned on the image (the mean gate) versus the DNA (one minus it).

    ``gate_vector`` (the per-dimension gate) adds its spread to the hover text.
    """
    if gate is None or not np.isfinite(gate):
        return empty_figure("no fusion gate for this query", title=title, height=height)
    gate = float(np.clip(gate, 0.0, 1.0))
    spread = ""
    if gate_vector is not None and len(np.ravel(gate_vector)):
        values = np.ravel(np.asarray(gate_vector, dtype=np.float32))
        spread = f"<br>per dimension: {values.min():.2f} to {values.max():.2f} (median {np.median(values):.2f})"
    figure = go.Figure()
    for name, share, colour in (("image", gate, QUERY_COLOURS["image"]), ("DNA", 1.0 - gate, QUERY_COLOURS["dna"])):
        figure.add_trace(
            go.Bar(
                x=[share], y=["gate"], orientation="h", name=name, marker_color=colour,
                text=[f"{name} {share:.0%}"], textposition="inside", insidetextanchor="middle",
                hovertemplate=f"{name} weight {share:.3f}{spread}<extra></extra>",
            )
        )
    figure.update_layout(barmode="stack", showlegend=False)
    figure.update_xaxes(range=[0, 1], tickformat=".0%")
    figure.update_yaxes(visible=False)
    return _base_layout(figure, title, height)
