"""The bundle format: its version, file names and the checks every reader and writer of a bundle shares."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hirviz.hub import one_line
from hirviz.queries import QUERIES
from hirviz.taxonomy import LEVELS

__all__ = ["FORMAT_VERSION", "SPACES", "LAYOUT_SPACES", "BundleError", "check_version", "check_candidates",
           "read_json", "write_json", "atomic_write_text", "one_line", "fusion_trained_flag"]

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
FUSION_TRAINED_KEY = "fusion_trained"  # config.json: whether training taught the fusion gate
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE, TAXONOMY_FILE, TEXT_EMBEDDINGS_FILE, REFERENCE_FILE)

_NORM_TOLERANCE = 1e-3


class BundleError(ValueError):
    """A bundle is missing, unreadable, of an unknown format version, or its files disagree (one-line message)."""


def check_version(version: Any, where: str) -> None:
    """Raise :class:`BundleError` unless ``version`` is a format version this hirviz reads."""
    if not isinstance(version, (int, np.integer)) or isinstance(version, bool):
        raise BundleError(f"{where} has no integer format_version: not a hirviz bundle")
    if version > FORMAT_VERSION:
        raise BundleError(f"{where} has format_version {int(version)}, newer than this hirviz understands "
                          f"({FORMAT_VERSION}); upgrade hirviz")
    if version < 1:
        raise BundleError(f"{where} has an invalid format_version {int(version)}")


def check_candidates(candidates: list[str], ranks: Sequence[Sequence[Any]], embeddings: np.ndarray,
                      embed_dim: int, where: str, unit: bool = True) -> None:
    """Raise :class:`BundleError` unless the candidates, their ranks and their embeddings agree (``unit``: the
    embeddings are L2-normalised, as in the Euclidean geometry; Lorentz space parts are not)."""
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
    if not unit:
        if not np.isfinite(embeddings).all():
            raise BundleError(f"{where}: text embeddings hold NaN or infinite values")
        return
    if len(norms) and np.abs(norms - 1).max() > _NORM_TOLERANCE:
        raise BundleError(f"{where}: text embeddings are not L2-normalised "
                          f"(norms {norms.min():.3f}..{norms.max():.3f})")


def fusion_trained_flag(config: Mapping[str, Any], where: str) -> bool:
    """Whether a bundle's fusion gate was trained, from its ``config.json`` contents.

    The exporter writes the answer as ``fusion_trained``; a bundle written before that key existed is judged by
    its training config (CLIBD-HiR-Fuse with a non-zero fusion weight), the rule the exporter applies.
    """
    if FUSION_TRAINED_KEY in config:
        flag = config[FUSION_TRAINED_KEY]
        if not isinstance(flag, bool):
            raise BundleError(f"{where}: {FUSION_TRAINED_KEY} must be true or false, got {flag!r}")
        return flag
    loss = (config.get("training") or {}).get("loss") or {}
    objective = loss.get("objective") or config.get("objective")
    try:
        weight = float(loss.get("fusion_weight", 1.0))
    except (TypeError, ValueError):
        raise BundleError(f"{where}: training.loss.fusion_weight is not a number") from None
    return objective == "clibd-hir-fuse" and weight > 0


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; :class:`BundleError` if it is unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise BundleError(f"cannot read {path}: {one_line(err)}") from err
    if not isinstance(data, dict):
        raise BundleError(f"{path} does not hold a JSON object")
    return data


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented UTF-8 JSON."""
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def atomic_write_text(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` at once, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
