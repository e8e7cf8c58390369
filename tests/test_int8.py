"""int8 dynamic quantisation (``HIRVIZ_INT8=1``) keeps the trained bundles' answers.

The bounds come from ``python -m bench.bench_int8`` (bench/README.md): on the shipped example specimens the demo
bundles' top-1 names and abstentions were the same in 99.3 to 100 % of comparisons (the lowest single cell 95 %:
2 of 40 near-ties at one rank), the real COI model's DNA query in 98 to 100 % per rank on 200 held-out barcodes
and its identification (hits + model) in 100 %. The tests ask a little less than measured (>= 95 % overall,
>= 90 % in any cell), so a harmless near-tie does not fail them while a quantisation that changes the models'
answers does.
"""

from __future__ import annotations

import pytest
import torch

from bench.bench_int8 import COI_BUNDLE, LEVELS, PHOTO_BUNDLES, coi_agreement, held_out_barcodes, photo_agreement
from conftest import REPO_ROOT, shared_data_dir
from hirviz import load_bundle
from hirviz.ui import Engine

EXAMPLES = REPO_ROOT / "assets" / "examples"


def _assert_agrees(tally, overall: float = 0.95, cell: float = 0.90) -> None:
    assert tally.seen, "nothing was compared"
    assert tally.overall() >= overall, tally.rows()
    for (what, level) in tally.seen:
        assert tally.share(what, level) >= cell, (what, level, tally.rows())


def test_engine_int8_quantises_a_copy():
    bundle = load_bundle(PHOTO_BUNDLES[0])
    engine = Engine({bundle.name: bundle}, int8=True)
    model = engine.predictor(bundle.name).model
    quantised = [m for m in model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert quantised, "no Linear layer was quantised"
    assert not any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in bundle.model.modules())
    assert not any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear)
                   for m in Engine({bundle.name: bundle}).predictor(bundle.name).model.modules())


@pytest.mark.parametrize("bundle_dir", PHOTO_BUNDLES, ids=lambda p: p.rsplit("/", 1)[-1])
def test_int8_keeps_demo_answers_on_the_examples(bundle_dir):
    tally = photo_agreement(bundle_dir, EXAMPLES)
    assert {what for what, _ in tally.seen} >= {"image", "dna", "avg"}
    assert all((what, "abstained") in tally.seen for what, _ in tally.seen)
    _assert_agrees(tally)


def test_int8_keeps_real_coi_answers_on_held_out_barcodes():
    table = shared_data_dir() / "real_dna" / "barcodes.tsv"
    if not table.is_file():
        pytest.skip(f"real barcodes not found at {table}")
    barcodes = held_out_barcodes(load_bundle(COI_BUNDLE), table, 100)
    assert len(barcodes) == 100
    tally = coi_agreement(COI_BUNDLE, barcodes)
    _assert_agrees(tally)
    # What the app shows for a pasted barcode is the identification: it must not move.
    assert all(tally.share("identification", level) >= 0.97 for level in LEVELS), tally.rows()


def test_app_reads_the_speed_settings(monkeypatch):
    from conftest import load_repo_module

    app = load_repo_module("app", "app.py")
    monkeypatch.delenv("HIRVIZ_INT8", raising=False)
    monkeypatch.delenv("HIRVIZ_TORCH_THREADS", raising=False)
    assert app.model_settings() == (False, app.TORCH_THREADS)  # int8 is off unless asked for
    monkeypatch.setenv("HIRVIZ_INT8", "1")
    monkeypatch.setenv("HIRVIZ_TORCH_THREADS", "2")
    assert app.model_settings() == (True, 2)
    for name, bad in (("HIRVIZ_INT8", "maybe"), ("HIRVIZ_TORCH_THREADS", "0"), ("HIRVIZ_TORCH_THREADS", "two")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(SystemExit, match=name):
            app.model_settings()
        monkeypatch.setenv(name, "1")


def test_app_serves_int8_models_when_asked(monkeypatch):
    from conftest import load_repo_module

    app = load_repo_module("app", "app.py")
    monkeypatch.setenv("HIRVIZ_INT8", "on")
    monkeypatch.setenv("HIRVIZ_TORCH_THREADS", "1")
    captured = {}
    monkeypatch.setattr("hirviz.ui.build_ui", lambda bundles, examples, engine: captured.setdefault("engine", engine))
    engine = app.build_app([PHOTO_BUNDLES[0]], warm_up=False)
    assert engine.int8 and torch.get_num_threads() == 1
