"""CLIBD's retrieval protocol on CLIBD's own partition (METHOD.md section 8, REFERENCE_CODE.md 7.2).

``python -m train eval ... --retrieval clibd [--partition FILE]``. The partition (:mod:`train.data.clibd_split`)
says which records are queries and which are keys; every key of every split forms one reference database, so an
unseen species (held out of training) is retrieved from its own keys. For each evaluation split (``val``,
``test``) and each pair of query and key modality in :data:`PAIRS`, every query of that split finds its nearest
keys (FAISS inner product on unit vectors, :func:`train.evaluate.metrics.retrieval_scores`); the prediction at a
rank is the nearest key's label there. Micro and macro top-1/3/5 accuracy are reported separately for the split's
seen and unseen queries. Clean inputs only: CLIBD's protocol has no degradation.

Results JSON, beside the other keys of an evaluation::

    "retrieval_clibd": {"definition": str, "partition": str, "ks": [1, 3, 5], "records": {label: n},
                        "trained_on_partition": bool, "queries_or_keys_in_reference_bank": int,
                        "val"|"test": {"image->image"|"dna->dna"|"image->dna":
                                       {"keys": n, "seen"|"unseen": {"n": int, "micro"|"macro":
                                                                     {level: {"top1", "top3", "top5"}}}}}}
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from hirviz.geometry import Geometry
from hirviz.model import HirvizModel
from hirviz.taxonomy import LEVELS
from train.data import ImageStore, load_partition, read_metadata, specimen_ids
from train.data.clibd_split import EVAL_SPLITS, KEYS, PARTITIONS, query_label
from train.evaluate.embedding import QueryEmbedder
from train.evaluate.metrics import RETRIEVAL_KS, _factorize, retrieval_scores
from train.evaluate.tables import _format_retrieval

if TYPE_CHECKING:
    from hirviz.bundle import Bundle

logger = logging.getLogger(__name__)

PAIRS: tuple[tuple[str, str], ...] = (("image", "image"), ("dna", "dna"), ("image", "dna"))
CLIBD_DEFINITION = ("CLIBD's protocol: each query of a split searches every key of the partition (seen keys and the "
                    "unseen keys of validation and test) by inner product (geodesic distance for a hyperbolic model); the nearest keys' labels are the "
                    "predictions; seen / unseen = the query's species was / was not in training")
_QUERIES = frozenset(query_label(split, seen) for split in EVAL_SPLITS for seen in (True, False))


def clibd_scores(embeddings: Mapping[str, tuple[np.ndarray, np.ndarray]], ranks: np.ndarray, labels: np.ndarray,
                 ks: Sequence[int] = RETRIEVAL_KS, pairs: Sequence[tuple[str, str]] = PAIRS,
                 geometry: Geometry | None = None) -> dict[str, Any]:
    """Retrieval accuracy of a partition's queries against its keys, per split and modality pair.

    Args:
        embeddings: ``{modality: (unit vectors [N, d], has-modality [N] bool)}`` over the same N records.
        ranks: ``[N, 4]`` order .. species names (None = unknown).
        labels: ``[N]`` partition labels (:data:`train.data.clibd_split.PARTITIONS`).
        geometry: how keys are compared (:class:`hirviz.geometry.Geometry`; None: inner product of unit vectors).

    Returns ``{split: {"<query>-><key>": {"keys": n, "seen": group, "unseen": group}}}`` (groups as in
    :func:`retrieval_scores`); a pair whose modalities the records lack is left out.
    """
    labels = np.asarray(labels, dtype=object)
    ranks = np.asarray(ranks, dtype=object).reshape(-1, len(LEVELS))
    codes = np.stack([_factorize(ranks[:, j])[0] for j in range(len(LEVELS))], axis=1)
    is_key = np.isin(labels, sorted(KEYS))
    out: dict[str, Any] = {}
    for split in EVAL_SPLITS:
        seen, unseen = labels == query_label(split, True), labels == query_label(split, False)
        out[split] = {}
        for query, key in pairs:
            if query not in embeddings or key not in embeddings:
                continue
            (q_emb, q_has), (k_emb, k_has) = embeddings[query], embeddings[key]
            q_rows, k_rows = (seen | unseen) & q_has, is_key & k_has
            if not q_rows.any() or not k_rows.any():
                continue
            scores = retrieval_scores(q_emb[q_rows], codes[q_rows], k_emb[k_rows], codes[k_rows], ks=ks,
                                      groups={"seen": seen[q_rows], "unseen": unseen[q_rows]}, geometry=geometry)
            out[split][f"{query}->{key}"] = {"keys": int(k_rows.sum()), **scores}
    return out


@torch.no_grad()
def evaluate_clibd(model: HirvizModel, frame: pd.DataFrame, labels: np.ndarray, images: ImageStore | None = None,
                   *, batch_size: int = 256, num_workers: int = 0, device: str | torch.device = "cpu",
                   source: str | None = None) -> dict[str, Any]:
    """Embed a partition's queries and keys (clean) and score them (:func:`clibd_scores`); the module's JSON."""
    labels = np.asarray(labels, dtype=object)
    if len(labels) != len(frame):
        raise ValueError(f"{len(labels)} partition labels for {len(frame)} records")
    rows = np.isin(labels, sorted(KEYS | _QUERIES))
    if not rows.any():
        raise ValueError("the partition has no queries or keys to evaluate")
    sub = frame.iloc[np.flatnonzero(rows)].reset_index(drop=True)
    embedder = QueryEmbedder(model.to(device).eval(), sub, images, 0, batch_size, num_workers, device)
    embeddings = {name: value for name, value in (("image", embedder.image(0)), ("dna", embedder.dna(None)))
                  if value is not None}
    if not embeddings:
        raise ValueError("the queries and keys have neither images (pass --images) nor barcodes")
    counts = pd.Series(labels).value_counts()
    return {"definition": CLIBD_DEFINITION, "partition": source, "ks": list(RETRIEVAL_KS),
            "records": {p: int(counts.get(p, 0)) for p in PARTITIONS},
            **clibd_scores(embeddings, sub[list(LEVELS)].to_numpy(dtype=object), labels[rows],
                           geometry=Geometry.of(model))}


def clibd_for_bundle(bundle: Bundle, metadata: str | os.PathLike, partition: str | os.PathLike | None = None,
                     images: ImageStore | None = None, **kwargs: Any) -> dict[str, Any]:
    """:func:`evaluate_clibd` of a bundle on every record of ``metadata``, with its partition.

    The partition is ``partition``, else the one the bundle was trained with (``data.partition``) when its file
    exists, else found as :func:`train.data.load_partition` does. The result says whether the bundle was trained on
    the partition's training records (``data.split=clibd``) and how many queries or keys its reference bank (its
    training records) holds: with a closed-set model, "unseen" species were trained on.
    """
    data = (bundle.training or {}).get("data") or {}
    if partition is None and data.get("split") == "clibd" and data.get("partition") \
            and os.path.isfile(data["partition"]):
        partition = data["partition"]
    frame = read_metadata(metadata).reset_index(drop=True)
    labels, source = load_partition(metadata, partition, frame, int(data.get("split_seed") or 0))
    out = evaluate_clibd(bundle.model, frame, labels, images, source=source, **kwargs)
    ids = specimen_ids(frame)[np.isin(labels, sorted(KEYS | _QUERIES))]
    out["trained_on_partition"] = data.get("split") == "clibd"
    out["queries_or_keys_in_reference_bank"] = int(np.isin(ids.astype(str), bundle.reference.ids).sum())
    if not out["trained_on_partition"]:
        logger.warning("bundle %s was not trained with data.split=clibd: its 'unseen' species may have been "
                       "trained on", bundle.name)
    return out


def format_clibd(results: Mapping[str, Any]) -> str:
    """Markdown of ``results["retrieval_clibd"]``: one table per split (top-1 / top-3 / top-5, %)."""
    parts = []
    for split in EVAL_SPLITS:
        if results.get(split):
            parts += [f"## CLIBD retrieval, {split} queries against all keys (top-1 / top-3 / top-5, %)", "",
                      _format_retrieval(results[split]), ""]
    parts += [f"{results.get('definition', CLIBD_DEFINITION)}; partition: {results.get('partition')}.", ""]
    return "\n".join(parts)
