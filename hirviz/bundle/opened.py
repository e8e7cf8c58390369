"""Opening a bundle: :class:`Bundle` (small files read and checked at once, the model and the reference on first
use) and :func:`load_bundle` (a local directory, or a hub repo from the cache or downloaded)."""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hirviz.abstain import AbstentionPolicy, load_policy
from hirviz.bundle.card import with_eval_section
from hirviz.bundle.files import (
    CARD_FILE,
    CONFIG_FILE,
    EVAL_FILE,
    REFERENCE_FILE,
    REQUIRED_FILES,
    TAXONOMY_FILE,
    TEXT_EMBEDDINGS_FILE,
    WEIGHTS_FILE,
    BundleError,
    atomic_write_text,
    check_candidates,
    check_version,
    fusion_trained_flag,
    one_line,
    read_json,
)
from hirviz.bundle.reference import Reference, check_reference_header
from hirviz.taxonomy import Taxonomy

if TYPE_CHECKING:  # heavy imports (torch, open_clip) only when the model is needed
    from hirviz.model import HirvizModel, ModelConfig
    from hirviz.predict import Predictor

__all__ = ["Bundle", "load_bundle"]

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
logger = logging.getLogger(__name__)


class Bundle:
    """An opened bundle. Build one with :func:`load_bundle`.

    Attributes (read on opening): ``path``, ``config`` (the whole ``config.json``), ``name``, ``objective``,
    ``training``, ``provenance``, ``taxonomy``, ``candidates``, ``candidate_ranks`` (4-tuples, None = unknown),
    ``text_embeddings`` (float32 ``[C, d]``), ``eval_results`` (dict or None), ``geometry_name`` (``"euclidean"``
    or ``"lorentz"``), ``curvature`` (Lorentz: the trained c, else ``None``) and ``abstention`` (the
    :class:`~hirviz.abstain.AbstentionPolicy` of ``abstention.json``, or None). Lazy: :attr:`model_config`,
    :attr:`model` (built and loaded on first use, in eval mode on the CPU), :attr:`reference`.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.is_dir():
            raise BundleError(f"no bundle directory at {self.path}")
        missing = [f for f in REQUIRED_FILES if not (self.path / f).is_file()]
        if missing:
            raise BundleError(f"{self.path} is not a complete hirviz bundle: missing {', '.join(missing)}")
        self.config: dict[str, Any] = read_json(self.path / CONFIG_FILE)
        check_version(self.config.get("format_version"), str(self.path / CONFIG_FILE))
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
        recorded = self.config.get("geometry") or {}
        self.geometry_name: str = str(recorded.get("name") or self.config["model"].get("geometry", "euclidean"))
        if self.geometry_name not in ("euclidean", "lorentz"):
            raise BundleError(f"{self.path / CONFIG_FILE}: unknown geometry {self.geometry_name!r}")
        self.curvature: float | None = (float(recorded.get("curvature") or self.config["model"].get("curvature", 1.0))
                                        if self.geometry_name == "lorentz" else None)
        self._fusion_trained = fusion_trained_flag(self.config, str(self.path / CONFIG_FILE))

        tax = read_json(self.path / TAXONOMY_FILE)
        try:
            self.taxonomy = Taxonomy.from_dict(tax)
        except (KeyError, ValueError, TypeError) as err:
            raise BundleError(f"{self.path / TAXONOMY_FILE} is not a taxonomy: {one_line(err)}") from err
        self.candidates: list[str] = [str(c) for c in tax.get("candidates", [])]
        self.candidate_ranks: list[tuple[str | None, ...]] = [tuple(r) for r in tax.get("candidate_ranks", [])]
        try:
            self.text_embeddings: np.ndarray = np.load(self.path / TEXT_EMBEDDINGS_FILE, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise BundleError(f"cannot read {self.path / TEXT_EMBEDDINGS_FILE}: {one_line(err)}") from err
        check_candidates(self.candidates, self.candidate_ranks, self.text_embeddings, self.embed_dim,
                          where=str(self.path), unit=self.geometry_name == "euclidean")
        check_reference_header(self.path / REFERENCE_FILE, self.embed_dim)
        eval_path = self.path / EVAL_FILE
        self.eval_results: dict[str, Any] | None = read_json(eval_path) if eval_path.is_file() else None
        try:  # abstention.json is optional: without it the predictor applies the hard input limits only
            self.abstention: AbstentionPolicy | None = load_policy(self.path)
        except ValueError as err:
            raise BundleError(one_line(err)) from err

        self._model: HirvizModel | None = None
        self._reference: Reference | None = None
        self._lock = threading.Lock()  # the app may touch the lazy attributes from several threads at once

    @property
    def fusion_trained(self) -> bool:
        """Whether training taught the fusion gate: the bundle's ``fusion_trained`` flag (written by the exporter).

        A model trained without the fusion loss still has a gate, at its random initialisation: its ``fused``
        query means nothing, so the predictor, the command line, the app and evaluation all leave it out. Bundles
        older than the flag are judged by their training config (CLIBD-HiR-Fuse with a non-zero fusion weight).
        """
        return self._fusion_trained

    def __repr__(self) -> str:
        return (f"Bundle({self.name!r}, path={str(self.path)!r}, objective={self.objective!r}, "
                f"geometry={self.geometry_name!r}, candidates={len(self.candidates)}, d={self.embed_dim})")

    @property
    def model_config(self) -> ModelConfig:
        """The :class:`~hirviz.model_config.ModelConfig` of the bundled model."""
        from hirviz.model_config import ModelConfig

        try:
            return ModelConfig.from_dict(self.config["model"])
        except (TypeError, ValueError) as err:
            raise BundleError(f"{self.path / CONFIG_FILE}: bad model config: {one_line(err)}") from err

    @property
    def model(self) -> HirvizModel:
        """The model with the bundle's weights, in eval mode on the CPU (built on first use)."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._build_model()
        return self._model

    def _build_model(self) -> HirvizModel:
        from safetensors import SafetensorError
        from safetensors.torch import load_model

        from hirviz.model import build_model

        with _quiet_random_init():
            model = build_model(self.model_config, base_dir=self.path)
        weights = self.path / WEIGHTS_FILE
        try:
            # load_model (not load_file + load_state_dict) restores tensors saved once for several names.
            missing, unexpected = load_model(model, str(weights), strict=False, device="cpu")
        except RuntimeError as err:  # shape mismatches
            raise BundleError(f"{weights} does not fit the model config: {one_line(err)}") from err
        except (SafetensorError, OSError) as err:  # a truncated or damaged weights file
            raise BundleError(f"cannot read {weights}: {one_line(err)}") from err
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
        atomic_write_text(self.path / EVAL_FILE, json.dumps(results, indent=1) + "\n")
        atomic_write_text(self.path / CARD_FILE, with_eval_section(self.card, results))
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
    from hirviz.hub import unavailable_reason

    reason = unavailable_reason(repo_id)
    if reason is not None:
        raise BundleError(f"bundle {where} is not a local directory nor in the Hugging Face cache, and {reason}; "
                          "download it once with network access or pass a local bundle directory")
    try:
        return Path(snapshot_download(repo_id, revision=revision))
    except Exception as err:  # any hub failure means the same here: no bundle
        raise BundleError(f"cannot download bundle {where}: {one_line(err)}") from err


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
