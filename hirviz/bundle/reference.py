"""The reference specimens of a bundle (``reference.h5``): ids, taxonomy, barcodes, embeddings and map layouts."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hirviz.bundle.files import (
    CONFIG_FILE,
    FORMAT_VERSION,
    SPACES,
    BundleError,
    check_version,
    one_line,
    read_json,
)
from hirviz.index import FLAT_MAX_ROWS
from hirviz.taxonomy import LEVELS, UNKNOWN_ID, Taxonomy

__all__ = ["Reference", "check_reference_header", "check_index_files"]

_CHUNK_ROWS = 65_536


@dataclass
class Reference:
    """The reference specimens of a bundle, row-aligned arrays.

    Attributes:
        ids: str ``[N]`` sample ids.
        ranks: str ``[N, 4]`` names at order, family, genus, species (``""`` where unknown).
        labels: int64 ``[N, 4]`` ids in the bundle's :class:`Taxonomy` (``-1`` where unknown).
        barcodes: str ``[N]`` DNA barcodes (``""`` where missing).
        embeddings: space (``image``, ``dna``, ``avg``, ``fused``) -> float32 ``[N, d]``; only the spaces the
            model has. Rows of a specimen lacking a modality are meaningless (zeros): see the masks.
        has_image, has_dna: bool ``[N]``, whether the specimen has a photo / a barcode.
        layouts: space -> float32 ``[N, 2]`` precomputed UMAP positions of every row (NaN for rows left out of a
            space; a large bank's are memory-mapped by :meth:`load`, see :mod:`hirviz.layout_scale`).
        indexes: space -> the saved search index of a large bank (``file`` beside ``reference.h5`` and its FAISS
            parameters, as ``config.json`` records them under ``reference_index``); empty for small banks, whose
            exact index is built when they are opened.

    A large bank (:data:`~hirviz.index.FLAT_MAX_ROWS` rows or more) stores its embeddings as float16, and
    :meth:`load` maps them from the file instead of reading them (``embeddings`` then holds read-only float16
    memory maps): the process never holds a float32 copy of the bank.
        poincare: space -> float32 ``[N, 2]`` positions on the unit Poincare disk (Lorentz bundles; NaN for rows
            left out), the projection of :func:`hirviz.poincare.poincare_disk` with ``poincare_axes[space]``.
        poincare_axes: space -> float32 ``[2, d]`` the disk projection's tangent-space axes.
    """

    ids: np.ndarray
    ranks: np.ndarray
    labels: np.ndarray
    barcodes: np.ndarray
    embeddings: dict[str, np.ndarray]
    has_image: np.ndarray
    has_dna: np.ndarray
    layouts: dict[str, np.ndarray] = field(default_factory=dict)
    indexes: dict[str, dict[str, Any]] = field(default_factory=dict)
    folder: Path | None = None
    poincare: dict[str, np.ndarray] = field(default_factory=dict)
    poincare_axes: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = _str_array(self.ids, "ids")
        self.ranks = _str_array(self.ranks, "ranks").reshape(-1, len(LEVELS))
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1, len(LEVELS))
        self.barcodes = _str_array(self.barcodes, "barcodes")
        self.embeddings = {k: _embedding_array(v) for k, v in self.embeddings.items()}
        self.has_image = np.asarray(self.has_image, dtype=bool)
        self.has_dna = np.asarray(self.has_dna, dtype=bool)
        self.layouts = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.layouts.items()}
        self.poincare = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.poincare.items()}
        self.poincare_axes = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.poincare_axes.items()}
        self.validate()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int | None:
        """Embedding dimension d (``None`` when the reference holds no embeddings)."""
        return next((v.shape[1] for v in self.embeddings.values()), None)

    def validate(self, embed_dim: int | None = None, taxonomy: Taxonomy | None = None) -> None:
        """Raise :class:`BundleError` unless every array has N rows and the expected width."""
        n = len(self.ids)
        shapes = {"ranks": (self.ranks, (n, len(LEVELS))), "labels": (self.labels, (n, len(LEVELS))),
                  "barcodes": (self.barcodes, (n,)), "has_image": (self.has_image, (n,)),
                  "has_dna": (self.has_dna, (n,))}
        for name, (arr, shape) in shapes.items():
            if arr.shape != shape:
                raise BundleError(f"reference {name} has shape {arr.shape}, expected {shape} ({n} ids)")
        unknown = sorted(set(self.embeddings) - set(SPACES))
        if unknown:
            raise BundleError(f"reference has unknown embedding spaces {unknown}; known: {list(SPACES)}")
        dims = {space: v.shape[1] if v.ndim == 2 else None for space, v in self.embeddings.items()}
        for space, v in self.embeddings.items():
            if v.ndim != 2 or v.shape[0] != n:
                raise BundleError(f"reference embeddings/{space} has shape {v.shape}, expected ({n}, d)")
        if len(set(dims.values())) > 1:
            raise BundleError(f"reference embedding spaces have different dimensions: {dims}")
        if embed_dim is not None and dims and next(iter(dims.values())) != embed_dim:
            raise BundleError(f"reference embeddings have dimension {next(iter(dims.values()))}, "
                              f"but the model embeds into {embed_dim}")
        for space, v in self.layouts.items():
            if space not in self.embeddings:
                raise BundleError(f"reference has a layout for {space!r} but no {space!r} embeddings")
            if v.shape != (n, 2):
                raise BundleError(f"reference umap/{space} has shape {v.shape}, expected ({n}, 2)")
        self._validate_disks(n, dims)
        if taxonomy is not None and n:
            sizes = np.array([taxonomy.num_classes(lvl) for lvl in LEVELS])
            bad = (self.labels < UNKNOWN_ID) | (self.labels >= sizes)
            if bad.any():
                level = LEVELS[int(np.argwhere(bad)[0, 1])]
                raise BundleError(f"reference labels hold {level} ids outside the bundle taxonomy "
                                  f"({int(bad.sum())} bad entries)")

    def _validate_disks(self, n: int, dims: dict[str, int | None]) -> None:
        if set(self.poincare) != set(self.poincare_axes):
            raise BundleError(f"reference has Poincare disks of {sorted(self.poincare)} but axes of "
                              f"{sorted(self.poincare_axes)}: each disk needs its axes")
        for space, v in self.poincare.items():
            if space not in self.embeddings:
                raise BundleError(f"reference has a Poincare disk for {space!r} but no {space!r} embeddings")
            if v.shape != (n, 2):
                raise BundleError(f"reference poincare/{space} has shape {v.shape}, expected ({n}, 2)")
            if self.poincare_axes[space].shape != (2, dims[space]):
                raise BundleError(f"reference poincare_axes/{space} has shape {self.poincare_axes[space].shape}, "
                                  f"expected (2, {dims[space]})")
            if (np.linalg.norm(v, axis=1) >= 1).any():
                raise BundleError(f"reference poincare/{space} has points on or outside the unit disk")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], taxonomy: Taxonomy | None = None) -> Reference:
        """Build from a mapping of arrays.

        Required: ``ids``, ``ranks`` ([N, 4], None or ``""`` = unknown) and the embeddings, either as an
        ``embeddings`` dict or as top-level ``image`` / ``dna`` / ``avg`` / ``fused`` arrays (the output of
        ``train.embed.embed_frame`` works; its ``gate`` is ignored). Optional: ``labels`` (computed from the
        ranks with ``taxonomy`` when absent), ``barcodes``, ``has_image`` / ``has_dna`` (default: all true for
        the spaces present), ``layouts`` (or ``umap``), ``poincare`` with ``poincare_axes``.
        """
        missing = [k for k in ("ids", "ranks") if k not in data]
        if missing:
            raise BundleError(f"reference data lacks {missing}")
        n = len(data["ids"])
        embeddings = dict(data.get("embeddings") or {s: data[s] for s in SPACES if s in data})
        ranks = _str_array(data["ranks"], "ranks").reshape(-1, len(LEVELS))
        labels = data.get("labels")
        if labels is None:
            if taxonomy is None:
                raise BundleError("reference data has no labels: pass the taxonomy to compute them from the ranks")
            labels = taxonomy.encode([[r or None for r in row] for row in ranks.tolist()])
        has_image = data.get("has_image", np.full(n, "image" in embeddings))
        has_dna = data.get("has_dna", np.full(n, "dna" in embeddings))
        barcodes = data.get("barcodes", np.full(n, "", dtype=object))
        layouts = dict(data.get("layouts") or data.get("umap") or {})
        return cls(ids=data["ids"], ranks=ranks, labels=labels, barcodes=barcodes, embeddings=embeddings,
                   has_image=has_image, has_dna=has_dna, layouts=layouts, poincare=dict(data.get("poincare") or {}),
                   poincare_axes=dict(data.get("poincare_axes") or {}))

    def save(self, path: str | os.PathLike, dtype: Any = None) -> None:
        """Write ``reference.h5`` (strings as UTF-8, arrays as int64 / bool, layouts as float32).

        Embeddings are float16 for a bank of :data:`~hirviz.index.FLAT_MAX_ROWS` rows or more and float32 below
        (``dtype`` overrides), written chunk by chunk into contiguous datasets so that :meth:`load` can map them.
        """
        if dtype is None:
            dtype = np.float16 if len(self) >= FLAT_MAX_ROWS else np.float32
        text = h5py.string_dtype("utf-8")
        with h5py.File(path, "w") as h5:
            h5.attrs["format_version"] = FORMAT_VERSION
            h5.create_dataset("ids", data=self.ids.astype(object), dtype=text)
            h5.create_dataset("ranks", data=self.ranks.astype(object), dtype=text)
            h5.create_dataset("labels", data=self.labels)
            h5.create_dataset("barcodes", data=self.barcodes.astype(object), dtype=text)
            h5.create_dataset("has_image", data=self.has_image)
            h5.create_dataset("has_dna", data=self.has_dna)
            for space, values in self.embeddings.items():
                ds = h5.create_dataset(f"embeddings/{space}", shape=values.shape, dtype=dtype)
                for start in range(0, len(values), _CHUNK_ROWS):
                    ds[start:start + _CHUNK_ROWS] = np.asarray(values[start:start + _CHUNK_ROWS], dtype=dtype)
            for space, values in self.layouts.items():
                h5.create_dataset(f"umap/{space}", data=values)
            for space, values in self.poincare.items():
                h5.create_dataset(f"poincare/{space}", data=values)
                h5.create_dataset(f"poincare_axes/{space}", data=self.poincare_axes[space])

    @classmethod
    def load(cls, path: str | os.PathLike) -> Reference:
        """Read a ``reference.h5`` written by :meth:`save`."""
        with open_h5(path) as h5:
            check_version(h5.attrs.get("format_version"), f"{path}")
            try:
                return cls(
                    ids=h5["ids"].asstr()[()],
                    ranks=h5["ranks"].asstr()[()],
                    labels=h5["labels"][()],
                    barcodes=h5["barcodes"].asstr()[()],
                    embeddings={k: _read_embeddings(v, path) for k, v in h5.get("embeddings", {}).items()},
                    has_image=h5["has_image"][()],
                    has_dna=h5["has_dna"][()],
                    layouts={k: _read_layout(v, path) for k, v in h5.get("umap", {}).items()},
                    indexes=_index_manifest(Path(path).parent),
                    folder=Path(path).parent,
                    poincare={k: v[()] for k, v in h5.get("poincare", {}).items()},
                    poincare_axes={k: v[()] for k, v in h5.get("poincare_axes", {}).items()},
                )
            except KeyError as err:
                raise BundleError(f"{path} lacks a dataset: {one_line(err)}") from err


def _embedding_array(values: Any) -> np.ndarray:
    """float16 embeddings (a large bank, possibly memory-mapped) as they are; anything else as float32."""
    if isinstance(values, np.ndarray) and values.dtype == np.float16:
        return values
    return np.ascontiguousarray(values, dtype=np.float32)


def _read_embeddings(ds: h5py.Dataset, path: str | os.PathLike) -> np.ndarray:
    """A float16 dataset memory-mapped from the file (contiguous, uncompressed, as :meth:`Reference.save` writes
    it), else read into memory: float32 banks (every bundle before float16 storage) load as they always did."""
    return _map_or_read(ds, path, np.float16)


def _read_layout(ds: h5py.Dataset, path: str | os.PathLike) -> np.ndarray:
    """A large bank's float32 ``[N, 2]`` layout memory-mapped like its embeddings (8.8 MB per space at 1.1 M rows:
    the map's density layer reads it once); a small one read into memory as before."""
    return _map_or_read(ds, path, np.float32) if ds.shape[0] >= FLAT_MAX_ROWS else ds[()]


def _map_or_read(ds: h5py.Dataset, path: str | os.PathLike, dtype: Any) -> np.ndarray:
    offset = ds.id.get_offset() if ds.dtype == dtype and ds.chunks is None else None
    if offset is None:
        return ds[()]
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=ds.shape)


def _index_manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """The saved indexes that ``config.json`` (beside ``reference.h5``) records under ``reference_index``."""
    config = folder / CONFIG_FILE
    if not config.is_file():
        return {}
    manifest = read_json(config).get("reference_index") or {}
    if not isinstance(manifest, dict) or not all(isinstance(v, dict) and "file" in v for v in manifest.values()):
        raise BundleError(f"{config}: reference_index must map spaces to {{'file': ..., ...}}")
    return manifest


def check_index_files(folder: Path, manifest: Mapping[str, Mapping[str, Any]]) -> None:
    """Cheap checks of saved index files: present, and of the recorded size (a truncated copy fails here)."""
    for space, entry in manifest.items():
        path = folder / str(entry["file"])
        if not path.is_file():
            raise BundleError(f"{path} is missing (the {space!r} index that config.json records)")
        size = entry.get("bytes")
        if size is not None and path.stat().st_size != int(size):
            raise BundleError(f"{path} is truncated or damaged: {path.stat().st_size} bytes, config.json records "
                              f"{int(size)}")


def _str_array(values: Any, name: str) -> np.ndarray:
    """Strings as a numpy unicode array, with None / NaN as ``""``."""
    arr = np.asarray(values, dtype=object)
    if arr.size == 0:
        return np.zeros(arr.shape, dtype="<U1")
    as_text = np.frompyfunc(lambda v: "" if v is None or (isinstance(v, float) and v != v) else str(v), 1, 1)
    return as_text(arr).astype(str)


@contextmanager
def open_h5(path: str | os.PathLike) -> Iterator[h5py.File]:
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise BundleError(f"cannot read {path}: {one_line(err)}") from err
    with h5:
        yield h5


def check_reference_header(path: Path, embed_dim: int) -> None:
    """Cheap agreement checks of ``reference.h5`` (shapes only, no data read)."""
    with open_h5(path) as h5:
        check_version(h5.attrs.get("format_version"), str(path))
        if "ids" not in h5:
            raise BundleError(f"{path} lacks the 'ids' dataset")
        n = h5["ids"].shape[0]
        for name in ("ranks", "labels", "barcodes", "has_image", "has_dna"):
            if name not in h5 or h5[name].shape[:1] != (n,):
                got = h5[name].shape if name in h5 else "missing"
                raise BundleError(f"{path}: {name} is {got}, expected {n} rows like ids")
        for space, ds in h5.get("embeddings", {}).items():
            if ds.shape != (n, embed_dim):
                raise BundleError(f"{path}: embeddings/{space} has shape {ds.shape}, expected ({n}, {embed_dim})")
        for space, ds in h5.get("umap", {}).items():
            if ds.shape != (n, 2):
                raise BundleError(f"{path}: umap/{space} has shape {ds.shape}, expected ({n}, 2)")
        for space, ds in h5.get("poincare", {}).items():
            if ds.shape != (n, 2):
                raise BundleError(f"{path}: poincare/{space} has shape {ds.shape}, expected ({n}, 2)")
    check_index_files(path.parent, _index_manifest(path.parent))
