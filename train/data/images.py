"""Image stores: JPEG bytes in an HDF5 file or files in a folder, read as RGB images.

A missing or corrupt image never stops training: :meth:`get` returns None and logs one warning per image, and the
dataset's collate leaves the sample out.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)


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


class _ClosingStore:
    """``with store: ...`` closes the store's open handles on leaving (a store stays usable: it reopens lazily)."""

    def close(self) -> None:
        """Release open handles (none by default)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HDF5Images(_ClosingStore):
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


class FolderImages(_ClosingStore):
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
