"""BIOSCAN data: metadata readers, image stores, augmentations, the specimen dataset and batch construction.

One concern per module; everything public is re-exported here, so ``from train.data import X`` is the import to use:

- :mod:`train.data.readers`: metadata formats -> one normalised frame (:func:`read_metadata`, :data:`COLUMNS`),
  :func:`specimen_ids`, :func:`encode_labels`;
- :mod:`train.data.images`: image stores (:class:`HDF5Images`, :class:`FolderImages`, :func:`open_images`);
- :mod:`train.data.transforms`: :func:`train_transform` and :func:`eval_transform`;
- :mod:`train.data.dataset`: :class:`SpecimenDataset` and its collate;
- :mod:`train.data.sampler`: :class:`HierarchicalBatchSampler`, batches of relatives for HiR;
- :mod:`train.data.split`: :func:`closed_set_split`;
- :mod:`train.data.clibd_split`: CLIBD's open-set partition (:func:`clibd_partition`, :func:`load_partition`).
"""

from __future__ import annotations

from train.data.clibd_split import clibd_partition, load_partition, read_partition, write_partition
from train.data.dataset import SpecimenDataset, collate_specimens, make_collate
from train.data.images import FolderImages, HDF5Images, ImageStore, open_images
from train.data.readers import COLUMNS, FORMATS, encode_labels, read_metadata, sniff_format, specimen_ids
from train.data.sampler import HierarchicalBatchSampler, hierarchical_groups
from train.data.split import closed_set_split
from train.data.transforms import CLIP_MEAN, CLIP_STD, eval_transform, train_transform

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "COLUMNS",
    "FORMATS",
    "FolderImages",
    "HDF5Images",
    "HierarchicalBatchSampler",
    "ImageStore",
    "SpecimenDataset",
    "clibd_partition",
    "closed_set_split",
    "collate_specimens",
    "encode_labels",
    "eval_transform",
    "hierarchical_groups",
    "load_partition",
    "make_collate",
    "open_images",
    "read_metadata",
    "read_partition",
    "sniff_format",
    "specimen_ids",
    "train_transform",
    "write_partition",
]
