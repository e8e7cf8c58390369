"""What to generate (:class:`SynthConfig`), the output file layout, and the seeded random streams.

Every part of the generator draws from its own :class:`numpy.random.SeedSequence` stream (:func:`_rng` with a
spawn key below), so e.g. drawing more specimens never changes the taxonomy or the species' barcodes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hirviz.taxonomy import LEVELS

FORMAT_VERSION = 1
METADATA_COLUMNS = ("sampleid", "processid", "order", "family", "genus", "species", "nucraw", "image_file")
TRUTH_COLUMNS = ("sampleid", "order", "family", "genus", "species")
HDF5_GROUP = "bioscan_dataset"

# SeedSequence spawn keys: one independent stream per part of the generator, so that e.g. drawing
# more specimens never changes the taxonomy or the species' barcodes.
_TREE, _SPECIMENS, _LABELS, _NODE_DNA, _SPECIMEN_DNA, _ARTEFACTS, _LOOKS, _IMAGE = range(8)


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
