"""The validation split and the learning curves of ``fit``: held-out rows, never the test rows, and no effect on
what is trained (a validated run, and one killed and resumed, end with the weights of a run without validation)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CI_CONFIG, tiny_overrides
from train.config import load_config
from train.loop import CHECKPOINT, fit
from train.rundir import load_run_split, read_split, select_rows
from train.validation import validation_curve

STEPS = 6


def _cfg(synth: Path, out: Path, *extra: str):
    return load_config(CI_CONFIG, tiny_overrides(synth, out, "data.val_fraction=0.25", "loss.objective=clibd",
                                                 *extra))


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)["model"]


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_the_validation_rows_come_from_training_and_leave_the_test_rows_alone(tiny_synth):
    plain = load_run_split(load_config(CI_CONFIG, tiny_overrides(tiny_synth, Path("unused"))))
    carved = load_run_split(_cfg(tiny_synth, Path("unused")))
    assert len(plain.val) == 0
    np.testing.assert_array_equal(carved.test, plain.test)
    np.testing.assert_array_equal(np.sort(np.concatenate([carved.train, carved.val])), plain.train)
    assert len(carved.val) > 0 and not np.intersect1d(carved.val, carved.train).size
    # closed set: every validation taxonomy string is trained on
    strings = carved.frame["taxonomy"]
    assert set(strings.iloc[carved.val]) <= set(strings.iloc[carved.train])
    again = load_run_split(_cfg(tiny_synth, Path("unused")))
    np.testing.assert_array_equal(again.val, carved.val)


def test_eval_every_needs_a_validation_split(tiny_synth, tmp_path):
    with pytest.raises(ValueError, match="val_fraction"):
        load_config(CI_CONFIG, tiny_overrides(tiny_synth, tmp_path, "run.eval_every=2"))


def test_validation_logs_curves_without_changing_training_and_resumes_exactly(tiny_synth, tmp_path):
    with_val = fit(_cfg(tiny_synth, tmp_path / "val", "run.eval_every=2"), max_steps=STEPS)
    without = fit(_cfg(tiny_synth, tmp_path / "plain"), max_steps=STEPS)
    # killed after step 4 (the loop checkpoints when max_steps stops it), then resumed
    fit(_cfg(tiny_synth, tmp_path / "resumed", "run.eval_every=2"), max_steps=4)
    resumed = fit(_cfg(tiny_synth, tmp_path / "resumed", "run.eval_every=2"), resume=True, max_steps=STEPS)

    a, b, c = _weights(with_val), _weights(without), _weights(resumed)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(a[name], c[name], rtol=0, atol=0, msg=name)

    records = _records(with_val)
    steps, dna_global = validation_curve(records, "val_dna_global")
    assert list(steps) == [2, 4, 6]
    assert all(0 <= v <= 100 for v in dna_global)
    val_lines = [r for r in records if "val_image_family" in r]
    assert val_lines and val_lines[0]["val_specimens"] == len(read_split(with_val).val)
    assert all("loss" not in r for r in val_lines)  # training lines and validation lines stay apart
    assert not any("val_dna_global" in r for r in _records(without))
    # the resumed run logged the same curve
    np.testing.assert_allclose(validation_curve(_records(resumed), "val_dna_global")[1], dna_global)


def test_select_rows_gives_the_validation_subset(tiny_synth, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    saved = load_run_split(_cfg(tiny_synth, run), run)
    (run / "config.yaml").write_text(json.dumps(_cfg(tiny_synth, run).to_dict()))  # JSON is YAML
    rows, info = select_rows(tiny_synth / "metadata.tsv", run, "val")
    assert info["subset"] == "val" and len(rows) == len(saved.val) == info["split_rows"]["val"]
    assert set(rows["sampleid"]) == set(saved.frame["sampleid"].iloc[saved.val])

    plain = tmp_path / "plain"
    plain.mkdir()
    load_run_split(load_config(CI_CONFIG, tiny_overrides(tiny_synth, plain)), plain)
    with pytest.raises(ValueError, match="no validation rows"):
        select_rows(tiny_synth / "metadata.tsv", plain, "val")
