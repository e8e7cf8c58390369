"""The specimen dataset (labels, taxonomy prompt, barcode, image views) and the collate that batches it."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from hirviz.degrade import DnaNoise, box_blur, degrade_barcode
from hirviz.taxonomy import LEVELS, Taxonomy
from train.data.images import ImageStore
from train.data.noise_aware import PRESENCE_KEYS, ItemNoise, NoiseAware, draw_item_noise
from train.data.readers import COLUMNS, encode_labels
from train.data.transforms import eval_transform

logger = logging.getLogger(__name__)


class SpecimenDataset(Dataset):
    """Specimens of a normalised metadata frame, with labels, taxonomy prompt, barcode and image views.

    Args:
        frame: a frame from :func:`read_metadata` (any subset of its rows).
        images: the image store, or None to train without images.
        transform: PIL image -> tensor; applied ``views`` times independently (HiR needs two random views, so
            pass :func:`train_transform` for training). Defaults to :func:`eval_transform` at 224 px.
        views: image views per specimen.
        taxonomy: the label vocabularies; built from ``frame`` when None. Pass the training taxonomy when
            building a test set so ids agree.
        seed: when given, the augmentations of item i in epoch e are drawn from a generator seeded by
            (seed, e, i), so they do not depend on which DataLoader worker loads the item, and a resumed run sees
            the same views as an uninterrupted one. Call :meth:`set_epoch` each epoch. When None, the
            augmentations use torch's global random state.
        identical_views: draw one augmented view and repeat it ``views`` times (the authors' code gives HiR two
            identical views; the ablation compares it with independent views).
        dna_augment: when > 0, each item's barcode is degraded with :class:`hirviz.degrade.DnaNoise` scaled by a
            factor drawn uniformly from ``[0, dna_augment]``, afresh per (seed, epoch, item) (needs ``seed``).
        noise: noise-aware training (:mod:`train.data.noise_aware`; needs ``seed``, excludes ``dna_augment``):
            per (seed, epoch, item), blur the image views, degrade the barcode (as ``dna_augment`` does, at most
            ``noise.dna_scale``) or drop a modality; items then carry ``image_present`` / ``dna_present`` flags.
        dna_crop: share of items whose barcode is cut, afresh per (seed, epoch, item), to a random window of
            :data:`CROP_BP` bases (partial reads such as 313-bp mini-barcodes are then in-distribution; needs ``seed``).

    Attributes:
        labels: int64 [N, 4] rank ids, -1 unknown (what :class:`HierarchicalBatchSampler` needs).
        texts: the sorted distinct taxonomy strings; ``text_ids[i]`` indexes it.
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        images: ImageStore | None = None,
        transform: Callable[[Image.Image], torch.Tensor] | None = None,
        views: int = 2,
        taxonomy: Taxonomy | None = None,
        seed: int | None = None,
        identical_views: bool = False,
        dna_augment: float = 0.0,
        noise: NoiseAware | None = None,
        dna_crop: float = 0.0,
    ) -> None:
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"the frame lacks columns {missing}; build it with read_metadata()")
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        if dna_augment < 0 or (dna_augment > 0 and seed is None):
            raise ValueError(f"dna_augment must be >= 0 and needs a seed, got {dna_augment!r} with seed {seed!r}")
        if noise is not None and (seed is None or dna_augment > 0):
            raise ValueError("noise-aware training needs a seed and draws its own DNA scale (noise.dna_scale): "
                             f"leave dna_augment at 0; got seed {seed!r}, dna_augment {dna_augment!r}")
        self.noise = noise
        self.identical_views = identical_views
        self.dna_augment = float(dna_augment)
        if not 0 <= dna_crop <= 1 or (dna_crop > 0 and seed is None):
            raise ValueError(f"dna_crop must be in [0, 1] and needs a seed, got {dna_crop!r} with seed {seed!r}")
        self.dna_crop = float(dna_crop)
        self.frame = frame.reset_index(drop=True)
        self.images = images
        self.transform = transform if transform is not None else eval_transform()
        self.views = views
        self.seed = seed
        self.epoch = 0
        if taxonomy is None:
            # distinct lineages only: first occurrences keep from_lineages' parent choice, at a fraction of the cost
            lineages = self.frame[list(LEVELS)].drop_duplicates()
            taxonomy = Taxonomy.from_lineages(lineages.itertuples(index=False))
        self.taxonomy = taxonomy
        self.labels = encode_labels(self.frame, self.taxonomy)
        codes, uniques = pd.factorize(self.frame["taxonomy"], sort=True)
        self.texts: list[str] = [str(t) for t in uniques]
        self.text_ids = codes.astype(np.int64)
        self._barcodes = self.frame["barcode"].tolist()
        self._image_files = self.frame["image_file"].tolist()
        self.has_barcodes = any(b is not None for b in self._barcodes)
        self.has_images = images is not None
        if self.has_barcodes:
            lacking = sum(b is None for b in self._barcodes)
            if lacking:
                logger.info("%d of %d specimens lack a barcode: batches that tokenise DNA leave them out",
                            lacking, len(self))
        if self.has_images:
            lacking = sum(f is None for f in self._image_files)
            if lacking:
                logger.warning("%d of %d specimens have no image_file: batches leave them out", lacking, len(self))

    def __len__(self) -> int:
        return len(self.frame)

    def set_epoch(self, epoch: int) -> None:
        """Draw this epoch's augmentations (only matters with a ``seed``)."""
        self.epoch = epoch

    def _item_seed(self, i: int, *stream: int) -> int:
        return int(np.random.SeedSequence([self.seed, self.epoch, i, *stream]).generate_state(1)[0])

    def _views(self, image: Image.Image, i: int, noise: ItemNoise | None = None) -> torch.Tensor:
        draws = 1 if self.identical_views else self.views
        if self.seed is None:
            views = [self.transform(image) for _ in range(draws)]
        else:
            # torchvision's transforms draw from torch's global generator: seed a private copy of it for this item
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self._item_seed(i))
                views = [self.transform(image) for _ in range(draws)]
        stacked = torch.stack(views * self.views if self.identical_views else views)
        if noise is None:
            return stacked
        if noise.dropped == "image":  # a blank photo (the normalisation's mean colour): no information left
            return torch.zeros_like(stacked)
        # The evaluation's blur, on the same grid (the model's input): one photo, so every view gets the same kernel.
        return box_blur(stacked, noise.blur_kernel)

    def _barcode(self, i: int, max_scale: float) -> str | None:
        """Barcode ``i``, degraded at a scale drawn uniformly from ``[0, max_scale]`` (0: clean)."""
        barcode = self._barcodes[i]
        if barcode is not None and self.dna_crop > 0:  # before any noise, as a read is cut before it is sequenced
            barcode = _crop(barcode, self.dna_crop, self._item_seed(i, CROP_STREAM))
        if barcode is None or max_scale == 0:
            return barcode
        seed = self._item_seed(i, 1)
        scale = np.random.default_rng(seed).uniform(0.0, max_scale)
        return degrade_barcode(barcode, DnaNoise().scaled(scale), seed) or barcode

    def item_noise(self, i: int) -> ItemNoise | None:
        """What noise-aware training does to item ``i`` this epoch (``None`` when it is off)."""
        if self.noise is None:
            return None
        both = self.has_images and self.has_barcodes
        return draw_item_noise(self.noise, self._item_seed(i, 2), both_modalities=both)

    def __getitem__(self, i: int) -> dict[str, Any]:
        noise = self.item_noise(i)
        if noise is None:
            barcode = self._barcode(i, self.dna_augment)
        elif noise.dropped == "dna":
            # N throughout, at the barcode's length: tokenised like any barcode, it carries no sequence.
            barcode = None if self._barcodes[i] is None else "N" * len(self._barcodes[i])
        else:
            barcode = self._barcode(i, self.noise.dna_scale if noise.degrade_dna else 0.0)
        item: dict[str, Any] = {
            "index": int(i),
            "labels": torch.from_numpy(self.labels[i]),
            "text_id": int(self.text_ids[i]),
            "taxonomy": self.texts[self.text_ids[i]],
            "barcode": barcode,
        }
        if self.has_images:
            name = self._image_files[i]
            image = self.images.get(name) if name is not None else None
            # None marks the sample for the collate to drop; raising here would kill the DataLoader worker.
            item["image_views"] = None if image is None else self._views(image, i, noise)
        if noise is not None:
            item[PRESENCE_KEYS["image"]] = noise.dropped != "image"
            item[PRESENCE_KEYS["dna"]] = noise.dropped != "dna"
        return item


def collate_specimens(
    items: Sequence[Mapping[str, Any]],
    dna_tokenizer: Callable[[list[str]], Mapping[str, Any]] | None = None,
    text_tokenizer: Callable[[list[str]], Any] | None = None,
) -> dict[str, Any]:
    """Stack dataset items into a batch, dropping those that cannot be used.

    A sample is dropped (logged) when its image was expected but is missing or corrupt, or when ``dna_tokenizer``
    is given and it has no barcode: every row of a batch then carries every modality the run trains on.
    When every sample is dropped the batch is empty (``len(batch["index"]) == 0``); callers skip it.

    Returns a dict with ``index`` [B], ``labels`` [B, 4], ``text_ids`` [B], ``taxonomy`` (list[str]),
    ``barcodes`` (list), ``image_views`` [B, V, C, H, W] when the dataset has images, ``dna_input_ids`` and
    ``dna_attention_mask`` when ``dna_tokenizer`` is given, ``text_tokens`` when ``text_tokenizer`` is given,
    ``image_present`` / ``dna_present`` (bool [B], False where noise-aware training dropped that modality) when the
    items carry them, and ``dropped`` (how many items were left out). Bind the tokenizers with :func:`make_collate`
    for a DataLoader.
    """
    with_images = bool(items) and "image_views" in items[0]
    kept = []
    no_image = no_barcode = 0
    for item in items:
        if with_images and item["image_views"] is None:
            no_image += 1
        elif dna_tokenizer is not None and item["barcode"] is None:
            no_barcode += 1
        else:
            kept.append(item)
    if no_image:
        logger.warning("dropped %d of %d samples from a batch: image missing or corrupt", no_image, len(items))
    if no_barcode:
        logger.debug("dropped %d of %d samples from a batch: no barcode", no_barcode, len(items))

    batch: dict[str, Any] = {
        "index": torch.tensor([it["index"] for it in kept], dtype=torch.long),
        "labels": (
            torch.stack([it["labels"] for it in kept]) if kept else torch.empty((0, len(LEVELS)), dtype=torch.long)
        ),
        "text_ids": torch.tensor([it["text_id"] for it in kept], dtype=torch.long),
        "taxonomy": [it["taxonomy"] for it in kept],
        "barcodes": [it["barcode"] for it in kept],
        "dropped": len(items) - len(kept),
    }
    if with_images:
        batch["image_views"] = torch.stack([it["image_views"] for it in kept]) if kept else torch.empty(0)
    for key in PRESENCE_KEYS.values():
        if items and key in items[0]:
            batch[key] = torch.tensor([bool(it[key]) for it in kept], dtype=torch.bool)
    if kept and dna_tokenizer is not None:
        tokens = dna_tokenizer(batch["barcodes"])
        batch["dna_input_ids"] = torch.as_tensor(tokens["input_ids"], dtype=torch.long)
        batch["dna_attention_mask"] = torch.as_tensor(tokens["attention_mask"], dtype=torch.long)
    if kept and text_tokenizer is not None:
        batch["text_tokens"] = torch.as_tensor(text_tokenizer(batch["taxonomy"]))
    return batch


def make_collate(
    dna_tokenizer: Callable[[list[str]], Mapping[str, Any]] | None = None,
    text_tokenizer: Callable[[list[str]], Any] | None = None,
) -> Callable[[Sequence[Mapping[str, Any]]], dict[str, Any]]:
    """:func:`collate_specimens` with the tokenizers bound; it pickles, so DataLoader workers do the tokenising."""
    return functools.partial(collate_specimens, dna_tokenizer=dna_tokenizer, text_tokenizer=text_tokenizer)


CROP_BP = (150, 450)
"""Window lengths ``data.dna_crop`` draws from (uniformly): mini-barcodes and partial reads are 150-450 bp."""
# The crop's (seed, epoch, item) stream: 0 = image views, 1 = dna_augment's noise, 2 = noise-aware draws.
CROP_STREAM = 3


def _crop(barcode: str, share: float, seed: int) -> str:
    """``barcode`` cut to a random :data:`CROP_BP` window with probability ``share`` (else unchanged)."""
    rng = np.random.default_rng(seed)
    if rng.random() >= share or len(barcode) <= CROP_BP[0]:
        return barcode
    length = int(rng.integers(CROP_BP[0], min(CROP_BP[1], len(barcode)) + 1))
    start = int(rng.integers(0, len(barcode) - length + 1))
    return barcode[start:start + length]
