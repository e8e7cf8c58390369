"""The Geometry tab's callbacks: reference maps (UMAP or the Poincare disk), the noise path, distance from the
origin by rank, and the drift of the current specimen in words."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import numpy as np
import plotly.graph_objects as go

from hirviz import figures
from hirviz.degrade import DnaNoise
from hirviz.hierarchy import describe_drift, specimen_drift
from hirviz.index import FLAT_MAX_ROWS
from hirviz.map_layers import NEAR_NEIGHBOURS, near_taxa
from hirviz.noise_path import DEFAULT_STRENGTHS, noise_path
from hirviz.predict import INPUT_ERRORS
from hirviz.ui.engine import (
    COLOUR_LEVELS,
    MAP_SPACES,
    Engine,
    trained_fusion,
)
from hirviz.ui.render import input_message, status_line
from hirviz.ui.robustness_tab import hierarchy_cells

logger = logging.getLogger(__name__)
# References searched per embedding for the drift text when a bank is too large to compare whole (FLAT_MAX_ROWS).
DRIFT_CANDIDATES = 10

__all__ = ["PATH_CAPTION", "geometry", "is_lorentz", "generality", "drift_text", "map_consistency"]


# One line under the maps: what the noise path's markers mean (the points are labelled as _session_noise_path does).
PATH_CAPTION = ("Noise path: the green square is your specimen with no noise; each ring after it is the same specimen "
                "re-embedded with the noise multiplied by " + ", ".join(f"×{s:g}" for s in DEFAULT_STRENGTHS if s)
                + " (×1 = the noise set on the Identify tab, or the paper's noise and a visible blur when the "
                "controls are at zero). Strong blurs stop early, where the blur would exceed the model's input.")


def geometry(
    engine: Engine,
    session: Mapping[str, Any] | None,
    space: str,
    colour_by: str,
    show_path: bool,
) -> tuple[str, dict[str, go.Figure]]:
    """Each bundle's reference map of ``space`` with the last query placed on it.

    Only a few taxa at ``colour_by`` are coloured: those of the query's :data:`~hirviz.map_layers.NEAR_NEIGHBOURS`
    nearest references (:func:`~hirviz.map_layers.near_taxa`), or the most frequent ones before any query; the rest
    is grey. A large bank is drawn as a density image with a sample of points (:mod:`hirviz.map_layers`).

    With ``show_path`` the query is re-embedded at rising noise strengths (:data:`DEFAULT_STRENGTHS` times the
    current noise, or the paper's noise and a visible blur when the controls are at zero) and the path drawn.
    Returns a status line and the figures.
    """
    session = session or {}
    space = space if space in MAP_SPACES else MAP_SPACES[0]
    colour_by = colour_by if colour_by in COLOUR_LEVELS else COLOUR_LEVELS[0]
    notes, maps = [], {}
    for name in engine.names:
        title = f"{name}: {space} space, {colour_by}: the most frequent in colour"
        reference = engine.bundles[name].reference
        disk = is_lorentz(engine, name)
        # A hyperbolic model shows its Poincare disk; a Euclidean one its UMAP layout.
        layout = (getattr(reference, "poincare", None) or {}).get(space) if disk else engine.layouts(name).get(space)
        if layout is None:
            untrained = space == "fused" and not trained_fusion(engine.bundles[name])
            why = " (its fusion was never trained)" if untrained else ""
            maps[name] = figures.empty_figure(f"{name} has no {space} space map{why}", title=title, height=520)
            continue
        query = path = labels = highlight = None
        z = ((session.get("embeddings") or {}).get(name) or {}).get(space)
        reference_map = engine.predictor(name).reference_map
        kind = "poincare" if disk else "umap"
        if z is not None and reference_map is not None:
            z = np.asarray(z, dtype=np.float32)
            query = reference_map.place(z, space, layout=kind)
            # Colour only the taxa of the specimen's nearest references; the rest of the map stays grey.
            near = reference_map.neighbours(z, space, k=NEAR_NEIGHBOURS).rows
            highlight = near_taxa(reference.ranks, near, colour_by)
            title = f"{name}: {space} space, {colour_by}: those nearest your specimen in colour"
            if show_path:
                try:
                    path, labels = _session_noise_path(engine, name, session, space, kind)
                except INPUT_ERRORS as err:
                    notes.append(f"no noise path: {input_message(err)}")
        elif z is None and session.get("embeddings"):
            notes.append(f"the {space} space needs " + ("an image and a barcode" if space == "fused" else
                                                       "an image" if space == "image" else "a barcode"))
        draw = figures.poincare_figure if disk else figures.umap_figure
        maps[name] = draw(layout, reference.ranks, colour_by, ids=reference.ids, title=title, query=query, path=path,
                          path_labels=labels, highlight=highlight)
    status = status_line("info", "; ".join(dict.fromkeys(notes))) if notes else ""
    return status, maps


def is_lorentz(engine: Engine, name: str) -> bool:
    """Whether a bundle's model is hyperbolic (its Geometry tab shows the Poincare disk and the generality plot)."""
    return getattr(engine.bundles[name], "geometry_name", "euclidean") == "lorentz"


def generality(engine: Engine, session: Mapping[str, Any] | None, space: str) -> dict[str, go.Figure]:
    """Per hyperbolic bundle: the geodesic distance from the origin of its candidate taxonomy texts and of its
    reference specimens in ``space``, by rank (:func:`hirviz.figures.generality_figure`), with the last specimen's.

    In a model that learned the hierarchy, order names sit nearest the origin and species farthest. Euclidean
    bundles have no such axis and get no figure.
    """
    session = session or {}
    out = {}
    for name in engine.names:
        if not is_lorentz(engine, name):
            continue
        bundle, reference_map = engine.bundles[name], engine.predictor(name).reference_map
        geometry = engine.predictor(name).geometry
        groups = {"taxonomy text (candidates)": (geometry.origin_distance(bundle.text_embeddings),
                                                  np.array(bundle.candidate_ranks, dtype=object))}
        if reference_map is not None and space in reference_map.spaces:
            rows = reference_map.members(space)
            groups[f"reference specimens ({space})"] = (
                geometry.origin_distance(bundle.reference.embeddings[space][rows]), bundle.reference.ranks[rows])
        z = ((session.get("embeddings") or {}).get(name) or {}).get(space)
        query = float(geometry.origin_distance(np.asarray(z, dtype=np.float64))[0]) if z is not None else None
        out[name] = figures.generality_figure(groups, query=query,
                                              title=f"{name}: distance from the origin by rank ({space} space)")
    return out


def _session_noise_path(engine: Engine, name: str, session: Mapping[str, Any], space: str, kind: str = "umap"):
    """The noise path of the last specimen (from the session) in one bundle's ``space``, and its point labels."""
    predictor = engine.predictor(name)
    noise = session.get("noise") or {}
    dna = DnaNoise(**noise.get("dna", {})) if noise.get("dna") else DnaNoise.off()
    blur = int(noise.get("blur_kernel", 0) or 0)
    image = session.get("image")
    barcode = session.get("barcode")
    if space == "image":
        barcode = None
    if space == "dna":
        image = None
    if image is None and barcode is None:
        return None, None
    strengths = list(DEFAULT_STRENGTHS)
    if image is not None:
        # The blur grows with the strength; stop where it would exceed the model's input grid.
        base_blur = blur if blur > 1 else predictor.default_blur_kernel()
        limit = max(predictor.model.image_size)
        strengths = [s for s in strengths if round(s * base_blur) <= limit]
    path = noise_path(
        predictor, image, barcode, space, strengths, dna_noise=None if dna.is_off() else dna,
        blur_kernel=blur if blur > 1 else None, seed=int(noise.get("seed", 0)), layout=kind,
    )
    return path, ["no noise" if s == 0 else f"×{s:g}" for s in strengths]


def map_consistency(engine: Engine, space: str) -> str:
    """Beside the maps: each bundle's hierarchy-consistency numbers for ``space`` from its held-out evaluation.

    The space's own query is scored (image space: photo -> names, DNA: barcode -> names, fused: the gated
    fusion), without noise and with the evaluation's noise, so a reader can judge how far the map's geometry
    follows the tree before reading the map itself.
    """
    lines = []
    for name in engine.names:
        cells = hierarchy_cells(getattr(engine.bundles[name], "eval_results", None), space)
        if cells is None:
            lines.append(f"**{name}** ({space} space): its evaluation has no hierarchy numbers for this space.")
            continue
        lines.append(f"**{name}** ({space} space, without noise → with a {cells['noise']}): tree agreement "
                     f"{cells['agreement']}, mistake severity {cells['severity']} (agreement: 1 = the space orders "
                     "specimens as the tree does, 0 = it ignores the tree; severity: 1 = mistakes stay in the genus, "
                     "4 = another order).")
    return "\n\n".join(lines)


def drift_text(engine: Engine, session: Mapping[str, Any] | None, space: str) -> str:
    """In words, per bundle: how far the noise of the last identification moved the specimen in ``space``.

    The specimen is re-embedded without noise and both embeddings are compared with the bundle's reference bank
    (:func:`hirviz.hierarchy.specimen_drift`): does the nearest reference still share the names the noise-free
    input's nearest reference has? Empty before any identification.
    """
    session = session or {}
    embeddings = session.get("embeddings") or {}
    if not embeddings:
        return ""
    noise = session.get("noise") or {}
    dna = DnaNoise(**noise["dna"]) if noise.get("dna") else DnaNoise.off()
    image = session.get("image") if space != "dna" else None
    barcode = session.get("barcode") if space != "image" else None
    blurred = image is not None and int(noise.get("blur_kernel", 0) or 0) > 1
    if not blurred and (barcode is None or dna.is_off()):
        return (f"Drift: no noise reached the {space} space's inputs; set the noise controls and identify again to "
                "see how far the noise moves your specimen.")
    lines = []
    for name in engine.names:
        z = (embeddings.get(name) or {}).get(space)
        reference_map = engine.predictor(name).reference_map
        if z is None or reference_map is None or space not in reference_map.spaces:
            continue
        rows = reference_map.members(space)
        try:
            clean = engine.predictor(name).embed(image, barcode).vectors.get(space) if len(rows) > 1 else None
        except INPUT_ERRORS as err:  # e.g. the uploaded file is gone: say so instead of failing
            lines.append(f"**{name}**: no drift: {input_message(err)}")
            continue
        if clean is None:
            continue
        if len(rows) > FLAT_MAX_ROWS:
            # A large bank: compare within the index's nearest references of both embeddings (the nearest of each,
            # up to the index's recall); the whole bank in float64 (4.5 GB a copy at 1.1 M x 512) ran out of memory.
            near = reference_map.neighbours(np.stack([clean[0], np.asarray(z, dtype=np.float32)]), space,
                                            k=DRIFT_CANDIDATES).rows
            rows = np.unique(near[near >= 0])
        reference = engine.bundles[name].reference
        drift = specimen_drift(clean[0], np.asarray(z, dtype=np.float32), reference.embeddings[space][rows],
                               reference.labels[rows])
        lines.append(f"**{name}** ({space} space): {describe_drift(drift)}")
    return "\n\n".join(lines)


