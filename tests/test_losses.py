"""train.losses against brute-force implementations written straight from METHOD.md sections 1-4."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from train.losses import (
    LossConfig,
    compute_loss,
    contrastive_loss,
    directed_contrastive_loss,
    fusion_loss,
    hir_loss,
    loggable_parts,
)

TAU = 0.07
# hmce level weights 2^(1/k), k-th level processed from species: keyed by label column (0 order .. 3 species)
HMCE_WEIGHT = {3: 2.0, 2: 2.0 ** 0.5, 1: 2.0 ** (1 / 3), 0: 2.0 ** 0.25}


# ----------------------------------------------------------------------------------------------------------------
# Brute-force references: plain Python loops over anchors, pairs and levels
# ----------------------------------------------------------------------------------------------------------------


def _views_list(views: torch.Tensor) -> list[torch.Tensor]:
    """View rows: specimen i's views are entries 2i and 2i+1."""
    return [views[i, v] for i in range(views.shape[0]) for v in range(2)]


def _pair_loss_table(z: list[torch.Tensor], allowed: list[int], tau: float) -> dict[tuple[int, int], torch.Tensor]:
    """Eq. 3 for every ordered pair of distinct views in ``allowed``, denominator over the other allowed views."""
    table = {}
    for a in allowed:
        denominator = sum(torch.exp(torch.dot(z[a], z[k]) / tau) for k in allowed if k != a)
        for p in allowed:
            if p != a:
                table[a, p] = -torch.log(torch.exp(torch.dot(z[a], z[p]) / tau) / denominator)
    return table


def _positives(labels: list[list[int]], level: int, a: int, allowed: list[int]) -> list[int]:
    """P_l(a): the other view of a's specimen, plus all views of other specimens with the same known label."""
    out = []
    for p in allowed:
        if p == a:
            continue
        same_specimen = p // 2 == a // 2
        ya, yp = labels[a // 2][level], labels[p // 2][level]
        if same_specimen or (ya != -1 and ya == yp):
            out.append(p)
    return out


def ref_hir_rectified(
    views: torch.Tensor,
    labels: torch.Tensor,
    tau: float = TAU,
    per_level_negatives: bool = True,
    max_scope: str = "batch",
) -> tuple[torch.Tensor, dict[int, float]]:
    """METHOD.md section 2, one anchor and one positive at a time; also the clamped fraction per active level.

    per_level_negatives: the paper (denominator = the positive + N_l(a)); else the shared-denominator ablation
    (all 2B-1 other views). max_scope: M over all positive pairs of the level, or over the anchor's own.
    """
    lab = labels.tolist()
    z = _views_list(views)
    n = len(z)
    everyone = list(range(n))

    def s(a: int, k: int) -> torch.Tensor:
        return torch.dot(z[a], z[k]) / tau

    level_losses = []
    clamped_fraction = {}
    coarser_max = None  # batch: a tensor; anchor: {anchor: tensor}
    for level in range(4):  # order -> species
        known = [row[level] for row in lab if row[level] != -1]
        if not any(known.count(y) >= 2 for y in set(known)):
            continue  # inactive: no two specimens share a known label
        rectified = {}
        per_anchor = []
        n_pairs = n_clamped = 0
        for a in everyone:
            pos = _positives(lab, level, a, everyone)
            neg = [k for k in everyone if k != a and k not in pos]
            losses = []
            for p in pos:
                if per_level_negatives:
                    denominator = torch.exp(s(a, p)) + sum(torch.exp(s(a, k)) for k in neg)
                else:
                    denominator = sum(torch.exp(s(a, k)) for k in everyone if k != a)
                ell = -torch.log(torch.exp(s(a, p)) / denominator)
                bound = None if coarser_max is None else (coarser_max if max_scope == "batch" else coarser_max[a])
                value = ell if bound is None else torch.maximum(ell, bound)
                n_pairs += 1
                n_clamped += int(bound is not None and ell.item() < bound.item())
                rectified[a, p] = value
                losses.append(value)
            per_anchor.append(sum(losses) / len(losses))
        level_losses.append(sum(per_anchor) / len(per_anchor))
        clamped_fraction[level] = n_clamped / n_pairs
        if max_scope == "batch":
            coarser_max = max(rectified.values(), key=lambda t: t.item())
        else:
            coarser_max = {
                a: max((v for (b, _), v in rectified.items() if b == a), key=lambda t: t.item()) for a in everyone
            }
    if not level_losses:
        return views.sum() * 0.0, clamped_fraction
    return sum(level_losses) / len(level_losses), clamped_fraction


def ref_hir_paper(views: torch.Tensor, labels: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    return ref_hir_rectified(views, labels, tau)[0]


def ref_hir_hmce(views: torch.Tensor, labels: torch.Tensor, tau: float = TAU) -> torch.Tensor:
    lab = labels.tolist()
    z = _views_list(views)
    kept = list(range(len(lab)))  # specimens, batch order
    total = 0.0
    n_active = 0
    running_max = None
    for level in (3, 2, 1, 0):  # species -> order
        if all(lab[i][level] == -1 for i in kept):
            continue
        allowed = [2 * i + v for i in kept for v in range(2)]
        ell = _pair_loss_table(z, allowed, tau)
        per_anchor = []
        for a in allowed:
            pos = _positives(lab, level, a, allowed)
            per_anchor.append(sum(ell[a, p] for p in pos) / len(pos))
        level_loss = sum(per_anchor) / len(per_anchor)
        if running_max is not None and running_max.item() > level_loss.item():
            level_loss = running_max
        total = total + HMCE_WEIGHT[level] * level_loss
        n_active += 1
        running_max = level_loss
        seen = set()
        deduplicated = []
        for i in kept:
            y = lab[i][level]
            if y == -1:
                deduplicated.append(i)
            elif y not in seen:
                seen.add(y)
                deduplicated.append(i)
        kept = deduplicated
    if n_active == 0:
        return views.sum() * 0.0
    return total / n_active


def ref_directed(a: torch.Tensor, b: torch.Tensor, ids: list[int] | None, scale: float) -> torch.Tensor:
    n = a.shape[0]
    total = 0.0
    for i in range(n):
        denominator = sum(torch.exp(scale * torch.dot(a[i], b[j])) for j in range(n))
        positives = [i] if ids is None else [j for j in range(n) if ids[j] == ids[i]]
        losses = [-torch.log(torch.exp(scale * torch.dot(a[i], b[p])) / denominator) for p in positives]
        total = total + sum(losses) / len(losses)
    return total / n


# ----------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------


def random_views(batch: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    views = torch.randn(batch, 2, dim, generator=generator, dtype=torch.float64)
    return F.normalize(views, dim=-1).requires_grad_()


def random_labels(batch: int, generator: torch.Generator, hierarchical: bool = True) -> torch.Tensor:
    """Labels with many unknowns; hierarchical: a consistent tree truncated at a random rank, else arbitrary."""
    if hierarchical:
        species = torch.randint(0, 8, (batch,), generator=generator)
        labels = torch.stack([species // 4, species // 2, species, species], dim=1)
        depth = torch.randint(0, 5, (batch,), generator=generator)  # number of known ranks, from order
        labels[torch.arange(4)[None, :] >= depth[:, None]] = -1
    else:
        labels = torch.randint(0, 3, (batch, 4), generator=generator)
        labels[torch.rand(batch, 4, generator=generator) < 0.5] = -1
    return labels


def _grad(loss: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(loss, x)
    return g


# ----------------------------------------------------------------------------------------------------------------
# HiR
# ----------------------------------------------------------------------------------------------------------------


# (mode, max_scope): every HiR variant hir_loss offers
VARIANTS = [("paper", "batch"), ("paper", "anchor"), ("shared-denominator", "batch"),
            ("shared-denominator", "anchor"), ("hmce", "batch")]


def reference(views: torch.Tensor, labels: torch.Tensor, mode: str, max_scope: str, tau: float = TAU):
    """(loss, {level: clamped fraction}) of the brute force for one variant (hmce clamps no pairs: {})."""
    if mode == "hmce":
        return ref_hir_hmce(views, labels, tau), {}
    return ref_hir_rectified(views, labels, tau, mode == "paper", max_scope)


# A level inactive between active ones (family all unknown, genus shared), and a batch where one order holds
# every specimen (anchors with no order-level negatives at all).
GAP_LABELS = torch.tensor([[0, -1, 1, 1], [0, -1, 1, 2], [1, -1, 2, 3], [1, -1, 2, 3], [0, -1, 3, -1], [-1] * 4])
ONE_ORDER_LABELS = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1], [0, 1, 2, 2], [0, 1, 2, 2], [0, 1, 3, -1]])


def _assert_hir_matches(views: torch.Tensor, labels: torch.Tensor, mode: str, max_scope: str) -> None:
    expected, expected_clamped = reference(views, labels, mode, max_scope)
    actual, stats = hir_loss(views, labels, mode=mode, max_scope=max_scope, return_stats=True)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(_grad(actual, views), _grad(expected, views), rtol=1e-7, atol=1e-10)
    if mode == "hmce":
        assert stats == {}
        return
    got = {i: stats[level].item() for i, level in enumerate(("order", "family", "genus", "species"))}
    assert {i for i, v in got.items() if not math.isnan(v)} == set(expected_clamped)  # NaN exactly when inactive
    for level, fraction in expected_clamped.items():
        assert got[level] == pytest.approx(fraction, abs=1e-12)


@pytest.mark.parametrize("mode,max_scope", VARIANTS)
@pytest.mark.parametrize(
    "seed,batch,hierarchical", [(0, 20, True), (1, 13, True), (2, 17, False), (3, 9, False), (4, 20, True)]
)
def test_hir_matches_brute_force(mode: str, max_scope: str, seed: int, batch: int, hierarchical: bool) -> None:
    g = torch.Generator().manual_seed(seed)
    _assert_hir_matches(random_views(batch, 6, g), random_labels(batch, g, hierarchical), mode, max_scope)


@pytest.mark.parametrize("mode,max_scope", VARIANTS)
@pytest.mark.parametrize("labels", [GAP_LABELS, ONE_ORDER_LABELS], ids=["inactive-family", "one-order"])
def test_hir_matches_brute_force_with_inactive_levels_and_no_negatives(
    mode: str, max_scope: str, labels: torch.Tensor
) -> None:
    views = random_views(labels.shape[0], 4, torch.Generator().manual_seed(11))
    _assert_hir_matches(views, labels, mode, max_scope)


@pytest.mark.parametrize("mode,max_scope", VARIANTS)
def test_hir_with_identical_views_matches_brute_force(mode: str, max_scope: str) -> None:
    # the authors' two "views" are the same image: values must still agree
    g = torch.Generator().manual_seed(5)
    single = F.normalize(torch.randn(10, 1, 5, generator=g, dtype=torch.float64), dim=-1)
    views = single.expand(10, 2, 5).clone()
    labels = random_labels(10, g)
    torch.testing.assert_close(hir_loss(views, labels, mode=mode, max_scope=max_scope),
                               reference(views, labels, mode, max_scope)[0], rtol=1e-9, atol=1e-12)


def test_hir_paper_pair_loss_has_only_the_levels_negatives() -> None:
    # Three specimens of one order, float32 on purpose (the loss works in the input dtype). At order level every
    # other view is a positive, so there are no negatives and every pair loss is -log(1) = 0.
    views = F.normalize(torch.randn(3, 2, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    labels = torch.tensor([[0, -1, -1, -1], [0, -1, -1, -1], [0, -1, -1, -1]])
    loss = hir_loss(views.requires_grad_(), labels)
    assert loss.dtype == torch.float32 and loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(views.grad).all()
    # the shared-denominator ablation keeps the other specimens in the denominator: a positive loss
    assert hir_loss(views, labels, mode="shared-denominator").item() > 0.1


def _orthonormal_views(batch: int) -> torch.Tensor:
    """Specimen i has two identical views e_i: the similarity is 1 within a specimen and 0 across."""
    return torch.eye(batch, dtype=torch.float64)[:, None, :].expand(batch, 2, batch).clone().requires_grad_()


# Three specimens in one order; 0 and 1 also share family, genus and species; 2 is alone from family down.
NESTED_LABELS = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 1]])


def test_hir_paper_hand_case_batch_max() -> None:
    # tau = 1, orthonormal views. Order: no negatives, every pair loss 0 -> L_order = 0 = M_order.
    # Family: for views of specimens 0/1 the other view costs log(e + 2) - 1 (negatives: specimen 2's two views)
    # and each view of the relative log(1 + 2) = log 3; specimen 2's views have only their other view as positive
    # and four negatives: log(e + 4) - 1. Nothing is below M_order = 0, and M_family = log 3.
    # Genus and species: the same pair losses, each clamped from below by log 3: every pair is worth log 3;
    # 4 other-view pairs of specimens 0/1 and the 2 of specimen 2 are raised, out of 14 positive pairs.
    views = _orthonormal_views(3)
    log3 = math.log(3)
    family = (4 * (math.log(math.e + 2) - 1 + 2 * log3) / 3 + 2 * (math.log(math.e + 4) - 1)) / 6
    loss, stats = hir_loss(views, NESTED_LABELS, tau=1.0, return_stats=True)
    assert loss.item() == pytest.approx((0 + family + 2 * log3) / 4, rel=1e-12)
    assert [stats[k].item() for k in ("order", "family", "genus", "species")] == pytest.approx([0, 0, 6 / 14, 6 / 14])


def test_hir_paper_hand_case_anchor_max() -> None:
    # Same batch, max_scope="anchor": specimen 2's anchors are bounded by their own family maximum, their own
    # pair (log(e + 4) - 1), so they are not raised to log 3; only the 4 other-view pairs of specimens 0/1 are.
    views = _orthonormal_views(3)
    log3 = math.log(3)
    family = (4 * (math.log(math.e + 2) - 1 + 2 * log3) / 3 + 2 * (math.log(math.e + 4) - 1)) / 6
    finer = (4 * log3 + 2 * (math.log(math.e + 4) - 1)) / 6
    loss, stats = hir_loss(views, NESTED_LABELS, tau=1.0, max_scope="anchor", return_stats=True)
    assert loss.item() == pytest.approx((0 + family + 2 * finer) / 4, rel=1e-12)
    assert stats["genus"].item() == pytest.approx(4 / 14) and stats["species"].item() == pytest.approx(4 / 14)


def test_hir_shared_denominator_hand_case_single_active_level() -> None:
    # two specimens sharing only their order, tau = 1: every anchor's denominator is e + 2;
    # its positives are the other view (loss log(e+2) - 1) and the two views of the other specimen (log(e+2))
    views = _orthonormal_views(2)
    labels = torch.tensor([[0, -1, -1, -1], [0, -1, 5, -1]])
    expected = math.log(math.e + 2) - 1 / 3
    assert hir_loss(views, labels, tau=1.0, mode="shared-denominator").item() == pytest.approx(expected, rel=1e-12)
    # the paper's pair loss: every other view is an order positive, no negatives, nothing to pay
    assert hir_loss(views, labels, tau=1.0).item() == 0.0


def test_hir_shared_denominator_hand_case_rectification_binds() -> None:
    # Nested batch, tau = 1: denominators e + 4.
    # order: mean of (log(e+4) - 1, 4 x log(e+4)) = log(e+4) - 1/5, and M_order = log(e+4).
    # family, genus, species: every positive pair loss is below M_order, so all are clamped to log(e+4).
    views = _orthonormal_views(3)
    log_e4 = math.log(math.e + 4)
    clamped = (log_e4 - 1 / 5 + 3 * log_e4) / 4
    # without the clamp, family..species would each be (4 (log(e+4) - 1/3) + 2 (log(e+4) - 1)) / 6
    unclamped = (log_e4 - 1 / 5 + 3 * (log_e4 - 5 / 9)) / 4
    actual = hir_loss(views, NESTED_LABELS, tau=1.0, mode="shared-denominator")
    assert actual.item() == pytest.approx(clamped, rel=1e-12)
    assert abs(actual.item() - unclamped) > 0.1


def test_hir_hand_case_hmce_deduplicates() -> None:
    # Same batch, authors' mode. species (all 3 rows): (4 (log(e+4) - 1/3) + 2 (log(e+4) - 1)) / 6
    # = log(e+4) - 5/9. De-dup keeps rows 0 and 2; at genus and family they differ: log(e+2) - 1, lifted;
    # at order they agree: log(e+2) - 1/3 < log(e+4) - 5/9, lifted too. Without the de-dup the order level
    # would be log(e+4) - 1/5 and win the max.
    views = _orthonormal_views(3)
    species = math.log(math.e + 4) - 5 / 9
    assert math.log(math.e + 2) - 1 / 3 < species < math.log(math.e + 4) - 1 / 5
    expected = sum(HMCE_WEIGHT.values()) * species / 4
    assert hir_loss(views, NESTED_LABELS, tau=1.0, mode="hmce").item() == pytest.approx(expected, rel=1e-12)


def test_hir_first_active_level_is_not_clamped() -> None:
    # order is all unknown (inactive): family is the first active level and is not clamped by anything
    views = _orthonormal_views(3)
    labels = torch.tensor([[-1, 3, -1, -1], [-1, 3, -1, -1], [-1, 4, -1, -1]])
    family = (4 * (math.log(math.e + 2) - 1 + 2 * math.log(3)) / 3 + 2 * (math.log(math.e + 4) - 1)) / 6
    loss, stats = hir_loss(views, labels, tau=1.0, return_stats=True)
    assert loss.item() == pytest.approx(family, rel=1e-12)
    assert stats["family"].item() == 0.0 and math.isnan(stats["order"].item()) and math.isnan(stats["genus"].item())


def test_hir_shared_denominator_collapses_onto_order() -> None:
    # The ablation's pair loss does not depend on the level: on a nested batch every finer positive pair is also
    # an order positive, so each finer level equals M_order and its gradient is that of the single worst order
    # pair (no detach). The paper's per-level negatives avoid this collapse.
    g = torch.Generator().manual_seed(7)
    views = random_views(8, 5, g)
    species = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    labels = torch.stack([torch.zeros(8, dtype=torch.long), species // 2, species, species], dim=1)
    z = views.reshape(16, 5)
    sim = z @ z.T / TAU
    eye = torch.eye(16, dtype=torch.bool)
    pair = torch.logsumexp(sim.masked_fill(eye, float("-inf")), 1, keepdim=True) - sim
    order_loss = pair.masked_fill(eye, 0.0).sum(1).div(15).mean()  # every other view is an order positive
    worst = pair.masked_fill(eye, float("-inf")).max()
    expected = (order_loss + 3 * worst) / 4
    actual, stats = hir_loss(views, labels, mode="shared-denominator", return_stats=True)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(_grad(actual, views), _grad(expected, views), rtol=1e-9, atol=1e-12)
    assert all(stats[level].item() > 0.9 for level in ("family", "genus", "species"))
    paper = hir_loss(views, labels)
    assert abs(paper.item() - expected.item()) > 0.1


@pytest.mark.parametrize("mode,max_scope", VARIANTS)
def test_hir_no_active_level_is_connected_zero(mode: str, max_scope: str) -> None:
    g = torch.Generator().manual_seed(0)
    views = random_views(4, 3, g)
    labels = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4], [-1, -1, -1, -1], [2, 3, 4, 5]])  # nothing shared
    if mode != "hmce":  # hmce computes every level with a known label, shared or not
        loss = hir_loss(views, labels, mode=mode, max_scope=max_scope)
        assert loss.item() == 0.0 and loss.requires_grad
        loss.backward()
        assert torch.equal(views.grad, torch.zeros_like(views))
    unknown = hir_loss(views, torch.full((4, 4), -1), mode=mode, max_scope=max_scope)
    assert unknown.item() == 0.0 and unknown.requires_grad


@pytest.mark.parametrize("mode", ["paper", "shared-denominator", "hmce"])
def test_hir_single_specimen(mode: str) -> None:
    views = random_views(1, 4, torch.Generator().manual_seed(0))
    loss = hir_loss(views, torch.tensor([[0, 0, 0, 0]]), mode=mode)
    loss.backward()
    # paper, shared-denominator: one specimen cannot share a label with another, so no level is active;
    # hmce: every level is computed, and each pair loss is -log(1) = 0 (the only other view is the positive)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert torch.isfinite(views.grad).all()


def test_hir_rejects_bad_input() -> None:
    views = torch.randn(3, 2, 4)
    labels = torch.zeros(3, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\[B, 2, d\]"):
        hir_loss(torch.randn(3, 3, 4), labels)
    with pytest.raises(ValueError, match=r"\[B, 4\]"):
        hir_loss(views, torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        hir_loss(views, labels.float())
    with pytest.raises(ValueError, match="-1"):
        hir_loss(views, labels - 2)
    with pytest.raises(ValueError, match="paper, shared-denominator, hmce"):
        hir_loss(views, labels, mode="hmc")
    with pytest.raises(ValueError, match="batch, anchor"):
        hir_loss(views, labels, max_scope="pair")
    with pytest.raises(ValueError, match="hmce"):
        hir_loss(views, labels, mode="hmce", max_scope="anchor")
    with pytest.raises(ValueError, match="tau"):
        hir_loss(views, labels, tau=0.0)


# ----------------------------------------------------------------------------------------------------------------
# Contrastive and fusion losses
# ----------------------------------------------------------------------------------------------------------------


def _pair(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(batch, 8, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    b = F.normalize(torch.randn(batch, 8, generator=g, dtype=torch.float64), dim=-1).requires_grad_()
    return a, b


@pytest.mark.parametrize("multi_positive", [True, False])
def test_contrastive_matches_brute_force(multi_positive: bool) -> None:
    a, b = _pair(9, 0)
    ids = torch.tensor([0, 1, 0, 2, 1, 0, 3, 4, 3])
    id_list = ids.tolist() if multi_positive else None
    scale = 1 / TAU
    expected = (ref_directed(a, b, id_list, scale) + ref_directed(b, a, id_list, scale)) / 2
    actual = contrastive_loss(a, b, ids if multi_positive else None, scale)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    for got, want in zip(torch.autograd.grad(actual, (a, b)), torch.autograd.grad(expected, (a, b))):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)
    directed = directed_contrastive_loss(a, b, ids if multi_positive else None, scale)
    torch.testing.assert_close(directed, ref_directed(a, b, id_list, scale), rtol=1e-10, atol=1e-12)


def test_multi_positive_reduces_to_infonce_when_ids_differ() -> None:
    a, b = _pair(7, 1)
    distinct = torch.arange(7) * 3
    multi = contrastive_loss(a, b, distinct)
    plain = contrastive_loss(a, b, None)
    targets = torch.arange(7)
    cross_entropy = (F.cross_entropy(a @ b.T / TAU, targets) + F.cross_entropy(b @ a.T / TAU, targets)) / 2
    torch.testing.assert_close(multi, plain, rtol=1e-12, atol=0)
    torch.testing.assert_close(plain, cross_entropy, rtol=1e-12, atol=0)
    # and shared ids do change it
    assert abs(contrastive_loss(a, b, torch.tensor([0, 0, 1, 1, 2, 2, 2])).item() - plain.item()) > 1e-3


@pytest.mark.parametrize("direction", ["text_anchor", "fused_anchor"])
def test_fusion_loss_directions_match_brute_force(direction: str) -> None:
    fused, text = _pair(6, 2)
    ids = torch.tensor([0, 0, 1, 2, 2, 2])
    rows, candidates = (text, fused) if direction == "text_anchor" else (fused, text)
    expected = ref_directed(rows, candidates, ids.tolist(), 1 / TAU)
    actual = fusion_loss(fused, text, ids, direction=direction)
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)
    grads = zip(torch.autograd.grad(actual, (fused, text)), torch.autograd.grad(expected, (fused, text)), strict=True)
    for got, want in grads:
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-10)
    # the two directions are different losses
    other = "fused_anchor" if direction == "text_anchor" else "text_anchor"
    assert abs(fusion_loss(fused, text, ids, direction=other).item() - expected.item()) > 1e-6


def test_fusion_loss_rejects_unknown_direction() -> None:
    fused, text = _pair(3, 0)
    with pytest.raises(ValueError, match="text_anchor, fused_anchor"):
        fusion_loss(fused, text, direction="text")


def test_learnable_temperature_gets_gradient() -> None:
    a, b = _pair(5, 3)
    log_scale = torch.tensor(math.log(1 / TAU), dtype=torch.float64, requires_grad=True)
    loss = contrastive_loss(a, b, torch.tensor([0, 1, 1, 2, 3]), log_scale.exp())
    loss.backward()
    assert log_scale.grad is not None and log_scale.grad.abs().item() > 0
    # the learnable scale equals the fixed one at initialisation
    torch.testing.assert_close(loss.detach(), contrastive_loss(a, b, torch.tensor([0, 1, 1, 2, 3])).detach())


def test_contrastive_rejects_bad_input() -> None:
    a, b = _pair(4, 0)
    with pytest.raises(ValueError, match="batch size"):
        contrastive_loss(a, b[:3])
    with pytest.raises(ValueError, match=r"\[4\]"):
        contrastive_loss(a, b, torch.arange(3))
    with pytest.raises(TypeError, match="integer"):
        contrastive_loss(a, b, torch.arange(4.0))
    with pytest.raises(ValueError, match="scalar"):
        contrastive_loss(a, b, None, torch.ones(2))
    with pytest.raises(ValueError, match=r"\[B, d\]"):
        contrastive_loss(a[None], b)


# ----------------------------------------------------------------------------------------------------------------
# Objectives
# ----------------------------------------------------------------------------------------------------------------


def _outputs(batch: int = 8, seed: int = 0, drop: tuple[str, ...] = ()) -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)

    def unit(*shape: int) -> torch.Tensor:
        return F.normalize(torch.randn(*shape, 6, generator=g, dtype=torch.float64), dim=-1).requires_grad_()

    out: dict[str, torch.Tensor | None] = {
        "image_views": unit(batch, 2),
        "dna": unit(batch),
        "dna_views": unit(batch, 2),
        "text": unit(batch),
        "fused": unit(batch),
    }
    out["image"] = out["image_views"][:, 0]
    for key in drop:  # absent: None for images, a missing key otherwise
        if key.startswith("image"):
            out[key] = None
        else:
            del out[key]
    return out


IDS = torch.tensor([0, 0, 1, 2, 2, 3, 4, 4])
LABELS = torch.tensor(
    [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, -1], [0, 1, -1, -1], [0, 1, 2, 3], [1, -1, -1, -1], [1, 2, 3, 4], [-1] * 4]
)


CLAMPED = {"hir_clamped_family", "hir_clamped_genus", "hir_clamped_species"}


@pytest.mark.parametrize(
    "objective,terms,max_scope,direction",
    [
        ("clibd", {"image_dna", "image_text", "dna_text", "clip"}, "batch", "text_anchor"),
        ("clibd-hir", {"image_dna", "image_text", "dna_text", "clip", "hir", *CLAMPED}, "batch", "text_anchor"),
        ("clibd-hir", {"image_dna", "image_text", "dna_text", "clip", "hir", *CLAMPED}, "anchor", "text_anchor"),
        ("clibd-hir-fuse", {"image_dna", "image_text", "dna_text", "clip", "hir", "fuse", *CLAMPED}, "batch",
         "text_anchor"),
        ("clibd-hir-fuse", {"image_dna", "image_text", "dna_text", "clip", "hir", "fuse", *CLAMPED}, "batch",
         "fused_anchor"),
    ],
)
def test_objective_has_exactly_its_terms(objective: str, terms: set[str], max_scope: str, direction: str) -> None:
    out = _outputs()
    cfg = LossConfig(objective=objective, image_dna_weight=0.5, hir_weight=0.2, fusion_weight=3.0,
                     hir_max_scope=max_scope, fusion_direction=direction)
    total, parts = compute_loss(out, IDS, LABELS, cfg)
    assert set(parts) == terms
    assert all(not p.requires_grad for p in parts.values())
    scale = 1 / TAU
    ids = IDS.tolist()

    def sym(a: str, b: str) -> torch.Tensor:
        return (ref_directed(out[a], out[b], ids, scale) + ref_directed(out[b], out[a], ids, scale)) / 2

    clip = 0.5 * sym("image", "dna") + sym("image", "text") + sym("dna", "text")
    expected = clip
    torch.testing.assert_close(parts["clip"], clip.detach(), rtol=1e-10, atol=0)
    if "hir" in terms:
        hir, clamped = ref_hir_rectified(out["image_views"], LABELS, max_scope=max_scope)
        torch.testing.assert_close(parts["hir"], hir.detach(), rtol=1e-10, atol=0)
        for level, name in enumerate(("family", "genus", "species"), start=1):
            assert parts[f"hir_clamped_{name}"].item() == pytest.approx(clamped[level], abs=1e-12)
        expected = expected + 0.2 * hir
    if "fuse" in terms:
        rows, candidates = ("text", "fused") if direction == "text_anchor" else ("fused", "text")
        fuse = ref_directed(out[rows], out[candidates], ids, scale)
        torch.testing.assert_close(parts["fuse"], fuse.detach(), rtol=1e-10, atol=0)
        expected = expected + 3.0 * fuse
    torch.testing.assert_close(total, expected, rtol=1e-10, atol=0)


def test_barcode_only_batch_keeps_dna_text_and_dna_hir() -> None:
    out = _outputs(drop=("image", "image_views", "fused"))
    _, parts = compute_loss(out, IDS, LABELS, LossConfig(objective="clibd"))
    assert set(parts) == {"dna_text", "clip"}
    total, parts = compute_loss(out, IDS, LABELS, LossConfig(objective="clibd-hir", hir_modality="dna"))
    assert set(parts) == {"dna_text", "clip", "hir", *CLAMPED}
    torch.testing.assert_close(parts["hir"], hir_loss(out["dna_views"], LABELS).detach())
    total.backward()
    assert out["dna_views"].grad.abs().sum() > 0


def test_missing_inputs_raise_naming_the_key() -> None:
    with pytest.raises(ValueError, match="'image_views'"):
        compute_loss(_outputs(drop=("image_views",)), IDS, LABELS, LossConfig(objective="clibd-hir"))
    with pytest.raises(ValueError, match="'dna_views'"):
        compute_loss(_outputs(drop=("dna_views",)), IDS, LABELS, LossConfig(hir_modality="dna"))
    with pytest.raises(ValueError, match="'fused'"):
        compute_loss(_outputs(drop=("fused",)), IDS, LABELS, LossConfig(objective="clibd-hir-fuse"))
    with pytest.raises(ValueError, match="labels"):
        compute_loss(_outputs(), IDS, None, LossConfig(objective="clibd-hir"))
    with pytest.raises(ValueError, match="text_ids"):
        compute_loss(_outputs(), None, LABELS, LossConfig(objective="clibd"))
    with pytest.raises(ValueError, match="no loss term"):
        compute_loss(_outputs(drop=("image", "image_views", "text", "fused")), IDS, LABELS, LossConfig("clibd"))
    with pytest.raises(ValueError, match="batch size"):
        out = _outputs()
        out["dna"] = out["dna"][:5]
        compute_loss(out, IDS, LABELS, LossConfig(objective="clibd"))
    # objectives that do not need them ignore absent HiR / fusion inputs
    _, parts = compute_loss(_outputs(drop=("image_views", "fused")), IDS, None, LossConfig(objective="clibd"))
    assert set(parts) == {"image_dna", "image_text", "dna_text", "clip"}


def test_config_validation_lists_valid_names() -> None:
    with pytest.raises(ValueError, match="clibd, clibd-hir, clibd-hir-fuse"):
        LossConfig(objective="clip")
    with pytest.raises(ValueError, match="loss.hir_mode .*paper, shared-denominator, hmce"):
        LossConfig(hir_mode="hce")
    with pytest.raises(ValueError, match="loss.hir_max_scope .*batch, anchor"):
        LossConfig(hir_max_scope="pair")
    with pytest.raises(ValueError, match="loss.fusion_direction .*text_anchor, fused_anchor"):
        LossConfig(fusion_direction="text")
    with pytest.raises(ValueError, match="hmce"):
        LossConfig(hir_mode="hmce", hir_max_scope="anchor")
    with pytest.raises(ValueError, match="image, dna"):
        LossConfig(hir_modality="text")
    with pytest.raises(ValueError, match="hir_weight"):
        LossConfig(hir_weight=-1.0)


def test_objective_terms_come_from_the_config_not_the_name() -> None:
    assert [(LossConfig(objective=o).uses_hir, LossConfig(objective=o).uses_fusion)
            for o in ("clibd", "clibd-hir", "clibd-hir-fuse")] == [(False, False), (True, False), (True, True)]
    _, parts = compute_loss(_outputs(), IDS, LABELS, LossConfig(objective="clibd-hir", hir_mode="hmce"))
    assert "hir" in parts and not CLAMPED & set(parts)  # hmce lifts level means: no pair clamp to report


def test_loggable_parts_drops_inactive_levels_only() -> None:
    parts = {"hir": torch.tensor(1.5), "clip": torch.tensor(float("nan")), "hir_clamped_family": torch.tensor(0.25),
             "hir_clamped_species": torch.tensor(float("nan"))}
    logged = loggable_parts(parts)
    assert set(logged) == {"hir", "clip", "hir_clamped_family"} and logged["hir_clamped_family"] == 0.25
    assert math.isnan(logged["clip"])  # a diverged loss term must still show


def test_detach_dna_in_image_dna_term() -> None:
    out = _outputs(drop=("text", "fused"))
    total, _ = compute_loss(out, IDS, LABELS, LossConfig(objective="clibd", detach_dna_in_id=True))
    total.backward()
    assert out["dna"].grad is None and out["image_views"].grad.abs().sum() > 0
    out = _outputs(drop=("text", "fused"))
    total, _ = compute_loss(out, IDS, LABELS, LossConfig(objective="clibd"))
    total.backward()
    assert out["dna"].grad.abs().sum() > 0


def test_plain_infonce_option_and_learnable_scale_in_objective() -> None:
    out = _outputs()
    log_scale = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
    cfg = LossConfig(objective="clibd", multi_positive=False)
    total, _ = compute_loss(out, None, None, cfg, logit_scale=log_scale.exp())
    expected = sum(
        (ref_directed(out[a], out[b], None, math.exp(2.5)) + ref_directed(out[b], out[a], None, math.exp(2.5))) / 2
        for a, b in (("image", "dna"), ("image", "text"), ("dna", "text"))
    )
    torch.testing.assert_close(total, expected, rtol=1e-10, atol=0)
    total.backward()
    assert log_scale.grad.abs().item() > 0
