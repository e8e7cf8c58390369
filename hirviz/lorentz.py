"""The Lorentz (hyperboloid) model of hyperbolic space and the learnable parameters that embed into it.

The formulas are those of ``docs/METHOD.md`` section 9 (MERU's Lorentz model, curvature ``-c``). A point is
stored as its *space part* ``x`` in R^d; its time part is ``x_t = sqrt(1/c + |x|^2)``. Every function computes in
at least float32 with autocast switched off (a bf16 ``arccosh`` of a near-1 argument, or a bf16 matmul feeding it,
gives meaningless distances), and returns that dtype; float64 inputs stay float64.

Public API: :func:`time_part`, :func:`inner`, :func:`pairwise_inner`, :func:`distance`, :func:`pairwise_distance`,
:func:`exp_map0`, :func:`log_map0`, :func:`half_aperture`, :func:`exterior_angle`,
:func:`pairwise_exterior_angle`, :func:`tangent_mean` and :class:`LorentzProjector`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "DEFAULT_CURVATURE_RANGE",
    "DEFAULT_MIN_RADIUS",
    "LorentzProjector",
    "distance",
    "exp_map0",
    "exterior_angle",
    "half_aperture",
    "inner",
    "log_map0",
    "pairwise_distance",
    "pairwise_exterior_angle",
    "pairwise_inner",
    "tangent_mean",
    "time_part",
]

EPS = 1e-8
DEFAULT_MIN_RADIUS = 0.1  # K of the entailment cone (METHOD.md section 9)
DEFAULT_CURVATURE_RANGE = (0.1, 10.0)
# sinh(asinh(2^15)) = 2^15: exp_map0 never produces a space part whose squared norm overflows float32 products.
_MAX_SINH_ARG = math.asinh(2.0**15)

Curvature = Tensor | float


@contextlib.contextmanager
def _full_precision(*xs: Tensor) -> Iterator[None]:
    """Switch autocast off on the inputs' device type for the enclosed computation."""
    device_type = xs[0].device.type
    if device_type in ("cpu", "cuda", "xpu", "mps"):
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    else:  # pragma: no cover - devices without autocast have nothing to switch off
        yield


def _upcast(x: Tensor) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"expected a tensor of space parts, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"space parts must be a floating-point tensor, got {x.dtype}")
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _curvature(c: Curvature, like: Tensor) -> Tensor:
    """``c`` as a tensor of ``like``'s dtype and device (a learnable tensor keeps its gradient)."""
    if isinstance(c, Tensor):
        if c.numel() != 1:
            raise ValueError(f"the curvature must be a scalar, got a tensor of shape {tuple(c.shape)}")
        return c.reshape(()).to(device=like.device, dtype=like.dtype)
    if not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
        raise ValueError(f"the curvature c must be a finite number > 0 (the space has curvature -c), got {c!r}")
    return torch.tensor(float(c), device=like.device, dtype=like.dtype)


def _margin(eps: float, dtype: torch.dtype) -> float:
    """``eps`` raised to the dtype's resolution, so that ``1 + margin`` and ``1 - margin`` differ from 1.

    Without it ``1 + 1e-8`` is 1 in float32, and arccosh / arcsin would be evaluated where their derivative is
    infinite.
    """
    return max(eps, torch.finfo(dtype).eps)


def _norm(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x, dim=-1)


def time_part(x: Tensor, c: Curvature = 1.0) -> Tensor:
    """``x_t = sqrt(1/c + |x|^2)`` of space parts ``x`` [..., d] -> [...] (METHOD.md section 9)."""
    x = _upcast(x)
    with _full_precision(x):
        c = _curvature(c, x)
        return torch.sqrt(1.0 / c + (x * x).sum(-1))


def inner(x: Tensor, y: Tensor, c: Curvature = 1.0) -> Tensor:
    """Lorentzian inner product ``<x,y>_L = x.y - x_t y_t`` of matching rows (broadcast over ``[...]``)."""
    x, y = _upcast(x), _upcast(y)
    with _full_precision(x):
        return (x * y).sum(-1) - time_part(x, c) * time_part(y, c)


def pairwise_inner(x: Tensor, y: Tensor, c: Curvature = 1.0) -> Tensor:
    """``<x_i, y_j>_L`` for all pairs: x [N, d], y [M, d] -> [N, M]."""
    x, y = _upcast(x), _upcast(y)
    with _full_precision(x):
        return x @ y.T - time_part(x, c)[:, None] * time_part(y, c)[None, :]


def _distance_from_inner(lorentz_inner: Tensor, c: Tensor, eps: float) -> Tensor:
    floor = 1.0 + _margin(eps, lorentz_inner.dtype)
    return torch.acosh(torch.clamp(-c * lorentz_inner, min=floor)) / torch.sqrt(c)


def distance(x: Tensor, y: Tensor, c: Curvature = 1.0, eps: float = EPS) -> Tensor:
    """Geodesic distance of matching rows, ``arccosh(max(-c <x,y>_L, 1 + eps)) / sqrt(c)`` (METHOD.md section 9).

    ``eps`` is raised to the dtype's resolution, so ``d(x, x)`` is a small positive number (about 5e-4 / sqrt(c)
    in float32), not exactly 0: this keeps the gradient of the distance finite for coinciding points.
    """
    x, y = _upcast(x), _upcast(y)
    with _full_precision(x):
        return _distance_from_inner(inner(x, y, c), _curvature(c, x), eps)


def pairwise_distance(x: Tensor, y: Tensor, c: Curvature = 1.0, eps: float = EPS) -> Tensor:
    """Geodesic distance matrix ``d(x_i, y_j)``: x [N, d], y [M, d] -> [N, M]; see :func:`distance`."""
    x, y = _upcast(x), _upcast(y)
    with _full_precision(x):
        return _distance_from_inner(pairwise_inner(x, y, c), _curvature(c, x), eps)


def exp_map0(v: Tensor, c: Curvature = 1.0, eps: float = EPS) -> Tensor:
    """Exponential map at the origin: tangent vectors v [..., d] -> space parts [..., d] (METHOD.md section 9).

    ``x = sinh(sqrt(c)|v|) v / (sqrt(c)|v|)``, the sinh argument clamped to ``[eps, asinh(2^15)]`` (so ``|x|`` is
    at most ``2^15 / sqrt(c)``) and the divisor to at least ``eps`` (so the origin maps to itself with a finite,
    identity-like gradient).
    """
    v = _upcast(v)
    with _full_precision(v):
        c = _curvature(c, v)
        rc_norm = torch.sqrt(c) * _norm(v)[..., None]
        scale = torch.sinh(torch.clamp(rc_norm, min=eps, max=_MAX_SINH_ARG)) / torch.clamp(rc_norm, min=eps)
        return scale * v


def log_map0(x: Tensor, c: Curvature = 1.0, eps: float = EPS) -> Tensor:
    """Logarithmic map at the origin, the inverse of :func:`exp_map0` (METHOD.md section 9).

    ``v = arccosh(sqrt(1 + c|x|^2)) x / (sqrt(c)|x|)``. The geodesic radius ``arccosh(sqrt(1 + c|x|^2))`` equals
    ``asinh(sqrt(c)|x|)`` exactly; the asinh form is used because it has no cancellation near the origin.
    """
    x = _upcast(x)
    with _full_precision(x):
        c = _curvature(c, x)
        rc_norm = torch.clamp(torch.sqrt(c) * _norm(x)[..., None], min=eps)
        return torch.asinh(rc_norm) / rc_norm * x


def half_aperture(x: Tensor, c: Curvature = 1.0, min_radius: float = DEFAULT_MIN_RADIUS, eps: float = EPS) -> Tensor:
    """Half-aperture of the entailment cone at x [..., d] -> [...] (METHOD.md section 9).

    ``aper(x) = arcsin(clamp(2K / (sqrt(c)|x| + eps), -1+eps, 1-eps))`` with ``|x|`` the norm of the SPACE part
    and ``K = min_radius``: wide (pi/2) near the origin, narrowing as x moves away from it.
    """
    x = _upcast(x)
    with _full_precision(x):
        c = _curvature(c, x)
        bound = 1.0 - _margin(eps, x.dtype)
        ratio = 2.0 * min_radius / (torch.sqrt(c) * _norm(x) + eps)
        return torch.asin(torch.clamp(ratio, min=-bound, max=bound))


def _exterior_from_inner(
    x_norm: Tensor, x_time: Tensor, y_time: Tensor, lorentz_inner: Tensor, c: Tensor, eps: float
) -> Tensor:
    """``arccos((y_t + c<x,y>_L x_t) / (|x| sqrt((c<x,y>_L)^2 - 1) + eps))``, all arguments broadcastable."""
    c_inner = c * lorentz_inner
    # Rounding can push (c<x,y>_L)^2 - 1 below 0 for nearly equal points: clamp before the square root.
    radicand = torch.clamp(c_inner * c_inner - 1.0, min=eps)
    cosine = (y_time + c_inner * x_time) / (x_norm * torch.sqrt(radicand) + eps)
    bound = 1.0 - _margin(eps, cosine.dtype)
    return torch.acos(torch.clamp(cosine, min=-bound, max=bound))


def exterior_angle(x: Tensor, y: Tensor, c: Curvature = 1.0, eps: float = EPS) -> Tensor:
    """Exterior angle ``ext(x, y)`` of matching rows [..., d] -> [...] (METHOD.md section 9).

    The angle at x between the geodesic from the origin through x (continued beyond x) and the geodesic from x
    to y: 0 when y lies further out on the ray through x, pi when y lies between the origin and x. y is inside
    the entailment cone of x when ``ext(x, y) <= half_aperture(x)``.
    """
    x, y = _upcast(x), _upcast(y)
    with _full_precision(x):
        cc = _curvature(c, x)
        return _exterior_from_inner(_norm(x), time_part(x, c), time_part(y, c), inner(x, y, c), cc, eps)


def pairwise_exterior_angle(x: Tensor, y: Tensor, c: Curvature = 1.0, eps: float = EPS) -> Tensor:
    """``ext(x_i, y_j)`` for all pairs: x [N, d] (cone apexes), y [M, d] -> [N, M]; see :func:`exterior_angle`."""
    x, y = _upcast(x), _upcast(y)
    with _full_precision(x):
        cc = _curvature(c, x)
        return _exterior_from_inner(
            _norm(x)[:, None], time_part(x, c)[:, None], time_part(y, c)[None, :], pairwise_inner(x, y, c), cc, eps
        )


def tangent_mean(x: Tensor, c: Curvature = 1.0, dim: int = 0, weights: Tensor | None = None) -> Tensor:
    """Average of points in the tangent space at the origin: ``exp_map0(mean(log_map0(x)))`` (METHOD.md section 9).

    Used for averaged queries and prompt ensembles. ``weights`` (broadcastable to ``x`` without its last axis)
    gives a weighted mean; they need not sum to 1.
    """
    x = _upcast(x)
    with _full_precision(x):
        v = log_map0(x, c)
        if weights is None:
            mean = v.mean(dim)
        else:
            w = torch.as_tensor(weights, dtype=v.dtype, device=v.device)[..., None].expand_as(v)
            mean = (w * v).sum(dim) / w.sum(dim)
        return exp_map0(mean, c)


class LorentzProjector(nn.Module):
    """Learnable parameters of the hyperbolic embedding (METHOD.md section 9) and the embedding itself.

    Holds, for each modality, ``log alpha`` (init ``log(d^-0.5)``, clamped so that ``alpha <= 1``), the log
    curvature (init ``c = 1``, clamped to ``curvature_range``) and the log logit scale (init ``1/0.07``,
    clamped to ``<= max_logit_scale``). The getters clamp on the fly; :meth:`clamp_` projects the stored values
    back into range in place and is meant to be called after every optimizer step, so a parameter that left its
    range is not stuck where the clamp has no gradient.

    Args:
        dim: width of the projected features (sets the alpha init).
        modalities: names accepted by :meth:`embed`.
        curvature: initial c. curvature_range: (min, max) of c. learn_curvature: False keeps c fixed.
        logit_scale: initial 1/tau. max_logit_scale: its upper clamp.
    """

    def __init__(
        self,
        dim: int,
        modalities: Sequence[str] = ("image", "dna", "text"),
        *,
        curvature: float = 1.0,
        curvature_range: tuple[float, float] = DEFAULT_CURVATURE_RANGE,
        learn_curvature: bool = True,
        logit_scale: float = 1.0 / 0.07,
        max_logit_scale: float = 100.0,
    ) -> None:
        super().__init__()
        if not (isinstance(dim, int) and dim > 0):
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must be distinct names, got {list(modalities)}")
        low, high = curvature_range
        if not (0 < low <= curvature <= high):
            raise ValueError(f"need 0 < curvature_range[0] <= curvature <= curvature_range[1], got {curvature}, "
                             f"{curvature_range}")  # fmt: skip
        if not (0 < logit_scale <= max_logit_scale):
            raise ValueError(f"need 0 < logit_scale <= max_logit_scale, got {logit_scale}, {max_logit_scale}")
        self.modalities = tuple(modalities)
        self.log_alpha = nn.ParameterDict(
            {m: nn.Parameter(torch.tensor(math.log(dim**-0.5))) for m in self.modalities}
        )
        self.log_curvature = nn.Parameter(torch.tensor(math.log(curvature)), requires_grad=learn_curvature)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale)))
        self._log_c_range = (math.log(low), math.log(high))
        self._log_scale_max = math.log(max_logit_scale)

    def alpha(self, modality: str) -> Tensor:
        """The feature scale of ``modality``, at most 1."""
        if modality not in self.log_alpha:
            raise KeyError(f"unknown modality {modality!r}; this projector has {', '.join(self.modalities)}")
        return torch.exp(torch.clamp(self.log_alpha[modality], max=0.0))

    def curvature(self) -> Tensor:
        """c (the space has curvature -c), within ``curvature_range``."""
        return torch.exp(torch.clamp(self.log_curvature, *self._log_c_range))

    def logit_scale(self) -> Tensor:
        """The contrastive logit scale 1/tau, at most ``max_logit_scale``."""
        return torch.exp(torch.clamp(self.log_logit_scale, max=self._log_scale_max))

    def embed(self, features: Tensor, modality: str) -> Tensor:
        """Project features [..., d] onto the hyperboloid: ``exp_map0(alpha_m * features, c)``, in float32.

        The features are NOT L2-normalised first (METHOD.md section 9). Returns float32 space parts [..., d]
        even under autocast.
        """
        features = _upcast(features)
        with _full_precision(features):
            return exp_map0(features * self.alpha(modality).to(features.dtype), self.curvature())

    @torch.no_grad()
    def clamp_(self) -> None:
        """Project the stored log-parameters into their ranges in place (call after each optimizer step)."""
        for value in self.log_alpha.values():
            value.clamp_(max=0.0)
        self.log_curvature.clamp_(*self._log_c_range)
        self.log_logit_scale.clamp_(max=self._log_scale_max)

    def no_weight_decay_parameters(self) -> list[nn.Parameter]:
        """The alphas, the curvature and the logit scale: MERU excludes them from weight decay.

        An optimizer builds its no-decay group from these (compare by identity); decaying them instead is the
        authors' early-code option.
        """
        return [p for p in self.parameters() if p.requires_grad]
