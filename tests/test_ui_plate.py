"""The Plate tab (several photos -> one table) and the result tables' top-k and rank controls, without a browser."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_ui import engine, example, tiny  # noqa: F401 (the tiny bundles and their engine, built once)

from hirviz.taxonomy import LEVELS


@pytest.fixture()
def plate_files(example, tmp_path) -> list[str]:  # noqa: F811
    """A plate of four files: a specimen photo, a blank well, a text file named like a photo, a 1x1 image."""
    image, _ = example
    grey = tmp_path / "well-B2.png"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(grey)
    notes = tmp_path / "notes.jpg"
    notes.write_text("collected at the pond, 3 June")
    dot = tmp_path / "dot.png"
    Image.new("RGB", (1, 1), (10, 200, 30)).save(dot)
    return [image, str(grey), str(notes), str(dot)]


def test_a_plate_gives_one_row_per_photo_and_a_message_for_a_bad_file(engine, plate_files):  # noqa: F811
    from hirviz.ui import identify
    from hirviz.ui.plate import NO_MATCH, PLATE_COLUMNS, identify_plate, plate_frame, plate_rows, plate_summary
    from hirviz.ui.result_csv import write_csv

    seen = []
    status, result = identify_plate(engine, plate_files, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 4) for i in range(1, 5)]  # the progress bar moves after every photo
    assert result.model == engine.primary
    assert plate_summary(result.entries) == {"answered": 1, "abstained": 2, "unread": 1}, status
    assert "Identified 3 of 4 photos" in status and "invented names" in status
    frame = plate_frame(result)
    assert list(frame.columns) == ["photo", *LEVELS, "deepest rank", "score", "warnings"]
    assert list(frame["photo"]) == [Path(plate_files[0]).name, "well-B2.png", "notes.jpg", "dot.png"]
    rows = frame.set_index("photo")
    assert "not an image" in rows.loc["notes.jpg", "warnings"]
    assert rows.loc["well-B2.png", "species"] == NO_MATCH and "blank" in rows.loc["well-B2.png", "warnings"]
    assert rows.loc["dot.png", "order"] == NO_MATCH and "1 x 1 pixels" in rows.loc["dot.png", "warnings"]
    # The photo is identified as on the Identify tab: same model, same answer.
    single = identify(engine, plate_files[0], None).predictions[engine.primary].queries["image"]
    answer = rows.iloc[0]
    assert answer["order"] == f"{single.levels['order'][0][0]} ({single.levels['order'][0][1]:.0%})"
    assert answer["deepest rank"] == (single.deepest_rank or "none (order uncertain)")
    # The CSV holds every rank of every photo, the bad file included.
    table = pd.read_csv(write_csv(plate_rows(result), PLATE_COLUMNS, "plate.csv"), keep_default_na=False)
    assert list(table.columns) == list(PLATE_COLUMNS) and len(table) == 4
    assert table.loc[0, "order"] == single.levels["order"][0][0]
    assert float(table.loc[0, "order_score"]) == pytest.approx(single.levels["order"][0][1])
    assert list(table["abstained"]) == [False, True, True, True]


def test_the_plate_table_follows_its_top_k_and_rank_controls(engine, example):  # noqa: F811
    from hirviz.ui.plate import identify_plate, plate_frame

    image, _ = example
    _, result = identify_plate(engine, [image, image])
    genus = result.entries[0].prediction.queries["image"].levels["genus"]
    frame = plate_frame(result, top_k=3, rank="genus")
    assert list(frame.columns) == ["photo", "genus", "deepest rank", "score", "warnings"]
    names = [re.sub(r" \(\d+%\)$", "", cell) for cell in frame.loc[0, "genus"].split("; ")]
    assert names == [name for name, _ in genus[:3]]
    assert len(plate_frame(result, top_k=1).loc[0, "genus"].split("; ")) == 1


def test_a_plate_without_photos_or_with_too_many_gets_a_message(engine, example):  # noqa: F811
    from hirviz.ui.plate import MAX_PLATE_PHOTOS, identify_plate

    status, result = identify_plate(engine, None)
    assert status.startswith("✗") and "upload" in status and not result.entries
    status, result = identify_plate(engine, [example[0]] * (MAX_PLATE_PHOTOS + 1))
    assert status.startswith("✗") and f"at most {MAX_PLATE_PHOTOS}" in status and not result.entries


def test_result_tables_show_the_chosen_top_k_and_ranks_without_running_the_models(
        engine, example, monkeypatch):  # noqa: F811
    from hirviz.ui import identify
    from hirviz.ui.handlers import result_views

    image, barcode = example
    view = identify(engine, image, barcode, top_k=2, rank="genus")
    html = view.results[engine.primary]
    assert "<th class='hz-level'>genus" in html and "<th class='hz-level'>species" not in html
    cells = re.findall(r"<td><ul>(.*?)</ul></td>", html)
    assert cells and all(1 <= cell.count("<li>") <= 2 for cell in cells)
    assert list(view.neighbours.columns) == ["query", "#", "specimen", "genus", "similarity"]
    assert view.neighbours.groupby("query").size().max() == 2

    # Re-rendering uses the kept predictions: a model that ran again would fail here.
    monkeypatch.setattr(engine, "predict", lambda *a, **k: pytest.fail("the models ran again"))
    results, neighbours = result_views(engine, view.predictions, 10, "all ranks")
    wide = results[engine.primary]
    assert all(f"<th class='hz-level'>{level}" in wide for level in LEVELS)
    top = view.predictions[engine.primary].queries["image"].levels["species"]
    assert wide.count("<li>") > html.count("<li>") and len(top) > 2
    assert list(neighbours.columns) == ["query", "#", "specimen", *LEVELS, "similarity"]
    assert np.all(neighbours.groupby("query").size() > 2)
