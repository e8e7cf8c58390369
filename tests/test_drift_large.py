"""The Geometry tab's drift text on a bank too large to compare whole: same words, a few rows, not the whole bank.

At 1.1 M references the exact comparison copied the bank in float64 several times per call (about 20 GB) and the
server was killed for memory under a load test; a large bank now compares within the index's nearest references.
"""

from __future__ import annotations

from conftest import REPO_ROOT
from hirviz import load_bundle
from hirviz.degrade import DnaNoise
from hirviz.ui import Engine, NoiseSettings, drift_text, geometry_tab, identify


def test_drift_on_a_large_bank_reads_a_few_rows_and_says_the_same(monkeypatch):
    bundle = load_bundle(REPO_ROOT / "assets" / "demo-hir-fuse")
    engine = Engine({bundle.name: bundle})
    example = REPO_ROOT / "assets" / "examples"
    image = str(example / "SYN0000030.jpg")
    barcode = (example / "examples.tsv").read_text().splitlines()[1].split("\t")[1]
    view = identify(engine, {"path": image}, barcode, NoiseSettings(dna=DnaNoise().scaled(4), seed=1))
    assert view.ok
    exact = drift_text(engine, view.session, "dna")
    assert "The noise moved the embedding" in exact

    seen = []
    original = geometry_tab.specimen_drift

    def spy(clean, degraded, ref_embeddings, ref_labels, *args):
        seen.append(len(ref_embeddings))
        return original(clean, degraded, ref_embeddings, ref_labels, *args)

    monkeypatch.setattr(geometry_tab, "specimen_drift", spy)
    monkeypatch.setattr(geometry_tab, "FLAT_MAX_ROWS", 10)  # the demo bank (thousands of rows) counts as large
    assert drift_text(engine, view.session, "dna") == exact
    assert seen and all(n <= 2 * geometry_tab.DRIFT_CANDIDATES for n in seen)
    rows = len(engine.predictor(bundle.name).reference_map.members("dna"))
    assert rows > 10 * geometry_tab.DRIFT_CANDIDATES  # so the test did compare a subset
