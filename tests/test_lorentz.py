"""hirviz.lorentz against the hyperboloid geometry computed independently (numpy, float64, full Minkowski vectors)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hirviz.lorentz import (
    LorentzProjector,
    distance,
    exp_map0,
    exterior_angle,
    half_aperture,
    inner,
    log_map0,
    pairwise_distance,
    pairwise_exterior_angle,
    pairwise_inner,
    tangent_mean,
    time_part,
)

CURVATURES = (0.1, 1.0, 3.0)


def _points(n: int, d: int, seed: int, scale: float = 1.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Space parts with geodesic radii spread over [0, 3 * scale] in random directions."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    radius = 3.0 * scale * torch.rand(n, 1, generator=g, dtype=torch.float64)
    return (torch.sinh(radius) * direction).to(dtype)


def _minkowski_distance(x: np.ndarray, y: np.ndarray, c: float) -> np.ndarray:
    """d(x_i, y_j) on the hyperboloid <X,X> = -1/c with X = (x_t, x), straight from the definition."""

    def lift(p: np.ndarray) -> np.ndarray:
        return np.concatenate([np.sqrt(1.0 / c + (p**2).sum(1, keepdims=True)), p], axis=1)

    metric = np.diag([-1.0] + [1.0] * x.shape[1])
    X, Y = lift(x), lift(y)
    assert np.allclose((X @ metric * X).sum(1), -1.0 / c)  # the lift is on the hyperboloid
    return np.arccosh(np.maximum(-c * (X @ metric @ Y.T), 1.0)) / math.sqrt(c)


def _geodesic_at_angle(radius: float, theta: float, step: float, c: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A point x at geodesic radius ``radius`` on axis e0, and y reached from x by a geodesic of length ``step``
    leaving at angle ``theta`` to the outward radial direction (turning towards e1). Built on the unit
    hyperboloid with X(s) = cosh(s) X + sinh(s) T, then scaled by 1/sqrt(c) to curvature -c."""
    e0, e1 = np.eye(3)[0], np.eye(3)[1]
    x = math.sinh(radius) * e0
    radial = math.cosh(radius) * e0  # space part of the outward unit tangent (sinh r, cosh r e0)
    tangent = math.cos(theta) * radial + math.sin(theta) * e1
    y = math.cosh(step) * x + math.sinh(step) * tangent
    s = 1.0 / math.sqrt(c)
    return torch.tensor(x * s)[None], torch.tensor(y * s)[None]


# ----------------------------------------------------------------------------------------------------------------
# Maps, inner product, distance
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", CURVATURES)
def test_exp_and_log_maps_are_inverse(c: float) -> None:
    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(64, 16, generator=g, dtype=torch.float64), dim=1)
    v = v * torch.logspace(-4, 1, 64, dtype=torch.float64)[:, None] / math.sqrt(c)  # sqrt(c)|v| from 1e-4 to 10
    assert torch.allclose(log_map0(exp_map0(v, c), c), v, rtol=1e-9, atol=1e-12)
    x = _points(64, 16, seed=1)
    assert torch.allclose(exp_map0(log_map0(x, c), c), x, rtol=1e-9, atol=1e-12)
    v32 = v.float()
    assert torch.allclose(log_map0(exp_map0(v32, c), c), v32, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("c", CURVATURES)
def test_exp_map_radius_and_clamp(c: float) -> None:
    # |x| = sinh(sqrt(c)|v|) / sqrt(c): the geodesic radius of exp_map0(v) is |v|.
    v = torch.tensor([[0.3, -0.4, 0.0], [2.0, 1.0, 2.0]], dtype=torch.float64)
    x = exp_map0(v, c)
    assert torch.allclose(x.norm(dim=1), torch.sinh(math.sqrt(c) * v.norm(dim=1)) / math.sqrt(c))
    assert torch.allclose(distance(torch.zeros_like(x), x, c), v.norm(dim=1), atol=1e-6)
    # A huge tangent vector is clamped: sinh argument <= asinh(2^15), i.e. |x| = 2^15 / sqrt(c), same direction.
    huge = torch.tensor([[3e4, 4e4]], dtype=torch.float64)
    out = exp_map0(huge, c)
    assert torch.allclose(out.norm(dim=1), torch.tensor([2.0**15 / math.sqrt(c)], dtype=torch.float64))
    assert torch.allclose(out / out.norm(), huge / huge.norm())


@pytest.mark.parametrize("c", CURVATURES)
def test_distance_matches_independent_hyperboloid_formula(c: float) -> None:
    x, y = _points(20, 8, seed=2), _points(30, 8, seed=3)
    expected = _minkowski_distance(x.numpy(), y.numpy(), c)
    assert np.allclose(pairwise_distance(x, y, c).numpy(), expected, atol=1e-3)
    # float32 agrees as well at these radii
    assert np.allclose(pairwise_distance(x.float(), y.float(), c).numpy(), expected, atol=5e-3)
    assert torch.allclose(distance(x[:5], y[:5], c), pairwise_distance(x[:5], y[:5], c).diagonal())
    assert torch.allclose(inner(x[:5], y[:5], c), pairwise_inner(x[:5], y[:5], c).diagonal())
    assert torch.allclose(time_part(x, c) ** 2 - (x**2).sum(1), torch.full((20,), 1.0 / c, dtype=torch.float64))


@pytest.mark.parametrize("c", CURVATURES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_distance_is_a_metric(c: float, dtype: torch.dtype) -> None:
    x = _points(40, 6, seed=4, dtype=dtype)
    d = pairwise_distance(x, x, c).double()
    tol = 1e-6 if dtype == torch.float64 else 5e-3
    assert (d >= 0).all()
    assert torch.allclose(d, d.T, atol=tol)
    # the diagonal is 0 up to the 1 + eps floor of arccosh and, in float32, the cancellation in x_t^2 - |x|^2
    assert d.diagonal().max() < (2e-3 / math.sqrt(c) if dtype == torch.float64 else 1e-2)
    triangle = d[:, None, :] - (d[:, :, None] + d[None, :, :])  # d(i,k) - d(i,j) - d(j,k), all triples
    assert triangle.max() <= tol


# ----------------------------------------------------------------------------------------------------------------
# Entailment cones
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", CURVATURES)
def test_exterior_angle_recovers_the_constructed_angle(c: float) -> None:
    for theta in (0.0, 0.3, 1.0, math.pi / 2, 2.5, math.pi):
        for radius, step in ((0.5, 0.7), (2.0, 0.2), (4.0, 3.0)):
            x, y = _geodesic_at_angle(radius, theta, step, c)
            got = exterior_angle(x, y, c).item()
            assert got == pytest.approx(theta, abs=2e-3), (theta, radius, step)
            assert pairwise_exterior_angle(x, y, c).item() == pytest.approx(got, abs=1e-9)


@pytest.mark.parametrize("c", CURVATURES)
def test_half_aperture(c: float) -> None:
    x = torch.tensor([[0.0, 0.0], [0.05, 0.0], [3.0, 4.0], [300.0, 0.0]], dtype=torch.float64)
    aper = half_aperture(x, c, min_radius=0.1)
    assert aper[0].item() == pytest.approx(math.pi / 2, abs=1e-3)  # near the origin the cone is a half-space
    for i in (2, 3):  # far out it is arcsin(2K / (sqrt(c)|x|)) with |x| the space-part norm
        expected = math.asin(min(0.2 / (math.sqrt(c) * x[i].norm().item()), 1.0))
        assert aper[i].item() == pytest.approx(expected, abs=1e-3)
    assert (aper[1:].diff() <= 0).all()  # narrower further out


# ----------------------------------------------------------------------------------------------------------------
# Numerical robustness
# ----------------------------------------------------------------------------------------------------------------


def _all_functions(x: torch.Tensor, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    terms = [
        pairwise_distance(x, y, c).sum(),
        distance(x, y, c).sum(),
        exp_map0(x * 1e-3, c).sum(),  # keep the exp map argument in range so its gradient is not clamped away
        log_map0(x, c).sum(),
        half_aperture(x, c).sum(),
        exterior_angle(x, y, c).sum(),
        pairwise_exterior_angle(x, y, c).sum(),
        tangent_mean(x, c).sum(),
    ]
    return torch.stack([t.float() for t in terms]).sum()


@pytest.mark.parametrize("where", ["origin", "large"])
@pytest.mark.parametrize("autocast", [False, True])
def test_gradients_are_finite_at_the_origin_and_far_out(where: str, autocast: bool) -> None:
    g = torch.Generator().manual_seed(5)
    if where == "origin":
        x = torch.zeros(4, 8)
        y = torch.cat([torch.zeros(2, 8), torch.randn(2, 8, generator=g)])
    else:
        x = torch.nn.functional.normalize(torch.randn(4, 8, generator=g), dim=1) * 1e4
        y = torch.cat([x[:2].clone(), torch.nn.functional.normalize(torch.randn(2, 8, generator=g), dim=1) * 1e4])
    x.requires_grad_()
    y.requires_grad_()
    c = torch.tensor(1.0, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        total = _all_functions(x if not autocast else x.bfloat16(), y, c)
    assert torch.isfinite(total)
    total.backward()
    for grad in (x.grad, y.grad, c.grad):
        assert grad is not None and torch.isfinite(grad).all()


def test_autocast_leaves_results_in_float32() -> None:
    x, y = _points(6, 8, seed=6, dtype=torch.float32), _points(5, 8, seed=7, dtype=torch.float32)
    plain = pairwise_distance(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast = pairwise_distance(x, y)
        ext = pairwise_exterior_angle(x, y)
    assert cast.dtype == torch.float32 and ext.dtype == torch.float32
    assert torch.equal(cast, plain)  # no bf16 matmul sneaked in


def test_exp_map_is_identity_like_at_the_origin() -> None:
    v = torch.zeros(3, 5, requires_grad=True)
    exp_map0(v).sum().backward()
    assert torch.allclose(v.grad, torch.ones(3, 5))  # d exp_0 / dv at 0 is the identity


# ----------------------------------------------------------------------------------------------------------------
# Tangent-space mean
# ----------------------------------------------------------------------------------------------------------------


def test_tangent_mean_of_identical_points_is_that_point() -> None:
    x = _points(1, 6, seed=8).expand(5, 6)
    assert torch.allclose(tangent_mean(x, 2.0), x[0])
    batch = torch.stack([x, 2 * x])  # [2, 5, 6]: mean over dim=1, one per row
    assert torch.allclose(tangent_mean(batch, 2.0, dim=1), batch[:, 0])


def test_tangent_mean_is_the_geodesic_midpoint_along_a_ray_not_the_naive_mean() -> None:
    c = 1.0
    direction = torch.tensor([0.6, 0.8], dtype=torch.float64)
    near, far = math.sinh(0.5) * direction, math.sinh(4.0) * direction  # geodesic radii 0.5 and 4
    mean = tangent_mean(torch.stack([near, far]), c)
    assert torch.allclose(mean, math.sinh(2.25) * direction)  # radius (0.5 + 4) / 2 on the same ray
    naive = (near + far) / 2
    assert (mean - naive).norm() > 1.0
    assert torch.allclose(distance(mean[None], near[None], c), distance(mean[None], far[None], c))
    weighted = tangent_mean(torch.stack([near, far]), c, weights=torch.tensor([3.0, 1.0]))
    assert torch.allclose(weighted, math.sinh((3 * 0.5 + 4.0) / 4) * direction)


# ----------------------------------------------------------------------------------------------------------------
# LorentzProjector
# ----------------------------------------------------------------------------------------------------------------


def test_projector_initial_values_and_embedding() -> None:
    proj = LorentzProjector(64)
    assert proj.alpha("image").item() == pytest.approx(64**-0.5)
    assert proj.curvature().item() == pytest.approx(1.0)
    assert proj.logit_scale().item() == pytest.approx(1 / 0.07)
    features = torch.randn(4, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = proj.embed(features.bfloat16(), "dna")
    assert out.dtype == torch.float32
    assert torch.allclose(out, exp_map0(features.bfloat16().float() * 64**-0.5, 1.0), atol=1e-6)
    no_decay = {id(p) for p in proj.no_weight_decay_parameters()}
    assert no_decay == {id(p) for p in proj.parameters()} and len(no_decay) == 5


def test_projector_clamps_and_passes_gradients() -> None:
    proj = LorentzProjector(16, curvature_range=(0.1, 10.0), max_logit_scale=100.0)
    with torch.no_grad():
        proj.log_curvature.fill_(math.log(50.0))
        proj.log_logit_scale.fill_(math.log(1000.0))
        proj.log_alpha["text"].fill_(1.0)
    assert proj.curvature().item() == pytest.approx(10.0)
    assert proj.logit_scale().item() == pytest.approx(100.0)
    assert proj.alpha("text").item() == pytest.approx(1.0)
    proj.clamp_()
    assert proj.log_curvature.item() == pytest.approx(math.log(10.0))
    assert proj.log_logit_scale.item() == pytest.approx(math.log(100.0))
    assert proj.log_alpha["text"].item() == pytest.approx(0.0)
    # at the boundary (after clamp_) the gradient flows again, so the optimizer can bring it back
    proj.embed(torch.randn(3, 16), "text").pow(2).sum().backward()
    assert proj.log_curvature.grad.abs() > 0 and proj.log_alpha["text"].grad.abs() > 0


def test_bad_input_gets_clear_messages() -> None:
    with pytest.raises(KeyError, match="unknown modality 'audio'"):
        LorentzProjector(8).embed(torch.randn(2, 8), "audio")
    with pytest.raises(ValueError, match="curvature"):
        pairwise_distance(torch.randn(2, 3), torch.randn(2, 3), c=0.0)
    with pytest.raises(TypeError, match="floating-point"):
        exp_map0(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="curvature"):
        LorentzProjector(8, curvature=20.0)
