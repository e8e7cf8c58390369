"""Training throughput: samples/s and seconds per step split into data wait, forward and backward + optimizer.

Two set-ups, both built from the trainer's own pieces (``hirviz.model.build_model``, ``train.data``'s dataset,
hierarchical sampler, collate and augmentations, the trainer's ``train.loop.batch_loss``, AdamW):

* ``python bench/bench_train.py --config train/configs/demo.yaml`` -- the config's model, loss and data settings on
  a synthetic BIOSCAN-format benchmark generated into a temporary directory (or ``--data DIR``, the output of
  ``python -m train synth``), fed by the real ``DataLoader``.
* ``python bench/bench_train.py --paper-size --device cuda`` -- ``paper_bioclip.yaml``'s recipe with a model of the
  paper's size and random weights (nothing is downloaded): a ViT-B/16 image/text pair at 224 px embedding into 512
  dimensions, text tower frozen (its embeddings cached, as the trainer does), and a DNABERT-2-sized BERT (768
  wide, 12 layers) over 5-mer tokens; random tensors as inputs (``--inputs loader`` for the real loader), bf16
  autocast on CUDA. Prints the model FLOPs utilisation (MFU) against ``--peak-tflops`` (H100 SXM dense bf16).

N steps are timed after a few warm-up steps; on CUDA the device is synchronised at each phase boundary so that
the split is exact (this costs a little throughput).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Run from a clone without installing: the repository root holds the ``hirviz``, ``train`` and ``bench`` packages.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # every model here is randomly initialised: never touch the hub

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from bench.bench_hir import bioscan_like_batch  # noqa: E402
from hirviz.model import HirvizModel, ModelConfig, build_model  # noqa: E402
from train.config import TrainConfig, load_config  # noqa: E402
from train.data import (  # noqa: E402
    HierarchicalBatchSampler,
    SpecimenDataset,
    make_collate,
    open_images,
    read_metadata,
    train_transform,
)
from train.embed import embed_texts  # noqa: E402
from train.loop import autocast_for, batch_loss  # noqa: E402
from train.synthetic import SynthConfig, generate  # noqa: E402

DEMO_CONFIG = ROOT / "train" / "configs" / "demo.yaml"
PAPER_CONFIG = ROOT / "train" / "configs" / "paper_bioclip.yaml"
H100_SXM_BF16_TFLOPS = 989.0  # dense bf16 peak of an H100 SXM


def paper_size_model_config() -> ModelConfig:
    """``paper_bioclip.yaml``'s model at its size, randomly initialised: BioCLIP's architecture (OpenCLIP ViT-B/16,
    512-d, frozen text tower) and a BERT of DNABERT-2-117M's size (hidden 768, 12 layers, 12 heads, intermediate
    3072) over BarcodeBERT 5-mer tokens, since DNABERT-2's own model code cannot be loaded offline."""
    return ModelConfig(
        embed_dim=512, clip_model="ViT-B-16", clip_pretrained=None, freeze_text=True,
        dna_encoder="kmer-bert", dna_hidden=768, dna_layers=12, dna_heads=12, dna_intermediate=3072,
        dna_tokenizer="kmer", fusion_hidden_mult=2, fusion_dropout=0.0, temperature=0.07,
    )


# ----------------------------------------------------------------------------------------------------------------
# Model FLOPs, counted analytically (matmuls only: projections, attention, MLPs, patch embedding)


def transformer_flops(tokens: int, width: int, layers: int, mlp_hidden: int) -> float:
    """Forward FLOPs of a transformer encoder over one sequence: per layer the Q, K, V and output projections
    (``8 T D^2``), the attention scores and mixing (``4 T^2 D``) and the MLP (``4 T D H``)."""
    per_layer = 2 * tokens * (4 * width * width + 2 * width * mlp_hidden) + 4 * tokens * tokens * width
    return float(layers * per_layer)


def _mlp_hidden(block: nn.Module) -> int:
    return int(block.mlp.c_fc.out_features)


def image_tower_flops(clip: nn.Module) -> float:
    """Forward FLOPs of one image through an OpenCLIP ``VisionTransformer`` (patch embedding, blocks, projection)."""
    visual = clip.visual
    if not hasattr(visual, "transformer") or not hasattr(visual, "grid_size"):
        raise NotImplementedError(f"FLOPs of a {type(visual).__name__} image tower are not modelled (ViTs only)")
    patches = int(np.prod(visual.grid_size))
    tokens = patches + (1 if getattr(visual, "class_embedding", None) is not None else 0)
    conv = visual.conv1
    width = visual.transformer.width
    patch_embed = 2 * patches * conv.in_channels * int(np.prod(conv.kernel_size)) * conv.out_channels
    blocks = transformer_flops(tokens, width, visual.transformer.layers, _mlp_hidden(visual.transformer.resblocks[0]))
    proj = 2 * visual.proj.shape[0] * visual.proj.shape[1] if getattr(visual, "proj", None) is not None else 0
    return float(patch_embed + blocks + proj)


def text_tower_flops(clip: nn.Module) -> float:
    """Forward FLOPs of one taxonomy string through the OpenCLIP text tower at its full context length."""
    text = getattr(clip, "text", clip)  # CustomTextCLIP keeps the tower in .text, CLIP inlines it
    transformer = text.transformer
    blocks = transformer_flops(int(text.context_length), transformer.width, transformer.layers,
                               _mlp_hidden(transformer.resblocks[0]))
    projection = getattr(text, "text_projection", None)
    proj = 2 * projection.shape[0] * projection.shape[1] if isinstance(projection, torch.Tensor) else 0
    return float(blocks + proj)


def dna_encoder_flops(model: HirvizModel, tokens: int) -> float:
    """Forward FLOPs of one barcode of ``tokens`` tokens (padding included) through the BERT and the projection."""
    cfg = model.dna.backbone.config
    blocks = transformer_flops(tokens, cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size)
    return float(blocks + 2 * tokens * model.dna.proj.in_features * model.dna.proj.out_features)


def flops_per_sample(model: HirvizModel, views: int, dna_tokens: int | None, text_per_step: bool) -> dict[str, float]:
    """Model FLOPs of one training sample: forward per part, and ``train`` = 3 x forward of every trained part
    (forward + backward) + 1 x forward of frozen parts that still run each step.

    ``views``: image views per sample (0 without images); ``dna_tokens``: DNA sequence length (None without DNA);
    ``text_per_step``: the text tower runs each step (False when a frozen tower's embeddings are cached). The
    losses (a few [2B, 2B] similarity matrices) are left out: well under 0.1 % of the total at paper size.
    """
    out = {"image": views * image_tower_flops(model.clip) if views else 0.0,
           "dna": dna_encoder_flops(model, dna_tokens) if dna_tokens else 0.0,
           "text": text_tower_flops(model.clip) if text_per_step else 0.0,
           "fusion": 0.0}
    if views and dna_tokens:
        out["fusion"] = float(sum(2 * m.in_features * m.out_features for m in model.fusion.modules()
                                  if isinstance(m, nn.Linear)))
    text_trained = text_per_step and not model.config.freeze_text
    out["train"] = 3 * (out["image"] + out["dna"] + out["fusion"]) + (3 if text_trained else 1) * out["text"]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Batch sources


def random_barcodes(n: int, rng: np.random.Generator, length: int = 658) -> list[str]:
    """Random ACGT barcodes of BIOSCAN's usual length, so the tokenizer gives realistic token lengths."""
    return ["".join(rng.choice(list("ACGT"), size=length)) for _ in range(n)]


def random_batches(model: HirvizModel, batch_size: int, views: int, with_dna: bool, text_per_step: bool,
                   seed: int, count: int = 2) -> tuple[list[dict[str, Any]], list[str]]:
    """``count`` ready-made batches of random pixels and barcodes with BIOSCAN-like hierarchical labels.

    Returns the batches (CPU tensors, the trainer's collate layout) and the taxonomy strings their
    ``text_ids`` index (for a cached text bank).
    """
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    height, width = model.image_size
    batches, texts, text_index = [], [], {}
    for b in range(count):
        labels = bioscan_like_batch(batch_size, seed=seed + b)
        strings = [" ".join(f"{level}{i}" for level, i in zip("ofgs", row) if i >= 0) for row in labels.tolist()]
        text_ids = [text_index.setdefault(s, len(text_index)) for s in strings]
        batch: dict[str, Any] = {"labels": labels, "text_ids": torch.tensor(text_ids),
                                 "index": torch.arange(batch_size)}
        if views:
            batch["image_views"] = torch.randn(batch_size, views, 3, height, width, generator=generator)
        if with_dna:
            tokens = model.tokenize_dna(random_barcodes(batch_size, rng))
            batch["dna_input_ids"], batch["dna_attention_mask"] = tokens["input_ids"], tokens["attention_mask"]
        if text_per_step:
            batch["text_tokens"] = model.tokenize_text(strings)
        batches.append(batch)
    texts = sorted(text_index, key=text_index.get)
    return batches, texts


def loader_batches(loader: DataLoader, sampler: HierarchicalBatchSampler, dataset: SpecimenDataset
                   ) -> Iterator[dict[str, Any]]:
    """Batches from the trainer's DataLoader, epoch after epoch, skipping batches whose samples were all dropped."""
    for epoch in itertools.count():
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        for batch in loader:
            if len(batch["index"]):
                yield batch


# ----------------------------------------------------------------------------------------------------------------
# Timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(model: HirvizModel, cfg: TrainConfig, source: Iterator[dict[str, Any]], device: torch.device,
               warmup: int, steps: int, text_bank: torch.Tensor | None, precision: str,
               compile_model: bool = False, fused_adamw: bool = False) -> dict[str, float]:
    """Run ``warmup + steps`` training steps and return the per-step means of the measured ones (seconds)."""
    params = [p for p in model.parameters() if p.requires_grad]
    adamw_kwargs = {"fused": True} if fused_adamw else {}
    optimizer = torch.optim.AdamW(params, lr=cfg.optim.max_lr, weight_decay=cfg.optim.weight_decay, **adamw_kwargs)
    net: nn.Module = torch.compile(model) if compile_model else model
    model.train()
    totals = {"data_s": 0.0, "forward_s": 0.0, "backward_s": 0.0, "samples": 0, "dna_tokens": 0, "views": 0}
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        batch = next(source)
        _sync(device)
        t1 = time.perf_counter()
        loss, _ = batch_loss(net, batch, cfg, device, autocast_for(precision, device), text_bank)
        _sync(device)
        t2 = time.perf_counter()
        loss.backward()
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        t3 = time.perf_counter()
        if not torch.isfinite(loss):
            raise RuntimeError(f"non-finite loss {float(loss)} at step {step}")
        if step >= warmup:
            totals["data_s"] += t1 - t0
            totals["forward_s"] += t2 - t1
            totals["backward_s"] += t3 - t2
            totals["samples"] += len(batch["index"])
            # what the model actually ran on, for the FLOPs count: padded DNA length and image views
            if "dna_input_ids" in batch:
                totals["dna_tokens"] += batch["dna_input_ids"].shape[1]
            if "image_views" in batch:
                totals["views"] += batch["image_views"].shape[1]
    result = {k: totals[k] / steps for k in ("data_s", "forward_s", "backward_s", "dna_tokens", "views")}
    result["step_s"] = result["data_s"] + result["forward_s"] + result["backward_s"]
    result["samples_per_step"] = totals["samples"] / steps
    result["samples_per_s"] = totals["samples"] / (steps * result["step_s"])
    return result


# ----------------------------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None,
                        help="training YAML (default: train/configs/demo.yaml; paper_bioclip.yaml with --paper-size)")
    parser.add_argument("--paper-size", action="store_true",
                        help="replace the config's model by a random paper-sized one (ViT-B/16 + BERT-base)")
    parser.add_argument("--inputs", choices=("loader", "random"), default=None,
                        help="real DataLoader over a synthetic benchmark, or random tensors made once "
                             "(default: loader; random with --paper-size)")
    parser.add_argument("--device", default="auto", help="auto (cuda when available), cpu or cuda")
    parser.add_argument("--batch-size", type=int, default=None, help="per step (default: the config's data.batch_size)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (loader start, allocator, compile)")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                        help="auto = bf16 autocast on CUDA, fp32 on CPU (as the trainer)")
    parser.add_argument("--data", default=None,
                        help="directory with metadata.tsv and images.hdf5 to read instead of generating one")
    parser.add_argument("--specimens", type=int, default=2000, help="size of the generated synthetic benchmark")
    parser.add_argument("--image-height", type=int, default=256,
                        help="height of the generated images (256 like BIOSCAN's; the towers crop to their own size)")
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: the config's)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (warm-up pays the compile)")
    parser.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True) (the trainer uses the default)")
    parser.add_argument("--grad-checkpointing", action="store_true",
                        help="recompute activations in backward (less memory; MFU then undercounts the work done)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help=f"peak dense bf16 TFLOP/s for MFU (default on CUDA: {H100_SXM_BF16_TFLOPS:g}, H100 SXM)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, as for train fit")
    return parser


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    return device


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print a markdown table and return its figures."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    config_path = Path(args.config) if args.config else (PAPER_CONFIG if args.paper_size else DEMO_CONFIG)
    cfg = load_config(config_path, args.overrides)
    if args.paper_size:
        cfg.model = paper_size_model_config()
    if args.batch_size is not None:
        if args.batch_size < 1:
            parser.error("--batch-size must be positive")
        cfg.data.batch_size = args.batch_size
    inputs = args.inputs or ("random" if args.paper_size else "loader")
    torch.manual_seed(cfg.run.seed)

    model = build_model(cfg.model).to(device)
    if args.grad_checkpointing:
        model.clip.set_grad_checkpointing(True)
        model.dna.backbone.gradient_checkpointing_enable()
    views = cfg.data.views if cfg.loss.uses_hir and cfg.loss.hir_modality == "image" else 1
    text_per_step = not cfg.model.freeze_text  # a frozen tower's embeddings are computed once, as in the trainer
    tmp: Path | None = None
    try:
        if inputs == "random":
            batches, texts = random_batches(model, cfg.data.batch_size, views, with_dna=True,
                                            text_per_step=text_per_step, seed=cfg.run.seed)
            batches = [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]
            source: Iterator[dict[str, Any]] = itertools.cycle(batches)
            data_desc = "random tensors (no loader)"
        else:
            data_dir = Path(args.data) if args.data else None
            if data_dir is None:
                tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
                generate(tmp, SynthConfig(specimens=args.specimens, image_height=args.image_height, seed=cfg.run.seed))
                data_dir = tmp
            frame = read_metadata(data_dir / "metadata.tsv")
            images = open_images(data_dir / "images.hdf5")
            transform = train_transform(model.image_size[0], model.image_mean, model.image_std)
            dataset = SpecimenDataset(frame, images, transform, views=views, seed=cfg.run.seed)
            group_size = cfg.data.group_size if cfg.data.sampler == "hierarchical" else 1
            sampler = HierarchicalBatchSampler(dataset.labels, cfg.data.batch_size, group_size, seed=cfg.run.seed)
            texts = dataset.texts
            collate = make_collate(dna_tokenizer=model.dna_tokenizer if dataset.has_barcodes else None,
                                   text_tokenizer=model.tokenize_text if text_per_step else None)
            workers = cfg.data.num_workers if args.num_workers is None else args.num_workers
            loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                                pin_memory=device.type == "cuda")
            source = loader_batches(loader, sampler, dataset)
            origin = "--data" if args.data else "synth"
            data_desc = f"DataLoader, {workers} workers, {len(dataset)} specimens from {origin}"
        text_bank = None
        if not text_per_step:
            text_bank = torch.from_numpy(embed_texts(model, texts, device=device)).to(device)
            model.train()

        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        timing = time_steps(model, cfg, source, device, args.warmup, args.steps, text_bank, args.precision,
                            compile_model=args.compile, fused_adamw=args.fused_adamw)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    try:
        flops = flops_per_sample(model, round(timing["views"]), round(timing["dna_tokens"]), text_per_step)
    except NotImplementedError as err:
        print(f"note: {err}; no MFU")
        flops = None
    peak = args.peak_tflops or (H100_SXM_BF16_TFLOPS if device.type == "cuda" else None)
    result: dict[str, Any] = {
        "setup": "paper-size (random weights)" if args.paper_size else f"{config_path.name}",
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu ({torch.get_num_threads()} threads)"),
        "inputs": data_desc,
        "batch_size": cfg.data.batch_size,
        "steps": args.steps,
        "trainable_params_m": sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
        **timing,
        "train_gflops_per_sample": flops["train"] / 1e9 if flops else None,
        "achieved_tflops": flops["train"] * timing["samples_per_s"] / 1e12 if flops else None,
        "peak_tflops": peak,
    }
    result["mfu"] = result["achieved_tflops"] / peak if flops and peak else None
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    _print_table(result, args, cfg)
    return result


def _print_table(r: dict[str, Any], args: argparse.Namespace, cfg: TrainConfig) -> None:
    precision = "bf16 autocast" if args.precision == "bf16" or (args.precision == "auto" and "cpu" not in r["device"]) \
        else "fp32"
    extras = [name for name, on in (("torch.compile", args.compile), ("fused AdamW", args.fused_adamw),
                                    ("grad checkpointing", args.grad_checkpointing)) if on]
    rows = [
        ("set-up", f"{r['setup']}, objective {cfg.loss.objective}, {precision}" + "".join(f", {e}" for e in extras)),
        ("device", r["device"]),
        ("inputs", r["inputs"]),
        ("batch size / timed steps", f"{r['batch_size']} / {r['steps']} (after {args.warmup} warm-up)"),
        ("trainable parameters", f"{r['trainable_params_m']:.1f} M"),
        ("**samples/s**", f"**{r['samples_per_s']:.1f}**" if r["samples_per_s"] >= 10
         else f"**{r['samples_per_s']:.3g}**"),
        ("s/step: data (loader wait)", f"{r['data_s']:.4f}"),
        ("s/step: forward (+ loss)", f"{r['forward_s']:.4f}"),
        ("s/step: backward + optimizer", f"{r['backward_s']:.4f}"),
        ("s/step: total", f"{r['step_s']:.4f}"),
    ]
    if r["train_gflops_per_sample"] is not None:
        rows += [("model GFLOPs/sample (fwd+bwd)", f"{r['train_gflops_per_sample']:.1f}"),
                 ("achieved TFLOP/s", f"{r['achieved_tflops']:.3f}")]
    if r["mfu"] is not None:
        rows.append((f"MFU (peak {r['peak_tflops']:g} TFLOP/s)", f"{100 * r['mfu']:.1f} %"))
    else:
        rows.append(("MFU", "n/a on CPU (give --peak-tflops to compare with a peak)"))
    if "peak_memory_gib" in r:
        rows.append(("peak GPU memory", f"{r['peak_memory_gib']:.1f} GiB"))
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    if "cpu" in r["device"] and args.paper_size:
        print("\nCPU run: it shows the script works; it says nothing about GPU throughput.")


if __name__ == "__main__":
    main()
