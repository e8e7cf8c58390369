"""The app in a real browser (Playwright driving the system's Chromium) on the tiny test bundles.

Skipped where Playwright or Chromium is missing. The app is launched in this process on a free 127.0.0.1 port.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")

CHROMIUM = os.environ.get("HIRVIZ_CHROMIUM", "/usr/bin/chromium")
BROWSER_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
TIMEOUT_MS = 30_000
from conftest import load_repo_module  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set HIRVIZ_CHROMIUM)",
                allow_module_level=True)


def _load_app_module():
    return load_repo_module("hirviz_app", "app.py")


@pytest.fixture(scope="module")
def server(tmp_path_factory, free_port):
    from test_ui import build_tiny_bundles

    tiny = build_tiny_bundles(tmp_path_factory.getbasetemp() / "ui-bundles")
    workdir = tmp_path_factory.mktemp("app-cwd")
    before_cwd = os.getcwd()
    os.chdir(workdir)  # the app must write nothing where it runs: checked at the end
    app = _load_app_module()
    port = free_port()
    os.environ.pop("SPACE_ID", None)
    os.environ["GRADIO_SERVER_PORT"] = str(port)
    try:
        demo = app.build_app([str(tiny["hir"]), str(tiny["clibd"])], tiny["examples"])
        app.launch(demo, prevent_thread_lock=True, quiet=True)
        yield {"url": f"http://127.0.0.1:{port}/", "tiny": tiny, "workdir": workdir}
        demo.close()
    finally:
        os.environ.pop("GRADIO_SERVER_PORT", None)
        os.chdir(before_cwd)
    assert not any(workdir.iterdir()), f"the app wrote into its working directory: {list(workdir.iterdir())}"


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module (Playwright's sync API allows one running instance per thread)."""
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        yield browser
        browser.close()


def _download(page, element_id: str, path):
    """Click the download link inside ``element_id`` as a user would and save the file the browser receives."""
    link = page.locator(f"{element_id} a").first
    link.wait_for()
    with page.expect_download() as info:
        link.click()
    info.value.save_as(path)
    return path


def _open_app(browser, url: str, width: int = 1400, height: int = 1000, timeout_ms: int = TIMEOUT_MS):
    """A new page of ``browser`` on the app at ``url``, once its Identify button is there."""
    page = browser.new_page(viewport={"width": width, "height": height})
    page.set_default_timeout(timeout_ms)
    page.goto(url)
    page.wait_for_selector("#hz-identify")
    return page


@pytest.fixture(scope="module")
def page(server, browser):
    page = _open_app(browser, server["url"])
    yield page
    page.close()


def _status(page) -> str:
    return page.inner_text("#hz-status")


def _wait_status(page, needle: str) -> str:
    page.wait_for_function("needle => document.querySelector('#hz-status').innerText.includes(needle)", arg=needle)
    return _status(page)


def _drag_slider(page, elem_id: str, fraction: float) -> None:
    box = page.locator(f"#{elem_id} input[type=range]").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + 2, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * fraction, y, steps=5)
    page.mouse.up()


def test_identify_in_the_browser(server, page, tmp_path):
    examples = pd.read_csv(server["tiny"]["examples"] / "examples.tsv", sep="\t", dtype=str)
    image = server["tiny"]["examples"] / examples.image_file[0]
    page.set_input_files("#hz-image input[type=file]", str(image))
    page.fill("#hz-barcode textarea", examples.barcode[0])
    page.click("#hz-identify")
    _wait_status(page, "Identified from the image + barcode")
    main_table = page.inner_text("#hz-result-0")
    for column in ("Image only", "DNA only", "Averaged", "Gated fusion"):
        assert column in main_table
    assert "deepest supported" in main_table
    assert "no trained fusion" in page.inner_text("#hz-result-1")  # the baseline, beside it
    # Plots render after the status line: wait for them (a loaded machine showed the gate plot late).
    sync_api.expect(page.locator("#hz-model-image img[src^='data:image/png']")).to_have_count(1, timeout=TIMEOUT_MS)
    sync_api.expect(page.locator("#hz-gate .js-plotly-plot")).to_have_count(1, timeout=TIMEOUT_MS)

    # A noise slider re-identifies on release, and the degraded barcode shows its edits.
    _drag_slider(page, "hz-substitution", 0.5)
    page.wait_for_function("document.querySelector('#hz-barcode-view').innerText.includes('after the noise')")
    assert page.locator("#hz-barcode-view .hz-sub").count() > 0
    _wait_status(page, "Identified")

    page.screenshot(path=str(tmp_path / "identify.png"), full_page=True)

    page.get_by_role("tab", name="Geometry").click()
    page.wait_for_selector("#hz-map-0 .js-plotly-plot")
    page.wait_for_function("document.querySelector('#hz-map-0').innerText.includes('your specimen')")
    page.screenshot(path=str(tmp_path / "geometry.png"), full_page=True)
    page.get_by_role("tab", name="Identify").click()

    # An example specimen is one click away: it fills the inputs and identifies at once.
    before = page.inner_text("#hz-result-0")
    label = examples.taxonomy[1]
    page.get_by_role("button", name=label, exact=True).click()
    page.wait_for_function("barcode => document.querySelector('#hz-barcode textarea').value === barcode",
                           arg=examples.barcode[1])
    page.wait_for_function("before => document.querySelector('#hz-result-0').innerText !== before", arg=before)
    assert "Identified from the image + barcode" in _status(page)


def _remove_image(page) -> None:
    remove = page.locator("#hz-image button[aria-label='Remove Image']")
    if remove.count():
        remove.first.click()


def test_bad_inputs_show_messages_and_the_app_keeps_serving(server, page, tmp_path):
    # A text file: the browser side refuses it by type, with a message.
    notes = tmp_path / "notes.txt"
    notes.write_text("collected at the pond, 3 June; see notebook p. 12")
    _remove_image(page)
    page.set_input_files("#hz-image input[type=file]", str(notes))
    page.wait_for_function("[...document.querySelectorAll('.toast-body')].some(t => t.innerText.includes("
                           "'Invalid file type'))")

    # The same text named like a photo gets through the browser; the server says what is wrong with it.
    disguised = tmp_path / "field-notes.jpg"
    disguised.write_text(notes.read_text())
    page.set_input_files("#hz-image input[type=file]", str(disguised))
    page.fill("#hz-barcode textarea", "")
    page.click("#hz-identify")
    status = _wait_status(page, "refused")
    assert "not an image" in status
    page.wait_for_function("[...document.querySelectorAll('.toast-body')].some(t => t.innerText.includes("
                           "'not an image'))")

    _remove_image(page)
    page.fill("#hz-barcode textarea", "ACGT" * 25_000)  # a 100 kb barcode
    page.click("#hz-identify")
    status = _wait_status(page, "Barcode refused")
    assert "limit" in status

    # The app still serves.
    page.fill("#hz-barcode textarea", "ACGT" * 160)
    page.click("#hz-identify")
    _wait_status(page, "Identified from the barcode")
    page.screenshot(path=str(tmp_path / "after-errors.png"), full_page=True)


def test_gradio_client_can_identify(server):
    client_module = pytest.importorskip("gradio_client")
    examples = pd.read_csv(server["tiny"]["examples"] / "examples.tsv", sep="\t", dtype=str)
    image = server["tiny"]["examples"] / examples.image_file[0]
    client = client_module.Client(server["url"], verbose=False)
    out = client.predict(image=client_module.handle_file(str(image)), barcode=examples.barcode[0], blur_kernel=3,
                         substitution=0.05, seed=2, api_name="/identify")
    status, csv_file, raw = out[0], out[-2], out[-1]  # the session state is not an API output: the JSON comes last
    assert status[2:].startswith("Identified from the image + barcode")
    # The tick only when the main model's verdict names something (its first answering query's deepest rank).
    main = raw["tiny-clibd-hir-fuse"]["queries"]
    query = next((q for q in ("fused", "avg", "image", "dna") if not main[q]["abstained"]), None)
    assert status[0] == ("✓" if query and main[query]["deepest_rank"] else "→")
    assert list(pd.read_csv(csv_file, nrows=1).columns)[0] == "model"  # the whole result as CSV, for clients too
    assert set(raw) == {"tiny-clibd-hir-fuse", "tiny-clibd"}
    assert set(raw["tiny-clibd-hir-fuse"]["queries"]) == {"image", "dna", "avg", "fused"}
    assert raw["tiny-clibd-hir-fuse"]["settings"]["blur_kernel"] == 3
    assert raw["tiny-clibd-hir-fuse"]["degraded_barcode"] != raw["tiny-clibd-hir-fuse"]["barcode"]
    refused = client.predict(image=None, barcode="ACGT" * 25_000, api_name="/identify")
    assert refused[0].startswith("✗ Barcode refused")


# ------------------------------------------------------------------------- the app with the real COI bundle


@pytest.fixture(scope="module")
def real_page(tmp_path_factory, free_port, browser):
    """The app as it ships (two synthetic photo models and the real COI bundle), open in Chromium."""
    from test_ui import REAL_COI, build_tiny_bundles

    tiny = build_tiny_bundles(tmp_path_factory.getbasetemp() / "ui-bundles")
    app = _load_app_module()
    port = free_port()
    os.environ.pop("SPACE_ID", None)
    os.environ["GRADIO_SERVER_PORT"] = str(port)
    try:
        demo = app.build_app([str(tiny["hir"]), str(tiny["clibd"]), str(REAL_COI)], tiny["examples"])
        app.launch(demo, prevent_thread_lock=True, quiet=True)
    finally:
        os.environ.pop("GRADIO_SERVER_PORT", None)
    try:
        page = _open_app(browser, f"http://127.0.0.1:{port}/", timeout_ms=TIMEOUT_MS * 2)
        yield page, demo
        page.close()
    finally:
        demo.close()


def test_a_pasted_barcode_is_identified_by_the_real_bundle(real_page, tmp_path):
    from test_ui import REAL_COI

    import hirviz

    page, _ = real_page
    reference = hirviz.load_bundle(REAL_COI).reference
    rows = [i for i in range(len(reference)) if reference.ranks[i, 3] and len(reference.barcodes[i]) >= 600][:2]
    record_id, species = str(reference.ids[rows[0]]), str(reference.ranks[rows[0], 3])
    page.fill("#hz-barcode textarea", f">{record_id}\n{reference.barcodes[rows[0]]}")
    page.click("#hz-identify")
    status = _wait_status(page, "decided by alignment")
    assert species in status
    page.wait_for_function("id => document.querySelector('#hz-coi-hits').innerText.includes(id)", arg=record_id)
    hits = page.inner_text("#hz-coi-hits")
    assert "identity %" in hits and "100" in hits
    answer = page.inner_text("#hz-coi")
    assert "Real model" in answer and species in answer and "decided by alignment" in answer
    assert "invented" in page.inner_text("#hz-result-0")  # the photo models are marked as the synthetic demo
    page.screenshot(path=str(tmp_path / "real-barcode.png"), full_page=True)

    # A FASTA of two barcodes on the batch tab gives a TSV to download.
    fasta = tmp_path / "two.fasta"
    fasta.write_text("".join(f">{reference.ids[i]}\n{reference.barcodes[i]}\n" for i in rows))
    page.get_by_role("tab", name="Batch barcodes").click()
    page.set_input_files("#hz-batch-file input[type=file]", str(fasta))
    page.click("#hz-batch-run")
    page.wait_for_function("document.querySelector('#hz-batch-status').innerText.includes('Identified 2 records')")
    page.wait_for_selector("#hz-batch-download a")
    assert record_id in page.inner_text("#hz-batch-table")


@pytest.fixture(scope="module")
def hyperbolic_app(server, page, free_port):
    """The app with a tiny hyperbolic (Lorentz CLIBD) bundle as its main model, beside the tiny CLIBD baseline."""
    from test_ui import _add_pca_layouts

    from conftest import CI_CONFIG
    from train.config import load_config
    from train.export import export
    from train.loop import fit

    tiny = server["tiny"]
    root = server["workdir"].parent / "hyperbolic-app"
    data = tiny["data"]
    cfg = load_config(CI_CONFIG, [f"data.metadata={data / 'metadata.tsv'}", f"data.images={data / 'images.hdf5'}",
                                  f"run.out_dir={root / 'run'}", "model.geometry=lorentz", "loss.objective=clibd"])
    bundle = export(fit(cfg, max_steps=2), root / "bundle", name="tiny-hyperbolic", umap=False, max_reference=200)
    _add_pca_layouts(bundle / "reference.h5")
    app = _load_app_module()
    port = free_port()
    demo = app.build_app([str(bundle), str(tiny["clibd"])], tiny["examples"])
    app.launch(demo, prevent_thread_lock=True, quiet=True, server_port=port)
    # a second page of the module's browser (one sync Playwright per thread)
    hyperbolic_page = _open_app(page.context.browser, f"http://127.0.0.1:{port}/")
    yield hyperbolic_page
    hyperbolic_page.close()
    demo.close()


def test_hyperbolic_model_shows_the_poincare_disk(server, hyperbolic_app, tmp_path):
    page = hyperbolic_app
    examples = pd.read_csv(server["tiny"]["examples"] / "examples.tsv", sep="\t", dtype=str)
    page.set_input_files("#hz-image input[type=file]", str(server["tiny"]["examples"] / examples.image_file[0]))
    page.fill("#hz-barcode textarea", examples.barcode[0])
    page.click("#hz-identify")
    _wait_status(page, "Identified from the image + barcode")  # a model without a fused query identifies

    page.get_by_role("tab", name="Geometry").click()
    page.wait_for_selector("#hz-map-0 .js-plotly-plot")
    page.wait_for_function("document.querySelector('#hz-map-0').innerText.includes('your specimen')")
    disk = page.locator("#hz-map-0")
    assert "Poincare disk" in disk.inner_text()
    sync_api.expect(disk.locator(".shapelayer path").first).to_be_attached(timeout=TIMEOUT_MS)  # the unit circle
    assert page.locator("#hz-map-1 .shapelayer path").count() == 0  # the Euclidean baseline keeps its UMAP map
    assert page.locator("#hz-generality-0 .js-plotly-plot").is_visible()
    assert "distance from the origin" in page.inner_text("#hz-generality-0")
    page.screenshot(path=str(tmp_path / "poincare.png"), full_page=True)


# ------------------------------------------------------------------ honest answers, phones, keyboards, downloads


def _identify_example(page, server, row: int = 0, image: str | None = None) -> None:
    examples = pd.read_csv(server["tiny"]["examples"] / "examples.tsv", sep="\t", dtype=str)
    _remove_image(page)
    page.set_input_files("#hz-image input[type=file]", image or str(server["tiny"]["examples"] /
                                                                     examples.image_file[row]))
    page.fill("#hz-barcode textarea", examples.barcode[row] if image is None else "")
    before = _status(page)
    page.click("#hz-identify")
    page.wait_for_function("before => { const s = document.querySelector('#hz-status').innerText;"
                           " return s !== before && s.includes('Identified'); }", arg=before)


@pytest.fixture()
def fresh_page(server, browser):
    """A page of its own (sliders at zero), 1,280 px wide."""
    page = _open_app(browser, server["url"], 1280, 900)
    yield page
    page.close()


# Layout facts of the result tables, measured in the page.
_NAME_HEIGHTS_JS = """() => [...document.querySelectorAll('#hz-result-0 .hz-name')].map(e => {
  const style = getComputedStyle(e);
  const line = parseFloat(style.lineHeight) || parseFloat(style.fontSize) * 1.25;
  return {text: e.innerText, height: e.getBoundingClientRect().height, line: line};
})"""


def test_results_fit_a_phone_screen(server, browser, tmp_path):
    page = browser.new_page(viewport={"width": 390, "height": 844}, device_scale_factor=1, is_mobile=True,
                            has_touch=True)
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(server["url"])
        page.wait_for_selector("#hz-identify")
        _identify_example(page, server)
        page.screenshot(path=str(tmp_path / "phone-identify.png"), full_page=True)
        # No horizontal scrolling of the page: wide tables scroll inside their own box.
        width = page.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1] + 1, width
        # Names stay readable: none is broken into a column of letters (each name at most two lines high).
        names = page.evaluate(_NAME_HEIGHTS_JS)
        assert names and all(n["height"] < 3 * n["line"] for n in names), names
        # The synthetic demo is marked where its answers are shown.
        assert page.locator("#hz-result-0 [data-kind='synthetic']").is_visible()
        assert "invented" in page.inner_text("#hz-result-0")
    finally:
        page.close()


def test_desktop_neighbours_table_reads_in_one_line_per_header(server, fresh_page):
    import re

    page = fresh_page
    _identify_example(page, server)
    page.wait_for_function("document.querySelectorAll('#hz-neighbours [role=gridcell]').length > 0")
    headers = page.evaluate("""() => [...document.querySelectorAll('#hz-neighbours th[role=columnheader]')]
        .map(th => {
          const text = th.querySelector('span.header') || th;
          const style = getComputedStyle(text);
          return {title: th.title, column: th.dataset.heading, height: text.getBoundingClientRect().height,
                  line: parseFloat(style.lineHeight) || parseFloat(style.fontSize) * 1.3};
        })""")
    assert {h["title"] for h in headers} >= {"specimen", "similarity", "species"}, headers
    assert all(h["height"] < 1.6 * h["line"] for h in headers), headers  # every header on one line
    column = next(h["column"] for h in headers if h["title"] == "similarity")
    # Similarities are shown in full, not cut off by their column.
    cells = page.evaluate("""column => [...document.querySelectorAll(
        `#hz-neighbours [role=gridcell][data-col="${column}"]`)].map(td => {
          const text = td.querySelector('span') || td;
          return {text: text.innerText.trim(), clipped: text.scrollWidth > td.clientWidth + 1};
        })""", column)
    assert cells and all(not c["clipped"] for c in cells), cells
    assert all(re.fullmatch(r"-?[01](\.\d{1,4})?", c["text"]) for c in cells), cells


def test_a_slider_moved_by_keyboard_identifies_again(server, fresh_page):
    page = fresh_page
    _identify_example(page, server)
    assert "after the noise" not in page.inner_text("#hz-barcode-view")
    slider = page.locator("#hz-n_mask input[type=range]")
    slider.focus()
    for _ in range(20):
        page.keyboard.press("ArrowRight")
    page.wait_for_function("document.querySelector('#hz-barcode-view').innerText.includes('after the noise')")
    assert page.locator("#hz-barcode-view .hz-mask").count() > 0
    assert float(page.input_value("#hz-n_mask input[type=number]")) == pytest.approx(0.02)


def test_the_whole_result_downloads_as_csv(server, fresh_page, tmp_path):
    from hirviz.ui.result_csv import CSV_COLUMNS

    page = fresh_page
    _identify_example(page, server)
    path = _download(page, "#hz-download", tmp_path / "result.csv")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(table.columns) == list(CSV_COLUMNS)
    assert set(table["model"]) == {"tiny-clibd-hir-fuse", "tiny-clibd"}
    assert set(table["query"]) == {"image", "dna", "avg", "fused"}
