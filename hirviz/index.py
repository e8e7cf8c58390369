"""Nearest-neighbour search over one embedding space of a reference bank: :class:`ReferenceIndex` and its backends.

Every backend answers :meth:`ReferenceIndex.search` with inner products (cosine similarity for the unit vectors of
a bank) and *reference rows*: each index is built with the bank row of every vector it holds, so a space that
leaves some specimens out (no photo, no barcode) needs no separate row map.

Backends:

* **FAISS, embedded** (the default). A bank below :data:`FLAT_MAX_ROWS` vectors gets an exact flat index, built
  when the bank is opened (milliseconds). A larger bank gets an approximate index built at export and saved in
  the bundle with FAISS's own I/O (:func:`save_faiss` / :func:`load_faiss`, memory-mapped where FAISS can); its
  kind and search parameters are a FAISS factory string and a parameter dict (:data:`LARGE_INDEX`), chosen by
  measurement in ``bench/bench_bank.py`` (see ``bench/README.md``).
* **Qdrant** through the official ``qdrant-client`` (``pip install "hirviz[qdrant]"``): ``HIRVIZ_INDEX=qdrant``
  with ``HIRVIZ_QDRANT_URL`` (and optionally ``HIRVIZ_QDRANT_API_KEY``) for a cluster, or without a URL the
  client's embedded local mode (in memory). One collection per bank and space, named by a fingerprint of the
  bank, so a cluster shared by several app replicas is filled once.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import faiss
import numpy as np

__all__ = ["ReferenceIndex", "FaissIndex", "QdrantIndex", "ReferenceIndexError", "FLAT_MAX_ROWS", "LARGE_INDEX",
           "backend", "space_members", "build_faiss", "save_faiss", "load_faiss", "bank_fingerprint", "iter_chunks"]

# Below this many vectors an exact flat index is built at load time: at 100k x 512 one query scans 51 M
# multiply-adds (a few ms on one core) and building it is a copy. Above it, an approximate index is saved at export.
FLAT_MAX_ROWS = 100_000
# The approximate index of a large bank (measured in bench/bench_bank.py on 1.1 M x 512, bench/README.md):
# an inverted file with ``nlist`` cells over float16 codes (the bank's own precision, so no quantisation loss
# beyond the cells), searching ``nprobe`` cells.
LARGE_INDEX: dict[str, Any] = {"factory": "IVF{nlist},SQfp16", "nprobe": 32, "train_size": 65_536}
_CHUNK = 65_536


class ReferenceIndexError(ValueError):
    """An index cannot be built, read or searched (one-line message naming the file or setting)."""


class ReferenceIndex(ABC):
    """Top-``k`` inner-product search over the vectors of one space, answering reference rows.

    Implementations are safe to search from several threads at once (the app serves several users).
    """

    params: dict[str, Any]

    @property
    @abstractmethod
    def ntotal(self) -> int:
        """How many vectors the index holds."""

    @property
    @abstractmethod
    def d(self) -> int:
        """The vector dimension."""

    @abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores float32 ``[n, k]`` and reference rows int64 ``[n, k]`` of the ``k`` best vectors per query, best
        first. ``queries`` is float32 ``[n, d]`` (unit vectors for cosine similarity). Where the index holds fewer
        than ``k`` vectors the rest is padded with row ``-1`` and score ``-inf``."""


def backend() -> str:
    """The configured backend: ``HIRVIZ_INDEX`` (``faiss``, the default, or ``qdrant``)."""
    name = os.environ.get("HIRVIZ_INDEX", "").strip().lower() or "faiss"
    if name not in ("faiss", "qdrant"):
        raise ReferenceIndexError(f"HIRVIZ_INDEX must be 'faiss' or 'qdrant', got {name!r}")
    return name


def iter_chunks(vectors: np.ndarray, rows: np.ndarray, size: int = _CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(float32 vectors, their rows)`` in chunks: a float16 or memory-mapped bank is never copied whole."""
    for start in range(0, len(rows), size):
        part = rows[start:start + size]
        yield np.ascontiguousarray(vectors[part], dtype=np.float32), part.astype(np.int64)


# ------------------------------------------------------------------------------------------------------- FAISS


class FaissIndex(ReferenceIndex):
    """A FAISS index whose ids are reference rows (flat ones wrapped in ``IndexIDMap``; IVF ones hold ids)."""

    def __init__(self, index: faiss.Index, params: Mapping[str, Any] | None = None) -> None:
        self.index = index
        self.params = dict(params or {})
        search = {k: v for k, v in self.params.items() if k in ("nprobe", "efSearch")}
        for name, value in search.items():
            faiss.ParameterSpace().set_index_parameter(index, name, value)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    @property
    def d(self) -> int:
        return int(self.index.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        scores, rows = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), int(k))
        return np.where(rows >= 0, scores, -np.inf).astype(np.float32), rows.astype(np.int64)


def build_faiss(vectors: np.ndarray, rows: np.ndarray, kind: str = "auto", seed: int = 0) -> FaissIndex:
    """A FAISS index over ``vectors[rows]``, ids = ``rows``.

    ``kind``: ``"flat"`` (exact), ``"large"`` (:data:`LARGE_INDEX`), ``"auto"`` (flat below :data:`FLAT_MAX_ROWS`
    rows, else large) or any FAISS factory string (``"HNSW32,Flat"``, ``"IVF4096,PQ64"``...; ``{nlist}`` is
    filled in). The approximate kinds train on a seeded sample of at most ``LARGE_INDEX["train_size"]`` rows.
    """
    rows = np.asarray(rows, dtype=np.int64)
    d = int(vectors.shape[1])
    if kind == "auto":
        kind = "flat" if len(rows) < FLAT_MAX_ROWS else "large"
    if kind == "flat":
        index = faiss.IndexIDMap(faiss.IndexFlatIP(d))
        params: dict[str, Any] = {"factory": "IDMap,Flat", "exact": True}
    else:
        factory = LARGE_INDEX["factory"] if kind == "large" else kind
        nlist = _nlist(len(rows))
        factory = factory.format(nlist=nlist)
        try:
            index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as err:
            raise ReferenceIndexError(f"cannot build a FAISS index {factory!r}: {str(err).splitlines()[0]}") from err
        params = {"factory": factory, "exact": False}
        if "IVF" in factory:
            params["nprobe"] = int(LARGE_INDEX["nprobe"])
        if "HNSW" in factory:
            params["efSearch"] = 64
        if not index.is_trained:
            size = min(len(rows), int(LARGE_INDEX["train_size"]))
            sample = np.sort(np.random.default_rng(seed).choice(rows, size=size, replace=False))
            index.train(np.ascontiguousarray(vectors[sample], dtype=np.float32))
        if not _holds_ids(index):
            index = faiss.IndexIDMap(index)
    for chunk, ids in iter_chunks(vectors, rows):
        index.add_with_ids(chunk, ids)
    params["ntotal"] = int(index.ntotal)
    return FaissIndex(index, params)


def _nlist(n: int) -> int:
    """Inverted-file cells: about ``4 sqrt(n)``, a power of two, at least 16 (FAISS's rule of thumb)."""
    return max(16, 1 << int(round(np.log2(4 * np.sqrt(max(n, 1))))))


def _holds_ids(index: faiss.Index) -> bool:
    try:
        faiss.extract_index_ivf(index)
        return True
    except RuntimeError:
        return False


def save_faiss(index: FaissIndex, path: str | os.PathLike) -> None:
    """Write the index with ``faiss.write_index`` (its parameters are recorded by the caller)."""
    faiss.write_index(index.index, os.fspath(path))


def load_faiss(path: str | os.PathLike, params: Mapping[str, Any] | None = None, mmap: bool = True) -> FaissIndex:
    """Read an index written by :func:`save_faiss`, memory-mapped when ``mmap`` (inverted lists and flat codes
    stay in the page cache, not in the process's own memory); a damaged file is a one-line :class:`ReferenceIndexError`."""
    path = Path(path)
    if not path.is_file():
        raise ReferenceIndexError(f"index file {path} is missing")
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    try:
        index = faiss.read_index(os.fspath(path), flags)
    except RuntimeError as err:
        raise ReferenceIndexError(f"cannot read index file {path}: {str(err).strip().splitlines()[-1]}") from err
    expected = (params or {}).get("ntotal")
    if expected is not None and int(expected) != index.ntotal:
        raise ReferenceIndexError(f"index file {path} holds {index.ntotal} vectors, the bundle records {expected}")
    return FaissIndex(index, params)


# ------------------------------------------------------------------------------------------------------ Qdrant


class QdrantIndex(ReferenceIndex):
    """A Qdrant collection of the vectors, point id = reference row, cosine distance.

    :meth:`build` connects to ``HIRVIZ_QDRANT_URL`` (embedded local mode in memory without it), creates the
    collection and uploads the vectors unless a collection of that name already holds them all.
    """

    def __init__(self, client: Any, collection: str, d: int, params: Mapping[str, Any] | None = None) -> None:
        self.client = client
        self.collection = collection
        self._d = int(d)
        self.params = dict(params or {})

    @property
    def ntotal(self) -> int:
        return int(self.client.count(self.collection, exact=True).count)

    @property
    def d(self) -> int:
        return self._d

    @classmethod
    def build(cls, vectors: np.ndarray, rows: np.ndarray, collection: str, client: Any = None) -> QdrantIndex:
        """Fill (or reuse) ``collection`` with ``vectors[rows]`` and return an index over it."""
        try:
            from qdrant_client import QdrantClient, models
        except ImportError as err:
            raise ReferenceIndexError("HIRVIZ_INDEX=qdrant needs qdrant-client: pip install 'hirviz[qdrant]'") from err
        if client is None:
            url = os.environ.get("HIRVIZ_QDRANT_URL", "").strip()
            client = (QdrantClient(url=url, api_key=os.environ.get("HIRVIZ_QDRANT_API_KEY") or None)
                      if url else QdrantClient(":memory:"))
        rows = np.asarray(rows, dtype=np.int64)
        d = int(vectors.shape[1])
        if client.collection_exists(collection) and client.count(collection, exact=True).count == len(rows):
            return cls(client, collection, d, {"collection": collection, "ntotal": len(rows)})
        if client.collection_exists(collection):
            client.delete_collection(collection)
        client.create_collection(collection, vectors_config=models.VectorParams(size=d,
                                                                                distance=models.Distance.COSINE))
        for chunk, ids in iter_chunks(vectors, rows, size=4096):
            client.upload_collection(collection, vectors=chunk, ids=ids.tolist(), wait=True)
        return cls(client, collection, d, {"collection": collection, "ntotal": len(rows)})

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        from qdrant_client import models

        queries = np.asarray(queries, dtype=np.float32)
        requests = [models.QueryRequest(query=q.tolist(), limit=int(k)) for q in queries]
        answers = self.client.query_batch_points(self.collection, requests=requests)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        for i, answer in enumerate(answers):
            for j, point in enumerate(answer.points[:k]):
                scores[i, j], rows[i, j] = point.score, int(point.id)
        return scores, rows


def bank_fingerprint(ids: np.ndarray, vectors: np.ndarray, rows: np.ndarray) -> str:
    """A short hash naming a bank's space: its ids, size and a few of its vectors (a re-export changes it)."""
    digest = hashlib.sha1(np.asarray(ids, dtype=str).tobytes())
    digest.update(np.asarray([len(ids), len(rows), vectors.shape[1]], dtype=np.int64).tobytes())
    probe = rows[np.linspace(0, len(rows) - 1, num=min(len(rows), 16)).astype(int)] if len(rows) else rows
    digest.update(np.ascontiguousarray(vectors[probe], dtype=np.float16).tobytes())
    return digest.hexdigest()[:16]


# The modalities each space needs: a specimen without a photo is absent from the image, averaged and fused spaces.
_NEEDS = {"image": ("has_image",), "dna": ("has_dna",), "avg": ("has_image", "has_dna"),
          "fused": ("has_image", "has_dna")}


def space_members(reference: Any, space: str) -> np.ndarray:
    """Rows of a reference bank taking part in a space: those with its modalities and a non-zero embedding.

    ``reference`` has ``embeddings`` and optionally ``has_image`` / ``has_dna`` (a bundle's ``Reference``). Norms
    are computed chunk by chunk, so a memory-mapped float16 bank is not copied.
    """
    emb = reference.embeddings[space]
    mask = np.concatenate([np.linalg.norm(np.asarray(emb[s:s + _CHUNK], dtype=np.float32), axis=1) > 0
                           for s in range(0, len(emb), _CHUNK)]) if len(emb) else np.zeros(0, dtype=bool)
    for name in _NEEDS.get(space, ()):
        flags = getattr(reference, name, None)
        if flags is not None:
            mask &= np.asarray(flags, dtype=bool)
    return np.flatnonzero(mask)
