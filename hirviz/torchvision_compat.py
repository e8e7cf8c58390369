"""Make PyPI's CUDA-built torchvision importable on a CPU-only torch.

PyPI ships torchvision wheels compiled against CUDA torch. Installed next to a CPU torch build, their C++
extension fails to register its operators, and the first ``import torchvision`` dies with
``operator torchvision::nms does not exist`` because torchvision's Python side registers fake (meta)
kernels for operators whose schema it expects the extension to have defined. Defining the two missing
schemas ourselves, before torchvision is first imported, lets that registration succeed. hirviz and
open_clip never call these detection operators, so no implementation is needed.

Call :func:`ensure_torchvision` right before the first import of torchvision or open_clip (which imports
torchvision) in a module that needs them; ``import hirviz`` alone does not, so it stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ensure_torchvision"]

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
# The Library objects must outlive the call that made them or their definitions are dropped.
_LIBRARIES: list[Any] = []
_done = False


def _has_op(name: str) -> bool:
    import torch

    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def ensure_torchvision() -> None:
    """Define the torchvision operator schemas that a mismatched extension failed to register (once; cheap after)."""
    global _done
    if _done:
        return
    import torch

    missing = [name for name in _SCHEMAS if not _has_op(name)]
    if missing:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for name in missing:
            lib.define(_SCHEMAS[name])
        _LIBRARIES.append(lib)
    _done = True
