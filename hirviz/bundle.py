"""Model bundles: everything the app needs to use a trained model, in one directory or hub repo.

A bundle holds (format version :data:`FORMAT_VERSION`):

==========================  =====================================================================================
``config.json``             ``format_version``, ``name``, ``objective``, ``model`` (:class:`~hirviz.model.ModelConfig`
                            as a dict; a BPE DNA tokenizer points at the copy inside the bundle), ``training`` (the
                            run's config) and ``provenance``
``model.safetensors``       the :class:`~hirviz.model.HirvizModel` state dict
``taxonomy.json``           :meth:`Taxonomy.to_dict` plus ``candidates`` (the distinct taxonomy strings of the
                            training set) and ``candidate_ranks`` ([order, family, genus, species], null = unknown)
``text_embeddings.npy``     float32 ``[C, d]`` L2-normalised embeddings of the candidates, row-aligned
``reference.h5``            the reference specimens: ``ids``, ``ranks``, ``labels``, ``barcodes``,
                            ``embeddings/<space>``, ``has_image``, ``has_dna``, ``umap/<space>``
``eval.json`` (optional)    the evaluation results (``python -m train eval``)
``README.md``               the model card
==========================  =====================================================================================

:func:`load_bundle` opens a local directory or a Hugging Face hub repo id. Opening reads only the small files
and checks that they agree; the model is built on the first use of :attr:`Bundle.model` and the reference bank
is read on the first use of :attr:`Bundle.reference`. Nothing here imports the trainer.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from hirviz.queries import QUERIES
from hirviz.taxonomy import LEVELS, UNKNOWN_ID, Taxonomy

if TYPE_CHECKING:  # heavy imports (torch, open_clip) only when the model is needed
    from hirviz.model import HirvizModel, ModelConfig
    from hirviz.predict import Predictor

__all__ = [
    "FORMAT_VERSION",
    "SPACES",
    "LAYOUT_SPACES",
    "Bundle",
    "BundleError",
    "Reference",
    "load_bundle",
    "save_bundle",
    "eval_markdown",
    "with_eval_section",
]

FORMAT_VERSION = 1
SPACES: tuple[str, ...] = QUERIES  # the reference bank has one embedding space per query
LAYOUT_SPACES: tuple[str, ...] = ("image", "dna", "fused")

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TAXONOMY_FILE = "taxonomy.json"
TEXT_EMBEDDINGS_FILE = "text_embeddings.npy"
REFERENCE_FILE = "reference.h5"
EVAL_FILE = "eval.json"
CARD_FILE = "README.md"
DNA_TOKENIZER_FILE = "dna_tokenizer.json"
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, TAXONOMY_FILE, TEXT_EMBEDDINGS_FILE, REFERENCE_FILE)

# The model card's evaluation section sits between these markers so that it can be rewritten in place.
EVAL_START = "<!-- hirviz:eval:start -->"
EVAL_END = "<!-- hirviz:eval:end -->"

_NORM_TOLERANCE = 1e-3
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
logger = logging.getLogger(__name__)


class BundleError(ValueError):
    """A bundle is missing, unreadable, of an unknown format version, or its files disagree (one-line message)."""


# ----------------------------------------------------------------------------------------------------------------
# The reference bank


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
        layouts: space -> float32 ``[N, 2]`` precomputed UMAP positions (NaN for rows left out of a space).
    """

    ids: np.ndarray
    ranks: np.ndarray
    labels: np.ndarray
    barcodes: np.ndarray
    embeddings: dict[str, np.ndarray]
    has_image: np.ndarray
    has_dna: np.ndarray
    layouts: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.ids = _str_array(self.ids, "ids")
        self.ranks = _str_array(self.ranks, "ranks").reshape(-1, len(LEVELS))
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1, len(LEVELS))
        self.barcodes = _str_array(self.barcodes, "barcodes")
        self.embeddings = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.embeddings.items()}
        self.has_image = np.asarray(self.has_image, dtype=bool)
        self.has_dna = np.asarray(self.has_dna, dtype=bool)
        self.layouts = {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in self.layouts.items()}
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
        if taxonomy is not None and n:
            sizes = np.array([taxonomy.num_classes(lvl) for lvl in LEVELS])
            bad = (self.labels < UNKNOWN_ID) | (self.labels >= sizes)
            if bad.any():
                level = LEVELS[int(np.argwhere(bad)[0, 1])]
                raise BundleError(f"reference labels hold {level} ids outside the bundle taxonomy "
                                  f"({int(bad.sum())} bad entries)")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], taxonomy: Taxonomy | None = None) -> Reference:
        """Build from a mapping of arrays.

        Required: ``ids``, ``ranks`` ([N, 4], None or ``""`` = unknown) and the embeddings, either as an
        ``embeddings`` dict or as top-level ``image`` / ``dna`` / ``avg`` / ``fused`` arrays (the output of
        ``train.embed.embed_frame`` works; its ``gate`` is ignored). Optional: ``labels`` (computed from the
        ranks with ``taxonomy`` when absent), ``barcodes``, ``has_image`` / ``has_dna`` (default: all true for
        the spaces present), ``layouts`` (or ``umap``).
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
                   has_image=has_image, has_dna=has_dna, layouts=layouts)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``reference.h5`` (strings as UTF-8, arrays as float32 / int64 / bool)."""
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
                h5.create_dataset(f"embeddings/{space}", data=values)
            for space, values in self.layouts.items():
                h5.create_dataset(f"umap/{space}", data=values)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Reference:
        """Read a ``reference.h5`` written by :meth:`save`."""
        with _open_h5(path) as h5:
            _check_version(h5.attrs.get("format_version"), f"{path}")
            try:
                return cls(
                    ids=h5["ids"].asstr()[()],
                    ranks=h5["ranks"].asstr()[()],
                    labels=h5["labels"][()],
                    barcodes=h5["barcodes"].asstr()[()],
                    embeddings={k: v[()] for k, v in h5.get("embeddings", {}).items()},
                    has_image=h5["has_image"][()],
                    has_dna=h5["has_dna"][()],
                    layouts={k: v[()] for k, v in h5.get("umap", {}).items()},
                )
            except KeyError as err:
                raise BundleError(f"{path} lacks a dataset: {_one_line(err)}") from err


def _str_array(values: Any, name: str) -> np.ndarray:
    """Strings as a numpy unicode array, with None / NaN as ``""``."""
    arr = np.asarray(values, dtype=object)
    if arr.size == 0:
        return np.zeros(arr.shape, dtype="<U1")
    as_text = np.frompyfunc(lambda v: "" if v is None or (isinstance(v, float) and v != v) else str(v), 1, 1)
    return as_text(arr).astype(str)


@contextmanager
def _open_h5(path: str | os.PathLike) -> Iterator[h5py.File]:
    try:
        h5 = h5py.File(path, "r")
    except OSError as err:
        raise BundleError(f"cannot read {path}: {_one_line(err)}") from err
    with h5:
        yield h5


def _check_reference_header(path: Path, embed_dim: int) -> None:
    """Cheap agreement checks of ``reference.h5`` (shapes only, no data read)."""
    with _open_h5(path) as h5:
        _check_version(h5.attrs.get("format_version"), str(path))
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


# ----------------------------------------------------------------------------------------------------------------
# The bundle


class Bundle:
    """An opened bundle. Build one with :func:`load_bundle`.

    Attributes (read on opening): ``path``, ``config`` (the whole ``config.json``), ``name``, ``objective``,
    ``training``, ``provenance``, ``taxonomy``, ``candidates``, ``candidate_ranks`` (4-tuples, None = unknown),
    ``text_embeddings`` (float32 ``[C, d]``), ``eval_results`` (dict or None). Lazy: :attr:`model_config`,
    :attr:`model` (built and loaded on first use, in eval mode on the CPU), :attr:`reference`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise BundleError(f"no bundle directory at {self.path}")
        missing = [f for f in REQUIRED_FILES if not (self.path / f).is_file()]
        if missing:
            raise BundleError(f"{self.path} is not a complete hirviz bundle: missing {', '.join(missing)}")
        self.config: dict[str, Any] = _read_json(self.path / CONFIG_FILE)
        _check_version(self.config.get("format_version"), str(self.path / CONFIG_FILE))
        for key in ("name", "model"):
            if key not in self.config:
                raise BundleError(f"{self.path / CONFIG_FILE} lacks {key!r}")
        self.name: str = str(self.config["name"])
        self.objective: str = str(self.config.get("objective", ""))
        self.training: dict[str, Any] = dict(self.config.get("training") or {})
        self.provenance: dict[str, Any] = dict(self.config.get("provenance") or {})
        if not isinstance(self.config["model"], dict) or "embed_dim" not in self.config["model"]:
            raise BundleError(f"{self.path / CONFIG_FILE}: the model config lacks embed_dim")
        self.embed_dim = int(self.config["model"]["embed_dim"])

        tax = _read_json(self.path / TAXONOMY_FILE)
        try:
            self.taxonomy = Taxonomy.from_dict(tax)
        except (KeyError, ValueError, TypeError) as err:
            raise BundleError(f"{self.path / TAXONOMY_FILE} is not a taxonomy: {_one_line(err)}") from err
        self.candidates: list[str] = [str(c) for c in tax.get("candidates", [])]
        self.candidate_ranks: list[tuple[str | None, ...]] = [tuple(r) for r in tax.get("candidate_ranks", [])]
        try:
            self.text_embeddings: np.ndarray = np.load(self.path / TEXT_EMBEDDINGS_FILE, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise BundleError(f"cannot read {self.path / TEXT_EMBEDDINGS_FILE}: {_one_line(err)}") from err
        _check_candidates(self.candidates, self.candidate_ranks, self.text_embeddings, self.embed_dim,
                          where=str(self.path))
        _check_reference_header(self.path / REFERENCE_FILE, self.embed_dim)
        eval_path = self.path / EVAL_FILE
        self.eval_results: dict[str, Any] | None = _read_json(eval_path) if eval_path.is_file() else None

        self._model: HirvizModel | None = None
        self._reference: Reference | None = None
        self._lock = threading.Lock()  # the app may touch the lazy attributes from several threads at once

    @property
    def fusion_trained(self) -> bool:
        """Whether training taught the fusion gate (CLIBD-HiR-Fuse with a non-zero fusion weight).

        Other objectives leave the gate at its random initialisation: their ``fused`` query is not meaningful.
        """
        loss = self.training.get("loss") or {}
        objective = loss.get("objective") or self.objective
        return objective == "clibd-hir-fuse" and float(loss.get("fusion_weight", 1.0)) > 0

    def __repr__(self) -> str:
        return (f"Bundle({self.name!r}, path={str(self.path)!r}, objective={self.objective!r}, "
                f"candidates={len(self.candidates)}, d={self.embed_dim})")

    @property
    def model_config(self) -> ModelConfig:
        """The :class:`~hirviz.model.ModelConfig` of the bundled model."""
        from hirviz.model import ModelConfig

        try:
            return ModelConfig.from_dict(self.config["model"])
        except (TypeError, ValueError) as err:
            raise BundleError(f"{self.path / CONFIG_FILE}: bad model config: {_one_line(err)}") from err

    @property
    def model(self) -> HirvizModel:
        """The model with the bundle's weights, in eval mode on the CPU (built on first use)."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._build_model()
        return self._model

    def _build_model(self) -> HirvizModel:
        from safetensors.torch import load_model

        from hirviz.model import build_model

        with _quiet_random_init():
            model = build_model(self.model_config, base_dir=self.path)
        weights = self.path / WEIGHTS_FILE
        try:
            # load_model (not load_file + load_state_dict) restores tensors saved once for several names.
            missing, unexpected = load_model(model, str(weights), strict=False, device="cpu")
        except RuntimeError as err:  # shape mismatches
            raise BundleError(f"{weights} does not fit the model config: {_one_line(err)}") from err
        if missing or unexpected:
            raise BundleError(f"{weights} does not match the model config: {len(missing)} missing tensors "
                              f"(e.g. {sorted(missing)[:3]}), {len(unexpected)} unexpected "
                              f"(e.g. {sorted(unexpected)[:3]})")
        model.eval()
        logger.info("built the model of bundle %s", self.name)
        return model

    @property
    def reference(self) -> Reference:
        """The reference bank (read from ``reference.h5`` on first use)."""
        if self._reference is None:
            with self._lock:
                if self._reference is None:
                    ref = Reference.load(self.path / REFERENCE_FILE)
                    ref.validate(embed_dim=self.embed_dim, taxonomy=self.taxonomy)
                    self._reference = ref
        return self._reference

    @property
    def card(self) -> str:
        """The model card text (``""`` when the bundle has none)."""
        path = self.path / CARD_FILE
        return path.read_text(encoding="utf-8") if path.is_file() else ""

    def predictor(self, **kwargs: Any) -> Predictor:
        """A :class:`hirviz.predict.Predictor` over this bundle (keyword arguments are passed on)."""
        from hirviz.predict import Predictor

        return Predictor(self, **kwargs)

    def update_eval(self, results: Mapping[str, Any]) -> None:
        """Attach evaluation results: write ``eval.json`` and rewrite the model card's accuracy tables."""
        results = json.loads(json.dumps(results))  # a plain JSON copy; fails early on non-serialisable values
        _atomic_write_text(self.path / EVAL_FILE, json.dumps(results, indent=1) + "\n")
        _atomic_write_text(self.path / CARD_FILE, with_eval_section(self.card, results))
        self.eval_results = results


def load_bundle(path_or_repo_id: str | os.PathLike, revision: str | None = None) -> Bundle:
    """Open a bundle from a local directory or a Hugging Face hub repo id (``owner/name``).

    A local directory wins over a repo id of the same spelling. A hub repo is taken from the local cache when
    it is there and downloaded otherwise; without network (or with ``HF_HUB_OFFLINE=1``) an uncached repo
    fails at once with a one-line :class:`BundleError`.
    """
    text = os.fspath(path_or_repo_id)
    local = Path(text).expanduser()
    if local.is_dir():
        return Bundle(local)
    if local.exists():
        raise BundleError(f"{text} is a file; a bundle is a directory (or a hub repo id such as owner/name)")
    if not _REPO_ID.match(text) or text.startswith((".", "~")):
        raise BundleError(f"no bundle directory at {text} (and it is not a hub repo id such as owner/name)")
    return Bundle(_download(text, revision))


def _download(repo_id: str, revision: str | None) -> Path:
    """The local snapshot of a hub repo: from the cache, else downloaded when the hub is reachable."""
    from huggingface_hub import snapshot_download

    where = f"{repo_id!r}" + (f" (revision {revision})" if revision else "")
    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True))
    except Exception:  # not (fully) cached: try the hub below
        pass
    from hirviz.model import _hub_endpoint, _unreachable_reason  # the same fast probe as for backbones

    reason = _unreachable_reason(_hub_endpoint())
    if reason is not None:
        raise BundleError(f"bundle {where} is not a local directory nor in the Hugging Face cache, and {reason}; "
                          "download it once with network access or pass a local bundle directory")
    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except Exception as err:  # any hub failure means the same here: no bundle
        raise BundleError(f"cannot download bundle {where}: {_one_line(err)}") from err


# ----------------------------------------------------------------------------------------------------------------
# Writing


def save_bundle(
    out_dir: str | os.PathLike,
    *,
    name: str,
    model: HirvizModel,
    taxonomy: Taxonomy,
    candidates: Sequence[str],
    candidate_ranks: Sequence[Sequence[str | None]],
    text_embeddings: np.ndarray,
    reference: Reference | Mapping[str, Any],
    training_config: Mapping[str, Any],
    objective: str,
    provenance: Mapping[str, Any],
    card: str,
    eval_results: Mapping[str, Any] | None = None,
) -> Path:
    """Write a bundle directory and return its path.

    Everything is written into a temporary directory beside ``out_dir`` and renamed into place at the end, so
    an interrupted export never leaves a half-written bundle. An existing bundle at ``out_dir`` is replaced;
    any other non-empty directory there is refused. A BPE DNA tokenizer's JSON is copied into the bundle and
    the saved model config points at the copy, so the bundle needs no file outside itself.
    """
    from safetensors.torch import save_model

    out = Path(out_dir)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / CONFIG_FILE).is_file())):
        raise BundleError(f"{out} exists and is not a bundle; refusing to overwrite it")
    if not name:
        raise BundleError("a bundle needs a name")
    text_embeddings = np.ascontiguousarray(text_embeddings, dtype=np.float32)
    candidate_ranks = [tuple(None if r in (None, "") else str(r) for r in row) for row in candidate_ranks]
    embed_dim = int(model.embed_dim)
    _check_candidates(list(candidates), candidate_ranks, text_embeddings, embed_dim, where="save_bundle")
    if not isinstance(reference, Reference):
        reference = Reference.from_dict(reference, taxonomy=taxonomy)
    reference.validate(embed_dim=embed_dim, taxonomy=taxonomy)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        model_config = model.config.to_dict()
        tokenizer_file = getattr(model.dna_tokenizer, "tokenizer_file", None)
        if tokenizer_file is not None:
            shutil.copyfile(tokenizer_file, tmp / DNA_TOKENIZER_FILE)
            model_config["dna_tokenizer"] = {**model.dna_tokenizer.to_config(), "tokenizer_file": DNA_TOKENIZER_FILE}
        config = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "objective": objective,
            "model": model_config,
            "training": dict(training_config),
            "provenance": dict(provenance),
        }
        _write_json(tmp / CONFIG_FILE, config)
        # save_model (not save_file) copes with tensors that share memory, such as tied embeddings.
        save_model(model, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "hirviz_format_version": "1"})
        _write_json(tmp / TAXONOMY_FILE, {**taxonomy.to_dict(), "candidates": list(candidates),
                                          "candidate_ranks": [list(r) for r in candidate_ranks]})
        np.save(tmp / TEXT_EMBEDDINGS_FILE, text_embeddings, allow_pickle=False)
        reference.save(tmp / REFERENCE_FILE)
        if eval_results is not None:
            _write_json(tmp / EVAL_FILE, json.loads(json.dumps(eval_results)))
        (tmp / CARD_FILE).write_text(with_eval_section(card, eval_results), encoding="utf-8")
        _default_permissions(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote bundle %s to %s", name, out)
    return out


def _default_permissions(folder: Path) -> None:
    """Give a bundle the permissions of ordinary new files: a temporary directory is private (0700)."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.iterdir():
        path.chmod(0o666 & ~umask)


def _replace_dir(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is moved aside first and removed after."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# The model card's evaluation section


def eval_markdown(results: Mapping[str, Any] | None) -> str:
    """Markdown accuracy tables of evaluation results (one table per condition, top-1 / top-5 in percent).

    ``results`` follows the evaluation schema ``{condition: {query: {level: {"top1", "top5"}}}}``; the extra
    keys of ``python -m train eval`` (``_meta``, ``sweep``, ``retrieval``) are summarised, not tabulated.
    """
    if not results:
        return "Not evaluated yet."
    blocks = []
    meta = results.get("_meta")
    if isinstance(meta, Mapping) and meta.get("metadata"):
        subset = f"{meta['subset']} rows of " if meta.get("subset") else ""
        blocks.append(f"Measured on the {subset}`{Path(str(meta['metadata'])).name}`.")
    for condition, queries in results.items():
        if condition.startswith("_") or condition in _EXTRA_RESULTS or not _is_table(queries):
            continue
        levels = list(dict.fromkeys(lvl for per_level in queries.values() for lvl in per_level))
        lines = [f"**{condition}** (top-1 / top-5 accuracy, %)", "",
                 "| query | " + " | ".join(levels) + " |", "|---|" + "---|" * len(levels)]
        for query, per_level in queries.items():
            cells = [_cell(per_level.get(lvl)) for lvl in levels]
            lines.append(f"| {query} | " + " | ".join(cells) + " |")
        blocks.append("\n".join(lines))
    extras = [f"`{key}` ({what})" for key, what in _EXTRA_RESULTS.items() if key in results]
    if extras:
        blocks.append("Also in `eval.json`: " + ", ".join(extras) + ".")
    return "\n\n".join(blocks) if blocks else "Not evaluated yet."


_EXTRA_RESULTS = {"sweep": "accuracy against noise strength", "retrieval": "CLIBD's retrieval protocol"}


def with_eval_section(card: str, results: Mapping[str, Any] | None) -> str:
    """``card`` with its evaluation section (between the markers) set to :func:`eval_markdown` of ``results``.

    A card without the markers gets an "Evaluation" section appended.
    """
    section = f"{EVAL_START}\n{eval_markdown(results)}\n{EVAL_END}"
    start, end = card.find(EVAL_START), card.find(EVAL_END)
    if 0 <= start < end:
        return card[:start] + section + card[end + len(EVAL_END):]
    return card.rstrip("\n") + ("\n\n" if card.strip() else "") + "## Evaluation\n\n" + section + "\n"


def _is_table(queries: Any) -> bool:
    return isinstance(queries, Mapping) and bool(queries) and all(
        isinstance(per_level, Mapping) and all(isinstance(v, Mapping) for v in per_level.values())
        for per_level in queries.values())


def _cell(scores: Mapping[str, Any] | None) -> str:
    if not scores:
        return "-"
    parts = [f"{float(scores[k]):.1f}" if isinstance(scores.get(k), (int, float)) else "-" for k in ("top1", "top5")]
    return " / ".join(parts)


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def _check_version(version: Any, where: str) -> None:
    if not isinstance(version, (int, np.integer)) or isinstance(version, bool):
        raise BundleError(f"{where} has no integer format_version: not a hirviz bundle")
    if version > FORMAT_VERSION:
        raise BundleError(f"{where} has format_version {int(version)}, newer than this hirviz understands "
                          f"({FORMAT_VERSION}); upgrade hirviz")
    if version < 1:
        raise BundleError(f"{where} has an invalid format_version {int(version)}")


def _check_candidates(candidates: list[str], ranks: Sequence[Sequence[Any]], embeddings: np.ndarray,
                      embed_dim: int, where: str) -> None:
    if len(ranks) != len(candidates):
        raise BundleError(f"{where}: {len(candidates)} candidates but {len(ranks)} candidate_ranks")
    bad = [i for i, r in enumerate(ranks) if len(r) != len(LEVELS)]
    if bad:
        raise BundleError(f"{where}: candidate_ranks[{bad[0]}] has {len(ranks[bad[0]])} ranks, expected {len(LEVELS)}")
    if embeddings.ndim != 2 or embeddings.shape != (len(candidates), embed_dim):
        raise BundleError(f"{where}: text embeddings have shape {embeddings.shape}, expected "
                          f"({len(candidates)}, {embed_dim}) (one row per candidate, model dimension)")
    if embeddings.dtype != np.float32:
        raise BundleError(f"{where}: text embeddings are {embeddings.dtype}, expected float32")
    norms = np.linalg.norm(embeddings, axis=1)
    if len(norms) and np.abs(norms - 1).max() > _NORM_TOLERANCE:
        raise BundleError(f"{where}: text embeddings are not L2-normalised "
                          f"(norms {norms.min():.3f}..{norms.max():.3f})")


@contextmanager
def _quiet_random_init() -> Iterator[None]:
    """Hide open_clip's "initialized randomly" warning: a bundle's weights are loaded right after."""

    def keep(record: logging.LogRecord) -> bool:
        return "initialized randomly" not in record.getMessage()

    root = logging.getLogger()  # open_clip logs through the root logger
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BundleError(f"cannot read {path}: {_one_line(err)}") from err
    if not isinstance(data, dict):
        raise BundleError(f"{path} does not hold a JSON object")
    return data


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _one_line(err: BaseException | str) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:297] + "..."
