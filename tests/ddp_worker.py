"""One rank of the distributed loss test (``tests/test_ddp_loss.py``), launched by ``torch.distributed.run``.

Every rank builds the same fixed random batch, keeps its own slice, computes the objective with gathering on
(gloo, CPU) and saves the loss, its parts and the gradients to ``OUT_DIR/<scenario>_rank<r>.pt``.

    python -m torch.distributed.run --nproc_per_node 2 tests/ddp_worker.py OUT_DIR

With ``--fit CONFIG [overrides]`` (``tests/test_loop.py``) each rank instead runs the trainer's own set-up
(:func:`train.loop.fit` with ``max_steps=0``) and saves, to ``OUT_DIR/fit_rank<r>.pt``, the model weights and
the frozen text tower's cached embeddings as the rank computed them, and the seed its RNG was left with.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from train.losses import LossConfig, compute_loss, contrastive_loss

RAW_DIM = 5
EMBED_DIM = 4


@dataclass
class Scenario:
    """A global batch split over the ranks by ``sizes`` and the loss configuration to run on it."""

    name: str
    sizes: tuple[int, ...]
    cfg: LossConfig
    learnable_scale: bool = True
    seed: int = 0
    n_taxa: int = 4
    # noise-aware training: global rows whose image / DNA was dropped (compute_loss's ``present``)
    image_dropped: tuple[int, ...] = ()
    dna_dropped: tuple[int, ...] = ()

    def present(self, rows: slice) -> dict[str, torch.Tensor] | None:
        """The presence flags of ``rows``, or None when the scenario drops nothing."""
        if not (self.image_dropped or self.dna_dropped):
            return None
        flags = {}
        for key, dropped in (("image", self.image_dropped), ("dna", self.dna_dropped)):
            mask = torch.ones(sum(self.sizes), dtype=torch.bool)
            mask[list(dropped)] = False
            flags[key] = mask[rows]
        return flags


SCENARIOS = [
    Scenario("fuse_multi_positive", (6, 6), LossConfig(objective="clibd-hir-fuse", hir_weight=0.5)),
    Scenario(
        "unequal_plain_detached_hmce",
        (7, 4),
        LossConfig(
            objective="clibd-hir-fuse",
            multi_positive=False,
            detach_dna_in_id=True,
            hir_mode="hmce",
            hir_weight=0.3,
            image_dna_weight=0.7,
            fusion_weight=2.0,
        ),
        learnable_scale=False,
        seed=1,
    ),
    Scenario(
        "fused_anchor_anchor_max",
        (5, 7),
        LossConfig(objective="clibd-hir-fuse", hir_weight=0.5, hir_max_scope="anchor",
                   fusion_direction="fused_anchor"),
        seed=2,
    ),
    # rank 1 keeps one image: its pair terms have a single image anchor, its HiR no active level
    Scenario("dropped_modalities", (5, 6), LossConfig(objective="clibd-hir-fuse", hir_weight=0.5), seed=3,
             image_dropped=(1, 5, 6, 7, 8, 9), dna_dropped=(3, 10)),
]


def make_batch(scenario: Scenario) -> dict[str, torch.Tensor]:
    """The whole global batch (raw inputs, labels) and the shared parameters, identical on every rank."""
    g = torch.Generator().manual_seed(scenario.seed)
    n = sum(scenario.sizes)
    species = torch.randint(0, scenario.n_taxa, (n,), generator=g)
    # a small consistent hierarchy with some ranks unknown, so HiR has positives and unknowns
    labels = torch.stack([species // 4, species // 2, species, species], dim=1)
    labels[torch.rand(n, 4, generator=g) < 0.25] = -1
    return {
        "image_raw": torch.randn(n, 2, RAW_DIM, generator=g, dtype=torch.float64),
        "dna_raw": torch.randn(n, RAW_DIM, generator=g, dtype=torch.float64),
        "text_table": torch.randn(scenario.n_taxa, RAW_DIM, generator=g, dtype=torch.float64),
        "text_ids": species,
        "labels": labels,
        "w_image": torch.randn(RAW_DIM, EMBED_DIM, generator=g, dtype=torch.float64),
        "w_dna": torch.randn(RAW_DIM, EMBED_DIM, generator=g, dtype=torch.float64),
        "w_text": torch.randn(RAW_DIM, EMBED_DIM, generator=g, dtype=torch.float64),
        "log_scale": torch.tensor(2.0, dtype=torch.float64),
    }


LEAVES = ("image_raw", "dna_raw")
PARAMS = ("w_image", "w_dna", "w_text", "log_scale")


def forward(batch: dict[str, torch.Tensor], rows: slice, scenario: Scenario):
    """Leaf tensors for ``rows`` and the shared parameters -> (leaves, params, outputs, text_ids, labels)."""
    leaves = {k: batch[k][rows].clone().requires_grad_() for k in LEAVES}
    params = {k: batch[k].clone().requires_grad_() for k in PARAMS}
    text_ids = batch["text_ids"][rows]
    image_views = F.normalize(leaves["image_raw"] @ params["w_image"], dim=-1)
    dna = F.normalize(leaves["dna_raw"] @ params["w_dna"], dim=-1)
    # same taxonomy string -> identical text embedding, as with a real text encoder
    text = F.normalize(batch["text_table"][text_ids] @ params["w_text"], dim=-1)
    outputs = {
        "image": image_views[:, 0],
        "image_views": image_views,
        "dna": dna,
        "text": text,
        "fused": F.normalize(0.3 * image_views[:, 0] + 0.7 * dna, dim=-1),
    }
    return leaves, params, outputs, text_ids, batch["labels"][rows]


def logit_scale(params: dict[str, torch.Tensor], scenario: Scenario) -> torch.Tensor | None:
    return params["log_scale"].exp() if scenario.learnable_scale else None


def run_rank(out_dir: Path) -> None:
    rank = dist.get_rank()
    for scenario in SCENARIOS:
        assert len(scenario.sizes) == dist.get_world_size(), "one batch slice per rank"
        start = sum(scenario.sizes[:rank])
        rows = slice(start, start + scenario.sizes[rank])
        leaves, params, outputs, text_ids, labels = forward(make_batch(scenario), rows, scenario)
        total, parts = compute_loss(outputs, text_ids, labels, scenario.cfg, logit_scale(params, scenario),
                                    present=scenario.present(rows))
        total.backward()
        # the public pairwise loss, on detached copies so it does not disturb the gradients above
        a = outputs["image"].detach().clone().requires_grad_()
        b = outputs["dna"].detach().clone().requires_grad_()
        pair = contrastive_loss(a, b, text_ids)
        pair.backward()
        torch.save(
            {
                "total": total.detach(),
                "parts": parts,
                "leaf_grads": {k: v.grad for k, v in leaves.items()},
                "param_grads": {k: v.grad for k, v in params.items()},
                "pair": pair.detach(),
                "pair_grads": (a.grad, b.grad),
            },
            out_dir / f"{scenario.name}_rank{rank}.pt",
        )


def run_fit_setup(out_dir: Path, config: str, overrides: list[str]) -> None:
    """The trainer's set-up on this rank: what it built and cached, saved before DDP can broadcast anything."""
    import train.loop
    from train.config import load_config

    seen: dict[str, object] = {}
    embed_texts = train.loop.embed_texts

    def recording_embed_texts(model, texts, **kwargs):
        seen["weights"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
        seen["text_bank"] = torch.from_numpy(embed_texts(model, texts, **kwargs))
        return seen["text_bank"].numpy()

    train.loop.embed_texts = recording_embed_texts
    rank = int(os.environ["RANK"])
    train.loop.fit(load_config(config, overrides), max_steps=0)
    torch.save({**seen, "initial_seed": torch.initial_seed()}, out_dir / f"fit_rank{rank}.pt")


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[2] == "--fit":
        run_fit_setup(Path(sys.argv[1]), sys.argv[3], sys.argv[4:])
        return
    dist.init_process_group("gloo")
    try:
        run_rank(Path(sys.argv[1]))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
