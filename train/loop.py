"""The training loop: one readable function for CLIBD, CLIBD-HiR and CLIBD-HiR-Fuse.

``python -m train fit --config CFG [section.key=value ...]`` runs it in one process;
``torchrun --nproc_per_node=N -m train fit ...`` runs it data-parallel (nccl on GPUs, gloo on CPU);
multi-node is torchrun's job (``--nnodes``, ``--rdzv-endpoint``). The recipe is the paper's (METHOD.md
section 6): AdamW + OneCycle, bf16 autocast on GPU, optional gradient accumulation.

A run directory (:mod:`train.rundir`) holds ``config.yaml``, ``taxonomy.json``, ``split.npz`` (train/validation/test
indices into the metadata), ``metrics.jsonl`` and ``checkpoint.pt``. With ``run.eval_every`` > 0 the loop also scores
the validation rows every that many steps and at the last step (:mod:`train.validation`), lines with ``val_*`` keys
in ``metrics.jsonl``: the learning curves. Checkpoints are written atomically every
``run.checkpoint_every`` optimizer steps and at each epoch end; ``--resume`` continues from the last one
with the same model, optimizer, scheduler, sampler and RNG state, so a killed run that resumes ends with
the same weights as one that never stopped.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import pickle
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from hirviz.model import HirvizModel, build_model
from train import distributed
from train.config import TrainConfig, config_changes, load_config
from train.data import HierarchicalBatchSampler, SpecimenDataset, make_collate, open_images, train_transform
from train.data.noise_aware import presence
from train.embed import embed_texts
from train.hyperbolic_training import RankPrompts, geometry_record, param_groups
from train.losses import compute_loss, loggable_parts
from train.rng import rng_state, seed_everything, set_rng_state
from train.rundir import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    TAXONOMY,
    load_run_split,
    load_training_split,  # noqa: F401  (re-exported: callers import it from the loop)
)
from train.validation import Validator
from train.vocab import resolve_dna_vocabulary

logger = logging.getLogger(__name__)
MODEL_INPUTS = ("image_views", "dna_input_ids", "dna_attention_mask", "text_tokens")


# ----------------------------------------------------------------------------------------------------
# Checkpoint helpers


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write with ``torch.save`` to a temp file, then rename: a kill never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint of :func:`fit`, read with ``torch.load(weights_only=True)`` (tensors and plain values only).

    Checkpoints written before the RNG states were stored as tensors hold the numpy RNG key as a numpy array:
    for those (and only those) numpy's array reconstruction is allowed as well, which builds no other object.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "numpy" not in str(err):
            raise _not_a_checkpoint(path, err) from err
    logger.info("%s stores its numpy RNG state as an array (an older checkpoint); reading it as such", path)
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise _not_a_checkpoint(path, err) from err


def _not_a_checkpoint(path: Path, err: Exception) -> ValueError:
    reason = next((line.strip() for line in str(err).splitlines() if "Unsupported global" in line), type(err).__name__)
    return ValueError(f"{path} is not a checkpoint this trainer wrote (it holds objects a checkpoint never does: "
                      f"{reason})")


# What unpickling a plain numeric numpy array needs (older checkpoints' numpy RNG key): no callable beyond these.
# The reconstructor is taken from an array's own pickle recipe, as its module moved between numpy 1 and 2.
_NUMPY_ARRAY_GLOBALS = [np.zeros(0).__reduce__()[0], np.ndarray, np.dtype, type(np.dtype(np.uint32))]


# ----------------------------------------------------------------------------------------------------
# The loop


def fit(cfg: TrainConfig, resume: bool = False, max_steps: int | None = None) -> Path:
    """Train a model as ``cfg`` says; returns the run directory.

    ``max_steps`` stops after that many optimizer steps in total (for tests and throughput checks); the
    learning-rate schedule still spans the whole configured run.
    """
    dist = distributed.setup(cfg.run.device)
    out = Path(cfg.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # -- data ------------------------------------------------------------------------------------
    split = load_run_split(cfg, out if dist.is_main else None)
    frame, train_idx = split.frame, split.train
    # A vocabulary the config names but nobody has (or "bpe:N") is trained on the training barcodes first.
    cfg = resolve_dna_vocabulary(cfg, frame["barcode"].iloc[train_idx], out, dist.is_main)
    # Every rank builds the same model from the base seed: a frozen text tower is cached below, before DDP's
    # broadcast of rank 0's weights, so a rank-dependent initialisation would give each rank its own text targets.
    seed_everything(cfg.run.seed)
    model: HirvizModel = build_model(cfg.model).to(dist.device)
    images = open_images(cfg.data.images) if cfg.data.images else None
    hir_on = cfg.loss.hir_modality if cfg.loss.uses_hir else None
    views = cfg.data.views if hir_on == "image" else 1
    dna_views = cfg.data.views if hir_on == "dna" else 1
    transform = train_transform(model.image_size[0], model.image_mean, model.image_std)
    dataset = SpecimenDataset(frame.iloc[train_idx], images, transform, views=views, seed=cfg.run.seed,
                              identical_views=cfg.data.hir_views == "identical", dna_augment=cfg.data.dna_augment,
                              noise=cfg.data.noise_settings(), dna_crop=cfg.data.dna_crop)
    if resume and (out / CHECKPOINT).exists() and (out / CONFIG).exists():
        # before config.yaml is rewritten: it still holds the settings the checkpoint was trained with
        saved = yaml.safe_load((out / CONFIG).read_text(encoding="utf-8")) or {}
        try:  # settings added since the run started take their defaults, which is what the run trained with
            saved = TrainConfig.from_dict(saved).to_dict()
        except ValueError:  # a setting since removed: compared as written, so the error names it
            pass
        changed = config_changes(saved, cfg.to_dict())
        if changed:
            raise ValueError(f"{out} was trained with other settings than these ({'; '.join(changed)}): resume "
                             "with the run's own settings (its config.yaml), or train into a new run.out_dir")
    if dist.is_main:
        dataset.taxonomy.save(str(out / TAXONOMY))
        with open(out / CONFIG, "w", encoding="utf-8") as fh:
            yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False)
    group_size = cfg.data.group_size if cfg.data.sampler == "hierarchical" else 1
    sampler = HierarchicalBatchSampler(dataset.labels, cfg.data.batch_size, group_size,
                                       dist.rank, dist.world_size, seed=cfg.run.seed)
    # A frozen text tower gives every taxonomy string a fixed embedding: compute them once, not per batch. (In the
    # Lorentz geometry the cache holds the tower's features: the projector's learnt text alpha embeds them.)
    lorentz = cfg.model.geometry == "lorentz"
    text_bank = None
    if cfg.model.freeze_text:
        text_bank = torch.from_numpy(embed_texts(model, dataset.texts, device=dist.device,
                                                 features=lorentz)).to(dist.device)
    # SEL's entailment cones need each specimen's per-rank prompts embedded (METHOD.md section 9).
    rank_prompts = None
    if lorentz and cfg.loss.entailment == "sel" and cfg.loss.entail_weight > 0:
        rank_prompts = RankPrompts(model, dataset.texts, dataset.text_ids, dataset.labels, dataset.taxonomy,
                                   dist.device, frozen=cfg.model.freeze_text)
    model.train()
    seed_everything(cfg.run.seed + dist.rank)  # from here on each rank draws its own dropout and augmentation
    collate = make_collate(
        dna_tokenizer=model.dna_tokenizer if dataset.has_barcodes else None,
        text_tokenizer=None if text_bank is not None else model.tokenize_text,
    )
    # The loader draws its workers' base seed from its own generator, not the global RNG, so resuming
    # mid-epoch leaves the global RNG (dropout) exactly where an uninterrupted run has it.
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.data.num_workers,
                        pin_memory=dist.device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.run.seed))

    # -- optimisation ------------------------------------------------------------------------------
    net: torch.nn.Module = model
    if dist.world_size > 1:
        # Without the fusion loss the fusion head gets no gradient, which DDP must be told about.
        net = DistributedDataParallel(model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None,
                                      find_unused_parameters=not cfg.loss.uses_fusion)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, params, cfg.optim.decay_hyperbolic_params),
                                  lr=cfg.optim.max_lr, weight_decay=cfg.optim.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(sampler) / cfg.optim.grad_accum))
    total_steps = steps_per_epoch * cfg.optim.epochs
    # OneCycle is stepped after every optimizer step, the last one included, so it needs one step more
    # than the optimizer takes or its final step falls off the end of the schedule.
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.optim.max_lr, total_steps=total_steps + 1, pct_start=cfg.optim.pct_start,
        anneal_strategy="cos", cycle_momentum=False, div_factor=cfg.optim.div_factor,
        final_div_factor=cfg.optim.final_div_factor)
    autocast = autocast_for(cfg.optim.precision, dist.device)
    # Learning curves on the validation rows (never the test rows); RNG-neutral, so resuming stays exact.
    # (the same validation sample for every training seed: seeds then differ in training only)
    validator = Validator(frame.iloc[train_idx], frame.iloc[split.val], images, cfg.run.eval_specimens,
                          cfg.data.split_seed, dist.device) if cfg.run.eval_every and dist.is_main else None

    step, epoch, batches_done = 0, 0, 0
    if resume and (out / CHECKPOINT).exists():
        ckpt = load_checkpoint(out / CHECKPOINT)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        step, epoch, batches_done = ckpt["step"], ckpt["epoch"], ckpt["batches_done"]
        set_rng_state(ckpt["rng"][dist.rank] if dist.rank < len(ckpt["rng"]) else ckpt["rng"][0])
        if dist.is_main:
            logger.info("resumed %s at step %d (epoch %d, batch %d)", out, step, epoch, batches_done)
    elif resume and dist.is_main:
        logger.info("no checkpoint in %s: starting from scratch", out)

    def save_checkpoint() -> None:
        rngs = _gather_objects(rng_state(), dist.world_size)
        if dist.is_main:
            atomic_torch_save({
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step, "epoch": epoch,
                "batches_done": batches_done, "rng": rngs, "config": cfg.to_dict(),
            }, out / CHECKPOINT)
        distributed.barrier()

    def forward_backward(batch: dict[str, Any]) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """Loss of one (micro-)batch, back-propagated; ``None`` when every sample of it was dropped."""
        if len(batch["index"]) == 0:
            return None, {}
        loss, parts = batch_loss(net, batch, cfg, dist.device, autocast, text_bank, dna_views, rank_prompts)
        (loss / cfg.optim.grad_accum).backward()
        return loss.detach(), parts

    metrics = open(out / METRICS, "a", encoding="utf-8") if dist.is_main else None
    board = _tensorboard(out) if cfg.run.tensorboard and dist.is_main else None
    net.train()
    try:
        while epoch < cfg.optim.epochs and (max_steps is None or step < max_steps):
            sampler.set_epoch(epoch)
            dataset.set_epoch(epoch)
            if batches_done:
                sampler.load_state_dict({**sampler.state_dict(), "epoch": epoch, "batches_done": batches_done})
            bar = tqdm(total=len(sampler), initial=batches_done, desc=f"epoch {epoch}",
                       disable=not dist.is_main, dynamic_ncols=True, mininterval=2.0)
            t_data = time.perf_counter()
            for batch in loader:
                data_time = time.perf_counter() - t_data
                t_step = time.perf_counter()
                batches_done += 1
                bar.update(1)
                loss, parts = forward_backward(batch)
                accumulating = batches_done % cfg.optim.grad_accum and batches_done < len(sampler)
                if loss is not None and not accumulating:
                    if cfg.optim.grad_clip:
                        torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
                    optimizer.step()
                    if model.projector is not None:  # keep c, the alphas and the logit scale in range (MERU)
                        model.projector.clamp_()
                    optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    step += 1
                    step_time = time.perf_counter() - t_step
                    rate = len(batch["index"]) * dist.world_size / max(step_time + data_time, 1e-9)
                    bar.set_postfix(loss=f"{loss.item():.3f}", samples_s=f"{rate:.0f}")
                    if metrics is not None and (step % cfg.run.log_every == 0 or step == 1):
                        record = {"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0],
                                  "loss": loss.item(), **loggable_parts(parts), **geometry_record(model),
                                  "samples_per_s": rate, "data_s": data_time, "step_s": step_time}
                        _log(metrics, board, record, "train")
                    if validator is not None and (step % cfg.run.eval_every == 0 or step == total_steps):
                        _log(metrics, board, validator.record(model, step, epoch), "val")
                    if step % cfg.run.checkpoint_every == 0 and batches_done < len(sampler):
                        save_checkpoint()
                    if max_steps is not None and step >= max_steps:
                        break
                t_data = time.perf_counter()
            bar.close()
            if batches_done >= len(sampler):
                epoch, batches_done = epoch + 1, 0
            save_checkpoint()
    finally:
        if images is not None:
            images.close()
        if metrics is not None:
            metrics.close()
        if board is not None:
            board.close()
        distributed.teardown()
    return out


def _log(metrics: Any, board: Any, record: dict[str, Any], group: str) -> None:
    """One ``metrics.jsonl`` line (and its scalars in TensorBoard under ``group/``)."""
    if metrics is None:
        return
    metrics.write(json.dumps(record) + "\n")
    metrics.flush()
    if board is not None:
        for key, value in record.items():
            if key not in ("step", "epoch") and isinstance(value, (int, float)):
                board.add_scalar(f"{group}/{key}", value, record["step"])


def _tensorboard(out: Path):
    """A TensorBoard writer in ``out/tensorboard`` (``run.tensorboard=true``; needs ``pip install tensorboard``)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise SystemExit("run.tensorboard=true needs the tensorboard package: pip install tensorboard") from err
    return SummaryWriter(str(out / "tensorboard"))


def batch_loss(net: torch.nn.Module, batch: dict[str, Any], cfg: TrainConfig, device: torch.device, autocast: Any,
               text_bank: torch.Tensor | None = None, dna_views: int = 1, rank_prompts: RankPrompts | None = None,
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The training objective of one collated batch: encode (under ``autocast``), then the losses in fp32.

    ``text_bank`` holds a frozen text tower's cached embeddings (Lorentz: its features), looked up by
    taxonomy-string id; ``dna_views`` > 1 feeds each barcode that many times (dropout views, for HiR on DNA
    embeddings); ``rank_prompts`` adds SEL's per-rank prompts (Lorentz).
    """
    inputs = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k in MODEL_INPUTS}
    if dna_views > 1 and "dna_input_ids" in inputs:
        for key in ("dna_input_ids", "dna_attention_mask"):
            inputs[key] = inputs[key].unsqueeze(1).expand(-1, dna_views, -1)
    text_ids = batch["text_ids"].to(device, non_blocking=True)
    lorentz = cfg.model.geometry == "lorentz"
    if text_bank is not None and lorentz:  # embedded inside the forward, where the projector's alpha is trained
        inputs["text_features"] = text_bank[text_ids]
    if rank_prompts is not None:
        rank_prompts.add(inputs, text_ids)
    with autocast:
        outputs = net(inputs)
    if text_bank is not None and not lorentz:
        outputs["text"] = text_bank[text_ids]
    outputs = {k: v.float() for k, v in outputs.items()}
    return compute_loss(outputs, text_ids, batch["labels"].to(device, non_blocking=True), cfg.loss,
                        logit_scale=outputs.get("logit_scale"), curvature=outputs.get("curvature"),
                        present=presence(batch, device))


def autocast_for(precision: str, device: torch.device):
    """bf16 autocast on GPUs under ``auto`` (or with ``bf16``); nothing (fp32) otherwise."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision not in ("auto", "fp32"):
        raise ValueError(f"unknown precision {precision!r}; use auto, fp32 or bf16")
    return nullcontext()


def _gather_objects(obj: Any, world_size: int) -> list[Any]:
    if world_size == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size
    torch.distributed.all_gather_object(gathered, obj)
    return gathered


# ----------------------------------------------------------------------------------------------------
# Command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML config (train/configs/*.yaml); defaults when omitted")
    parser.add_argument("--resume", action="store_true", help="continue from the run dir's last checkpoint")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="config overrides, values parsed as YAML (e.g. optim.epochs=3 run.out_dir=runs/x)")


def fit_from_args(args: argparse.Namespace) -> Path:
    """Load the config the arguments name (with their overrides) and train; returns the run directory."""
    try:
        cfg = load_config(args.config, args.overrides)
        if not cfg.data.metadata:
            raise SystemExit("no training data: set data.metadata=PATH (a BIOSCAN TSV/CSV or a barcode TSV)")
        return fit(cfg, resume=args.resume, max_steps=args.max_steps)
    except FileNotFoundError as err:  # a missing config, metadata, images or tokenizer: one line, no traceback
        raise SystemExit(f"python -m train fit: {err}") from None


def run(args: argparse.Namespace) -> int:
    print(fit_from_args(args))
    return 0
