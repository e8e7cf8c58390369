"""Batches for HiR: groups of an anchor plus relatives at species, genus, family and order.

:class:`HierarchicalBatchSampler` builds them in time linear-logarithmic in the number of specimens.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping

import numpy as np
from torch.utils.data import Sampler

from hirviz.taxonomy import LEVELS, UNKNOWN_ID

logger = logging.getLogger(__name__)


def _match_relatives(anchor_labels: np.ndarray, pool_labels: np.ndarray) -> np.ndarray:
    """Pair each anchor with a distinct pool entry of the same label, vectorised.

    Both arrays are in random order. Within each label the k-th anchor gets the k-th pool entry, so anchors of a
    label compete fairly when relatives run short. Returns, per anchor, a position in ``pool_labels`` or -1
    (unknown label, or no relative left). Cost: two sorts and two binary searches, O(n log n).
    """
    result = np.full(len(anchor_labels), -1, dtype=np.int64)
    if len(anchor_labels) == 0 or len(pool_labels) == 0:
        return result
    pool_order = np.argsort(pool_labels, kind="stable")
    pool_sorted = pool_labels[pool_order]
    anchor_order = np.argsort(anchor_labels, kind="stable")
    anchor_sorted = anchor_labels[anchor_order]
    rank = np.arange(len(anchor_sorted)) - np.searchsorted(anchor_sorted, anchor_sorted, side="left")
    lo = np.searchsorted(pool_sorted, anchor_sorted, side="left")
    hi = np.searchsorted(pool_sorted, anchor_sorted, side="right")
    ok = (anchor_sorted != UNKNOWN_ID) & (lo + rank < hi)
    result[anchor_order[ok]] = pool_order[lo[ok] + rank[ok]]
    return result


def hierarchical_groups(labels: np.ndarray, group_size: int, rng: np.random.Generator) -> np.ndarray:
    """Partition a random subset of the rows of ``labels`` into groups of relatives, int64 [G, group_size].

    ``G = N // group_size`` random anchors; slot k of a group holds a relative of its anchor at level
    ``LEVELS[-k]`` (species, genus, family, order, then again from species), drawn at random without replacement
    from the non-anchors. Slots whose anchor label is unknown, or whose relatives ran out, are filled at the end
    with random leftovers, so every row is used at most once and at most ``group_size - 1`` rows stay out.
    """
    labels = np.asarray(labels)
    n = len(labels)
    n_groups = n // group_size
    groups = np.full((n_groups, group_size), -1, dtype=np.int64)
    if n_groups == 0:
        return groups
    perm = rng.permutation(n)
    groups[:, 0] = perm[:n_groups]
    pool = perm[n_groups:]
    for slot in range(1, group_size):
        level = len(LEVELS) - 1 - (slot - 1) % len(LEVELS)
        # Matching takes each label's earliest pool entries, so what remains is no longer in random order (the
        # early entries lack the labels just matched); reshuffle, or early groups would get systematically
        # different relatives from late ones.
        pool = rng.permutation(pool)
        match = _match_relatives(labels[groups[:, 0], level], labels[pool, level])
        found = match >= 0
        groups[found, slot] = pool[match[found]]
        taken = np.zeros(len(pool), dtype=bool)
        taken[match[found]] = True
        pool = pool[~taken]
    empty = groups == -1
    groups[empty] = rng.permutation(pool)[: int(empty.sum())]
    # Where relatives are scarce the first anchors of a label win them; shuffling the groups spreads those
    # winners evenly over the epoch's batches.
    return groups[rng.permutation(n_groups)]


class HierarchicalBatchSampler(Sampler[list[int]]):
    """Batches of relatives for HiR: groups of an anchor and one relative per level, ``batch_size`` per rank.

    Each epoch, every specimen is used at most once: ``N // group_size`` groups are built over the whole dataset
    (:func:`hierarchical_groups`), dealt round-robin to the ranks (each rank gets the same number of groups,
    so shards are disjoint, every rank yields the same number of batches of the same sizes, and relatives
    stay together), and cut into batches of ``batch_size // group_size`` groups. The grouping depends only on
    (seed, epoch), so every rank computes the same one without communicating.

    Unlike the authors' sampler (anchor-by-anchor Python loops with set look-ups, quadratic in the worst
    case) this costs a few sorts per epoch. ``group_size=1`` gives plain random batches.

    Resuming: :meth:`state_dict` records the epoch and the batches already yielded; after
    :meth:`load_state_dict` the next iteration yields exactly the remaining batches of that epoch. A DataLoader
    prefetches batches, so the trainer should store the number of batches it actually consumed
    (``state_dict(batches_done=step)``). :meth:`set_epoch` with a different epoch starts that epoch from its
    first batch.
    """

    def __init__(
        self,
        labels: np.ndarray,
        batch_size: int = 250,
        group_size: int = 5,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.shape[1] != len(LEVELS):
            raise ValueError(f"labels must be an int array [N, {len(LEVELS)}], got shape {labels.shape}")
        if group_size < 1 or batch_size < group_size or batch_size % group_size:
            raise ValueError(f"batch_size ({batch_size}) must be a positive multiple of group_size ({group_size})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.labels = labels.astype(np.int64, copy=False)
        self.batch_size = batch_size
        self.group_size = group_size
        self.groups_per_batch = batch_size // group_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self._start = 0  # batches of self.epoch to skip (a resumed run)
        self._yielded = 0
        if len(self) == 0:
            logger.warning("%d specimens give no batch of %d over %d ranks", len(labels), batch_size, world_size)

    def __len__(self) -> int:
        groups = (len(self.labels) // self.group_size) // self.world_size
        round_ = math.floor if self.drop_last else math.ceil
        return int(round_(groups / self.groups_per_batch))

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for ``epoch`` (deterministic from the seed); keeps a resume offset for the same epoch."""
        if epoch != self.epoch:
            self._start = 0
        self.epoch = epoch

    def _batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        groups = hierarchical_groups(self.labels, self.group_size, rng)
        per_rank = len(groups) // self.world_size
        mine = groups[self.rank :: self.world_size][:per_rank]
        return [mine[i : i + self.groups_per_batch].reshape(-1) for i in range(0, per_rank, self.groups_per_batch)][
            : len(self)
        ]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        start, self._start = self._start, 0  # an offset applies to one pass only
        self._yielded = start
        for batch in batches[start:]:
            self._yielded += 1
            yield batch.tolist()

    def state_dict(self, batches_done: int | None = None) -> dict[str, int]:
        """Where the epoch stands: the epoch, the batches yielded (or ``batches_done``), and the settings."""
        return {
            "epoch": self.epoch,
            "batches_done": self._yielded if batches_done is None else int(batches_done),
            "seed": self.seed,
            "num_samples": len(self.labels),
            "batch_size": self.batch_size,
            "group_size": self.group_size,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue from a :meth:`state_dict`; the settings must match, or the batches would differ."""
        mine = self.state_dict()
        differ = [f"{k}: saved {state[k]}, now {mine[k]}" for k in mine if k in state and k not in
                  ("epoch", "batches_done") and state[k] != mine[k]]
        if differ:
            raise ValueError("cannot resume the sampler with different settings (" + "; ".join(differ) + ")")
        self.epoch = int(state["epoch"])
        self._start = int(state["batches_done"])
        self._yielded = self._start
