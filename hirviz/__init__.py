"""hirviz: use hierarchy-aware multimodal (image + DNA barcode + taxonomy) identification models.

This package holds everything needed to *use* a trained model; the ``train`` package makes them.
"""

from hirviz import torchvision_compat as _torchvision_compat  # noqa: F401  (must precede torchvision)

__version__ = "0.1.0"
