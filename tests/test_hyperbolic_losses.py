"""train.losses.hyperbolic against brute-force loops in float64 written from METHOD.md sections 1 and 9."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from hirviz.lorentz import LorentzProjector, exp_map0
from hirviz.taxonomy import Taxonomy
from train.losses.hyperbolic import (
    ENTAILMENT_VARIANTS,
    HyperbolicLossConfig,
    entailment_loss,
    hyperbolic_contrastive_loss,
    hyperbolic_objective,
    rank_edges,
    rank_prompts,
    rank_prompts_from_ids,
    sel_intra_loss,
)

C = 0.7
SCALE = 5.0
K = 0.1
EPS = 1e-8  # the clamps of METHOD.md section 9, which matter for apexes near the origin
# Specimens known to different depths: duplicates (rows 0, 6), relatives (rows 3, 4), order only, nothing known.
LABELS = [
    [0, 0, 0, 0],
    [0, 0, 1, -1],
    [0, 1, -1, -1],
    [1, 2, 2, 2],
    [1, 2, 2, 3],
    [1, -1, -1, -1],
    [0, 0, 0, 0],
    [-1, -1, -1, -1],
    [1, 3, 4, 5],
]
TEXT_IDS = [0, 1, 2, 3, 4, 5, 0, 6, 7]


# ----------------------------------------------------------------------------------------------------------------
# Brute-force references: Python floats, loops over rows and pairs
# ----------------------------------------------------------------------------------------------------------------


def _time(x: torch.Tensor) -> float:
    return math.sqrt(1.0 / C + float(x @ x))


def _lorentz(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(x @ y) - _time(x) * _time(y)


def _dist(x: torch.Tensor, y: torch.Tensor) -> float:
    return math.acosh(max(-C * _lorentz(x, y), 1.0)) / math.sqrt(C)


def _aper(x: torch.Tensor) -> float:
    return math.asin(min(2 * K / (math.sqrt(C) * float(x.norm()) + EPS), 1.0 - EPS))


def _ext(x: torch.Tensor, y: torch.Tensor) -> float:
    ci = C * _lorentz(x, y)
    cosine = (_time(y) + ci * _time(x)) / (float(x.norm()) * math.sqrt(max(ci * ci - 1.0, EPS)) + EPS)
    return math.acos(min(max(cosine, -1.0 + EPS), 1.0 - EPS))


def ref_directed(a: torch.Tensor, b: torch.Tensor, ids: list[int] | None) -> float:
    total = 0.0
    for i in range(len(a)):
        logits = [-SCALE * _dist(a[i], b[j]) for j in range(len(b))]
        log_z = math.log(sum(math.exp(v) for v in logits))
        positives = [i] if ids is None else [j for j in range(len(b)) if ids[j] == ids[i]]
        total += -sum(logits[p] - log_z for p in positives) / len(positives)
    return total / len(a)


def ref_pair(a: torch.Tensor, b: torch.Tensor, ids: list[int] | None) -> float:
    return (ref_directed(a, b, ids) + ref_directed(b, a, ids)) / 2


def _deepest(row: list[int]) -> int:
    return max((level for level, y in enumerate(row) if y >= 0), default=-1)


def ref_entail(parent: torch.Tensor, child: torch.Tensor, negatives: bool) -> tuple[float, float]:
    """(positive, negative) parts of L_ent; mismatch decided at the parent specimen's deepest known rank."""
    rows = [i for i in range(len(LABELS)) if _deepest(LABELS[i]) >= 0]
    positive = sum(max(0.0, _ext(parent[i], child[i]) - _aper(parent[i])) for i in rows) / len(rows)
    if not negatives:
        return positive, 0.0
    neg = []
    for i in rows:
        level = _deepest(LABELS[i])
        for j in range(len(LABELS)):
            yi, yj = LABELS[i][level], LABELS[j][level]
            if yi >= 0 and yj >= 0 and yi != yj:
                neg.append(max(0.0, _aper(parent[i]) - _ext(parent[i], child[j])))
    return positive, sum(neg) / len(neg)


def ref_intra(rank_text: torch.Tensor) -> tuple[float, float]:
    per_specimen, neg = [], []
    for i, row in enumerate(LABELS):
        edges = [level for level in range(3) if row[level] >= 0 and row[level + 1] >= 0]
        if edges:
            violations = [max(0.0, _ext(rank_text[i, e], rank_text[i, e + 1]) - _aper(rank_text[i, e])) for e in edges]
            per_specimen.append(sum(violations) / len(violations))
        for e in edges:
            for j, other in enumerate(LABELS):
                if other[e] >= 0 and other[e + 1] >= 0 and other[e] != row[e]:
                    neg.append(max(0.0, _aper(rank_text[i, e]) - _ext(rank_text[i, e], rank_text[j, e + 1])))
    return sum(per_specimen) / len(per_specimen), sum(neg) / len(neg)


def _embeddings(seed: int = 0, d: int = 3) -> dict[str, torch.Tensor]:
    """float64 space parts in a low dimension, parents nearer the origin than children (text, then DNA, then
    image; coarse ranks before fine ones), so that some children fall inside cones and some outside."""
    g = torch.Generator().manual_seed(seed)
    n = len(LABELS)

    def make(scale: torch.Tensor | float, *shape: int) -> torch.Tensor:
        return exp_map0(torch.randn(*shape, d, generator=g, dtype=torch.float64) * scale, C)

    rank_scale = torch.tensor([0.1, 0.3, 0.8, 1.5], dtype=torch.float64)[:, None]
    return {"image": make(1.5, n), "dna": make(0.6, n), "text": make(0.15, n), "rank_text": make(rank_scale, n, 4)}


LABELS_T = torch.tensor(LABELS)
IDS_T = torch.tensor(TEXT_IDS)


# ----------------------------------------------------------------------------------------------------------------
# Contrastive
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("multi_positive", [True, False])
def test_contrastive_matches_brute_force(multi_positive: bool) -> None:
    out = _embeddings()
    ids = TEXT_IDS if multi_positive else None
    expected = {
        "image_dna": ref_pair(out["image"], out["dna"], ids),
        "image_text": ref_pair(out["image"], out["text"], ids),
        "dna_text": ref_pair(out["dna"], out["text"], ids),
    }
    got = hyperbolic_contrastive_loss(out["image"], out["text"], IDS_T if multi_positive else None, C, SCALE)
    assert got.item() == pytest.approx(expected["image_text"], rel=1e-6)
    for reduction, divisor in (("sum3", 1), ("mean6", 3)):
        cfg = HyperbolicLossConfig(reduction=reduction, multi_positive=multi_positive, entailment="none")
        total, parts = hyperbolic_objective(out, IDS_T, LABELS_T, cfg, C, SCALE)
        for name, value in expected.items():
            assert parts[name].item() == pytest.approx(value, rel=1e-6)
        assert total.item() == pytest.approx(sum(expected.values()) / divisor, rel=1e-6)
        assert parts["clip"].item() == pytest.approx(total.item())


def test_multi_positive_targets_change_the_loss() -> None:
    out = _embeddings()
    one = hyperbolic_contrastive_loss(out["image"], out["text"], None, C, SCALE)
    multi = hyperbolic_contrastive_loss(out["image"], out["text"], IDS_T, C, SCALE)
    assert abs(one.item() - multi.item()) > 1e-3  # rows 0 and 6 share a taxonomy string


def test_contrastive_gradients_reach_curvature_and_scale() -> None:
    out = {k: v.float() for k, v in _embeddings().items()}
    proj = LorentzProjector(3)
    total, _ = hyperbolic_objective(
        out, IDS_T, LABELS_T, HyperbolicLossConfig(entailment="none"), proj.curvature(), proj.logit_scale()
    )
    total.backward()
    assert proj.log_curvature.grad.abs() > 0 and proj.log_logit_scale.grad.abs() > 0


# ----------------------------------------------------------------------------------------------------------------
# Entailment
# ----------------------------------------------------------------------------------------------------------------


def _cone_pair(radius: float, theta: float, direction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A parent at geodesic radius ``radius`` along the unit vector at angle ``direction`` in the plane, and a
    child one geodesic unit away, leaving the parent at exterior angle ``theta`` (curvature -C)."""
    u = torch.tensor([math.cos(direction), math.sin(direction)], dtype=torch.float64)
    w = torch.tensor([-math.sin(direction), math.cos(direction)], dtype=torch.float64)
    x = math.sinh(radius) * u
    tangent = math.cos(theta) * math.cosh(radius) * u + math.sin(theta) * w
    y = math.cosh(1.0) * x + math.sinh(1.0) * tangent
    return x / math.sqrt(C), y / math.sqrt(C)


def test_entailment_is_zero_inside_the_cone_and_the_excess_angle_outside() -> None:
    radius = 2.0
    aperture = math.asin(2 * K / math.sinh(radius))  # sqrt(C)|x| = sinh(radius)
    for theta in (0.0, 0.5 * aperture, 0.95 * aperture):
        x, y = _cone_pair(radius, theta, 0.3)
        assert entailment_loss(x[None], y[None], C, K).item() == pytest.approx(0.0, abs=1e-9)
    for theta in (1.2 * aperture, 1.0, 2.5):
        x, y = _cone_pair(radius, theta, 0.3)
        assert entailment_loss(x[None], y[None], C, K).item() == pytest.approx(theta - aperture, abs=1e-4)


def test_negative_term_pushes_a_mismatched_child_out_of_the_cone() -> None:
    radius = 2.0
    aperture = math.asin(2 * K / math.sinh(radius))
    x0, y0 = _cone_pair(radius, 0.0, 0.0)  # y0 deep inside x0's cone
    x1, y1 = _cone_pair(radius, 0.0, 2.0)  # another taxon, elsewhere
    mismatched = torch.tensor([[False, True], [True, False]])
    apart = entailment_loss(torch.stack([x0, x1]), torch.stack([y0, y1]), C, K, mismatched=mismatched)
    assert apart.item() == pytest.approx(0.0, abs=1e-9)  # each child in its own cone only
    inside = entailment_loss(torch.stack([x0, x0]), torch.stack([y0, y0]), C, K, mismatched=mismatched)
    # ext = 0 (up to the arccos clamp at 1 - eps, ~1.4e-4 rad): the whole aperture is the violation
    assert inside.item() == pytest.approx(aperture, abs=3e-4)


@pytest.mark.parametrize("variant", ["a", "b", "c"])
@pytest.mark.parametrize("negatives", [False, True])
def test_modal_variants_match_brute_force(variant: str, negatives: bool) -> None:
    out = _embeddings(seed=1)
    edges = {
        "a": [("text", "image"), ("text", "dna")],
        "b": [("text", "dna"), ("dna", "image")],
        "c": [("text", "dna"), ("dna", "image"), ("text", "image")],
    }[variant]
    terms = [ref_entail(out[p], out[ch], negatives) for p, ch in edges]
    assert sum(t[0] for t in terms) > 0 and (not negatives or sum(t[1] for t in terms) > 0)  # nothing trivially 0
    expected = sum(p + n for p, n in terms) / len(terms)
    cfg = HyperbolicLossConfig(entailment=variant, entail_weight=0.2, entail_negatives=negatives, min_radius=K)
    total, parts = hyperbolic_objective(out, IDS_T, LABELS_T, cfg, C, SCALE)
    assert parts["entail"].item() == pytest.approx(expected, rel=1e-6)
    assert total.item() == pytest.approx(parts["clip"].item() + 0.2 * expected, rel=1e-6)


def test_sel_matches_brute_force() -> None:
    out = _embeddings(seed=2)
    intra_pos, intra_neg = ref_intra(out["rank_text"])
    assert intra_pos > 0 and intra_neg > 0
    deepest_text = torch.stack([out["rank_text"][i, max(_deepest(row), 0)] for i, row in enumerate(LABELS)])
    terms = [ref_entail(p, ch, True) for p, ch in ((deepest_text, out["image"]), (deepest_text, out["dna"]),
                                                  (out["dna"], out["image"]))]  # fmt: skip
    inter = sum(p + n for p, n in terms) / 3
    cfg = HyperbolicLossConfig(entailment="sel", entail_weight=1.0, min_radius=K)
    assert cfg.negatives  # on by default for SEL
    total, parts = hyperbolic_objective(out, IDS_T, LABELS_T, cfg, C, SCALE)
    assert parts["entail_intra"].item() == pytest.approx(intra_pos + intra_neg, rel=1e-6)
    assert parts["entail_inter"].item() == pytest.approx(inter, rel=1e-6)
    assert parts["entail"].item() == pytest.approx(intra_pos + intra_neg + inter, rel=1e-6)
    assert total.item() == pytest.approx(parts["clip"].item() + parts["entail"].item(), rel=1e-6)
    direct = sel_intra_loss(out["rank_text"], LABELS_T, C, K, negatives=False)
    assert direct.item() == pytest.approx(intra_pos, rel=1e-6)


def test_sel_ignores_the_embeddings_of_unknown_ranks() -> None:
    out = _embeddings(seed=3)
    cfg = HyperbolicLossConfig(entailment="sel", min_radius=K)
    _, before = hyperbolic_objective(out, IDS_T, LABELS_T, cfg, C, SCALE)
    unknown = LABELS_T < 0
    out["rank_text"] = torch.where(unknown[..., None], out["rank_text"] * 50.0, out["rank_text"])
    _, after = hyperbolic_objective(out, IDS_T, LABELS_T, cfg, C, SCALE)
    assert after["entail"].item() == pytest.approx(before["entail"].item(), rel=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# Numerical robustness, prompts, bad input
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["origin", "large", "embedded"])
@pytest.mark.parametrize("autocast", [False, True])
def test_objective_gradients_finite_at_the_origin_and_far_out(where: str, autocast: bool) -> None:
    """Space parts at the origin or at |x| ~ 1e4, or huge features sent through LorentzProjector.embed."""
    n, d = len(LABELS), 8
    g = torch.Generator().manual_seed(4)
    if where == "origin":
        leaves = {k: torch.zeros(n, d) for k in ("image", "dna", "text")} | {"rank_text": torch.zeros(n, 4, d)}
    else:

        def unit(*shape: int) -> torch.Tensor:
            return torch.nn.functional.normalize(torch.randn(*shape, d, generator=g), dim=-1) * 1e4

        leaves = {k: unit(n) for k in ("image", "dna", "text")} | {"rank_text": unit(n, 4)}
    for leaf in leaves.values():
        leaf.requires_grad_()
    proj = LorentzProjector(d)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        inputs = {k: (v.bfloat16() if autocast else v) for k, v in leaves.items()}
        if where == "embedded":
            inputs = {k: proj.embed(v, "text" if k == "rank_text" else k) for k, v in inputs.items()}
        for variant in ENTAILMENT_VARIANTS:
            cfg = HyperbolicLossConfig(entailment=variant)
            total, _ = hyperbolic_objective(inputs, IDS_T, LABELS_T, cfg, proj.curvature(), proj.logit_scale())
            assert total.dtype == torch.float32 and torch.isfinite(total)
            total.backward(retain_graph=True)
    checked = [*leaves.values(), proj.log_curvature, proj.log_logit_scale]
    checked += list(proj.log_alpha.values()) if where == "embedded" else []
    for tensor in checked:
        assert tensor.grad is not None and torch.isfinite(tensor.grad).all()


def test_rank_prompts() -> None:
    assert rank_prompts(["Diptera", "Cecidomyiidae", "not_classified", ""]) == (
        "Order: Diptera",
        "Order: Diptera; Family: Cecidomyiidae",
        None,
        None,
    )
    assert rank_prompts(["Hymenoptera", "Braconidae", "Apanteles", "Apanteles sp1"])[3] == (
        "Order: Hymenoptera; Family: Braconidae; Genus: Apanteles; Species: Apanteles sp1"
    )
    lineages = [("Diptera", "Cecidomyiidae", None, None), ("Diptera", "Sciaridae", "Bradysia", None)]
    taxonomy = Taxonomy.from_lineages(lineages)
    ids = taxonomy.encode([("Diptera", "Sciaridae", "Bradysia", None)])[0]
    assert rank_prompts_from_ids(ids, taxonomy) == rank_prompts(("Diptera", "Sciaridae", "Bradysia", None))
    assert rank_edges(LABELS_T).tolist()[:3] == [[True, True, True], [True, True, False], [True, False, False]]


def test_bad_input_gets_clear_messages() -> None:
    out = _embeddings()
    with pytest.raises(ValueError, match="rank_text"):
        hyperbolic_objective({k: out[k] for k in ("image", "text")}, IDS_T, LABELS_T, HyperbolicLossConfig(), C)
    with pytest.raises(ValueError, match="labels"):
        hyperbolic_objective(out, IDS_T, None, HyperbolicLossConfig(entailment="a"), C)
    with pytest.raises(ValueError, match="text_ids"):
        hyperbolic_objective(out, None, LABELS_T, HyperbolicLossConfig(entailment="none"), C)
    with pytest.raises(ValueError, match="unknown entailment"):
        HyperbolicLossConfig(entailment="stacked")
    with pytest.raises(ValueError, match="unknown reduction"):
        HyperbolicLossConfig(reduction="mean3")
    with pytest.raises(ValueError, match="at least two"):
        hyperbolic_objective({"image": out["image"]}, IDS_T, LABELS_T, HyperbolicLossConfig(entailment="none"), C)


# ----------------------------------------------------------------------------------------------------------------
# DDP: 2 gloo ranks on CPU (this file is also the rank script: see the bottom)
# ----------------------------------------------------------------------------------------------------------------

DDP_SIZES = (5, 4)  # unequal local batches over the 9 specimens
DDP_CFG = HyperbolicLossConfig(entailment="sel", entail_weight=0.5, min_radius=K)


def _ddp_batch() -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The global batch (space parts as leaves) and the shared curvature / scale parameters, same on every rank."""
    leaves = {k: v.clone().requires_grad_() for k, v in _embeddings(seed=5).items()}
    params = {
        "log_c": torch.tensor(math.log(C), dtype=torch.float64, requires_grad=True),
        "log_scale": torch.tensor(math.log(SCALE), dtype=torch.float64, requires_grad=True),
    }
    return leaves, params


def _ddp_rank_main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    start = sum(DDP_SIZES[:rank])
    local = slice(start, start + DDP_SIZES[rank])
    leaves, params = _ddp_batch()
    outputs = {k: v[local] for k, v in leaves.items()}
    total, parts = hyperbolic_objective(
        outputs, IDS_T[local], LABELS_T[local], DDP_CFG, params["log_c"].exp(), params["log_scale"].exp()
    )
    total.backward()
    result = {
        "total": total.detach(),
        "parts": parts,
        "leaf_grads": {k: v.grad[local] for k, v in leaves.items()},
        "param_grads": {k: v.grad for k, v in params.items()},
    }
    torch.save(result, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def test_gathered_contrastive_and_local_cones_under_ddp(tmp_path: Path, free_port: Callable[[], int]) -> None:
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), __file__, str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, check=False, cwd=root, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"distributed workers failed:\n{proc.stdout}\n{proc.stderr}"
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    # One process: the contrastive terms over the whole batch, the cones per rank's slice (averaged by DDP).
    leaves, params = _ddp_batch()
    c, scale = params["log_c"].exp(), params["log_scale"].exp()
    slices = [slice(sum(DDP_SIZES[:r]), sum(DDP_SIZES[: r + 1])) for r in range(2)]
    none = HyperbolicLossConfig(entailment="none")
    modal = {k: leaves[k] for k in ("image", "dna", "text")}
    clip, clip_parts = hyperbolic_objective(modal, IDS_T, LABELS_T, none, c, scale)
    local_entail, cones = [], []
    for s in slices:
        local = {k: v[s] for k, v in leaves.items()}
        total_s, parts_s = hyperbolic_objective(local, IDS_T[s], LABELS_T[s], DDP_CFG, c, scale)
        clip_s, _ = hyperbolic_objective(local, IDS_T[s], LABELS_T[s], none, c, scale)
        local_entail.append(parts_s["entail"])
        cones.append(total_s - clip_s)  # 0.5 * this rank's entailment, attached to the graph
    (clip + torch.stack(cones).mean()).backward()

    def close(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
        torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-11, msg=lambda m: f"{what}: {m}")

    for r, result in enumerate(ranks):
        for key in ("image_dna", "image_text", "dna_text", "clip"):
            close(result["parts"][key], clip_parts[key], f"rank {r} {key}")
        close(result["parts"]["entail"], local_entail[r], f"rank {r} local entailment")
        close(result["total"], clip.detach() + 0.5 * local_entail[r], f"rank {r} total")
    for key, param in params.items():
        close(torch.stack([result["param_grads"][key] for result in ranks]).mean(0), param.grad, f"grad {key}")
    for key, leaf in leaves.items():
        for r, result in enumerate(ranks):
            close(result["leaf_grads"][key] / 2, leaf.grad[slices[r]], f"rank {r} grad of {key}")


if __name__ == "__main__":  # one rank of test_gathered_contrastive_and_local_cones_under_ddp
    _ddp_rank_main(sys.argv[1])
