"""The training loop end to end on a tiny synthetic set: it learns, survives SIGKILL, trains on what it has."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import CI_CONFIG, REPO_ROOT, tiny_overrides
from hirviz.bundle import load_bundle
from train.config import load_config
from train.loop import CHECKPOINT, fit

REPO = REPO_ROOT
EPOCHS = 3  # of the shared tiny_run


@pytest.fixture(scope="module")
def synth(tiny_synth: Path) -> Path:
    return tiny_synth


def _overrides(synth: Path, out_dir: Path, *extra: str) -> list[str]:
    return tiny_overrides(synth, out_dir, *extra)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=True)["model"]


def _steps_logged(run_dir: Path) -> int:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1])["step"] if lines else 0


def test_fit_writes_a_run_and_the_loss_falls(tiny_run):
    run = tiny_run
    for name in ("config.yaml", "taxonomy.json", "split.npz", "metrics.jsonl", CHECKPOINT):
        assert (run / name).exists(), name
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"loss", "clip", "hir", "fuse", "lr", "samples_per_s"} <= set(records[0])
    assert [r["step"] for r in records] == list(range(1, len(records) + 1))  # ci.yaml logs every step
    first = sum(r["loss"] for r in records[:5]) / 5
    last = sum(r["loss"] for r in records[-5:]) / 5
    assert last < first, (first, last)
    ckpt = torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == EPOCHS and ckpt["batches_done"] == 0


def test_sigkilled_run_resumes_to_the_same_weights(synth, tiny_run, tmp_path, caplog):
    straight = tiny_run  # the same command, never interrupted

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "train", "fit", "--config", str(CI_CONFIG), *_overrides(synth, killed)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    # Kill it mid-run, after a checkpoint exists and some steps after it have been taken.
    while time.time() < deadline and proc.poll() is None and _steps_logged(killed) < 7:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    saved = torch.load(killed / CHECKPOINT, map_location="cpu", weights_only=True)
    final = torch.load(straight / CHECKPOINT, map_location="cpu", weights_only=True)
    assert 0 < saved["step"] < final["step"], (saved["step"], final["step"])

    # What `python -m train fit ... --resume` runs (in this process: a second interpreter start costs seconds).
    caplog.set_level(logging.INFO, logger="train.loop")
    fit(load_config(CI_CONFIG, _overrides(synth, killed)), resume=True)
    assert any(r.getMessage().startswith("resumed") for r in caplog.records)

    a, b = _weights(straight), _weights(killed)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)


def test_barcode_only_data_trains_dna_and_text(tmp_path, synth):
    # A barcode TSV (no images, as in real_dna/): the run trains the D-T term on the pairs it has.
    import pandas as pd

    meta = pd.read_csv(synth / "metadata.tsv", sep="\t", dtype=str)
    tsv = tmp_path / "barcodes.tsv"
    meta.rename(columns={"nucraw": "dna_barcode"})[
        ["processid", "order", "family", "genus", "species", "dna_barcode"]
    ].replace("not_classified", "").to_csv(tsv, sep="\t", index=False)
    cfg = load_config(CI_CONFIG, [f"data.metadata={tsv}", f"run.out_dir={tmp_path / 'run'}", "data.batch_size=10",
                                  "optim.epochs=1", "loss.objective=clibd", "run.log_every=1"])
    run = fit(cfg, max_steps=4)
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["step"] == 4
    assert "dna_text" in record and "image_text" not in record and "image_dna" not in record
    # A format without sample ids still round-trips through the split check of export.
    from train.export import export

    bundle = export(run, tmp_path / "bundle", max_reference=50, umap=False)
    assert (bundle / "model.safetensors").exists()

    # HiR on the DNA embeddings (no images to take views of): two dropout views of each barcode.
    cfg = load_config(CI_CONFIG, [f"data.metadata={tsv}", f"run.out_dir={tmp_path / 'hir'}", "data.batch_size=10",
                                  "optim.epochs=1", "loss.objective=clibd-hir", "loss.hir_modality=dna",
                                  "model.dna_dropout=0.1", "run.log_every=1"])
    record = json.loads((fit(cfg, max_steps=2) / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["hir"] > 0 and "dna_text" in record


def test_torchrun_two_ranks_on_cpu(synth, tmp_path, free_port):
    # Data-parallel under torchrun with gloo: both ranks step in lock-step and rank 0 writes the run.
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "train", "fit", "--config", str(CI_CONFIG), "--max-steps", "3",
           *_overrides(synth, out, "run.log_every=1", "loss.objective=clibd")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3]
    assert torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)["step"] == 3


def test_ranks_build_the_same_model_and_text_cache_and_then_draw_their_own_randomness(synth, tmp_path, free_port):
    # A frozen, randomly initialised text tower is cached before DDP syncs any weight: every rank must build the
    # very same model, or each would train against its own text embeddings.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(REPO / "tests" / "ddp_worker.py"), str(tmp_path), "--fit",
           str(CI_CONFIG), *_overrides(synth, tmp_path / "run", "model.freeze_text=true", "run.seed=7")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"fit_rank{r}.pt") for r in range(2)]
    assert ranks[0]["weights"].keys() == ranks[1]["weights"].keys()
    for name, value in ranks[0]["weights"].items():
        torch.testing.assert_close(ranks[1]["weights"][name], value, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(ranks[1]["text_bank"], ranks[0]["text_bank"], rtol=0, atol=0)
    # data order and dropout still differ between ranks: each is reseeded with seed + rank after the build
    assert [r["initial_seed"] for r in ranks] == [7, 8]


def test_tensorboard_logging_is_optional(synth, tmp_path):
    pytest.importorskip("tensorboard")
    cfg = load_config(CI_CONFIG, _overrides(synth, tmp_path / "tb", "run.tensorboard=true", "run.log_every=1"))
    run = fit(cfg, max_steps=2)
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))


def test_gradient_accumulation_steps_once_per_group_of_batches(synth, tiny_run, tmp_path):
    steps = lambda run: torch.load(run / CHECKPOINT, map_location="cpu", weights_only=True)["step"]  # noqa: E731
    one_epoch = steps(tiny_run) // EPOCHS
    two = fit(load_config(CI_CONFIG, _overrides(synth, tmp_path / "a2", "optim.epochs=1", "optim.grad_accum=2")))
    assert steps(two) == -(-one_epoch // 2)


def test_frozen_text_tower_is_cached_and_stays_fixed(synth, tmp_path):
    from hirviz.model import build_model

    cfg = load_config(CI_CONFIG, _overrides(synth, tmp_path / "frozen", "model.freeze_text=true"))
    torch.manual_seed(cfg.run.seed)
    initial = {k: v.clone() for k, v in build_model(cfg.model).state_dict().items()}
    run = fit(cfg, max_steps=3)
    trained = _weights(run)
    text_keys = [k for k in trained if k.startswith("clip.") and not k.startswith("clip.visual.")
                 and "logit" not in k]
    image_keys = [k for k in trained if k.startswith("clip.visual.")]
    assert text_keys and image_keys
    for key in text_keys:
        torch.testing.assert_close(trained[key], initial[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(trained[k], initial[k]) for k in image_keys)


def test_fit_export_flag_trains_and_writes_a_bundle_in_one_command(synth, tmp_path, no_umap):
    import argparse

    from train.__main__ import add_fit_arguments as add_arguments
    from train.__main__ import run_fit as run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--config", str(CI_CONFIG), "--max-steps", "2", "--export", str(tmp_path / "bundle"),
                              *_overrides(synth, tmp_path / "run", "optim.epochs=1", "data.hir_views=identical")])
    assert run(args) == 0
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.config["training"]["data"]["hir_views"] == "identical"
    assert (tmp_path / "bundle" / "model.safetensors").is_file()


def test_bad_data_options_are_refused_with_the_valid_choices():
    with pytest.raises(ValueError, match="'augmented' or 'identical'"):
        load_config(CI_CONFIG, ["data.hir_views=same"])
    with pytest.raises(ValueError, match="dna_augment"):
        load_config(CI_CONFIG, ["data.dna_augment=-1"])


def test_checkpoints_load_safely_and_older_ones_still_resume(tmp_path):
    import random

    import numpy as np

    from train.loop import load_checkpoint, rng_state, set_rng_state

    path = tmp_path / "ckpt.pt"
    torch.save({"rng": [rng_state()], "step": 3}, path)
    draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    saved = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain values only
    set_rng_state(saved["rng"][0])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == draws

    # a checkpoint from before: the numpy RNG state as numpy's own tuple (an array inside)
    old = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    torch.save({"rng": [old], "step": 3}, path)
    draws = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    set_rng_state(load_checkpoint(path)["rng"][0])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == draws

    # anything else a pickle could smuggle in is refused with a message, not executed
    torch.save({"rng": [old], "evil": tmp_path}, path)
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_checkpoint(path)


def test_resuming_with_other_settings_is_refused_and_keeps_the_runs_own(synth, tmp_path):
    out = tmp_path / "run"
    fit(load_config(CI_CONFIG, _overrides(synth, out)), max_steps=2)
    before = (out / "config.yaml").read_text()
    changed = load_config(CI_CONFIG, _overrides(synth, out, "optim.epochs=7", "run.log_every=1"))
    with pytest.raises(ValueError, match=r"optim\.epochs: \d+ -> 7") as err:
        fit(changed, resume=True)
    assert "log_every" not in str(err.value)  # how often a run logs may change on resume
    assert (out / "config.yaml").read_text() == before  # the settings to resume with are still there
    moved = load_config(CI_CONFIG, _overrides(synth, out, "run.log_every=1"))
    assert fit(moved, resume=True, max_steps=3) == out  # a harmless change resumes
    # a run written before a setting existed trained with its default: that is no change either
    saved = yaml.safe_load((out / "config.yaml").read_text())
    del saved["data"]["val_fraction"]
    (out / "config.yaml").write_text(yaml.safe_dump(saved))
    assert fit(moved, resume=True, max_steps=4) == out
