"""The Plate tab: several specimen photos at once (a plate of wells) -> one table, one row per photo.

Each photo goes through the single-photo path (:func:`hirviz.ui.engine.image_source`, :func:`hirviz.predict.
load_image` and :meth:`hirviz.ui.engine.Engine.predict`) with one photo model, without noise. A row gives the file
name, the answer at each rank (or "no confident match" when the model abstains), the deepest rank its evidence
supports with that name's score, and what is wrong with the photo. A file that cannot be read gets a row saying
why; the rest of the plate is still identified. The table's top-k and rank controls re-render it from the kept
predictions; the CSV (:func:`plate_rows`, written by :func:`hirviz.ui.result_csv.write_csv`) holds every rank.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from hirviz.predict import INPUT_ERRORS, Prediction, load_image
from hirviz.taxonomy import LEVELS
from hirviz.ui.engine import MAX_TOP_K, Engine, NoiseSettings, image_source
from hirviz.ui.render import RANK_CHOICES, input_message, plain_reason, shown_ranks, status_line, top_k_value
from hirviz.ui.result_csv import write_csv

__all__ = ["PLATE_API_NAMES", "PLATE_COLUMNS", "MAX_PLATE_PHOTOS", "NO_MATCH", "PlateEntry", "PlateResult",
           "identify_plate", "plate_frame", "plate_rows", "plate_summary", "PlateTab", "plate_tab", "wire_plate"]

logger = logging.getLogger(__name__)

PLATE_API_NAMES: tuple[str, ...] = ("identify_plate", "show_plate")
# A 96-well plate, the usual unit of bulk specimen imaging; more photos than this wait too long on a shared CPU.
MAX_PLATE_PHOTOS = 96
NO_MATCH = "no confident match"
# The CSV: one row per photo, the top name and its score at every rank.
PLATE_COLUMNS: tuple[str, ...] = ("file_name", "model", *[c for lvl in LEVELS for c in (lvl, f"{lvl}_score")],
                                  "deepest_rank", "abstained", "warnings")


@dataclass
class PlateEntry:
    """One photo of a plate: its file name and prediction, or ``None`` and why it could not be identified."""

    file_name: str
    prediction: Prediction | None = None
    error: str = ""


@dataclass
class PlateResult:
    """The photos of one plate, identified by ``model``."""

    model: str = ""
    entries: list[PlateEntry] = field(default_factory=list)


def plate_paths(files: Any) -> list[Any]:
    """The uploaded files as a list (Gradio sends a list of paths or file payloads; ``None`` when empty)."""
    if files is None:
        return []
    return list(files) if isinstance(files, (list, tuple)) else [files]


def _file_name(upload: Any, number: int) -> str:
    path = (upload.get("orig_name") or upload.get("path")) if isinstance(upload, Mapping) else upload
    return Path(str(path)).name if isinstance(path, (str, Path)) and str(path) else f"photo {number}"


def identify_plate(engine: Engine, files: Any, model: str | None = None,
                   progress: Callable[[int, int], None] | None = None) -> tuple[str, PlateResult]:
    """Identify every photo of ``files`` with the photo model ``model`` (the main one by default).

    Returns the status line and the :class:`PlateResult`; never raises on bad input: an unreadable file gets an
    entry with its message, and a plate that cannot be run at all an error status and no entries. ``progress``
    is called with (photos done, photos in all) after each photo.
    """
    photo_models = engine.photo_names()
    if not photo_models:
        return status_line("error", "None of the loaded models was trained on photos."), PlateResult()
    model = model if model in photo_models else photo_models[0]
    uploads = plate_paths(files)
    if not uploads:
        return status_line("error", "No photos: upload one or more specimen photos, then press Identify all photos."), \
            PlateResult(model)
    if len(uploads) > MAX_PLATE_PHOTOS:
        return status_line("error", f"{len(uploads)} files: upload at most {MAX_PLATE_PHOTOS} photos at once."), \
            PlateResult(model)
    result = PlateResult(model)
    for number, upload in enumerate(uploads, start=1):
        entry = PlateEntry(_file_name(upload, number))
        try:
            entry.prediction = engine.predict(model, load_image(image_source(upload)), None, NoiseSettings())
        except INPUT_ERRORS as err:
            entry.error = input_message(err)
        except Exception as err:  # one odd file must not lose the rest of the plate
            logger.exception("plate photo %s failed", entry.file_name)
            entry.error = f"Could not identify this file: {type(err).__name__}: {err}"
        result.entries.append(entry)
        if progress is not None:
            progress(number, len(uploads))
    return _status(engine, result), result


def plate_summary(entries: Sequence[PlateEntry]) -> dict[str, int]:
    """How many photos of a plate got an answer, no confident match, or could not be read."""
    unread = sum(e.prediction is None for e in entries)
    abstained = sum(e.prediction is not None and e.prediction.verdict[0] is None for e in entries)
    return {"answered": len(entries) - unread - abstained, "abstained": abstained, "unread": unread}


def _status(engine: Engine, result: PlateResult) -> str:
    count = plate_summary(result.entries)
    total = len(result.entries)
    text = (f"Identified {total - count['unread']} of {total} photos with {result.model}: {count['answered']} "
            f"answered, {count['abstained']} with no confident match, {count['unread']} could not be read.")
    if engine.data_kind(result.model) == "synthetic":
        text += " (Synthetic demo: invented names.)"
    return status_line("ok" if count["answered"] else "info", text)


def _answer(prediction: Prediction) -> tuple[Any, bool]:
    """The query whose answer a row shows (the verdict's; the first one when all abstain) and whether it did."""
    query = prediction.verdict[0]
    return prediction.queries[query or next(iter(prediction.queries))], query is None


def plate_frame(result: PlateResult | None, top_k: int = 1, rank: str | None = None) -> pd.DataFrame:
    """The plate as the page shows it: one row per photo with its ``top_k`` names (and scores) at the ranks of
    ``rank`` (:data:`~hirviz.ui.render.RANK_CHOICES`), the deepest supported rank, its score and warnings."""
    ranks, k = shown_ranks(rank), top_k_value(top_k)
    columns = ["photo", *ranks, "deepest rank", "score", "warnings"]
    rows = []
    for entry in result.entries if result is not None else []:
        if entry.prediction is None:
            rows.append([entry.file_name, *["–" for _ in ranks], "–", "", entry.error])
            continue
        answer, abstained = _answer(entry.prediction)
        if abstained:
            rows.append([entry.file_name, *[NO_MATCH for _ in ranks], NO_MATCH, "", plain_reason(answer.reason)])
            continue
        cells = ["; ".join(f"{name} ({score:.0%})" for name, score in answer.levels.get(level, [])[:k]) or "–"
                 for level in ranks]
        deepest = answer.deepest_rank
        score = f"{answer.levels[deepest][0][1]:.0%}" if deepest else ""
        rows.append([entry.file_name, *cells, deepest or "none (order uncertain)", score, ""])
    return pd.DataFrame(rows, columns=columns)


def plate_rows(result: PlateResult) -> list[dict[str, Any]]:
    """The plate for the CSV (columns :data:`PLATE_COLUMNS`): the top name and score at every rank per photo."""
    rows = []
    for entry in result.entries:
        row: dict[str, Any] = {"file_name": entry.file_name, "model": result.model}
        if entry.prediction is None:
            rows.append({**row, "abstained": True, "warnings": entry.error})
            continue
        answer, abstained = _answer(entry.prediction)
        for level in LEVELS:
            top = (answer.levels.get(level) or [("", None)])[0]
            row[level], row[f"{level}_score"] = ("", None) if abstained else top
        rows.append({**row, "deepest_rank": "" if abstained else answer.deepest_rank or "", "abstained": abstained,
                     "warnings": plain_reason(answer.reason) if abstained else ""})
    return rows


# ---------------------------------------------------------------------------------------------------- layout


@dataclass
class PlateTab:
    """The Plate tab's components."""

    files: gr.File
    model: gr.Dropdown
    run_button: gr.Button
    status: gr.Markdown
    top_k: gr.Slider
    rank: gr.Radio
    table: gr.Dataframe
    download: gr.File
    state: gr.State


def plate_tab(engine: Engine) -> PlateTab:
    """Lay out the Plate tab (inside ``gr.Tabs``)."""
    photo_models = engine.photo_names()
    with gr.Tab("Plate (several photos)", id="plate"):
        gr.Markdown(
            f"Upload the photos of a plate (up to {MAX_PLATE_PHOTOS}, any mix of JPEG, PNG, WebP, TIFF, BMP) and "
            "identify them all at once, each as on the Identify tab without noise. One row per photo: its answer "
            f"at each rank, or *{NO_MATCH}* when the evidence is out of the model's range, and what is wrong with "
            "a photo that could not be used. A file that is not an image gets a row saying so.")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2, min_width=300):
                files = gr.File(label="Specimen photos", file_count="multiple", type="filepath",
                                elem_id="hz-plate-files")
                model = gr.Dropdown(photo_models, value=photo_models[0] if photo_models else None,
                                    label="Photo model", visible=len(photo_models) > 1, elem_id="hz-plate-model")
                run_button = gr.Button("Identify all photos", variant="primary", elem_id="hz-plate-run",
                                       interactive=bool(photo_models))
            with gr.Column(scale=3, min_width=300):
                status = gr.Markdown("" if photo_models else "None of the loaded models was trained on photos.",
                                     elem_id="hz-plate-status")
                download = gr.File(label="Download the plate (CSV: every rank's top name and score per photo)",
                                   interactive=False, elem_id="hz-plate-download")
        with gr.Row():
            top_k = gr.Slider(1, MAX_TOP_K, value=1, step=1, label="Names per rank (top-k)",
                              elem_id="hz-plate-top-k")
            rank = gr.Radio(list(RANK_CHOICES), value=RANK_CHOICES[0], label="Ranks shown", elem_id="hz-plate-rank")
        table = gr.Dataframe(plate_frame(None), label="Plate", interactive=False, wrap=True, max_height=600,
                             elem_id="hz-plate-table")
        state = gr.State(PlateResult())
    return PlateTab(files, model, run_button, status, top_k, rank, table, download, state)


def wire_plate(engine: Engine, tab: PlateTab, guard: Callable[[int, Callable[..., tuple]], Callable[..., tuple]]
               ) -> None:
    """Wire the Plate tab (endpoints :data:`PLATE_API_NAMES`); ``guard`` wraps callbacks as the layout does."""

    def run_plate(files, model, top_k=1, rank=None,
                  progress=gr.Progress()):  # noqa: B008 (Gradio finds the progress bar by its default)
        """Identify every photo of a plate; returns the status, the table, its CSV and the kept result."""
        status, result = identify_plate(engine, files, model,
                                        lambda done, total: progress((done, total), desc="identifying photos"))
        if not result.entries:
            gr.Warning(status.split(" ", 1)[1])
            return status, plate_frame(None), None, result
        return status, plate_frame(result, top_k, rank), write_csv(plate_rows(result), PLATE_COLUMNS, "plate.csv"), \
            result

    def show_plate(result, top_k, rank):
        """The plate table again with other top-k / rank settings (no model runs)."""
        return plate_frame(result, top_k, rank)

    tab.run_button.click(guard(4, run_plate), [tab.files, tab.model, tab.top_k, tab.rank],
                         [tab.status, tab.table, tab.download, tab.state], api_name=PLATE_API_NAMES[0],
                         api_description="Identify several specimen photos at once (one row per photo).",
                         concurrency_limit=1, concurrency_id="plate")
    gr.on([tab.top_k.change, tab.rank.change], guard(1, show_plate), [tab.state, tab.top_k, tab.rank], tab.table,
          api_name=PLATE_API_NAMES[1], api_visibility="undocumented", trigger_mode="always_last", queue=False)

