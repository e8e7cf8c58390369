"""Embed a whole dataset with a model, optionally degraded: the shared engine of evaluation and export.

Queries are built exactly as at inference (METHOD.md sections 4, 7, 8): the image through the tower's eval
transform, then box-blurred on the model's input grid (so a kernel size means the same thing whatever the
photo's resolution); the barcode degraded with a generator keyed on the specimen's row, so the result does
not depend on batch size or worker count; then image, DNA, averaged and gated-fusion embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from hirviz.candidates import CandidateSet
from hirviz.degrade import DnaNoise, box_blur, degrade_barcode
from hirviz.model import HirvizModel
from hirviz.queries import QUERIES, compose_queries
from hirviz.taxonomy import LEVELS
from train.data import ImageStore


@dataclass(frozen=True)
class Degradation:
    """What to do to the queries: DNA noise (None = clean) and an image blur kernel (<= 1 = clean)."""

    dna: DnaNoise | None = None
    blur_kernel: int = 0
    seed: int = 0


class _QueryDataset(Dataset):
    """Row i -> (image tensor or None, degraded barcode or None); never raises on a bad record."""

    def __init__(self, frame: pd.DataFrame, images: ImageStore | None, transform: Any, degradation: Degradation):
        self.barcodes = frame["barcode"].tolist()
        self.image_files = frame["image_file"].tolist() if images is not None else [None] * len(frame)
        self.images = images
        self.transform = transform
        self.degradation = degradation

    def __len__(self) -> int:
        return len(self.barcodes)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        pixels = None
        if self.images is not None and self.image_files[i] is not None:
            image = self.images.get(self.image_files[i])
            if image is not None:
                pixels = self.transform(image)
        barcode = self.barcodes[i]
        if barcode is not None and self.degradation.dna is not None:
            barcode = degrade_barcode(barcode, self.degradation.dna, self.degradation.seed, key=i) or "N"
        return i, pixels, barcode


def _collate(items: list) -> list:
    return items


@torch.no_grad()
def embed_frame(
    model: HirvizModel,
    frame: pd.DataFrame,
    images: ImageStore | None = None,
    degradation: Degradation = Degradation(),
    batch_size: int = 256,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
) -> dict[str, np.ndarray]:
    """Embeddings of every row of a normalised metadata frame (see :func:`train.data.read_metadata`).

    Returns float32 arrays ``[N, d]`` for ``image``, ``dna``, ``avg``, ``fused`` and ``gate`` (zeros where a
    modality is missing) and boolean masks ``has_image`` and ``has_dna``: ``avg``/``fused``/``gate`` are
    only meaningful where both are true. A modality the frame does not have at all is left out, and so are
    ``fused`` and ``gate`` for a model without a fusion head (the Lorentz geometry, whose embeddings are space
    parts on the hyperboloid and whose ``avg`` is the tangent-space mean).
    """
    model.eval()
    device = torch.device(device)
    dataset = _QueryDataset(frame, images, model.image_transform(train=False), degradation)
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_collate)
    n, d = len(frame), model.embed_dim
    out = {key: np.zeros((n, d), dtype=np.float32) for key in (*QUERIES, "gate")}
    has_image = np.zeros(n, dtype=bool)
    has_dna = np.zeros(n, dtype=bool)
    for items in loader:
        rows = np.array([i for i, _, _ in items])
        img_rows = [(i, p) for i, p, _ in items if p is not None]
        dna_rows = [(i, b) for i, _, b in items if b is not None]
        z_img = z_dna = None
        if img_rows:
            # Blurred as a batch: one pooling call instead of one per image.
            pixels = box_blur(torch.stack([p for _, p in img_rows]), degradation.blur_kernel)
            z_img = model.encode_image(pixels.to(device))
            idx = np.array([i for i, _ in img_rows])
            out["image"][idx] = z_img.float().cpu().numpy()
            has_image[idx] = True
        if dna_rows:
            tokens = model.tokenize_dna([b for _, b in dna_rows])
            z_dna = model.encode_dna(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
            idx = np.array([i for i, _ in dna_rows])
            out["dna"][idx] = z_dna.float().cpu().numpy()
            has_dna[idx] = True
        both = rows[has_image[rows] & has_dna[rows]]
        if len(both):
            zi = torch.from_numpy(out["image"][both]).to(device)
            zd = torch.from_numpy(out["dna"][both]).to(device)
            for key, value in compose_queries(model, zi, zd).items():
                out[key][both] = value.cpu().numpy()
    out["has_image"], out["has_dna"] = has_image, has_dna
    if model.fusion is None:
        for key in ("fused", "gate"):
            del out[key]
    if images is None:
        for key in ("image", "avg", "fused", "gate"):
            out.pop(key, None)
    if not has_dna.any() and frame["barcode"].isna().all():
        for key in ("dna", "avg", "fused", "gate"):
            out.pop(key, None)
    return out


@torch.no_grad()
def embed_texts(model: HirvizModel, texts: list[str], batch_size: int = 256,
                device: str | torch.device = "cpu", features: bool = False) -> np.ndarray:
    """Text embeddings ``[len(texts), d]`` of taxonomy strings (points of the model's space: L2-normalised, or
    Lorentz space parts); ``features=True`` gives the projected features before that step
    (:meth:`HirvizModel.text_features`, what a frozen text tower's cache holds in the Lorentz geometry)."""
    model.eval()
    encode = model.text_features if features else model.encode_text
    chunks = [encode(model.tokenize_text(texts[i:i + batch_size]).to(device)).float().cpu()
              for i in range(0, len(texts), batch_size)]
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, model.embed_dim), dtype=np.float32)


def frame_candidates(model: HirvizModel, frame: pd.DataFrame, batch_size: int = 256,
                     device: str | torch.device = "cpu") -> CandidateSet:
    """A frame's distinct non-empty taxonomy strings (in order of appearance) as candidates, encoded by ``model``'s
    text tower (``source="dataset"``)."""
    first = frame[frame["taxonomy"].fillna("") != ""].drop_duplicates("taxonomy")
    texts = first["taxonomy"].tolist()
    names = first[list(LEVELS)].astype(object)
    ranks = list(names.where(names.notna(), None).itertuples(index=False, name=None))
    return CandidateSet(texts, ranks, embed_texts(model, texts, batch_size=batch_size, device=device),
                        source="dataset")
