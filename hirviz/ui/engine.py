"""The app's models and controls: an :class:`Engine` over the loaded bundles, and the noise settings users set.

The bundles play two roles. A bundle trained without images (:func:`barcode_only`, e.g. ``assets/real-coi``) is
the app's COI-barcode bundle: pasted barcodes go to the identification engine (:mod:`hirviz.coi`) with its
reference bank and model. The others are the photo (+ barcode) models compared side by side. Every bundle says
what it was trained on (:func:`data_kind`): real records, or the synthetic teaching benchmark with invented names.

:class:`NoiseSettings` and the input readers turn raw widget values into checked values or an
:class:`~hirviz.predict.InputError` whose message the page shows.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hirviz.candidates import CandidateSet
from hirviz.degrade import DnaNoise
from hirviz.model import int8_model
from hirviz.predict import InputError, Prediction, Predictor, agreement
from hirviz.taxonomy import LEVELS

__all__ = ["Engine", "NoiseSettings", "trained_fusion", "barcode_only", "data_kind", "image_source", "barcode_text",
           "BARCODE_ROUTES",
           "typed_names", "MAX_TYPED_NAMES", "MAX_TOP_K", "DEFAULT_TOP_K"]

MAX_BARCODE_BP = 20_000  # hirviz.barcode.parse_barcode's default limit
MAP_SPACES: tuple[str, ...] = ("fused", "image", "dna")
COLOUR_LEVELS: tuple[str, ...] = ("order", "family", "genus")
SWEEP_LEVELS: tuple[str, ...] = (*LEVELS, "global")
# Each DNA degradation as a slider: (DnaNoise field, label, slider maximum, step). The defaults shown are
# the paper's rates (METHOD.md section 7), read from DnaNoise so they cannot drift apart.
DNA_SLIDERS: tuple[tuple[str, str, float, float], ...] = (
    ("substitution", "Substitution rate", 0.2, 0.001),
    ("n_mask", "N-masking rate", 0.2, 0.001),
    ("insertion", "Insertion rate", 0.05, 0.001),
    ("deletion", "Deletion rate", 0.05, 0.001),
    ("n_run", "N-run dropout (fraction of length)", 0.5, 0.01),
    ("truncation", "Tail truncation (fraction cut)", 0.5, 0.01),
)
PAPER_NOISE = DnaNoise()
# Where a pasted barcode goes: (label, value) pairs of the Identify tab's radio.
BARCODE_ROUTES: tuple[tuple[str, str], ...] = (
    ("the real COI model (alignment + model)", "real"), ("the synthetic demo models", "demo"), ("both", "both"),
)
# Candidate names a user may type for the open-set ranking (each one is a text-tower forward pass).
MAX_TYPED_NAMES = 200
# Names per rank (and reference neighbours per query) the models are asked for; the result tables show the first
# top-k of them (the page's top-k control), so changing it re-renders without running the models again.
MAX_TOP_K = 10
DEFAULT_TOP_K = 5
# The synthetic benchmark (train/synthetic) names its specimens SYN0000001, SYN0000002, ...
_SYNTHETIC_ID_PREFIX = "SYN"


# ----------------------------------------------------------------------------------------------------- engine


class Engine:
    """The app's models: one :class:`~hirviz.predict.Predictor` (with its reference map) per bundle.

    ``bundles`` maps a display name to a loaded bundle, main model first. Predictors are built on first use
    (or by :meth:`warm_up`) and shared by every user of the app. ``int8``: run every model with int8 dynamic
    quantisation (:func:`hirviz.model.int8_model`; the app's ``HIRVIZ_INT8=1``), faster on CPU at a small,
    measured cost in agreement with the float32 answers (``bench/README.md``).
    """

    def __init__(self, bundles: Mapping[str, Any], int8: bool = False) -> None:
        if not bundles:
            raise ValueError("the app needs at least one bundle")
        self.bundles: dict[str, Any] = dict(bundles)
        # The first barcode-only bundle is the COI bundle; the others answer photos (and barcodes on request).
        self.coi_name: str | None = next((n for n, b in self.bundles.items() if barcode_only(b)), None)
        self.names: list[str] = [n for n in self.bundles if n != self.coi_name] or list(self.bundles)
        self.primary: str = self.names[0]
        self.int8 = bool(int8)
        self._predictors: dict[str, Predictor] = {}
        self._references: Any = None
        self._lock = threading.Lock()

    def coi_references(self) -> Any:
        """The COI bundle's reference barcodes as a :class:`~hirviz.coi_refs.ReferenceSet` (indexed once)."""
        if self._references is None and self.coi_name is not None:
            with self._lock:
                if self._references is None:
                    from hirviz.coi_refs import ReferenceSet

                    self._references = ReferenceSet.from_bundle(self.bundles[self.coi_name])
        return self._references

    def default_route(self) -> str:
        """Where a pasted barcode goes unless the user says otherwise: the real COI model when there is one."""
        return "real" if self.coi_name is not None else "demo"

    def image_trained(self, name: str) -> bool:
        """Whether a bundle's image tower was trained (a barcode-only bundle's was not: it never gets a photo)."""
        return not barcode_only(self.bundles[name])

    def photo_names(self) -> list[str]:
        """The compared models that read photos (:meth:`image_trained`)."""
        return [n for n in self.names if self.image_trained(n)]

    def data_kind(self, name: str) -> str:
        """``"synthetic"`` or ``"real"``: :func:`data_kind` of one bundle."""
        return data_kind(self.bundles[name])

    def predictor(self, name: str) -> Predictor:
        """The predictor of one bundle (built once)."""
        if name not in self._predictors:
            with self._lock:
                if name not in self._predictors:
                    predictor = self.bundles[name].predictor()
                    if self.int8:  # a quantised copy: the bundle's own float model stays as it was
                        predictor.model = int8_model(predictor.model)
                    self._predictors[name] = predictor
        return self._predictors[name]

    def warm_up(self) -> None:
        """Build every model and neighbour index and run one small prediction, before the first user comes.

        No UMAP is fitted: the maps are the bundles' precomputed layouts and queries are placed by neighbours.
        """
        probe = Image.new("RGB", (64, 64), "white")
        for name in self.names:
            predictor = self.predictor(name)
            if predictor.reference_map is not None:
                predictor.reference_map.warm_up()
            predictor.predict(image=probe if self.image_trained(name) else None, barcode="ACGT" * 100, neighbours=1)
        if self.coi_name is not None:
            self.predictor(self.coi_name).predict(barcode="ACGT" * 100, neighbours=1)
            refs = self.coi_references()
            refs.protein_hits("", refs.hits("ACGT" * 100, k=1))  # builds the k-mer index, translates the references

    def blur_limit(self) -> int:
        """The largest blur kernel every model accepts (the side of the smallest model input grid)."""
        return min(max(self.predictor(name).model.image_size) for name in self.names)

    def default_blur(self) -> int:
        """A clearly visible blur for the main model."""
        return self.predictor(self.primary).default_blur_kernel()

    def map_spaces(self) -> list[str]:
        """The map spaces any bundle has a layout for, in :data:`MAP_SPACES` order."""
        have = set()
        for name in self.names:
            have.update(self.layouts(name))
        return [s for s in MAP_SPACES if s in have]

    def layouts(self, name: str) -> dict[str, np.ndarray]:
        """A bundle's precomputed map layouts, without those of a part never trained (fusion gate, image tower)."""
        layouts = dict(getattr(self.bundles[name].reference, "layouts", None) or {})
        if not trained_fusion(self.bundles[name]) or not self.image_trained(name):
            layouts.pop("fused", None)
        if not self.image_trained(name):  # an untrained image tower places specimens nowhere meaningful
            layouts.pop("image", None)
        return layouts

    def ranks_typed_names(self, name: str) -> bool:
        """Whether a bundle can rank names a user types: a Euclidean model (its text tower embeds them as trained)."""
        return getattr(self.bundles[name], "geometry_name", "euclidean") != "lorentz"

    def typed_predictor(self, name: str, names: Sequence[str]) -> Predictor:
        """One bundle's predictor ranking only ``names`` (taxonomy strings, order first), embedded by its text tower.

        A name the bundle knows keeps its ranks; another is read by position (order, family, genus, then the rest
        as the species). Raises :class:`InputError` for a hyperbolic bundle.
        """
        if not self.ranks_typed_names(name):
            raise InputError(f"{name} is hyperbolic: it ranks its own candidate names only, not typed ones.")
        predictor = self.predictor(name)
        bundle = self.bundles[name]
        known = dict(zip(bundle.candidates, bundle.candidate_ranks))
        ranks = [known.get(n) or _positional_ranks(n) for n in names]
        model = predictor.model
        with torch.inference_mode():
            embeddings = model.encode_text(model.tokenize_text(list(names)).to(predictor.device))
        typed = copy.copy(predictor)  # shares the model and reference map; only the candidates differ
        typed.candidate_set = CandidateSet(list(names), ranks)
        typed.text_embeddings = embeddings.float().cpu().numpy()
        return typed

    def predict(self, name: str, image: Any, barcode: str | None, noise: NoiseSettings,
                names: Sequence[str] | None = None) -> Prediction:
        """One bundle's prediction (over ``names`` only when given, see :meth:`typed_predictor`), with
        :data:`MAX_TOP_K` names per rank and neighbours per query; a model without trained fusion loses its
        meaningless fused query."""
        predictor = self.typed_predictor(name, names) if names else self.predictor(name)
        prediction = predictor.predict(
            image=image, barcode=barcode, blur_kernel=noise.blur_kernel if image is not None else 0,
            dna_noise=noise.dna_or_none if barcode is not None else None, seed=noise.seed, top_k=MAX_TOP_K,
            neighbours=MAX_TOP_K)
        if "fused" in prediction.queries and not trained_fusion(self.bundles[name]):
            del prediction.queries["fused"]
            prediction.agreement = agreement({q: r.levels for q, r in prediction.queries.items()})
            prediction.gate = prediction.gate_vector = None
        return prediction

    def sweeps(self) -> dict[str, list[dict[str, Any]]]:
        """Each bundle's accuracy-versus-noise sweep records (empty lists where not evaluated)."""
        return {name: _sweep_records(getattr(self.bundles[name], "eval_results", None)) for name in self.names}


def trained_fusion(bundle: Any) -> bool:
    """Whether a bundle's gated fusion was trained (:attr:`hirviz.bundle.Bundle.fusion_trained`).

    Other models still carry a fusion head, but its gate is untrained, so their fused query and fused map mean
    nothing; the app leaves them out rather than show noise as an answer.
    """
    return bool(getattr(bundle, "fusion_trained", True))


def barcode_only(bundle: Any) -> bool:
    """Whether a bundle was trained on DNA (and taxonomy text) without any image: its image tower is untrained."""
    data = (getattr(bundle, "training", None) or {}).get("data") or {}
    return "metadata" in data and not data.get("images")


def data_kind(bundle: Any) -> str:
    """``"synthetic"`` for a bundle of the synthetic teaching benchmark (its taxon names are invented), else
    ``"real"``. Told by the reference specimens' ids, which the synthetic benchmark writes as ``SYN<number>``."""
    try:
        ids = bundle.reference.ids
    except (OSError, ValueError, AttributeError):  # an unreadable reference (BundleError) is not shown as real
        return "synthetic"
    return "synthetic" if len(ids) and all(str(i).startswith(_SYNTHETIC_ID_PREFIX) for i in ids[:50]) else "real"


def typed_names(text: Any) -> list[str]:
    """The candidate names typed in the open-set box: one taxonomy string per line, blanks and repeats dropped."""
    if text is None:
        return []
    if not isinstance(text, str):
        raise InputError("The candidate names must be text: one taxonomy string per line.")
    names = list(dict.fromkeys(" ".join(line.split()) for line in text.splitlines()))
    names = [n for n in names if n]
    if len(names) > MAX_TYPED_NAMES:
        raise InputError(f"{len(names)} candidate names: type at most {MAX_TYPED_NAMES}, one per line.")
    return names


def _positional_ranks(name: str) -> tuple[str | None, ...]:
    words = name.split()
    species = " ".join(words[3:]) or None
    return (*(words[i] if i < len(words) else None for i in range(3)), species)


def _sweep_records(results: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    sweep = (results or {}).get("sweep")
    if isinstance(sweep, Mapping):  # tolerate {"records": [...]}
        sweep = sweep.get("records")
    return [r for r in sweep or [] if isinstance(r, Mapping)]

# ------------------------------------------------------------------------------------------- input handling


@dataclass(frozen=True)
class NoiseSettings:
    """The noise controls: blur kernel (pixels on the model's input grid), DNA rates and the seed."""

    blur_kernel: int = 0
    dna: DnaNoise = field(default_factory=DnaNoise.off)
    seed: int = 0

    @classmethod
    def from_controls(cls, blur_kernel: Any, rates: Sequence[Any], seed: Any) -> NoiseSettings:
        """Read the raw widget values (numbers, numeric strings or None); raise :class:`InputError` if unusable."""
        blur = _whole_number(blur_kernel, "the blur kernel")
        seed_value = _whole_number(seed, "the seed")
        values = {}
        for (name, label, _, _), value in zip(DNA_SLIDERS, rates, strict=True):
            number = _number(value, label.lower())
            if not 0.0 <= number <= 1.0:
                raise InputError(f"{label.lower()} must be between 0 and 1, got {number:g}")
            values[name] = number
        return cls(blur, DnaNoise(**values), seed_value)

    @property
    def dna_or_none(self) -> DnaNoise | None:
        """The DNA noise, or ``None`` when it changes nothing (the barcode is used as given)."""
        return None if self.dna.is_off() else self.dna


def _number(value: Any, what: str) -> float:
    if value is None or value == "":
        return 0.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, got {value!r}") from None
    if not np.isfinite(number):
        raise InputError(f"{what} must be a finite number, got {value!r}")
    return number


def _whole_number(value: Any, what: str) -> int:
    number = _number(value, what)
    if number < 0 or number != int(number):
        raise InputError(f"{what} must be a whole number >= 0, got {value!r}")
    return int(number)


def image_source(value: Any) -> Any:
    """The uploaded image as something :func:`hirviz.predict.load_image` reads, or ``None`` for no image.

    The image input skips Gradio's own decoding (which fails on exactly the files users need a message
    about), so it arrives as Gradio's file payload (a dict with ``path``), a path, or, from Python, an image.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, Mapping):
        path = value.get("path")
        if not path:
            raise InputError("the uploaded image did not arrive: upload it again")
        return path
    if isinstance(value, (str, Path, Image.Image, np.ndarray, bytes, bytearray)):
        return value
    raise InputError(f"cannot read an image from a {type(value).__name__}")


def barcode_text(value: Any) -> str | None:
    """The pasted barcode text, or ``None`` when nothing (or only blanks) was pasted."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"the barcode must be text, got {type(value).__name__}")
    return value if value.strip() else None
