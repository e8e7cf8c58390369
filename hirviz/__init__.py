"""hirviz: use hierarchy-aware multimodal (image + DNA barcode + taxonomy) identification models.

This package holds everything needed to *use* a trained model; the ``train`` package makes them.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "load_bundle"]


def __getattr__(name: str):
    # Lazy export: ``import hirviz`` stays light; the bundle module is imported on first use of load_bundle.
    if name == "load_bundle":
        from hirviz.bundle import load_bundle

        return load_bundle
    raise AttributeError(f"module 'hirviz' has no attribute {name!r}")
