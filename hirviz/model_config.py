"""The settings of a hirviz model: :class:`ModelConfig`, stored in a bundle's ``config.json``.

A plain dataclass (no torch): a bundle's or a training run's model settings can be read and checked without
loading the model. :func:`hirviz.model.build_model` turns one into a :class:`hirviz.model.HirvizModel`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["DNA_ENCODERS", "GEOMETRIES", "ModelConfig"]

DNA_ENCODERS = ("kmer-bert", "auto")
GEOMETRIES = ("euclidean", "lorentz")


@dataclass
class ModelConfig:
    """Everything needed to rebuild a :class:`hirviz.model.HirvizModel`; stored in a bundle's ``config.json``.

    Attributes:
        embed_dim: dimension d of the shared embedding space. With pretrained OpenCLIP weights it must
            equal the checkpoint's (512 for BioCLIP, 768 for ViT-L-14); otherwise the OpenCLIP
            config's ``embed_dim`` is set to it.
        clip_model: an OpenCLIP architecture name (``"ViT-B-16"``, ``"ViT-L-14"``), an ``hf-hub:``
            repo (``"hf-hub:imageomics/bioclip"``, which always loads the repo's weights), a
            ``local-dir:`` folder, or a project architecture from :data:`PROJECT_CLIP_CONFIGS`.
        clip_pretrained: OpenCLIP pretrained tag (``"commonpool_xl_laion_s13b_b90k"``) or checkpoint
            file for a named architecture; ``None`` means random initialisation.
        clip_overrides: deep-merged into the OpenCLIP model config before the model is built, e.g.
            ``{"vision_cfg": {"width": 768, "layers": 12}}``; changing shapes needs random init.
        freeze_text: freeze the text tower (token and positional embeddings, transformer, ln_final,
            text_projection), as with BioCLIP in the paper.
        dna_encoder: ``"kmer-bert"`` (a randomly initialised ``BertModel`` of the size given by the
            ``dna_*`` fields, vocabulary from the DNA tokenizer) or ``"auto"`` (``AutoModel`` from
            ``dna_model``).
        dna_model: local directory or hub id of the ``"auto"`` checkpoint.
        dna_trust_remote_code: passed to ``AutoModel.from_pretrained``; DNABERT-2 needs ``True``.
        dna_hidden, dna_layers, dna_heads, dna_intermediate, dna_dropout: size of the k-mer BERT.
        dna_tokenizer: spec for :func:`hirviz.dna_tokenizers.load_dna_tokenizer` (``"kmer"``, ``"kmer:6"``,
            a tokenizer JSON path or its config dict).
        fusion_hidden_mult, fusion_dropout: :class:`hirviz.model.GatedFusion` hidden width (multiple of d), dropout.
        temperature: contrastive temperature tau; the model holds ``logit_scale = log(1/tau)``.
        learn_temperature: make ``logit_scale`` a trained parameter (its exp() is clamped at 100).
        detach_dna_in_fusion: stop fusion gradients into the DNA encoder (the authors' code does).
        geometry: ``"euclidean"`` (L2-normalised embeddings, cosine similarity) or ``"lorentz"`` (the hyperbolic
            variant, METHOD.md section 9: ``temperature`` sets the initial logit scale, ``learn_temperature``
            whether it is trained).
        curvature: the initial c of the Lorentz model (curvature -c). learn_curvature: train c (clamped to
            [0.1, 10]). Both are read only with ``geometry="lorentz"``.
    """

    embed_dim: int = 64
    clip_model: str = "hirviz-tiny"
    clip_pretrained: str | None = None
    clip_overrides: dict[str, Any] = field(default_factory=dict)
    freeze_text: bool = False
    dna_encoder: str = "kmer-bert"
    dna_model: str | None = None
    dna_trust_remote_code: bool = False
    dna_hidden: int = 64
    dna_layers: int = 2
    dna_heads: int = 2
    dna_intermediate: int = 128
    dna_dropout: float = 0.1
    dna_tokenizer: str | dict[str, Any] = "kmer"
    fusion_hidden_mult: int = 2
    fusion_dropout: float = 0.0
    temperature: float = 0.07
    learn_temperature: bool = False
    detach_dna_in_fusion: bool = False
    geometry: str = "euclidean"
    curvature: float = 1.0
    learn_curvature: bool = True

    def __post_init__(self) -> None:
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"model.geometry must be one of {GEOMETRIES}, got {self.geometry!r}")
        if not 0.1 <= self.curvature <= 10.0:
            raise ValueError(f"model.curvature must be in [0.1, 10], got {self.curvature}")
        if self.embed_dim <= 0:
            raise ValueError(f"embed_dim must be positive, got {self.embed_dim}")
        if self.dna_encoder not in DNA_ENCODERS:
            raise ValueError(f"dna_encoder must be one of {DNA_ENCODERS}, got {self.dna_encoder!r}")
        if self.dna_encoder == "auto" and not self.dna_model:
            raise ValueError("dna_encoder='auto' needs dna_model (a local directory or a hub id)")
        if self.dna_encoder == "kmer-bert" and self.dna_hidden % self.dna_heads:
            raise ValueError(f"dna_hidden ({self.dna_hidden}) must be divisible by dna_heads ({self.dna_heads})")
        if not isinstance(self.clip_overrides, dict):
            raise TypeError(f"clip_overrides must be a dict, got {type(self.clip_overrides).__name__}")
        if not isinstance(self.dna_tokenizer, (str, dict)):
            raise TypeError(f"dna_tokenizer must be a str or a dict, got {type(self.dna_tokenizer).__name__}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0.0 <= self.fusion_dropout < 1.0:
            raise ValueError(f"fusion_dropout must be in [0, 1), got {self.fusion_dropout}")
        if self.fusion_hidden_mult <= 0:
            raise ValueError(f"fusion_hidden_mult must be positive, got {self.fusion_hidden_mult}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable copy of the config."""
        return json.loads(json.dumps(asdict(self)))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        """Rebuild a config from :meth:`to_dict` output; unknown keys are an error, not silently dropped."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {unknown}; known keys: {sorted(known)}")
        return cls(**copy.deepcopy(dict(data)))
