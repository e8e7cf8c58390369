"""BIOSCAN data: metadata readers, image stores, augmentations, the specimen dataset and batch construction.

Every reader returns one normalised :class:`pandas.DataFrame` (see :data:`COLUMNS`), so the rest of the trainer
never sees which file format a run came from:

==============  ===========================================================================================
``sampleid``    str or None
``processid``   str or None
``order`` ..    ``family``, ``genus``, ``species``: names cleaned with :func:`hirviz.taxonomy.clean_rank`,
                None where unknown
``barcode``     DNA barcode, upper-cased and stripped, or None
``image_file``  key of the image in an HDF5 file or path under an image folder, or None
``taxonomy``    the text prompt (:func:`hirviz.taxonomy.taxonomy_string` of the ranks)
==============  ===========================================================================================

Batches for HiR must contain relatives, so :class:`HierarchicalBatchSampler` builds them from groups of an anchor
plus relatives at species, genus, family and order, in time linear-logarithmic in the number of specimens.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import h5py
import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler
from torchvision import transforms as T

from hirviz.degrade import DnaNoise, degrade_barcode
from hirviz.taxonomy import LEVELS, UNKNOWN_ID, Taxonomy, clean_rank, taxonomy_string

logger = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = ("sampleid", "processid", *LEVELS, "barcode", "image_file", "taxonomy")

# open_clip's (and BioCLIP's) normalisation, which the paper's image encoder was pre-trained with.
CLIP_MEAN: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

# The columns each metadata format must have; a header matches the first format whose columns it contains, so
# the more specific formats come first.
FORMATS: dict[str, tuple[str, ...]] = {
    "authors_csv": ("image_file", "taxonomy", "nucraw", *LEVELS),
    "bioscan1m": ("sampleid", "processid", *LEVELS, "nucraw", "image_file"),
    "bioscan5m": ("sampleid", "processid", *LEVELS, "dna_barcode"),
    "barcode_tsv": ("processid", *LEVELS, "dna_barcode"),
    "image_table": ("image_file", *LEVELS),
}
_FORMAT_HELP = {
    "authors_csv": "the HiR authors' CSV (integer rank ids, 0 = unknown)",
    "bioscan1m": "BIOSCAN-1M metadata TSV",
    "bioscan5m": "BIOSCAN-5M metadata",
    "barcode_tsv": "barcode TSV without images",
    "image_table": "images with ranks, no barcodes",
}
_OPTIONAL_COLUMNS = ("sampleid", "processid", "image_file")
_MISSING_BARCODE = {"", "NAN", "NONE", "NA", "N/A", "NOT_CLASSIFIED"}


# ----------------------------------------------------------------------------------------------------------------
# Metadata readers


def sniff_format(header: Sequence[str]) -> str:
    """Name of the metadata format whose required columns ``header`` contains.

    Raises:
        ValueError: no known format matches; the message lists each format and the columns it needs.
    """
    present = {c.strip() for c in header}
    for name, required in FORMATS.items():
        if present.issuperset(required):
            return name
    known = "; ".join(f"{name} ({_FORMAT_HELP[name]}): {', '.join(cols)}" for name, cols in FORMATS.items())
    raise ValueError(f"unrecognised metadata header {sorted(present)}; the known formats need these columns: {known}")


def read_metadata(path: str | os.PathLike, format: str | None = None, nrows: int | None = None) -> pd.DataFrame:
    """Read a metadata file into the normalised frame described in the module docstring.

    Args:
        path: a BIOSCAN-1M metadata TSV, BIOSCAN-5M metadata (CSV or TSV), the HiR authors' CSV, a barcode TSV
            (``processid, order, family, genus, species, dna_barcode``, no images) or an image table.
        format: one of :data:`FORMATS`; sniffed from the header when None.
        nrows: read only the first rows (a quick look at a large file).

    The authors' CSV stores ranks as integer ids (0 = unknown) whose names were never released: they become the
    names ``order_3``, ``family_12``, ... so per-level labels work unchanged, while the ``taxonomy`` column keeps
    the CSV's own prompt text (the text the authors trained on) and is only rebuilt from the ranks where empty.
    BIOSCAN-5M names images by process id, so ``image_file`` is ``<processid>.jpg`` unless the file has that
    column. The barcode TSV has no images (``image_file`` is None); an image table (``image_file`` and the
    ranks, e.g. an index of example photographs) has no barcodes.

    The returned frame's ``attrs["format"]`` says which format was read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"metadata file not found: {path}")
    with open(path, encoding="utf-8", errors="replace") as fh:
        first = fh.readline().rstrip("\r\n")
    sep = "\t" if first.count("\t") >= first.count(",") else ","
    header = [c.strip() for c in first.split(sep)]
    if format is None:
        format = sniff_format(header)
    elif format not in FORMATS:
        raise ValueError(f"unknown metadata format {format!r}; known: {', '.join(FORMATS)}")
    else:
        missing = [c for c in FORMATS[format] if c not in header]
        if missing:
            raise ValueError(f"{path} lacks the {format} columns {missing}")

    wanted = set(FORMATS[format]) | set(_OPTIONAL_COLUMNS)
    # Only the needed columns, all as plain strings: the BIOSCAN-1M TSV is 1.2 GB with many unused columns, and
    # pandas' type guessing would turn ids such as "0001" into numbers. TSVs are read unquoted, so one stray
    # quote cannot swallow the rows after it; a row with an extra field must not turn the first column into the
    # index; a malformed line is skipped with a warning rather than ending the read.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", pd.errors.ParserWarning)
        raw = pd.read_csv(
            path,
            sep=sep,
            usecols=lambda c: c.strip() in wanted,
            dtype=str,
            keep_default_na=False,
            nrows=nrows,
            index_col=False,
            on_bad_lines="warn",
            quoting=csv.QUOTE_NONE if sep == "\t" else csv.QUOTE_MINIMAL,
        )
    for w in caught:
        if issubclass(w.category, pd.errors.ParserWarning):
            logger.warning("%s: skipped malformed lines: %s", path, w.message)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    raw.columns = [c.strip() for c in raw.columns]
    frame = _normalise(raw, format)
    frame.attrs["format"] = format
    logger.info("read %d %s records from %s", len(frame), format, path)
    return frame


def _normalise(raw: pd.DataFrame, format: str) -> pd.DataFrame:
    n = len(raw)
    out = pd.DataFrame(index=pd.RangeIndex(n))
    for col in ("sampleid", "processid"):
        out[col] = _clean_ids(raw[col]) if col in raw else pd.Series([None] * n, dtype=object)

    for level in LEVELS:
        if format == "authors_csv":
            out[level] = _authors_rank(raw[level], level)
        else:
            out[level] = _map_unique(raw[level], clean_rank)

    barcode_col = {"authors_csv": "nucraw", "bioscan1m": "nucraw"}.get(format, "dna_barcode")
    if barcode_col in raw:
        barcodes = raw[barcode_col].str.strip().str.upper().astype(object)
        out["barcode"] = barcodes.where(~barcodes.isin(_MISSING_BARCODE), None)
    else:
        out["barcode"] = pd.Series([None] * n, dtype=object)

    if "image_file" in raw:
        out["image_file"] = _clean_ids(raw["image_file"])
    elif format == "bioscan5m":
        out["image_file"] = out["processid"].map(lambda p: None if p is None else f"{p}.jpg")
    else:
        out["image_file"] = pd.Series([None] * n, dtype=object)

    prompts = _lineage_prompts(out)
    if format == "authors_csv":
        own = raw["taxonomy"].map(lambda s: " ".join(s.split())).astype(object)
        prompts = own.where(own != "", prompts)
    out["taxonomy"] = prompts
    return out[list(COLUMNS)]


def _clean_ids(col: pd.Series) -> pd.Series:
    # object dtype: pandas' string dtype would turn None back into NaN
    stripped = col.str.strip().astype(object)
    return stripped.where(stripped != "", None)


def _map_unique(col: pd.Series, fn: Callable[[str], Any]) -> pd.Series:
    """``col.map(fn)``, calling ``fn`` once per distinct value (a million rows hold a few thousand names)."""
    codes, uniques = pd.factorize(col, use_na_sentinel=False)
    mapped = np.empty(len(uniques), dtype=object)
    mapped[:] = [fn(u) for u in uniques]
    return pd.Series(mapped[codes], index=col.index, dtype=object)


def _authors_rank(col: pd.Series, level: str) -> pd.Series:
    """Integer rank ids (0 = unknown) -> ``<level>_<id>`` names; a column of real names is kept as names."""
    stripped = col.str.strip()
    numeric = pd.to_numeric(stripped, errors="coerce")
    is_int = numeric.notna() & (numeric == numeric.round())
    filled = stripped != ""
    informative = filled & (numeric != 0)
    if informative.any() and not (is_int & informative).any():
        return _map_unique(col, clean_rank)  # a variant of the CSV with names instead of ids
    bad = filled & ~is_int
    if bad.any():
        examples = stripped[bad].unique()[:5].tolist()
        logger.warning("%d %s values are not integer ids (e.g. %s); treated as unknown",
                       int(bad.sum()), level, examples)
    valid = (is_int & (numeric > 0)).to_numpy()
    names = np.full(len(col), None, dtype=object)
    names[valid] = [f"{level}_{int(v)}" for v in numeric.to_numpy()[valid]]
    return pd.Series(names, index=col.index, dtype=object)


def _lineage_codes(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """An int code per row, equal for rows with equal values in ``columns`` (None counts as a value)."""
    if len(frame) == 0:
        return np.empty(0, dtype=np.int64)
    return frame.groupby(list(columns), dropna=False, sort=False).ngroup().to_numpy(dtype=np.int64)


def _lineage_prompts(frame: pd.DataFrame) -> pd.Series:
    """:func:`taxonomy_string` per row, computed once per distinct lineage."""
    codes = _lineage_codes(frame, LEVELS)
    uniq, first = np.unique(codes, return_index=True)
    prompts = np.empty(len(uniq), dtype=object)
    lineages = frame[list(LEVELS)].to_numpy(dtype=object)
    prompts[uniq] = [taxonomy_string(lineages[i]) for i in first]
    return pd.Series(prompts[codes], index=frame.index, dtype=object)


# ----------------------------------------------------------------------------------------------------------------
# Image stores


class _WarnOnce:
    """Logs one warning per (kind, key): a corrupt record read every epoch must not flood the log."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str]] = set()

    def __call__(self, kind: str, key: str, message: str) -> None:
        if (kind, key) not in self._seen:
            self._seen.add((kind, key))
            logger.warning(message)


def _decode(raw: bytes, source: str, key: str, warn: _WarnOnce) -> Image.Image | None:
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.load()  # decode now, so a truncated JPEG fails here and not later inside a transform
            return img.convert("RGB")
    except Exception as exc:  # noqa: BLE001  (corrupt bytes raise many exception types; none may stop training)
        warn("corrupt", key, f"skipping corrupt image {key!r} in {source}: {type(exc).__name__}: {exc}")
        return None


class HDF5Images:
    """Images stored as raw JPEG bytes, one uint8 dataset per ``image_file`` key (the BIOSCAN-1M layout).

    The file is opened lazily, once per process, so the object pickles and each DataLoader worker reads through
    its own handle (an HDF5 handle shared across fork is not safe).
    """

    def __init__(self, path: str | os.PathLike, group: str = "bioscan_dataset") -> None:
        self.path = Path(path)
        self.group = group
        if not self.path.is_file():
            raise FileNotFoundError(f"image file not found: {self.path}")
        with h5py.File(self.path, "r") as fh:
            if group not in fh:
                raise ValueError(f"{self.path} has no group {group!r}; top-level entries: {sorted(fh)[:10]}")
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._warn = _WarnOnce()

    def _group(self) -> h5py.Group:
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file[self.group]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_file"], state["_pid"] = None, None
        return state

    def keys(self) -> list[str]:
        """All image keys in the group."""
        return list(self._group().keys())

    def __len__(self) -> int:
        return len(self._group())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._group()

    def get(self, image_file: str) -> Image.Image | None:
        """The RGB image stored under ``image_file``, or None (with one logged warning) if missing or corrupt."""
        try:
            raw = np.asarray(self._group()[image_file][()]).tobytes()
        except KeyError:
            self._warn("missing", image_file, f"skipping image {image_file!r}: not in {self.path}:{self.group}")
            return None
        except (OSError, TypeError, ValueError) as exc:  # a damaged HDF5 chunk or a non-array entry
            self._warn("corrupt", image_file, f"skipping unreadable image {image_file!r} in {self.path}: {exc}")
            return None
        return _decode(raw, str(self.path), image_file, self._warn)

    def close(self) -> None:
        """Close this process's handle (it is reopened on the next read)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pid = None, None


class FolderImages:
    """Images as files under ``root``, addressed by their path relative to it (``image_file``).

    With ``recursive=True`` a name not found directly is looked up by file name anywhere under ``root`` (the
    BIOSCAN-5M release nests ``<processid>.jpg`` in split and chunk folders); the index is built on first need.
    """

    def __init__(self, root: str | os.PathLike, recursive: bool = False) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise NotADirectoryError(f"image folder not found: {self.root}")
        self.recursive = recursive
        self._index: dict[str, Path] | None = None
        self._warn = _WarnOnce()

    def _find(self, image_file: str) -> Path | None:
        path = self.root / image_file
        if path.is_file():
            return path
        if not self.recursive:
            return None
        if self._index is None:
            self._index = {p.name: p for p in self.root.rglob("*") if p.is_file()}
        return self._index.get(Path(image_file).name)

    def get(self, image_file: str) -> Image.Image | None:
        """The RGB image at ``root/image_file``, or None (with one logged warning) if missing or corrupt."""
        path = self._find(image_file)
        if path is None:
            self._warn("missing", image_file, f"skipping image {image_file!r}: no such file under {self.root}")
            return None
        try:
            raw = path.read_bytes()
        except OSError as exc:
            self._warn("corrupt", image_file, f"skipping unreadable image {path}: {exc}")
            return None
        return _decode(raw, str(self.root), image_file, self._warn)


ImageStore = HDF5Images | FolderImages


def open_images(path: str | os.PathLike | None, group: str = "bioscan_dataset") -> ImageStore | None:
    """An image store for ``path``: a folder -> :class:`FolderImages`, ``.h5``/``.hdf5`` -> :class:`HDF5Images`.

    None gives None (a run on the other modalities only).
    """
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        return FolderImages(path)
    if path.suffix.lower() in (".h5", ".hdf5", ".hdf"):
        return HDF5Images(path, group=group)
    if not path.exists():
        raise FileNotFoundError(f"image source not found: {path}")
    raise ValueError(f"cannot tell how images are stored in {path}: expected a folder or an .h5/.hdf5 file")


# ----------------------------------------------------------------------------------------------------------------
# Augmentations


def train_transform(
    image_size: int = 224, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> Callable[[Image.Image], torch.Tensor]:
    """A random augmented view: resized crop, flips, small rotation, mild colour jitter, then normalise.

    Specimens are photographed from above in a well plate, so both flips and any small rotation give a
    plausible photograph. Cropping first keeps the remaining steps on a small image (cheap on CPU workers). Hue
    is left alone: colour is a diagnostic trait of many insects, and a hue shift costs as much as all the rest.
    """
    # Rotated corners are filled with the plate's background (BIOSCAN's mean colour) rather than black, so the
    # model cannot learn "black corners = augmented".
    background = (185, 186, 186)
    return T.Compose(
        [
            T.RandomResizedCrop(image_size, scale=(0.5, 1.0), interpolation=T.InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(),
            T.RandomVerticalFlip(),
            T.RandomRotation(15, interpolation=T.InterpolationMode.BILINEAR, fill=background),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


def eval_transform(
    image_size: int = 224, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
) -> Callable[[Image.Image], torch.Tensor]:
    """The deterministic view: resize the shortest side, centre crop, normalise."""
    return T.Compose(
        [
            T.Resize(image_size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(image_size),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )


# ----------------------------------------------------------------------------------------------------------------
# Dataset and collate


def specimen_ids(frame: pd.DataFrame) -> np.ndarray:
    """Each row's sample id, else its process id, else None (object array)."""
    ids = frame["sampleid"].where(frame["sampleid"].notna(), frame["processid"])
    return ids.to_numpy(dtype=object)


def encode_labels(frame: pd.DataFrame, taxonomy: Taxonomy) -> np.ndarray:
    """The frame's ranks as ids, int64 [N, 4] (``UNKNOWN_ID`` where unknown or not in ``taxonomy``)."""
    out = np.full((len(frame), len(LEVELS)), UNKNOWN_ID, dtype=np.int64)
    for j, level in enumerate(LEVELS):
        ids = {name: i for i, name in enumerate(taxonomy.names[level])}
        out[:, j] = frame[level].map(ids).fillna(UNKNOWN_ID).to_numpy(dtype=np.int64)
    return out


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
    ) -> None:
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"the frame lacks columns {missing}; build it with read_metadata()")
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        if dna_augment < 0 or (dna_augment > 0 and seed is None):
            raise ValueError(f"dna_augment must be >= 0 and needs a seed, got {dna_augment!r} with seed {seed!r}")
        self.identical_views = identical_views
        self.dna_augment = float(dna_augment)
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

    def _views(self, image: Image.Image, i: int) -> torch.Tensor:
        draws = 1 if self.identical_views else self.views
        if self.seed is None:
            views = [self.transform(image) for _ in range(draws)]
        else:
            # torchvision's transforms draw from torch's global generator: seed a private copy of it for this item
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self._item_seed(i))
                views = [self.transform(image) for _ in range(draws)]
        return torch.stack(views * self.views if self.identical_views else views)

    def _barcode(self, i: int) -> str | None:
        barcode = self._barcodes[i]
        if barcode is None or self.dna_augment == 0:
            return barcode
        seed = self._item_seed(i, 1)
        scale = np.random.default_rng(seed).uniform(0.0, self.dna_augment)
        return degrade_barcode(barcode, DnaNoise().scaled(scale), seed) or barcode

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {
            "index": int(i),
            "labels": torch.from_numpy(self.labels[i]),
            "text_id": int(self.text_ids[i]),
            "taxonomy": self.texts[self.text_ids[i]],
            "barcode": self._barcode(i),
        }
        if self.has_images:
            name = self._image_files[i]
            image = self.images.get(name) if name is not None else None
            # None marks the sample for the collate to drop; raising here would kill the DataLoader worker.
            item["image_views"] = None if image is None else self._views(image, i)
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
    ``dna_attention_mask`` when ``dna_tokenizer`` is given, ``text_tokens`` when ``text_tokenizer`` is given, and
    ``dropped`` (how many items were left out). Bind the tokenizers with :func:`make_collate` for a DataLoader.
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


# ----------------------------------------------------------------------------------------------------------------
# Hierarchical batch sampler


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


# ----------------------------------------------------------------------------------------------------------------
# Closed-set split


def closed_set_split(
    frame_or_labels: pd.DataFrame | np.ndarray, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A seeded train/test split in which every test taxon also appears in training (the paper's closed set).

    Specimens are grouped by their full lineage (the four ranks and, for a frame, the taxonomy string); each
    group keeps at least one member in training and sends about ``test_fraction`` of its members to test
    (stochastic rounding, so small groups contribute on average). As a group fixes every rank, each taxon of a
    test specimen, at every level, and its taxonomy string are in training. Groups of one stay in training, so
    the test share of all specimens is a little below ``test_fraction`` when there are many.

    Returns sorted int64 row positions ``(train_idx, test_idx)``.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if isinstance(frame_or_labels, pd.DataFrame):
        cols = [c for c in (*LEVELS, "taxonomy") if c in frame_or_labels.columns]
        if not cols:
            raise ValueError(f"the frame has none of the columns {[*LEVELS, 'taxonomy']}")
        group = _lineage_codes(frame_or_labels, cols)
    else:
        arr = np.asarray(frame_or_labels)
        if arr.ndim != 2:
            raise ValueError(f"labels must be a 2-D array [N, levels], got shape {arr.shape}")
        group = np.unique(arr, axis=0, return_inverse=True)[1].reshape(-1) if len(arr) else np.empty(0, np.int64)
    n = len(group)
    if n == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)

    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    order = order[np.argsort(group[order], kind="stable")]  # by group, random within a group
    g_sorted = group[order]
    starts = np.searchsorted(g_sorted, g_sorted, side="left")
    rank = np.arange(n) - starts
    sizes = np.bincount(group)
    n_test = np.minimum(np.floor(sizes * test_fraction + rng.random(len(sizes))), sizes - 1).astype(np.int64)
    in_test = (rank >= 1) & (rank <= n_test[g_sorted])
    return np.sort(order[~in_test]).astype(np.int64), np.sort(order[in_test]).astype(np.int64)
