"""The Gradio app: identify a specimen, see where it lies among the reference specimens, read the robustness curves.

:func:`build_ui` lays out the Blocks (:mod:`hirviz.ui.layout`); the work is done by plain functions of an
:class:`Engine` (the loaded bundles, :mod:`hirviz.ui.engine`) that the tests call directly: :func:`identify`,
:func:`geometry`, :func:`score_chart` and :func:`robustness` (:mod:`hirviz.ui.handlers`). Each returns ready-to-show
values (HTML from :mod:`hirviz.ui.render`, plotly figures, data frames) and never raises on bad input: a message for
the user comes back instead, and the Gradio wrappers also show it as a warning.

The first bundle is the main model (CLIBD-HiR-Fuse in the demo); any others (the CLIBD baseline) are answered
beside it. Every event has an ``api_name``, so the app can be driven from ``gradio_client``.
"""

from __future__ import annotations

from hirviz.ui.engine import Engine, NoiseSettings, trained_fusion
from hirviz.ui.handlers import (
    IdentifyView,
    drift_text,
    eval_tables,
    geometry,
    hierarchy_tables,
    identify,
    read_examples,
    refused,
    robustness,
    score_chart,
    source_path,
    sweep_coverage,
)
from hirviz.ui.layout import API_NAMES, build_ui
from hirviz.ui.render import CSS, EDIT_STYLES, barcode_html, image_html, neighbours_frame, result_html

__all__ = [
    "API_NAMES",
    "CSS",
    "EDIT_STYLES",
    "Engine",
    "NoiseSettings",
    "IdentifyView",
    "build_ui",
    "identify",
    "geometry",
    "drift_text",
    "hierarchy_tables",
    "score_chart",
    "robustness",
    "sweep_coverage",
    "eval_tables",
    "source_path",
    "barcode_html",
    "image_html",
    "result_html",
    "neighbours_frame",
    "read_examples",
    "refused",
    "trained_fusion",
]
