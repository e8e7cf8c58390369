"""A 2-D UMAP layout of a reference bank of any size: fit on a stratified sample, place the rest by neighbours.

UMAP's cost grows with the number of points (its neighbour graph and hundreds of optimisation epochs over every
point), so a BIOSCAN-size bank (1.1 M specimens) is not fitted whole. :func:`fit_large_layout` fits
:func:`hirviz.geometry.fit_layout` on at most :data:`LAYOUT_SAMPLE` rows drawn per taxon
(:func:`hirviz.placement.stratified_sample`: every genus, family or order is in the fit before a common one gets
more rows) and puts every other row where a query would go: the weighted mean of the positions of its
:data:`PLACE_NEIGHBOURS` nearest fitted rows (:func:`hirviz.placement.interpolate`, as
:meth:`hirviz.geometry.ReferenceMap.place` places a query). The neighbours come from a FAISS inverted file over the
fitted rows (cosine, UMAP's metric here), searched in chunks so that a float16, memory-mapped bank is never copied
whole. A bank of at most :data:`LAYOUT_SAMPLE` rows is fitted whole, exactly as before.

Export-time code (it needs umap-learn); the app only reads the stored layouts.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from hirviz import geometry as _geometry  # module attribute: tests swap fit_layout for a stand-in
from hirviz.index import build_faiss, iter_chunks
from hirviz.placement import interpolate, stratified_sample

__all__ = ["LAYOUT_SAMPLE", "PLACE_NEIGHBOURS", "fit_large_layout"]

logger = logging.getLogger(__name__)

# Rows UMAP is fitted on at most: 50k points fit in a few minutes on one core and cover every taxon of BIOSCAN-1M.
LAYOUT_SAMPLE = 50_000
# Neighbours whose positions place a row left out of the fit (the reference map places queries with 10 as well).
PLACE_NEIGHBOURS = 10
# Rows searched per FAISS call while placing (memory: chunk x 512 float32 = 128 MB at most).
_PLACE_CHUNK = 65_536


def fit_large_layout(vectors: np.ndarray, strata: np.ndarray, seed: int = 0, max_fit: int = LAYOUT_SAMPLE,
                     k: int = PLACE_NEIGHBOURS) -> tuple[np.ndarray, dict[str, float | int]]:
    """A layout ``[N, 2]`` float32 of ``vectors`` (``[N, d]``, any float dtype; all-zero rows get NaN), and timings.

    ``strata`` (``[N]``, e.g. :func:`hirviz.placement.taxon_keys` of the ranks) says what the fit sample is
    stratified by. At most ``max_fit`` non-empty rows: one UMAP fit of them all. More: a seeded stratified sample of
    ``max_fit`` is fitted, the rest placed on it by their ``k`` nearest fitted rows (module docstring). The second
    value reports ``points``, ``fitted``, ``fit_s`` and ``place_s``.
    """
    if vectors.ndim != 2 or len(strata) != len(vectors):
        raise ValueError(f"expected vectors [N, d] and N strata, got {vectors.shape} and {len(strata)}")
    norms = np.concatenate([np.linalg.norm(chunk, axis=1) for chunk, _ in iter_chunks(vectors, np.arange(len(vectors)))]
                           ) if len(vectors) else np.zeros(0)
    members = np.flatnonzero(norms > 0)
    started = time.perf_counter()
    if len(members) <= max_fit:
        layout = _geometry.fit_layout(np.asarray(vectors, dtype=np.float32), seed=seed)
        return layout, {"points": len(members), "fitted": len(members), "fit_s": time.perf_counter() - started,
                        "place_s": 0.0}
    fitted = members[stratified_sample(np.asarray(strata)[members], max_fit, seed=seed)]
    sample = np.asarray(vectors[fitted], dtype=np.float32) / norms[fitted, None]
    layout = np.full((len(vectors), 2), np.nan, dtype=np.float32)
    layout[fitted] = _geometry.fit_layout(sample, seed=seed)
    fit_s = time.perf_counter() - started
    started = time.perf_counter()
    # An inverted file over the fitted rows (the large bank's probe count): placement needs near neighbours, not
    # exactly the nearest, and a flat scan of 50k x 512 per row would take about an hour for a million rows.
    index = build_faiss(sample, np.arange(len(fitted)), kind="IVF{nlist},Flat", seed=seed)
    rest = np.setdiff1d(members, fitted, assume_unique=True)
    for chunk, rows in iter_chunks(vectors, rest, _PLACE_CHUNK):
        chunk /= norms[rows, None]
        sims, near = index.search(chunk, k)
        layout[rows] = interpolate(1.0 - sims.astype(np.float64), near, layout[fitted])
    place_s = time.perf_counter() - started
    logger.info("layout of %d points: UMAP on %d in %.1f s, the rest placed in %.1f s", len(members), len(fitted),
                fit_s, place_s)
    return layout, {"points": len(members), "fitted": len(fitted), "fit_s": fit_s, "place_s": place_s}
