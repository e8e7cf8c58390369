"""Metadata readers: every BIOSCAN metadata format -> one normalised :class:`pandas.DataFrame`.

Every reader returns the columns of :data:`COLUMNS`, so the rest of the trainer never sees which file format a run
came from:

==============  ===========================================================================================
``sampleid``    str or None
``processid``   str or None
``order`` ..    ``family``, ``genus``, ``species``: names cleaned with :func:`hirviz.taxonomy.clean_rank`,
                None where unknown
``barcode``     DNA barcode, upper-cased and stripped, or None
``image_file``  key of the image in an HDF5 file or path under an image folder, or None
``taxonomy``    the text prompt (:func:`hirviz.taxonomy.taxonomy_string` of the ranks)
==============  ===========================================================================================

:func:`specimen_ids` and :func:`encode_labels` read the normalised frame back as ids and per-level labels.
"""

from __future__ import annotations

import csv
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hirviz.taxonomy import LEVELS, UNKNOWN_ID, Taxonomy, clean_rank, taxonomy_string

logger = logging.getLogger(__name__)

COLUMNS: tuple[str, ...] = ("sampleid", "processid", *LEVELS, "barcode", "image_file", "taxonomy")

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
