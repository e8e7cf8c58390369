"""The hirviz model: OpenCLIP image/text towers, a transformers DNA encoder and a gated fusion head.

Every encoder maps its modality into one shared, L2-normalised embedding space of dimension
``embed_dim`` (METHOD.md sections 4-5):

* image and taxonomy text: an OpenCLIP model (a built-in architecture with an optional pretrained
  tag, an ``hf-hub:`` repo such as BioCLIP, or a small architecture defined here, ``hirviz-tiny``);
* DNA barcode: a BERT over k-mer tokens (BarcodeBERT-like) or any ``AutoModel`` checkpoint
  (DNABERT-2), followed by a per-token linear projection and mean pooling over real tokens;
* fusion: :class:`GatedFusion`, a per-dimension sigmoid gate mixing the image and DNA embeddings.

With ``geometry="lorentz"`` (METHOD.md section 9) the projected features are not L2-normalised: a
:class:`hirviz.lorentz.LorentzProjector` scales them per modality and maps them onto the hyperboloid (space
parts, float32), and the model has no fusion head (HiR and the gated fusion are defined on the unit sphere).

:func:`build_model` turns a JSON-serialisable :class:`ModelConfig` (:mod:`hirviz.model_config`, re-exported here)
into a :class:`HirvizModel`.
The backbones are built by :mod:`hirviz.backbones`: pretrained ones come from the local caches first; when
one is missing and the hub cannot be reached (or offline mode is on), :class:`BackboneUnavailable` is raised
at once instead of retrying.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hirviz.backbones import (  # noqa: F401  (MODEL_CONFIG_DIR, PROJECT_CLIP_CONFIGS: re-exported)
    MODEL_CONFIG_DIR,
    PROJECT_CLIP_CONFIGS,
    BackboneUnavailable,
    build_clip,
    build_dna_backbone,
)
from hirviz.dna_tokenizers import load_dna_tokenizer
from hirviz.lorentz import LorentzProjector, tangent_mean
from hirviz.model_config import DNA_ENCODERS, GEOMETRIES, ModelConfig  # noqa: F401  (constants re-exported)
from hirviz.torchvision_compat import ensure_torchvision
from hirviz.transforms import tower_transform

ensure_torchvision()  # open_clip imports torchvision, which needs the shim on a CPU-only torch
import open_clip  # noqa: E402

__all__ = [
    "MODEL_CONFIG_DIR",
    "PROJECT_CLIP_CONFIGS",
    "BackboneUnavailable",
    "DnaEncoder",
    "GatedFusion",
    "HirvizModel",
    "ModelConfig",
    "average_fusion",
    "build_model",
    "int8_model",
]


# --------------------------------------------------------------------------------------------------
# Encoders and fusion


class DnaEncoder(nn.Module):
    """DNA backbone -> per-token ``Linear(hidden -> embed_dim)`` -> masked mean pooling -> L2 norm.

    Pooling averages only the positions whose attention mask is 1. The authors' code averages over
    padding too, which makes an embedding depend on how long the other barcodes in its batch are.
    """

    def __init__(self, backbone: nn.Module, hidden_size: int, embed_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.proj = nn.Linear(hidden_size, embed_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Embed token ids ``[B, T]`` with mask ``[B, T]`` (1 = real token) into ``[B, embed_dim]``."""
        return F.normalize(self.features(input_ids, attention_mask), dim=-1)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The pooled projection ``[B, embed_dim]`` before normalisation (what the Lorentz projector embeds)."""
        if input_ids.dim() != 2 or input_ids.shape != attention_mask.shape:
            raise ValueError(
                f"expected input_ids and attention_mask of the same shape [B, T], got "
                f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
            )
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        # transformers models return a ModelOutput; remote-code ones (DNABERT-2) may return a tuple.
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        tokens = self.proj(hidden)
        mask = attention_mask.to(tokens.dtype).unsqueeze(-1)
        return (tokens * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


class GatedFusion(nn.Module):
    """Per-dimension gated fusion of image and DNA embeddings (METHOD.md section 4, Eq. 10).

    ``g = sigmoid(W2 dropout(relu(W1 [z_I; z_D])))`` with ``W1: 2d -> hidden_mult*d``, ``W2: -> d``,
    and ``z_F = normalize(g * z_I + (1 - g) * z_D)``.
    """

    def __init__(self, embed_dim: int, hidden_mult: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        hidden = hidden_mult * embed_dim
        self.gate = nn.Sequential(
            nn.Linear(2 * embed_dim, hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, embed_dim),
            nn.Sigmoid(),
        )

    def forward(self, z_image: torch.Tensor, z_dna: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the fused embedding ``[B, d]`` (unit norm) and the gate ``[B, d]`` in (0, 1)."""
        _check_same_shape(z_image, z_dna)
        g = self.gate(torch.cat([z_image, z_dna], dim=-1))
        return F.normalize(g * z_image + (1.0 - g) * z_dna, dim=-1), g


def _check_same_shape(z_image: torch.Tensor, z_dna: torch.Tensor) -> None:
    if z_image.shape != z_dna.shape:
        raise ValueError(f"image and DNA embeddings differ in shape: {tuple(z_image.shape)} vs {tuple(z_dna.shape)}")


def average_fusion(z_image: torch.Tensor, z_dna: torch.Tensor) -> torch.Tensor:
    """The naive "Avg" baseline: ``normalize((z_I + z_D) / 2)``."""
    _check_same_shape(z_image, z_dna)
    return F.normalize((z_image + z_dna) / 2.0, dim=-1)


# --------------------------------------------------------------------------------------------------
# The model


class HirvizModel(nn.Module):
    """Image, text and DNA encoders into one space, plus the gated fusion head.

    Build one with :func:`build_model`. Attributes: ``clip`` (the OpenCLIP model), ``dna`` (a
    :class:`DnaEncoder`), ``fusion`` (a :class:`GatedFusion`; ``None`` in the Lorentz geometry), ``dna_tokenizer``,
    ``config`` and ``logit_scale`` (``log(1/tau)``: a parameter when the temperature is learnt, else a buffer;
    Euclidean only) or ``projector`` (a :class:`~hirviz.lorentz.LorentzProjector` holding the alphas, the curvature
    and the logit scale; Lorentz only, else ``None``).
    """

    def __init__(
        self,
        config: ModelConfig,
        clip: nn.Module,
        text_tokenizer: Callable[..., torch.Tensor],
        dna_encoder: DnaEncoder,
        dna_tokenizer: Any,
    ) -> None:
        super().__init__()
        self.config = config
        self.clip = clip
        self.dna = dna_encoder
        self.fusion: GatedFusion | None = None
        self.projector: LorentzProjector | None = None
        if config.geometry == "lorentz":
            self.projector = LorentzProjector(config.embed_dim, curvature=config.curvature,
                                              learn_curvature=config.learn_curvature,
                                              logit_scale=1.0 / config.temperature)
            self.projector.log_logit_scale.requires_grad_(config.learn_temperature)
        else:
            self.fusion = GatedFusion(config.embed_dim, config.fusion_hidden_mult, config.fusion_dropout)
        self.text_tokenizer = text_tokenizer
        self.dna_tokenizer = dna_tokenizer

        # The model owns the temperature; OpenCLIP's own logit_scale/logit_bias are never used, and a
        # trainable parameter that gets no gradient would make DDP fail, so they are frozen.
        for name in ("logit_scale", "logit_bias"):
            param = getattr(clip, name, None)
            if isinstance(param, nn.Parameter):
                param.requires_grad_(False)
        init = torch.tensor(math.log(1.0 / config.temperature), dtype=torch.float32)
        if self.projector is not None:  # the projector holds the logit scale
            pass
        elif config.learn_temperature:
            self.logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("logit_scale", init)

        if config.freeze_text:
            clip.lock_text_tower()

    # -- properties -------------------------------------------------------------------------------

    @property
    def embed_dim(self) -> int:
        """Dimension d of the shared embedding space."""
        return self.config.embed_dim

    @property
    def preprocess_cfg(self) -> dict[str, Any]:
        """OpenCLIP's preprocessing settings of the image tower (size, mean, std, interpolation, ...)."""
        return dict(open_clip.get_model_preprocess_cfg(self.clip))

    @property
    def image_size(self) -> tuple[int, int]:
        """Input image (height, width) of the image tower."""
        size = self.preprocess_cfg["size"]
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def image_mean(self) -> tuple[float, ...]:
        """Per-channel normalisation mean of the image transforms."""
        return tuple(self.preprocess_cfg["mean"])

    @property
    def image_std(self) -> tuple[float, ...]:
        """Per-channel normalisation std of the image transforms."""
        return tuple(self.preprocess_cfg["std"])

    @property
    def geometry(self) -> str:
        """``"euclidean"`` or ``"lorentz"`` (:attr:`ModelConfig.geometry`)."""
        return self.config.geometry

    def curvature(self) -> torch.Tensor | None:
        """c of the Lorentz model (a scalar tensor), ``None`` in the Euclidean geometry."""
        return None if self.projector is None else self.projector.curvature()

    def logit_scale_exp(self) -> torch.Tensor:
        """``1 / tau`` to multiply cosine similarities with; clamped at 100 when learnt, as in CLIP.

        In the Lorentz geometry: the projector's scale of the logits ``-d(x, y) * scale``."""
        if self.projector is not None:
            return self.projector.logit_scale()
        scale = self.logit_scale.exp()
        return scale.clamp(max=100.0) if self.config.learn_temperature else scale

    # -- preprocessing ----------------------------------------------------------------------------

    def image_transform(self, train: bool = False, aug_cfg: Mapping[str, Any] | None = None) -> Callable:
        """OpenCLIP's ``preprocess_train`` (random resized crop) or ``preprocess_val`` for this tower.

        ``aug_cfg`` is passed to OpenCLIP (``open_clip.AugmentationCfg`` fields) for the train transform.
        """
        return tower_transform(self.preprocess_cfg, train=train, aug_cfg=aug_cfg)

    def tokenize_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids ``[B, context_length]`` from the tower's OpenCLIP tokenizer."""
        return self.text_tokenizer(_as_batch(texts))

    def tokenize_dna(self, sequences: Sequence[str]) -> dict[str, torch.Tensor]:
        """``{"input_ids", "attention_mask"}`` (LongTensor ``[B, T]``) from the DNA tokenizer."""
        return self.dna_tokenizer(_as_batch(sequences))

    # -- encoders ---------------------------------------------------------------------------------

    # Every encoder returns points of the model's space: L2-normalised vectors, or (Lorentz) float32 space parts
    # on the hyperboloid.

    def to_space(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """Projected features ``[..., d]`` as points of the model's space (normalised, or the Lorentz embedding)."""
        if self.projector is not None:
            return self.projector.embed(features, modality)
        return F.normalize(features, dim=-1)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """Image embeddings ``[B, d]`` of preprocessed pixels ``[B, C, H, W]``."""
        if pixels.dim() != 4:
            raise ValueError(f"expected images [B, C, H, W], got shape {tuple(pixels.shape)}")
        if self.projector is not None:
            return self.projector.embed(self.clip.encode_image(pixels, normalize=False), "image")
        return self.clip.encode_image(pixels, normalize=True)

    def text_features(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Projected text features ``[B, d]`` before :meth:`to_space` (what a frozen tower's cache holds)."""
        if token_ids.dim() != 2:
            raise ValueError(f"expected text token ids [B, T], got shape {tuple(token_ids.shape)}")
        return self.clip.encode_text(token_ids, normalize=False)

    def encode_text(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Text embeddings ``[B, d]`` of token ids ``[B, context_length]``."""
        if token_ids.dim() != 2:
            raise ValueError(f"expected text token ids [B, T], got shape {tuple(token_ids.shape)}")
        if self.projector is not None:
            return self.projector.embed(self.clip.encode_text(token_ids, normalize=False), "text")
        return self.clip.encode_text(token_ids, normalize=True)

    def encode_dna(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """DNA embeddings ``[B, d]`` of token ids and attention mask ``[B, T]``.

        The mask is required: the k-mer tokenizer pads with its UNK id, so it cannot be rebuilt from the ids.
        """
        if self.projector is not None:
            return self.projector.embed(self.dna.features(input_ids, attention_mask), "dna")
        return self.dna(input_ids, attention_mask)

    def average(self, z_image: torch.Tensor, z_dna: torch.Tensor) -> torch.Tensor:
        """The "Avg" query: :func:`average_fusion`, or (Lorentz) the mean in the tangent space at the origin."""
        if self.projector is None:
            return average_fusion(z_image, z_dna)
        _check_same_shape(z_image, z_dna)
        return tangent_mean(torch.stack([z_image, z_dna]), self.projector.curvature(), dim=0)

    def fuse(self, z_image: torch.Tensor, z_dna: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gated fusion: ``(z_F [B, d], gate [B, d])``."""
        if self.fusion is None:
            raise ValueError("a model with geometry='lorentz' has no fusion head (train it with loss.objective=clibd)")
        if self.config.detach_dna_in_fusion:
            z_dna = z_dna.detach()
        return self.fusion(z_image, z_dna)

    def forward(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Encode whatever modalities the batch holds (the trainer's entry point).

        Recognised keys: ``image_views`` ``[B, V, C, H, W]`` (V augmented views, all encoded in one
        forward pass) or ``image`` ``[B, C, H, W]``; ``dna_input_ids`` and ``dna_attention_mask``
        ``[B, T]``; ``text_tokens`` ``[B, L]`` or ``text_features`` ``[B, d]`` (a frozen tower's cached
        :meth:`text_features`). Lorentz only, for SEL's per-rank prompts: ``rank_tokens`` ``[P, L]`` or
        ``rank_features`` ``[P, d]`` (P distinct prompts) with ``rank_index`` ``[B, 4]`` (the prompt of each
        specimen's rank, -1 where unknown).

        Returns ``image`` (first view), ``image_views`` ``[B, V, d]`` (when views were given),
        ``dna``, ``text``, ``fused`` and ``gate`` (only when both image and DNA are present and the model has a
        fusion head), ``logit_scale`` (``1 / tau``), and in the Lorentz geometry ``curvature`` and
        ``rank_text`` ``[B, 4, d]`` (zeros, the origin, at unknown ranks). Modalities without inputs are omitted.
        """
        out: dict[str, torch.Tensor] = {}
        if "image_views" in batch and "image" in batch:
            raise ValueError("batch has both 'image_views' and 'image'; pass one of them")
        if "image_views" in batch:
            views = batch["image_views"]
            if views.dim() != 5:
                raise ValueError(f"expected image_views [B, V, C, H, W], got shape {tuple(views.shape)}")
            b, v = views.shape[:2]
            z = self.encode_image(views.flatten(0, 1)).view(b, v, -1)
            out["image_views"] = z
            out["image"] = z[:, 0]
        elif "image" in batch:
            out["image"] = self.encode_image(batch["image"])

        if ("dna_input_ids" in batch) != ("dna_attention_mask" in batch):
            raise ValueError("a DNA batch needs both 'dna_input_ids' and 'dna_attention_mask'")
        if "dna_input_ids" in batch:
            ids, mask = batch["dna_input_ids"], batch["dna_attention_mask"]
            if ids.dim() == 3:
                # [B, V, T]: V views of each barcode in one pass; they differ through the encoder's dropout
                # (the DNA counterpart of two augmented image views, for HiR on DNA embeddings).
                b, v = ids.shape[:2]
                z = self.encode_dna(ids.flatten(0, 1), mask.flatten(0, 1)).view(b, v, -1)
                out["dna_views"] = z
                out["dna"] = z[:, 0]
            else:
                out["dna"] = self.encode_dna(ids, mask)

        if "text_tokens" in batch:
            out["text"] = self.encode_text(batch["text_tokens"])
        elif "text_features" in batch:
            out["text"] = self.to_space(batch["text_features"], "text")
        if "rank_index" in batch:
            out["rank_text"] = self._rank_text(batch)

        sizes = {name: t.shape[0] for name, t in out.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"modalities have different batch sizes: {sizes}")
        if "image" in out and "dna" in out and self.fusion is not None:
            out["fused"], out["gate"] = self.fuse(out["image"], out["dna"])
        out["logit_scale"] = self.logit_scale_exp()
        if self.projector is not None:
            out["curvature"] = self.projector.curvature()
        return out

    def _rank_text(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """``[B, 4, d]`` points of each specimen's per-rank prompts, embedded once per distinct prompt."""
        if self.projector is None:
            raise ValueError("per-rank prompts (rank_index) are an input of the Lorentz geometry only")
        index = batch["rank_index"]
        if "rank_tokens" in batch:
            points = self.encode_text(batch["rank_tokens"])
        elif "rank_features" in batch:
            points = self.to_space(batch["rank_features"], "text")
        else:
            raise ValueError("rank_index needs rank_tokens [P, L] or rank_features [P, d]")
        if index.dim() != 2 or (index.numel() and int(index.max()) >= points.shape[0]):
            raise ValueError(f"rank_index must be [B, 4] indices into {points.shape[0]} prompts")
        gathered = points[index.clamp(min=0)]
        return torch.where((index >= 0).unsqueeze(-1), gathered, torch.zeros_like(gathered))


# --------------------------------------------------------------------------------------------------
# Building


def build_model(config: ModelConfig, base_dir: str | os.PathLike[str] | None = None) -> HirvizModel:
    """Build a :class:`HirvizModel` from its config.

    ``base_dir`` (a bundle directory) resolves a relative DNA tokenizer path or ``dna_model`` folder.
    Pretrained backbones are taken from the local caches when there; otherwise they are downloaded if
    the hub is reachable, and :class:`BackboneUnavailable` is raised at once if it is not (or
    ``HF_HUB_OFFLINE`` is set).
    """
    dna_tokenizer = load_dna_tokenizer(config.dna_tokenizer, base_dir=base_dir)
    clip, text_tokenizer = build_clip(config)
    backbone = build_dna_backbone(config, dna_tokenizer, base_dir)
    dna_encoder = DnaEncoder(backbone, int(backbone.config.hidden_size), config.embed_dim)
    return HirvizModel(config, clip, text_tokenizer, dna_encoder, dna_tokenizer)


# --------------------------------------------------------------------------------------------------
# Helpers


def int8_model(model: HirvizModel) -> HirvizModel:
    """A copy of ``model`` whose ``nn.Linear`` layers run int8 dynamic quantisation (CPU inference only).

    ``torch.ao.quantization.quantize_dynamic``: weights stored as int8, activations quantised per call, so the
    towers' matrix products run in int8 (about 2x faster at paper size, ``bench/README.md``). The float model is
    left as it was. Convolutions, layer norms and the attention projections of ``nn.MultiheadAttention`` (open_clip's
    ViT) stay float32. The answers may change a little: ``bench/bench_int8.py`` measures how often they do.
    """
    import warnings

    with warnings.catch_warnings():  # torch deprecates torch.ao.quantization for torchao, not installed here
        warnings.simplefilter("ignore")
        quantised = torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8)
    return quantised.eval()


def _as_batch(items: Sequence[str]) -> list[str]:
    # A lone string is a Sequence[str] of letters: tokenising it letter by letter is never wanted.
    if isinstance(items, str):
        raise TypeError("pass a list of strings, e.g. [text], not a single string")
    return list(items)
