"""The app's callbacks and Blocks, on two tiny bundles (a CLIBD-HiR-Fuse model and a CLIBD baseline).

The bundles come from the real pipeline (synthetic data -> a few training steps -> export -> evaluation with a
noise sweep); only their map layouts are a PCA instead of a UMAP fit, which would cost a numba compilation.
"""

from __future__ import annotations

import html
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hirviz import figures
from hirviz.taxonomy import LEVELS

gr = pytest.importorskip("gradio")

SPECIMENS = 300
IMAGE_HEIGHT = 48


def build_tiny_bundles(root: Path) -> dict[str, Path]:
    """Make (once per ``root``) a tiny HiR-Fuse bundle, a tiny CLIBD bundle and an examples folder.

    Returns ``{"hir": path, "clibd": path, "examples": path, "data": synthetic data dir}``.
    """
    paths = {"hir": root / "hir-fuse", "clibd": root / "clibd", "examples": root / "examples", "data": root / "synth"}
    if (root / "done").is_file():
        return paths
    import hirviz
    from train.config import load_config
    from train.data import open_images, read_metadata
    from train.evaluate import evaluate_bundle
    from train.export import export
    from train.loop import fit, load_training_split
    from train.synthetic import SynthConfig, generate

    generate(paths["data"], SynthConfig(specimens=SPECIMENS, seed=0, image_height=IMAGE_HEIGHT, workers=1))
    metadata, images = paths["data"] / "metadata.tsv", paths["data"] / "images.hdf5"
    for key, objective in (("hir", "clibd-hir-fuse"), ("clibd", "clibd")):
        cfg = load_config(Path(__file__).resolve().parents[1] / "train/configs/ci.yaml", [
            f"data.metadata={metadata}", f"data.images={images}", f"run.out_dir={root / ('run-' + key)}",
            f"loss.objective={objective}",
        ])
        run = fit(cfg, max_steps=2)
        export(run, paths[key], name=f"tiny-{objective}", umap=False, max_reference=200)
        _add_pca_layouts(paths[key] / "reference.h5")
        bundle = hirviz.load_bundle(paths[key])
        frame, _, test_idx = load_training_split(cfg)
        results = evaluate_bundle(bundle, frame.iloc[test_idx[:20]].reset_index(drop=True), open_images(str(images)),
                                  sweep=True)
        bundle.update_eval(results)

    # Example specimens, as the app's examples folder holds them.
    frame = read_metadata(metadata)
    store = open_images(str(images))
    paths["examples"].mkdir(parents=True, exist_ok=True)
    rows = []
    for record in frame.head(3).to_dict("records"):
        store.get(record["image_file"]).save(paths["examples"] / record["image_file"])
        rows.append({"image_file": record["image_file"], "barcode": record["barcode"], "taxonomy": record["taxonomy"]})
    pd.DataFrame(rows).to_csv(paths["examples"] / "examples.tsv", sep="\t", index=False)
    (root / "done").write_text("ok")
    return paths


def _add_pca_layouts(reference_h5: Path) -> None:
    """Layouts from a 2-D PCA of each space (the app only needs some ``[N, 2]`` positions)."""
    with h5py.File(reference_h5, "a") as h5:
        for space in ("image", "dna", "fused"):
            if f"embeddings/{space}" not in h5:
                continue
            x = h5[f"embeddings/{space}"][()]
            centred = x - x.mean(axis=0)
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            if f"umap/{space}" in h5:
                del h5[f"umap/{space}"]
            h5.create_dataset(f"umap/{space}", data=(centred @ vt[:2].T).astype(np.float32))


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> dict[str, Path]:
    return build_tiny_bundles(tmp_path_factory.getbasetemp() / "ui-bundles")


@pytest.fixture(scope="session")
def engine(tiny):
    import hirviz
    from hirviz.ui import Engine

    bundles = {"HiR-Fuse": hirviz.load_bundle(tiny["hir"]), "CLIBD": hirviz.load_bundle(tiny["clibd"])}
    engine = Engine(bundles)
    engine.warm_up()
    return engine


@pytest.fixture(scope="session")
def example(tiny) -> tuple[str, str]:
    table = pd.read_csv(tiny["examples"] / "examples.tsv", sep="\t", dtype=str)
    row = table.iloc[0]
    return str(tiny["examples"] / row["image_file"]), row["barcode"]


def _image_file(tmp_path: Path, name: str, image: Image.Image, **save) -> str:
    path = tmp_path / name
    image.save(path, **save)
    return str(path)


# ----------------------------------------------------------------------------------------------- identify


def test_image_and_barcode_give_four_queries_for_each_model(engine, example):
    from hirviz.ui import NoiseSettings, identify
    from hirviz.ui.engine import MAX_TOP_K

    image, barcode = example
    view = identify(engine, {"path": image}, barcode, NoiseSettings(blur_kernel=3, seed=1))
    assert view.ok, view.status
    assert set(view.predictions) == {"HiR-Fuse", "CLIBD"}
    assert set(view.predictions["HiR-Fuse"].queries) == {"image", "dna", "avg", "fused"}
    # The baseline's fusion head was never trained: its fused query is left out, with a note.
    assert set(view.predictions["CLIBD"].queries) == {"image", "dna", "avg"}
    assert "no trained fusion" in view.results["CLIBD"]
    for prediction in view.predictions.values():
        for result in prediction.queries.values():
            assert all(1 <= len(result.levels[lvl]) <= MAX_TOP_K for lvl in LEVELS)
            assert all(0.0 <= s <= 1.0 for ranked in result.levels.values() for _, s in ranked)
            scores = [s for _, s in result.levels["species"]]
            assert scores == sorted(scores, reverse=True)
    # Baseline beside HiR-Fuse: one results table per model, each with the four query columns and names.
    for name, prediction in view.predictions.items():
        table = view.results[name]
        assert name in table
        for label in ("Image only", "DNA only", "Averaged", "Gated fusion", "deepest supported"):
            assert label in table
        top_order = prediction.queries["avg"].levels["order"][0][0]
        assert top_order in table
    assert isinstance(view.model_image, Image.Image)
    assert "gate" in view.gate.layout.title.text.lower() and len(view.gate.data) == 2
    assert len(view.neighbours) == 4 * 5 and set(view.neighbours["query"]) == {
        figures.QUERY_LABELS[q] for q in ("image", "dna", "avg", "fused")}
    assert view.neighbours["similarity"].between(-1.0001, 1.0001).all()
    json.dumps(view.raw)  # the API returns it as JSON
    # A tick only when the main model's verdict names something (Prediction.verdict), else the neutral arrow.
    assert view.status.startswith("✓" if view.predictions["HiR-Fuse"].verdict[1] else "→")


def test_single_modality_gives_its_query_only(engine, example):
    from hirviz.ui import identify

    image, barcode = example
    only_dna = identify(engine, None, barcode)
    assert only_dna.ok and set(only_dna.predictions["HiR-Fuse"].queries) == {"dna"}
    assert "needs an image" in only_dna.results["HiR-Fuse"]
    only_image = identify(engine, image, "")
    assert only_image.ok and set(only_image.predictions["HiR-Fuse"].queries) == {"image"}


SUSPECT_INPUTS = {
    "1x1 image": (lambda: Image.new("RGB", (1, 1), "red"), None, "1 x 1 pixels"),
    "grey square": (lambda: Image.new("RGB", (200, 200), (128, 128, 128)), None, "blank"),
    "20-bp read": (lambda: None, "ACGTTGCAAGGCTTACGATC", "only 20 bp"),
}


@pytest.mark.parametrize("case", list(SUSPECT_INPUTS))
def test_an_abstaining_query_says_no_confident_match_and_why(engine, case):
    from hirviz.ui import identify

    make_image, barcode, why = SUSPECT_INPUTS[case]
    view = identify(engine, make_image(), barcode)
    assert view.ok, view.status
    for name, prediction in view.predictions.items():
        assert all(r.abstained for r in prediction.queries.values()) and prediction.verdict == (None, None)
        table = view.results[name]
        assert "no confident match" in table and why in table
        assert "✓" not in table and "hz-yes" not in table  # no tick where the answer abstained
        top = next(iter(prediction.queries.values())).levels["order"][0][0]
        assert top not in table  # its names are kept for inspection (raw, CSV) but not shown as an answer
    assert view.status.startswith("→") and "✓" not in view.status
    assert "No confident match" in view.status and why in view.status


def _confident(levels_by_rank: dict[str, str], score: float = 0.9) -> dict[str, list[tuple[str, float]]]:
    return {lvl: [(levels_by_rank[lvl], score), ("other " + lvl, 1 - score)] for lvl in LEVELS}


def test_the_verdict_says_what_the_tables_show(engine, example):
    import copy

    from hirviz.prediction import agreement, deepest_rank
    from hirviz.ui import identify
    from hirviz.ui.render import agreement_text, result_html, verdict_text

    image, barcode = example
    prediction = copy.deepcopy(identify(engine, image, barcode).predictions["HiR-Fuse"])
    # The fused query is sure down to the genus; the others name other taxa at every level.
    names = {"fused": ("Ao", "Af", "Ag", "As"), "avg": ("Bo", "Bf", "Bg", "Bs"), "image": ("Co", "Cf", "Cg", "Cs"),
             "dna": ("Do", "Df", "Dg", "Ds")}
    for query, result in prediction.queries.items():
        result.levels = _confident(dict(zip(LEVELS, names[query])), 0.9 if query == "fused" else 0.3)
        result.levels["species"] = [(names[query][3], 0.2), ("x", 0.1)]
        result.deepest_rank, result.abstained, result.reason = deepest_rank(result.levels), False, None
    prediction.agreement = agreement({q: r.levels for q, r in prediction.queries.items()})
    table = result_html("HiR-Fuse", prediction)
    assert verdict_text(prediction) == "Gated fusion names the genus Ag (90%)."
    assert "disagree at every level" in agreement_text(prediction)
    assert "✗ differ" in table and "✓" not in table  # no level is ticked where the queries disagree
    # The deepest-supported row of the verdict's query shows the verdict's rank.
    assert "<td>genus</td>" in table.split("deepest supported")[1].split("</tr>")[0]

    # When the fused query abstains, the verdict moves to the next query, and the table says why fused is silent.
    prediction.queries["fused"].abstained, prediction.queries["fused"].reason = True, "no confident match: too odd"
    table = result_html("HiR-Fuse", prediction)
    assert prediction.verdict == ("avg", None) and verdict_text(prediction) == "Averaged does not settle even the order."
    assert "Too odd" in table and "Ag" not in table and "No confident match from: gated fusion" in table
    # Only the dna query answers: no agreement marks (nothing to compare), still no tick.
    for query in ("avg", "image"):
        prediction.queries[query].abstained = True
    table = result_html("HiR-Fuse", prediction)
    assert "One answering query (DNA only)" in table and "✓" not in table and "✗ differ" not in table


def test_a_model_never_answers_from_an_untrained_tower(real_engine, example):
    import hirviz
    from hirviz.ui import Engine, identify

    image, _ = example
    _, _, barcode = _bank_record(real_engine)
    # The shipped engine: the barcode-only real bundle gets barcodes, never the photo.
    view = identify(real_engine, image, barcode, route="both")
    assert view.ok and "real-coi" not in view.predictions
    assert "fused" not in view.predictions["CLIBD"].queries  # its fusion gate was never trained
    assert "no trained fusion" in view.results["CLIBD"]
    # With the barcode-only bundle alone, a photo is refused instead of answered by its untrained image tower.
    alone = Engine({"real-coi": hirviz.load_bundle(REAL_COI)})
    refused_view = identify(alone, image, None)
    assert not refused_view.ok and "trained on photos" in refused_view.status
    both = identify(alone, image, barcode, route="demo")
    assert both.ok and set(both.predictions["real-coi"].queries) == {"dna"} and "photo was not used" in both.status
    assert "no trained image model" in both.results["real-coi"] and "Image only</th>" in both.results["real-coi"]
    assert not any(r.query in ("image", "avg", "fused") for r in both.predictions["real-coi"].queries.values())


def _messy(sequence: str) -> str:
    """A barcode as users paste it: lower case, RNA U, an ambiguity code, a gap, position numbers, line breaks."""
    head, rest = sequence[:60], sequence[60:]
    head = head[:10].lower() + head[10:20].replace("T", "U") + "R" + head[21:30] + "-" + head[30:]
    return "1 " + head + "\n61 " + rest


def test_the_barcode_view_lists_every_change_made_to_the_input(engine, example, real_engine):
    from hirviz.coi_check import reverse_complement
    from hirviz.ui import identify

    _, barcode = example
    view = identify(engine, None, f">my specimen\n{_messy(barcode)}")
    assert view.ok, view.status
    shown = view.barcode
    for change in ("Lower-case letters were read as upper case", "U (RNA) read as T", "IUPAC ambiguity code",
                   "gap character", "Digits removed", "line breaks"):
        assert change in shown, change
    assert "as given" not in shown and "exactly as pasted" not in shown
    clean = identify(engine, None, barcode)
    assert "exactly as pasted: no changes" in clean.barcode

    # The real COI route: the reverse complement and the record chosen among several are listed too.
    _, _, real = _bank_record(real_engine)
    text = f">first\n{reverse_complement(real).lower()}\n>second\n{real}\n"
    view = identify(real_engine, None, text)
    assert view.ok, view.status
    for change in ("reverse-complemented", "holds 2 records; only the first ('first') was used",
                   "Lower-case letters"):
        assert change in html.unescape(view.barcode), change


def test_the_whole_result_downloads_as_csv(engine, example, real_engine):
    from hirviz.prediction import ROW_COLUMNS
    from hirviz.ui import identify
    from hirviz.ui.result_csv import COI_QUERY, CSV_COLUMNS

    assert CSV_COLUMNS == ("model", *ROW_COLUMNS, "abstained", "reason")
    image, barcode = example
    view = identify(engine, image, barcode)
    table = pd.read_csv(view.csv, dtype=str, keep_default_na=False)
    assert list(table.columns) == list(CSV_COLUMNS)
    for name, prediction in view.predictions.items():
        mine = table[table["model"] == name]
        assert set(mine["query"]) == set(prediction.queries) and set(mine["rank"]) == set(LEVELS)
        for query, result in prediction.queries.items():
            rows = mine[mine["query"] == query]
            assert len(rows) == sum(len(v) for v in result.levels.values())
            assert set(rows["abstained"]) == {str(result.abstained)}
            top = rows[rows["rank"] == "order"].iloc[0]
            assert top["order"] == result.levels["order"][0][0]
            assert float(top["score"]) == pytest.approx(result.levels["order"][0][1])
    tiny_image = identify(engine, Image.new("RGB", (1, 1)), None)
    abstained = pd.read_csv(tiny_image.csv, dtype=str, keep_default_na=False)
    assert set(abstained["abstained"]) == {"True"} and abstained["reason"].str.contains("1 x 1 pixels").all()
    # A barcode for the real COI model: its reconciled answer per rank.
    record_id, ranks, real = _bank_record(real_engine)
    coi = pd.read_csv(identify(real_engine, None, f">{record_id}\n{real}").csv, dtype=str, keep_default_na=False)
    assert list(coi["query"]) == [COI_QUERY] * 4 and list(coi["rank"]) == list(LEVELS)
    assert coi.iloc[3][list(LEVELS)].tolist() == ranks and set(coi["barcode_id"]) == {record_id}
    assert identify(engine, None, None).csv is None  # nothing identified, nothing to download


def test_dna_noise_marks_every_edit_kind(engine, example):
    from hirviz.degrade import DnaNoise
    from hirviz.ui import EDIT_STYLES, NoiseSettings, identify

    _, barcode = example
    noise = NoiseSettings(dna=DnaNoise(substitution=0.05, n_mask=0.05, deletion=0.02, insertion=0.02), seed=3)
    view = identify(engine, None, barcode, noise)
    prediction = view.predictions["HiR-Fuse"]
    kinds = {e.kind for e in prediction.barcode_edits}
    assert kinds == set(EDIT_STYLES)  # the seed and rates above give every kind at least once
    for kind in kinds:
        assert f"class='{EDIT_STYLES[kind][0]}'" in view.barcode
    assert prediction.degraded_barcode != prediction.barcode
    # The same seed gives the same degraded barcode; another seed another one.
    again = identify(engine, None, barcode, noise).predictions["HiR-Fuse"].degraded_barcode
    other = identify(engine, None, barcode, NoiseSettings(dna=noise.dna, seed=4)).predictions["HiR-Fuse"]
    assert again == prediction.degraded_barcode != other.degraded_barcode


def test_barcode_html_positions_follow_the_edits():
    from hirviz.degrade import DnaNoise, degrade_barcode_with_edits
    from hirviz.ui import barcode_html

    clean = "ACGT" * 50
    degraded, edits = degrade_barcode_with_edits(clean, DnaNoise(substitution=0.1, n_run=0.0, truncation=0.1), 0)
    page = barcode_html(clean, degraded, edits)
    subs = [e for e in edits if e.kind == "substitution" and e.position < len(degraded)]  # not in the cut tail
    assert subs
    for edit in subs:
        assert f"{edit.before}→{edit.after} at {edit.position + 1}" in page
    tail = next(e for e in edits if e.kind == "truncation").before
    assert f"class='hz-trunc' title='cut off ({len(tail)} bp)'>{tail}</span>" in page
    assert "no DNA noise" in barcode_html(clean, None, [])


@pytest.mark.parametrize("case", ["empty", "spaces", "not_dna", "protein", "binary_text", "huge_barcode",
                                  "text_file", "corrupt_image", "truncated_image", "enormous_image", "bad_seed"])
def test_every_bad_input_gets_a_message_not_an_exception(engine, example, tmp_path, case):
    from hirviz.ui import NoiseSettings, identify

    image, barcode = example
    good = open(image, "rb").read()
    inputs = {
        "empty": (None, None),
        "spaces": (None, "   \n  "),
        "not_dna": (None, "hello, is this the barcode box?"),
        "protein": (None, "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQ" * 5),
        "binary_text": (None, "\x00\x01\x02ACGT"),
        "huge_barcode": (None, "ACGT" * 25_000),  # 100 kb
        "text_file": (str(tmp_path / "notes.jpg"), None),
        "corrupt_image": (str(tmp_path / "corrupt.png"), barcode),
        "truncated_image": (str(tmp_path / "truncated.jpg"), None),
        "enormous_image": (str(tmp_path / "enormous.png"), None),
        "bad_seed": (None, barcode),
    }[case]
    (tmp_path / "notes.jpg").write_text("these are my field notes, not a photo")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (tmp_path / "truncated.jpg").write_bytes(good[: len(good) // 3])
    if case == "enormous_image":
        # 9000 x 9000 = 81 megapixels; a 1-bit PNG of it is tiny on disk, so the limit must be read from the header.
        Image.new("1", (9000, 9000)).save(tmp_path / "enormous.png")
    if case == "bad_seed":
        from hirviz.predict import InputError

        with pytest.raises(InputError) as info:
            NoiseSettings.from_controls(0, [0] * 6, -3)
        assert "seed" in str(info.value)
        return
    view = identify(engine, *inputs)
    assert not view.ok
    assert view.status.startswith("✗") and len(view.status) > 30
    assert set(view.results) == {"HiR-Fuse", "CLIBD"}  # the page still gets something to show
    expected = {"empty": "nothing to identify", "spaces": "nothing to identify", "not_dna": "barcode",
                "protein": "barcode", "binary_text": "binary", "huge_barcode": "limit", "text_file": "not an image",
                "corrupt_image": "image", "truncated_image": "truncated", "enormous_image": "megapixels"}[case]
    assert expected in view.status.lower()


def test_gradio_wrapper_warns_and_keeps_outputs_shaped(engine, tiny):
    from hirviz.ui import build_ui

    demo = build_ui(engine.bundles, tiny["examples"], engine=engine)
    fn = next(b.fn for b in demo.fns.values() if b.api_name == "identify")
    n_outputs = len(next(b for b in demo.fns.values() if b.api_name == "identify").outputs)
    with pytest.warns(UserWarning, match="(?i)seed"):
        out = fn(None, "ACGT" * 100, 0, 0, 0, 0, 0, 0, 0, -1, "species")
    assert len(out) == n_outputs and out[0].startswith("✗")
    with pytest.warns(UserWarning, match="(?i)barcode"):
        out = fn(None, "ACGT" * 25_000, 0, 0, 0, 0, 0, 0, 0, 0, "species")
    assert out[0].startswith("✗")


# ----------------------------------------------------------------------------------------------- figures


def test_maps_place_the_query_and_its_noise_path(engine, example):
    from hirviz.noise_path import DEFAULT_STRENGTHS
    from hirviz.ui import NoiseSettings, geometry, identify

    image, barcode = example
    view = identify(engine, {"path": image}, barcode, NoiseSettings())
    _, fused_maps = geometry(engine, view.session, "fused", "family", True)
    # The baseline has no trained fusion, hence no fused map; it still has the others.
    assert "never trained" in fused_maps["CLIBD"].layout.annotations[0].text
    _, dna_maps = geometry(engine, view.session, "dna", "family", True)
    for name, fig in {"HiR-Fuse": fused_maps["HiR-Fuse"], "CLIBD": dna_maps["CLIBD"]}.items():
        space = "fused" if name == "HiR-Fuse" else "dna"
        names = [t.name for t in fig.data]
        assert names[-3:] == ["as noise rises", figures.PATH_START_LABEL, "your specimen"], names
        assert len(fig.data[-3].x) == len(DEFAULT_STRENGTHS)
        # The start of the path is marked apart, at the path's clean end, and its hover says so.
        assert (fig.data[-2].x[0], fig.data[-2].y[0]) == (fig.data[-3].x[0], fig.data[-3].y[0])
        assert fig.data[-3].customdata[0] == "no noise" and fig.data[-3].text[0] == "no noise"
        reference = engine.bundles[name].reference
        plotted = sum(len(t.x) for t in fig.data[:-3])
        assert plotted == int(np.isfinite(reference.layouts[space]).all(axis=1).sum())
        # Hover tells the specimen's taxonomy.
        assert "family" in fig.data[0].hovertemplate and fig.data[0].customdata.shape[1] == 1 + len(LEVELS)
    # Only the families of the specimen's nearest references are coloured (each its own colour); the rest is grey.
    from hirviz.map_layers import HIGHLIGHT_COLOURS, NEAR_NEIGHBOURS, near_taxa

    z = np.asarray(view.session["embeddings"]["CLIBD"]["dna"], dtype=np.float32)
    near = engine.predictor("CLIBD").reference_map.neighbours(z, "dna", k=NEAR_NEIGHBOURS).rows
    expected = near_taxa(engine.bundles["CLIBD"].reference.ranks, near, "family")
    coloured = [t for t in dna_maps["CLIBD"].data[:-3] if t.marker.color in HIGHLIGHT_COLOURS]
    assert expected and [t.name for t in coloured] == expected
    assert len({t.marker.color for t in coloured}) == len(coloured)
    # The clean end of the path is where the query itself is placed.
    fig = fused_maps["HiR-Fuse"]
    assert np.allclose([fig.data[-3].x[0], fig.data[-3].y[0]], [fig.data[-1].x[0], fig.data[-1].y[0]], atol=1e-5)
    # A strong blur: the path stops where the blur would exceed the model's input grid, instead of failing.
    blurred = identify(engine, {"path": image}, None, NoiseSettings(blur_kernel=20))
    status, maps = geometry(engine, blurred.session, "image", "order", True)
    limit = max(engine.predictor("HiR-Fuse").model.image_size)
    assert status == "" and len(maps["HiR-Fuse"].data[-3].x) == sum(round(s * 20) <= limit for s in DEFAULT_STRENGTHS)
    # The Geometry tab explains the markers in one line, naming every strength the path is drawn at.
    from hirviz.ui.handlers import PATH_CAPTION

    assert "\n" not in PATH_CAPTION and "green square" in PATH_CAPTION
    assert all(f"×{s:g}" in PATH_CAPTION for s in DEFAULT_STRENGTHS if s)
    # Without a specimen: the reference only, no query traces.
    _, empty_maps = geometry(engine, {}, "dna", "order", True)
    assert all("your specimen" not in [t.name for t in f.data] for f in empty_maps.values())
    # An image-only specimen has no place in the DNA space: the maps say so instead of failing.
    image_only = identify(engine, image, None)
    status, maps = geometry(engine, image_only.session, "dna", "order", False)
    assert "needs a barcode" in status


def test_score_chart_and_robustness_figures(engine, example):
    from hirviz.ui import identify, robustness, score_chart

    view = identify(engine, *example)
    chart = score_chart(engine, view.session, "genus")
    assert [t.name for t in chart.data] == [figures.QUERY_LABELS[q] for q in ("image", "dna", "avg", "fused")]
    top = view.predictions["HiR-Fuse"].queries["fused"].levels["genus"][0]
    assert top[0] in chart.data[3].y
    dna_fig, blur_fig = robustness(engine, "order")
    for fig, kind in ((dna_fig, "dna"), (blur_fig, "blur")):
        names = {t.name for t in fig.data}
        assert {"HiR-Fuse · Averaged", "HiR-Fuse · Gated fusion", "CLIBD · Averaged"} <= names
        sweep = [r for r in engine.bundles["HiR-Fuse"].eval_results["sweep"]
                 if r["kind"] == kind and r["query"] == "avg" and r["level"] == "order"]
        trace = next(t for t in fig.data if t.name == "HiR-Fuse · Averaged")
        assert list(trace.y) == [r["top1"] for r in sorted(sweep, key=lambda r: r["strength"])]


def test_robustness_tab_tables_the_hierarchy_numbers_of_each_evaluation(engine, tiny):
    from hirviz.ui import build_ui, hierarchy_tables

    text = hierarchy_tables(engine)
    for name in engine.names:
        assert f"**{name}** (without noise → with noise)" in text
    assert "lower is better: 1 = mistakes stay within the genus" in text.lower()
    # The cells are the eval.json numbers, clean then noisy: the DNA row of the main model.
    results = engine.bundles["HiR-Fuse"].eval_results
    clean, noisy = results["clean"]["dna"]["hierarchy"], results["noisy_dna"]["dna"]["hierarchy"]
    block = text.split("**CLIBD**")[0]
    row = next(line for line in block.splitlines() if line.startswith("| DNA only |"))
    cells = [c.strip() for c in row.strip("|").split("|")]

    def pair(a, b):
        return " → ".join("–" if v is None else f"{v:.2f}" for v in (a, b))

    assert cells[2] == pair(clean["mistake_severity"]["severity"], noisy["mistake_severity"]["severity"])
    assert cells[3] == pair(clean["agreement"]["rho"], noisy["agreement"]["rho"])
    assert cells[4] == pair(clean["drift"]["mean_depth"], noisy["drift"]["mean_depth"])
    assert cells[5] == f"{noisy['drift']['mean_displacement']:.3f}"
    # The baseline's fusion was never trained: no gated-fusion row for it.
    assert "| Gated fusion |" in block and "| Gated fusion |" not in text.split("**CLIBD**")[1]
    config = build_ui(engine.bundles, tiny["examples"], engine=engine).get_config_file()
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    assert "hz-hierarchy" in ids.values()
    # The Geometry tab's drift sentence is an output of the geometry event.
    geometry_dep = next(d for d in config["dependencies"] if d["api_name"] == "geometry")
    assert "hz-drift" in {ids[i] for i in geometry_dep["outputs"]}


def test_robustness_table_says_when_an_evaluation_has_no_hierarchy_numbers():
    from hirviz.ui.robustness_tab import hierarchy_markdown

    old = {"clean": {"dna": {lvl: {"top1": 50.0, "top5": 70.0} for lvl in (*LEVELS, "global")}}}
    assert "no hierarchy numbers" in hierarchy_markdown("old", old)
    assert "no hierarchy numbers" in hierarchy_markdown("none", None)


def test_geometry_says_how_far_the_noise_moved_the_specimen(engine, example):
    from hirviz.degrade import DnaNoise
    from hirviz.hierarchy import describe_drift, specimen_drift
    from hirviz.ui import NoiseSettings, drift_text, identify

    image, barcode = example
    assert drift_text(engine, {}, "dna") == ""  # nothing identified yet
    clean_view = identify(engine, {"path": image}, barcode, NoiseSettings())
    assert "no noise reached the dna space" in drift_text(engine, clean_view.session, "dna")
    noisy = NoiseSettings(blur_kernel=0, dna=DnaNoise().scaled(4), seed=1)
    view = identify(engine, {"path": image}, barcode, noisy)
    text = drift_text(engine, view.session, "dna")
    # The sentence of each model is describe_drift of its clean and noisy DNA embeddings in its reference bank.
    for name in engine.names:
        z_noisy = view.predictions[name].queries["dna"].embedding
        z_clean = clean_view.predictions[name].queries["dna"].embedding
        ref = engine.bundles[name].reference
        rows = engine.predictor(name).reference_map.members("dna")
        drift = specimen_drift(z_clean, z_noisy, ref.embeddings["dna"][rows], ref.labels[rows])
        assert drift.displacement > 0
        assert f"**{name}** (dna space): {describe_drift(drift)}" in text
    # A blur does not reach the DNA space, but it does reach the image space.
    blurred = identify(engine, {"path": image}, barcode, NoiseSettings(blur_kernel=9))
    assert "no noise reached" in drift_text(engine, blurred.session, "dna")
    assert "The noise moved the embedding" in drift_text(engine, blurred.session, "image")


def test_robustness_draws_the_degraded_modality_alone_and_says_how_far_the_sweep_reaches(engine):
    from hirviz.ui import robustness, sweep_coverage

    dna_fig, blur_fig = robustness(engine, "species")
    sweep = engine.bundles["HiR-Fuse"].eval_results["sweep"]
    for fig, kind, alone in ((dna_fig, "dna", "DNA only"), (blur_fig, "blur", "Image only")):
        query = "dna" if kind == "dna" else "image"
        records = sorted((r for r in sweep if r["kind"] == kind and r["query"] == query and r["level"] == "species"),
                         key=lambda r: r["strength"])
        trace = next(t for t in fig.data if t.name == f"HiR-Fuse · {alone}")
        assert list(trace.y) == [r["top1"] for r in records]
    text = sweep_coverage(engine)
    kernels = sorted({r["strength"] for r in sweep if r["kind"] == "blur"})
    assert f"slider goes to {engine.blur_limit()} px" in text
    if kernels[-1] < engine.blur_limit():
        assert f"nothing beyond {kernels[-1]:g} px was measured" in text
    assert f"measured up to {max(r['strength'] for r in sweep if r['kind'] == 'dna'):g}x" in text


def test_robustness_says_not_evaluated_without_a_sweep():
    fig = figures.robustness_figure({"A": [], "B": None}, "dna", "species")
    assert not fig.data and "not evaluated" in fig.layout.annotations[0].text


def test_umap_figure_legend_and_unknowns():
    rng = np.random.default_rng(0)
    n = 500
    genera = rng.integers(0, 40, n)
    ranks = np.array([["O1", f"F{g % 7}", f"G{g}" if g % 5 else "", ""] for g in genera])
    fig = figures.umap_figure(rng.normal(size=(n, 2)), ranks, "genus", legend_taxa=10)
    names = [t.name for t in fig.data]
    # Grey layers first (drawn under the 10 coloured taxa), every point drawn once.
    assert len(names) == 10 + 2 and names[0].startswith("other genus") and names[1] == "genus unknown"
    assert sum(len(t.x) for t in fig.data) == n
    assert len(fig.data[1].x) == int((genera % 5 == 0).sum())


def test_gate_figure_shares_sum_to_one():
    fig = figures.gate_figure(0.25, np.array([0.1, 0.4]))
    assert [t.name for t in fig.data] == ["image", "DNA"]
    assert fig.data[0].x[0] + fig.data[1].x[0] == pytest.approx(1.0) and fig.data[0].x[0] == pytest.approx(0.25)
    assert not figures.gate_figure(None).data


# ----------------------------------------------------------------------------------------------- the Blocks


def test_every_event_has_an_api_name_and_sliders_do_not_flood(engine, tiny):
    from hirviz.ui import API_NAMES, build_ui

    demo = build_ui(engine.bundles, tiny["examples"], engine=engine)
    config = demo.get_config_file()
    # The page's own script (keyboard sliders) runs in the browser only: it is no endpoint.
    names = [d["api_name"] for d in config["dependencies"] if d["api_visibility"] != "private"]
    # Without a COI bundle there are no real-barcode examples to click.
    assert set(names) - {"load_example"} == set(API_NAMES) - {"identify_real_example"}, names
    assert len(names) == len(set(names))  # no name was silently suffixed
    identify_dep = next(d for d in config["dependencies"] if d["api_name"] == "identify")
    triggers = {event for _, event in identify_dep["targets"]}
    assert triggers == {"click", "release", "submit"}  # sliders fire on release, not on every move
    assert identify_dep["trigger_mode"] == "always_last"
    download = next(c["id"] for c in config["components"] if c["props"].get("elem_id") == "hz-download")
    assert download in identify_dep["outputs"]  # the CSV comes with every identification, from /identify too
    block = next(b for b in demo.fns.values() if b.api_name == "identify")
    assert block.concurrency_limit == 2
    public = {d["api_name"] for d in config["dependencies"] if d["api_visibility"] == "public"}
    assert {"identify", "geometry", "score_chart", "robustness"} <= public


def test_examples_are_listed(engine, tiny):
    from hirviz.ui import read_examples

    rows, labels = read_examples(tiny["examples"])
    assert len(rows) == 3 and all(Path(r[0]).is_file() and set(r[1]) <= set("ACGTN") for r in rows)
    assert all(labels)
    assert read_examples(tiny["examples"] / "missing") == ([], [])


def test_app_needs_a_bundle(tmp_path, monkeypatch):
    from conftest import load_repo_module

    app = load_repo_module("app", "app.py")
    monkeypatch.setenv("HIRVIZ_BUNDLES", f"{tmp_path / 'nope'},{tmp_path / 'neither'}")
    with pytest.raises(SystemExit) as info:
        app.load_bundles()
    assert "no model bundle" in str(info.value).lower() and "nope" in str(info.value)
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    assert app.server_address() == ("127.0.0.1", 7860)
    monkeypatch.setenv("SPACE_ID", "someone/hirviz")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7861")
    assert app.server_address() == ("0.0.0.0", 7861)


def test_app_loads_the_bundles_it_is_given(tiny, monkeypatch):
    from conftest import load_repo_module

    app = load_repo_module("app", "app.py")
    monkeypatch.setenv("HIRVIZ_BUNDLES", f"{tiny['hir']},{tiny['clibd']}")
    bundles = app.load_bundles()
    assert list(bundles) == ["tiny-clibd-hir-fuse", "tiny-clibd"]


def test_image_formats_are_read(engine, example, tmp_path):
    from hirviz.ui import identify

    image, _ = example
    rgb = Image.open(image).convert("RGB")
    grey16 = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
    files = [
        _image_file(tmp_path, "a.png", rgb.convert("RGBA")),
        _image_file(tmp_path, "b.webp", rgb),
        _image_file(tmp_path, "c.tiff", grey16),
        _image_file(tmp_path, "d.png", rgb.convert("L")),
    ]
    embeddings = []
    for path in files:
        view = identify(engine, path, None)
        assert view.ok, (path, view.status)
        embeddings.append(view.predictions["HiR-Fuse"].queries["image"].embedding)
    # The same picture in another file format is the same specimen to the model: an opaque RGBA PNG is the RGB
    # image, and a 16-bit TIFF is read as the 8-bit grey image it was made from (not clipped to white).
    original = identify(engine, str(_image_file(tmp_path, "rgb.png", rgb)), None)
    np.testing.assert_allclose(embeddings[0], original.predictions["HiR-Fuse"].queries["image"].embedding, atol=1e-5)
    np.testing.assert_allclose(embeddings[2], embeddings[3], atol=1e-5)


# ------------------------------------------------------------------------------------- the real COI bundle

# The committed real COI-barcode bundle (real BOLD / BIOSCAN-5M barcodes; see assets/real-coi/README.md).
REAL_COI = Path(os.environ.get("HIRVIZ_REAL_COI", Path(__file__).resolve().parents[1] / "assets" / "real-coi"))


@pytest.fixture(scope="session")
def real_engine(tiny):
    """The app's engine as it runs: two synthetic photo models and the real COI bundle."""
    import hirviz
    from hirviz.ui import Engine

    bundles = {"HiR-Fuse": hirviz.load_bundle(tiny["hir"]), "CLIBD": hirviz.load_bundle(tiny["clibd"]),
               "real-coi": hirviz.load_bundle(REAL_COI)}
    return Engine(bundles)


def _bank_record(engine, order: str | None = None) -> tuple[str, list[str], str]:
    """A record of the real bundle's own reference bank identified to species: id, ranks, barcode."""
    reference = engine.bundles[engine.coi_name].reference
    rows = [i for i in range(len(reference)) if reference.ranks[i, 3] and len(reference.barcodes[i]) >= 600
            and (order is None or reference.ranks[i, 0] == order)]
    row = rows[0]
    return str(reference.ids[row]), list(reference.ranks[row]), str(reference.barcodes[row])


def test_real_bundle_ships_its_references_tokenizer_and_licence():
    import hirviz

    bundle = hirviz.load_bundle(REAL_COI)
    reference = bundle.reference
    assert len(reference) > 5000 and (np.char.str_len(reference.barcodes.astype(str)) > 500).mean() > 0.9
    assert all(i and not i.startswith("SYN") for i in reference.ids[:100])  # BOLD process ids
    assert (REAL_COI / "dna_tokenizer.json").is_file()
    assert bundle.model_config.dna_tokenizer["tokenizer_file"] == "dna_tokenizer.json"
    licence = (REAL_COI / "LICENSE").read_text(encoding="utf-8")
    assert "Attribution-ShareAlike 4.0 International" in licence and "BIOSCAN-5M" in licence
    card = (REAL_COI / "README.md").read_text(encoding="utf-8")
    for credit in ("10.5883/DP-BOLD_Public.", "naturalis/barcode-constrained-phylogeny",
                   "NaturalHistoryMuseum/ukbol", "DS-PBBC4", "DMnBI/DeepCOI", "BIOSCAN-5M", "CC BY 3.0",
                   "CC BY-SA 4.0"):
        assert credit in card, credit
    assert bundle.eval_results and bundle.eval_results["_meta"]["subset"] == "test"  # held-out accuracy


def test_a_real_barcode_gets_its_species_by_alignment(real_engine):
    from hirviz.ui import identify

    record_id, ranks, barcode = _bank_record(real_engine)
    view = identify(real_engine, None, f">{record_id}\n{barcode}")
    assert view.ok, view.status
    assert real_engine.coi_name == "real-coi" and real_engine.names == ["HiR-Fuse", "CLIBD"]
    top = view.coi_hits.iloc[0]
    assert top["reference"] == record_id and top["identity %"] == 100.0 and top["coverage %"] >= 99.0
    assert ranks[3] in view.status and "decided by alignment" in view.status
    row = view.raw["coi"]["row"]
    assert [row[level] for level in LEVELS] == ranks and row["decided_by"].startswith("order:alignment")
    assert "decided by alignment" in view.coi_html and "the model says" in view.coi_html
    from hirviz.coi_refs import RANK_THRESHOLDS

    identity, bases = RANK_THRESHOLDS["species"]
    assert f"{identity:g} % identical over at least {bases} aligned bases" in view.coi_html  # the rule, in words
    assert "data-kind='real'" in view.coi_html
    assert not view.predictions  # the barcode went to the real model only (the default route)


def test_synthetic_demo_answers_are_marked_as_invented(real_engine, example):
    from hirviz.ui import identify

    image, _ = example
    _, ranks, barcode = _bank_record(real_engine)
    view = identify(real_engine, image, barcode)
    assert view.ok, view.status
    for name in ("HiR-Fuse", "CLIBD"):
        assert "data-kind='synthetic'" in view.results[name] and "invented" in view.results[name]
        assert "dna" not in view.predictions[name].queries  # the photo went to the demo, the barcode did not
    assert "data-kind='real'" in view.coi_html and ranks[3] in view.coi_html
    both = identify(real_engine, None, barcode, route="both")
    assert "dna" in both.predictions["HiR-Fuse"].queries and both.raw["coi"]["row"]["species"] == ranks[3]


@pytest.mark.parametrize("case", ["empty", "protein", "20 bp"])
def test_bad_barcodes_get_clear_messages_from_the_real_bundle(real_engine, case):
    from hirviz.ui import identify

    text = {"empty": "  \n", "protein": "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQ" * 5,
            "20 bp": "ACGTTGCAAGGCTTACGATC"}[case]
    view = identify(real_engine, None, text)
    expected = {"empty": "nothing to identify", "protein": "protein", "20 bp": "too short"}[case]
    assert expected in view.status.lower(), view.status
    assert view.status.startswith("✗") or "no confident match" in view.status
    assert view.coi_hits.empty


def test_batch_fasta_gives_a_tsv_with_the_engine_columns(real_engine, tmp_path):
    from hirviz.coi import ROW_COLUMNS
    from hirviz.ui.coi_view import batch_identify

    records = [_bank_record(real_engine, order) for order in ("Lepidoptera", "Diptera")]
    fasta = tmp_path / "three.fasta"
    fasta.write_text("".join(f">{i}\n{b}\n" for i, _, b in records) + ">protein\nMKTAYIAKQRQISFVKSHFSRQ\n")
    steps = []
    status, path, frame = batch_identify(real_engine, str(fasta), lambda done, total: steps.append((done, total)))
    assert status.startswith("✓") and steps[-1] == (3, 3)
    table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    assert list(table.columns) == list(ROW_COLUMNS) and list(table["id"]) == [r[0] for r in records] + ["protein"]
    for (_, ranks, _), (_, row) in zip(records, table.iloc[:2].iterrows()):
        assert row["species"] == ranks[3] and float(row["identity"]) == 100.0
    assert table.loc[2, "species"] == "" and "protein" in table.loc[2, "notes"]
    refused, nothing, _ = batch_identify(real_engine, None)
    assert refused.startswith("✗") and nothing is None


def test_the_app_wires_the_batch_tab_and_the_route(real_engine, tiny):
    from hirviz.ui import API_NAMES, build_ui

    demo = build_ui(real_engine.bundles, tiny["examples"], engine=real_engine)
    names = [d["api_name"] for d in demo.get_config_file()["dependencies"] if d["api_visibility"] != "private"]
    # Gradio names each examples list's own loading event load_example, load_example_1, ...
    assert {n for n in names if not n.startswith("load_example")} == set(API_NAMES)
    assert len(names) == len(set(names))
    route = next(c for c in demo.get_config_file()["components"] if c["props"].get("elem_id") == "hz-route")
    assert route["props"]["value"] == "real" and route["props"]["visible"] is not False


# ---------------------------------------------------------------------------------------------- typed names


def test_identify_ranks_only_the_names_a_user_types(engine, example, monkeypatch):
    from hirviz.ui import NoiseSettings, identify

    image, barcode = example
    bundle = engine.bundles["HiR-Fuse"]
    known = list(bundle.candidates[:2])
    typed = [*known, "Lepidoptera Noctuidae"]
    text = "\n".join([typed[0], "", f"  {typed[1]} ", typed[0], typed[2]])  # blanks and repeats are dropped
    view = identify(engine, {"path": image}, barcode, NoiseSettings(), candidates=text)
    assert view.ok and "Ranked only your 3 typed names (HiR-Fuse, CLIBD)." in view.status
    for prediction in view.predictions.values():
        for result in prediction.queries.values():
            assert len(result.probabilities) == 3 and np.isclose(result.probabilities.sum(), 1, atol=1e-4)
            assert {c for c, _ in result.candidates} <= set(typed)
    # The typed names are embedded by the bundle's own text tower: a known name gets its stored embedding, and
    # a typed order/family keeps its ranks by position.
    typed_predictor = engine.typed_predictor("HiR-Fuse", typed)
    assert np.allclose(typed_predictor.text_embeddings[:2], np.asarray(bundle.text_embeddings[:2]), atol=1e-4)
    assert typed_predictor.candidate_set.ranks[2] == ("Lepidoptera", "Noctuidae", None, None)
    # Empty box: each model ranks its own candidates, as before.
    plain = identify(engine, {"path": image}, barcode, NoiseSettings(), candidates="")
    assert len(plain.predictions["HiR-Fuse"].queries["dna"].probabilities) == len(bundle.candidates)
    assert "typed" not in plain.status
    # A model that cannot (hyperbolic) keeps its own candidates and the status says so plainly.
    monkeypatch.setattr(engine, "ranks_typed_names", lambda name: name != "CLIBD")
    view = identify(engine, {"path": image}, barcode, NoiseSettings(), candidates=text)
    assert "CLIBD cannot (hyperbolic" in view.status
    assert len(view.predictions["CLIBD"].queries["dna"].probabilities) == len(engine.bundles["CLIBD"].candidates)
    # Too many names, or not text: a clear message, no crash.
    many = identify(engine, {"path": image}, barcode, NoiseSettings(), candidates="\n".join(f"O{i}" for i in range(300)))
    assert not many.ok and "at most" in many.status
    assert not identify(engine, {"path": image}, barcode, NoiseSettings(), candidates=["x"]).ok


def test_geometry_tab_states_each_models_hierarchy_numbers_for_the_space_on_show(engine):
    from hirviz.ui.geometry_tab import map_consistency

    results = engine.bundles["HiR-Fuse"].eval_results
    for space, noisy in (("dna", "noisy_dna"), ("image", "noisy_image")):
        text = map_consistency(engine, space)
        line = next(p for p in text.split("\n\n") if p.startswith("**HiR-Fuse**"))
        rho = results["clean"][space]["hierarchy"]["agreement"]["rho"], results[noisy][space]["hierarchy"]["agreement"]["rho"]
        assert f"tree agreement {rho[0]:.2f} → {rho[1]:.2f}" in line and f"({space} space" in line
    # The baseline's fusion was never trained, so its evaluation has no fused numbers: said, not invented.
    assert "**CLIBD** (fused space): its evaluation has no hierarchy numbers" in map_consistency(engine, "fused")
