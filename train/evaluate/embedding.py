"""The embedding cache of an evaluation: query embeddings per degradation, and the reference keys to retrieve.

:class:`QueryEmbedder` embeds each modality once per degradation (through :func:`train.embed.embed_frame`) and
composes ``avg`` / ``fused`` from them (:func:`hirviz.queries.compose_queries`), so the four conditions cost two
image passes and two DNA passes. :class:`KeyBank` holds a bundle's reference bank as retrieval keys.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from hirviz.degrade import DnaNoise
from hirviz.geometry import EUCLIDEAN, Geometry
from hirviz.model import HirvizModel
from hirviz.queries import QUERIES, compose_queries
from train.data import ImageStore
from train.embed import Degradation, embed_frame

if TYPE_CHECKING:
    from hirviz.bundle import Reference

logger = logging.getLogger(__name__)


class QueryEmbedder:
    """Embeds a frame's images and barcodes under given degradations (through :func:`train.embed.embed_frame`).

    Each modality is embedded on its own, so a condition that degrades one modality re-uses the other one's
    clean embeddings; ``avg`` and ``fused`` are then composed exactly as ``embed_frame`` composes them
    (:func:`hirviz.queries.compose_queries`; both are row-wise, so the result does not depend on how rows were
    batched). Passes asked for with ``keep=True`` are cached.
    """

    def __init__(self, model: HirvizModel, frame: pd.DataFrame, images: ImageStore | None = None, seed: int = 0,
                 batch_size: int = 256, num_workers: int = 0, device: str | torch.device = "cpu") -> None:
        self.model, self.frame, self.seed = model, frame.reset_index(drop=True), seed
        self.batch_size, self.num_workers, self.device = batch_size, num_workers, torch.device(device)
        self.has_images = images is not None and self.frame["image_file"].notna().any()
        self.images = images if self.has_images else None
        self.has_barcodes = bool(self.frame["barcode"].notna().any())
        self._cache: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
        self.seconds = 0.0

    def _embed(self, frame: pd.DataFrame, images: ImageStore | None, degradation: Degradation) -> dict:
        start = time.perf_counter()
        out = embed_frame(self.model, frame, images, degradation, batch_size=self.batch_size,
                          num_workers=self.num_workers, device=self.device)
        seconds = time.perf_counter() - start
        self.seconds += seconds
        logger.info("embedded %d specimens (%s, %s) in %.1f s", len(frame), "images" if images else "barcodes",
                    degradation, seconds)
        return out

    def image(self, blur_kernel: int, keep: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
        """Image embeddings ``[N, d]`` and the has-image mask, blurred with a k x k box (k <= 1: clean)."""
        if not self.has_images:
            return None
        key = ("image", max(int(blur_kernel), 1))
        if key not in self._cache:
            out = self._embed(self.frame.assign(barcode=None), self.images,
                              Degradation(blur_kernel=key[1], seed=self.seed))
            value = (out["image"], out["has_image"])
            if not keep:
                return value
            self._cache[key] = value
        return self._cache[key]

    def dna(self, noise: DnaNoise | None, keep: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
        """DNA embeddings ``[N, d]`` and the has-barcode mask, degraded by ``noise`` (None or off: clean)."""
        if not self.has_barcodes:
            return None
        noise = None if noise is None or noise.is_off() else noise
        key = ("dna", noise)
        if key not in self._cache:
            out = self._embed(self.frame, None, Degradation(dna=noise, seed=self.seed))
            value = (out["dna"], out["has_dna"])
            if not keep:
                return value
            self._cache[key] = value
        return self._cache[key]

    @torch.no_grad()
    def queries(self, image: tuple[np.ndarray, np.ndarray] | None, dna: tuple[np.ndarray, np.ndarray] | None,
                wanted: Iterable[str] = QUERIES) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{query: (embeddings [N, d], rows that have it)}`` for the wanted queries the modalities allow."""
        wanted = set(wanted)
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if image is not None and image[1].any():
            out["image"] = image
        if dna is not None and dna[1].any():
            out["dna"] = dna
        if {"avg", "fused"} & wanted and "image" in out and "dna" in out:
            both = image[1] & dna[1]
            if both.any():
                rows = np.flatnonzero(both)
                avg = np.zeros_like(image[0])
                fused = np.zeros_like(image[0])
                for start in range(0, len(rows), 4096):
                    idx = rows[start:start + 4096]
                    zi = torch.from_numpy(image[0][idx]).to(self.device)
                    zd = torch.from_numpy(dna[0][idx]).to(self.device)
                    combined = compose_queries(self.model, zi, zd)
                    avg[idx] = combined["avg"].cpu().numpy()
                    if "fused" in combined:  # absent without a fusion head (Lorentz)
                        fused[idx] = combined["fused"].cpu().numpy()
                out["avg"] = (avg, both)
                if self.model.fusion is not None:
                    out["fused"] = (fused, both)
        return {q: out[q] for q in QUERIES if q in out and q in wanted}



@dataclass
class KeyBank:
    """Reference specimens to retrieve from: ids, ranks ``[M, 4]`` (None = unknown), embeddings per space, and
    the ``geometry`` their distances are measured in (a Lorentz bank is searched by geodesic distance)."""

    ids: np.ndarray
    ranks: np.ndarray
    embeddings: dict[str, np.ndarray]
    masks: dict[str, np.ndarray]
    geometry: Geometry = EUCLIDEAN

    @classmethod
    def from_reference(cls, reference: Reference, geometry: Geometry = EUCLIDEAN) -> KeyBank:
        """A bundle's reference bank; each space keeps the rows that have its modalities."""
        both = reference.has_image & reference.has_dna
        masks = {"image": reference.has_image, "dna": reference.has_dna, "avg": both, "fused": both}
        ranks = np.where(reference.ranks == "", None, reference.ranks.astype(object))
        return cls(np.asarray(reference.ids, dtype=object), ranks, dict(reference.embeddings),
                   {s: masks[s] for s in reference.embeddings}, geometry)

