"""The app in a real browser, on inputs it must not pretend to identify, on a plate of photos, and with the result
tables' top-k and rank controls. The app and browser fixtures are those of :mod:`test_browser` (skipped where
Playwright or Chromium is missing)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw

pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
from test_browser import (  # noqa: E402, F401 (fixtures are found by name)
    _download,
    _identify_example,
    _status,
    _wait_status,
    browser,
    fresh_page,
    real_page,
    server,
)


def _empty_well(path) -> None:
    """A blank plate well: a pale disc of glass on a paler background, nothing in it."""
    image = Image.new("RGB", (320, 320), (236, 236, 236))
    ImageDraw.Draw(image).ellipse((30, 30, 290, 290), fill=(222, 224, 226))
    image.save(path)


def _gradient(path) -> None:
    """A picture of no insect at all: a smooth colour gradient."""
    y, x = np.mgrid[0:240, 0:320]
    Image.fromarray(np.stack([x * 255 // 320, y * 255 // 240, np.full_like(x, 60)], axis=2).astype(np.uint8)).save(
        path)


PHOTOS = {  # case -> (how to make the photo, what the answer must say beside "no confident match")
    "empty well": (_empty_well, "no specimen is visible"),
    "non-insect picture": (_gradient, "less like any reference specimen"),
    "1x1 image": (lambda path: Image.new("RGB", (1, 1), (40, 120, 30)).save(path), "1 x 1 pixels"),
    "grey square": (lambda path: Image.new("RGB", (200, 200), (128, 128, 128)).save(path), "blank"),
}


@pytest.mark.parametrize("case", list(PHOTOS))
def test_a_photo_out_of_range_gets_no_confident_match_and_no_tick(server, fresh_page, tmp_path, case):  # noqa: F811
    make, reason = PHOTOS[case]
    photo = tmp_path / "photo.png"
    make(photo)
    page = fresh_page
    _identify_example(page, server, image=str(photo))
    for box in ("#hz-result-0", "#hz-result-1"):  # every model says so, not only the main one
        result = page.inner_text(box)
        assert "no confident match" in result and reason in result.lower(), result
        assert "✓" not in result
    status = _status(page)
    assert "No confident match" in status and not status.startswith("✓"), status


def test_a_twenty_bp_read_gets_no_confident_match(real_page):  # noqa: F811
    from test_ui import REAL_COI

    import hirviz

    page, _ = real_page
    reference = hirviz.load_bundle(REAL_COI).reference
    read = str(reference.barcodes[0])[100:120]
    page.get_by_label("the real COI model (alignment + model)").check()
    page.fill("#hz-barcode textarea", read)
    page.click("#hz-identify")
    status = _wait_status(page, "20 bp")
    assert "no confident match" in status and not status.startswith("✓"), status
    answer = page.inner_text("#hz-coi")
    assert "decided by alignment" not in answer and "decided by the model" not in answer, answer
    # The synthetic models asked too: their DNA query abstains and says why.
    page.get_by_label("both").check()
    page.click("#hz-identify")
    page.wait_for_function("document.querySelector('#hz-result-0').innerText.includes('20 bp')")
    result = page.inner_text("#hz-result-0")
    assert "no confident match" in result and "✓" not in result


def test_a_reverse_complemented_barcode_is_turned_around_and_identified(real_page):  # noqa: F811
    from test_ui import REAL_COI

    import hirviz
    from hirviz.coi_check import reverse_complement

    page, _ = real_page
    reference = hirviz.load_bundle(REAL_COI).reference
    row = next(i for i in range(len(reference)) if reference.ranks[i, 3] and len(reference.barcodes[i]) >= 600)
    species = str(reference.ranks[row, 3])
    page.get_by_label("the real COI model (alignment + model)").check()
    page.fill("#hz-barcode textarea", reverse_complement(str(reference.barcodes[row])))
    page.click("#hz-identify")
    status = _wait_status(page, species)
    assert status.startswith("✓") and "decided by alignment" in status, status
    changes = page.inner_text("#hz-barcode-view")
    assert "reverse-complemented" in changes, changes  # the user is told what was done to the input
    assert species in page.inner_text("#hz-coi")


def test_a_plate_of_photos_gives_one_row_per_file(server, fresh_page, tmp_path):  # noqa: F811
    from hirviz.ui.plate import PLATE_COLUMNS

    page = fresh_page
    examples = pd.read_csv(server["tiny"]["examples"] / "examples.tsv", sep="\t", dtype=str)
    photos = [str(server["tiny"]["examples"] / name) for name in examples.image_file[:2]]
    notes = tmp_path / "plate-notes.txt"
    notes.write_text("plate 7, collected 3 June")
    page.get_by_role("tab", name="Plate (several photos)").click()
    page.set_input_files("#hz-plate-files input[type=file]", [*photos, str(notes)])
    page.locator("#hz-plate-files").get_by_text("plate-notes").wait_for()  # uploaded
    page.click("#hz-plate-run")
    page.wait_for_function("document.querySelector('#hz-plate-status').innerText.includes('of 3 photos')")
    assert "Identified 2 of 3 photos" in page.inner_text("#hz-plate-status")
    table = page.inner_text("#hz-plate-table")
    for name in [*examples.image_file[:2], "plate-notes.txt"]:
        assert name in table
    assert "not an image" in table
    path = _download(page, "#hz-plate-download", tmp_path / "plate.csv")
    csv = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(csv.columns) == list(PLATE_COLUMNS) and len(csv) == 3
    assert list(csv["file_name"]) == [*examples.image_file[:2], "plate-notes.txt"]

    # The plate table's own rank control shows one rank without identifying again.
    page.locator("#hz-plate-rank").get_by_label("genus").check()
    page.wait_for_function("!document.querySelector('#hz-plate-table').innerText.includes('species')")
    assert "genus" in page.inner_text("#hz-plate-table")


def test_the_top_k_and_rank_controls_change_the_result_tables(server, fresh_page):  # noqa: F811
    page = fresh_page
    _identify_example(page, server)
    status = _status(page)
    most = "() => Math.max(...[...document.querySelectorAll('#hz-result-0 td ul')].map(u => u.children.length))"
    assert page.evaluate(most) > 1
    slider = page.locator("#hz-top-k input[type=range]")
    slider.focus()
    page.keyboard.press("Home")  # top-k = 1
    page.wait_for_function(f"({most})() === 1")
    page.locator("#hz-rank").get_by_label("genus").check()
    page.wait_for_function("document.querySelectorAll('#hz-result-0 tbody th.hz-level').length === 2")
    levels = page.locator("#hz-result-0 tbody th.hz-level").all_inner_texts()
    assert levels[0].startswith("genus") and levels[1].startswith("deepest supported"), levels
    assert _status(page) == status  # shown again from the kept answer: the models did not run again
