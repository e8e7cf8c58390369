"""The app's callbacks as plain functions of an :class:`~hirviz.ui.engine.Engine`, called directly by the tests.

:func:`identify`, :func:`geometry`, :func:`score_chart` and :func:`robustness` return ready-to-show values
(HTML, plotly figures, data frames) and never raise on bad input: a message for the user comes back instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image

from hirviz import figures
from hirviz.barcode import BarcodeError
from hirviz.coi_check import input_notes
from hirviz.degrade import DnaNoise
from hirviz.hierarchy import describe_drift, specimen_drift
from hirviz.noise_path import DEFAULT_STRENGTHS, noise_path
from hirviz.predict import INPUT_ERRORS, Prediction, load_image
from hirviz.taxonomy import LEVELS
from hirviz.ui.coi_view import CoiView, empty_coi_html, hits_frame, identify_coi
from hirviz.ui.engine import (
    BARCODE_ROUTES,
    COLOUR_LEVELS,
    DNA_SLIDERS,
    MAP_SPACES,
    PAPER_NOISE,
    SWEEP_LEVELS,
    Engine,
    NoiseSettings,
    barcode_text,
    image_source,
    trained_fusion,
    typed_names,
)
from hirviz.ui.render import (
    HIERARCHY_EXPLANATIONS,
    agreement_text,
    barcode_html,
    hierarchy_markdown,
    neighbours_frame,
    result_html,
    status_line,
    verdict_text,
)
from hirviz.ui.result_csv import result_rows, write_csv

__all__ = ["IdentifyView", "identify", "refused", "source_path", "score_chart", "geometry", "generality", "drift_text",
           "robustness", "sweep_coverage", "PATH_CAPTION", "hierarchy_tables", "eval_tables", "read_examples", "input_message", "role_note"]

logger = logging.getLogger(__name__)


@dataclass
class IdentifyView:
    """Everything :func:`identify` shows. ``ok`` is False when the input was refused (``status`` says why)."""

    ok: bool
    status: str
    predictions: dict[str, Prediction] = field(default_factory=dict)
    model_image: Image.Image | None = None
    barcode: str = ""
    gate: go.Figure | None = None
    results: dict[str, str] = field(default_factory=dict)
    bars: go.Figure | None = None
    neighbours: pd.DataFrame = field(default_factory=lambda: neighbours_frame(None))
    raw: dict[str, Any] = field(default_factory=dict)
    session: dict[str, Any] = field(default_factory=dict)
    coi_html: str = ""
    coi_hits: pd.DataFrame = field(default_factory=lambda: hits_frame(None))
    csv: str | None = None  # the whole result as a CSV file (result_rows), None when refused


def identify(
    engine: Engine,
    image: Any,
    barcode: Any,
    noise: NoiseSettings | None = None,
    *,
    level: str = "species",
    route: str | None = None,
    candidates: Any = None,
) -> IdentifyView:
    """Identify one specimen with every bundle; never raises on bad input (``ok=False`` and a message instead).

    ``image`` is an upload (Gradio file payload or path) or an image; ``barcode`` pasted text (raw or FASTA).
    ``route`` says where the barcode goes (:data:`~hirviz.ui.engine.BARCODE_ROUTES`: ``"real"``, the COI bundle's
    identification engine; ``"demo"``, the photo models; ``"both"``); the default is the COI bundle when there is
    one. A photo always goes to the photo models. ``level`` picks the score chart's level. The maps are drawn by
    :func:`geometry` from the returned ``session`` (the Geometry tab does it when opened, so that a request does
    not pay for maps nobody looks at). ``candidates``: typed taxonomy strings, one per line (:func:`typed_names`);
    when given, each Euclidean model ranks only those (zero-shot) and the status says which models could not.
    """
    noise = noise or NoiseSettings()
    routes = [value for _, value in BARCODE_ROUTES]
    route = route if route in routes else engine.default_route()
    coi: CoiView | None = None
    try:
        source, text = image_source(image), barcode_text(barcode)
        names = typed_names(candidates)
        if source is None and text is None:
            return refused(engine, "Nothing to identify: upload a specimen photo and/or paste its DNA barcode "
                                   "(raw sequence or FASTA), then press Identify.")
        unused = ""
        if source is not None and not engine.photo_names():  # no model may answer from an untrained image tower
            if text is None:
                return refused(engine, "None of the loaded models was trained on photos: paste a DNA barcode "
                                       "instead.")
            source, unused = None, " The photo was not used: none of the loaded models was trained on photos."
        demo_text = text if route != "real" or engine.coi_name is None else None
        if text is not None and engine.coi_name is not None and route != "demo":
            coi = identify_coi(engine, text)
            if not coi.ok and source is None:
                view = refused(engine, coi.status.split(" ", 1)[1])
                view.coi_html = coi.html
                return view
        if source is not None:
            source = load_image(source)  # decode once, then every model reuses it
        predictions = {}
        for name in engine.names:
            # A model never answers from a tower it was not trained with (a barcode-only bundle gets no photo).
            photo = source if engine.image_trained(name) else None
            if photo is not None or demo_text is not None:
                typed = names if names and engine.ranks_typed_names(name) else None
                predictions[name] = engine.predict(name, photo, demo_text, noise, names=typed)
        notes = input_notes(text) if text is not None else []
    except INPUT_ERRORS as err:
        return refused(engine, input_message(err))
    if not predictions:  # a barcode for the COI bundle only
        view = refused(engine, "")
        view.ok, view.status, view.coi_html, view.coi_hits = True, coi.status, coi.html, coi.hits
        view.barcode = barcode_html(coi.result.check.sequence, None, [], coi.result.check.notes)
        view.status += unused
        view.raw = {"coi": coi.raw}
        view.session = {"barcode": text, "levels": {}, "embeddings": {}}
        view.csv = write_csv(result_rows({}, coi, engine.coi_name))
        return view

    main = predictions[engine.primary] if engine.primary in predictions else next(iter(predictions.values()))
    main_name = next(n for n, p in predictions.items() if p is main)
    view = IdentifyView(ok=True, status="", predictions=predictions)
    if coi is not None:
        view.coi_html, view.coi_hits = coi.html, coi.hits
    view.model_image = main.model_input_image
    view.barcode = barcode_html(main.barcode, main.degraded_barcode, main.barcode_edits, notes)
    view.gate = figures.gate_figure(main.gate, main.gate_vector, title=f"Fusion gate ({engine.primary})")
    view.results = {name: result_html(name, predictions.get(name), note=role_note(engine, name),
                                      fusion=trained_fusion(engine.bundles[name]), data=engine.data_kind(name),
                                      image=engine.image_trained(name))
                    for name in engine.names}
    view.session = {
        "image": source_path(image) if source is not None else None,
        "barcode": text,
        "noise": {"blur_kernel": noise.blur_kernel, "dna": asdict(noise.dna), "seed": noise.seed},
        "levels": {name: {q: r.levels for q, r in p.queries.items()} for name, p in predictions.items()},
        "embeddings": {name: {q: r.embedding.tolist() for q, r in p.queries.items()}
                       for name, p in predictions.items()},
    }
    view.bars = score_chart(engine, view.session, level)
    view.neighbours = neighbours_frame(main)
    view.raw = {name: p.to_dict() for name, p in predictions.items()}
    if coi is not None:
        view.raw["coi"] = coi.raw
    view.csv = write_csv(result_rows(predictions, coi, engine.coi_name, file_name=Path(view.session["image"]).name
                                     if view.session["image"] else ""))
    used = " + ".join(w for w, given in (("image", source is not None), ("barcode", demo_text is not None))
                      if given)
    count = f"{len(predictions)} model{'s' * (len(predictions) > 1)}"
    # The status says what the main model's table says: its verdict (Prediction.verdict) and agreement.
    answered = main.verdict[1] is not None
    view.status = status_line(
        "ok" if answered else "info",
        f"Identified from the {used} with {count}. {main_name}: {verdict_text(main)} {agreement_text(main)}")
    if engine.data_kind(main_name) == "synthetic":
        view.status += " (Synthetic demo: invented names.)"
    if coi is not None:
        view.status += f" Barcode: {coi.status.split(' ', 1)[1]}"
    view.status += unused + _typed_note(engine, names, predictions)
    return view


def _typed_note(engine: Engine, names: Sequence[str], predictions: Mapping[str, Prediction]) -> str:
    """What the typed candidate names did: which models ranked only them, which could not."""
    if not names:
        return ""
    used = [n for n in predictions if engine.ranks_typed_names(n)]
    kept = [n for n in predictions if not engine.ranks_typed_names(n)]
    note = f" Ranked only your {len(names)} typed name{'s' * (len(names) > 1)}"
    note += f" ({', '.join(used)})." if used else ": no model here can rank typed names."
    if kept:
        note += f" {', '.join(kept)} cannot (hyperbolic: it ranks its own candidate names only)."
    return note


def source_path(image: Any) -> str | None:
    """The server-side path of an uploaded image (kept in the session for the noise path), if it has one."""
    if isinstance(image, Mapping):
        return image.get("path")
    if isinstance(image, (str, Path)):
        return str(image)
    return None


def role_note(engine: Engine, name: str) -> str:
    """The subtitle of a model's answers: main or compared model, and its training objective."""
    objective = str(getattr(engine.bundles[name], "objective", "") or "")
    role = "main model" if name == engine.primary else "compared model"
    return f"{role}, trained as {objective}" if objective else role


def input_message(err: Exception) -> str:
    """A refused input's message for the page, starting with what was refused."""
    what = "Barcode" if isinstance(err, BarcodeError) else "Input"
    message = str(err) or type(err).__name__
    return f"{what} refused: {message[0].upper()}{message[1:]}"


def refused(engine: Engine, message: str) -> IdentifyView:
    """The view of a refused input: the message, and every output reset to its empty state."""
    return IdentifyView(
        ok=False, status=status_line("error", message), barcode=barcode_html(None, None, []),
        gate=figures.gate_figure(None, title=f"Fusion gate ({engine.primary})"),
        results={name: result_html(name, None, note=role_note(engine, name), data=engine.data_kind(name),
                                   image=engine.image_trained(name)) for name in engine.names},
        bars=figures.empty_figure("identify a specimen to see its scores"), coi_html=empty_coi_html(engine),
    )


def score_chart(engine: Engine, session: Mapping[str, Any] | None, level: str) -> go.Figure:
    """The main model's top names at ``level`` for every query of the last identification, as bars."""
    levels = ((session or {}).get("levels") or {}).get(engine.primary)
    if not levels:
        return figures.empty_figure("identify a specimen to see its scores")
    if level not in LEVELS:
        return figures.empty_figure(f"unknown level {level!r}")
    return figures.prediction_bars(levels, level, title=f"{engine.primary}: top {level} names per query")


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
    """Each bundle's reference map of ``space`` coloured by ``colour_by``, with the last query placed on it.

    With ``show_path`` the query is re-embedded at rising noise strengths (:data:`DEFAULT_STRENGTHS` times the
    current noise, or the paper's noise and a visible blur when the controls are at zero) and the path drawn.
    Returns a status line and the figures.
    """
    session = session or {}
    space = space if space in MAP_SPACES else MAP_SPACES[0]
    colour_by = colour_by if colour_by in COLOUR_LEVELS else COLOUR_LEVELS[0]
    notes, maps = [], {}
    for name in engine.names:
        title = f"{name}: {space} space, coloured by {colour_by}"
        reference = engine.bundles[name].reference
        disk = is_lorentz(engine, name)
        # A hyperbolic model shows its Poincare disk; a Euclidean one its UMAP layout.
        layout = (getattr(reference, "poincare", None) or {}).get(space) if disk else engine.layouts(name).get(space)
        if layout is None:
            untrained = space == "fused" and not trained_fusion(engine.bundles[name])
            why = " (its fusion was never trained)" if untrained else ""
            maps[name] = figures.empty_figure(f"{name} has no {space} space map{why}", title=title, height=520)
            continue
        query = path = labels = None
        z = ((session.get("embeddings") or {}).get(name) or {}).get(space)
        reference_map = engine.predictor(name).reference_map
        kind = "poincare" if disk else "umap"
        if z is not None and reference_map is not None:
            query = reference_map.place(np.asarray(z, dtype=np.float32), space, layout=kind)
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
                          path_labels=labels)
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
        reference = engine.bundles[name].reference
        drift = specimen_drift(clean[0], np.asarray(z, dtype=np.float32), reference.embeddings[space][rows],
                               reference.labels[rows])
        lines.append(f"**{name}** ({space} space): {describe_drift(drift)}")
    return "\n\n".join(lines)


def hierarchy_tables(engine: Engine) -> str:
    """Each bundle's hierarchy-consistency numbers from its evaluation, as Markdown with what each column means."""
    tables = [hierarchy_markdown(name, getattr(engine.bundles[name], "eval_results", None),
                                 fusion=trained_fusion(engine.bundles[name])) for name in engine.names]
    return "\n\n".join([*tables, "\n".join(f"- {line}" for line in HIERARCHY_EXPLANATIONS)])


def robustness(engine: Engine, level: str) -> tuple[go.Figure, go.Figure]:
    """Accuracy against DNA noise and against blur, averaged vs gated fusion, for every bundle."""
    level = level if level in SWEEP_LEVELS else "species"
    sweeps = engine.sweeps()
    return (
        figures.robustness_figure(sweeps, "dna", level, queries=("dna", "avg", "fused"),
                                  title=f"Top-1 {level} accuracy as DNA noise rises"),
        figures.robustness_figure(sweeps, "blur", level, queries=("image", "avg", "fused"),
                                  title=f"Top-1 {level} accuracy as image blur rises"),
    )


def sweep_coverage(engine: Engine) -> str:
    """In plain words, how far the evaluation sweeps reach compared with what the Identify sliders allow.

    The sweeps are measured offline at a few strengths; the curves stop at the last one rather than guess
    beyond it, so this says where the sliders go further than any measurement.
    """
    measured = {kind: sorted({float(r["strength"]) for records in engine.sweeps().values() for r in records
                              if r.get("kind") == kind and "strength" in r}) for kind in ("dna", "blur")}
    lines = []
    if measured["blur"]:
        top = measured["blur"][-1]
        lines.append(f"Blur: measured at kernels {', '.join(f'{k:g}' for k in measured['blur'])} px; the Identify "
                     f"slider goes to {engine.blur_limit()} px" + (f", so nothing beyond {top:g} px was measured."
                                                                     if top < engine.blur_limit() else "."))
    if measured["dna"]:
        top = measured["dna"][-1]
        reach = {field: limit / getattr(PAPER_NOISE, field) for field, _, limit, _ in DNA_SLIDERS
                 if getattr(PAPER_NOISE, field) > 0}
        lines.append(f"DNA noise: strength k means every one of the paper's rates times k, measured up to {top:g}x; "
                     f"the Identify sliders move one rate at a time, each up to {min(reach.values()):.0f}x to "
                     f"{max(reach.values()):.0f}x its paper rate, so a slider past {top:g}x its paper rate is "
                     "beyond what was measured.")
    if not lines:
        return "No model here was evaluated with a noise sweep, so there are no curves to show."
    return "\n\n".join(lines)


def eval_tables(engine: Engine) -> str:
    """Each bundle's evaluation tables (clean and noisy conditions) as Markdown."""
    from hirviz.bundle import eval_markdown

    parts = []
    for name in engine.names:
        results = getattr(engine.bundles[name], "eval_results", None)
        parts.append(f"### {name}\n\n{eval_markdown(results)}")
    return "\n\n".join(parts)


# ------------------------------------------------------------------------------------------------ examples


def read_examples(examples_dir: str | Path | None) -> tuple[list[list[str]], list[str]]:
    """Example specimens from ``examples.tsv`` (columns ``image_file``, ``barcode``, ``taxonomy``).

    Returns the examples as ``[image path, barcode]`` rows and their labels (taxonomy strings); rows whose
    image file is missing keep their barcode only. A missing folder gives no examples.
    """
    if examples_dir is None:
        return [], []
    table = Path(examples_dir) / "examples.tsv"
    if not table.is_file():
        logger.warning("no examples table at %s", table)
        return [], []
    frame = pd.read_csv(table, sep="\t", dtype=str, keep_default_na=False)
    rows, labels = [], []
    for record in frame.to_dict("records"):
        image_file = record.get("image_file", "")
        path = Path(examples_dir) / image_file if image_file else None
        image = str(path) if path is not None and path.is_file() else None
        barcode = record.get("barcode") or None
        if image is None and barcode is None:
            continue
        rows.append([image, barcode])
        labels.append(record.get("taxonomy") or image_file or f"example {len(rows)}")
    return rows, labels
