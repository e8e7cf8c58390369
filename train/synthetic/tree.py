"""The random taxonomy: invented Latin-looking names, the tree, long-tailed species abundances, and which
ranks each specimen is labelled to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from hirviz.taxonomy import LEVELS
from train.synthetic.config import _LABELS, _SPECIMENS, _TREE, SynthConfig, _rng

# ----------------------------------------------------------------------------------------------------
# names

_ONSETS = ("b", "d", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gl", "kl", "pr",
           "st", "th", "tr", "vr", "x", "ph")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "y")
_CODAS = ("r", "l", "n", "m", "s", "x", "v", "rv", "nd", "lt", "rk", "z")
_GENUS_ENDINGS = ("us", "a", "ia", "ella", "ops", "omyia", "ix", "on", "ina", "odes")
_EPITHET_ENDINGS = ("ensis", "i", "ae", "us", "a", "ata", "oides", "ina", "icus", "ulus", "eri")


def _stem(rng: np.random.Generator, syllables: int, coda: bool) -> str:
    parts = [_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))] for _ in range(syllables)]
    if coda:
        parts.append(_CODAS[rng.integers(len(_CODAS))])
    return "".join(parts)


def _order_name(rng: np.random.Generator) -> str:
    return _stem(rng, 2, coda=True).capitalize() + "optera"


def _family_name(rng: np.random.Generator) -> str:
    return _stem(rng, int(rng.integers(1, 3)), coda=True).capitalize() + "idae"


def _genus_name(rng: np.random.Generator) -> str:
    stem = _stem(rng, int(rng.integers(1, 3)), coda=bool(rng.random() < 0.6))
    return stem.capitalize() + _GENUS_ENDINGS[rng.integers(len(_GENUS_ENDINGS))]


def _epithet(rng: np.random.Generator) -> str:
    return _stem(rng, int(rng.integers(1, 3)), coda=bool(rng.random() < 0.5)) + _EPITHET_ENDINGS[
        rng.integers(len(_EPITHET_ENDINGS))
    ]


def _unique(rng: np.random.Generator, n: int, make: Callable[[], str], taken: set[str]) -> list[str]:
    """``n`` names from ``make`` that are not in ``taken`` (which is updated)."""
    out: list[str] = []
    while len(out) < n:
        name = make()
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


# ----------------------------------------------------------------------------------------------------
# taxonomy tree


_CHILD_KEYS = {"order": "families", "family": "genera", "genus": "species"}


@dataclass(frozen=True)
class SynthTree:
    """The generated taxonomy: names per rank, each taxon's parent index, and species abundances."""

    names: dict[str, list[str]]
    parent: dict[str, np.ndarray]  # level -> index into the level above (for family, genus, species)
    abundance: np.ndarray  # species sampling probabilities, summing to 1

    def lineage_ids(self, species: np.ndarray) -> np.ndarray:
        """Species indices [N] -> per-level taxon indices [N, 4] (order, family, genus, species)."""
        ids = [np.asarray(species)]
        for level in LEVELS[:0:-1]:
            ids.append(self.parent[level][ids[-1]])
        return np.stack(ids[::-1], axis=1)

    def to_json(self) -> dict:
        """Taxonomy-compatible names and parents, plus the nested tree with abundances."""
        parents = {
            lvl: {name: self.names[up][p] for name, p in zip(self.names[lvl], self.parent[lvl])}
            for up, lvl in zip(LEVELS, LEVELS[1:])
        }
        return {
            "levels": list(LEVELS),
            "names": {lvl: sorted(self.names[lvl]) for lvl in LEVELS},
            "parents": parents,
            "tree": self._nested(0, None),
        }

    def _nested(self, depth: int, parent: int | None) -> list[dict]:
        level = LEVELS[depth]
        members = range(len(self.names[level])) if parent is None else np.flatnonzero(self.parent[level] == parent)
        nodes = []
        for i in members:
            node: dict = {"name": self.names[level][i]}
            if level in _CHILD_KEYS:
                node[_CHILD_KEYS[level]] = self._nested(depth + 1, int(i))
            else:
                node["abundance"] = round(float(self.abundance[i]), 8)
            nodes.append(node)
        return nodes


def _assign_parents(n_children: int, n_parents: int, rng: np.random.Generator) -> np.ndarray:
    """Give every parent at least one child and share the rest unevenly; sorted so siblings are adjacent."""
    weights = rng.dirichlet(np.full(n_parents, 1.5))
    extra = rng.choice(n_parents, size=n_children - n_parents, p=weights)
    return np.sort(np.concatenate([np.arange(n_parents), extra]))


def build_tree(config: SynthConfig) -> SynthTree:
    """The random taxonomy of ``config`` (depends only on the seed and the taxon counts)."""
    rng = _rng(config.seed, _TREE)
    taken: set[str] = set()
    orders = _unique(rng, config.orders, lambda: _order_name(rng), taken)
    families = _unique(rng, config.families, lambda: _family_name(rng), taken)
    genera = _unique(rng, config.genera, lambda: _genus_name(rng), taken)
    parent = {
        "family": _assign_parents(config.families, config.orders, rng),
        "genus": _assign_parents(config.genera, config.families, rng),
        "species": _assign_parents(config.species, config.genera, rng),
    }
    # Epithets may repeat across genera, as in nature; binomials are unique.
    binomials: list[str] = []
    seen: set[str] = set()
    while len(binomials) < config.species:
        name = f"{genera[parent['species'][len(binomials)]]} {_epithet(rng)}"
        if name not in seen:
            seen.add(name)
            binomials.append(name)
    abundance = rng.lognormal(0.0, config.abundance_sigma, size=config.species)
    names = {"order": orders, "family": families, "genus": genera, "species": binomials}
    return SynthTree(names, parent, abundance / abundance.sum())


# ----------------------------------------------------------------------------------------------------
# specimens and labels


def sample_species(tree: SynthTree, n: int, seed: int) -> np.ndarray:
    """The species of ``n`` specimens: every species once when ``n`` allows, the rest long-tailed."""
    rng = _rng(seed, _SPECIMENS)
    n_species = len(tree.abundance)
    base = np.arange(n_species) if n >= n_species else np.arange(0)
    rest = rng.choice(n_species, size=n - len(base), p=tree.abundance)
    return rng.permutation(np.concatenate([base, rest]))


def known_depth(n: int, config: SynthConfig) -> np.ndarray:
    """Deepest labelled rank per specimen (0 = order .. 3 = species), hiding from the finest rank up.

    One uniform draw per specimen against the per-rank fractions makes the hiding monotone (no genus
    without a family) while each rank keeps its configured labelled fraction.
    """
    u = _rng(config.seed, _LABELS).random(n)
    thresholds = np.array([config.family_known, config.genus_known, config.species_known])
    return (u[:, None] < thresholds[None, :]).sum(axis=1)
