"""Run configuration: nested dataclasses loaded from YAML and overridden from the command line.

A config file mirrors the dataclass tree (``model``, ``loss``, ``data``, ``optim``, ``run``); every key is
optional and falls back to the dataclass default. Overrides are ``section.key=value`` strings whose values are
parsed as YAML, so ``optim.epochs=3``, ``loss.objective=clibd`` and ``data.images=null`` all work.
Every value is checked against its field's type hint, whether it came from a file or an override, and a mismatch
(``optim.epochs=three``) is an error naming the key; an override of a text field keeps its raw text
(``run.out_dir=2024`` is the folder ``"2024"``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hirviz.model_config import ModelConfig
from train.data.noise_aware import NoiseAware
from train.losses import LossConfig


@dataclass
class DataConfig:
    """Where the specimens come from and how batches are drawn."""

    metadata: str = ""  # BIOSCAN-1M/5M TSV, the authors' CSV, or a barcode TSV
    images: str | None = None  # images.hdf5 or a folder; None trains on the modalities the metadata has
    # "closed": a seeded closed-set split (every test taxon is also in training); "clibd": train on CLIBD's open-set
    # partition's training records only (train.data.clibd_split), so its unseen species are never trained on
    split: str = "closed"
    # clibd: a partition TSV (sampleid, partition); None = clibd_split.tsv beside the metadata, BIOSCAN-5M's split
    # column, the authors' CLIBD_partitioning folder beside a BIOSCAN-1M file, else computed (seeded by split_seed)
    partition: str | None = None
    test_fraction: float = 0.2  # closed split: share of each lineage held out
    val_fraction: float = 0.0  # share of each lineage's training rows kept out for validation (model selection)
    split_seed: int = 0
    max_specimens: int | None = None  # keep a seeded subset, for quick runs
    batch_size: int = 250  # per rank
    group_size: int = 5  # anchor + relatives at species, genus, family, order
    sampler: str = "hierarchical"  # or "random"
    views: int = 2  # views per specimen for HiR: augmented images, or (hir_modality=dna) dropout views of DNA
    hir_views: str = "augmented"  # or "identical": one augmented image repeated (what the authors' code feeds HiR)
    # Not in the papers (their degradations are inference-only): each training barcode is degraded afresh every
    # epoch at a scale drawn uniformly from [0, dna_augment] times METHOD.md's rates; 0 = off (the paper).
    dna_augment: float = 0.0
    # Noise-aware training (not in the papers, which train on clean pairs; train.data.noise_aware): per sample and
    # epoch, drop one modality with probability noise_drop, else degrade each with probability noise_rate: DNA at
    # a scale drawn from U[0, noise_dna_scale] (as dna_augment), images by a box blur of kernel 2..noise_blur_max.
    noise_aware: bool = False
    noise_rate: float = 0.5
    noise_dna_scale: float = 2.0
    noise_blur_max: int = 9
    noise_drop: float = 0.1
    # Share of training barcodes cut each epoch to a random 150-450 bp window (train.data.dataset.CROP_BP), so
    # partial reads are in-distribution; 0 = off (the paper).
    dna_crop: float = 0.0
    num_workers: int = 2

    def __post_init__(self) -> None:
        if self.split not in ("closed", "clibd"):
            raise ValueError(f"data.split must be 'closed' or 'clibd', got {self.split!r}")
        if self.hir_views not in ("augmented", "identical"):
            raise ValueError(f"data.hir_views must be 'augmented' or 'identical', got {self.hir_views!r}")
        if isinstance(self.dna_augment, bool) or not isinstance(self.dna_augment, (int, float)) \
                or not 0 <= self.dna_augment <= 100:
            raise ValueError(f"data.dna_augment must be a number between 0 and 100, got {self.dna_augment!r}")
        if isinstance(self.dna_crop, bool) or not isinstance(self.dna_crop, (int, float)) or not 0 <= self.dna_crop <= 1:
            raise ValueError(f"data.dna_crop must be a share between 0 and 1, got {self.dna_crop!r}")
        self.noise_settings()  # checks the noise_* values even while noise_aware is off
        if self.noise_aware and self.dna_augment:
            raise ValueError("data.noise_aware draws its own DNA scale (data.noise_dna_scale): set data.dna_augment=0")

    def noise_settings(self) -> NoiseAware | None:
        """The noise-aware settings as :class:`train.data.noise_aware.NoiseAware`, or None when it is off."""
        settings = NoiseAware(rate=self.noise_rate, dna_scale=self.noise_dna_scale, blur_max=self.noise_blur_max,
                              drop=self.noise_drop)
        return settings if self.noise_aware else None


@dataclass
class OptimConfig:
    """AdamW + OneCycle as in the paper (METHOD.md section 6)."""

    max_lr: float = 5e-5
    weight_decay: float = 0.01
    epochs: int = 10
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    grad_accum: int = 1
    grad_clip: float | None = None
    precision: str = "auto"  # "auto" = bf16 autocast on GPU, fp32 on CPU; or "fp32" / "bf16"
    # Lorentz geometry: the alphas, curvature and logit scale go in a group without weight decay (MERU); true
    # decays them like every other weight (the authors' early hyperbolic code).
    decay_hyperbolic_params: bool = False


@dataclass
class RunConfig:
    """Where a run writes, how often it checkpoints and logs."""

    out_dir: str = "runs/default"
    seed: int = 0
    checkpoint_every: int = 200  # steps; a checkpoint is also written at every epoch end
    log_every: int = 10
    tensorboard: bool = False  # also log to out_dir/tensorboard (needs the tensorboard package)
    device: str = "auto"  # "auto", "cpu", "cuda"
    # every N optimizer steps, score DNA->text and image->text on (at most eval_specimens of) the validation rows
    # into metrics.jsonl (train.validation); 0 = never. Needs data.val_fraction > 0.
    eval_every: int = 0
    eval_specimens: int = 500


# Settings a resumed run may change: where files are (a run directory or data folder may move), how often it logs,
# checkpoints and validates (validation is RNG-neutral), and the loader's worker count. Everything else shapes the
# model, the data or the schedule, and changing it mid-run would silently train a different model.
RESUMABLE_CHANGES = frozenset({
    "data.metadata", "data.images", "data.num_workers", "model.dna_tokenizer", "run.out_dir", "run.checkpoint_every",
    "run.log_every", "run.tensorboard", "run.device", "run.eval_every", "run.eval_specimens"})


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The settings (``section.key: old -> new``) that differ between a checkpoint's config and the current one,
    leaving out :data:`RESUMABLE_CHANGES`."""
    changes = []
    for section in sorted(set(saved) | set(current)):
        old, new = saved.get(section) or {}, current.get(section) or {}
        for key in sorted(set(old) | set(new)):
            name = f"{section}.{key}"
            if name not in RESUMABLE_CHANGES and old.get(key) != new.get(key):
                changes.append(f"{name}: {old.get(key)!r} -> {new.get(key)!r}")
    return changes


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        if self.run.eval_every and not self.data.val_fraction:
            raise ValueError("run.eval_every needs validation rows: set data.val_fraction (e.g. 0.1)")
        if self.model.geometry == "lorentz":
            conflicts = self.loss.lorentz_conflicts()
            if conflicts:
                raise ValueError(
                    f"model.geometry=lorentz trains CLIBD only (loss.objective=clibd with unit pair weights): HiR and "
                    f"the gated fusion are defined for L2-normalised embeddings; unsupported: {', '.join(conflicts)}")
            if self.data.noise_aware and self.data.noise_drop > 0:
                raise ValueError("model.geometry=lorentz cannot leave dropped modalities out of its loss: set "
                                 "data.noise_drop=0 (or data.noise_aware=false)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown config section(s) {sorted(unknown)}; valid: model, loss, data, optim, run")
        kwargs = {}
        for f in dataclasses.fields(cls):
            section_cls = type(getattr(cls(), f.name))
            kwargs[f.name] = _build_section(section_cls, data.get(f.name) or {}, f.name)
        return cls(**kwargs)


def _build_section(section_cls: type, values: dict[str, Any], name: str):
    valid = {f.name for f in dataclasses.fields(section_cls)}
    unknown = set(values) - valid
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)} in section '{name}'; valid: {sorted(valid)}")
    hints = typing.get_type_hints(section_cls)
    return section_cls(**{key: _typed(value, hints[key], f"{name}.{key}") for key, value in values.items()})


@dataclass(frozen=True)
class _Override:
    """A command-line value: its YAML reading, and its raw text for a text field (``run.out_dir=2024``)."""

    raw: str
    parsed: Any


_NO_MATCH = object()


def _typed(value: Any, hint: Any, key: str) -> Any:
    """``value`` converted to the field type ``hint`` (an int for a float field, ``"5e-5"`` for a float), or a
    ``ValueError`` naming ``key``."""
    candidates = [value.parsed, value.raw] if isinstance(value, _Override) else [value]
    for candidate in candidates:
        converted = _match(candidate, hint)
        if converted is not _NO_MATCH:
            return converted
    shown = value.raw if isinstance(value, _Override) else value
    raise ValueError(f"config key {key} must be {_describe(hint)}, got {shown!r}")


def _match(value: Any, hint: Any) -> Any:
    """``value`` as an instance of ``hint``, or ``_NO_MATCH``. Hints not listed here are not checked."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            converted = _match(value, option)
            if converted is not _NO_MATCH:
                return converted
        return _NO_MATCH
    if hint is type(None):
        return None if value is None else _NO_MATCH
    if hint is bool:
        return value if isinstance(value, bool) else _NO_MATCH
    if hint is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO_MATCH
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 5e-5 (no dot) as text
            try:
                return float(value)
            except ValueError:
                return _NO_MATCH
        return _NO_MATCH
    if hint is str:
        return value if isinstance(value, str) else _NO_MATCH
    if origin is not None and isinstance(origin, type):  # dict[str, Any], list[int], tuple[...]
        return value if isinstance(value, origin) or (origin is tuple and isinstance(value, list)) else _NO_MATCH
    return value


def _describe(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(hint))
    if hint is type(None):
        return "null"
    if hint is float:
        return "a number"
    if hint is int:
        return "an integer"
    if hint is bool:
        return "true or false"
    if hint is str:
        return "text"
    return getattr(hint, "__name__", str(hint))


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a nested config dict, in place.

    A ``section.key`` value is stored with its raw text (:class:`_Override`) until :meth:`TrainConfig.from_dict`
    checks it against the field's type.
    """
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        dotted, raw = item.split("=", 1)
        *parents, key = dotted.strip().split(".")
        if not parents:
            raise ValueError(f"override {item!r} must name a section, e.g. optim.epochs=3")
        node = data
        for part in parents:
            node = node.setdefault(part, {})
        # A section field keeps its raw text too (checked against the field's type when the config is built);
        # a value inside a free-form mapping (model.clip_overrides.x=...) is its YAML reading.
        node[key] = _Override(raw, _parse_value(raw)) if len(parents) == 1 else _parse_value(raw)
    return data


def _parse_value(raw: str) -> Any:
    """A YAML value; numbers like ``3e-3`` too, which YAML 1.1 would leave as strings."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (or start from defaults when ``path`` is None) and apply overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    return TrainConfig.from_dict(apply_overrides(data, overrides))
