"""Speed of the vectorised HiR loss against a per-pair Python loop written straight from METHOD.md section 2.

    python bench/bench_hir.py [--batch-size 250] [--dim 512] [--repeats 20] [--loop-repeats 1] [--device cuda]
        [--modes paper shared-denominator hmce] [--max-scopes batch anchor]

The HiR variants (by default ``paper`` and the authors' ``hmce``; ``--modes`` adds the ``shared-denominator``
ablation and ``--max-scopes anchor`` the per-anchor maximum) are timed on one batch of 250 specimens with two
L2-normalised views each, labelled like a BIOSCAN-1M batch drawn by the trainer: ``HierarchicalBatchSampler``
groups of 5 relatives over a long-tailed population with many unknown genera and species. For each variant the
script prints the forward and forward+backward time of ``train.losses.hir_loss`` and of the loop, the speed-up,
and the largest absolute difference between the two implementations' loss values and gradients (they must agree).

    python bench/bench_hir.py --clamp [--batch-size 250] [--dim 512]

instead prints how often the clamp of Eq. 6 binds: per level, the share of positive pairs whose loss it raises,
on hierarchical synthetic embeddings (:func:`hierarchical_views`) of the same batch, for several spreads.
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

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

from bench.bench_sampler import synthetic_labels  # noqa: E402
from train.data import HierarchicalBatchSampler  # noqa: E402
from train.losses import DEFAULT_TAU, HIR_MAX_SCOPES, HIR_MODES, LEVELS, hir_loss  # noqa: E402


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


def hir_loop_rectified(views: Tensor, labels: Tensor, tau: float = DEFAULT_TAU, per_level_negatives: bool = True,
                       max_scope: str = "batch") -> Tensor:
    """Eq. 3-7: per-pair losses, levels order -> species, each pair clamped by the worst coarser positive pair.

    ``per_level_negatives``: the paper (denominator = the positive + N_l(a), the views outside P_l(a)); else the
    shared-denominator ablation (all 2B-1 other views). ``max_scope``: M over the whole level or per anchor.
    """
    z = views.reshape(-1, views.shape[-1])
    lab = labels.tolist()
    all_views = list(range(z.shape[0]))
    shared_log_den = None if per_level_negatives else _log_denominators(z, tau)
    level_losses = []
    coarser_max: Tensor | dict[int, Tensor] | None = None
    for level in range(len(LEVELS)):
        known = [y[level] for y in lab if y[level] >= 0]
        if len(known) == len(set(known)):  # no two specimens share a known label: the level is inactive
            continue
        anchor_means, rectified_all, anchor_max = [], [], {}
        for a in all_views:
            positives = _positives(lab, all_views, a, level)
            if per_level_negatives:
                in_p = set(positives)
                negatives = [k for k in all_views if k != a and k not in in_p]
                log_neg = torch.logsumexp(z[negatives] @ z[a] / tau, dim=0) if negatives else None
            pair_losses = []
            for p in positives:
                s_ap = z[a] @ z[p] / tau
                if not per_level_negatives:
                    loss = shared_log_den[a] - s_ap
                elif log_neg is None:
                    loss = 0.0 * s_ap  # the positive alone in the denominator: -log 1
                else:
                    loss = torch.logaddexp(s_ap, log_neg) - s_ap
                if coarser_max is not None:
                    loss = torch.maximum(loss, coarser_max if max_scope == "batch" else coarser_max[a])
                pair_losses.append(loss)
            anchor_means.append(torch.stack(pair_losses).mean())
            rectified_all.extend(pair_losses)
            anchor_max[a] = torch.stack(pair_losses).max()
        level_losses.append(torch.stack(anchor_means).mean())
        coarser_max = torch.stack(rectified_all).max() if max_scope == "batch" else anchor_max
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


def loop_for(mode: str, max_scope: str) -> Callable[[Tensor, Tensor, float], Tensor]:
    """The per-pair loop of one HiR variant."""
    if mode == "hmce":
        return hir_loop_hmce
    return lambda v, y, t: hir_loop_rectified(v, y, t, mode == "paper", max_scope)


# ----------------------------------------------------------------------------------------------------------------
# How often the clamp binds


def hierarchical_views(labels: Tensor, dim: int, spread: float, seed: int = 0) -> Tensor:
    """Views [B, 2, dim] built from the taxonomy: unit(sum over known ranks of the rank's random direction
    + ``spread`` x a specimen direction + ``spread / 2`` x a view direction).

    Specimens sharing a label share its direction, so relatives are closer the deeper they agree; ``spread``
    sets how far specimens (and views) sit from their taxa's centre.
    """
    g = torch.Generator().manual_seed(seed)
    batch = labels.shape[0]
    z = torch.zeros(batch, dim)
    for level in range(len(LEVELS)):
        y = labels[:, level]
        known = y >= 0
        directions = F.normalize(torch.randn(int(y.max()) + 1 if known.any() else 1, dim, generator=g), dim=-1)
        z[known] += directions[y[known]]
    z += spread * F.normalize(torch.randn(batch, dim, generator=g), dim=-1)
    views = z[:, None, :] + spread / 2 * F.normalize(torch.randn(batch, 2, dim, generator=g), dim=-1)
    return F.normalize(views, dim=-1)


def clamp_table(labels: Tensor, dim: int, spreads: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
                ) -> dict[str, dict]:
    """Per variant and spread, the clamped share of positive pairs per level (``hir_loss(return_stats=True)``)."""
    results: dict[str, dict] = {}
    print("| variant | spread | family | genus | species |")
    print("|---|---:|---:|---:|---:|")
    for mode, scope in (("paper", "batch"), ("paper", "anchor"), ("shared-denominator", "batch")):
        key = mode if scope == "batch" else f"{mode}, max_scope={scope}"
        for spread in spreads:
            _, stats = hir_loss(hierarchical_views(labels, dim, spread), labels, mode=mode, max_scope=scope,
                                return_stats=True)
            shares = {level: float(stats[level]) for level in LEVELS[1:]}
            results.setdefault(key, {})[spread] = shares
            print(f"| {key} | {spread} | " + " | ".join(f"{100 * v:.1f} %" for v in shares.values()) + " |")
    return results


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


def bench_mode(mode: str, views: Tensor, labels: Tensor, tau: float, repeats: int, loop_repeats: int,
               max_scope: str = "batch") -> dict[str, float]:
    """Times (seconds) and agreement of ``hir_loss(mode, max_scope)`` and of its loop on one batch."""
    device = views.device

    def vectorised(v: Tensor, y: Tensor, t: float) -> Tensor:
        return hir_loss(v, y, tau=t, mode=mode, max_scope=max_scope)

    result: dict[str, float] = {}
    value_grad = {}
    for name, fn, n in (("vectorised", vectorised, repeats), ("loop", loop_for(mode, max_scope), loop_repeats)):
        with torch.no_grad():
            result[f"{name}_forward_s"], _ = time_call(lambda fn=fn: fn(views, labels, tau), n, device, name != "loop")
        result[f"{name}_backward_s"], value_grad[name] = time_call(
            lambda fn=fn: _value_and_grad(fn, views, labels, tau), n, device, name != "loop")
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
    parser.add_argument("--modes", nargs="+", choices=HIR_MODES, default=["paper", "hmce"])
    parser.add_argument("--max-scopes", nargs="+", choices=HIR_MAX_SCOPES, default=["batch"],
                        help="max scopes to time for paper / shared-denominator (hmce has none)")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs of the vectorised loss")
    parser.add_argument("--loop-repeats", type=int, default=1, help="timed runs of the (slow) loop")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clamp", action="store_true",
                        help="print how often the clamp binds on hierarchical synthetic embeddings instead of timing")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.dim < 1 or args.repeats < 1 or args.loop_repeats < 1:
        parser.error("--batch-size, --dim, --repeats and --loop-repeats must be positive")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")

    labels = bioscan_like_batch(args.batch_size, seed=args.seed).to(device)
    if args.clamp:
        print(f"HiR clamp, batch {args.batch_size} x 2 views, d={args.dim}: share of positive pairs raised by Eq. 6\n")
        return clamp_table(labels.cpu(), args.dim)
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
        for scope in ["batch"] if mode == "hmce" else args.max_scopes:
            key = mode if scope == "batch" else f"{mode}, max_scope={scope}"
            r = bench_mode(mode, views, labels, DEFAULT_TAU, args.repeats, args.loop_repeats, scope)
            results[key] = r
            for name in ("vectorised", "loop"):
                print(f"| {key} | {name} | {1e3 * r[f'{name}_forward_s']:.2f} | {1e3 * r[f'{name}_backward_s']:.2f} |")
            print(f"| {key} | speed-up | {r['speedup_forward']:.0f}x | {r['speedup_backward']:.0f}x |")
    print("\n| mode | loss | max abs diff, loss | max abs diff, gradient |")
    print("|---|---:|---:|---:|")
    for mode, r in results.items():
        print(f"| {mode} | {r['loss']:.4f} | {r['max_abs_diff_loss']:.1e} | {r['max_abs_diff_grad']:.1e} |")
    return results


if __name__ == "__main__":
    main()
