"""The gathered losses under real DDP (2 gloo ranks on CPU) match one process on the whole batch."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ddp_worker
from conftest import REPO_ROOT
from train.losses import compute_loss, contrastive_loss, hir_loss

WORLD = 2


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory, free_port) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        str(REPO_ROOT / "tests" / "ddp_worker.py"), str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"distributed workers failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def _load(out: Path, name: str) -> list[dict]:
    return [torch.load(out / f"{name}_rank{r}.pt") for r in range(WORLD)]


def _close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-11, msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("scenario", ddp_worker.SCENARIOS, ids=lambda s: s.name)
def test_gathered_loss_matches_single_process(rank_results: Path, scenario: ddp_worker.Scenario) -> None:
    ranks = _load(rank_results, scenario.name)
    batch = ddp_worker.make_batch(scenario)
    n = sum(scenario.sizes)
    slices = [slice(sum(scenario.sizes[:r]), sum(scenario.sizes[: r + 1])) for r in range(WORLD)]

    # One process, whole batch. HiR is a per-rank term (each rank regularises its own batch), so after DDP's
    # averaging its gradient is that of the mean of the per-rank HiR values: add exactly that.
    leaves, params, outputs, text_ids, labels = ddp_worker.forward(batch, slice(0, n), scenario)
    global_cfg = dataclasses.replace(scenario.cfg, hir_weight=0.0)
    present = scenario.present(slice(0, n))
    total, parts = compute_loss(outputs, text_ids, labels, global_cfg, ddp_worker.logit_scale(params, scenario),
                                present=present)
    # HiR sees the views of the specimens whose image was not dropped
    kept = torch.ones(n, dtype=torch.bool) if present is None else present["image"]
    views = outputs["image_views"]
    hir_stats = [hir_loss(views[s][kept[s]], labels[s][kept[s]], mode=scenario.cfg.hir_mode,
                          max_scope=scenario.cfg.hir_max_scope, return_stats=True) for s in slices]
    hir_per_rank = [hir for hir, _ in hir_stats]
    (total + scenario.cfg.hir_weight * torch.stack(hir_per_rank).mean()).backward()

    # the clamp shares describe each rank's own HiR batch (hmce clamps no pairs: none)
    clamp_keys = {f"hir_clamped_{level}" for level in hir_stats[0][1] if level != "order"}
    assert set(parts) | {"hir"} | clamp_keys == set(ranks[0]["parts"])
    for r, result in enumerate(ranks):
        for key, value in parts.items():
            _close(result["parts"][key], value, f"rank {r} part {key!r}")
        for key in clamp_keys:
            torch.testing.assert_close(result["parts"][key], hir_stats[r][1][key.removeprefix("hir_clamped_")],
                                       equal_nan=True, msg=lambda m, r=r, key=key: f"rank {r} {key}: {m}")
        _close(result["parts"]["hir"], hir_per_rank[r].detach(), f"rank {r} local HiR")
        _close(result["total"], total.detach() + scenario.cfg.hir_weight * hir_per_rank[r].detach(), f"rank {r} total")

    # DDP averages parameter gradients over ranks.
    for key, param in params.items():
        if param.grad is None:  # a fixed temperature: no rank may have produced a gradient either
            assert all(result["param_grads"][key] is None for result in ranks), key
            continue
        averaged = torch.stack([result["param_grads"][key] for result in ranks]).mean(0)
        _close(averaged, param.grad, f"averaged gradient of {key}")
    # A rank's inputs feed only its own slice; the averaged parameter gradient is sum_r J_r^T g_r / W, so the
    # per-rank input gradient divided by W must equal the single-process one.
    for key, leaf in leaves.items():
        for r, result in enumerate(ranks):
            _close(result["leaf_grads"][key] / WORLD, leaf.grad[slices[r]], f"rank {r} gradient of {key}")
    assert params["w_dna"].grad.abs().sum() > 0 and leaves["image_raw"].grad.abs().sum() > 0


def test_public_pair_loss_under_ddp(rank_results: Path) -> None:
    scenario = ddp_worker.SCENARIOS[1]  # unequal slices
    ranks = _load(rank_results, scenario.name)
    n = sum(scenario.sizes)
    _, _, outputs, text_ids, _ = ddp_worker.forward(ddp_worker.make_batch(scenario), slice(0, n), scenario)
    a = outputs["image"].detach().clone().requires_grad_()
    b = outputs["dna"].detach().clone().requires_grad_()
    loss = contrastive_loss(a, b, text_ids)
    loss.backward()
    start = 0
    for r, result in enumerate(ranks):
        rows = slice(start, start + scenario.sizes[r])
        start = rows.stop
        _close(result["pair"], loss.detach(), f"rank {r} loss value")
        _close(result["pair_grads"][0] / WORLD, a.grad[rows], f"rank {r} gradient of a")
        _close(result["pair_grads"][1] / WORLD, b.grad[rows], f"rank {r} gradient of b")
