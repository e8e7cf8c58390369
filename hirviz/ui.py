"""The Gradio app: identify a specimen, see where it lies among the reference specimens, read the robustness curves.

:func:`build_ui` lays out the Blocks; the work is done by plain functions of an :class:`Engine` (the loaded
bundles) that the tests call directly: :func:`identify`, :func:`geometry`, :func:`score_chart` and
:func:`robustness`. Each returns ready-to-show values (HTML, plotly figures, data frames) and never raises on
bad input: a message for the user comes back instead, and the Gradio wrappers also show it as a warning.

The first bundle is the main model (CLIBD-HiR-Fuse in the demo); any others (the CLIBD baseline) are answered
beside it. Every event has an ``api_name``, so the app can be driven from ``gradio_client``.
"""

from __future__ import annotations

import base64
import functools
import html
import io
import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np
import pandas as pd
import plotly.graph_objects as go
from PIL import Image

from hirviz import figures
from hirviz.barcode import BarcodeError
from hirviz.degrade import DnaNoise, Edit
from hirviz.noise_path import DEFAULT_STRENGTHS, noise_path
from hirviz.predict import (
    INPUT_ERRORS, MAX_IMAGE_PIXELS, QUERIES, InputError, Prediction, Predictor, agreement, load_image,
)
from hirviz.taxonomy import LEVELS

__all__ = [
    "API_NAMES",
    "CSS",
    "Engine",
    "NoiseSettings",
    "IdentifyView",
    "build_ui",
    "identify",
    "geometry",
    "score_chart",
    "robustness",
    "barcode_html",
    "image_html",
    "result_html",
    "neighbours_frame",
    "read_examples",
    "refused",
    "trained_fusion",
]

logger = logging.getLogger(__name__)

# The names of the app's endpoints (``gradio_client``: ``client.predict(..., api_name="/identify")``).
API_NAMES: tuple[str, ...] = (
    "identify", "identify_example", "paper_noise", "identify_paper_noise", "no_noise", "identify_no_noise",
    "geometry", "score_chart", "robustness",
)
MAX_BARCODE_BP = 20_000  # hirviz.barcode.parse_barcode's default limit
MAP_SPACES: tuple[str, ...] = ("fused", "image", "dna")
COLOUR_LEVELS: tuple[str, ...] = ("order", "family", "genus")
SWEEP_LEVELS: tuple[str, ...] = (*LEVELS, "global")
# Each DNA degradation as a slider: (DnaNoise field, label, slider maximum, step). The defaults shown are
# the paper's rates (METHOD.md section 7), read from DnaNoise so they cannot drift apart.
DNA_SLIDERS: tuple[tuple[str, str, float, float], ...] = (
    ("substitution", "Substitution rate", 0.2, 0.001),
    ("n_mask", "N-masking rate", 0.2, 0.001),
    ("insertion", "Insertion rate", 0.05, 0.001),
    ("deletion", "Deletion rate", 0.05, 0.001),
    ("n_run", "N-run dropout (fraction of length)", 0.5, 0.01),
    ("truncation", "Tail truncation (fraction cut)", 0.5, 0.01),
)
PAPER_NOISE = DnaNoise()
EDIT_STYLES: dict[str, tuple[str, str]] = {  # kind -> (css class, legend text)
    "substitution": ("hz-sub", "substitution"),
    "mask": ("hz-mask", "masked to N"),
    "insertion": ("hz-ins", "insertion"),
    "deletion": ("hz-del", "deletion (bar before the next base)"),
    "n_run": ("hz-nrun", "N-run dropout"),
    "truncation": ("hz-trunc", "truncated tail (not seen by the model)"),
}

CSS = """
.hz-result { font-size: 13px; }
.hz-result h4 { margin: 4px 0 6px; font-size: 15px; }
.hz-result .hz-sub-title { color: #555; font-weight: normal; font-size: 12px; }
.hz-table { border-collapse: collapse; width: 100%; table-layout: fixed; font-size: 12px; }
.hz-table th, .hz-table td { border: 1px solid #e3e3e3; padding: 4px 5px; vertical-align: top; text-align: left; }
.hz-table thead th { background: #f6f6f6; }
.hz-table th.hz-level { width: 68px; font-weight: 600; }
.hz-table ul { margin: 0; padding: 0; list-style: none; }
.hz-table li { margin: 0 0 3px; overflow-wrap: break-word; line-height: 1.25; }
.hz-table li:first-child { font-weight: 600; }
.hz-level div { font-weight: 600; font-size: 11px; margin-top: 2px; }
.hz-score { color: #666; font-variant-numeric: tabular-nums; white-space: nowrap; }
.hz-bar { height: 3px; background: #d62728; opacity: .55; margin-top: 1px; }
.hz-na { color: #999; font-style: italic; }
.hz-yes { color: #1a7f37; font-weight: 600; }
.hz-no { color: #c4320a; font-weight: 600; }
.hz-deepest td, .hz-deepest th { background: #fbfbf4; }
.hz-seq { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; line-height: 1.7;
          word-break: break-all; background: #fafafa; border: 1px solid #eee; padding: 6px 8px; border-radius: 4px; }
.hz-sub { background: #ffb347; }
.hz-mask { background: #b9b9b9; }
.hz-ins { background: #7ddc7d; }
.hz-nrun { background: #d3b8ff; }
.hz-trunc { color: #bbb; text-decoration: line-through; }
.hz-del { border-left: 2px solid #d62728; margin: 0 1px; }
.hz-legend span { display: inline-block; margin-right: 10px; padding: 0 4px; font-size: 12px; }
.hz-summary { font-size: 12px; color: #555; margin: 4px 0; }
.hz-figure { margin: 0; text-align: center; }
.hz-figure img { max-width: 100%; height: auto; image-rendering: pixelated; border: 1px solid #eee; }
.hz-figure figcaption { font-size: 12px; color: #555; }
/* No soft wrapping in the barcode box: wrapping one pasted line of 100 kb freezes a browser for seconds. */
#hz-barcode textarea { white-space: pre; overflow-x: auto; font-family: ui-monospace, Menlo, Consolas, monospace; }
"""


# ----------------------------------------------------------------------------------------------------- engine


class Engine:
    """The app's models: one :class:`~hirviz.predict.Predictor` (with its reference map) per bundle.

    ``bundles`` maps a display name to a loaded bundle, main model first. Predictors are built on first use
    (or by :meth:`warm_up`) and shared by every user of the app.
    """

    def __init__(self, bundles: Mapping[str, Any]) -> None:
        if not bundles:
            raise ValueError("the app needs at least one bundle")
        self.bundles: dict[str, Any] = dict(bundles)
        self.names: list[str] = list(self.bundles)
        self.primary: str = self.names[0]
        self._predictors: dict[str, Predictor] = {}
        self._lock = threading.Lock()

    def predictor(self, name: str) -> Predictor:
        """The predictor of one bundle (built once)."""
        if name not in self._predictors:
            with self._lock:
                if name not in self._predictors:
                    self._predictors[name] = self.bundles[name].predictor()
        return self._predictors[name]

    def warm_up(self) -> None:
        """Build every model and neighbour index and run one small prediction, before the first user comes.

        No UMAP is fitted: the maps are the bundles' precomputed layouts and queries are placed by neighbours.
        """
        probe = Image.new("RGB", (64, 64), "white")
        for name in self.names:
            predictor = self.predictor(name)
            if predictor.reference_map is not None:
                predictor.reference_map.warm_up()
            predictor.predict(image=probe, barcode="ACGT" * 100, neighbours=1)

    def blur_limit(self) -> int:
        """The largest blur kernel every model accepts (the side of the smallest model input grid)."""
        return min(max(self.predictor(name).model.image_size) for name in self.names)

    def default_blur(self) -> int:
        """A clearly visible blur for the main model."""
        return self.predictor(self.primary).default_blur_kernel()

    def map_spaces(self) -> list[str]:
        """The map spaces any bundle has a layout for, in :data:`MAP_SPACES` order."""
        have = set()
        for name in self.names:
            have.update(self.layouts(name))
        return [s for s in MAP_SPACES if s in have]

    def layouts(self, name: str) -> dict[str, np.ndarray]:
        """A bundle's precomputed map layouts, without the fused one when its fusion was never trained."""
        layouts = dict(getattr(self.bundles[name].reference, "layouts", None) or {})
        if not trained_fusion(self.bundles[name]):
            layouts.pop("fused", None)
        return layouts

    def predict(self, name: str, image: Any, barcode: str | None, noise: NoiseSettings) -> Prediction:
        """One bundle's prediction; a model without trained fusion loses its meaningless fused query."""
        prediction = self.predictor(name).predict(
            image=image, barcode=barcode, blur_kernel=noise.blur_kernel if image is not None else 0,
            dna_noise=noise.dna_or_none if barcode is not None else None, seed=noise.seed)
        if "fused" in prediction.queries and not trained_fusion(self.bundles[name]):
            del prediction.queries["fused"]
            prediction.agreement = agreement({q: r.levels for q, r in prediction.queries.items()})
            prediction.gate = prediction.gate_vector = None
        return prediction

    def sweeps(self) -> dict[str, list[dict[str, Any]]]:
        """Each bundle's accuracy-versus-noise sweep records (empty lists where not evaluated)."""
        return {name: _sweep_records(getattr(self.bundles[name], "eval_results", None)) for name in self.names}


def trained_fusion(bundle: Any) -> bool:
    """Whether a bundle's gated fusion was trained (:attr:`hirviz.bundle.Bundle.fusion_trained`).

    Other models still carry a fusion head, but its gate is untrained, so their fused query and fused map mean
    nothing; the app leaves them out rather than show noise as an answer.
    """
    return bool(getattr(bundle, "fusion_trained", True))


def _sweep_records(results: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    sweep = (results or {}).get("sweep")
    if isinstance(sweep, Mapping):  # tolerate {"records": [...]}
        sweep = sweep.get("records")
    return [r for r in sweep or [] if isinstance(r, Mapping)]


# ------------------------------------------------------------------------------------------- input handling


@dataclass(frozen=True)
class NoiseSettings:
    """The noise controls: blur kernel (pixels on the model's input grid), DNA rates and the seed."""

    blur_kernel: int = 0
    dna: DnaNoise = field(default_factory=DnaNoise.off)
    seed: int = 0

    @classmethod
    def from_controls(cls, blur_kernel: Any, rates: Sequence[Any], seed: Any) -> NoiseSettings:
        """Read the raw widget values (numbers, numeric strings or None); raise :class:`InputError` if unusable."""
        blur = _whole_number(blur_kernel, "the blur kernel")
        seed_value = _whole_number(seed, "the seed")
        values = {}
        for (name, label, _, _), value in zip(DNA_SLIDERS, rates, strict=True):
            number = _number(value, label.lower())
            if not 0.0 <= number <= 1.0:
                raise InputError(f"{label.lower()} must be between 0 and 1, got {number:g}")
            values[name] = number
        return cls(blur, DnaNoise(**values), seed_value)

    @property
    def dna_or_none(self) -> DnaNoise | None:
        """The DNA noise, or ``None`` when it changes nothing (the barcode is used as given)."""
        return None if self.dna.is_off() else self.dna


def _number(value: Any, what: str) -> float:
    if value is None or value == "":
        return 0.0
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a number, got {value!r}") from None
    if not np.isfinite(number):
        raise InputError(f"{what} must be a finite number, got {value!r}")
    return number


def _whole_number(value: Any, what: str) -> int:
    number = _number(value, what)
    if number < 0 or number != int(number):
        raise InputError(f"{what} must be a whole number >= 0, got {value!r}")
    return int(number)


def _image_source(value: Any) -> Any:
    """The uploaded image as something :func:`hirviz.predict.load_image` reads, or ``None`` for no image.

    The image input skips Gradio's own decoding (which fails on exactly the files users need a message
    about), so it arrives as Gradio's file payload (a dict with ``path``), a path, or, from Python, an image.
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, Mapping):
        path = value.get("path")
        if not path:
            raise InputError("the uploaded image did not arrive: upload it again")
        return path
    if isinstance(value, (str, Path, Image.Image, np.ndarray, bytes, bytearray)):
        return value
    raise InputError(f"cannot read an image from a {type(value).__name__}")


def _barcode_text(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise InputError(f"the barcode must be text, got {type(value).__name__}")
    return value if value.strip() else None


# ------------------------------------------------------------------------------------------------ rendering


def _query_label(query: str) -> str:
    return figures.QUERY_LABELS.get(query, query)


def _needs(query: str, fusion: bool = True) -> str:
    if query == "fused" and not fusion:
        return "no trained fusion in this model"
    return {"image": "needs an image", "dna": "needs a barcode"}.get(query, "needs an image and a barcode")


def result_html(name: str, prediction: Prediction | None, *, note: str = "", fusion: bool = True) -> str:
    """One model's answers as an HTML table: levels down, the four queries across, and their agreement.

    Each cell lists the top names with their scores (a rank's score sums its descendants' probabilities); the
    last row gives the deepest rank each query's evidence supports. ``fusion=False`` says that the model has
    no trained fusion (its fused column explains that instead of asking for inputs).
    """
    subtitle = f" <span class='hz-sub-title'>{html.escape(note)}</span>" if note else ""
    title = f"<h4>{html.escape(name)}{subtitle}</h4>"
    if prediction is None:
        return f"<div class='hz-result'>{title}<p class='hz-na'>No prediction yet.</p></div>"
    gate = ""
    if prediction.gate is not None:
        gate = f" · gate: image {prediction.gate:.0%} / DNA {1 - prediction.gate:.0%}"
    head = "".join(f"<th>{html.escape(_query_label(q))}</th>" for q in QUERIES)
    rows = []
    several = len(prediction.queries) > 1
    for level in LEVELS:
        cells = []
        for query in QUERIES:
            result = prediction.queries.get(query)
            if result is None:
                cells.append(f"<td class='hz-na'>{_needs(query, fusion)}</td>")
                continue
            items = "".join(
                f"<li>{html.escape(n)}&nbsp;<span class='hz-score'>{s:.1%}</span>"
                f"<div class='hz-bar' style='width:{max(0.0, min(1.0, s)) * 100:.0f}%'></div></li>"
                for n, s in result.levels.get(level, [])
            )
            cells.append(f"<td><ul>{items}</ul></td>" if items else "<td class='hz-na'>no candidate this deep</td>")
        mark = ""
        if several:
            agree = prediction.agreement.get(level)
            mark = ("<div class='hz-yes' title='every query gives the same top name'>✓ agree</div>" if agree else
                    "<div class='hz-no' title='the queries give different top names'>✗ differ</div>")
        rows.append(f"<tr><th class='hz-level'>{level}{mark}</th>{''.join(cells)}</tr>")
    deepest = "".join(
        f"<td>{html.escape(r.deepest_rank or 'none (order uncertain)')}</td>" if (r := prediction.queries.get(q))
        else "<td class='hz-na'>–</td>"
        for q in QUERIES
    )
    rows.append(f"<tr class='hz-deepest'><th class='hz-level'>deepest supported</th>{deepest}</tr>")
    return (
        f"<div class='hz-result'>{title}<div class='hz-summary'>{_agreement_text(prediction)}{gate}</div>"
        f"<table class='hz-table'><thead><tr><th class='hz-level'>level</th>{head}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _agreement_text(prediction: Prediction) -> str:
    if len(prediction.queries) < 2:
        return f"One query ({_query_label(next(iter(prediction.queries)))})."
    agree = [lvl for lvl in LEVELS if prediction.agreement.get(lvl)]
    differ = [lvl for lvl in LEVELS if not prediction.agreement.get(lvl)]
    if not differ:
        return f"All {len(prediction.queries)} queries agree at every level."
    if not agree:
        return f"The {len(prediction.queries)} queries disagree at every level."
    return f"The {len(prediction.queries)} queries agree at {', '.join(agree)}; they differ at {', '.join(differ)}."


def barcode_html(clean: str | None, degraded: str | None, edits: Sequence[Edit]) -> str:
    """The barcode the model saw, each change coloured by kind (legend included).

    ``degraded`` is ``None`` when no DNA noise was applied; the truncated tail is shown struck through after
    the kept bases, and a deletion as a red bar just before the base that followed the deleted one.
    """
    if clean is None:
        return "<div class='hz-summary'>No barcode given.</div>"
    if degraded is None:
        return (f"<div class='hz-summary'>Barcode: {len(clean)} bp, used as given (no DNA noise).</div>"
                f"<div class='hz-seq'>{html.escape(clean)}</div>")
    tail = "".join(e.before for e in edits if e.kind == "truncation")
    full = degraded + tail
    classes = np.full(len(full), "", dtype=object)
    titles = np.full(len(full), "", dtype=object)
    deleted: dict[int, list[str]] = {}
    for edit in edits:
        css = EDIT_STYLES.get(edit.kind, ("", ""))[0]
        if edit.kind == "deletion":
            deleted.setdefault(edit.position, []).append(edit.before)
        elif edit.kind in ("substitution", "mask"):
            classes[edit.position], titles[edit.position] = css, f"{edit.before}→{edit.after} at {edit.position + 1}"
        elif edit.kind == "insertion":
            classes[edit.position], titles[edit.position] = css, f"inserted {edit.after} at {edit.position + 1}"
        elif edit.kind == "n_run":
            classes[edit.position: edit.position + edit.length] = css
            titles[edit.position: edit.position + edit.length] = f"N run of {edit.length} bp"
        elif edit.kind == "truncation":
            classes[edit.position:] = css
            titles[edit.position:] = f"cut off ({len(tail)} bp)"
    parts: list[str] = []
    start = 0
    # Runs of equal style become one span: a 660 bp barcode is a handful of spans, not 660.
    for i in range(1, len(full) + 1):
        if i == len(full) or classes[i] != classes[start] or titles[i] != titles[start] or i in deleted:
            text = html.escape(full[start:i])
            parts.append(f"<span class='{classes[start]}' title='{html.escape(titles[start])}'>{text}</span>"
                         if classes[start] else text)
            start = i
        if i in deleted and i < len(full) + 1:
            parts.append(f"<span class='hz-del' title='deleted {''.join(deleted[i])}'></span>")
    if 0 in deleted:
        parts.insert(0, f"<span class='hz-del' title='deleted {''.join(deleted[0])}'></span>")
    counts = Counter(e.kind for e in edits)
    legend = "".join(
        f"<span class='{css}'>{label}: {counts.get(kind, 0)}</span>" for kind, (css, label) in EDIT_STYLES.items()
    )
    summary = f"Barcode: {len(clean)} bp given, {len(degraded)} bp seen by the model after the noise."
    return (f"<div class='hz-summary'>{summary}</div><div class='hz-legend'>{legend}</div>"
            f"<div class='hz-seq'>{''.join(parts)}</div>")


def neighbours_frame(prediction: Prediction | None) -> pd.DataFrame:
    """The nearest reference specimens of every query: rank, id, taxonomy and cosine similarity."""
    columns = ["query", "#", "specimen", *LEVELS, "similarity"]
    rows = []
    for query in QUERIES:
        result = prediction.queries.get(query) if prediction is not None else None
        for rank, hit in enumerate(result.neighbours if result is not None else [], start=1):
            ranks = hit.get("ranks") or {}
            rows.append([_query_label(query), rank, hit.get("id", ""), *[ranks.get(lvl) or "–" for lvl in LEVELS],
                         round(float(hit.get("similarity", float("nan"))), 4)])
    return pd.DataFrame(rows, columns=columns)


def image_html(image: Image.Image | None, caption: str = "What the image model sees (after blur)") -> str:
    """An image inlined as a data URL: no file is written, and concurrent requests cannot race on one."""
    if image is None:
        return f"<div class='hz-summary'>{html.escape(caption)}: no image given.</div>"
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return (f"<figure class='hz-figure'><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}' "
            f"width='{image.width}' height='{image.height}'><figcaption>{html.escape(caption)}</figcaption></figure>")


def _status(kind: str, message: str) -> str:
    icon = {"ok": "✓", "error": "✗", "info": "→"}[kind]
    return f"{icon} {message}"


# -------------------------------------------------------------------------------------------- the callbacks


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


def identify(
    engine: Engine,
    image: Any,
    barcode: Any,
    noise: NoiseSettings | None = None,
    *,
    level: str = "species",
) -> IdentifyView:
    """Identify one specimen with every bundle; never raises on bad input (``ok=False`` and a message instead).

    ``image`` is an upload (Gradio file payload or path) or an image; ``barcode`` pasted text (raw or FASTA).
    ``level`` picks the score chart's level. The maps are drawn by :func:`geometry` from the returned
    ``session`` (the Geometry tab does it when opened, so that a request does not pay for maps nobody looks at).
    """
    noise = noise or NoiseSettings()
    try:
        source, text = _image_source(image), _barcode_text(barcode)
        if source is None and text is None:
            return refused(engine, "Nothing to identify: upload a specimen photo and/or paste its DNA barcode "
                                   "(raw sequence or FASTA), then press Identify.")
        if source is not None:
            source = load_image(source)  # decode once, then every model reuses it
        predictions = {name: engine.predict(name, source, text, noise) for name in engine.names}
    except INPUT_ERRORS as err:
        return refused(engine, _input_message(err))

    main = predictions[engine.primary]
    view = IdentifyView(ok=True, status="", predictions=predictions)
    view.model_image = main.model_input_image
    view.barcode = barcode_html(main.barcode, main.degraded_barcode, main.barcode_edits)
    view.gate = figures.gate_figure(main.gate, main.gate_vector, title=f"Fusion gate ({engine.primary})")
    view.results = {name: result_html(name, p, note=_role(engine, name), fusion=trained_fusion(engine.bundles[name]))
                    for name, p in predictions.items()}
    view.session = {
        "image": source_path(image),
        "barcode": text,
        "noise": {"blur_kernel": noise.blur_kernel, "dna": asdict(noise.dna), "seed": noise.seed},
        "levels": {name: {q: r.levels for q, r in p.queries.items()} for name, p in predictions.items()},
        "embeddings": {name: {q: r.embedding.tolist() for q, r in p.queries.items()}
                       for name, p in predictions.items()},
    }
    view.bars = score_chart(engine, view.session, level)
    view.neighbours = neighbours_frame(main)
    view.raw = {name: p.to_dict() for name, p in predictions.items()}
    used = " + ".join(w for w, given in (("image", source is not None), ("barcode", text is not None)) if given)
    joint = _joint_query(main)
    deepest = main.queries[joint].deepest_rank
    support = (f"the evidence supports a name down to the **{deepest}**" if deepest else
               "the evidence does not settle even the order")
    view.status = _status(
        "ok", f"Identified from the {used} with {len(predictions)} model{'s' * (len(predictions) > 1)}. "
              f"{engine.primary} ({_query_label(joint).lower()}): {support}. {_agreement_text(main)}")
    return view


def source_path(image: Any) -> str | None:
    """The server-side path of an uploaded image (kept in the session for the noise path), if it has one."""
    if isinstance(image, Mapping):
        return image.get("path")
    if isinstance(image, (str, Path)):
        return str(image)
    return None


def _joint_query(prediction: Prediction) -> str:
    return next(q for q in ("fused", "avg", "image", "dna") if q in prediction.queries)


def _role(engine: Engine, name: str) -> str:
    objective = str(getattr(engine.bundles[name], "objective", "") or "")
    role = "main model" if name == engine.primary else "compared model"
    return f"{role}, trained as {objective}" if objective else role


def _input_message(err: Exception) -> str:
    what = "Barcode" if isinstance(err, BarcodeError) else "Input"
    message = str(err) or type(err).__name__
    return f"{what} refused: {message[0].upper()}{message[1:]}"


def refused(engine: Engine, message: str) -> IdentifyView:
    """The view of a refused input: the message, and every output reset to its empty state."""
    return IdentifyView(
        ok=False, status=_status("error", message), barcode=barcode_html(None, None, []),
        gate=figures.gate_figure(None, title=f"Fusion gate ({engine.primary})"),
        results={name: result_html(name, None, note=_role(engine, name)) for name in engine.names},
        bars=figures.empty_figure("identify a specimen to see its scores"),
    )


def score_chart(engine: Engine, session: Mapping[str, Any] | None, level: str) -> go.Figure:
    """The main model's top names at ``level`` for every query of the last identification, as bars."""
    levels = ((session or {}).get("levels") or {}).get(engine.primary)
    if not levels:
        return figures.empty_figure("identify a specimen to see its scores")
    if level not in LEVELS:
        return figures.empty_figure(f"unknown level {level!r}")
    return figures.prediction_bars(levels, level, title=f"{engine.primary}: top {level} names per query")


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
        layout = engine.layouts(name).get(space)
        if layout is None:
            untrained = space == "fused" and not trained_fusion(engine.bundles[name])
            why = " (its fusion was never trained)" if untrained else ""
            maps[name] = figures.empty_figure(f"{name} has no {space} space map{why}", title=title, height=520)
            continue
        query = path = labels = None
        z = ((session.get("embeddings") or {}).get(name) or {}).get(space)
        reference_map = engine.predictor(name).reference_map
        if z is not None and reference_map is not None:
            query = reference_map.place(np.asarray(z, dtype=np.float32), space)
            if show_path:
                try:
                    path, labels = _noise_path(engine, name, session, space)
                except INPUT_ERRORS as err:
                    notes.append(f"no noise path: {_input_message(err)}")
        elif z is None and session.get("embeddings"):
            notes.append(f"the {space} space needs " + ("an image and a barcode" if space == "fused" else
                                                       "an image" if space == "image" else "a barcode"))
        maps[name] = figures.umap_figure(
            layout, reference.ranks, colour_by, ids=reference.ids, title=title, query=query, path=path,
            path_labels=labels,
        )
    status = _status("info", "; ".join(dict.fromkeys(notes))) if notes else ""
    return status, maps


def _noise_path(engine: Engine, name: str, session: Mapping[str, Any], space: str):
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
        blur_kernel=blur if blur > 1 else None, seed=int(noise.get("seed", 0)),
    )
    return path, [f"×{s:g}" for s in strengths]


def robustness(engine: Engine, level: str) -> tuple[go.Figure, go.Figure]:
    """Accuracy against DNA noise and against blur, averaged vs gated fusion, for every bundle."""
    level = level if level in SWEEP_LEVELS else "species"
    sweeps = engine.sweeps()
    return (
        figures.robustness_figure(sweeps, "dna", level, title=f"Top-1 {level} accuracy as DNA noise rises"),
        figures.robustness_figure(sweeps, "blur", level, title=f"Top-1 {level} accuracy as image blur rises"),
    )


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


# ----------------------------------------------------------------------------------------------- the Blocks


def _guarded(outputs: int, fn: Callable[..., tuple]) -> Callable[..., tuple]:
    """Wrap a callback so that an unexpected error shows a message instead of breaking the page."""

    @functools.wraps(fn)  # keeps the signature: the API docs name the parameters after it
    def run(*args: Any) -> tuple:
        try:
            return fn(*args)
        except Exception as err:  # the app must keep serving whatever one request does
            logger.exception("callback %s failed", fn.__name__)
            gr.Warning(f"Something went wrong: {type(err).__name__}: {err}")
            return tuple(gr.update() for _ in range(outputs)) if outputs > 1 else gr.update()

    return run


def build_ui(
    bundles: Mapping[str, Any],
    examples_dir: str | Path | None = None,
    *,
    engine: Engine | None = None,
    title: str = "hirviz: identify insects from photos and DNA barcodes",
) -> gr.Blocks:
    """The app's Blocks for ``bundles`` (display name -> bundle, main model first).

    ``examples_dir`` holds ``examples.tsv`` and the example photos. Pass an ``engine`` that was warmed up
    (:meth:`Engine.warm_up`) to serve the first request at full speed. Launch with
    ``blocks.queue().launch(css=hirviz.ui.CSS)``.
    """
    engine = engine or Engine(bundles)
    names = engine.names
    blur_limit = engine.blur_limit()
    spaces = engine.map_spaces() or list(MAP_SPACES)
    # Open on a space every model has (image first: HiR shapes the image space), so the maps compare side by side.
    shared = [s for s in ("image", "dna", "fused") if all(s in engine.layouts(n) for n in names)]
    default_space = shared[0] if shared else spaces[0]
    example_rows, example_labels = read_examples(examples_dir)
    limit_text = (f"JPEG, PNG, WebP, TIFF, BMP (RGB, RGBA, grey, 16-bit); up to {MAX_IMAGE_PIXELS / 1e6:g} "
                  f"megapixels")

    with gr.Blocks(title="hirviz", fill_width=False) as demo:
        session = gr.State({})
        gr.Markdown(
            f"## {title}\nModels: " + ", ".join(f"**{html.escape(n)}**" for n in names)
            + ". Give a specimen photo, its DNA barcode, or both; degrade them with the noise controls to see "
              "how each query copes. Names are scored at every rank (a rank's score sums its descendants')."
        )
        with gr.Tabs():
            # ---------------------------------------------------------------------------------- identify
            with gr.Tab("Identify", id="identify"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=4, min_width=300):
                        image = gr.Image(label=f"Specimen photo ({limit_text})", type="filepath", image_mode=None,
                                         sources=["upload", "clipboard"], height=260, elem_id="hz-image")
                        barcode = gr.Textbox(label=f"DNA barcode (raw sequence or FASTA, up to {MAX_BARCODE_BP:,} bp)",
                                             lines=4, max_lines=8,
                                             placeholder="AACATTATATTTTATTTTTGG… or >id\\nAACATT…",
                                             elem_id="hz-barcode")
                        run_button = gr.Button("Identify", variant="primary", elem_id="hz-identify")
                        if example_rows:
                            examples = gr.Examples(example_rows, [image, barcode],
                                                   label="Example specimens (click one)",
                                                   example_labels=example_labels, examples_per_page=8)
                    with gr.Column(scale=4, min_width=300):
                        with gr.Accordion("Noise (degrade the inputs)", open=True):
                            blur = gr.Slider(0, blur_limit, value=0, step=1, label="Image blur kernel (pixels)",
                                             info=f"box blur on the model's input grid; 0 = none, "
                                                  f"e.g. {engine.default_blur()}", elem_id="hz-blur")
                            rate_sliders = [
                                gr.Slider(0, maximum, value=0, step=step, label=label,
                                          info=f"paper default (METHOD.md §7): {getattr(PAPER_NOISE, name):g}",
                                          elem_id=f"hz-{name}")
                                for name, label, maximum, step in DNA_SLIDERS
                            ]
                            seed = gr.Number(value=0, precision=0, minimum=0, label="Noise seed", elem_id="hz-seed")
                            with gr.Row():
                                paper_button = gr.Button("Paper's DNA noise", size="sm")
                                off_button = gr.Button("No noise", size="sm")
                    with gr.Column(scale=4, min_width=300):
                        status = gr.Markdown(_status("info", "Upload a photo and/or paste a barcode, then press "
                                                             "Identify."), elem_id="hz-status")
                        model_image = gr.HTML(image_html(None), css_template=CSS, js_on_load=None,
                                              elem_id="hz-model-image")
                        gate_plot = gr.Plot(figures.gate_figure(None, title=f"Fusion gate ({engine.primary})"),
                                            show_label=False, elem_id="hz-gate")
                barcode_view = gr.HTML(barcode_html(None, None, []), css_template=CSS, js_on_load=None,
                                       elem_id="hz-barcode-view")
                with gr.Row(equal_height=False):
                    result_views = [
                        gr.HTML(result_html(n, None, note=_role(engine, n)), css_template=CSS, js_on_load=None,
                                elem_id=f"hz-result-{i}", elem_classes="hz-result-box")
                        for i, n in enumerate(names)
                    ]
                with gr.Row(equal_height=False):
                    with gr.Column(scale=2):
                        bars_level = gr.Radio(list(LEVELS), value="species", label="Scores at level")
                        bars = gr.Plot(figures.empty_figure("identify a specimen to see its scores"),
                                       show_label=False, elem_id="hz-bars")
                    with gr.Column(scale=3):
                        neighbours = gr.Dataframe(neighbours_frame(None), label="Nearest reference specimens "
                                                  f"({engine.primary})", interactive=False, wrap=True,
                                                  max_height=420, elem_id="hz-neighbours")
                with gr.Accordion("Raw result (JSON)", open=False):
                    raw = gr.JSON(label="Predictions")

            # ---------------------------------------------------------------------------------- geometry
            with gr.Tab("Geometry", id="geometry") as geometry_tab:
                gr.Markdown("UMAP maps of each model's reference specimens (precomputed). Your last specimen is "
                            "the star; tick the box to follow it as the noise rises (×0 = clean, ×1 = the "
                            "current noise, or the paper's noise when the controls are at zero).")
                with gr.Row():
                    space = gr.Radio(spaces, value=default_space, label="Embedding space")
                    colour_by = gr.Radio(list(COLOUR_LEVELS), value="order", label="Colour by")
                    show_path = gr.Checkbox(value=True, label="Show the path as noise rises")
                geometry_status = gr.Markdown("")
                with gr.Row(equal_height=False):
                    initial_maps = geometry(engine, {}, default_space, "order", False)[1]
                    map_plots = [gr.Plot(initial_maps[n], show_label=False, elem_id=f"hz-map-{i}")
                                 for i, n in enumerate(names)]

            # -------------------------------------------------------------------------------- robustness
            with gr.Tab("Robustness", id="robustness"):
                gr.Markdown("Accuracy against noise strength from each model's evaluation sweep: averaged vs "
                            "gated fusion (colour), model vs model (dash).")
                sweep_level = gr.Radio(list(SWEEP_LEVELS), value="species", label="Level")
                dna_figure, blur_figure = robustness(engine, "species")
                with gr.Row(equal_height=False):
                    dna_plot = gr.Plot(dna_figure, show_label=False, elem_id="hz-sweep-dna")
                    blur_plot = gr.Plot(blur_figure, show_label=False, elem_id="hz-sweep-blur")
                with gr.Accordion("Evaluation tables", open=False):
                    gr.Markdown(eval_tables(engine))

            # ------------------------------------------------------------------------------------- about
            with gr.Tab("About", id="about"):
                gr.Markdown(_about_text(engine, limit_text))

        # ------------------------------------------------------------------------------------- events
        noise_inputs = [blur, *rate_sliders, seed]
        identify_inputs = [image, barcode, *noise_inputs, bars_level]
        identify_outputs = [status, model_image, barcode_view, gate_plot, *result_views, bars, neighbours, raw,
                            session]

        def run_identify(image, barcode, blur_kernel, substitution, n_mask, insertion, deletion, n_run, truncation,
                         seed, score_level):
            """Identify a specimen from a photo and/or a DNA barcode (raw or FASTA), with optional noise."""
            rates = dict(substitution=substitution, n_mask=n_mask, insertion=insertion, deletion=deletion,
                         n_run=n_run, truncation=truncation)
            try:
                noise = NoiseSettings.from_controls(blur_kernel, [rates[name] for name, *_ in DNA_SLIDERS], seed)
            except InputError as err:
                view = refused(engine, _input_message(err))
            else:
                view = identify(engine, image, barcode, noise, level=score_level)
            if not view.ok:
                gr.Warning(view.status.split(" ", 1)[1])
            return (view.status, image_html(view.model_image), view.barcode, view.gate,
                    *[view.results[n] for n in names],
                    view.bars, view.neighbours, view.raw, view.session)

        run_identify = _guarded(len(identify_outputs), run_identify)
        # One endpoint for the button and every slider release: "always_last" drops superseded requests, and
        # the model group's concurrency limit keeps the CPU from being oversubscribed.
        identify_event = dict(fn=run_identify, inputs=identify_inputs, outputs=identify_outputs,
                              trigger_mode="always_last", concurrency_limit=2, concurrency_id="model",
                              preprocess=False)  # the image is decoded by us, with messages fit for users
        gr.on([run_button.click, blur.release, *[s.release for s in rate_sliders], seed.submit],
              api_name="identify", api_description="Identify a specimen from a photo and/or a DNA barcode.",
              **identify_event)
        if example_rows:
            examples.load_input_event.then(api_name="identify_example", api_visibility="undocumented",
                                           **identify_event)

        def set_paper_noise():
            return tuple(getattr(PAPER_NOISE, name) for name, *_ in DNA_SLIDERS)

        def set_no_noise():
            return (0, *[0.0 for _ in DNA_SLIDERS])

        paper_button.click(set_paper_noise, None, rate_sliders, api_name="paper_noise", queue=False).then(
            api_name="identify_paper_noise", api_visibility="undocumented", **identify_event)
        off_button.click(set_no_noise, None, [blur, *rate_sliders], api_name="no_noise", queue=False).then(
            api_name="identify_no_noise", api_visibility="undocumented", **identify_event)

        def run_geometry(session_state, map_space, colour_by, show_path):
            """Redraw the reference maps with the last specimen placed (and its noise path)."""
            message, maps = geometry(engine, session_state, map_space, colour_by, bool(show_path))
            return (message, *[maps[n] for n in names])

        # The maps are drawn when the tab is opened (and redrawn on its controls), not on every identification.
        gr.on([geometry_tab.select, space.change, colour_by.change, show_path.change],
              _guarded(1 + len(names), run_geometry),
              inputs=[session, space, colour_by, show_path], outputs=[geometry_status, *map_plots],
              api_name="geometry", api_description="Draw the reference maps with the last specimen placed.",
              trigger_mode="always_last", concurrency_limit=2, concurrency_id="model")

        def run_score_chart(session_state, score_level):
            """The main model's top names per query at one level, as bars."""
            return score_chart(engine, session_state, score_level)

        bars_level.change(_guarded(1, run_score_chart), [session, bars_level], bars, api_name="score_chart",
                          trigger_mode="always_last")

        def run_robustness(level):
            """Accuracy against DNA noise and against blur from the models' evaluation sweeps."""
            return robustness(engine, level)

        sweep_level.change(_guarded(2, run_robustness), sweep_level, [dna_plot, blur_plot], api_name="robustness",
                           trigger_mode="always_last")
    return demo


def _about_text(engine: Engine, limit_text: str) -> str:
    cards = []
    for name in engine.names:
        bundle = engine.bundles[name]
        card = getattr(bundle, "card", "") or "(no model card)"
        cards.append(f"<details><summary><b>{html.escape(name)}</b> model card</summary>\n\n{card}\n\n</details>")
    return (
        "### Using the app\n"
        f"- Photos: {limit_text}. Barcodes: raw sequence or one FASTA record, up to {MAX_BARCODE_BP:,} bp "
        "(IUPAC codes become N).\n"
        "- Queries: **image only**, **DNA only**, **averaged** (normalised mean of the two embeddings) and "
        "**gated fusion** (the learned per-dimension gate; the gate chart shows its mean weight on the image).\n"
        "- Scores are probabilities over the model's candidate taxonomy strings, summed per name at each rank. "
        "The *deepest supported* rank is the deepest whose top name scores at least 50 %, going down from order.\n"
        "- From Python: `Client(url).predict(image=handle_file('photo.jpg'), barcode='ACGT…', blur_kernel=0, "
        "substitution=0.01, seed=0, api_name='/identify')` (`from gradio_client import Client, handle_file`); the "
        "last output is the full result as JSON. Every control of the page is an endpoint too (see *Use via API*)."
        "\n\n"
        "### Models\n" + "\n\n".join(cards)
    )
