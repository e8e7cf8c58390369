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

This module needs only faiss and numpy; re-embedding a degraded specimen (a noise path) is the predictor's work,
in :mod:`hirviz.noise_path`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

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
from hirviz.queries import QUERIES
from hirviz.taxonomy import LEVELS

__all__ = ["Neighbours", "ReferenceMap", "fit_layout", "SPACES"]

SPACES: tuple[str, ...] = QUERIES
# Cosine distance under which a query counts as equal to a reference point (float32 round-off is ~1e-7).
_SAME_POINT = 1e-5


class Neighbours(NamedTuple):
    """The ``k`` nearest reference specimens of each query, best first.

    ``similarity``: cosine similarities ``[n, k]``; ``rows``: row indices into the reference arrays ``[n, k]``
    (``-1`` with similarity ``-inf`` where the space holds fewer than ``k`` specimens).
    """

    similarity: np.ndarray
    rows: np.ndarray


class ReferenceMap:
    """Neighbour search and map placement over a bundle's reference specimens.

    ``reference`` is a bundle's ``Reference`` (anything with ``ids``, ``ranks``, ``embeddings``, ``layouts``
    and optionally ``has_image`` / ``has_dna``). Only specimens that have the modalities of a space take part
    in it (a specimen without a photo is absent from the image and fused spaces). Indices are built lazily,
    once per space, and are safe to share between threads (the app serves several users at once).
    """

    def __init__(self, reference: Any) -> None:
        self.reference = reference
        self._indices: dict[str, ReferenceIndex] = {}
        self._lock = threading.Lock()

    # -- spaces and layouts ------------------------------------------------------------------------

    @property
    def spaces(self) -> tuple[str, ...]:
        """The embedding spaces the reference holds, in :data:`SPACES` order."""
        embeddings = self.reference.embeddings
        return tuple(s for s in SPACES if s in embeddings) + tuple(s for s in embeddings if s not in SPACES)

    @property
    def layout_spaces(self) -> tuple[str, ...]:
        """The spaces that have both embeddings and a precomputed 2-D layout (those :meth:`place` accepts)."""
        layouts = getattr(self.reference, "layouts", None) or {}
        return tuple(s for s in self.spaces if s in layouts)

    def layout(self, space: str) -> np.ndarray:
        """The precomputed layout ``[N, 2]`` of a space (rows aligned with the reference)."""
        layouts = getattr(self.reference, "layouts", None) or {}
        if space not in layouts:
            raise ValueError(f"the reference has no layout for space {space!r}; it has {sorted(layouts)}")
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
        """Qdrant when configured; else the bundle's saved FAISS index; else one built now (exact when small)."""
        emb = self._embeddings(space)
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
        """The ``k`` most cosine-similar reference specimens of each query in ``z`` (``[n, d]`` or ``[d]``).

        Queries are L2-normalised here, so any non-zero vector works. A 1-D ``z`` gives 1-D results.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        index = self.index(space)
        queries, single = _as_queries(z, index.d)
        sims, ref_rows = index.search(queries, int(k))  # padded with row -1, similarity -inf
        if single:
            return Neighbours(sims[0], ref_rows[0])
        return Neighbours(sims, ref_rows)

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

    def place(self, z: np.ndarray, space: str, k: int = 10) -> np.ndarray:
        """Positions ``[n, 2]`` (``[2]`` for a 1-D ``z``) of new embeddings on the space's precomputed layout.

        Each point goes to the mean of its ``k`` nearest reference neighbours' layout positions weighted by
        ``1 / (cosine distance)**2`` (Shepard interpolation): convex weights, so it lies in their convex hull,
        and a query equal to a reference point (distance below round-off) lands exactly on it.
        """
        layout = self.layout(space)
        sims, rows = self.neighbours(z, space, k)
        single = sims.ndim == 1
        sims, rows = np.atleast_2d(sims), np.atleast_2d(rows)
        pos = layout[np.clip(rows, 0, None)]
        usable = (rows >= 0) & np.isfinite(pos).all(axis=-1)
        if not usable.any(axis=1).all():
            raise ValueError(f"no reference specimen of the {space!r} space has a layout position")
        dist = np.clip(1.0 - sims.astype(np.float64), 0.0, None)
        same = usable & (dist <= _SAME_POINT)
        weights = np.where(usable, 1.0 / np.maximum(dist, _SAME_POINT) ** 2, 0.0)
        # A query on a reference point takes that point's position exactly (the mean of duplicates, if any).
        weights = np.where(same.any(axis=1, keepdims=True), same.astype(np.float64), weights)
        weights /= weights.sum(axis=1, keepdims=True)
        placed = np.einsum("nk,nkc->nc", weights, np.where(usable[..., None], pos, 0.0)).astype(np.float32)
        return placed[0] if single else placed

    def warm_up(self) -> None:
        """Build every index and run one placement, so that the first user request pays no set-up cost."""
        for space in self.spaces:
            index = self.index(space)
            if space in self.layout_spaces and index.ntotal:
                emb = self._embeddings(space)
                first = np.asarray(emb[:256], dtype=np.float32)
                usable = np.flatnonzero(np.linalg.norm(first, axis=1) > 0)
                if len(usable):
                    self.place(first[usable[0]], space)


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


def _as_queries(z: np.ndarray, dim: int) -> tuple[np.ndarray, bool]:
    """Queries as a C-contiguous, L2-normalised float32 array ``[n, dim]``, and whether ``z`` was 1-D."""
    x = np.asarray(z, dtype=np.float32)
    single = x.ndim == 1
    x = np.atleast_2d(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"expected query embeddings [n, {dim}] or [{dim}], got shape {np.shape(z)}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if not np.isfinite(x).all() or (norms == 0).any():
        raise ValueError("query embeddings must be finite and non-zero")
    return np.ascontiguousarray(x / norms), single


def _name(value: Any) -> str | None:
    """A stored string (h5py may give bytes) or ``None`` for the empty string that means unknown."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    text = "" if value is None else str(value)
    return text or None
