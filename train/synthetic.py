"""A synthetic benchmark in the BIOSCAN-1M file format.

``python -m train synth --out DIR --specimens N --seed S`` writes

- ``DIR/metadata.tsv``: the BIOSCAN-1M columns ``sampleid processid order family genus species nucraw
  image_file``, unknown ranks written ``not_classified``;
- ``DIR/images.hdf5``: group ``bioscan_dataset``, one uint8 dataset of JPEG bytes per ``image_file``;
- ``DIR/tree.json``: the whole taxonomy (readable by :meth:`hirviz.taxonomy.Taxonomy.load`), with the
  nested tree, the species abundances and the generating config;
- ``DIR/truth.tsv``: every specimen's full true lineage, including the ranks hidden in the metadata.

The data have the structure that makes the real problem interesting, at any size and on a CPU: a
random taxonomy with long-tailed species abundances; labels that stop at order, family, genus or
species like BIOSCAN's; COI-like barcodes evolved down the tree (so DNA distance follows the
hierarchy); and drawn insect photographs whose body plan comes from the order, colours from the
family, pattern from the genus and small details from the species.

Everything is derived from the seed through separate :class:`numpy.random.SeedSequence` streams
(one per part, and one per specimen for images), so the output is identical for any worker count,
and the taxonomy, its barcodes and its looks do not change with the number of specimens.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import h5py
import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from hirviz.taxonomy import LEVELS, NOT_CLASSIFIED

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
METADATA_COLUMNS = ("sampleid", "processid", "order", "family", "genus", "species", "nucraw", "image_file")
TRUTH_COLUMNS = ("sampleid", "order", "family", "genus", "species")
HDF5_GROUP = "bioscan_dataset"

# SeedSequence spawn keys: one independent stream per part of the generator, so that e.g. drawing
# more specimens never changes the taxonomy or the species' barcodes.
_TREE, _SPECIMENS, _LABELS, _NODE_DNA, _SPECIMEN_DNA, _ARTEFACTS, _LOOKS, _IMAGE = range(8)


# ----------------------------------------------------------------------------------------------------
# configuration


@dataclass
class SynthConfig:
    """What to generate. The defaults give a BIOSCAN-like benchmark of a size a CPU can train on."""

    specimens: int = 2000
    seed: int = 0
    # taxonomy size (number of taxa at each rank; each rank needs at least as many as the one above)
    orders: int = 5
    families: int = 20
    genera: int = 60
    species: int = 200
    # fraction of specimens labelled at each rank (order is always known); BIOSCAN-1M-like
    family_known: float = 0.85
    genus_known: float = 0.50
    species_known: float = 0.20
    # sigma of the lognormal species abundances: larger = longer tail
    abundance_sigma: float = 1.3
    # barcodes: fraction of sites changed from the parent at order, family, genus, species
    barcode_length: int = 658
    divergence: tuple[float, float, float, float] = (0.15, 0.10, 0.06, 0.03)
    intraspecific: float = 0.005
    shared_barcodes: float = 0.1  # fraction of species carrying a sister species' barcode
    truncated_fraction: float = 0.05
    ambiguous_fraction: float = 0.03
    # images: BIOSCAN's cropped_256 are 256 px high and about 4:3
    image_height: int = 256
    jpeg_quality: int = 90
    workers: int | None = None  # image processes; None = CPU count. Never changes the output.

    def validate(self) -> None:
        """Raise ``ValueError`` for settings that cannot give a consistent benchmark."""
        counts = [self.orders, self.families, self.genera, self.species]
        if min(counts) < 1 or counts != sorted(counts):
            raise ValueError(f"need 1 <= orders <= families <= genera <= species, got {counts}")
        known = [1.0, self.family_known, self.genus_known, self.species_known]
        if not all(0.0 <= k <= 1.0 for k in known) or known != sorted(known, reverse=True):
            raise ValueError(f"need 1 >= family_known >= genus_known >= species_known >= 0, got {known[1:]}")
        if self.specimens < 1:
            raise ValueError("specimens must be at least 1")
        if len(self.divergence) != len(LEVELS) or not all(0.0 <= d < 0.5 for d in self.divergence):
            raise ValueError(f"divergence needs {len(LEVELS)} values in [0, 0.5), got {self.divergence}")
        if not 0.0 <= self.intraspecific < 0.5:
            raise ValueError("intraspecific must be in [0, 0.5)")
        if not 0.0 <= self.shared_barcodes <= 1.0:
            raise ValueError("shared_barcodes must be in [0, 1]")
        if self.barcode_length < 100:
            raise ValueError("barcode_length must be at least 100")
        if self.image_height < 16:
            raise ValueError("image_height must be at least 16")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError("jpeg_quality must be in 1..100")


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


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


# ----------------------------------------------------------------------------------------------------
# DNA barcodes

_BASES = np.frombuffer(b"ACGTN", dtype=np.uint8)
_N = 4
# A C G T composition at codon positions 1, 2, 3: insect COI is AT-rich, most of all at third positions.
_COMPOSITION = np.array([
    [0.30, 0.16, 0.24, 0.30],
    [0.18, 0.24, 0.16, 0.42],
    [0.43, 0.08, 0.05, 0.44],
])
_CODON_RATE = np.array([1.0, 0.3, 4.5])  # third positions evolve several times faster
_KAPPA = 2.0  # A<->G and C<->T substitutions (transitions) are commoner than transversions


def _substitution_tables() -> tuple[np.ndarray, np.ndarray]:
    """Per codon position: the HKY jump probabilities [3, 4, 4] and the relative rate of leaving each base [3, 4].

    Leaving base i for j at a rate proportional to composition(j) times kappa for transitions keeps the
    AT-rich composition stationary however many substitutions pile up at a site.
    """
    exchange = np.ones((4, 4)) - np.eye(4)
    exchange[[0, 2, 1, 3], [2, 0, 3, 1]] = _KAPPA
    rates = _COMPOSITION[:, None, :] * exchange[None, :, :]
    leave = rates.sum(axis=2)
    mean_leave = (_COMPOSITION * leave).sum(axis=1, keepdims=True)
    return rates / leave[..., None], leave / mean_leave


_JUMP, _LEAVE = _substitution_tables()


def _site_rates(length: int, rng: np.random.Generator) -> np.ndarray:
    """Relative substitution rate per site: codon position times a gamma factor (mean 1)."""
    return _CODON_RATE[np.arange(length) % 3] * rng.gamma(0.8, 1 / 0.8, size=length)


def _change_probabilities(divergence: np.ndarray, rates: np.ndarray) -> np.ndarray:
    """Per-row, per-site change probabilities [R, L] whose row means equal ``divergence`` [R].

    Sites change with probability 1 - exp(-lam * rate); ``lam`` is found by bisection so that the
    expected fraction of changed sites is the requested divergence (fast sites saturate first).
    """
    lo, hi = np.zeros_like(divergence), np.full_like(divergence, 50.0)
    for _ in range(40):
        mid = (lo + hi) / 2
        too_much = (1 - np.exp(-mid[:, None] * rates[None, :])).mean(axis=1) > divergence
        hi, lo = np.where(too_much, mid, hi), np.where(too_much, lo, mid)
    return 1 - np.exp(-lo[:, None] * rates[None, :])


def _stop_codons(seqs: np.ndarray) -> np.ndarray:
    """Boolean [R, L // 3]: codon is TAA or TAG (stops in the invertebrate mitochondrial code)."""
    codons = seqs[:, : seqs.shape[1] // 3 * 3].reshape(len(seqs), -1, 3)
    return (codons[..., 0] == 3) & (codons[..., 1] == 0) & ((codons[..., 2] == 0) | (codons[..., 2] == 2))


def _mutate(parents: np.ndarray, probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Substitute sites of ``parents`` [R, L] with probabilities ``probs`` ([R, L] or [L]).

    ``probs`` is the expected fraction of changed sites at the stationary composition; the chance of a
    change is scaled by how readily the current base is left, and the new base is drawn from the HKY jump
    probabilities. A change that creates a stop codon is undone, as purifying selection would.
    """
    child = parents.copy()
    codon_pos = np.arange(parents.shape[1]) % 3
    change = rng.random(parents.shape) < probs * _LEAVE[codon_pos, parents]
    rows, cols = np.nonzero(change)
    cumulative = np.cumsum(_JUMP[cols % 3, parents[rows, cols]], axis=1)
    new = (rng.random(len(rows))[:, None] > cumulative).sum(axis=1)
    child[rows, cols] = np.minimum(new, 3).astype(np.uint8)
    stops = _stop_codons(child)
    if stops.any():
        body = child[:, : stops.shape[1] * 3].reshape(len(child), -1, 3)
        body[stops] = parents[:, : stops.shape[1] * 3].reshape(len(child), -1, 3)[stops]
    return child


def _root_sequence(length: int, rng: np.random.Generator) -> np.ndarray:
    """An AT-rich ancestral barcode without in-frame stop codons."""
    cumulative = np.cumsum(_COMPOSITION, axis=1)[np.arange(length) % 3]
    seq = (rng.random(length)[:, None] > cumulative).sum(axis=1).astype(np.uint8)[None, :]
    while (stops := _stop_codons(seq)).any():
        codon = np.flatnonzero(stops[0])[:, None] * 3 + np.arange(3)
        seq[0, codon] = (rng.random(codon.shape)[..., None] > cumulative[codon]).sum(axis=-1)
    return seq


def evolve_taxa(tree: SynthTree, config: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Consensus barcodes of every species [S, L] (codes 0-3 for ACGT) and the per-site rates [L].

    Each taxon is its parent's sequence with a fraction of sites changed; that fraction is the rank's
    divergence times a per-taxon lognormal factor, so some sister taxa are close and some distant.
    """
    rng = _rng(config.seed, _NODE_DNA)
    rates = _site_rates(config.barcode_length, rng)
    seqs = _root_sequence(config.barcode_length, rng)
    parent_index = {"order": np.zeros(config.orders, dtype=int), **tree.parent}
    # Species vary most, so that a few are cryptic (barely apart from a sister) as in real barcodes.
    for level, divergence, sigma in zip(LEVELS, config.divergence, (0.3, 0.35, 0.4, 0.7)):
        up = parent_index[level]
        per_taxon = divergence * rng.lognormal(-sigma**2 / 2, sigma, size=len(up))
        seqs = _mutate(seqs[up], _change_probabilities(np.minimum(per_taxon, 0.45), rates), rng)
    return _share_barcodes(seqs, tree.parent["species"], config.shared_barcodes, rng), rates


def _share_barcodes(seqs: np.ndarray, genus: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Give a ``fraction`` of species the consensus barcode of a congener.

    Some real sister species share barcodes (recent splits, introgression); without this, barcodes
    would identify every species almost perfectly, which real ones do not.
    """
    seqs = seqs.copy()
    takers = np.flatnonzero(rng.random(len(seqs)) < fraction)
    donors = np.full(len(takers), -1)
    for k, s in enumerate(takers):
        congeners = np.flatnonzero((genus == genus[s]) & (np.arange(len(genus)) != s))
        if len(congeners):
            donors[k] = rng.choice(congeners)
    keep = donors >= 0
    seqs[takers[keep]] = seqs[donors[keep]]
    return seqs


def specimen_barcodes(species_seqs: np.ndarray, rates: np.ndarray, species: np.ndarray,
                      config: SynthConfig, chunk: int = 8192) -> np.ndarray:
    """Per-specimen barcodes [N, L]: the species consensus plus small intraspecific variation."""
    rng = _rng(config.seed, _SPECIMEN_DNA)
    probs = _change_probabilities(np.array([config.intraspecific]), rates)[0]
    out = np.empty((len(species), species_seqs.shape[1]), dtype=np.uint8)
    for start in range(0, len(species), chunk):
        rows = species[start : start + chunk]
        out[start : start + len(rows)] = _mutate(species_seqs[rows], probs, rng)
    return out


def barcode_strings(codes: np.ndarray, config: SynthConfig) -> list[str]:
    """Barcodes as text, with BIOSCAN-like artefacts: some reads shorter, some with a few ``N``."""
    rng = _rng(config.seed, _ARTEFACTS)
    n, length = codes.shape
    codes = codes.copy()
    ambiguous = np.flatnonzero(rng.random(n) < config.ambiguous_fraction)
    for row in ambiguous:
        codes[row, rng.choice(length, size=int(rng.integers(1, 9)), replace=False)] = _N
    start, stop = np.zeros(n, dtype=int), np.full(n, length)
    truncated = rng.random(n) < config.truncated_fraction
    trim = rng.integers(20, length // 2, size=n)
    front = (trim * rng.random(n)).astype(int)
    start[truncated], stop[truncated] = front[truncated], (length - (trim - front))[truncated]
    text = _BASES[codes]
    return [text[i, start[i] : stop[i]].tobytes().decode("ascii") for i in range(n)]


# ----------------------------------------------------------------------------------------------------
# looks: what each taxon contributes to a picture

Color = tuple[int, int, int]

# Insect-like body colours: blacks, browns, tans, yellows, oranges, rusts, an olive and a green.
_PALETTE: tuple[Color, ...] = (
    (28, 24, 22), (58, 50, 46), (74, 48, 30), (118, 64, 34), (146, 98, 56), (192, 152, 96),
    (214, 188, 112), (222, 188, 62), (210, 120, 46), (160, 62, 36), (112, 114, 58), (78, 122, 72),
)
_DARK_ACCENTS: tuple[Color, ...] = ((20, 18, 16), (52, 32, 22), (70, 30, 24))
_LIGHT_ACCENTS: tuple[Color, ...] = ((236, 214, 140), (240, 232, 206), (232, 170, 70), (200, 210, 120))
_PATTERNS = ("bands", "stripe", "spots", "tip", "saddle", "lateral", "plain")


@dataclass(frozen=True)
class OrderPlan:
    """Body plan of an order; lengths relative to the body length, angles in degrees."""

    archetype: str
    head: tuple[float, float]  # length, width
    thorax: tuple[float, float]
    waist: float  # petiole length (0 = none)
    abdomen: tuple[float, float]
    segments: int
    taper: float  # 0 = blunt abdomen tip, 1 = pointed
    wings: str  # none | clear | double | scaled | elytra | hemi
    wing: tuple[float, float]  # length, width
    spread: float  # wing angle away from the body axis
    antenna: float
    elbowed: bool
    legs: float
    leg_width: float
    eye: float  # eye radius relative to head width


_ARCHETYPES: tuple[OrderPlan, ...] = (
    OrderPlan("fly", head=(0.12, 0.21), thorax=(0.28, 0.26), waist=0.0, abdomen=(0.42, 0.26), segments=5,
              taper=0.5, wings="clear", wing=(0.62, 0.21), spread=24, antenna=0.08, elbowed=False, legs=0.50,
              leg_width=0.020, eye=0.42),
    OrderPlan("beetle", head=(0.10, 0.17), thorax=(0.17, 0.30), waist=0.0, abdomen=(0.62, 0.38), segments=1,
              taper=0.25, wings="elytra", wing=(0.64, 0.40), spread=0, antenna=0.30, elbowed=False, legs=0.36,
              leg_width=0.026, eye=0.22),
    OrderPlan("wasp", head=(0.11, 0.17), thorax=(0.25, 0.17), waist=0.07, abdomen=(0.45, 0.21), segments=6,
              taper=0.85, wings="double", wing=(0.56, 0.15), spread=18, antenna=0.40, elbowed=True, legs=0.52,
              leg_width=0.016, eye=0.30),
    OrderPlan("moth", head=(0.09, 0.14), thorax=(0.22, 0.18), waist=0.0, abdomen=(0.55, 0.15), segments=7,
              taper=0.5, wings="scaled", wing=(0.60, 0.36), spread=38, antenna=0.34, elbowed=False, legs=0.32,
              leg_width=0.014, eye=0.30),
    OrderPlan("midge", head=(0.07, 0.11), thorax=(0.20, 0.15), waist=0.0, abdomen=(0.73, 0.09), segments=9,
              taper=0.3, wings="clear", wing=(0.44, 0.10), spread=30, antenna=0.16, elbowed=False, legs=0.78,
              leg_width=0.010, eye=0.34),
    OrderPlan("bug", head=(0.12, 0.18), thorax=(0.20, 0.32), waist=0.0, abdomen=(0.60, 0.34), segments=1,
              taper=0.35, wings="hemi", wing=(0.66, 0.30), spread=5, antenna=0.32, elbowed=False, legs=0.42,
              leg_width=0.020, eye=0.26),
    OrderPlan("wingless", head=(0.12, 0.20), thorax=(0.22, 0.22), waist=0.0, abdomen=(0.62, 0.20), segments=8,
              taper=0.6, wings="none", wing=(0.0, 0.0), spread=0, antenna=0.45, elbowed=False, legs=0.30,
              leg_width=0.022, eye=0.20),
)


@dataclass(frozen=True)
class FamilyLook:
    """Colours and proportions shared by a family."""

    body: Color
    secondary: Color
    legs: Color
    wing_tint: tuple[int, int, int, int]  # RGBA of membranous wings, or the colour of opaque ones
    length_scale: float
    width_scale: float
    head_scale: float


@dataclass(frozen=True)
class GenusPattern:
    """A colour pattern shared by a genus."""

    kind: str
    color: Color
    size: float


@dataclass(frozen=True)
class SpeciesDetail:
    """Small species marks: a tint, a pair of dots, wing venation and appendage proportions."""

    tint: tuple[int, int, int]
    mark_part: str  # thorax | abdomen | head
    mark_offset: tuple[float, float]  # along the part, across it (relative)
    mark_size: float
    mark_color: Color
    veins: int
    antenna_scale: float
    leg_scale: float


@dataclass(frozen=True)
class Look:
    """Everything that fixes what a species looks like."""

    plan: OrderPlan
    family: FamilyLook
    pattern: GenusPattern
    detail: SpeciesDetail


def _jitter(rng: np.random.Generator, value: float, spread: float = 0.1) -> float:
    return float(value * rng.uniform(1 - spread, 1 + spread))


def _order_plan(index: int, rng: np.random.Generator) -> OrderPlan:
    """Order ``index`` takes the next archetype, its proportions perturbed.

    Past the seventh order archetypes repeat, each time perturbed more, so that orders stay
    distinguishable (if less so than the first seven).
    """
    base = _ARCHETYPES[index % len(_ARCHETYPES)]
    amount = 0.1 + 0.15 * (index // len(_ARCHETYPES))

    def pair(p: tuple[float, float]) -> tuple[float, float]:
        return _jitter(rng, p[0], amount), _jitter(rng, p[1], amount)

    return replace(
        base, head=pair(base.head), thorax=pair(base.thorax), waist=_jitter(rng, base.waist, amount),
        abdomen=pair(base.abdomen), segments=base.segments + int(rng.integers(-1, 2)) if base.segments > 1 else 1,
        taper=float(np.clip(base.taper + rng.normal(0, 0.08), 0, 0.95)), wing=pair(base.wing),
        spread=_jitter(rng, base.spread, 0.2), antenna=_jitter(rng, base.antenna, 0.2),
        legs=_jitter(rng, base.legs, amount), leg_width=_jitter(rng, base.leg_width), eye=_jitter(rng, base.eye),
    )


def _byte(value: float) -> int:
    return int(min(255.0, max(0.0, value)))


def _shade(color: Sequence[float], factor: float) -> Color:
    return tuple(_byte(c * factor) for c in color)  # type: ignore[return-value]


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> Color:
    return tuple(_byte(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]


def _vary(color: Color, rng: np.random.Generator, amount: float) -> Color:
    return tuple(_byte(c + v) for c, v in zip(color, rng.normal(0, amount, size=3)))  # type: ignore[return-value]


def _family_look(palette_index: int, rng: np.random.Generator) -> FamilyLook:
    body = _vary(_PALETTE[palette_index % len(_PALETTE)], rng, 8)
    other = _PALETTE[int(rng.integers(len(_PALETTE)))]
    if rng.random() < 0.6:
        secondary = _mix(body, other, float(rng.uniform(0.3, 0.8)))
    else:
        secondary = _shade(body, rng.uniform(0.6, 1.3))
    legs = _mix(body, (200, 170, 110), float(rng.uniform(0.0, 0.6)))
    if rng.random() < 0.6:
        tint = (228, 232, 236, int(rng.integers(55, 95)))  # clear, slightly milky
    else:
        tint = (*_mix((120, 100, 80), body, 0.4), int(rng.integers(90, 140)))  # smoky or tinted
    scales = _jitter(rng, 1.0, 0.15), _jitter(rng, 1.0, 0.18), _jitter(rng, 1.0, 0.12)
    return FamilyLook(body, secondary, legs, tint, *scales)


def _genus_pattern(kind: str, body: Color, rng: np.random.Generator) -> GenusPattern:
    dark_body = sum(body) < 330
    accents = _LIGHT_ACCENTS if dark_body else _DARK_ACCENTS
    color = _vary(accents[int(rng.integers(len(accents)))], rng, 6)
    return GenusPattern(kind, color, float(rng.uniform(0.7, 1.3)))


def _species_detail(rng: np.random.Generator) -> SpeciesDetail:
    light = bool(rng.random() < 0.5)
    return SpeciesDetail(
        tint=tuple(int(v) for v in rng.integers(-14, 15, size=3)),  # type: ignore[arg-type]
        mark_part=("thorax", "abdomen", "head")[int(rng.integers(3))],
        mark_offset=(float(rng.uniform(-0.3, 0.3)), float(rng.uniform(0.15, 0.45))),
        mark_size=float(rng.uniform(0.025, 0.05)),
        mark_color=(235, 225, 190) if light else (25, 20, 18),
        veins=int(rng.integers(2, 6)),
        antenna_scale=_jitter(rng, 1.0, 0.15),
        leg_scale=_jitter(rng, 1.0, 0.1),
    )


def build_looks(tree: SynthTree, config: SynthConfig) -> list[Look]:
    """One :class:`Look` per species; siblings get distinct colours (families) and patterns (genera)."""
    rng = _rng(config.seed, _LOOKS)
    plans = [_order_plan(i, rng) for i in range(config.orders)]
    families: list[FamilyLook] = []
    palette_order = {o: rng.permutation(len(_PALETTE)) for o in range(config.orders)}
    for f, o in enumerate(tree.parent["family"]):
        rank_in_order = int((tree.parent["family"][:f] == o).sum())
        families.append(_family_look(int(palette_order[o][rank_in_order % len(_PALETTE)]), rng))
    patterns: list[GenusPattern] = []
    pattern_order = {f: rng.permutation(len(_PATTERNS)) for f in range(config.families)}
    for g, f in enumerate(tree.parent["genus"]):
        rank_in_family = int((tree.parent["genus"][:g] == f).sum())
        kind = _PATTERNS[pattern_order[f][rank_in_family % len(_PATTERNS)]]
        patterns.append(_genus_pattern(kind, families[f].body, rng))
    lineage = tree.lineage_ids(np.arange(config.species))
    return [
        Look(plans[o], families[f], patterns[g], _species_detail(rng)) for o, f, g, _ in lineage.tolist()
    ]


# ----------------------------------------------------------------------------------------------------
# drawing

_SUPERSAMPLE = 2  # draw at twice the size and reduce: cheap anti-aliasing
_CIRCLE = np.exp(2j * np.pi * np.arange(24) / 24)


class _Canvas:
    """Draws shapes given in the insect's own frame (x forward, y to its left, body length 1)."""

    def __init__(self, image: Image.Image, center: tuple[float, float], length: float, angle: float) -> None:
        self.draw = ImageDraw.Draw(image, "RGBA")
        self.center = complex(*center)
        self.rot = length * np.exp(1j * angle)
        self.length = length

    def from_image(self, offset: complex) -> complex:
        """An offset fixed in the picture (x right, y down; body lengths) in the insect's frame."""
        return offset * self.length / self.rot

    def _px(self, z: np.ndarray) -> list[float]:
        # complex128 viewed as float64 pairs is exactly PIL's flat [x0, y0, x1, y1, ...]
        return np.ascontiguousarray(self.center + self.rot * np.asarray(z, dtype=complex)).view(np.float64).tolist()

    def ellipse(self, x: float, y: float, rx: float, ry: float, fill: Sequence[int], angle: float = 0.0,
                outline: Sequence[int] | None = None) -> None:
        z = complex(x, y) + (rx * _CIRCLE.real + 1j * ry * _CIRCLE.imag) * np.exp(1j * np.radians(angle))
        self.draw.polygon(self._px(z), fill=tuple(fill), outline=None if outline is None else tuple(outline))

    def line(self, points: Sequence[complex], width: float, fill: Sequence[int]) -> None:
        self.draw.line(self._px(np.asarray(points)), fill=tuple(fill), width=max(1, round(width * self.length)),
                       joint="curve")


@dataclass(frozen=True)
class _Body:
    """Where the parts of one specimen lie along its axis (relative units, head at +x)."""

    head_x: float
    head: tuple[float, float]  # half length, half width
    thorax_x: float
    thorax: tuple[float, float]
    waist_x: float
    waist: float
    abdomen_start: float
    abdomen: tuple[float, float]  # length, half width


def _layout(plan: OrderPlan, family: FamilyLook, stretch: float) -> _Body:
    """Stack head, thorax, waist and abdomen along the axis and scale the whole to length 1."""
    hl, hw = plan.head[0], plan.head[1] * family.head_scale
    tl, tw = plan.thorax[0], plan.thorax[1] * family.width_scale
    al, aw = plan.abdomen[0] * family.length_scale * stretch, plan.abdomen[1] * family.width_scale
    total = hl + tl + plan.waist + al
    s = 1.0 / total
    front = 0.5
    return _Body(
        head_x=front - hl * s / 2, head=(hl * s / 2, hw * s / 2),
        thorax_x=front - (hl + tl / 2) * s, thorax=(tl * s / 2 * 1.08, tw * s / 2),
        waist_x=front - (hl + tl + plan.waist / 2) * s, waist=plan.waist * s / 2,
        abdomen_start=front - (hl + tl + plan.waist) * s, abdomen=(al * s, aw * s / 2),
    )


@dataclass(frozen=True)
class _Pose:
    """Per-specimen variation that says nothing about the taxon."""

    leg_angles: np.ndarray  # [3 pairs, 2 sides, 2 joints] degrees of jitter
    antenna_angles: np.ndarray  # [2]
    spread: float
    missing_legs: frozenset[int]
    tint: np.ndarray  # [3]


def _tinted(color: Sequence[int], tint: Sequence[float]) -> Color:
    return tuple(_byte(c + t) for c, t in zip(color, tint))  # type: ignore[return-value]


def _draw_legs(cv: _Canvas, look: Look, body: _Body, pose: _Pose) -> None:
    # femur and tibia directions (degrees from the forward axis) of the front, middle and hind legs
    femur, tibia = (50.0, 88.0, 122.0), (22.0, 118.0, 152.0)
    length = look.plan.legs * look.detail.leg_scale
    color = _tinted(look.family.legs, pose.tint)
    for pair, (f_deg, t_deg, share) in enumerate(zip(femur, tibia, (0.8, 0.9, 1.1))):
        base_x = body.thorax_x + body.thorax[0] * (0.35 - 0.35 * pair)
        for side, sign in enumerate((1.0, -1.0)):
            if pair * 2 + side in pose.missing_legs:
                continue
            jf, jt = pose.leg_angles[pair, side]
            base = complex(base_x, sign * body.thorax[1] * 0.5)
            knee = base + 0.42 * length * share * np.exp(1j * sign * np.radians(f_deg + jf))
            foot = knee + 0.58 * length * share * np.exp(1j * sign * np.radians(t_deg + jt))
            cv.line([base, knee, foot], look.plan.leg_width, color)


def _draw_antennae(cv: _Canvas, look: Look, body: _Body, pose: _Pose) -> None:
    length = look.plan.antenna * look.detail.antenna_scale
    color = _shade(_tinted(look.family.legs, pose.tint), 0.8)
    front = body.head_x + body.head[0] * 0.7
    for side, sign in enumerate((1.0, -1.0)):
        base = complex(front, sign * body.head[1] * 0.35)
        angle = np.radians(28 + pose.antenna_angles[side])
        if look.plan.elbowed:
            elbow = base + 0.3 * length * np.exp(1j * sign * angle * 0.4)
            tip = elbow + 0.7 * length * np.exp(1j * sign * angle * 1.9)
            points = [base, elbow, tip]
        else:
            mid = base + 0.5 * length * np.exp(1j * sign * angle)
            points = [base, mid, mid + 0.5 * length * np.exp(1j * sign * angle * 1.35)]
        cv.line(points, look.plan.leg_width * 0.6, color)


def _wing(cv: _Canvas, base: complex, length: float, width: float, angle_deg: float, fill: Sequence[int],
          outline: Sequence[int] | None, veins: int) -> None:
    direction = np.exp(1j * np.radians(angle_deg))
    center = base + direction * length / 2
    cv.ellipse(center.real, center.imag, length / 2, width / 2, fill, angle=angle_deg, outline=outline)
    if veins and outline is not None:
        spread = np.linspace(-0.5, 0.5, veins) * np.degrees(np.arctan(width / length))
        for d in spread:
            cv.line([base, base + 0.85 * length * np.exp(1j * np.radians(angle_deg + d))], 0.004, outline)


def _draw_wings(cv: _Canvas, look: Look, body: _Body, pose: _Pose, layer: str) -> None:
    """Membranous wings lie over the body (``layer="over"``); scaled wings under it."""
    kind = look.plan.wings
    if kind == "none" or (layer == "under") != (kind == "scaled"):
        return
    length, width = look.plan.wing
    spread = look.plan.spread + pose.spread
    base_x = body.thorax_x - body.thorax[0] * 0.1
    for sign in (1.0, -1.0):
        base = complex(base_x, sign * body.thorax[1] * 0.45)
        if kind == "scaled":
            color = _tinted(look.family.secondary, pose.tint)
            _wing(cv, base, length * 0.72, width, 180 - sign * (spread + 28), _shade(color, 0.85), None, 0)
            _wing(cv, base, length, width * 0.8, 180 - sign * spread, color, _shade(color, 0.7), 0)
            band = base + 0.62 * length * np.exp(1j * np.radians(180 - sign * spread))
            cv.ellipse(band.real, band.imag, length * 0.07 * look.pattern.size, width * 0.32,
                       look.pattern.color + (200,), angle=180 - sign * spread)
        elif kind == "elytra":
            continue  # drawn as part of the body
        else:
            tint = look.family.wing_tint
            outline = (*_shade(tint[:3], 0.55), min(255, tint[3] + 90))
            if kind == "double":
                _wing(cv, base, length * 0.72, width * 0.8, 180 - sign * (spread + 14), tint, outline, 2)
            if kind == "hemi":
                _wing(cv, base, length, width, 180 - sign * spread, tint, outline, 0)
                color = _tinted(look.family.secondary, pose.tint) + (255,)
                _wing(cv, base, length * 0.62, width * 0.92, 180 - sign * spread, color, _shade(color[:3], 0.7), 0)
            else:
                _wing(cv, base, length, width, 180 - sign * spread, tint, outline, look.detail.veins)


def _abdomen_segments(body: _Body, plan: OrderPlan) -> list[tuple[float, float, float]]:
    """(centre x, half length, half width) of each abdominal segment, tip first."""
    length, half_width = body.abdomen
    n = plan.segments
    out = []
    for i in reversed(range(n)):
        t = (i + 0.5) / n
        profile = (0.75 + 0.25 * math.sin(math.pi * min(1.0, 0.25 + t))) * (1 - plan.taper * t**2)
        out.append((body.abdomen_start - t * length, length / n * (0.75 if n > 1 else 0.5), half_width * profile))
    return out


def _draw_body(cv: _Canvas, look: Look, body: _Body, pose: _Pose) -> None:
    plan, fam, pattern = look.plan, look.family, look.pattern
    main = _tinted(_tinted(fam.body, look.detail.tint), pose.tint)
    secondary = _tinted(_tinted(fam.secondary, look.detail.tint), pose.tint)
    # a soft shadow under the body, as the specimen lies on the plate
    shadow, off = (0, 0, 0, 26), cv.from_image(0.02 + 0.03j)
    cv.ellipse(body.abdomen_start - body.abdomen[0] / 2 + off.real, off.imag, body.abdomen[0] / 2,
               body.abdomen[1] * 1.1, shadow)
    cv.ellipse(body.thorax_x + off.real, off.imag, body.thorax[0], body.thorax[1] * 1.1, shadow)
    for i, (x, hl, hw) in enumerate(_abdomen_segments(body, plan)):
        banded = pattern.kind == "bands" and plan.segments > 1 and i % 2 == 1
        color = pattern.color if banded else _shade(main, 0.9 if i % 2 else 1.0)
        cv.ellipse(x, 0.0, hl, hw, color, outline=_shade(color, 0.7))
    if plan.waist > 0:
        cv.ellipse(body.waist_x, 0.0, body.waist * 1.4, body.thorax[1] * 0.25, _shade(main, 0.8))
    if plan.wings == "elytra":
        _draw_elytra(cv, body, secondary)
    _draw_pattern(cv, look, body)
    thorax_color = pattern.color if pattern.kind == "saddle" else secondary
    cv.ellipse(body.thorax_x, 0.0, body.thorax[0], body.thorax[1], thorax_color, outline=_shade(thorax_color, 0.65))
    cv.ellipse(body.head_x, 0.0, body.head[0], body.head[1], main, outline=_shade(main, 0.65))
    eye = plan.eye * body.head[1]
    for sign in (1.0, -1.0):
        cv.ellipse(body.head_x + body.head[0] * 0.15, sign * body.head[1] * 0.55, eye * 0.8, eye,
                   (110, 34, 24) if plan.archetype == "fly" else (24, 20, 18))
    # gloss: light comes from the same side of the plate for every specimen
    cv.ellipse(body.thorax_x + body.thorax[0] * 0.2, body.thorax[1] * 0.35, body.thorax[0] * 0.4, body.thorax[1] * 0.2,
               (255, 255, 255, 55))


def _draw_elytra(cv: _Canvas, body: _Body, color: Color) -> None:
    length, half_width = body.abdomen
    x = body.abdomen_start - length * 0.47
    cv.ellipse(x, 0.0, length * 0.54, half_width * 1.05, color, outline=_shade(color, 0.6))
    cv.line([complex(x + length * 0.52, 0), complex(x - length * 0.52, 0)], 0.008, _shade(color, 0.55))
    cv.ellipse(x + length * 0.1, half_width * 0.45, length * 0.3, half_width * 0.14, (255, 255, 255, 50))


def _draw_pattern(cv: _Canvas, look: Look, body: _Body) -> None:
    """The genus pattern, on the abdomen (or the elytra covering it)."""
    kind, color, size = look.pattern.kind, look.pattern.color, look.pattern.size
    length, half_width = body.abdomen
    start = body.abdomen_start
    if kind == "stripe":
        cv.ellipse(start - length * 0.45, 0.0, length * 0.45, half_width * 0.18 * size, color)
    elif kind == "spots":
        for t in (0.25, 0.55):
            for sign in (1.0, -1.0):
                cv.ellipse(start - t * length, sign * half_width * 0.45, 0.035 * size, 0.035 * size, color)
    elif kind == "tip":
        cv.ellipse(start - length * 0.85, 0.0, length * 0.17 * size, half_width * 0.55, color)
    elif kind == "lateral":
        for sign in (1.0, -1.0):
            cv.ellipse(start - length * 0.45, sign * half_width * 0.7, length * 0.38, half_width * 0.16 * size, color)
    elif kind == "bands" and look.plan.segments == 1:
        for t in (0.3, 0.62):
            cv.ellipse(start - t * length, 0.0, length * 0.05 * size, half_width * 0.95, color)


def _draw_marks(cv: _Canvas, look: Look, body: _Body) -> None:
    """The species' pair of small dots."""
    d = look.detail
    if d.mark_part == "head":
        x, half_length, half_width = body.head_x, body.head[0], body.head[1] * 0.5
    elif d.mark_part == "thorax":
        x, half_length, half_width = body.thorax_x, body.thorax[0], body.thorax[1]
    else:
        x, half_length, half_width = body.abdomen_start - body.abdomen[0] * 0.3, body.abdomen[0] * 0.3, body.abdomen[1]
    for sign in (1.0, -1.0):
        cv.ellipse(x + d.mark_offset[0] * half_length, sign * d.mark_offset[1] * half_width, d.mark_size, d.mark_size,
                   d.mark_color)


def draw_specimen(cv: _Canvas, look: Look, rng: np.random.Generator) -> None:
    """Draw one specimen of ``look`` on ``cv`` with a random pose."""
    damaged = rng.random() < 0.12  # trap specimens often lose a leg or two
    pose = _Pose(
        leg_angles=rng.normal(0, 12, size=(3, 2, 2)),
        antenna_angles=rng.normal(0, 8, size=2),
        spread=float(rng.normal(0, 6)),
        missing_legs=frozenset(rng.choice(6, size=int(rng.integers(1, 3)), replace=False).tolist() if damaged else ()),
        tint=rng.normal(0, 6, size=3),
    )
    body = _layout(look.plan, look.family, float(rng.uniform(0.92, 1.08)))
    _draw_legs(cv, look, body, pose)
    _draw_antennae(cv, look, body, pose)
    _draw_wings(cv, look, body, pose, "under")
    _draw_body(cv, look, body, pose)
    _draw_marks(cv, look, body)
    _draw_wings(cv, look, body, pose, "over")


# ----------------------------------------------------------------------------------------------------
# images

_BACKGROUNDS: dict[int, Image.Image] = {}


def _plate_background(height: int) -> Image.Image:
    """A pale well-plate bottom with faint concentric ripples and the bright rim of the well.

    Made once per process and height, larger than any picture; each picture crops it at a random offset.
    """
    if height not in _BACKGROUNDS:
        h, w = 2 * height, 3 * height
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r = np.hypot(xx - w / 2, yy - h / 2) / height
        v = 214 + 5 * np.sin(2 * np.pi * r * 5.5) * np.exp(-r) - 12 * r**2
        v += 24 * np.exp(-(((r - 0.9) / 0.06) ** 2)) - 40 * np.exp(-(((r - 0.97) / 0.012) ** 2))
        v += np.random.default_rng(0).normal(0, 1.5, size=v.shape)  # fixed grain: same in every process
        rgb = np.stack([v * 0.955, v * 0.985, v * 1.0 + 4], axis=-1)
        _BACKGROUNDS[height] = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))
    return _BACKGROUNDS[height]


def _debris(draw: ImageDraw.ImageDraw, size: tuple[int, int], rng: np.random.Generator) -> None:
    """A few fibres and specks on the plate, as in real photographs."""
    w, h = size
    for _ in range(int(rng.poisson(1.2))):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        dx, dy = rng.normal(0, h * 0.05, size=2)
        shade = int(rng.integers(90, 170))
        draw.line([x, y, x + dx, y + dy], fill=(shade, shade, shade, 140), width=max(1, h // 200))


def render_image(look: Look, height: int, quality: int, rng: np.random.Generator) -> bytes:
    """JPEG bytes of one specimen of ``look``, about 4:3 and ``height`` pixels high."""
    width = int(round(height * rng.uniform(1.1, 1.45)))
    big_h, big_w = height * _SUPERSAMPLE, width * _SUPERSAMPLE
    plate = _plate_background(big_h)
    left = int((plate.width - big_w) / 2 + rng.uniform(-0.3, 0.3) * big_w)
    top = int((plate.height - big_h) / 2 + rng.uniform(-0.3, 0.3) * big_h)
    image = plate.crop((left, top, left + big_w, top + big_h))
    center = (big_w * rng.uniform(0.42, 0.58), big_h * rng.uniform(0.42, 0.58))
    cv = _Canvas(image, center, length=big_h * float(rng.uniform(0.62, 0.9)), angle=float(rng.uniform(0, 2 * np.pi)))
    _debris(cv.draw, image.size, rng)
    draw_specimen(cv, look, rng)
    image = image.reduce(_SUPERSAMPLE)
    # Focus varies: about half the photos are sharp, some soft, a few badly blurred. A single box pass
    # costs a third of PIL's Gaussian and looks the same at these radii.
    soft, blurry = rng.random() < 0.5, rng.random() < 0.08
    if soft or blurry:
        radius = rng.uniform(0.3, 0.8) * (3.0 if blurry else 1.0) * height / 256
        image = image.filter(ImageFilter.BoxBlur(radius))
    gain = rng.uniform(0.9, 1.06) * np.array([rng.uniform(0.97, 1.03), 1.0, rng.uniform(0.97, 1.04)])
    lut = np.clip(np.arange(256)[None, :] * gain[:, None], 0, 255).astype(np.uint8).ravel().tolist()
    image = image.point(lut)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


# Worker state, set once per process by the pool initializer (or directly when running inline).
_WORKER: dict = {}


def _init_worker(looks: list[Look], seed: int, height: int, quality: int) -> None:
    _WORKER.update(looks=looks, seed=seed, height=height, quality=quality)


def _render_task(task: tuple[int, int]) -> bytes:
    index, species = task
    rng = _rng(_WORKER["seed"], _IMAGE, index)
    return render_image(_WORKER["looks"][species], _WORKER["height"], _WORKER["quality"], rng)


def render_images(looks: list[Look], species: np.ndarray, config: SynthConfig) -> Iterator[bytes]:
    """JPEG bytes of every specimen, in order; each from its own (seed, index) stream."""
    tasks = list(enumerate(species.tolist()))
    workers = config.workers or os.cpu_count() or 1
    init_args = (looks, config.seed, config.image_height, config.jpeg_quality)
    if workers <= 1 or len(tasks) < 64:
        _init_worker(*init_args)
        yield from map(_render_task, tasks)
        return
    chunk = max(8, min(256, len(tasks) // (workers * 16)))
    with multiprocessing.get_context().Pool(workers, initializer=_init_worker, initargs=init_args) as pool:
        yield from pool.imap(_render_task, tasks, chunksize=chunk)


# ----------------------------------------------------------------------------------------------------
# writing


def _write_tsv(path: Path, header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write("\t".join(header) + "\n")
        for row in rows:
            fh.write("\t".join(row) + "\n")


def _lineage_names(tree: SynthTree, ids: np.ndarray, depth: np.ndarray | None = None) -> list[list[str]]:
    """Names [N][4] of lineage ids, ranks deeper than ``depth`` written ``not_classified``."""
    columns = [np.asarray(tree.names[lvl], dtype=object)[ids[:, k]] for k, lvl in enumerate(LEVELS)]
    if depth is not None:
        for k in range(1, len(LEVELS)):
            columns[k] = np.where(depth >= k, columns[k], NOT_CLASSIFIED)
    return np.stack(columns, axis=1).tolist()


def _write_images(path: Path, keys: Sequence[str], images: Iterator[bytes]) -> None:
    started, n = time.perf_counter(), len(keys)
    with h5py.File(path, "w") as h5:
        group = h5.create_group(HDF5_GROUP)
        for i, (key, jpeg) in enumerate(zip(keys, images)):
            group.create_dataset(key, data=np.frombuffer(jpeg, dtype=np.uint8), track_times=False)
            if (i + 1) % max(1, n // 10) == 0:
                log.info("images: %d/%d (%.0f/s)", i + 1, n, (i + 1) / (time.perf_counter() - started))


def generate(out_dir: str | os.PathLike, config: SynthConfig | None = None) -> Path:
    """Write a synthetic benchmark (metadata.tsv, images.hdf5, tree.json, truth.tsv) into ``out_dir``.

    The same config gives byte-identical TSV and JSON files and identical images, whatever
    ``config.workers``. Returns the output directory.
    """
    config = config or SynthConfig()
    config.validate()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = config.specimens

    tree = build_tree(config)
    species = sample_species(tree, n, config.seed)
    lineage = tree.lineage_ids(species)
    depth = known_depth(n, config)
    species_seqs, rates = evolve_taxa(tree, config)
    barcodes = barcode_strings(specimen_barcodes(species_seqs, rates, species, config), config)

    width = max(7, len(str(n - 1)))
    sampleids = [f"SYN{i:0{width}d}" for i in range(n)]
    image_files = [f"{s}.jpg" for s in sampleids]
    shown = _lineage_names(tree, lineage, depth)
    rows = ([s, f"SYNP{i:0{width}d}-24", *names, dna, img]
            for i, (s, names, dna, img) in enumerate(zip(sampleids, shown, barcodes, image_files)))
    _write_tsv(out / "metadata.tsv", METADATA_COLUMNS, rows)
    true_names = _lineage_names(tree, lineage)
    _write_tsv(out / "truth.tsv", TRUTH_COLUMNS, ([s, *names] for s, names in zip(sampleids, true_names)))
    meta = {"format_version": FORMAT_VERSION, "generator": "train.synthetic",
            "config": {k: v for k, v in asdict(config).items() if k != "workers"}, **tree.to_json()}
    (out / "tree.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    _write_images(out / "images.hdf5", image_files, render_images(build_looks(tree, config), species, config))
    log.info("wrote %d specimens to %s", n, out)
    return out


# ----------------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``synth`` subcommand's flags (one per :class:`SynthConfig` field that users tune)."""
    d = SynthConfig()
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--specimens", type=int, default=d.specimens, help="number of specimens (default %(default)s)")
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed (default %(default)s)")
    for name in ("orders", "families", "genera", "species"):
        parser.add_argument(f"--{name}", type=int, default=getattr(d, name),
                            help=f"number of {name} (default %(default)s)")
    for level in ("family", "genus", "species"):
        parser.add_argument(f"--{level}-known", type=float, default=getattr(d, f"{level}_known"),
                            help=f"fraction of specimens labelled to {level} (default %(default)s)")
    parser.add_argument("--image-height", type=int, default=d.image_height,
                        help="image height in pixels; width is 1.1-1.45 times it (default %(default)s)")
    parser.add_argument("--jpeg-quality", type=int, default=d.jpeg_quality, help="JPEG quality (default %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="image processes (default: CPU count); the output does not depend on it")


def config_from_args(args: argparse.Namespace) -> SynthConfig:
    """The :class:`SynthConfig` of parsed ``synth`` flags."""
    names = {f.name for f in fields(SynthConfig)}
    return SynthConfig(**{k: v for k, v in vars(args).items() if k in names})


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    out = generate(args.out, config_from_args(args))
    log.info("done in %.1f s: %s", time.perf_counter() - started, out)
    return 0
