"""Training losses: cross-modal contrastive (rank-gathered), HiR, fusion, and the objectives.

The specification is ``docs/METHOD.md`` sections 1-4. Public API (import from ``train.losses``):

* :func:`contrastive_loss` -- symmetric InfoNCE ``L(a, b)`` with multi-positive targets, DDP-gathered
  (``contrastive.py``, whose docstring explains the gradient scaling under DDP).
* :func:`directed_contrastive_loss` -- one direction ``L(anchors -> candidates)``.
* :func:`fusion_loss` -- the fusion term of CLIBD-HiR-Fuse (``fusion.py``).
* :func:`hir_loss` -- Hierarchical Information Regularization (``hir.py``).
* :mod:`train.losses.hyperbolic` -- the Lorentz variant (METHOD.md section 9): geodesic contrastive and
  entailment-cone losses (import from that module).
* :class:`LossConfig` and :func:`compute_loss` -- the three objectives (``objective.py``); :func:`loggable_parts`
  turns the logged terms into floats for ``metrics.jsonl``.
"""

from __future__ import annotations

from hirviz.taxonomy import LEVELS
from train.losses.contrastive import DEFAULT_TAU, contrastive_loss, directed_contrastive_loss
from train.losses.fusion import FUSION_DIRECTIONS, fusion_loss
from train.losses.hir import HIR_MAX_SCOPES, HIR_MODES, hir_loss
from train.losses.objective import HIR_MODALITIES, OBJECTIVES, LossConfig, compute_loss, loggable_parts

__all__ = [
    "DEFAULT_TAU",
    "FUSION_DIRECTIONS",
    "HIR_MAX_SCOPES",
    "HIR_MODALITIES",
    "HIR_MODES",
    "LEVELS",
    "OBJECTIVES",
    "LossConfig",
    "compute_loss",
    "contrastive_loss",
    "directed_contrastive_loss",
    "fusion_loss",
    "hir_loss",
    "loggable_parts",
]
