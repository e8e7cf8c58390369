"""Identify a specimen with a bundle: an image, a DNA barcode or both -> ranked taxa at every level.

A :class:`Predictor` embeds the inputs (optionally degraded as in METHOD.md section 7: the barcode by
:func:`hirviz.degrade.degrade_barcode_with_edits`, the image box-blurred on the model's input grid after the
eval transform, as ``train/embed.py`` does for evaluation) and asks up to four queries:

* ``image``: z_I, ``dna``: z_D (whichever inputs are given);
* ``avg``: normalize(z_I + z_D), ``fused``: the gated fusion z_F (both inputs given; only for a bundle whose
  fusion gate was trained, :attr:`hirviz.bundle.Bundle.fusion_trained`).

Each query scores the bundle's candidate taxonomy strings: ``p = softmax(cos(z, z_T) / tau)``; for a Lorentz
bundle (METHOD.md section 9) ``p = softmax(-d(z, z_T) * scale)`` with the geodesic distance d, ``avg`` is the
tangent-space mean of the image and DNA points, and there is no ``fused`` query (no fusion head). The score of a
name at a level is the total probability of the candidates carrying it (a genus scores the sum of its
species, and of candidates identified only to that genus); candidates unknown at a level add to that level's
``unassigned`` mass instead of to any name. The nearest reference specimens of each query come from a FAISS
search of the bundle's reference bank (:class:`hirviz.geometry.ReferenceMap`).

Inputs are validated with messages meant for the user (:mod:`hirviz.inputs`): every error caused by the input
is an :class:`InputError` or a :class:`hirviz.barcode.BarcodeError`; catch :data:`INPUT_ERRORS` to get both.
The scoring and the result objects live in :mod:`hirviz.prediction`; both are re-exported here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from PIL import Image

from hirviz.abstain import assess
from hirviz.barcode import parse_barcode
from hirviz.candidates import CandidateSet
from hirviz.degrade import DnaNoise, box_blur, degrade_barcode_with_edits
from hirviz.geometry import Geometry, ReferenceMap
from hirviz.inputs import INPUT_ERRORS, MAX_IMAGE_PIXELS, ImageTooLarge, InputError, InvalidImage, load_image
from hirviz.prediction import (
    ROW_COLUMNS,
    Embedded,
    Prediction,
    QueryResult,
    agreement,
    deepest_rank,
    softmax_scores,
)
from hirviz.queries import QUERIES, compose_queries

# Callers import all of these from hirviz.predict, whichever module defines them (re-exports included).
__all__ = [
    "INPUT_ERRORS",
    "MAX_IMAGE_PIXELS",
    "QUERIES",
    "ROW_COLUMNS",
    "CandidateSet",
    "Embedded",
    "ImageTooLarge",
    "InputError",
    "InvalidImage",
    "Prediction",
    "Predictor",
    "QueryResult",
    "agreement",
    "deepest_rank",
    "load_image",
    "softmax_scores",
]

# The model's input image is shown enlarged to this width/height (nearest neighbour: its real pixels stay visible).
DISPLAY_SIZE = 256


# ---------------------------------------------------------------------------------------------------- predictor


class Predictor:
    """Identify specimens with a bundle (see the module docstring).

    Build one per bundle and reuse it: the model, candidate tables and neighbour indices are set up once.
    ``bundle`` needs ``model``, ``candidates``, ``candidate_ranks``, ``text_embeddings`` and (for neighbours)
    ``reference``.
    """

    def __init__(self, bundle: Any, device: str | torch.device = "cpu") -> None:
        self.bundle = bundle
        self.device = torch.device(device)
        self.model = bundle.model.to(self.device).eval()
        self.transform = self.model.image_transform(train=False)
        self.candidate_set = CandidateSet(bundle.candidates, bundle.candidate_ranks)
        self.text_embeddings = np.asarray(bundle.text_embeddings, dtype=np.float32)
        if self.text_embeddings.shape != (len(self.candidate_set), self.model.embed_dim):
            raise ValueError(
                f"text_embeddings has shape {self.text_embeddings.shape}, expected "
                f"({len(self.candidate_set)}, {self.model.embed_dim})"
            )
        self.logit_scale = float(self.model.logit_scale_exp().detach().cpu())
        self.geometry = Geometry.of(self.model)
        self._reference_map: ReferenceMap | None = None
        # The bundle's calibrated abstention policy (None: hard input limits only); see hirviz.abstain.
        self.abstention = getattr(bundle, "abstention", None)

    @property
    def reference_map(self) -> ReferenceMap | None:
        """The bundle's reference bank as a :class:`ReferenceMap` (``None`` when the bundle has none)."""
        if self._reference_map is None:
            reference = getattr(self.bundle, "reference", None)
            if reference is not None:
                self._reference_map = ReferenceMap(reference, self.geometry)
        return self._reference_map

    @property
    def fusion_trained(self) -> bool:
        """Whether the bundle's objective trained the fusion gate (see :attr:`hirviz.bundle.Bundle.fusion_trained`)."""
        return bool(getattr(self.bundle, "fusion_trained", True))

    def default_blur_kernel(self) -> int:
        """A clearly visible blur for this model's input grid: an odd kernel of about 1/16 of its size."""
        return max(3, max(self.model.image_size) // 16) | 1

    # -- embedding ---------------------------------------------------------------------------------

    def preprocess(self, image: Any) -> torch.Tensor:
        """The eval-transformed image ``[C, H, W]`` (validated and converted by :func:`load_image`)."""
        return self.transform(load_image(image))

    @torch.inference_mode()
    def embed(
        self,
        image: Any = None,
        barcode: str | None = None,
        *,
        blur_kernels: Sequence[int] = (0,),
        dna_noises: Sequence[DnaNoise | None] = (None,),
        seed: int = 0,
    ) -> Embedded:
        """Embed ``m`` degraded variants of one specimen in one batch per tower.

        ``blur_kernels`` and ``dna_noises`` give one setting per variant (a single value applies to all).
        ``barcode`` is pasted text (parsed by :func:`hirviz.barcode.parse_barcode`). The DNA noise of every
        variant is drawn from ``(seed, key=0)``.
        """
        if image is None and barcode is None:
            raise InputError("give an image, a DNA barcode or both")
        m = max(len(blur_kernels), len(dna_noises))
        blur_kernels = _broadcast(list(blur_kernels), m, "blur_kernels")
        dna_noises = _broadcast(list(dna_noises), m, "dna_noises")
        limit = max(self.model.image_size)
        for k in blur_kernels:
            if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k <= limit:
                raise InputError(f"the blur kernel must be a whole number from 0 to {limit}, got {k!r}")
        # The barcode is parsed first: it is cheap, and a bad one should not wait for the image to be decoded.
        clean = parse_barcode(barcode) if barcode is not None else None
        vectors: dict[str, np.ndarray] = {}
        out = Embedded(vectors, clean_barcode=clean)
        z_img = z_dna = None
        if image is not None:
            pixels = self.preprocess(image)
            out.pixels = torch.stack([box_blur(pixels, int(k)) for k in blur_kernels])
            z_img = self.model.encode_image(out.pixels.to(self.device)).float()
            vectors["image"] = z_img.cpu().numpy()
        if clean is not None:
            out.barcodes, out.edits = [], []
            for noise in dna_noises:
                seq, edits = (clean, []) if noise is None else degrade_barcode_with_edits(clean, noise, seed, key=0)
                out.barcodes.append(seq or "N")  # all bases cut: the model still needs one token
                out.edits.append(edits)
            tokens = self.model.tokenize_dna(out.barcodes)
            z_dna = self.model.encode_dna(tokens["input_ids"].to(self.device),
                                          tokens["attention_mask"].to(self.device)).float()
            vectors["dna"] = z_dna.cpu().numpy()
        if z_img is not None and z_dna is not None:
            combined = compose_queries(self.model, z_img, z_dna)
            vectors["avg"] = combined["avg"].cpu().numpy()
            if "fused" in combined:  # a Lorentz model has no fusion head
                vectors["fused"], out.gate = combined["fused"].cpu().numpy(), combined["gate"].cpu().numpy()
        return out

    # -- prediction --------------------------------------------------------------------------------

    def predict(
        self,
        image: Any = None,
        barcode: str | None = None,
        *,
        blur_kernel: int = 0,
        dna_noise: DnaNoise | None = None,
        seed: int = 0,
        top_k: int = 5,
        neighbours: int = 5,
        threshold: float = 0.5,
    ) -> Prediction:
        """Identify one specimen from an image, a barcode (raw or FASTA text) or both.

        ``blur_kernel`` box-blurs the image on the model's input grid; ``dna_noise`` degrades the barcode
        (seeded by ``seed``). ``top_k`` names are listed per level, ``neighbours`` reference specimens per
        query, and ``threshold`` decides :func:`deepest_rank`.

        Raises:
            InputError: no input, an unusable image (:class:`InvalidImage`, :class:`ImageTooLarge`) or setting.
            BarcodeError: an unusable barcode (its message says why).
        """
        for name, value, low in (("top_k", top_k, 1), ("neighbours", neighbours, 0), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise InputError(f"{name} must be a whole number >= {low}, got {value!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
            raise InputError(f"threshold must be a number between 0 and 1, got {threshold!r}")
        if dna_noise is not None and not isinstance(dna_noise, DnaNoise):
            raise InputError(f"dna_noise must be a DnaNoise, got {type(dna_noise).__name__}")

        image = load_image(image) if image is not None else None  # once here: abstention needs the photo's size
        embedded = self.embed(image, barcode, blur_kernels=[blur_kernel], dna_noises=[dna_noise], seed=seed)
        # An untrained gate's fused embedding is noise, not an answer: such a model has no fused query.
        names = [q for q in QUERIES if q in embedded.vectors and (q != "fused" or self.fusion_trained)]
        stacked = np.concatenate([embedded.vectors[q] for q in names])
        probs = softmax_scores(stacked, self.text_embeddings, self.logit_scale, self.geometry)
        hits = self._neighbours(names, embedded, neighbours)
        queries = {}
        for i, query in enumerate(names):
            levels, unassigned = self.candidate_set.aggregate(probs[i], top_k)
            best = np.argsort(-probs[i], kind="stable")[:top_k]
            top = [(self.candidate_set.candidates[c], float(probs[i, c])) for c in best]
            queries[query] = QueryResult(
                query=query, embedding=embedded.vectors[query][0], probabilities=probs[i], levels=levels,
                unassigned=unassigned, candidates=top,
                deepest_rank=deepest_rank(levels, threshold), neighbours=hits.get(query, []),
            )

        prediction = Prediction(
            queries=queries,
            agreement=agreement({q: r.levels for q, r in queries.items()}),
            candidate_set=self.candidate_set,
            fusion_trained=self.fusion_trained,
            settings={"blur_kernel": int(blur_kernel) if image is not None else 0,
                      "dna_noise": asdict(dna_noise) if dna_noise is not None and barcode is not None else None,
                      "seed": int(seed), "threshold": float(threshold)},
        )
        prediction.settings["abstention"] = assess(self, queries, embedded, image.size if image is not None else None)
        if embedded.gate is not None and self.fusion_trained:
            prediction.gate_vector = embedded.gate[0]
            prediction.gate = float(embedded.gate[0].mean())
        if barcode is not None:
            prediction.barcode = embedded.clean_barcode
            prediction.barcode_id = _fasta_id(barcode)
            if dna_noise is not None:
                prediction.degraded_barcode = embedded.barcodes[0]
                prediction.barcode_edits = embedded.edits[0]
        if embedded.pixels is not None:
            prediction.model_input_image = self.display_image(embedded.pixels[0])
        return prediction

    def _neighbours(self, names: list[str], embedded: Embedded, k: int) -> dict[str, list[dict[str, Any]]]:
        ref = self.reference_map
        if k == 0 or ref is None:
            return {}
        out = {}
        for query in names:
            if query in ref.spaces:
                sims, rows = ref.neighbours(embedded.vectors[query][0], query, k)
                out[query] = ref.records(sims, rows)
        return out

    def display_image(self, pixels: torch.Tensor, size: int = DISPLAY_SIZE) -> Image.Image:
        """A normalised model input ``[C, H, W]`` back as an RGB image, enlarged to ``size`` (nearest)."""
        mean = torch.tensor(self.model.image_mean).view(-1, 1, 1)
        std = torch.tensor(self.model.image_std).view(-1, 1, 1)
        rgb = (pixels.detach().cpu().float() * std + mean).clamp(0, 1).mul(255).round().to(torch.uint8)
        img = Image.fromarray(rgb.permute(1, 2, 0).numpy(), "RGB")
        scale = size / max(img.size)
        return img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.NEAREST)


def _broadcast(values: list, m: int, name: str) -> list:
    if len(values) == m:
        return values
    if len(values) == 1:
        return values * m
    raise InputError(f"{name} has {len(values)} settings; expected 1 or {m}")


def _fasta_id(text: str | bytes) -> str | None:
    """The first word of a FASTA header, if the text starts with one."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8", "replace")
    stripped = text.lstrip()
    if not stripped.startswith(">"):
        return None
    header = stripped[1:].split("\n", 1)[0].split()
    return header[0] if header else None
