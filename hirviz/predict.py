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

Inputs are validated with messages meant for the user: every error caused by the input is an
:class:`InputError` or a :class:`hirviz.barcode.BarcodeError`; catch :data:`INPUT_ERRORS` to get both.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from hirviz.abstain import assess
from hirviz.barcode import BarcodeError, parse_barcode
from hirviz.candidates import CandidateSet
from hirviz.degrade import DnaNoise, Edit, box_blur, degrade_barcode_with_edits
from hirviz.geometry import EUCLIDEAN, Geometry, ReferenceMap
from hirviz.queries import QUERIES, compose_queries
from hirviz.taxonomy import LEVELS

__all__ = [
    "INPUT_ERRORS",
    "MAX_IMAGE_PIXELS",
    "QUERIES",
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
]

# Larger photos are refused: decoding one costs hundreds of MB and the model sees a few hundred pixels anyway.
MAX_IMAGE_PIXELS = 40_000_000
# The model's input image is shown enlarged to this width/height (nearest neighbour: its real pixels stay visible).
DISPLAY_SIZE = 256
ROW_COLUMNS: tuple[str, ...] = ("file_name", "barcode_id", "query", "rank", *LEVELS, "score")


class InputError(ValueError):
    """An input the predictor cannot use; the message is meant for the user."""


class InvalidImage(InputError):
    """Not an image, a corrupt or truncated file, or an image of an unusable shape or colour mode."""


class ImageTooLarge(InputError):
    """An image with more pixels than :data:`MAX_IMAGE_PIXELS` (including decompression bombs)."""


# Every error a user's input can cause: the UI and the CLI catch these and show the message.
INPUT_ERRORS: tuple[type[Exception], ...] = (InputError, BarcodeError)


# ---------------------------------------------------------------------------------------------------- images


def load_image(image: Any, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Read an image into 8-bit RGB, as the model's transforms expect.

    ``image`` is a PIL image, a numpy array (``[H, W]``, ``[H, W, 1|3|4]``; uint8, uint16, bool, other integers
    or floats in [0, 1]), a path, or the bytes of an image file (JPEG, PNG, WebP, TIFF, BMP, GIF ... anything
    PIL reads; the first frame of an animation). The EXIF orientation of a file is applied. 16-bit and float
    images are scaled to 8 bits (16-bit: ``v / 257``), not clipped; transparency is composited onto white
    (specimen photos are shot on white).

    Raises:
        InvalidImage: a missing file, non-image or corrupt data, an empty image or an unusable array shape.
        ImageTooLarge: more than ``max_pixels`` pixels (checked from the header, before decoding).
    """
    if isinstance(image, Image.Image):
        _check_size(image.size, max_pixels)
        try:
            image.load()  # an image opened lazily by the caller may still hold undecoded, broken data
        except (OSError, ValueError, SyntaxError, EOFError) as err:
            raise InvalidImage(f"the image is corrupt or truncated: {err}") from None
        return _to_rgb(image)
    if isinstance(image, np.ndarray):
        return _to_rgb(_from_array(image, max_pixels))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _open(io.BytesIO(bytes(image)), "the uploaded data", max_pixels)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise InvalidImage(f"image file not found: {path}")
        return _open(path, f"{path.name!r}", max_pixels)
    raise InvalidImage(f"expected an image (PIL image, numpy array, path or bytes), got {type(image).__name__}")


def _check_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise InvalidImage(f"the image is empty ({width} x {height} pixels)")
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"the image is {width} x {height} = {width * height / 1e6:.1f} megapixels; the limit is "
            f"{max_pixels / 1e6:g} megapixels: downscale it first"
        )


def _open(source: Any, what: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Our own limit (checked next, from the header) is lower than PIL's warning threshold.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                _check_size(img.size, max_pixels)
                img.seek(0)
                img.load()  # decode now, inside the error handling: truncated data fails here
                try:
                    img = ImageOps.exif_transpose(img)
                except Exception:  # a broken EXIF block should not lose the picture itself
                    pass
                return _to_rgb(img)
    except Image.DecompressionBombError as err:
        raise ImageTooLarge(f"{what} is too large to decode safely (a decompression bomb?): {err}") from None
    except UnidentifiedImageError:
        raise InvalidImage(f"{what} is not an image file PIL can read (JPEG, PNG, WebP, TIFF, ...)") from None
    except InputError:
        raise
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise InvalidImage(f"{what} is a corrupt or truncated image: {err}") from None


def _to_uint8(array: np.ndarray) -> np.ndarray:
    """Scale an integer, float or bool array to uint8 by its type's natural range (not by its own extremes)."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == bool:
        return array.astype(np.uint8) * 255
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise InvalidImage("the image holds NaN or infinite values")
    top = float(values.max()) if values.size else 0.0
    if np.issubdtype(array.dtype, np.floating):
        scale = 255.0 if top <= 1.0 else 1.0  # floats: [0, 1] or already [0, 255]
        if top > 255.0:
            scale = 255.0 / 65535.0 if top <= 65535.0 else 255.0 / top
    elif array.dtype == np.uint16 or top > 255:
        # 16-bit data, also when stored in wider integers (PIL's mode "I"); beyond 16 bits: scale by the maximum.
        scale = 1.0 / 257.0 if top <= 65535 else 255.0 / top
    else:
        scale = 1.0
    return np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)


def _from_array(array: np.ndarray, max_pixels: int) -> Image.Image:
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise InvalidImage(f"an image array must be [H, W] or [H, W, 1|3|4], got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == bool) or np.iscomplexobj(array):
        raise InvalidImage(f"an image array must hold numbers, got dtype {array.dtype}")
    _check_size((array.shape[1], array.shape[0]), max_pixels)
    mode = "L" if array.ndim == 2 else {3: "RGB", 4: "RGBA"}[array.shape[2]]
    return Image.fromarray(np.ascontiguousarray(_to_uint8(array)), mode)


def _to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB; high-bit-depth modes rescaled, transparent areas made white."""
    if img.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):
        img = Image.fromarray(_to_uint8(np.asarray(img)), "L")
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info
    try:
        if has_alpha:
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            background.alpha_composite(rgba)
            return background.convert("RGB")
        return img.convert("RGB")
    except (ValueError, OSError) as err:
        raise InvalidImage(f"cannot convert an image of mode {img.mode!r} to RGB: {err}") from None


# ---------------------------------------------------------------------------------------------------- scoring


def softmax_scores(z: np.ndarray, text_embeddings: np.ndarray, logit_scale: float,
                   geometry: Geometry = EUCLIDEAN) -> np.ndarray:
    """``softmax(logit_scale * cos)`` over the candidates (Lorentz: ``softmax(-logit_scale * d)``), ``[n, C]`` for
    queries ``[n, d]`` (float64)."""
    logits = geometry.logits(z, text_embeddings, logit_scale)
    logits -= logits.max(axis=-1, keepdims=True)
    weights = np.exp(logits)
    return weights / weights.sum(axis=-1, keepdims=True)


def deepest_rank(levels: dict[str, list[tuple[str, float]]], threshold: float = 0.5) -> str | None:
    """The deepest level whose top-1 score is at least ``threshold``, going down from order.

    The walk stops at the first level that falls short (or has no names), so a confident species under an
    uncertain genus does not count. ``None`` when even the order is uncertain.
    """
    deepest = None
    for level in LEVELS:
        ranked = levels.get(level) or []
        if not ranked or ranked[0][1] < threshold:
            break
        deepest = level
    return deepest


def agreement(levels_by_query: dict[str, dict[str, list[tuple[str, float]]]]) -> dict[str, bool]:
    """Per level, whether every query's top-1 name is the same (a lone query agrees with itself).

    A query with no name at a level (no candidate known that deep) disagrees.
    """
    out = {}
    for level in LEVELS:
        tops = [ranked[level][0][0] if ranked.get(level) else None for ranked in levels_by_query.values()]
        out[level] = bool(tops) and None not in tops and len(set(tops)) == 1
    return out


# ---------------------------------------------------------------------------------------------------- results


@dataclass
class QueryResult:
    """What one query (image, dna, avg or fused) says.

    Attributes:
        query: the query's name.
        embedding: the query embedding ``[d]`` (L2-normalised, or a Lorentz space part).
        probabilities: probability of every candidate ``[C]`` (aligned with ``bundle.candidates``).
        levels: per level, the top-k ``(name, score)``; a score sums the probabilities of the candidates with
            that name at that level.
        unassigned: per level, the probability mass of candidates unknown at that level.
        candidates: the top-k whole taxonomy strings ``(string, probability)``.
        deepest_rank: see :func:`deepest_rank`.
        neighbours: nearest reference specimens, ``{"id", "row", "ranks", "similarity"}`` each.
        abstained: whether the query answers "no confident match" (:mod:`hirviz.abstain`): its names are kept
            for inspection but are not an identification.
        reason: why it abstained, in plain language (``None`` when it did not).
        signals: the abstention signals measured for it (higher = better evidence).
    """

    query: str
    embedding: np.ndarray
    probabilities: np.ndarray
    levels: dict[str, list[tuple[str, float]]]
    unassigned: dict[str, float]
    candidates: list[tuple[str, float]]
    deepest_rank: str | None
    neighbours: list[dict[str, Any]] = field(default_factory=list)
    abstained: bool = False
    reason: str | None = None
    signals: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable (the full probability vector is left out; the top candidates are in)."""
        return {
            "embedding": [float(x) for x in self.embedding],
            "levels": {lvl: [{"name": n, "score": s} for n, s in ranked] for lvl, ranked in self.levels.items()},
            "unassigned": dict(self.unassigned),
            "candidates": [{"taxonomy": t, "score": s} for t, s in self.candidates],
            "deepest_rank": self.deepest_rank,
            "neighbours": [dict(n, ranks=dict(n["ranks"])) for n in self.neighbours],
            "abstained": self.abstained,
            "reason": self.reason,
            "signals": {k: (v if np.isfinite(v) else None) for k, v in self.signals.items()},
        }


@dataclass
class Prediction:
    """The answer of :meth:`Predictor.predict`.

    Attributes:
        queries: the queries the inputs support (image only: ``image``; barcode only: ``dna``; both: all four, or
            ``image``, ``dna`` and ``avg`` when the model's fusion gate was never trained).
        agreement: per level, whether the top-1 names of all queries agree.
        gate: mean of the fusion gate g over dimensions: how much the fused embedding leaned on the image (1)
            rather than the DNA (0); ``None`` without both inputs or when the gate was never trained.
        gate_vector: the per-dimension gate ``[d]`` or ``None``.
        barcode: the parsed clean barcode, ``barcode_id`` its FASTA header's first word (or ``None``).
        degraded_barcode: the barcode the model saw when DNA noise was applied, else ``None``.
        barcode_edits: the changes the noise made (:class:`hirviz.degrade.Edit`).
        model_input_image: what the image tower saw (after the eval transform and blur), enlarged for display.
        settings: the degradation settings used (blur kernel, DNA noise, seed, threshold).
        fusion_trained: whether the model's fusion gate was trained (see :attr:`Predictor.fusion_trained`).
        candidate_set: the candidates the probabilities refer to.
    """

    queries: dict[str, QueryResult]
    agreement: dict[str, bool]
    gate: float | None = None
    gate_vector: np.ndarray | None = None
    barcode: str | None = None
    barcode_id: str | None = None
    degraded_barcode: str | None = None
    barcode_edits: list[Edit] = field(default_factory=list)
    model_input_image: Image.Image | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    fusion_trained: bool = True
    candidate_set: CandidateSet | None = field(default=None, repr=False)

    def to_rows(self, file_name: str | None = None, barcode_id: str | None = None) -> list[dict[str, Any]]:
        """One row per query x level x top-k name, pybioclip-style (columns :data:`ROW_COLUMNS`).

        ``rank`` is the row's level; the level columns hold the name's lineage down to that level ("" where
        unknown or below). ``barcode_id`` defaults to the FASTA header of the barcode.
        """
        barcode_id = self.barcode_id if barcode_id is None else barcode_id
        rows = []
        for query, result in self.queries.items():
            for level, ranked in result.levels.items():
                for name, score in ranked:
                    lineage = self.candidate_set.lineage(level, name) if self.candidate_set else {level: name}
                    rows.append({
                        "file_name": file_name or "", "barcode_id": barcode_id or "", "query": query, "rank": level,
                        **{lvl: lineage.get(lvl) or "" for lvl in LEVELS}, "score": score,
                    })
        return rows

    @property
    def verdict(self) -> tuple[str | None, str | None]:
        """``(query, deepest rank)`` of the first non-abstaining query, joint evidence first
        (:func:`hirviz.abstain.verdict`); ``(None, None)`` when every query abstains."""
        from hirviz.abstain import verdict

        return verdict(self)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable summary (everything but the display image and full probability vectors)."""
        return {
            "queries": {name: result.to_dict() for name, result in self.queries.items()},
            "agreement": dict(self.agreement),
            "gate": self.gate,
            "gate_vector": None if self.gate_vector is None else [float(x) for x in self.gate_vector],
            "barcode": self.barcode,
            "barcode_id": self.barcode_id,
            "degraded_barcode": self.degraded_barcode,
            "barcode_edits": [asdict(e) for e in self.barcode_edits],
            "settings": dict(self.settings),
            "fusion_trained": self.fusion_trained,
        }


@dataclass
class Embedded:
    """Query embeddings of ``m`` variants of one specimen (one per degradation setting).

    ``vectors`` maps each available query to ``[m, d]``; ``gate`` is ``[m, d]`` when both inputs were given;
    ``pixels`` ``[m, C, H, W]`` is the normalised model input; ``clean_barcode`` the parsed barcode and
    ``barcodes`` / ``edits`` what the DNA tower saw.
    """

    vectors: dict[str, np.ndarray]
    gate: np.ndarray | None = None
    pixels: torch.Tensor | None = None
    clean_barcode: str | None = None
    barcodes: list[str] | None = None
    edits: list[list[Edit]] | None = None


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
