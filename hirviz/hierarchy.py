"""How well a model's answers and its embedding space respect the taxonomy (METHOD.md section 8, last item).

Accuracy says how often a model is right; these metrics say how wrong it is when it is wrong, and whether its
geometry mirrors the tree of life. All four count distances in the taxonomy as the *height of the lowest common
ancestor* (LCA) of two taxa, on a scale of 0 to 4 (Bertinetto et al., "Making Better Mistakes", CVPR 2020):

    0 = same species, 1 = same genus (different species), 2 = same family (different genus),
    3 = same order (different family), 4 = different orders.

- **Mistake severity** (:func:`mistake_severity`): the average height over the model's wrong first answers.
  A severity of 1.2 means mistakes are on average between genus and family level: for example, four in five
  wrong answers are another species of the right genus and one in five is another genus of the right family.
  Lower is better; two models with the same accuracy can differ a lot here. **Hierarchical distance@k** is the
  average height over the first k answers, right or wrong, of every specimen identified to species (0 = all k
  answers are the true species).
- **Tree/embedding agreement** (:func:`tree_embedding_agreement`): for many pairs of specimens, do pairs that
  are closer in the tree also lie closer in the embedding space? Reported as a Spearman rank correlation
  between the LCA height and the cosine distance: 1 = the space orders every pair as the tree does, 0 = the
  space ignores the tree.
- **Drift under noise** (:func:`drift_under_noise`, :func:`specimen_drift`, :func:`describe_drift`): after a
  photo is blurred or a barcode degraded, down to which rank does the nearest reference specimen still share
  the specimen's name? 4 = still the same species, 3 = same genus, 2 = same family, 1 = same order, 0 = not
  even the order (a specimen identified only to family reaches 2 at most). Also how far the noise moved the
  embedding (cosine distance, 0 = not at all).

Unknown ranks (id -1). Two lineages are "the same at rank l" only if both are known and equal at every rank
from order down to l, so a name is never matched on its own (a genus is compared together with its order and
family). The height is ``4 - (number of ranks they share)`` when that number is certain, and NaN when it is not:
when the lineages agree down to a rank where one of them stops, the LCA could lie anywhere below. So 0 always
means "known to be the same species", and a specimen identified only to family F gets no height against
another member of F. A *predicted* taxon (``b_is_taxon=True``) is a node of the tree, not a
specimen: a prediction that stops at genus G is the node G, so against a specimen of G its height is 1 (the
answer is right but one rank too vague), which is certain; only the truth's unknown ranks make a height NaN.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import faiss
import numpy as np

from hirviz.taxonomy import LEVELS

__all__ = ["DEPTH_NAMES", "Drift", "describe_drift", "displacement", "drift_under_noise", "lca_height",
           "mistake_severity", "nearest_shared_depth", "sample_pairs", "shared_depth", "specimen_drift",
           "tree_embedding_agreement"]

N_LEVELS = len(LEVELS)
# Name of each drift depth: how many ranks (from order down) the nearest reference still shares.
DEPTH_NAMES: tuple[str, ...] = ("none", *LEVELS)


# ----------------------------------------------------------------------------------------------------------------
# LCA height


def _labels(labels: object, name: str) -> np.ndarray:
    """Rank ids as int64 ``[..., 4]``; extra trailing columns (e.g. a whole-string code) are ignored."""
    arr = np.asarray(labels)
    if arr.ndim < 1 or arr.shape[-1] < N_LEVELS:
        raise ValueError(f"{name} must be rank ids [..., {N_LEVELS}] ({', '.join(LEVELS)}; -1 = unknown), "
                         f"got shape {arr.shape}")
    integral = arr.dtype.kind in "iub" or (
        arr.dtype.kind == "f" and bool(np.all(np.isfinite(arr) & (arr == np.round(arr)))))
    if not integral:
        raise ValueError(f"{name} must hold integer rank ids (-1 = unknown), got {arr.dtype} values that are not")
    arr = arr[..., :N_LEVELS].astype(np.int64)
    return np.where(arr < 0, -1, arr)


def shared_depth(a_labels: np.ndarray, b_labels: np.ndarray) -> np.ndarray:
    """How many ranks, from order down, two lineages share (both known and equal at every one): 0..4.

    The inputs broadcast against each other (e.g. ``[N, 4]`` with ``[N, k, 4]`` via ``a[:, None]``).
    """
    a, b = _labels(a_labels, "a_labels"), _labels(b_labels, "b_labels")
    same = (a >= 0) & (a == b)
    return np.logical_and.accumulate(same, axis=-1).sum(axis=-1)


def lca_height(a_labels: np.ndarray, b_labels: np.ndarray, *, b_is_taxon: bool = False) -> np.ndarray:
    """Height of the lowest common ancestor of each pair of lineages: 0 (same species) .. 4 (different orders).

    Args:
        a_labels: rank ids ``[..., 4]`` (order, family, genus, species; -1 = unknown) of specimens.
        b_labels: rank ids broadcastable against ``a_labels``.
        b_is_taxon: read ``b`` as predicted taxa (nodes of the tree: a lineage that stops at genus *is* that
            genus) rather than as specimens whose missing ranks are merely unknown.

    Returns float heights (broadcast shape without the last axis); NaN where the height is not certain: the
    lineages agree down to a rank where ``a`` (or, for specimens, either) is unknown. See the module docstring.
    """
    a, b = _labels(a_labels, "a_labels"), _labels(b_labels, "b_labels")
    a, b = np.broadcast_arrays(a, b)
    depth = shared_depth(a, b)
    # The first rank they do not share decides: both known there means they really differ, so the LCA is fixed.
    at = np.minimum(depth, N_LEVELS - 1)[..., None]
    a_known = np.take_along_axis(a, at, axis=-1)[..., 0] >= 0
    b_known = np.take_along_axis(b, at, axis=-1)[..., 0] >= 0
    certain = (depth == N_LEVELS) | (a_known & (b_known | b_is_taxon))
    return np.where(certain, (N_LEVELS - depth).astype(np.float64), np.nan)


# ----------------------------------------------------------------------------------------------------------------
# Mistake severity and hierarchical distance@k


def _mean(values: np.ndarray) -> float | None:
    """Mean of the finite values, None when there are none (results are written as JSON)."""
    values = values[np.isfinite(values)]
    return float(values.mean()) if values.size else None


def mistake_severity(true_labels: np.ndarray, ranked_pred_labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict:
    """Mistake severity of the first answers and hierarchical distance@k of the first k answers.

    Args:
        true_labels: rank ids ``[N, 4]`` of the specimens (-1 = unknown).
        ranked_pred_labels: rank ids ``[N, k, 4]`` of each specimen's ranked predicted taxa, best first (or
            ``[N, 4]`` for first answers only). Predictions are taxa: one that stops above species is that node.
        ks: the k of hierarchical distance@k; with fewer than k predictions all of them are used.

    A first answer is *correct* when its lineage equals the truth's (unknown ranks included), a *mistake* when
    its LCA height with the truth is certain and above 0, and *undecided* otherwise (it agrees with the truth as
    far as the truth is known but names ranks the truth leaves unknown). Specimens with no known rank are left
    out. Returns ``{"severity", "mistakes", "correct", "undecided", "specimens", "hdist@k"..., "hdist_specimens"}``:
    severity is the mean height over the mistakes (None without mistakes); hdist@k is the mean height over the
    first k predictions of the specimens identified to species (the only ones whose every height is certain).
    """
    truth = _labels(true_labels, "true_labels")
    preds = _labels(ranked_pred_labels, "ranked_pred_labels")
    if preds.ndim == 2:
        preds = preds[:, None, :]
    if truth.ndim != 2 or preds.ndim != 3 or len(preds) != len(truth):
        raise ValueError(f"true_labels [N, 4] and ranked_pred_labels [N, k, 4] must match, got shapes "
                         f"{np.shape(true_labels)} and {np.shape(ranked_pred_labels)}")
    if preds.shape[1] == 0:
        raise ValueError("ranked_pred_labels holds no predictions (k = 0)")
    if any(isinstance(k, bool) or int(k) < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {list(ks)}")
    labelled = (truth >= 0).any(axis=1)
    truth, preds = truth[labelled], preds[labelled]
    heights = lca_height(truth[:, None, :], preds, b_is_taxon=True)  # [n, k]
    first = heights[:, 0]
    correct = (preds[:, 0] == truth).all(axis=1)
    mistake = np.isfinite(first) & (first > 0)
    out: dict = {"severity": _mean(first[mistake]), "mistakes": int(mistake.sum()), "correct": int(correct.sum()),
                 "undecided": int(len(truth) - mistake.sum() - correct.sum()), "specimens": int(len(truth))}
    complete = (truth >= 0).all(axis=1)
    for k in ks:
        out[f"hdist@{int(k)}"] = _mean(heights[complete, :int(k)].ravel())
    out["hdist_specimens"] = int(complete.sum())
    return out


# ----------------------------------------------------------------------------------------------------------------
# Tree / embedding agreement


def _unit_rows(x: object, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be embeddings [n, d], got shape {arr.shape}")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if not np.isfinite(arr).all() or (norms == 0).any():
        raise ValueError(f"{name} must be finite and non-zero (pass only the specimens that have the modality)")
    return arr / norms


def sample_pairs(n: int, n_pairs: int = 20000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Row pairs ``(i, j)``, ``i != j``, that depend only on ``(n, n_pairs, seed)``.

    Every unordered pair once when there are at most ``n_pairs`` of them, else ``n_pairs`` drawn uniformly with
    replacement: the same pairs for every space and condition evaluated on the same specimens.
    """
    if n < 2 or n_pairs < 1:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if n * (n - 1) // 2 <= n_pairs:
        return tuple(np.triu_indices(n, k=1))  # type: ignore[return-value]
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=n_pairs)
    return i, (i + rng.integers(1, n, size=n_pairs)) % n


def _spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None  # no ordering to agree on
    try:
        from scipy.stats import spearmanr
        return float(spearmanr(x, y).statistic)
    except ImportError:  # pragma: no cover - scipy comes with scikit-learn / umap-learn
        import pandas as pd
        rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
        return float(np.corrcoef(rx, ry)[0, 1])


def tree_embedding_agreement(embeddings: np.ndarray, labels: np.ndarray, n_pairs: int = 20000, seed: int = 0) -> dict:
    """Spearman correlation between tree distance (LCA height) and cosine distance over specimen pairs.

    Args:
        embeddings: ``[N, d]`` embeddings (any non-zero scale; normalised here).
        labels: rank ids ``[N, 4]`` of the same specimens.
        n_pairs, seed: which pairs, see :func:`sample_pairs`.

    Pairs whose height is not certain (see :func:`lca_height`) are left out. Returns ``{"rho", "pairs",
    "mean_distance_by_height"}``: rho is None when fewer than 3 pairs or a single height remain; the last maps each
    height (as a string, 0..4) to the mean cosine distance of its pairs (None where no pair has that height).
    """
    z = _unit_rows(embeddings, "embeddings")
    lab = _labels(labels, "labels")
    if lab.ndim != 2 or len(lab) != len(z):
        raise ValueError(f"labels must be [{len(z)}, 4] like the embeddings, got shape {np.shape(labels)}")
    i, j = sample_pairs(len(z), int(n_pairs), int(seed))
    height = lca_height(lab[i], lab[j])
    keep = np.isfinite(height)
    i, j, height = i[keep], j[keep], height[keep]
    dist = 1.0 - np.einsum("nd,nd->n", z[i], z[j])
    by_height = {str(h): _mean(dist[height == h]) for h in range(N_LEVELS + 1)}
    return {"rho": _spearman(height, dist), "pairs": int(len(height)), "mean_distance_by_height": by_height}


# ----------------------------------------------------------------------------------------------------------------
# Drift under noise


def _nearest(queries: np.ndarray, refs: np.ndarray, self_rows: np.ndarray | None) -> np.ndarray:
    """Row of each query's most cosine-similar reference, skipping ``self_rows[q]`` (its own row, -1 none)."""
    index = faiss.IndexFlatIP(refs.shape[1])
    index.add(np.ascontiguousarray(refs, dtype=np.float32))
    k = 1 if self_rows is None else min(2, len(refs))
    _, rows = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    if self_rows is None:
        return rows[:, 0]
    if len(refs) < 2:
        raise ValueError("skipping each specimen's own reference row needs at least 2 reference specimens")
    return np.where(rows[:, 0] == self_rows, rows[:, 1], rows[:, 0])


def nearest_shared_depth(queries: np.ndarray, ref_embeddings: np.ndarray, ref_labels: np.ndarray,
                         labels: np.ndarray, self_rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per query, how many ranks (0..4) its nearest reference shares with ``labels``, and that reference's row.

    Only ranks known for the specimen (and the reference) can be shared, so a specimen identified to family
    reaches 2 at most. ``self_rows`` gives each query's own row in the reference (-1 for none) to skip it.
    """
    q = _unit_rows(queries, "queries")
    refs = _unit_rows(ref_embeddings, "ref_embeddings")
    ref_lab, lab = _labels(ref_labels, "ref_labels"), _labels(labels, "labels")
    if refs.shape[1] != q.shape[1]:
        raise ValueError(f"queries have dimension {q.shape[1]} but the reference embeddings {refs.shape[1]}")
    if ref_lab.shape != (len(refs), N_LEVELS) or lab.shape != (len(q), N_LEVELS):
        raise ValueError(f"need ref_labels [{len(refs)}, 4] and labels [{len(q)}, 4], got {ref_lab.shape} and "
                         f"{lab.shape}")
    rows = _nearest(q, refs, None if self_rows is None else np.asarray(self_rows, dtype=np.int64).reshape(-1))
    return shared_depth(lab, ref_lab[rows]), rows


def displacement(clean: np.ndarray, degraded: np.ndarray) -> np.ndarray:
    """Cosine distance ``1 - cos(clean, degraded)`` per specimen (0 = the noise did not move it)."""
    a, b = _unit_rows(clean, "clean"), _unit_rows(degraded, "degraded")
    if a.shape != b.shape:
        raise ValueError(f"clean and degraded embeddings differ in shape: {a.shape} vs {b.shape}")
    return np.clip(1.0 - np.einsum("nd,nd->n", a, b), 0.0, 2.0)


def drift_under_noise(clean: np.ndarray, degraded: np.ndarray, ref_embeddings: np.ndarray, ref_labels: np.ndarray,
                      labels: np.ndarray, self_rows: np.ndarray | None = None) -> dict:
    """How deep the nearest reference of each degraded embedding still agrees, and how far the noise moved it.

    Args:
        clean, degraded: ``[N, d]`` embeddings of the same specimens without and with noise.
        ref_embeddings, ref_labels: the reference bank ``[M, d]`` and its rank ids ``[M, 4]``.
        labels: rank ids ``[N, 4]`` of the specimens.
        self_rows: each specimen's own row in the reference bank (-1 for none), when they are part of it.

    Returns ``{"mean_depth", "distribution", "mean_displacement", "specimens"}``: depth 0..4 = shares none, order,
    family, genus, species; ``distribution`` maps each name of :data:`DEPTH_NAMES` to its fraction of specimens.
    """
    depth, _ = nearest_shared_depth(degraded, ref_embeddings, ref_labels, labels, self_rows)
    moved = displacement(clean, degraded)
    counts = np.bincount(depth, minlength=N_LEVELS + 1)
    total = max(len(depth), 1)
    return {"mean_depth": _mean(depth.astype(np.float64)),
            "distribution": {name: float(c / total) for name, c in zip(DEPTH_NAMES, counts)},
            "mean_displacement": _mean(moved), "specimens": int(len(depth))}


class Drift(NamedTuple):
    """One specimen's drift: ``rank`` is the deepest rank name still shared (None = not even the order)."""

    rank: str | None
    depth: int  # ranks shared, 0..4
    known_depth: int  # ranks known for the specimen (or the basis it is compared with)
    reference_depth: int  # ranks known for the nearest reference
    displacement: float
    reference_row: int
    basis: str  # "label": the specimen's own label; "clean": the clean embedding's nearest reference


def specimen_drift(clean: np.ndarray, degraded: np.ndarray, ref_embeddings: np.ndarray, ref_labels: np.ndarray,
                   label: np.ndarray | None = None) -> Drift:
    """The drift of one specimen (``clean`` and ``degraded`` are ``[d]`` embeddings), for :func:`describe_drift`.

    Without ``label`` (a user's specimen has none) the specimen is compared with the label of the reference its
    clean embedding is nearest to: "does the noise move it away from where it was?".
    """
    clean2, degraded2 = np.atleast_2d(clean), np.atleast_2d(degraded)
    if clean2.shape[0] != 1 or degraded2.shape[0] != 1:
        raise ValueError("specimen_drift takes one specimen: clean and degraded must be single embeddings [d]")
    ref_lab = _labels(ref_labels, "ref_labels")
    basis = "label"
    if label is None:
        row = _nearest(_unit_rows(clean2, "clean"), _unit_rows(ref_embeddings, "ref_embeddings"), None)[0]
        label, basis = ref_lab[row], "clean"
    lab = _labels(label, "label").reshape(1, N_LEVELS)
    depth, rows = nearest_shared_depth(degraded2, ref_embeddings, ref_lab, lab)
    d, row = int(depth[0]), int(rows[0])
    return Drift(rank=None if d == 0 else LEVELS[d - 1], depth=d, known_depth=_known_depth(lab[0]),
                 reference_depth=_known_depth(ref_lab[row]), displacement=float(displacement(clean2, degraded2)[0]),
                 reference_row=row, basis=basis)


def _known_depth(lineage: np.ndarray) -> int:
    """Ranks known from order down without a gap (a rank below a gap is never compared)."""
    return int(np.logical_and.accumulate(lineage >= 0).sum())


def describe_drift(drift: Drift) -> str:
    """One or two plain sentences about a :class:`Drift`, e.g. for the app next to the noise sliders."""
    moved = (f" The noise moved the embedding by a cosine distance of {drift.displacement:.3f} "
             "(0 = not at all, 2 = to the opposite side).")
    if drift.basis == "label":
        other, of = "your specimen", "your specimen's {}"
    else:
        other = "the reference nearest to your noise-free input"
        of = "the {} of " + other
    start = "With this noise, the reference specimen nearest to your noisy input"
    if drift.known_depth == 0:
        return f"{other[0].upper()}{other[1:]} has no known rank, so there is nothing to compare with.{moved}"
    if drift.depth == 0:
        return f"{start} is not even of the same order as {other}.{moved}"
    rank = LEVELS[drift.depth - 1]
    if drift.depth == N_LEVELS:
        return f"{start} is still of the same species as {other}.{moved}"
    if drift.depth == drift.known_depth:
        return (f"{start} still shares {of.format(rank)}, the deepest rank known there; nothing finer can be "
                f"compared.{moved}")
    finer = LEVELS[drift.depth]
    if drift.reference_depth <= drift.depth:
        return (f"{start} still shares {of.format(rank)}; that reference is not identified to {finer}, so "
                f"whether the {finer} agrees is unknown.{moved}")
    return f"{start} still shares {of.format(rank)}, but not the {finer}.{moved}"
