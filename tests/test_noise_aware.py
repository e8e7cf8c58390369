"""Noise-aware training (``data.noise_aware``): off it changes nothing; on, each sample's modalities are blurred,
degraded or dropped at the configured rates, reproducibly per (seed, epoch, item), and a run trains, resumes and
exports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CI_CONFIG, tiny_overrides
from hirviz.bundle import load_bundle
from hirviz.degrade import box_blur
from train.config import load_config
from train.data import SpecimenDataset, make_collate, open_images, read_metadata, train_transform
from train.data.noise_aware import NoiseAware, draw_item_noise
from train.loop import CHECKPOINT, fit

ARM = ("loss.objective=clibd-hir-fuse", "data.noise_aware=true")  # the study's "CLIBD-HiR-Fuse noise-aware" arm


@pytest.fixture(scope="module")
def specimens(tiny_synth: Path):
    images = open_images(str(tiny_synth / "images.hdf5"))
    yield read_metadata(tiny_synth / "metadata.tsv"), images
    images.close()


def _dataset(specimens, noise: NoiseAware | None = None, **kwargs) -> SpecimenDataset:
    frame, images = specimens
    return SpecimenDataset(frame, images, train_transform(32), views=2, seed=7, noise=noise, **kwargs)


def test_off_by_default_and_items_carry_no_flags(specimens) -> None:
    cfg = load_config(CI_CONFIG)
    assert cfg.data.noise_aware is False and cfg.data.noise_settings() is None
    item = _dataset(specimens, cfg.data.noise_settings())[0]
    assert "image_present" not in item and "dna_present" not in item
    batch = make_collate()([item])
    assert "image_present" not in batch and "dna_present" not in batch


def test_zero_rates_leave_every_item_exactly_as_without_noise(specimens) -> None:
    # The noise draws use their own stream: the augmentations and barcodes of the off switch are untouched.
    plain = _dataset(specimens)
    quiet = _dataset(specimens, NoiseAware(rate=0.0, drop=0.0))
    for epoch in (0, 1):
        plain.set_epoch(epoch)
        quiet.set_epoch(epoch)
        for i in range(0, 150, 7):
            a, b = plain[i], quiet[i]
            assert torch.equal(a["image_views"], b["image_views"]) and a["barcode"] == b["barcode"]
            assert b["image_present"] and b["dna_present"]


def test_degradations_and_drops_happen_at_the_configured_rates() -> None:
    settings = NoiseAware(rate=0.3, dna_scale=2.0, blur_max=6, drop=0.2)
    draws = [draw_item_noise(settings, int(seed), both_modalities=True)
             for seed in np.random.SeedSequence(11).generate_state(4000)]
    n = len(draws)

    def near(count: int, trials: int, p: float) -> bool:  # within 4 binomial sd
        return abs(count - trials * p) <= 4 * math.sqrt(trials * p * (1 - p))

    dropped = [d for d in draws if d.dropped]
    kept = [d for d in draws if not d.dropped]
    assert near(len(dropped), n, 0.2)
    assert near(sum(d.dropped == "image" for d in dropped), len(dropped), 0.5)
    assert near(sum(d.blur_kernel > 0 for d in kept), len(kept), 0.3)
    assert near(sum(d.degrade_dna for d in kept), len(kept), 0.3)
    assert {d.blur_kernel for d in kept if d.blur_kernel} == {2, 3, 4, 5, 6}
    assert all(d.blur_kernel == 0 and not d.degrade_dna for d in dropped)  # a dropped sample's other side is clean
    # one modality only: nothing to drop
    assert not any(draw_item_noise(settings, s, both_modalities=False).dropped for s in range(500))


def test_items_get_the_evaluation_blur_the_dna_augment_noise_and_blank_drops(specimens) -> None:
    settings = NoiseAware(rate=0.5, dna_scale=3.0, blur_max=7, drop=0.3)
    noisy, clean = _dataset(specimens, settings), _dataset(specimens)
    augmented = _dataset(specimens, dna_augment=3.0)  # the mechanism noise-aware reuses for DNA
    seen = {"blur": 0, "dna": 0, "image": 0, "dropped dna": 0}
    for epoch in (0, 1):
        for ds in (noisy, clean, augmented):
            ds.set_epoch(epoch)
        for i in range(0, 150, 3):
            plan, item, reference = noisy.item_noise(i), noisy[i], clean[i]
            barcode = reference["barcode"]
            if plan.dropped == "image":
                seen["image"] += 1
                assert not item["image_present"] and item["dna_present"]
                assert not item["image_views"].any() and item["barcode"] == barcode
            elif plan.dropped == "dna":
                seen["dropped dna"] += 1
                assert item["image_present"] and not item["dna_present"]
                assert item["barcode"] == "N" * len(barcode)
                assert torch.equal(item["image_views"], reference["image_views"])
            else:
                assert item["image_present"] and item["dna_present"]
                assert torch.equal(item["image_views"], box_blur(reference["image_views"], plan.blur_kernel))
                seen["blur"] += plan.blur_kernel > 0
                assert item["barcode"] == (augmented[i]["barcode"] if plan.degrade_dna else barcode)
                seen["dna"] += plan.degrade_dna and item["barcode"] != barcode
    assert all(count > 3 for count in seen.values()), seen
    # fresh draws each epoch, the same draws for a fresh dataset (what a resumed run or another worker builds)
    noisy.set_epoch(0)
    first = [noisy.item_noise(i) for i in range(150)]
    again = _dataset(specimens, settings)
    assert [again.item_noise(i) for i in range(150)] == first
    noisy.set_epoch(1)
    assert [noisy.item_noise(i) for i in range(150)] != first


def test_collate_stacks_the_presence_flags(specimens) -> None:
    ds = _dataset(specimens, NoiseAware(drop=1.0))
    items = [ds[i] for i in range(8)]
    batch = make_collate()(items)
    assert batch["image_present"].dtype == torch.bool
    assert batch["image_present"].tolist() == [it["image_present"] for it in items]
    assert (batch["image_present"] ^ batch["dna_present"]).all()  # drop=1: every sample lost exactly one


def test_bad_noise_settings_are_refused_by_key() -> None:
    with pytest.raises(ValueError, match="data.noise_drop must be a probability"):
        load_config(CI_CONFIG, ["data.noise_aware=true", "data.noise_drop=1.5"])
    with pytest.raises(ValueError, match="data.noise_blur_max must be an integer >= 2"):
        load_config(CI_CONFIG, ["data.noise_blur_max=1"])
    with pytest.raises(ValueError, match="set data.dna_augment=0"):
        load_config(CI_CONFIG, ["data.noise_aware=true", "data.dna_augment=1"])
    with pytest.raises(ValueError, match="data.noise_drop=0"):
        load_config(CI_CONFIG, ["data.noise_aware=true", "model.geometry=lorentz", "loss.objective=clibd"])


def test_noise_aware_fuse_run_trains_resumes_identically_and_exports(tiny_synth, tmp_path, no_umap) -> None:
    from train.export import export

    extra = (*ARM, "optim.epochs=2", "data.noise_drop=0.3")
    straight = fit(load_config(CI_CONFIG, tiny_overrides(tiny_synth, tmp_path / "straight", *extra)))
    # stopped after 5 steps (mid-epoch, after the step-3 checkpoint), then resumed to the end
    stopped = tmp_path / "stopped"
    fit(load_config(CI_CONFIG, tiny_overrides(tiny_synth, stopped, *extra)), max_steps=5)
    assert torch.load(stopped / CHECKPOINT, weights_only=True)["step"] == 5
    fit(load_config(CI_CONFIG, tiny_overrides(tiny_synth, stopped, *extra)), resume=True)
    a = torch.load(straight / CHECKPOINT, weights_only=True)["model"]
    b = torch.load(stopped / CHECKPOINT, weights_only=True)["model"]
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)

    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["fuse"]) for r in records)
    bundle = load_bundle(export(straight, tmp_path / "bundle", max_reference=40, umap=False))
    assert bundle.fusion_trained and bundle.config["training"]["data"]["noise_aware"] is True


def test_the_trainer_hands_the_flags_to_the_objective(specimens) -> None:
    from contextlib import nullcontext

    from hirviz.model import build_model
    from train.loop import batch_loss

    cfg = load_config(CI_CONFIG, list(ARM))
    torch.manual_seed(0)
    model = build_model(cfg.model)
    ds = _dataset(specimens, cfg.data.noise_settings())
    batch = make_collate(model.dna_tokenizer, model.tokenize_text)([ds[i] for i in range(10)])
    batch["image_present"][:], batch["dna_present"][:] = True, False  # every barcode dropped
    _, parts = batch_loss(model, batch, cfg, torch.device("cpu"), nullcontext())
    assert parts["dna_text"] == 0 and parts["image_dna"] == 0 and parts["image_text"] > 0
