"""hirviz: use hierarchy-aware multimodal (image + DNA barcode + taxonomy) identification models.

This package holds everything needed to *use* a trained model; the ``train`` package makes them.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "identify_barcode", "identify_fasta", "load_bundle"]


def __getattr__(name: str):
    # Lazy export: ``import hirviz`` stays light; the bundle module is imported on first use of load_bundle.
    if name == "load_bundle":
        from hirviz.bundle import load_bundle

        return load_bundle
    if name in ("identify_barcode", "identify_fasta"):
        from hirviz import coi

        return getattr(coi, name)
    raise AttributeError(f"module 'hirviz' has no attribute {name!r}")
