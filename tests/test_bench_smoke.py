"""The benchmark scripts run on their smallest settings and report their figures (no timing is asserted)."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from conftest import load_repo_module


def _load(name: str) -> ModuleType:
    """Import ``bench/<name>.py`` as users run it (the scripts are not an installed package)."""
    return load_repo_module(f"bench_smoke_{name}", f"bench/{name}.py")


@pytest.fixture(scope="module")
def bench_hir() -> ModuleType:
    return _load("bench_hir")


@pytest.fixture(scope="module")
def bench_train() -> ModuleType:
    return _load("bench_train")


def test_bench_hir_reports_times_and_the_loop_agrees(bench_hir: ModuleType, capsys: pytest.CaptureFixture) -> None:
    results = bench_hir.main(["--batch-size", "20", "--dim", "16", "--repeats", "1"])
    assert set(results) == {"paper", "hmce"}
    for mode, r in results.items():
        for key in ("vectorised_forward_s", "vectorised_backward_s", "loop_forward_s", "loop_backward_s",
                    "speedup_forward", "speedup_backward"):
            assert r[key] > 0, (mode, key)
        # the per-pair loop written from METHOD.md and train.losses.hir_loss compute the same loss and gradient
        assert r["max_abs_diff_loss"] < 1e-4 and r["max_abs_diff_grad"] < 1e-4, (mode, r)
    out = capsys.readouterr().out
    assert "| paper | vectorised |" in out and "| hmce | loop |" in out and "max abs diff" in out


def test_bioscan_like_batch_has_relatives_and_unknowns(bench_hir: ModuleType) -> None:
    labels = bench_hir.bioscan_like_batch(48)
    assert labels.shape == (48, 4)
    assert (labels[:, 3] == -1).any(), "species should often be unknown"
    orders = labels[:, 0][labels[:, 0] >= 0]
    assert len(orders.unique()) < len(orders), "a hierarchical batch holds relatives sharing an order"


def test_bench_train_demo_config_on_the_real_loader(bench_train: ModuleType, capsys: pytest.CaptureFixture) -> None:
    r = bench_train.main(["--specimens", "60", "--image-height", "32", "--batch-size", "20", "--steps", "1",
                          "--warmup", "1", "--num-workers", "0", "--device", "cpu"])
    assert r["inputs"].startswith("DataLoader") and r["setup"] == "demo.yaml"
    assert r["samples_per_step"] == 20
    for key in ("data_s", "forward_s", "backward_s"):
        assert r[key] >= 0
    assert r["step_s"] == pytest.approx(r["data_s"] + r["forward_s"] + r["backward_s"])
    assert r["samples_per_s"] > 0 and r["train_gflops_per_sample"] > 0
    assert r["mfu"] is None  # no peak to compare a CPU with
    out = capsys.readouterr().out
    assert "samples/s" in out and "backward + optimizer" in out


def test_bench_train_random_inputs_with_cached_frozen_text(bench_train: ModuleType) -> None:
    r = bench_train.main(["--inputs", "random", "--batch-size", "10", "--steps", "1", "--warmup", "0",
                          "--device", "cpu", "--peak-tflops", "1", "model.freeze_text=true"])
    assert r["inputs"].startswith("random") and r["samples_per_step"] == 10
    assert r["mfu"] == pytest.approx(r["achieved_tflops"] / 1.0)


def test_analytic_flops_equal_torch_flop_counter(bench_train: ModuleType) -> None:
    """The MFU basis counts the same matmuls torch does (attention through the math kernel, which it can count)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from hirviz.model import ModelConfig, build_model

    model = build_model(ModelConfig()).train()
    dna = model.tokenize_dna(["ACGT" * 100] * 3)
    batch = {"image_views": torch.randn(3, 2, 3, *model.image_size), "dna_input_ids": dna["input_ids"],
             "dna_attention_mask": dna["attention_mask"], "text_tokens": model.tokenize_text(["a b c"] * 3)}
    with sdpa_kernel([SDPBackend.MATH]), FlopCounterMode(display=False) as counter:
        model(batch)
    estimate = bench_train.flops_per_sample(model, views=2, dna_tokens=dna["input_ids"].shape[1], text_per_step=True)
    forward = sum(estimate[k] for k in ("image", "dna", "text", "fusion"))
    assert forward == pytest.approx(counter.get_total_flops() / 3, rel=1e-3)
    assert estimate["train"] == pytest.approx(3 * forward)  # every part of the demo model is trained
    frozen = bench_train.flops_per_sample(model, views=2, dna_tokens=dna["input_ids"].shape[1], text_per_step=False)
    assert frozen["text"] == 0 and frozen["train"] < estimate["train"]


def test_paper_size_config_is_the_papers_shape(bench_train: ModuleType) -> None:
    cfg = bench_train.paper_size_model_config()
    assert (cfg.clip_model, cfg.clip_pretrained, cfg.embed_dim, cfg.freeze_text) == ("ViT-B-16", None, 512, True)
    assert (cfg.dna_hidden, cfg.dna_layers, cfg.dna_heads, cfg.dna_intermediate) == (768, 12, 12, 3072)
