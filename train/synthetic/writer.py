"""Writing a benchmark: metadata.tsv, truth.tsv, tree.json and images.hdf5 (see the package docstring), and
clibd_split.tsv, CLIBD's open-set partition of the records (:mod:`train.data.clibd_split`; a side file, so
metadata.tsv keeps the BIOSCAN-1M columns)."""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

import h5py
import numpy as np

from hirviz.taxonomy import LEVELS, NOT_CLASSIFIED
from train.data.clibd_split import DEFAULT_MIN_RECORDS, SIDE_FILE, clibd_partition, write_partition
from train.data.readers import read_metadata
from train.synthetic.config import FORMAT_VERSION, HDF5_GROUP, METADATA_COLUMNS, TRUTH_COLUMNS, SynthConfig
from train.synthetic.dna import barcode_strings, evolve_taxa, specimen_barcodes
from train.synthetic.images import render_images
from train.synthetic.looks import build_looks
from train.synthetic.tree import SynthTree, build_tree, known_depth, sample_species

log = logging.getLogger(__name__)


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


def generate(out_dir: str | os.PathLike, config: SynthConfig | None = None,
             clibd_min_records: int = DEFAULT_MIN_RECORDS) -> Path:
    """Write a synthetic benchmark (metadata.tsv, images.hdf5, tree.json, truth.tsv, clibd_split.tsv) into ``out_dir``.

    ``clibd_split.tsv`` is CLIBD's partition of the labelled records (seeded by ``config.seed``; species with at
    least ``clibd_min_records`` records can be seen).

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
    metadata = read_metadata(out / "metadata.tsv")  # the partition follows the labels a user sees, not the truth
    write_partition(out / SIDE_FILE, metadata, clibd_partition(metadata, config.seed, clibd_min_records))
    _write_tsv(out / "truth.tsv", TRUTH_COLUMNS, ([s, *names] for s, names in zip(sampleids, true_names)))
    meta = {"format_version": FORMAT_VERSION, "generator": "train.synthetic",
            "config": {k: v for k, v in asdict(config).items() if k != "workers"}, **tree.to_json()}
    (out / "tree.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")

    _write_images(out / "images.hdf5", image_files, render_images(build_looks(tree, config), species, config))
    log.info("wrote %d specimens to %s", n, out)
    return out
