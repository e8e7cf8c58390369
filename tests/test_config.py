"""train.config: YAML + command-line overrides are checked against the config's field types and valid values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from train.config import TrainConfig, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "train" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("override,key", [
    ("optim.epochs=three", "optim.epochs"),
    ("optim.epochs=2.5", "optim.epochs"),
    ("optim.max_lr=fast", "optim.max_lr"),
    ("run.tensorboard=maybe", "run.tensorboard"),
    ("data.batch_size=null", "data.batch_size"),
    ("model.embed_dim=[64]", "model.embed_dim"),
])
def test_a_value_of_the_wrong_type_names_its_key(override: str, key: str) -> None:
    with pytest.raises(ValueError, match=rf"config key {key} must be"):
        load_config(None, [override])


@pytest.mark.parametrize("override,key", [
    ("loss.hir_mode=pape", "loss.hir_mode"),
    ("loss.hir_max_scope=pair", "loss.hir_max_scope"),
    ("loss.fusion_direction=text", "loss.fusion_direction"),
    ("loss.objective=clip", "loss.objective"),
])
def test_an_unknown_loss_option_names_its_key(override: str, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        load_config(None, [override])


def test_well_typed_overrides_are_converted() -> None:
    cfg = load_config(None, ["optim.epochs=3", "optim.max_lr=5e-5", "data.test_fraction=1", "data.images=null",
                             "run.out_dir=2024", "optim.grad_clip=1", "loss.hir_max_scope=anchor",
                             "loss.hir_mode=shared-denominator", "loss.fusion_direction=fused_anchor"])
    assert cfg.optim.epochs == 3 and cfg.optim.max_lr == 5e-5 and isinstance(cfg.data.test_fraction, float)
    assert cfg.data.images is None and cfg.run.out_dir == "2024" and cfg.optim.grad_clip == 1.0
    assert (cfg.loss.hir_max_scope, cfg.loss.hir_mode, cfg.loss.fusion_direction) == (
        "anchor", "shared-denominator", "fused_anchor")


def test_file_values_are_checked_too(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("optim:\n  epochs: three\n")
    with pytest.raises(ValueError, match="optim.epochs"):
        load_config(path)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_load_and_round_trip(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(cfg.to_dict()))
    assert load_config(saved) == cfg
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
