"""The reference layer of a map (UMAP or Poincare disk): which points are drawn, in which colour, over what density.

**Colour.** Only a few taxa are coloured (at most :data:`TOP_TAXA`, each with a colour of
:data:`HIGHLIGHT_COLOURS` and a legend entry): the taxa of the specimen's nearest references
(:func:`near_taxa`), or the most frequent ones when there is no specimen. Every other named point is grey and
unnamed points a lighter grey: a genus-level map of hundreds of genera in cycling colours reads as noise.

**Size.** A map of at most :data:`DENSITY_THRESHOLD` points draws them all as markers, as small bundles always
did. A larger one (a BIOSCAN-size bank: 1.1 M points) never sends its points to the browser: it draws a 2-D
histogram of all of them as a grey density image (:data:`DENSITY_BINS` bins a side), a stratified sample of
:data:`OVERLAY_POINTS` markers (one per taxon of the colour level before a second, so rare taxa appear), and up
to :data:`HIGHLIGHT_POINTS` markers of each coloured taxon. The histogram, the sample and the per-level taxon
codes are computed once per layout (:func:`map_summary` caches them by the layout array), not per request.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from hirviz.placement import stratified_sample
from hirviz.taxonomy import LEVELS

__all__ = ["DENSITY_THRESHOLD", "HIGHLIGHT_COLOURS", "NEAR_NEIGHBOURS", "OTHER_COLOUR", "TOP_TAXA",
           "UNKNOWN_COLOUR", "MapSummary", "map_summary", "prepare_map", "near_taxa", "reference_traces", "rank_array"]

# Up to this many drawable points a map draws them all (SVG up to WEBGL_THRESHOLD, WebGL above); beyond it, the
# density layer and a sample: at 20k points the figure is already about 1.5 MB of JSON and hovering lags.
DENSITY_THRESHOLD = 20_000
WEBGL_THRESHOLD = 4000
OVERLAY_POINTS = 3000
HIGHLIGHT_POINTS = 300
DENSITY_BINS = 160
TOP_TAXA = 8
# Nearest references whose names choose the coloured taxa (more than the 10 placing the star: a genus needs a
# few of its specimens among them to count).
NEAR_NEIGHBOURS = 50
# Distinct, readable on white, none yellow (the star), black (the path) or grey (the rest): ColorBrewer Dark2
# without its grey, then Paired's strong blue, red and purple. More taxa than colours cycle.
HIGHLIGHT_COLOURS: tuple[str, ...] = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d",
                                      "#1f78b4", "#e31a1c", "#6a3d9a")
OTHER_COLOUR = "#a8a8a8"
UNKNOWN_COLOUR = "#d9d9d9"
_DENSITY_SCALE = [[0.0, "#f1f1f1"], [1.0, "#6f6f6f"]]


@dataclass
class MapSummary:
    """What a layout's reference layer needs, computed once: the drawable rows and, for a large map, the density.

    ``rows``: reference rows with a finite position; ``points``: their positions ``[M, 2]``; ``density``:
    ``(z, x, y)`` (log counts with NaN for empty bins, bin centres) when ``M > DENSITY_THRESHOLD`` at build time.
    """

    points: np.ndarray
    rows: np.ndarray
    ranks: np.ndarray
    ids: np.ndarray | None
    density: tuple[np.ndarray, np.ndarray, np.ndarray] | None
    _levels: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    _overlays: dict[int, np.ndarray] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def taxa(self, level: int) -> tuple[np.ndarray, np.ndarray]:
        """Per drawable point its taxon code at ``level`` (-1 = unnamed), and the taxon names (codes index them)."""
        with self._lock:
            if level not in self._levels:
                codes, names = pd.factorize(self.ranks[self.rows, level])
                names = np.asarray(names, dtype=str)
                empty = np.flatnonzero(names == "")
                if len(empty):  # "" is "unknown", not a taxon
                    codes = np.where(codes == empty[0], -1, codes - (codes > empty[0]))
                    names = np.delete(names, empty[0])
                self._levels[level] = (codes.astype(np.int64), names)
            return self._levels[level]

    def overlay(self, level: int) -> np.ndarray:
        """Positions (into ``rows``) of the stratified marker sample of a large map at ``level``."""
        codes, _ = self.taxa(level)
        with self._lock:
            if level not in self._overlays:
                self._overlays[level] = stratified_sample(codes, OVERLAY_POINTS, seed=level)
            return self._overlays[level]


_CACHE: dict[tuple[int, int], tuple[weakref.ref, weakref.ref, MapSummary]] = {}
_CACHE_LOCK = threading.Lock()


def map_summary(layout: np.ndarray, ranks: np.ndarray | Sequence[Sequence[str]], ids: Sequence[str] | None = None,
                *, max_markers: int = DENSITY_THRESHOLD) -> MapSummary:
    """The :class:`MapSummary` of a layout ``[N, 2]`` and its ``ranks`` ``[N, 4]``, reused while both arrays live.

    The cache is keyed by the arrays' identity (a bundle's layouts and ranks are loaded once), so a request costs
    nothing for a layout seen before; arrays built per call (lists, tests) are summarised each time.
    """
    cacheable = isinstance(layout, np.ndarray) and isinstance(ranks, np.ndarray)
    key = (id(layout), id(ranks), max_markers)
    if cacheable:
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
            if hit is not None and hit[0]() is layout and hit[1]() is ranks:
                return hit[2]
    points = np.asarray(layout, dtype=np.float32)
    names = rank_array(ranks, len(points))
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"layout must be [N, 2], got {points.shape}")
    ids_array = None if ids is None else np.asarray(ids).astype(str)
    if ids_array is not None and len(ids_array) != len(points):
        raise ValueError(f"layout must be [N, 2] with N ids and ranks, got {points.shape} and {len(ids_array)} ids")
    # Rows left out of this space's layout (a specimen without the modality) are NaN: not drawn.
    rows = np.flatnonzero(np.isfinite(points).all(axis=1))
    drawn = points[rows]
    summary = MapSummary(drawn, rows, names, ids_array, _density(drawn) if len(rows) > max_markers else None)
    if cacheable:
        with _CACHE_LOCK:
            for stale in [k for k, (a, b, _) in _CACHE.items() if a() is None or b() is None]:
                del _CACHE[stale]
            _CACHE[key] = (weakref.ref(layout), weakref.ref(ranks), summary)
    return summary


def prepare_map(layout: np.ndarray, ranks: np.ndarray, ids: Sequence[str] | None = None) -> MapSummary:
    """Summarise a layout now (density, taxon codes at every level, marker samples): an app warms up with it."""
    summary = map_summary(layout, ranks, ids)
    for level in range(len(LEVELS)):
        if summary.density is not None:
            summary.overlay(level)
        else:
            summary.taxa(level)
    return summary


def _density(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A square-binned 2-D histogram of all points: log(1 + count), NaN where empty (transparent), bin centres."""
    low, high = points.min(axis=0), points.max(axis=0)
    side = float(max(high - low)) or 1.0
    centre = (low + high) / 2
    edges = [np.linspace(c - side / 2, c + side / 2, DENSITY_BINS + 1) for c in centre]
    counts, _, _ = np.histogram2d(points[:, 0], points[:, 1], bins=edges)
    z = np.where(counts > 0, np.log1p(counts), np.nan).T.astype(np.float32)  # Heatmap rows are y
    return z, (edges[0][:-1] + edges[0][1:]) / 2, (edges[1][:-1] + edges[1][1:]) / 2


def near_taxa(ranks: np.ndarray, rows: Sequence[int], level: str, n: int = TOP_TAXA) -> list[str]:
    """The ``n`` names at ``level`` most frequent among reference ``rows`` (nearest first; -1 = padding skipped),
    ties going to the name met first, i.e. the nearer one. Unnamed rows do not count."""
    column = LEVELS.index(level)
    rows = np.asarray(rows, dtype=np.int64).ravel()
    names = [str(name) for name in np.asarray(ranks)[rows[rows >= 0], column] if name not in ("", None)]
    counts: dict[str, int] = {}
    for name in names:  # dicts keep the first-seen order: the sort below is stable
        counts[name] = counts.get(name, 0) + 1
    return sorted(counts, key=lambda name: -counts[name])[:n]


def reference_traces(summary: MapSummary, colour_by: str, highlight: Sequence[str] | None = None,
                     top: int = TOP_TAXA) -> list[go.BaseTraceType]:
    """The reference layer's traces, bottom first: density (large maps), grey points, then one per coloured taxon.

    ``highlight``: the taxa to colour, in legend order (those absent from the map are skipped, at most ``top``
    kept); ``None`` colours the ``top`` most frequent. Legend ranks put the coloured taxa first; the caller's traces go above.
    """
    level = LEVELS.index(colour_by)
    codes, taxa = summary.taxa(level)
    counts = np.bincount(codes[codes >= 0], minlength=len(taxa))
    if highlight is None:
        chosen = np.argsort(-counts, kind="stable")[:top]
    else:
        position = {name: i for i, name in enumerate(taxa.tolist())}
        chosen = np.array([position[name] for name in dict.fromkeys(highlight) if name in position], dtype=np.int64)
    chosen = chosen[counts[chosen] > 0][:top]
    traces: list[go.BaseTraceType] = []
    if summary.density is None:
        shown = np.arange(len(summary.rows))
    else:
        z, x, y = summary.density
        traces.append(go.Heatmap(z=z, x=x, y=y, colorscale=_DENSITY_SCALE, showscale=False, hoverinfo="skip",
                                 name=f"density of all {len(summary.rows):,} specimens", showlegend=True,
                                 legendrank=top + 3))
        extra = [np.flatnonzero(codes == c)[:HIGHLIGHT_POINTS] for c in chosen]  # the first in bank order
        shown = np.union1d(summary.overlay(level), np.concatenate([np.zeros(0, np.int64), *extra]))
    scatter = go.Scattergl if len(shown) > WEBGL_THRESHOLD else go.Scatter
    shown_codes = codes[shown]
    is_chosen = np.isin(shown_codes, chosen)
    sample = "" if summary.density is None else " (sample)"

    def add(mask: np.ndarray, name: str, colour: str, rank: int, size: int = 5) -> None:
        picked = shown[mask]
        ref_rows = summary.rows[picked]
        names = summary.ranks[ref_rows]
        ids = summary.ids[ref_rows] if summary.ids is not None else ref_rows.astype(str)
        traces.append(scatter(
            x=summary.points[picked, 0], y=summary.points[picked, 1], mode="markers", name=name, legendrank=rank,
            marker={"size": size, "opacity": 0.8, "color": colour}, customdata=np.column_stack(
                [ids, np.where(names == "", "–", names)]), hovertemplate=_HOVER))

    unnamed = shown_codes < 0
    if (~unnamed & ~is_chosen).any():
        n_other = len(np.setdiff1d(np.unique(shown_codes[~unnamed]), chosen))
        add(~unnamed & ~is_chosen, f"other {colour_by} ({n_other} taxa){sample}", OTHER_COLOUR, top + 1)
    if unnamed.any():
        add(unnamed, f"{colour_by} unknown{sample}", UNKNOWN_COLOUR, top + 2)
    for i, code in enumerate(chosen.tolist()):
        add(shown_codes == code, str(taxa[code]), HIGHLIGHT_COLOURS[i % len(HIGHLIGHT_COLOURS)], i, size=6)
    return traces


_HOVER = "<b>%{customdata[0]}</b><br>" + "<br>".join(
    f"{name}: %{{customdata[{i + 1}]}}" for i, name in enumerate(LEVELS)) + "<extra></extra>"


def rank_array(ranks: np.ndarray | Sequence[Sequence[str]], n: int) -> np.ndarray:
    """``[N, 4]`` array of str names with ``""`` for unknown (None, NaN and bytes are normalised).

    A str array (a bundle's ``Reference.ranks``, already normalised) is taken as it is: converting a 1.1 M-row
    bank name by name would take seconds.
    """
    array = np.asarray(ranks)
    if array.dtype.kind != "U":
        array = np.asarray(ranks, dtype=object)
    if array.shape != (n, len(LEVELS)):
        raise ValueError(f"ranks must be [{n}, {len(LEVELS)}], got {array.shape}")
    if array.dtype.kind == "U":
        return array
    as_text = np.vectorize(_rank_text, otypes=[object])(array) if array.size else array
    return as_text.astype(str)


def _rank_text(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip()
