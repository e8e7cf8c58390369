"""The backbones of a hirviz model: the OpenCLIP image/text towers and the DNA encoder's transformer.

Architectures come from open_clip (built-in names, ``hf-hub:`` repos, ``local-dir:`` folders, or the project's own,
shipped as JSON package data in ``hirviz/model_configs``) and from transformers (a k-mer BERT or any ``AutoModel``).
Pretrained weights are taken from the local caches first; when they are missing and the hub cannot be reached (or
offline mode is on), :class:`BackboneUnavailable` is raised at once with a one-line message (:mod:`hirviz.hub`).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hirviz import hub
from hirviz.model_config import ModelConfig
from hirviz.torchvision_compat import ensure_torchvision

ensure_torchvision()  # open_clip imports torchvision, which needs the shim on a CPU-only torch
import open_clip  # noqa: E402

__all__ = ["MODEL_CONFIG_DIR", "PROJECT_CLIP_CONFIGS", "BackboneUnavailable", "build_clip", "build_dna_backbone"]

# OpenCLIP architectures defined by this project, one JSON file each (shipped as package data), registered with
# open_clip under their file names so that the ordinary factory (model, preprocess transforms, tokenizer) works on
# them like on a built-in. hirviz-tiny is for the CPU demo and the tests (about 3.4 M parameters, 3.2 M of them
# the token embedding); its text tower keeps the CLIP BPE vocabulary (49408) so that the stock open_clip tokenizer
# applies, and 32 tokens hold a taxonomy string.
MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
PROJECT_CLIP_CONFIGS: dict[str, dict[str, Any]] = {
    path.stem: json.loads(path.read_text(encoding="utf-8")) for path in sorted(MODEL_CONFIG_DIR.glob("*.json"))
}

_HF_CONFIG_NAME = "open_clip_config.json"
_HF_WEIGHT_NAMES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


class BackboneUnavailable(RuntimeError):
    """A pretrained backbone is neither in a local cache nor downloadable right now (one-line message)."""


# --------------------------------------------------------------------------------------------------
# Building


def build_clip(config: ModelConfig) -> tuple[nn.Module, Callable[..., torch.Tensor]]:
    """The OpenCLIP model and its tokenizer, with overrides applied and weights checked for availability."""
    _register_project_clip_configs()
    name = config.clip_model
    schema, identifier = open_clip.factory.parse_model_name(name)
    pretrained = config.clip_pretrained
    loads_weights = schema is not None or pretrained is not None
    downloads = False

    if schema == "hf-hub":
        if pretrained is not None:
            raise ValueError(f"{name!r} loads its repo's own weights; leave clip_pretrained empty (got {pretrained!r})")
        base_cfg, downloads = _hf_clip_config(identifier)
    elif schema == "local-dir":
        base_cfg = open_clip.get_model_config(name)
    else:
        base_cfg = open_clip.get_model_config(name)
        if base_cfg is None:
            raise ValueError(
                f"unknown OpenCLIP architecture {name!r}; use one of open_clip.list_models() "
                f"(project ones: {sorted(PROJECT_CLIP_CONFIGS)}), an 'hf-hub:' id or a 'local-dir:' path"
            )
        if pretrained is not None:
            downloads = _open_clip_tag_needs_download(name, pretrained)

    # open_clip applies model kwargs last and shallowly, so each overridden top-level entry is passed
    # whole, already merged with the base config.
    merged = _deep_merge(base_cfg, config.clip_overrides)
    model_kwargs = {key: merged[key] for key in config.clip_overrides}
    if loads_weights:
        if merged.get("embed_dim") != config.embed_dim:
            raise ValueError(
                f"embed_dim={config.embed_dim} but the pretrained {name!r} embeds into "
                f"{merged.get('embed_dim')} dimensions; set embed_dim={merged.get('embed_dim')}"
            )
    else:
        model_kwargs["embed_dim"] = config.embed_dim

    try:
        clip = open_clip.create_model(name, pretrained=pretrained, **model_kwargs)
    except (RuntimeError, OSError) as err:
        # open_clip reports a failed download as a RuntimeError/OSError mentioning the download.
        if downloads and any(w in str(err).lower() for w in ("download", "hub")):
            raise BackboneUnavailable(f"cannot load {_describe(name, pretrained)}: {hub.one_line(err)}") from err
        raise
    context_length = getattr(clip, "context_length", None)
    tokenizer = open_clip.get_tokenizer(name, context_length=context_length)
    return clip, tokenizer


def build_dna_backbone(
    config: ModelConfig, tokenizer: Any, base_dir: str | os.PathLike[str] | None = None
) -> nn.Module:
    """The DNA backbone: a random k-mer BERT or a pretrained ``AutoModel`` (from the cache first)."""
    from transformers import AutoModel, BertConfig, BertModel

    if config.dna_encoder == "kmer-bert":
        bert_config = BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=config.dna_hidden,
            num_hidden_layers=config.dna_layers,
            num_attention_heads=config.dna_heads,
            intermediate_size=config.dna_intermediate,
            hidden_dropout_prob=config.dna_dropout,
            attention_probs_dropout_prob=config.dna_dropout,
            max_position_embeddings=int(tokenizer.max_tokens),
            # No padding_idx: the k-mer tokenizer pads with UNK, and a padding_idx would freeze the UNK
            # embedding of real N-containing k-mers at zero. Padding is excluded by the attention mask.
            pad_token_id=None,
            type_vocab_size=1,
        )
        # No pooler: its output is unused, and unused trainable parameters break DDP.
        backbone: nn.Module = BertModel(bert_config, add_pooling_layer=False)
    else:
        model_id = str(config.dna_model)
        if base_dir is not None and not os.path.isabs(model_id) and os.path.isdir(os.path.join(base_dir, model_id)):
            model_id = os.path.join(base_dir, model_id)
        backbone = _load_hf_pretrained(
            lambda local_only: AutoModel.from_pretrained(
                model_id, trust_remote_code=config.dna_trust_remote_code, local_files_only=local_only
            ),
            model_id,
            field_name="dna_model",
        )
        if isinstance(getattr(backbone, "pooler", None), nn.Module):
            backbone.pooler = None  # unused, see above; BERT-style models skip a missing pooler
        vocab = backbone.get_input_embeddings().num_embeddings
        if tokenizer.vocab_size > vocab:
            raise ValueError(
                f"the DNA tokenizer has {tokenizer.vocab_size} tokens but {model_id!r} embeds only {vocab}; "
                "use the tokenizer the checkpoint was trained with"
            )
    return backbone


# --------------------------------------------------------------------------------------------------
# Helpers: project architectures, config merging, cache and hub checks

_project_configs_registered = False


def _register_project_clip_configs() -> None:
    """Register the project architectures (:data:`MODEL_CONFIG_DIR`) with open_clip's ``add_model_config`` (once)."""
    global _project_configs_registered
    if _project_configs_registered:
        return
    open_clip.add_model_config(MODEL_CONFIG_DIR)
    missing = [arch for arch in PROJECT_CLIP_CONFIGS if arch not in open_clip.list_models()]
    if missing:
        raise RuntimeError(f"open_clip did not register the project architectures {missing}")
    _project_configs_registered = True


def _deep_merge(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` merged in, recursing into nested dicts; the inputs are not modified."""
    merged = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _describe(name: str, pretrained: str | None) -> str:
    return f"{name!r}" if pretrained is None else f"{name!r} (pretrained={pretrained!r})"


def _require_download(what: str, repo_id: str, hint: str) -> None:
    """Raise :class:`BackboneUnavailable` at once unless ``repo_id`` can be downloaded from now."""
    reason = hub.unavailable_reason(repo_id)
    if reason is not None:
        raise BackboneUnavailable(f"cannot load {what}: not in the local cache and {reason}; {hint}")


def _hf_clip_config(repo_id: str) -> tuple[dict[str, Any], bool]:
    """The ``model_cfg`` of an OpenCLIP hub repo and whether its weights still have to be downloaded."""
    what = f"'hf-hub:{repo_id}'"
    hint = "download it once with network access (or point clip_model at a 'local-dir:' copy)"
    config_path = hub.cached_file(repo_id, _HF_CONFIG_NAME)
    has_weights = any(hub.cached_file(repo_id, f) for f in _HF_WEIGHT_NAMES)
    if config_path is None or not has_weights:
        _require_download(what, repo_id, hint)
        from huggingface_hub import hf_hub_download

        try:
            config_path = hf_hub_download(repo_id, _HF_CONFIG_NAME)
        except Exception as err:  # any hub failure means the same thing here: no backbone
            raise BackboneUnavailable(f"cannot load {what}: {hub.one_line(err)}") from err
    data = json.loads(Path(config_path).read_text(encoding="utf-8"))
    return data.get("model_cfg", data), not has_weights


def _open_clip_tag_needs_download(name: str, tag: str) -> bool:
    """Whether the weights of an OpenCLIP tag must be downloaded; fails fast when they cannot be.

    An unknown tag (that is not a checkpoint file either) is a ``ValueError``.
    """
    pcfg = open_clip.get_pretrained_cfg(name, tag)
    if not pcfg:
        if os.path.isfile(tag):
            return False
        known = open_clip.list_pretrained_tags_by_model(name)
        raise ValueError(f"{tag!r} is neither an OpenCLIP pretrained tag of {name!r} (known: {known}) nor a file")
    if "file" in pcfg:
        return False
    what = _describe(name, tag)
    hint = "download it once with network access, or set clip_pretrained to a local checkpoint file"
    repo_id, filename = os.path.split(pcfg.get("hf_hub", ""))
    if not repo_id:
        # Older open_clip releases host some tags at plain URLs, fetched by open_clip itself into ~/.cache/clip;
        # a failed download is reported by _build_clip.
        url = pcfg.get("url", "")
        if os.path.isfile(os.path.join(os.path.expanduser("~/.cache/clip"), os.path.basename(url))):
            return False
        from huggingface_hub import constants

        if constants.is_offline_mode():
            raise BackboneUnavailable(f"cannot load {what}: not in the local cache and {hub.OFFLINE}; {hint}")
        return True
    candidates = [filename] if filename else list(_HF_WEIGHT_NAMES)
    if filename.endswith((".bin", ".pth")):  # open_clip prefers a safetensors copy of the same name
        candidates.insert(0, filename[:-4] + ".safetensors")
    if any(hub.cached_file(repo_id, f) for f in candidates):
        return False
    _require_download(what, repo_id, hint)
    return True


def _load_hf_pretrained(load: Callable[[bool], nn.Module], model_id: str, field_name: str) -> nn.Module:
    """Run ``load(local_files_only)`` from the cache first, downloading only when the hub can be reached."""
    if os.path.isdir(model_id):
        return load(True)
    what = f"{model_id!r}"
    try:
        return load(True)
    except OSError:
        pass  # not (fully) cached: fall through to a download if the hub can be reached
    _require_download(what, model_id, f"download it once with network access, or set {field_name} to a local directory")
    try:
        return load(False)
    except OSError as err:
        raise BackboneUnavailable(f"cannot load {what}: {hub.one_line(err)}") from err
