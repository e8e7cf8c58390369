"""compute_loss with dropped modalities (noise-aware training): a dropped row leaves every term that needs the
missing modality, nothing becomes NaN, and the fusion term answers with the present modality as the app does."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from train.losses import LossConfig, compute_loss
from train.losses.contrastive import contrastive_loss, directed_contrastive_loss
from train.losses.hir import hir_loss

B, D = 16, 8


def _outputs(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {k: F.normalize(torch.randn(B, D, generator=g), dim=-1).requires_grad_() for k in ("image", "dna", "text")}
    out["fused"] = F.normalize(torch.randn(B, D, generator=g), dim=-1).requires_grad_()
    out["image_views"] = torch.stack([out["image"], F.normalize(torch.randn(B, D, generator=g), dim=-1)], 1)
    return out


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    text_ids = torch.arange(B) % 6  # several specimens per taxonomy string: multi-positive targets
    labels = torch.stack([text_ids // 3, text_ids // 2, text_ids, text_ids], dim=1)
    return text_ids, labels


def _flags(*dropped: int) -> torch.Tensor:
    flags = torch.ones(B, dtype=torch.bool)
    flags[list(dropped)] = False
    return flags


FUSE = LossConfig(objective="clibd-hir-fuse", hir_weight=0.5)


def test_all_present_flags_give_exactly_the_unflagged_loss() -> None:
    out, (ids, labels) = _outputs(), _batch()
    plain, plain_parts = compute_loss(out, ids, labels, FUSE)
    flagged, parts = compute_loss(out, ids, labels, FUSE, present={"image": _flags(), "dna": _flags()})
    assert torch.equal(plain, flagged)
    assert {k: v.item() for k, v in parts.items()} == {k: v.item() for k, v in plain_parts.items()}


def test_a_dropped_row_is_left_out_of_the_terms_that_need_its_modality() -> None:
    out, (ids, labels) = _outputs(), _batch()
    image_gone, dna_gone = [0, 5, 9], [3, 12]
    present = {"image": _flags(*image_gone), "dna": _flags(*dna_gone)}
    _, parts = compute_loss(out, ids, labels, FUSE, present=present)

    def sub(key: str, keep: torch.Tensor) -> torch.Tensor:
        return out[key][keep]

    both = present["image"] & present["dna"]
    assert torch.allclose(parts["image_dna"], contrastive_loss(sub("image", both), sub("dna", both), ids[both]))
    keep = present["image"]
    assert torch.allclose(parts["image_text"], contrastive_loss(sub("image", keep), sub("text", keep), ids[keep]))
    keep = present["dna"]
    assert torch.allclose(parts["dna_text"], contrastive_loss(sub("dna", keep), sub("text", keep), ids[keep]))
    keep = present["image"]
    assert torch.allclose(parts["hir"], hir_loss(out["image_views"][keep], labels[keep]))
    # The fused query of a row with one modality is that modality's embedding (the app's answer then).
    fused = out["fused"].detach().clone()
    fused[image_gone], fused[dna_gone] = out["dna"][image_gone].detach(), out["image"][dna_gone].detach()
    assert torch.allclose(parts["fuse"], directed_contrastive_loss(out["text"], fused, ids))


@pytest.mark.parametrize("direction", ["text_anchor", "fused_anchor"])
def test_what_a_dropped_slot_holds_changes_no_loss_and_gets_no_gradient(direction: str) -> None:
    cfg = LossConfig(objective="clibd-hir-fuse", hir_weight=0.5, fusion_direction=direction)
    ids, labels = _batch()
    present = {"image": _flags(2, 7), "dna": _flags(4)}
    a, b = _outputs(0), _outputs(0)
    with torch.no_grad():  # b's blank slots hold something else: the dropped image rows, the dropped DNA row, and
        b["image"][[2, 7]] = F.normalize(torch.randn(2, D), dim=-1)  # the gate's output for all three
        b["dna"][4] = F.normalize(torch.randn(D), dim=-1)
        b["fused"][[2, 7, 4]] = F.normalize(torch.randn(3, D), dim=-1)
        b["image_views"] = torch.stack([b["image"], b["image_views"][:, 1]], 1)
        b["image_views"][[2, 7], 1] = F.normalize(torch.randn(2, D), dim=-1)
    loss_a, _ = compute_loss(a, ids, labels, cfg, present=present)
    loss_b, _ = compute_loss(b, ids, labels, cfg, present=present)
    assert torch.allclose(loss_a, loss_b)
    loss_a.backward()
    assert torch.isfinite(loss_a)
    assert not a["image"].grad[[2, 7]].any() and not a["dna"].grad[4].any()
    assert not a["fused"].grad[[2, 7, 4]].any()  # the gate learns nothing from a row it would not be asked about
    assert a["image"].grad[0].any() and a["dna"].grad[0].any() and a["fused"].grad[0].any()


def test_a_modality_dropped_from_every_row_adds_zero_and_no_nan() -> None:
    out, (ids, labels) = _outputs(), _batch()
    present = {"image": torch.zeros(B, dtype=torch.bool)}
    total, parts = compute_loss(out, ids, labels, FUSE, present=present)
    assert parts["image_dna"] == 0 and parts["image_text"] == 0 and parts["hir"] == 0
    assert parts["dna_text"] > 0 and parts["fuse"] > 0  # DNA answers for every row
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(out["image"].grad).all() and not out["image"].grad.any()


def test_bad_presence_flags_are_refused_by_name() -> None:
    out, (ids, labels) = _outputs(), _batch()
    with pytest.raises(ValueError, match="present\\['dna'\\] must be a bool tensor of shape \\[16\\]"):
        compute_loss(out, ids, labels, FUSE, present={"dna": torch.ones(B)})
    with pytest.raises(ValueError, match="unknown modalities \\['text'\\]"):
        compute_loss(out, ids, labels, FUSE, present={"text": _flags()})
