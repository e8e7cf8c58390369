"""Speed of the vectorised HiR loss against a per-pair Python loop written straight from METHOD.md section 2.

    python bench/bench_hir.py [--batch-size 250] [--dim 512] [--repeats 20] [--loop-repeats 1] [--device cuda]

Both HiR modes (``paper`` and the authors' ``hmce``) are timed on one batch of 250 specimens with two L2-normalised
views each, labelled like a BIOSCAN-1M batch drawn by the trainer: ``HierarchicalBatchSampler`` groups of 5
relatives over a long-tailed population with many unknown genera and species. For each mode the script prints
the forward and forward+backward time of ``train.losses.hir_loss`` and of the loop, the speed-up, and the largest
absolute difference between the two implementations' loss values and gradients (they must agree).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# Run from a clone without installing: the repository root holds the ``hirviz``, ``train`` and ``bench`` packages.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import hirviz  # noqa: E402,F401  (installs the torchvision shim before train.data imports torchvision)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

from bench.bench_sampler import synthetic_labels  # noqa: E402
from train.data import HierarchicalBatchSampler  # noqa: E402
from train.losses import DEFAULT_TAU, HIR_MODES, LEVELS, hir_loss  # noqa: E402


def bioscan_like_batch(batch_size: int = 250, seed: int = 0, population: int = 100_000) -> Tensor:
    """Labels long [batch_size, 4] of the first batch the trainer's sampler draws from a BIOSCAN-like population.

    The population (:func:`bench.bench_sampler.synthetic_labels`) is long-tailed with ranks known for about 98 %
    (order), 70 %, 30 % and 9 % (species) of the specimens; the batch is made of groups of 5 relatives, as in
    training, so every level of HiR has positives to work on. Any ``batch_size`` works: the last group is cut
    short when it is not a multiple of 5.
    """
    group_size = 5
    padded = -(-batch_size // group_size) * group_size  # the sampler wants whole groups; the tail is cut off
    labels = synthetic_labels(max(population, padded), seed=seed)
    sampler = HierarchicalBatchSampler(labels, batch_size=padded, group_size=group_size, seed=seed)
    return torch.from_numpy(labels[next(iter(sampler))[:batch_size]])


# ----------------------------------------------------------------------------------------------------------------
# The straightforward implementation: one anchor, one positive at a time (METHOD.md section 2)


def _log_denominators(z: Tensor, tau: float) -> list[Tensor]:
    """Per view a of ``z`` [n, d]: log sum_{k != a} exp(z_a . z_k / tau)."""
    out = []
    for a in range(z.shape[0]):
        others = [k for k in range(z.shape[0]) if k != a]
        out.append(torch.logsumexp(z[others] @ z[a] / tau, dim=0))
    return out


def _positives(labels: list[list[int]], views: list[int], a: int, level: int) -> list[int]:
    """P_l(a) among ``views``: the other view of a, and every view of another specimen sharing a's known label."""
    mine = labels[a // 2][level]
    return [p for p in views if p != a and (p // 2 == a // 2 or (mine >= 0 and labels[p // 2][level] == mine))]


def hir_loop_paper(views: Tensor, labels: Tensor, tau: float = DEFAULT_TAU) -> Tensor:
    """Eq. 3-7: per-pair losses, levels order -> species, each pair clamped by the worst coarser positive pair."""
    z = views.reshape(-1, views.shape[-1])
    lab = labels.tolist()
    all_views = list(range(z.shape[0]))
    log_den = _log_denominators(z, tau)
    level_losses = []
    coarser_max: Tensor | None = None
    for level in range(len(LEVELS)):
        known = [y[level] for y in lab if y[level] >= 0]
        if len(known) == len(set(known)):  # no two specimens share a known label: the level is inactive
            continue
        anchor_means, rectified_all = [], []
        for a in all_views:
            pair_losses = [log_den[a] - z[a] @ z[p] / tau for p in _positives(lab, all_views, a, level)]
            if coarser_max is not None:
                pair_losses = [torch.maximum(loss, coarser_max) for loss in pair_losses]
            anchor_means.append(torch.stack(pair_losses).mean())
            rectified_all.extend(pair_losses)
        level_losses.append(torch.stack(anchor_means).mean())
        coarser_max = torch.stack(rectified_all).max()
    if not level_losses:
        return 0.0 * views.sum()
    return torch.stack(level_losses).mean()


def hir_loop_hmce(views: Tensor, labels: Tensor, tau: float = DEFAULT_TAU) -> Tensor:
    """The authors' variant: SupCon batch means species -> order, lifted to the running max of the finer levels,
    weighted 2^(1/k), over the active levels; the batch is de-duplicated after each level."""
    z = views.reshape(-1, views.shape[-1])
    lab = labels.tolist()
    kept = list(range(len(lab)))  # specimens still in the batch, in batch order
    total: Tensor | None = None
    n_active = 0
    finer_max: Tensor | None = None
    for k, level in enumerate(reversed(range(len(LEVELS))), start=1):
        if any(lab[i][level] >= 0 for i in kept):
            kept_views = [2 * i + v for i in kept for v in (0, 1)]
            # a dropped specimen is in no denominator: sum over the kept views only
            log_den = dict(zip(kept_views, _log_denominators(z[kept_views], tau)))
            anchor_means = []
            for a in kept_views:
                pair_losses = [log_den[a] - z[a] @ z[p] / tau for p in _positives(lab, kept_views, a, level)]
                anchor_means.append(torch.stack(pair_losses).mean())
            level_loss = torch.stack(anchor_means).mean()
            if finer_max is not None:
                level_loss = torch.maximum(level_loss, finer_max)
            term = 2.0 ** (1.0 / k) * level_loss
            total = term if total is None else total + term
            n_active += 1
            finer_max = level_loss
        seen: set[int] = set()
        deduplicated = []
        for i in kept:
            y = lab[i][level]
            if y < 0 or y not in seen:
                deduplicated.append(i)
                seen.add(y)
        kept = deduplicated
    if total is None:
        return 0.0 * views.sum()
    return total / n_active


LOOPS: dict[str, Callable[[Tensor, Tensor, float], Tensor]] = {"paper": hir_loop_paper, "hmce": hir_loop_hmce}


# ----------------------------------------------------------------------------------------------------------------
# Timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], repeats: int, device: torch.device, warmup: bool = True
              ) -> tuple[float, object]:
    """Median wall time of ``fn()`` in seconds over ``repeats`` runs, and the last run's result.

    ``warmup`` runs it once untimed first (allocator, kernel selection); the loop skips it, its own first-run
    overhead being negligible next to its run time.
    """
    if warmup:
        fn()
        _sync(device)
    times = []
    result = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _value_and_grad(loss_fn: Callable[[Tensor, Tensor, float], Tensor], views: Tensor, labels: Tensor,
                    tau: float) -> tuple[Tensor, Tensor]:
    leaf = views.detach().requires_grad_(True)
    loss = loss_fn(leaf, labels, tau)
    loss.backward()
    return loss.detach(), leaf.grad


def bench_mode(mode: str, views: Tensor, labels: Tensor, tau: float, repeats: int, loop_repeats: int
               ) -> dict[str, float]:
    """Times (seconds) and agreement of ``hir_loss(mode)`` and of its loop on one batch."""
    device = views.device

    def vectorised(v: Tensor, y: Tensor, t: float) -> Tensor:
        return hir_loss(v, y, tau=t, mode=mode)

    result: dict[str, float] = {}
    value_grad = {}
    for name, fn, n in (("vectorised", vectorised, repeats), ("loop", LOOPS[mode], loop_repeats)):
        with torch.no_grad():
            result[f"{name}_forward_s"], _ = time_call(lambda: fn(views, labels, tau), n, device, name != "loop")
        result[f"{name}_backward_s"], value_grad[name] = time_call(
            lambda: _value_and_grad(fn, views, labels, tau), n, device, name != "loop")
    (value_v, grad_v), (value_l, grad_l) = value_grad["vectorised"], value_grad["loop"]
    result["loss"] = float(value_v)
    result["max_abs_diff_loss"] = float((value_v - value_l).abs())
    result["max_abs_diff_grad"] = float((grad_v - grad_l).abs().max())
    result["speedup_forward"] = result["loop_forward_s"] / result["vectorised_forward_s"]
    result["speedup_backward"] = result["loop_backward_s"] / result["vectorised_backward_s"]
    return result


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the benchmark, print a markdown table and return the figures per mode."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=250, help="specimens (two views each)")
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension d")
    parser.add_argument("--modes", nargs="+", choices=HIR_MODES, default=list(HIR_MODES))
    parser.add_argument("--repeats", type=int, default=20, help="timed runs of the vectorised loss")
    parser.add_argument("--loop-repeats", type=int, default=1, help="timed runs of the (slow) loop")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.dim < 1 or args.repeats < 1 or args.loop_repeats < 1:
        parser.error("--batch-size, --dim, --repeats and --loop-repeats must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")

    labels = bioscan_like_batch(args.batch_size, seed=args.seed).to(device)
    generator = torch.Generator().manual_seed(args.seed)
    views = F.normalize(torch.randn(args.batch_size, 2, args.dim, generator=generator), dim=-1).to(device)

    known = (labels >= 0).float().mean(0).tolist()
    print(f"HiR, batch {args.batch_size} x 2 views, d={args.dim}, tau={DEFAULT_TAU}, device={device}, "
          f"torch threads={torch.get_num_threads()}; labels known per level (order..species): "
          + ", ".join(f"{k:.0%}" for k in known))
    print(f"vectorised: median of {args.repeats} runs; loop: median of {args.loop_repeats}\n")
    print("| mode | implementation | forward ms | forward+backward ms |")
    print("|---|---|---:|---:|")
    results = {}
    for mode in args.modes:
        r = bench_mode(mode, views, labels, DEFAULT_TAU, args.repeats, args.loop_repeats)
        results[mode] = r
        for name in ("vectorised", "loop"):
            print(f"| {mode} | {name} | {1e3 * r[f'{name}_forward_s']:.2f} | {1e3 * r[f'{name}_backward_s']:.2f} |")
        print(f"| {mode} | speed-up | {r['speedup_forward']:.0f}x | {r['speedup_backward']:.0f}x |")
    print("\n| mode | loss | max abs diff, loss | max abs diff, gradient |")
    print("|---|---:|---:|---:|")
    for mode, r in results.items():
        print(f"| {mode} | {r['loss']:.4f} | {r['max_abs_diff_loss']:.1e} | {r['max_abs_diff_grad']:.1e} |")
    return results


if __name__ == "__main__":
    main()
