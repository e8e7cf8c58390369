"""The app's callbacks as plain functions of an :class:`~hirviz.ui.engine.Engine`, called directly by the tests.

:func:`identify`, :func:`geometry`, :func:`score_chart` and :func:`robustness` return ready-to-show values
(HTML, plotly figures, data frames) and never raise on bad input: a message for the user comes back instead.
The Geometry and Robustness tabs' callbacks live in :mod:`hirviz.ui.geometry_tab` and
:mod:`hirviz.ui.robustness_tab` (re-exported here).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from PIL import Image

from hirviz import figures
from hirviz.coi_check import input_notes
from hirviz.predict import INPUT_ERRORS, Prediction, load_image
from hirviz.taxonomy import LEVELS
from hirviz.ui.coi_view import CoiView, empty_coi_html, hits_frame, identify_coi
from hirviz.ui.engine import (
    BARCODE_ROUTES,
    DEFAULT_TOP_K,
    Engine,
    NoiseSettings,
    barcode_text,
    image_source,
    trained_fusion,
    typed_names,
)
from hirviz.ui.geometry_tab import PATH_CAPTION, drift_text, generality, geometry, is_lorentz, map_consistency  # noqa: F401
from hirviz.ui.render import (
    agreement_text,
    barcode_html,
    input_message,
    neighbours_frame,
    result_html,
    status_line,
    top_k_value,
    verdict_text,
)
from hirviz.ui.result_csv import result_rows, write_csv
from hirviz.ui.robustness_tab import eval_tables, hierarchy_tables, robustness, sweep_coverage  # noqa: F401

__all__ = ["IdentifyView", "identify", "result_views", "refused", "source_path", "score_chart", "geometry",
           "generality", "drift_text", "map_consistency", "robustness", "sweep_coverage", "PATH_CAPTION", "hierarchy_tables",
           "eval_tables", "read_examples", "input_message", "role_note"]

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
    top_k: int = DEFAULT_TOP_K,
    rank: str | None = None,
) -> IdentifyView:
    """Identify one specimen with every bundle; never raises on bad input (``ok=False`` and a message instead).

    ``image`` is an upload (Gradio file payload or path) or an image; ``barcode`` pasted text (raw or FASTA).
    ``route`` says where the barcode goes (:data:`~hirviz.ui.engine.BARCODE_ROUTES`: ``"real"``, the COI bundle's
    identification engine; ``"demo"``, the photo models; ``"both"``); the default is the COI bundle when there is
    one. A photo always goes to the photo models. ``level`` picks the score chart's level. The maps are drawn by
    :func:`geometry` from the returned ``session`` (the Geometry tab does it when opened, so that a request does
    not pay for maps nobody looks at). ``candidates``: typed taxonomy strings, one per line (:func:`typed_names`);
    when given, each Euclidean model ranks only those (zero-shot) and the status says which models could not.
    ``top_k`` and ``rank`` say what the result tables show (:func:`result_views`); the CSV holds everything.
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
    view.results, view.neighbours = result_views(engine, predictions, top_k, rank)
    view.session = {
        "image": source_path(image) if source is not None else None,
        "barcode": text,
        "noise": {"blur_kernel": noise.blur_kernel, "dna": asdict(noise.dna), "seed": noise.seed},
        "levels": {name: {q: r.levels for q, r in p.queries.items()} for name, p in predictions.items()},
        "embeddings": {name: {q: r.embedding.tolist() for q, r in p.queries.items()}
                       for name, p in predictions.items()},
    }
    view.bars = score_chart(engine, view.session, level, top_k)
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


def result_views(engine: Engine, predictions: Mapping[str, Prediction], top_k: int = DEFAULT_TOP_K,
                 rank: str | None = None) -> tuple[dict[str, str], pd.DataFrame]:
    """Every model's result table and the main model's neighbours, showing ``top_k`` names (neighbours) and the
    ranks of ``rank`` (:data:`~hirviz.ui.render.RANK_CHOICES`). Called again when those controls change: the
    predictions hold :data:`~hirviz.ui.engine.MAX_TOP_K` of each, so no model runs again."""
    results = {name: result_html(name, predictions.get(name), note=role_note(engine, name),
                                 fusion=trained_fusion(engine.bundles[name]), data=engine.data_kind(name),
                                 image=engine.image_trained(name), top_k=top_k, rank=rank)
               for name in engine.names}
    main = predictions.get(engine.primary) or next(iter(predictions.values()), None)
    return results, neighbours_frame(main, top_k, rank)


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


def refused(engine: Engine, message: str) -> IdentifyView:
    """The view of a refused input: the message, and every output reset to its empty state."""
    return IdentifyView(
        ok=False, status=status_line("error", message), barcode=barcode_html(None, None, []),
        gate=figures.gate_figure(None, title=f"Fusion gate ({engine.primary})"),
        results={name: result_html(name, None, note=role_note(engine, name), data=engine.data_kind(name),
                                   image=engine.image_trained(name)) for name in engine.names},
        bars=figures.empty_figure("identify a specimen to see its scores"), coi_html=empty_coi_html(engine),
    )


def score_chart(engine: Engine, session: Mapping[str, Any] | None, level: str, top_k: int = DEFAULT_TOP_K
                ) -> go.Figure:
    """The main model's ``top_k`` names at ``level`` for every query of the last identification, as bars."""
    levels = ((session or {}).get("levels") or {}).get(engine.primary)
    if not levels:
        return figures.empty_figure("identify a specimen to see its scores")
    if level not in LEVELS:
        return figures.empty_figure(f"unknown level {level!r}")
    k = top_k_value(top_k)
    shown = {query: {lvl: ranked[:k] for lvl, ranked in by_level.items()} for query, by_level in levels.items()}
    return figures.prediction_bars(shown, level, title=f"{engine.primary}: top {level} names per query")


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
