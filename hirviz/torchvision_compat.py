"""Make PyPI's CUDA-built torchvision importable on a CPU-only torch.

PyPI ships torchvision wheels compiled against CUDA torch. Installed next to a CPU torch build, their C++
extension fails to register its operators, and the first ``import torchvision`` dies with
``operator torchvision::nms does not exist`` because torchvision's Python side registers fake (meta)
kernels for operators whose schema it expects the extension to have defined. Defining the two missing
schemas ourselves, before torchvision is first imported, lets that registration succeed. hirviz and
open_clip never call these detection operators, so no implementation is needed.

Import this module before anything that imports torchvision (``hirviz/__init__.py`` does).
"""

from __future__ import annotations

import torch

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def _has_op(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
        return True
    except RuntimeError:
        return False


def install() -> None:
    """Define the torchvision operator schemas that a mismatched extension failed to register."""
    missing = [name for name in _SCHEMAS if not _has_op(name)]
    if not missing:
        return
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for name in missing:
        lib.define(_SCHEMAS[name])
    # The Library object must outlive this call or its definitions are dropped.
    _LIBRARIES.append(lib)


_LIBRARIES: list[torch.library.Library] = []
install()
