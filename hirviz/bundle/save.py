"""Writing a bundle: :func:`save_bundle`, atomically (a temporary directory renamed into place)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hirviz.bundle.card import with_eval_section
from hirviz.bundle.files import (
    CARD_FILE,
    CONFIG_FILE,
    DNA_TOKENIZER_FILE,
    EVAL_FILE,
    FORMAT_VERSION,
    FUSION_TRAINED_KEY,
    REFERENCE_FILE,
    TAXONOMY_FILE,
    TEXT_EMBEDDINGS_FILE,
    WEIGHTS_FILE,
    BundleError,
    check_candidates,
    fusion_trained_flag,
    write_json,
)
from hirviz.bundle.reference import Reference
from hirviz.index import FLAT_MAX_ROWS, build_faiss, save_faiss, space_members
from hirviz.taxonomy import Taxonomy

if TYPE_CHECKING:  # torch only when a model is saved
    from hirviz.model import HirvizModel

__all__ = ["save_bundle", "save_reference"]

logger = logging.getLogger(__name__)


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
    fusion_trained: bool | None = None,
    index: str = "auto",
) -> Path:
    """Write a bundle directory and return its path.

    Everything is written into a temporary directory beside ``out_dir`` and renamed into place at the end, so
    an interrupted export never leaves a half-written bundle. An existing bundle at ``out_dir`` is replaced;
    any other non-empty directory there is refused. A BPE DNA tokenizer's JSON is copied into the bundle and
    the saved model config points at the copy, so the bundle needs no file outside itself.

    ``fusion_trained`` says whether training taught the fusion gate (``config.json``'s ``fusion_trained``); when
    None it is judged from ``training_config`` and ``objective`` as for a bundle written without the flag.
    ``index`` chooses the search index of each reference space (see :func:`save_reference`); saved ones are
    recorded in ``config.json`` under ``reference_index``.
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
    check_candidates(list(candidates), candidate_ranks, text_embeddings, embed_dim, where="save_bundle",
                     unit=model.geometry == "euclidean")
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
        curvature = model.curvature()
        manifest = save_reference(tmp, reference, index=index)
        config = {
            "format_version": FORMAT_VERSION,
            "name": name,
            "objective": objective,
            # How embeddings compare (the learnt alphas and logit scale live in the weights, c too: this is a copy).
            "geometry": {"name": model.geometry, "curvature": None if curvature is None else float(curvature.detach())},
            "model": model_config,
            "training": dict(training_config),
            "provenance": dict(provenance),
            **({"reference_index": manifest} if manifest else {}),
        }
        config[FUSION_TRAINED_KEY] = (fusion_trained_flag(config, "save_bundle") if fusion_trained is None
                                      else bool(fusion_trained))
        write_json(tmp / CONFIG_FILE, config)
        # save_model (not save_file) copes with tensors that share memory, such as tied embeddings.
        save_model(model, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "hirviz_format_version": "1"})
        write_json(tmp / TAXONOMY_FILE, {**taxonomy.to_dict(), "candidates": list(candidates),
                                          "candidate_ranks": [list(r) for r in candidate_ranks]})
        np.save(tmp / TEXT_EMBEDDINGS_FILE, text_embeddings, allow_pickle=False)
        if eval_results is not None:
            write_json(tmp / EVAL_FILE, json.loads(json.dumps(eval_results)))
        (tmp / CARD_FILE).write_text(with_eval_section(card, eval_results), encoding="utf-8")
        _default_permissions(tmp)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote bundle %s to %s", name, out)
    return out


def save_reference(folder: str | os.PathLike, reference: Reference, index: str = "auto", seed: int = 0
                   ) -> dict[str, dict[str, Any]]:
    """Write ``reference.h5`` into ``folder`` and, for a large bank, one saved FAISS index per space
    (``index_<space>.faiss``); return the saved indexes' manifest for ``config.json`` (``{}`` when none).

    ``index``: ``"auto"`` saves an approximate index (:data:`hirviz.index.LARGE_INDEX`) for spaces of at least
    :data:`hirviz.index.FLAT_MAX_ROWS` members and nothing for smaller ones (their exact index is built when the
    bank is opened); ``"flat"`` saves nothing; ``"large"`` or a FAISS factory string saves that index for every
    space. Each entry records the file, its size in bytes (a truncated copy is caught on opening), the factory
    string, search parameters and the number of vectors.
    """
    folder = Path(folder)
    reference.save(folder / REFERENCE_FILE)
    manifest: dict[str, dict[str, Any]] = {}
    if index == "flat":
        return manifest
    for space in reference.embeddings:
        rows = space_members(reference, space)
        if index == "auto" and len(rows) < FLAT_MAX_ROWS:
            continue
        started = time.perf_counter()
        built = build_faiss(reference.embeddings[space], rows, kind="large" if index == "auto" else index, seed=seed)
        path = folder / f"index_{space}.faiss"
        save_faiss(built, path)
        manifest[space] = {"file": path.name, "bytes": path.stat().st_size, **built.params,
                           "build_seconds": round(time.perf_counter() - started, 1)}
        logger.info("saved the %s index of the %s space (%d vectors) in %.1f s", built.params["factory"], space,
                    len(rows), time.perf_counter() - started)
    return manifest


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
