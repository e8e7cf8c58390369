"""Where a specimen lies among the reference specimens: nearest neighbours and a place on the UMAP maps.

A bundle's ``reference.h5`` holds the embeddings of its reference specimens in each space (image, DNA,
averaged, fused) and a precomputed 2-D UMAP layout of the image, DNA and fused spaces. :class:`ReferenceMap`
searches those embeddings through one :class:`~hirviz.index.ReferenceIndex` per space (inner product on unit
vectors = cosine similarity; exact for a small bank, the bundle's saved approximate index for a large one, or
Qdrant when ``HIRVIZ_INDEX=qdrant``; opened on first use) and places new embeddings on a layout.

Placement does not re-run UMAP: a new point is put at the inverse-distance-weighted mean of the layout
positions of its ``k`` nearest reference neighbours (in the embedding space). This is fast (one search), fully
deterministic, needs no pickled UMAP model (a bundle stores layouts, not fitted UMAP objects) and always lands
inside the convex hull of those neighbours, exactly on a reference point when the query equals it.

**Geometry.** :class:`Geometry` says how a model's embeddings are compared: cosine similarity of unit vectors
(``euclidean``), or geodesic distance on the hyperboloid of curvature -c (``lorentz``, METHOD.md section 9).
For a fixed c the geodesic distance falls as the Lorentzian inner product ``<x,y>_L = x.y - x_t y_t`` rises, and
that inner product is an ordinary one of augmented vectors, ``[x, x_t] . [y, -y_t]``: so a FAISS inner-product
index over the augmented keys finds the geodesic nearest neighbours (:meth:`Geometry.search_vectors`). The
reference map searches a flat (exact) index for ``k`` plus :data:`RERANK_MARGIN` candidates and re-ranks them by
the exact geodesic distance in float64 (float32 inner products of large space parts lose precision by
cancellation). A bank too large for a flat index takes an approximate FAISS inner-product index (IVF, HNSW) over
the same augmented vectors in stage one; the exact re-ranking stays as it is.

**The Poincare disk.** A Lorentz bundle also stores a map of each space on the Poincare disk
(:func:`hirviz.poincare.poincare_disk`), an exact radial projection: a point's distance from the disk centre is its geodesic
distance from the hyperboloid's origin (the "generality" axis; order names should sit near the centre, species
toward the rim), mapped to the unit disk by ``tanh(sqrt(c) d / 2)``; its direction is that of its tangent vector
(log map at the origin) projected on the two principal axes of the reference bank's tangent vectors
(:func:`hirviz.poincare.fit_disk_axes`, stored with the layout). Because the projection is a fixed function, a new point is placed
exactly (``place(..., layout="poincare")``), not interpolated; distances between points are not preserved.

This module needs faiss, numpy and (for the Lorentz distances) torch; re-embedding a degraded specimen (a noise
path) is the predictor's work, in :mod:`hirviz.noise_path`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from hirviz.bundle.files import BundleError
from hirviz.index import (
    QdrantIndex,
    ReferenceIndex,
    ReferenceIndexError,
    backend,
    bank_fingerprint,
    build_faiss,
    load_faiss,
    space_members,
)
from hirviz.lorentz import distance, log_map0, pairwise_distance, pairwise_inner, time_part
from hirviz.placement import interpolate
from hirviz.poincare import poincare_disk
from hirviz.queries import QUERIES
from hirviz.taxonomy import LEVELS

__all__ = ["EUCLIDEAN", "GEOMETRY_NAMES", "LAYOUT_KINDS", "Geometry", "Neighbours", "ReferenceMap", "fit_layout",
           "SPACES"]

SPACES: tuple[str, ...] = QUERIES
GEOMETRY_NAMES = ("euclidean", "lorentz")
# Map kinds: the 2-D UMAP layouts (every bundle) and the Poincare disk (Lorentz bundles).
LAYOUT_KINDS = ("umap", "poincare")
# Extra candidates the Lorentz search fetches by inner product before the exact float64 re-ranking.
RERANK_MARGIN = 16


@dataclass(frozen=True)
class Geometry:
    """How embeddings are compared: ``name`` ``"euclidean"`` (cosine of unit vectors) or ``"lorentz"`` (geodesic
    distance on the hyperboloid of curvature ``-curvature``; embeddings are space parts). See the module docstring.
    """

    name: str = "euclidean"
    curvature: float = 1.0

    def __post_init__(self) -> None:
        if self.name not in GEOMETRY_NAMES:
            raise ValueError(f"geometry must be one of {GEOMETRY_NAMES}, got {self.name!r}")
        if not (np.isfinite(self.curvature) and self.curvature > 0):
            raise ValueError(f"the curvature must be a finite number > 0, got {self.curvature!r}")

    @classmethod
    def of(cls, model: Any) -> Geometry:
        """The geometry of a :class:`hirviz.model.HirvizModel` (its current curvature)."""
        c = model.curvature()
        return cls(model.geometry, 1.0 if c is None else float(c.detach().cpu()))

    @property
    def lorentz(self) -> bool:
        return self.name == "lorentz"

    def _pair(self, queries: np.ndarray, keys: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(np.asarray(queries, dtype=np.float64)),
                torch.from_numpy(np.asarray(keys, dtype=np.float64)))

    def similarity(self, queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """``[n, m]`` float64 scores, higher = nearer: cosine (inner product of unit vectors) or ``<x, y>_L``."""
        if not self.lorentz:
            return np.asarray(queries, dtype=np.float64) @ np.asarray(keys, dtype=np.float64).T
        return pairwise_inner(*self._pair(queries, keys), self.curvature).numpy()

    def distance(self, queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """``[n, m]`` float64 distances: ``1 - cos`` (unit vectors) or the geodesic distance."""
        if not self.lorentz:
            return 1.0 - self.similarity(queries, keys)
        return pairwise_distance(*self._pair(queries, keys), self.curvature, eps=0.0).numpy()

    def logits(self, queries: np.ndarray, keys: np.ndarray, scale: float) -> np.ndarray:
        """The contrastive logits ``[n, m]``: ``scale * cos`` or ``-scale * d(x, y)`` (METHOD.md sections 1, 9)."""
        if not self.lorentz:
            return scale * self.similarity(queries, keys)
        return -scale * self.distance(queries, keys)

    def search_vectors(self, x: np.ndarray, side: str) -> np.ndarray:
        """float32 ``[n, d']`` vectors whose inner product ranks as this geometry does: the vectors themselves
        (Euclidean), or ``[x, x_t]`` for queries and ``[y, -y_t]`` for keys (Lorentz: ``<x, y>_L``)."""
        if side not in ("query", "key"):
            raise ValueError(f"side must be 'query' or 'key', got {side!r}")
        x = np.asarray(x, dtype=np.float32)
        if not self.lorentz:
            return np.ascontiguousarray(x)
        t = time_part(torch.from_numpy(x.astype(np.float64)), self.curvature).numpy()[:, None]
        return np.ascontiguousarray(np.hstack([x, t if side == "query" else -t]), dtype=np.float32)

    def tangent(self, x: np.ndarray) -> np.ndarray:
        """Points in the tangent space at the origin (log map; Euclidean: unchanged), float32."""
        if not self.lorentz:
            return np.asarray(x, dtype=np.float32)
        return log_map0(torch.from_numpy(np.asarray(x, dtype=np.float64)), self.curvature).float().numpy()

    def origin_distance(self, x: np.ndarray) -> np.ndarray:
        """float64 ``[n]`` geodesic distances from the hyperboloid's origin (the norm of the log map), Lorentz only."""
        if not self.lorentz:
            raise ValueError("distance from the origin is a Lorentz-geometry notion (Euclidean embeddings are unit)")
        x = torch.from_numpy(np.atleast_2d(np.asarray(x, dtype=np.float64)))
        return torch.linalg.vector_norm(log_map0(x, self.curvature, eps=0.0), dim=-1).numpy()


EUCLIDEAN = Geometry()


class Neighbours(NamedTuple):
    """The ``k`` nearest reference specimens of each query, best first.

    ``similarity``: cosine similarities ``[n, k]`` (Lorentz: minus the geodesic distance); ``rows``: row indices
    into the reference arrays ``[n, k]`` (``-1`` with similarity ``-inf`` where the space holds fewer than ``k``
    specimens).
    """

    similarity: np.ndarray
    rows: np.ndarray


class ReferenceMap:
    """Neighbour search and map placement over a bundle's reference specimens.

    ``reference`` is a bundle's ``Reference`` (anything with ``ids``, ``ranks``, ``embeddings``, ``layouts``
    and optionally ``has_image`` / ``has_dna``). Only specimens that have the modalities of a space take part
    in it (a specimen without a photo is absent from the image and fused spaces). Indices are built lazily,
    once per space, and are safe to share between threads (the app serves several users at once). ``geometry``
    says how the embeddings compare (:class:`Geometry`; cosine by default).
    """

    def __init__(self, reference: Any, geometry: Geometry = EUCLIDEAN) -> None:
        self.reference = reference
        self.geometry = geometry
        self._indices: dict[str, ReferenceIndex] = {}
        self._lock = threading.Lock()

    # -- spaces and layouts ------------------------------------------------------------------------

    @property
    def spaces(self) -> tuple[str, ...]:
        """The embedding spaces the reference holds, in :data:`SPACES` order."""
        embeddings = self.reference.embeddings
        return tuple(s for s in SPACES if s in embeddings) + tuple(s for s in embeddings if s not in SPACES)

    def _layouts(self, kind: str) -> dict[str, np.ndarray]:
        if kind not in LAYOUT_KINDS:
            raise ValueError(f"layout must be one of {LAYOUT_KINDS}, got {kind!r}")
        return getattr(self.reference, "layouts" if kind == "umap" else "poincare", None) or {}

    @property
    def layout_spaces(self) -> tuple[str, ...]:
        """The spaces that have both embeddings and a precomputed 2-D layout (those :meth:`place` accepts)."""
        layouts = self._layouts("umap")
        return tuple(s for s in self.spaces if s in layouts)

    @property
    def disk_spaces(self) -> tuple[str, ...]:
        """The spaces with a Poincare disk map (Lorentz bundles; those ``place(..., layout="poincare")`` accepts)."""
        disks = self._layouts("poincare")
        axes = getattr(self.reference, "poincare_axes", None) or {}
        return tuple(s for s in self.spaces if s in disks and s in axes) if self.geometry.lorentz else ()

    def layout(self, space: str, kind: str = "umap") -> np.ndarray:
        """The precomputed layout ``[N, 2]`` of a space (rows aligned with the reference): ``kind`` ``"umap"`` or
        ``"poincare"`` (the disk)."""
        layouts = self._layouts(kind)
        if space not in layouts:
            raise ValueError(f"the reference has no layout ({kind}) for space {space!r}; it has {sorted(layouts)}")
        return np.asarray(layouts[space], dtype=np.float32)

    def members(self, space: str) -> np.ndarray:
        """Reference rows taking part in a space: those with its modalities and a non-zero embedding."""
        self._embeddings(space)
        return space_members(self.reference, space)

    def _embeddings(self, space: str) -> np.ndarray:
        """The space's embeddings as stored (float32, or a large bank's memory-mapped float16: never copied)."""
        embeddings = self.reference.embeddings
        if space not in embeddings:
            raise ValueError(f"the reference has no {space!r} embeddings; it has {sorted(embeddings)}")
        return embeddings[space]

    def index(self, space: str) -> ReferenceIndex:
        """The search index of a space, opened once (its ``search`` answers reference rows)."""
        cached = self._indices.get(space)
        if cached is not None:
            return cached
        with self._lock:
            if space not in self._indices:
                self._indices[space] = self._open_index(space)
            return self._indices[space]

    def _open_index(self, space: str) -> ReferenceIndex:
        """Qdrant when configured; else the bundle's saved FAISS index; else one built now (exact when small).

        A Lorentz bank is searched through its augmented vectors ``[x, x_t]`` (their inner product with a query's
        ``[y, -y_t]`` is the Lorentzian one), in an exact index built here; :meth:`_geodesic_search` re-ranks.
        """
        emb = self._embeddings(space)
        if self.geometry.lorentz:
            return build_faiss(self.geometry.search_vectors(np.asarray(emb), "key"), self.members(space), kind="flat")
        if backend() == "qdrant":
            rows = self.members(space)
            return QdrantIndex.build(emb, rows, f"hirviz-{space}-{bank_fingerprint(self.reference.ids, emb, rows)}")
        saved = (getattr(self.reference, "indexes", None) or {}).get(space)
        folder = getattr(self.reference, "folder", None)
        if saved is not None and folder is not None:
            try:
                return load_faiss(folder / str(saved["file"]), saved)
            except ReferenceIndexError as err:
                raise BundleError(str(err)) from err
        return build_faiss(emb, self.members(space), kind="auto")

    # -- search ------------------------------------------------------------------------------------

    def neighbours(self, z: np.ndarray, space: str, k: int = 10) -> Neighbours:
        """The ``k`` nearest reference specimens of each query in ``z`` (``[n, d]`` or ``[d]``).

        Euclidean: the most cosine-similar; queries are L2-normalised here, so any non-zero vector works. Lorentz:
        the nearest by geodesic distance (inner-product candidates, then exact re-ranking; module docstring).
        A 1-D ``z`` gives 1-D results.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        index = self.index(space)
        lorentz = self.geometry.lorentz
        queries, single = _as_queries(z, index.d - int(lorentz), normalise=not lorentz)
        if lorentz:
            sims, ref_rows = self._geodesic_search(index, queries, space, int(k))
        else:
            sims, ref_rows = index.search(queries, int(k))  # padded with row -1, similarity -inf
        if single:
            return Neighbours(sims[0], ref_rows[0])
        return Neighbours(sims, ref_rows)

    def _geodesic_search(self, index: ReferenceIndex, queries: np.ndarray, space: str, k: int
                         ) -> tuple[np.ndarray, np.ndarray]:
        """Stage 1: ``k + RERANK_MARGIN`` candidates by Lorentzian inner product; stage 2: exact float64 geodesic
        distances, best ``k`` kept. Returns (minus the distances, reference rows), padded with -inf / -1."""
        fetch = min(index.ntotal, k + RERANK_MARGIN)
        if fetch == 0:
            return np.full((len(queries), k), -np.inf, dtype=np.float32), np.full((len(queries), k), -1)
        _, rows = index.search(self.geometry.search_vectors(queries, "query"), fetch)
        keys = np.asarray(self._embeddings(space))[np.clip(rows, 0, None)]  # [n, fetch, d]
        x = torch.from_numpy(queries.astype(np.float64))[:, None, :]
        dist = distance(x, torch.from_numpy(keys.astype(np.float64)), self.geometry.curvature, eps=0.0)
        dist = np.where(rows >= 0, dist.numpy(), np.inf)
        order = np.argsort(dist, axis=1, kind="stable")[:, :k]
        dist, rows = np.take_along_axis(dist, order, axis=1), np.take_along_axis(rows, order, axis=1)
        if fetch < k:
            pad = k - fetch
            dist = np.hstack([dist, np.full((len(dist), pad), np.inf)])
            rows = np.hstack([rows, np.full((len(rows), pad), -1)])
        return (-dist).astype(np.float32), rows

    def records(self, similarity: Sequence[float], rows: Sequence[int]) -> list[dict[str, Any]]:
        """Hits as an identification engine lists them: ``{"id", "row", "ranks", "similarity"}`` each.

        ``ranks`` maps each level to its name, ``None`` where the specimen is not identified that deep.
        Padding rows (``-1``) are dropped.
        """
        ids, ranks = self.reference.ids, self.reference.ranks
        out = []
        for sim, row in zip(np.asarray(similarity).tolist(), np.asarray(rows).tolist()):
            if row < 0:
                continue
            names = [_name(r) for r in ranks[row]]
            out.append({"id": _name(ids[row]) or "", "row": int(row), "ranks": dict(zip(LEVELS, names)),
                        "similarity": float(sim)})
        return out

    # -- placement ---------------------------------------------------------------------------------

    def place(self, z: np.ndarray, space: str, k: int = 10, layout: str = "umap") -> np.ndarray:
        """Positions ``[n, 2]`` (``[2]`` for a 1-D ``z``) of new embeddings on the space's precomputed layout.

        UMAP layouts: each point goes to the mean of its ``k`` nearest reference neighbours' layout positions
        weighted by ``1 / distance**2`` (cosine, or geodesic in the Lorentz geometry; Shepard interpolation): convex
        weights, so it lies in their convex hull, and a query equal to a reference point (distance below round-off)
        lands exactly on it. The Poincare disk (``layout="poincare"``) is an exact projection: the point is
        projected as the reference was (:func:`hirviz.poincare.poincare_disk`), no neighbours involved.
        """
        if layout == "poincare":
            return self._place_on_disk(z, space)
        layout = self.layout(space, layout)
        sims, rows = self.neighbours(z, space, k)
        single = sims.ndim == 1
        sims, rows = np.atleast_2d(sims), np.atleast_2d(rows)
        try:
            placed = interpolate((0.0 if self.geometry.lorentz else 1.0) - sims.astype(np.float64), rows, layout)
        except ValueError:
            raise ValueError(f"no reference specimen of the {space!r} space has a layout position") from None
        return placed[0] if single else placed

    def _place_on_disk(self, z: np.ndarray, space: str) -> np.ndarray:
        if space not in self.disk_spaces:
            raise ValueError(f"the reference has no Poincare disk of space {space!r}; it has {list(self.disk_spaces)}")
        queries, single = _as_queries(z, self._embeddings(space).shape[1], normalise=False)
        axes = np.asarray(self.reference.poincare_axes[space], dtype=np.float64)
        placed = poincare_disk(queries, self.geometry.curvature, axes)
        return placed[0] if single else placed

    def warm_up(self) -> None:
        """Build every index, run one placement and summarise every map (:func:`hirviz.map_layers.prepare_map`),
        so that the first user request pays no set-up cost."""
        for space in self.spaces:
            index = self.index(space)
            if space in self.layout_spaces and index.ntotal:
                emb = self._embeddings(space)
                first = np.asarray(emb[:256], dtype=np.float32)
                usable = np.flatnonzero(np.linalg.norm(first, axis=1) > 0)
                if len(usable):
                    self.place(first[usable[0]], space)
        from hirviz.map_layers import prepare_map  # plotly: only the app warms up

        for kind in LAYOUT_KINDS:  # each map's density image and taxon codes, before the first request
            for layout in self._layouts(kind).values():
                prepare_map(layout, self.reference.ranks, self.reference.ids)


def fit_layout(
    embeddings: np.ndarray, seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1
) -> np.ndarray:
    """A 2-D UMAP layout ``[N, 2]`` (float32) of unit embeddings, cosine metric, seeded (hence single-threaded).

    Meant for export, on a few thousand points: UMAP's first call in a process also pays numba's compilation
    (tens of seconds). Rows that are all zero (a missing modality) get NaN positions and are left out of the fit.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"expected embeddings [N, d], got shape {x.shape}")
    keep = np.linalg.norm(x, axis=1) > 0
    out = np.full((len(x), 2), np.nan, dtype=np.float32)
    if keep.sum() < 3:
        raise ValueError(f"a layout needs at least 3 non-empty embeddings, got {int(keep.sum())}")
    import umap  # imported here: slow to import, and only export needs it

    reducer = umap.UMAP(n_components=2, n_neighbors=min(n_neighbors, int(keep.sum()) - 1), min_dist=min_dist,
                        metric="cosine", random_state=seed, n_jobs=1)
    out[keep] = reducer.fit_transform(x[keep]).astype(np.float32)
    return out


def _as_queries(z: np.ndarray, dim: int, normalise: bool = True) -> tuple[np.ndarray, bool]:
    """Queries as a C-contiguous (L2-normalised) float32 array ``[n, dim]``, and whether ``z`` was 1-D."""
    x = np.asarray(z, dtype=np.float32)
    single = x.ndim == 1
    x = np.atleast_2d(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected query embeddings [n, {dim}] or [{dim}], got shape {np.shape(z)}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.isfinite(x).all() or (norms == 0).any():
        raise ValueError("query embeddings must be finite and non-zero")
    return np.ascontiguousarray(x / norms if normalise else x), single


def _name(value: Any) -> str | None:
    """A stored string (h5py may give bytes) or ``None`` for the empty string that means unknown."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    text = "" if value is None else str(value)
    return text or None
