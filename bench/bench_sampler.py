"""Time one epoch of ``HierarchicalBatchSampler`` on synthetic long-tailed labels with many unknowns.

    python bench/bench_sampler.py [--sizes 10000 100000 1000000] [--world-size 1]

The labels imitate BIOSCAN-1M: power-law species frequencies, nested in genera, families and orders, with ranks
known for about 98 % (order), 70 % (family), 30 % (genus) and 9 % (species) of the specimens. For each size the
script prints the time to build and iterate one epoch on rank 0, and, per level, the share of specimens with a
known label that have a positive (another specimen with the same label) in their batch, which is what HiR needs:
hierarchical groups against plain random batches (``group_size=1``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a plain checkout

from hirviz.taxonomy import LEVELS
from train.data import HierarchicalBatchSampler

# Fraction of specimens whose rank is known at each level, order .. species (close to BIOSCAN-1M).
KNOWN = (0.98, 0.70, 0.30, 0.09)


def synthetic_labels(n: int, seed: int = 0, n_species: int = 20_000) -> np.ndarray:
    """Long-tailed hierarchical labels [n, 4] (order, family, genus, species), -1 where unknown."""
    rng = np.random.default_rng(seed)
    # each species belongs to one genus, each genus to one family, each family to one order
    genus_of = rng.integers(0, n_species // 4, n_species)
    family_of = rng.integers(0, 400, n_species // 4)
    order_of = rng.integers(0, 16, 400)
    # power-law species frequencies: a few common species, a long tail of rare ones
    weights = 1.0 / (np.arange(n_species) + 10.0) ** 1.1
    species = rng.choice(n_species, size=n, p=weights / weights.sum())
    labels = np.stack([order_of[family_of[genus_of[species]]], family_of[genus_of[species]], genus_of[species],
                       species], axis=1).astype(np.int64)
    # a specimen identified to some depth is unknown at every finer level
    depth = (rng.random(n)[:, None] < np.array(KNOWN)[None, :]).cumprod(axis=1).astype(bool)
    labels[~depth] = -1
    return labels


def positive_share(labels: np.ndarray, batches: list[list[int]], level: int) -> float:
    """Share of specimens with a known label at ``level`` that share it with another specimen of their batch."""
    with_positive = known = 0
    for batch in batches:
        lab = labels[batch, level]
        lab = lab[lab >= 0]
        _, inverse, counts = np.unique(lab, return_inverse=True, return_counts=True)
        with_positive += int((counts[inverse] > 1).sum())
        known += len(lab)
    return with_positive / max(known, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=250)
    args = parser.parse_args()

    levels = LEVELS
    print("share of labelled specimens with a positive in their batch: hierarchical / random")
    print(f"{'N':>9} {'epoch s':>8} {'batches':>7}  " + "  ".join(f"{lvl:>13}" for lvl in levels))
    for n in args.sizes:
        labels = synthetic_labels(n)
        start = time.perf_counter()
        sampler = HierarchicalBatchSampler(labels, batch_size=args.batch_size, world_size=args.world_size)
        batches = list(sampler)
        elapsed = time.perf_counter() - start
        random_batches = list(HierarchicalBatchSampler(labels, batch_size=args.batch_size, group_size=1,
                                                       world_size=args.world_size))
        # the statistics loop over batches in Python; 200 batches are plenty
        shares = [f"{positive_share(labels, batches[:200], j):.2f} / "
                  f"{positive_share(labels, random_batches[:200], j):.2f}" for j in range(len(levels))]
        print(f"{n:>9} {elapsed:>8.3f} {len(batches):>7}  " + "  ".join(f"{s:>13}" for s in shares))


if __name__ == "__main__":
    main()
