"""The app's Blocks: :func:`build_ui` lays out one tab per function and wires each tab's events to the handlers.

Every event has an ``api_name`` (:data:`API_NAMES`), so the app can be driven from ``gradio_client``. The module
is a little over 400 lines: each tab's layout and wiring stay side by side, so one tab reads in one place.
"""

from __future__ import annotations

import functools
import html
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from hirviz import figures
from hirviz.predict import MAX_IMAGE_PIXELS, InputError
from hirviz.taxonomy import LEVELS
from hirviz.ui.barcode_tab import BATCH_API_NAME, batch_tab, real_examples, wire_batch
from hirviz.ui.coi_view import empty_coi_html, hits_frame
from hirviz.ui.engine import (
    BARCODE_ROUTES,
    COLOUR_LEVELS,
    DEFAULT_TOP_K,
    DNA_SLIDERS,
    MAP_SPACES,
    MAX_BARCODE_BP,
    MAX_TOP_K,
    PAPER_NOISE,
    Engine,
    NoiseSettings,
)
from hirviz.ui.handlers import (
    PATH_CAPTION,
    drift_text,
    generality,
    geometry,
    identify,
    input_message,
    map_consistency,
    read_examples,
    refused,
    result_views,
    role_note,
    score_chart,
)
from hirviz.ui.plate import PLATE_API_NAMES, plate_tab, wire_plate
from hirviz.ui.render import (
    CSS,
    KEYBOARD_RELEASE_JS,
    RANK_CHOICES,
    barcode_html,
    data_badge,
    image_html,
    neighbours_frame,
    result_html,
    status_line,
)
from hirviz.ui.robustness_tab import robustness_tab, wire_robustness

__all__ = ["API_NAMES", "build_ui"]

logger = logging.getLogger(__name__)

# The names of the app's endpoints (``gradio_client``: ``client.predict(..., api_name="/identify")``).
API_NAMES: tuple[str, ...] = (
    "identify", "identify_example", "paper_noise", "identify_paper_noise", "no_noise", "identify_no_noise",
    "geometry", "score_chart", "robustness", "identify_real_example", BATCH_API_NAME, "show_results",
    *PLATE_API_NAMES,
)
LIMIT_TEXT = f"JPEG, PNG, WebP, TIFF, BMP (RGB, RGBA, grey, 16-bit); up to {MAX_IMAGE_PIXELS / 1e6:g} megapixels"


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
    with gr.Blocks(title="hirviz", fill_width=False) as demo:
        session = gr.State({})
        gr.Markdown(f"## {title}\n" + _models_text(engine))
        with gr.Tabs():
            identify_tab = _identify_tab(engine, examples_dir)
            plate = plate_tab(engine)
            batch = batch_tab(engine)
            geometry_tab = _geometry_tab(engine)
            robustness = robustness_tab(engine)
            with gr.Tab("About", id="about"):
                gr.Markdown(_about_text(engine))
        _wire_identify(engine, identify_tab, session)
        wire_plate(engine, plate, _guarded)
        wire_batch(engine, batch, _guarded)
        _wire_geometry(engine, geometry_tab, session)
        _wire_score_chart(engine, identify_tab, session)
        wire_robustness(engine, robustness, _guarded)
        demo.load(None, None, None, js=KEYBOARD_RELEASE_JS, api_visibility="private", queue=False)
    return demo


# ------------------------------------------------------------------------------------------------ identify


@dataclass
class _IdentifyTab:
    """The Identify tab's components that its events read or write."""

    image: gr.Image
    barcode: gr.Textbox
    route: gr.Radio
    candidates: gr.Textbox
    run_button: gr.Button
    examples: gr.Examples | None
    real_examples: gr.Examples | None
    blur: gr.Slider
    rate_sliders: list[gr.Slider]
    seed: gr.Number
    paper_button: gr.Button
    off_button: gr.Button
    status: gr.Markdown
    model_image: gr.HTML
    gate_plot: gr.Plot
    barcode_view: gr.HTML
    top_k: gr.Slider
    rank: gr.Radio
    result_views: list[gr.HTML]
    bars_level: gr.Radio
    bars: gr.Plot
    neighbours: gr.Dataframe
    coi: gr.HTML
    coi_hits: gr.Dataframe
    download: gr.File
    raw: gr.JSON
    shown: gr.State  # the last predictions, kept so the top-k and rank controls re-render without the models


def _identify_tab(engine: Engine, examples_dir: str | Path | None) -> _IdentifyTab:
    example_rows, example_labels = read_examples(examples_dir)
    examples = None
    with gr.Tab("Identify", id="identify"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=300):
                image = gr.Image(label=f"Specimen photo ({LIMIT_TEXT})", type="filepath", image_mode=None,
                                 sources=["upload", "clipboard"], height=260, elem_id="hz-image")
                barcode = gr.Textbox(label=f"DNA barcode (raw sequence or FASTA, up to {MAX_BARCODE_BP:,} bp)",
                                     lines=4, max_lines=8, placeholder="AACATTATATTTTATTTTTGG… or >id\\nAACATT…",
                                     elem_id="hz-barcode")
                route = gr.Radio(list(BARCODE_ROUTES), value=engine.default_route(), label="Send the barcode to",
                                 info="photos always go to the synthetic demo models", elem_id="hz-route",
                                 visible=engine.coi_name is not None)
                candidates = gr.Textbox(
                    label="Optional: rank only these names (zero-shot, one taxonomy string per line)", lines=2,
                    max_lines=8, placeholder="Lepidoptera Noctuidae\nDiptera Cecidomyiidae",
                    info="empty = open-ended (each model's own candidates); hyperbolic models cannot rank typed names",
                    elem_id="hz-candidates")
                run_button = gr.Button("Identify", variant="primary", elem_id="hz-identify")
                real_texts, real_labels = real_examples(engine)
                real = None
                if real_texts:
                    real = gr.Examples([[text, "real"] for text in real_texts], [barcode, route],
                                       label=f"Real barcodes from {engine.coi_name}'s reference bank (click one)",
                                       example_labels=real_labels)
                if example_rows:
                    examples = gr.Examples([[*row, "demo"] for row in example_rows], [image, barcode, route],
                                           label="Synthetic demo specimens, invented names (click one)",
                                           example_labels=example_labels, examples_per_page=8)
            with gr.Column(scale=4, min_width=300):
                with gr.Accordion("Noise (degrade the inputs)", open=True):
                    blur = gr.Slider(0, engine.blur_limit(), value=0, step=1, label="Image blur kernel (pixels)",
                                     info=f"box blur on the model's input grid; 0 = none, "
                                          f"e.g. {engine.default_blur()}", elem_id="hz-blur")
                    rate_sliders = [
                        gr.Slider(0, maximum, value=0, step=step, label=label,
                                  info=f"the paper's rate: {getattr(PAPER_NOISE, name):g}",
                                  elem_id=f"hz-{name}")
                        for name, label, maximum, step in DNA_SLIDERS
                    ]
                    seed = gr.Number(value=0, precision=0, minimum=0, label="Noise seed", elem_id="hz-seed")
                    with gr.Row():
                        paper_button = gr.Button("Paper's DNA noise", size="sm")
                        off_button = gr.Button("No noise", size="sm")
            with gr.Column(scale=4, min_width=300):
                status = gr.Markdown(status_line("info", "Upload a photo and/or paste a barcode, then press "
                                                         "Identify."), elem_id="hz-status")
                model_image = gr.HTML(image_html(None), css_template=CSS, js_on_load=None, elem_id="hz-model-image")
                gate_plot = gr.Plot(figures.gate_figure(None, title=f"Fusion gate ({engine.primary})"),
                                    show_label=False, elem_id="hz-gate")
        with gr.Row(equal_height=False):
            coi = gr.HTML(empty_coi_html(engine), css_template=CSS, js_on_load=None, elem_id="hz-coi",
                          elem_classes="hz-result-box", visible=engine.coi_name is not None)
            coi_hits = gr.Dataframe(hits_frame(None), label=f"Closest reference barcodes ({engine.coi_name})",
                                    interactive=False, wrap=True, max_height=420, elem_id="hz-coi-hits",
                                    visible=engine.coi_name is not None)
        barcode_view = gr.HTML(barcode_html(None, None, []), css_template=CSS, js_on_load=None,
                               elem_id="hz-barcode-view")
        with gr.Row():
            top_k = gr.Slider(1, MAX_TOP_K, value=DEFAULT_TOP_K, step=1, label="Names per rank (top-k)",
                              info="in the result tables, the score chart and the neighbours", elem_id="hz-top-k")
            rank = gr.Radio(list(RANK_CHOICES), value=RANK_CHOICES[0], label="Ranks shown", elem_id="hz-rank")
        with gr.Row(equal_height=False):
            result_views = [
                gr.HTML(result_html(n, None, note=role_note(engine, n), data=engine.data_kind(n)), css_template=CSS,
                        js_on_load=None,
                        elem_id=f"hz-result-{i}", elem_classes="hz-result-box")
                for i, n in enumerate(engine.names)
            ]
        with gr.Row(equal_height=False):
            with gr.Column(scale=2):
                bars_level = gr.Radio(list(LEVELS), value="species", label="Scores at level")
                bars = gr.Plot(figures.empty_figure("identify a specimen to see its scores"), show_label=False,
                               elem_id="hz-bars")
            with gr.Column(scale=3):
                neighbours = gr.Dataframe(neighbours_frame(None), label="Nearest reference specimens "
                                          f"({engine.primary})", interactive=False, wrap=True, max_height=420,
                                          elem_id="hz-neighbours")
        download = gr.File(label="Download the whole result (CSV: every model, query, rank and score, with "
                                 "abstentions)", interactive=False, elem_id="hz-download")
        with gr.Accordion("Raw result (JSON)", open=False):
            raw = gr.JSON(label="Predictions")
        shown = gr.State({})
    return _IdentifyTab(image, barcode, route, candidates, run_button, examples, real, blur, rate_sliders, seed,
                        paper_button, off_button, status, model_image, gate_plot, barcode_view, top_k, rank,
                        result_views, bars_level, bars, neighbours, coi, coi_hits, download, raw, shown)


def _wire_identify(engine: Engine, tab: _IdentifyTab, session: gr.State) -> None:
    names = engine.names
    identify_inputs = [tab.image, tab.barcode, tab.blur, *tab.rate_sliders, tab.seed, tab.bars_level, tab.route,
                       tab.candidates, tab.top_k, tab.rank]  # new inputs go last: API callers send them in this order
    identify_outputs = [tab.status, tab.model_image, tab.barcode_view, tab.gate_plot, *tab.result_views, tab.bars,
                        tab.neighbours, tab.coi, tab.coi_hits, tab.download, tab.raw, session, tab.shown]

    def run_identify(image, barcode, blur_kernel, substitution, n_mask, insertion, deletion, n_run, truncation,
                     seed, score_level, route=None, candidates=None, top_k=DEFAULT_TOP_K, rank=None):
        """Identify a specimen from a photo and/or a DNA barcode (raw or FASTA), with optional noise. ``route``:
        where the barcode goes ("real": the real COI model, "demo": the synthetic demo models, "both");
        ``candidates``: optional taxonomy strings, one per line, that the Euclidean models rank instead of theirs;
        ``top_k`` (1-10) names per rank and ``rank`` ("all ranks", or one rank) for the result tables."""
        rates = dict(substitution=substitution, n_mask=n_mask, insertion=insertion, deletion=deletion,
                     n_run=n_run, truncation=truncation)
        try:
            noise = NoiseSettings.from_controls(blur_kernel, [rates[name] for name, *_ in DNA_SLIDERS], seed)
        except InputError as err:
            view = refused(engine, input_message(err))
        else:
            view = identify(engine, image, barcode, noise, level=score_level, route=route, candidates=candidates,
                            top_k=top_k, rank=rank)
        if not view.ok:
            gr.Warning(view.status.split(" ", 1)[1])
        return (view.status, image_html(view.model_image), view.barcode, view.gate,
                *[view.results[n] for n in names],
                view.bars, view.neighbours, view.coi_html or empty_coi_html(engine), view.coi_hits, view.csv,
                view.raw, view.session, {"predictions": view.predictions})

    run_identify = _guarded(len(identify_outputs), run_identify)
    # One endpoint for the button and every slider release: "always_last" drops superseded requests, and
    # the model group's concurrency limit keeps the CPU from being oversubscribed.
    identify_event = dict(fn=run_identify, inputs=identify_inputs, outputs=identify_outputs,
                          trigger_mode="always_last", concurrency_limit=2, concurrency_id="model",
                          preprocess=False)  # the image is decoded by us, with messages fit for users
    gr.on([tab.run_button.click, tab.blur.release, *[s.release for s in tab.rate_sliders], tab.seed.submit],
          api_name="identify", api_description="Identify a specimen from a photo and/or a DNA barcode.",
          **identify_event)
    if tab.examples is not None:
        tab.examples.load_input_event.then(api_name="identify_example", api_visibility="undocumented",
                                           **identify_event)
    if tab.real_examples is not None:
        tab.real_examples.load_input_event.then(api_name="identify_real_example", api_visibility="undocumented",
                                                **identify_event)

    def set_paper_noise():
        return tuple(getattr(PAPER_NOISE, name) for name, *_ in DNA_SLIDERS)

    def set_no_noise():
        return (0, *[0.0 for _ in DNA_SLIDERS])

    tab.paper_button.click(set_paper_noise, None, tab.rate_sliders, api_name="paper_noise", queue=False).then(
        api_name="identify_paper_noise", api_visibility="undocumented", **identify_event)
    tab.off_button.click(set_no_noise, None, [tab.blur, *tab.rate_sliders], api_name="no_noise", queue=False).then(
        api_name="identify_no_noise", api_visibility="undocumented", **identify_event)


def _wire_score_chart(engine: Engine, tab: _IdentifyTab, session: gr.State) -> None:
    def run_score_chart(session_state, score_level, top_k=DEFAULT_TOP_K):
        """The main model's top names per query at one level, as bars."""
        return score_chart(engine, session_state, score_level, top_k)

    tab.bars_level.change(_guarded(1, run_score_chart), [session, tab.bars_level, tab.top_k], tab.bars,
                          api_name="score_chart", trigger_mode="always_last")

    def show_results(shown, session_state, top_k, rank, score_level):
        """The last identification's tables and score chart again with other top-k / rank settings (no model
        runs: the predictions are kept with the page's session)."""
        results, neighbours = result_views(engine, (shown or {}).get("predictions") or {}, top_k, rank)
        return (*[results[n] for n in engine.names], neighbours, score_chart(engine, session_state, score_level, top_k))

    gr.on([tab.top_k.change, tab.rank.change], _guarded(len(engine.names) + 2, show_results),
          [tab.shown, session, tab.top_k, tab.rank, tab.bars_level], [*tab.result_views, tab.neighbours, tab.bars],
          api_name="show_results", api_visibility="undocumented", trigger_mode="always_last", queue=False)


# ------------------------------------------------------------------------------------------------ geometry


@dataclass
class _GeometryTab:
    tab: gr.Tab
    space: gr.Radio
    colour_by: gr.Radio
    show_path: gr.Checkbox
    status: gr.Markdown
    drift: gr.Markdown
    map_plots: list[gr.Plot]
    generality_plots: list[gr.Plot]  # one per hyperbolic bundle, in engine.names order


def _geometry_tab(engine: Engine) -> _GeometryTab:
    spaces = engine.map_spaces() or list(MAP_SPACES)
    # Open on a space every model has (image first: HiR shapes the image space), so the maps compare side by side.
    shared = [s for s in ("image", "dna", "fused") if all(s in engine.layouts(n) for n in engine.names)]
    default_space = shared[0] if shared else spaces[0]
    with gr.Tab("Geometry", id="geometry") as tab:
        gr.Markdown("UMAP maps of each model's reference specimens (precomputed); a hyperbolic model shows its "
                    "Poincare disk instead (" + figures.DISK_CAPTION + "). Your last specimen is "
                    "the star; tick the box to follow it as the noise rises.")
        gr.Markdown(PATH_CAPTION, elem_id="hz-path-caption")
        with gr.Row():
            space = gr.Radio(spaces, value=default_space, label="Embedding space")
            colour_by = gr.Radio(list(COLOUR_LEVELS), value="order", label="Colour by")
            show_path = gr.Checkbox(value=True, label="Show the path as noise rises")
        status = gr.Markdown("")
        # The bundles' hierarchy-consistency numbers for the shown space, then how far the noise moved the specimen.
        drift = gr.Markdown(map_consistency(engine, default_space), elem_id="hz-drift")
        with gr.Row(equal_height=False):
            initial_maps = geometry(engine, {}, default_space, "order", False)[1]
            map_plots = [gr.Plot(initial_maps[n], show_label=False, elem_id=f"hz-map-{i}")
                         for i, n in enumerate(engine.names)]
        initial_generality = generality(engine, {}, default_space)
        generality_plots = []
        if initial_generality:
            gr.Markdown("Hyperbolic models: the distance from the origin is the generality axis. A model that "
                        "learned the hierarchy puts order names near the origin and species far from it.")
            with gr.Row(equal_height=False):
                generality_plots = [gr.Plot(figure, show_label=False, elem_id=f"hz-generality-{i}")
                                    for i, figure in enumerate(initial_generality.values())]
    return _GeometryTab(tab, space, colour_by, show_path, status, drift, map_plots, generality_plots)


def _wire_geometry(engine: Engine, tab: _GeometryTab, session: gr.State) -> None:
    def run_geometry(session_state, map_space, colour_by, show_path):
        """Redraw the reference maps with the last specimen placed (and its noise path)."""
        message, maps = geometry(engine, session_state, map_space, colour_by, bool(show_path))
        curves = list(generality(engine, session_state, map_space).values()) if tab.generality_plots else []
        notes = "\n\n".join(t for t in (map_consistency(engine, map_space), drift_text(engine, session_state, map_space))
                            if t)
        return (message, notes, *[maps[n] for n in engine.names], *curves)

    # The maps are drawn when the tab is opened (and redrawn on its controls), not on every identification.
    gr.on([tab.tab.select, tab.space.change, tab.colour_by.change, tab.show_path.change],
          _guarded(2 + len(engine.names) + len(tab.generality_plots), run_geometry),
          inputs=[session, tab.space, tab.colour_by, tab.show_path],
          outputs=[tab.status, tab.drift, *tab.map_plots, *tab.generality_plots],
          api_name="geometry", api_description="Draw the reference maps with the last specimen placed.",
          trigger_mode="always_last", concurrency_limit=2, concurrency_id="model")


# --------------------------------------------------------------------------------------------------- about


def _models_text(engine: Engine) -> str:
    """Which models the page uses, and which are real or the synthetic teaching demo (the header)."""
    kinds = {name: engine.data_kind(name) for name in engine.bundles}
    lines = []
    if engine.coi_name is not None:
        lines.append(f"**Barcodes** go to **{html.escape(engine.coi_name)}** by default: real COI barcodes of "
                     "insects, alignment to its reference barcodes plus its DNA model.")
    photo = ", ".join(f"**{html.escape(n)}**" for n in engine.names)
    synthetic = all(kinds[n] == "synthetic" for n in engine.names)
    lines.append(f"**Photos** go to {photo}" + (": the synthetic teaching demo, trained on simulated specimens "
                                                 "whose taxon names are invented." if synthetic else "."))
    badges = "".join(data_badge(kind) for kind in dict.fromkeys(kinds.values()))
    return " ".join(lines) + " Degrade the inputs with the noise controls to see how each model copes.\n\n" + badges


def _about_text(engine: Engine) -> str:
    cards = []
    for name in engine.bundles:
        bundle = engine.bundles[name]
        card = getattr(bundle, "card", "") or "(no model card)"
        kind = "real data" if engine.data_kind(name) == "real" else "synthetic teaching demo, invented names"
        cards.append(f"<details><summary><b>{html.escape(name)}</b> model card ({kind})</summary>\n\n{card}\n\n"
                     "</details>")
    return (
        "### Using the app\n"
        f"- Photos: {LIMIT_TEXT}. Barcodes: raw sequence or one FASTA record, up to {MAX_BARCODE_BP:,} bp "
        "(IUPAC codes become N).\n"
        "- Queries: **image only**, **DNA only**, **averaged** (normalised mean of the two embeddings) and "
        "**gated fusion** (the learned per-dimension gate; the gate chart shows its mean weight on the image).\n"
        "- Scores are probabilities over the model's candidate taxonomy strings, summed per name at each rank. "
        "The *deepest supported* rank is the deepest whose top name scores at least 50 %, going down from order.\n"
        "- **No confident match**: a query whose input is unusable (a tiny or blank photo, a very short read) or "
        "unlike anything the model was checked on answers no name, and says why. The overall answer comes from the "
        "first query that does answer (gated fusion, averaged, image only, DNA only).\n"
        "- **Download the whole result**: a CSV with every model, query, rank and name, its score, and whether the "
        "query abstained and why.\n"
        "- **Names per rank** and **Ranks shown** change what the tables show, without running the models again.\n"
        "- **Plate**: several photos at once, one row per photo (a file that is not an image gets a row saying so), "
        "and a CSV of the table.\n"
        "- From Python: `Client(url).predict(image=handle_file('photo.jpg'), barcode='ACGT…', blur_kernel=0, "
        "substitution=0.01, seed=0, api_name='/identify')` (`from gradio_client import Client, handle_file`); the "
        "last output is the full result as JSON. Every control of the page is an endpoint too (see *Use via API*)."
        "\n\n"
        "### Models\n" + "\n\n".join(cards)
    )


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
