"""The Poincare disk map of hyperboloid points: an exact radial projection (see :mod:`hirviz.geometry`).

A point's distance from the disk centre is ``tanh(sqrt(c) r / 2)`` of its geodesic distance ``r`` from the
hyperboloid's origin (the map of the Poincare ball of curvature -c, scaled to the unit disk, along a geodesic from
the origin); its direction is that of its tangent vector at the origin (log map) projected on two axes, the
principal axes of a reference bank's tangent vectors. Distances from the origin are kept exactly; distances between
points are not.
"""

from __future__ import annotations

import numpy as np
import torch

from hirviz.lorentz import log_map0

__all__ = ["POINCARE_LAYOUT", "fit_disk_axes", "poincare_disk"]

# Largest disk radius stored: float32 rounds tanh of a far point to 1.0, on the boundary rather than inside it.
_DISK_EDGE = 1.0 - 1e-6

# How the disk layout is made, in words: recorded in a bundle's provenance and model card.
POINCARE_LAYOUT = ("exact radial projection onto the Poincare disk: distance from the centre = tanh(sqrt(c) d / 2) "
                   "for the geodesic distance d from the origin; direction = the tangent vector's projection on the "
                   "bank's two principal tangent axes (hirviz.poincare.poincare_disk)")


def fit_disk_axes(x: np.ndarray, curvature: float) -> np.ndarray:
    """The two principal axes ``[2, d]`` (float32) of points' tangent vectors at the origin (log map), for
    :func:`poincare_disk`. Rows that are all zero (a missing modality) are left out; each axis's sign is fixed (its
    largest component positive) so that the map does not flip between exports."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected embeddings [N, d], got shape {x.shape}")
    keep = np.linalg.norm(x, axis=1) > 0
    if keep.sum() < 3 or x.shape[1] < 2:
        raise ValueError(f"a disk map needs at least 3 non-empty embeddings of dimension >= 2, got {int(keep.sum())} "
                         f"of dimension {x.shape[1]}")
    tangent = log_map0(torch.from_numpy(x[keep]), curvature, eps=0.0).numpy()
    _, _, vt = np.linalg.svd(tangent - tangent.mean(axis=0), full_matrices=False)
    axes = vt[:2]
    signs = np.sign(axes[np.arange(2), np.abs(axes).argmax(axis=1)])
    return (axes * signs[:, None]).astype(np.float32)


def poincare_disk(x: np.ndarray, curvature: float, axes: np.ndarray) -> np.ndarray:
    """Positions ``[N, 2]`` (float32) of hyperboloid points (space parts ``[N, d]``) on the unit Poincare disk.

    Radially exact: the distance from the centre is ``tanh(sqrt(c) r / 2)`` where ``r`` is the point's geodesic
    distance from the origin (so nearer the origin = nearer the centre, strictly up to float32 resolution; at most
    ``1 - 1e-6``, inside the disk); the direction is that of the tangent vector projected on ``axes`` (see
    :func:`fit_disk_axes`; a point whose projection vanishes goes along the first axis). All-zero rows (a missing
    modality) get NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    axes = np.asarray(axes, dtype=np.float64)
    if x.ndim != 2 or axes.shape != (2, x.shape[1]):
        raise ValueError(f"expected points [N, d] and axes [2, d], got {x.shape} and {axes.shape}")
    tangent = log_map0(torch.from_numpy(x), curvature, eps=0.0).numpy()
    radius = np.linalg.norm(tangent, axis=1)
    flat = tangent @ axes.T
    length = np.linalg.norm(flat, axis=1, keepdims=True)
    direction = np.where(length > 0, flat / np.where(length > 0, length, 1.0), np.array([1.0, 0.0]))
    disk = np.minimum(np.tanh(np.sqrt(curvature) * radius / 2.0), _DISK_EDGE)[:, None] * direction
    disk[np.linalg.norm(x, axis=1) == 0] = np.nan
    return disk.astype(np.float32)
