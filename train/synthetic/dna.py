"""COI-like DNA barcodes evolved down the taxonomy, so DNA distance follows the hierarchy."""

from __future__ import annotations

import numpy as np

from hirviz.taxonomy import LEVELS
from train.synthetic.config import _ARTEFACTS, _NODE_DNA, _SPECIMEN_DNA, SynthConfig, _rng
from train.synthetic.tree import SynthTree

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
