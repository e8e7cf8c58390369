"""Running an evaluation: the conditions, the per-condition scores, the noise sweep, and a bundle's evaluation."""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

import hirviz
from hirviz.candidates import CandidateSet
from hirviz.degrade import DnaNoise
from hirviz.geometry import Geometry
from hirviz.model import HirvizModel
from hirviz.queries import QUERIES
from hirviz.taxonomy import LEVELS
from train.data import ImageStore, open_images, specimen_ids
from train.embed import frame_candidates
from train.evaluate.consistency import AGREEMENT_PAIRS, ReferenceCodes, hierarchy_scores
from train.evaluate.embedding import KeyBank, QueryEmbedder
from train.evaluate.metrics import (
    EVAL_LEVELS,
    RETRIEVAL_KS,
    SEEN_DEFINITION,
    TOP_KS,
    _factorize,
    classification_scores,
    label_codes,
    ranked_scores,
    retrieval_scores,
    top_k,
)
from train.evaluate.perlevel import PER_LEVEL_READINGS, LevelCandidates, independent_level_scores

if TYPE_CHECKING:
    from hirviz.bundle import Bundle

logger = logging.getLogger(__name__)

CONDITIONS: tuple[str, ...] = ("clean", "noisy_dna", "noisy_image", "noisy_both")
# The paper blurs with "a k x k normalised averaging kernel" but its k did not survive. 9 on the model's input grid
# is the kernel that makes blur hurt as the paper's does (IT order 98.8 -> 88.8, species 46.6 -> 22.2; criterion:
# species loses >= 40 % of its top-1, order <= 15 %, train/evaluate/blur_criterion.py): in the synthetic study v2
# (5000 specimens at 96 px, hirviz-tiny's 64-px grid, CLIBD trained 555 steps, mean of 3 seeds) 9x9 costs IT species
# 49 % and order 14 %; 7x7 species 39.5 % (short of 40), 5x5 32 %, 11x11 order 16 %. See docs/decisions.md.
DEFAULT_BLUR_KERNEL = 9
SWEEP_DNA_SCALES: tuple[float, ...] = (0, 0.5, 1, 2, 4, 8)
SWEEP_BLUR_KERNELS: tuple[int, ...] = (1, 3, 5, 7, 9, 11)
# Query modalities a condition degrades: (image blurred, DNA noisy).
_CONDITION_NOISE = {"clean": (False, False), "noisy_dna": (False, True),
                    "noisy_image": (True, False), "noisy_both": (True, True)}


def evaluate_model(
    model: HirvizModel,
    frame: pd.DataFrame,
    candidates: CandidateSet,
    images: ImageStore | None = None,
    conditions: Sequence[str] = CONDITIONS,
    *,
    queries: Sequence[str] = QUERIES,
    blur_kernel: int = DEFAULT_BLUR_KERNEL,
    dna_noise: DnaNoise | None = None,
    seed: int = 0,
    sweep: bool = False,
    keys: KeyBank | None = None,
    reference: KeyBank | None = None,
    per_level: str = "string",
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Evaluate ``model`` on ``frame`` (a normalised metadata frame) against ``candidates``.

    Returns the results dict described in the module docstring, with ``_meta`` (what was evaluated and how),
    ``sweep`` when asked for, and ``retrieval`` when a key bank is given. ``reference`` is the bank the drift under
    noise is measured in (:mod:`train.evaluate.consistency`; default ``keys``, none: no drift); ``per_level``
    picks the reading of the per-level accuracies (:mod:`train.evaluate.perlevel`).
    """
    if per_level not in PER_LEVEL_READINGS:
        raise ValueError(f"per_level must be one of {', '.join(PER_LEVEL_READINGS)}, got {per_level!r}")
    unknown = sorted(set(conditions) - set(CONDITIONS))
    if unknown:
        raise ValueError(f"unknown condition(s) {unknown}; valid: {', '.join(CONDITIONS)}")
    bad_queries = sorted(set(queries) - set(QUERIES))
    if bad_queries:
        raise ValueError(f"unknown query type(s) {bad_queries}; valid: {', '.join(QUERIES)}")
    if len(frame) == 0:
        raise ValueError("there are no specimens to evaluate")
    if not len(candidates):
        raise ValueError("there are no candidate taxonomy strings to rank")
    if candidates.embeddings is None:
        raise ValueError("the candidates need text embeddings to be ranked")
    if candidates.embeddings.shape[1] != model.embed_dim:
        raise ValueError(f"candidate embeddings have dimension {candidates.embeddings.shape[1]}, "
                         f"the model embeds into {model.embed_dim}")
    dna_noise = DnaNoise() if dna_noise is None else dna_noise
    started = time.perf_counter()
    frame = frame.reset_index(drop=True)
    model = model.to(device).eval()
    embedder = QueryEmbedder(model, frame, images, seed, batch_size, num_workers, device)
    geometry = Geometry.of(model)  # cosine, or (Lorentz) geodesic distance: candidates are ranked by it
    if not embedder.has_images and not embedder.has_barcodes:
        raise ValueError("the specimens have neither images (pass the image store) nor barcodes: nothing to query")

    truth, cand_codes = label_codes(frame[list(LEVELS)].to_numpy(dtype=object), frame["taxonomy"].tolist(),
                                    np.asarray(candidates.ranks, dtype=object), candidates.candidates)
    kept, skipped = _applicable_conditions(conditions, embedder.has_images, embedder.has_barcodes)
    results: dict[str, Any] = {}
    counts: dict[str, dict[str, int]] = {}
    retrieval: dict[str, Any] = {}
    key_state = _prepare_keys(keys, frame) if keys is not None else None
    reference = keys if reference is None else reference
    ref_codes = (ReferenceCodes(reference, frame[list(LEVELS)].to_numpy(dtype=object), specimen_ids(frame))
                 if reference is not None else None)
    if per_level == "independent" and geometry.lorentz:  # prefix embeddings are renormalised means of unit vectors
        raise ValueError("--per-level independent is defined for Euclidean (unit-vector) models only")
    prefixes = LevelCandidates(candidates.embeddings, cand_codes) if per_level == "independent" else None
    clean = embedder.queries(embedder.image(0), embedder.dna(None), queries)  # cached: the clean condition's
    for condition in kept:
        blurred, noisy = _CONDITION_NOISE[condition]
        q = clean if not (blurred or noisy) else embedder.queries(
            embedder.image(blur_kernel if blurred else 0), embedder.dna(dna_noise if noisy else None), queries)
        results[condition] = {}
        for name, (emb, mask) in q.items():
            ranked = cand_codes[top_k(emb[mask], candidates.embeddings, max(TOP_KS), geometry)]
            scores, counts[name] = ranked_scores(ranked, truth[mask])
            if prefixes is not None:
                scores.update(independent_level_scores(emb[mask], truth[mask], prefixes))
            scores["hierarchy"] = hierarchy_scores(emb, clean[name][0], mask, truth, ranked, ref_codes, name,
                                                   cosine=not geometry.lorentz)
            results[condition][name] = scores
            if key_state is not None and name in key_state["spaces"]:
                retrieval.setdefault(condition, {})[name] = _retrieve(emb, mask, name, key_state)
        logger.info("%s: %s", condition, _summary(results[condition]))

    out: dict[str, Any] = dict(results)
    out["_meta"] = {
        "format": frame.attrs.get("format"),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "hirviz_version": hirviz.__version__,
        "specimens": int(len(frame)),
        "queries": sorted({q for cond in results.values() for q in cond}, key=QUERIES.index),
        "n_labelled": counts,
        "candidates": {"source": candidates.source, "count": len(candidates),
                       "specimens_whose_string_is_not_a_candidate": int(
                           ((truth[:, 4] >= 0) & ~np.isin(truth[:, 4], cand_codes[:, 4])).sum())},
        "conditions": list(results),
        "skipped_conditions": skipped,
        "blur_kernel": int(blur_kernel),
        "dna_noise": asdict(dna_noise),
        "noise_seed": int(seed),
        "geometry": {"name": geometry.name, "curvature": geometry.curvature if geometry.lorentz else None,
                     "ranking": "geodesic distance" if geometry.lorentz else "cosine similarity"},
        "levels": list(EVAL_LEVELS),
        "metric": "top-k accuracy in percent over the specimens labelled at each level; global = exact match "
                  "of the whole taxonomy string",
        "per_level": per_level,
        "hierarchy": {"agreement_pairs": AGREEMENT_PAIRS, "agreement_seed": 0,
                      "drift_reference": None if reference is None else
                      {s: int(m.sum()) for s, m in reference.masks.items()}},
    }
    if sweep:
        out["sweep"] = noise_sweep(embedder, truth, candidates, cand_codes, queries, dna_noise)
    if key_state is not None:
        out["retrieval"] = {"definition": SEEN_DEFINITION, "ks": list(RETRIEVAL_KS),
                            "keys": {s: int(m.sum()) for s, m in keys.masks.items()},
                            "queries_in_reference": key_state["overlap"], **retrieval}
    out["_meta"]["embedding_seconds"] = round(embedder.seconds, 2)
    out["_meta"]["seconds"] = round(time.perf_counter() - started, 2)
    return out


def _applicable_conditions(conditions: Sequence[str], has_images: bool, has_barcodes: bool
                           ) -> tuple[list[str], dict[str, str]]:
    """The conditions worth computing, in :data:`CONDITIONS` order, and why the others were left out."""
    kept, skipped, seen = [], {}, {}
    for condition in CONDITIONS:
        if condition not in conditions:
            continue
        blurred, noisy = _CONDITION_NOISE[condition]
        effective = (blurred and has_images, noisy and has_barcodes)
        if effective in seen:
            missing = "images" if not has_images else "barcodes"
            skipped[condition] = f"the data has no {missing}: same as {seen[effective]}"
            continue
        seen[effective] = condition
        kept.append(condition)
    return kept, skipped


def _prepare_keys(keys: KeyBank, frame: pd.DataFrame) -> dict[str, Any]:
    ranks = frame[list(LEVELS)].to_numpy(dtype=object)
    query_codes = np.empty((len(frame), len(LEVELS)), np.int64)
    key_codes = np.empty((len(keys.ids), len(LEVELS)), np.int64)
    for j in range(len(LEVELS)):
        query_codes[:, j], key_codes[:, j] = _factorize(ranks[:, j], keys.ranks[:, j])
    query_ids = specimen_ids(frame)
    overlap = int(np.isin(query_ids[pd.notna(query_ids)], keys.ids).sum())
    if overlap:
        logger.warning("%d evaluated specimens are also in the reference bank; retrieval skips a key with the "
                       "query's own id", overlap)
    return {"query_codes": query_codes, "key_codes": key_codes, "query_ids": query_ids, "keys": keys,
            "spaces": {s for s, m in keys.masks.items() if m.any()}, "overlap": overlap}


def _retrieve(emb: np.ndarray, mask: np.ndarray, space: str, state: dict[str, Any]) -> dict[str, Any]:
    keys: KeyBank = state["keys"]
    kmask = keys.masks[space]
    return retrieval_scores(emb[mask], state["query_codes"][mask], keys.embeddings[space][kmask],
                            state["key_codes"][kmask], state["query_ids"][mask], keys.ids[kmask],
                            geometry=keys.geometry)


def noise_sweep(
    embedder: QueryEmbedder, truth: np.ndarray, candidates: CandidateSet, cand_codes: np.ndarray,
    queries: Sequence[str] = QUERIES, dna_noise: DnaNoise | None = None,
    dna_scales: Sequence[float] = SWEEP_DNA_SCALES, blur_kernels: Sequence[int] = SWEEP_BLUR_KERNELS,
) -> list[dict[str, Any]]:
    """Top-1 accuracy per query and level as one degradation grows, the other modality clean.

    ``dna``: every rate of ``dna_noise`` (the paper's by default) times each scale (0 = clean); ``blur``: a
    k x k box blur for each kernel size (1 = clean). Records ``{"kind", "strength", "query", "level", "top1"}``.
    """
    base = DnaNoise() if dna_noise is None else dna_noise
    records: list[dict[str, Any]] = []
    settings = []
    if embedder.has_barcodes:
        settings += [("dna", float(f), None, base.scaled(f)) for f in dna_scales]
    if embedder.has_images:
        settings += [("blur", int(k), int(k), None) for k in blur_kernels]
    for kind, strength, kernel, noise in settings:
        image = embedder.image(kernel if kernel is not None else 0, keep=kernel is None or kernel <= 1)
        dna = embedder.dna(noise, keep=noise is None or noise.is_off())
        for name, (emb, mask) in embedder.queries(image, dna, queries).items():
            scores, _ = classification_scores(emb[mask], truth[mask], candidates.embeddings, cand_codes, ks=(1,),
                                              geometry=Geometry.of(embedder.model))
            records += [{"kind": kind, "strength": strength, "query": name, "level": level,
                         "top1": scores[level]["top1"]} for level in EVAL_LEVELS]
        logger.info("sweep %s %s done", kind, strength)
    return records


def evaluate_bundle(
    bundle: Bundle,
    frame: pd.DataFrame,
    images: ImageStore | str | os.PathLike | None = None,
    conditions: Sequence[str] = CONDITIONS,
    *,
    candidates: str = "bundle",
    queries: Sequence[str] | None = None,
    blur_kernel: int = DEFAULT_BLUR_KERNEL,
    dna_noise: DnaNoise | None = None,
    seed: int = 0,
    sweep: bool = False,
    retrieval: bool = False,
    per_level: str = "string",
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    dataset: str | None = None,
) -> dict[str, Any]:
    """Evaluate a bundle on a normalised metadata frame (see :func:`train.data.read_metadata`).

    ``images`` is an image store or its path (HDF5 file or folder). ``candidates`` is ``"bundle"`` (the
    bundle's candidate strings and text embeddings) or ``"dataset"`` (the frame's distinct taxonomy strings
    through the bundle's text tower). ``queries`` defaults to every query the model supports (no ``fused`` for
    a model trained without the fusion loss). ``retrieval`` adds CLIBD's protocol against the bundle's reference
    bank; the drift under noise is always measured in that bank. ``per_level`` is ``"string"`` or
    ``"independent"`` (:mod:`train.evaluate.perlevel`). ``dataset`` names the evaluated data in ``_meta``. Returns
    the results dict (module docstring).
    """
    if candidates not in ("bundle", "dataset"):
        raise ValueError(f"candidates must be 'bundle' or 'dataset', got {candidates!r}")
    model = bundle.model.to(device)
    opened = images is not None and not hasattr(images, "get")  # a path: the store opened here is closed here
    if opened:
        images = open_images(images)
    if queries is None:
        queries = [q for q in QUERIES if q != "fused" or bundle.fusion_trained]
    if candidates == "bundle":
        cands = CandidateSet.from_bundle(bundle)
    else:
        cands = frame_candidates(model, frame, device=device)
    bank = KeyBank.from_reference(bundle.reference, Geometry.of(model))
    try:
        results = evaluate_model(model, frame, cands, images, conditions, queries=queries, blur_kernel=blur_kernel,
                                 dna_noise=dna_noise, seed=seed, sweep=sweep, keys=bank if retrieval else None,
                                 reference=bank, per_level=per_level, batch_size=batch_size,
                                 num_workers=num_workers, device=device)
    finally:
        if opened:
            images.close()
    results["_meta"] = {"bundle": bundle.name, "objective": bundle.objective, "dataset": dataset,
                        **results["_meta"]}
    if model.geometry == "lorentz":  # which hyperbolic variant produced every number
        loss = bundle.training.get("loss") or {}
        results["_meta"]["geometry"].update({key: loss.get(key) for key in
                                             ("entailment", "entail_weight", "hyperbolic_reduction")})
    if "fused" not in queries and not bundle.fusion_trained:
        results["_meta"]["note"] = "no fused query: the model was trained without the fusion loss"
    return results


def _summary(per_query: Mapping[str, Any]) -> str:
    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.1f}"

    return ", ".join(f"{q} global {fmt(s['global']['top1'])}/{fmt(s['global']['top5'])}" for q, s in per_query.items())

