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
hierarchy); and drawn insect photographs whose signal lives at a spatial scale set by the rank: the
order in the silhouette and body plan, the family in colours and a coarse pattern, the genus in a fine
texture and the species in its period, tiny spots and wing venation, with pose, size, lighting and dust
varying per photo. A blur therefore removes species before order, as on real photographs.

Everything is derived from the seed through separate :class:`numpy.random.SeedSequence` streams
(one per part, and one per specimen for images), so the output is identical for any worker count,
and the taxonomy, its barcodes and its looks do not change with the number of specimens.

The package is split by concern: :mod:`~train.synthetic.config` (what to generate, seeded streams),
:mod:`~train.synthetic.tree` (taxonomy, abundances, labels), :mod:`~train.synthetic.dna` (barcodes),
:mod:`~train.synthetic.looks`, :mod:`~train.synthetic.drawing` and :mod:`~train.synthetic.images` (photographs),
:mod:`~train.synthetic.writer` (:func:`generate`) and :mod:`~train.synthetic.cli` (the ``synth`` subcommand);
the public names are re-exported here.
"""

from __future__ import annotations

from train.synthetic.cli import add_arguments, config_from_args, run
from train.synthetic.config import FORMAT_VERSION, HDF5_GROUP, METADATA_COLUMNS, TRUTH_COLUMNS, SynthConfig
from train.synthetic.dna import barcode_strings, evolve_taxa, specimen_barcodes
from train.synthetic.drawing import draw_specimen
from train.synthetic.images import render_image, render_images
from train.synthetic.looks import FamilyLook, GenusTexture, Look, OrderPlan, SpeciesDetail, build_looks
from train.synthetic.tree import SynthTree, build_tree, known_depth, sample_species
from train.synthetic.writer import generate

__all__ = [
    "FORMAT_VERSION",
    "HDF5_GROUP",
    "METADATA_COLUMNS",
    "TRUTH_COLUMNS",
    "FamilyLook",
    "GenusTexture",
    "Look",
    "OrderPlan",
    "SpeciesDetail",
    "SynthConfig",
    "SynthTree",
    "add_arguments",
    "barcode_strings",
    "build_looks",
    "build_tree",
    "config_from_args",
    "draw_specimen",
    "evolve_taxa",
    "generate",
    "known_depth",
    "render_image",
    "render_images",
    "run",
    "sample_species",
    "specimen_barcodes",
]
