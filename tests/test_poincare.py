"""The Poincare disk of hyperbolic (Lorentz) bundles: the exact radial projection, its storage in a bundle, placing
new points on it, the distance-from-origin figure, and the Geometry tab's choice of map per geometry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CI_CONFIG, stand_in_layout, tiny_overrides
from hirviz import figures
from hirviz.geometry import Geometry, ReferenceMap
from hirviz.lorentz import exp_map0
from hirviz.poincare import fit_disk_axes, poincare_disk
from hirviz.taxonomy import LEVELS
from train.config import load_config

LORENTZ = ("model.geometry=lorentz", "loss.objective=clibd", "model.learn_temperature=true")


def _points(n: int, d: int, seed: int, c: float, spread: float = 0.8) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return exp_map0(torch.randn(n, d, generator=g, dtype=torch.float64) * spread, c).numpy()


def _export(run: Path, out: Path) -> Path:
    import hirviz.geometry
    from train.export import export

    original = hirviz.geometry.fit_layout
    hirviz.geometry.fit_layout = stand_in_layout  # module-scoped stand-in for UMAP (see conftest.no_umap)
    try:
        return export(run, out, max_reference=60, abstention=False)
    finally:
        hirviz.geometry.fit_layout = original


@pytest.fixture(scope="module")
def bundles(tiny_synth: Path, tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A few-step Lorentz CLIBD bundle and a Euclidean one (the shared tiny run), both with stand-in layouts."""
    from train.loop import fit

    root = tmp_path_factory.mktemp("poincare")
    cfg = load_config(CI_CONFIG, tiny_overrides(tiny_synth, root / "lorentz-run", *LORENTZ))
    lorentz_run = fit(cfg, max_steps=3)
    return {"lorentz": _export(lorentz_run, root / "lorentz"), "euclidean": _export(tiny_run, root / "euclidean")}


# ----------------------------------------------------------------------------------------------------------------
# The projection


@pytest.mark.parametrize("c", [0.5, 1.0, 2.0])
def test_disk_is_inside_the_unit_disk_and_nearer_the_origin_is_nearer_the_centre(c: float) -> None:
    # spreads up to far points whose tanh rounds to 1 in float32: they must still lie inside
    x = np.vstack([_points(200, 16, 0, c, spread=s) for s in (0.1, 1.0, 4.0, 20.0)])
    disk = poincare_disk(x, c, fit_disk_axes(x, c))
    radius = np.linalg.norm(disk.astype(np.float64), axis=1)
    assert disk.shape == (800, 2) and np.isfinite(disk).all()
    assert (radius < 1).all()
    distance = Geometry("lorentz", c).origin_distance(x)
    order = np.argsort(distance)
    assert (np.diff(radius[order]) >= -1e-7).all()  # monotone, up to float32 storage
    near = distance < 5
    np.testing.assert_allclose(radius[near], np.tanh(np.sqrt(c) * distance[near] / 2), rtol=1e-5, atol=1e-6)


def test_a_point_along_an_axis_lands_on_that_axis_at_its_exact_radius() -> None:
    c, d = 1.5, 6
    axes = np.eye(d)[:2]
    tangent = np.zeros((3, d))
    tangent[0, 0], tangent[1, 1], tangent[2, 0] = 0.7, 2.0, -0.3
    disk = poincare_disk(exp_map0(torch.from_numpy(tangent), c).numpy(), c, axes)
    r = np.tanh(np.sqrt(c) * np.array([0.7, 2.0, 0.3]) / 2)
    np.testing.assert_allclose(disk, [[r[0], 0], [0, r[1]], [-r[2], 0]], atol=1e-6)


def test_missing_modality_rows_are_left_off_the_disk_and_bad_axes_are_refused() -> None:
    x = _points(10, 4, 1, 1.0)
    x[3] = 0
    axes = fit_disk_axes(x, 1.0)
    assert axes.shape == (2, 4)
    disk = poincare_disk(x, 1.0, axes)
    assert np.isnan(disk[3]).all() and np.isfinite(np.delete(disk, 3, axis=0)).all()
    with pytest.raises(ValueError, match="axes"):
        poincare_disk(x, 1.0, axes[:, :3])


# ----------------------------------------------------------------------------------------------------------------
# The distance-from-origin figure


def test_generality_figure_has_one_group_per_rank() -> None:
    ranks = np.array([["O", "", "", ""], ["O", "F", "", ""], ["O", "F", "G", ""], ["O", "F", "G", "S"],
                      ["O", "", "", ""], ["", "", "", ""]], dtype=object)
    distances = np.array([0.5, 1.0, 1.5, 2.0, 0.7, 9.0])
    figure = figures.generality_figure({"text": (distances, ranks), "specimens": (distances[:4], ranks[:4])},
                                       query=1.2)
    assert list(figure.layout.xaxis.categoryarray) == list(LEVELS)
    assert [trace.name for trace in figure.data] == ["text", "specimens"]
    text = figure.data[0]
    assert sorted(set(text.x)) == sorted(LEVELS)  # every rank is a group; the row with no rank is left out
    by_rank = {level: sorted(y for x, y in zip(text.x, text.y) if x == level) for level in LEVELS}
    assert by_rank == {"order": [0.5, 0.7], "family": [1.0], "genus": [1.5], "species": [2.0]}


# ----------------------------------------------------------------------------------------------------------------
# Bundles, placement and the app


def test_a_lorentz_bundle_stores_a_disk_that_places_its_own_points_exactly(bundles: dict[str, Path]) -> None:
    import hirviz

    bundle = hirviz.load_bundle(bundles["lorentz"])
    ref = bundle.reference
    assert set(ref.poincare) == {"image", "dna"} == set(ref.poincare_axes)
    assert "poincare_layout" in bundle.config["provenance"]
    # the model card names the trained curvature beside the initial one
    assert bundle.config["provenance"]["curvature"] == pytest.approx(bundle.curvature)
    assert f"learnt: {bundle.curvature:.4g} after training" in (bundle.path / "README.md").read_text()
    reference_map = ReferenceMap(ref, Geometry("lorentz", bundle.curvature))
    for space, disk in ref.poincare.items():
        rows = reference_map.members(space)
        assert (np.linalg.norm(disk[rows], axis=1) < 1).all()
        placed = reference_map.place(ref.embeddings[space][rows], space, layout="poincare")
        np.testing.assert_allclose(placed, disk[rows], atol=1e-6)
    euclidean = hirviz.load_bundle(bundles["euclidean"])
    assert euclidean.reference.poincare == {}
    with pytest.raises(ValueError, match="Poincare"):
        ReferenceMap(euclidean.reference).place(euclidean.reference.embeddings["image"][0], "image", layout="poincare")


def test_geometry_tab_shows_the_disk_for_lorentz_and_umap_for_euclidean(bundles: dict[str, Path]) -> None:
    import hirviz
    from hirviz.ui import Engine
    from hirviz.ui.handlers import generality, geometry

    engine = Engine({"hyperbolic": hirviz.load_bundle(bundles["lorentz"]),
                     "euclidean": hirviz.load_bundle(bundles["euclidean"])})
    ref = engine.bundles["hyperbolic"].reference
    row = int(ReferenceMap(ref, Geometry("lorentz", engine.bundles["hyperbolic"].curvature)).members("dna")[0])
    session = {"embeddings": {"hyperbolic": {"dna": ref.embeddings["dna"][row].tolist()}}}
    _, maps = geometry(engine, session, "dna", "family", False)

    disk = maps["hyperbolic"]
    assert [shape.type for shape in disk.layout.shapes] == ["circle"]
    assert figures.DISK_LABEL in [a.text for a in disk.layout.annotations]
    star = next(trace for trace in disk.data if trace.name == "your specimen")
    np.testing.assert_allclose([star.x[0], star.y[0]], ref.poincare["dna"][row], atol=1e-6)
    umap = maps["euclidean"]
    assert not umap.layout.shapes and len(umap.data) > 0

    curves = generality(engine, session, "dna")
    assert list(curves) == ["hyperbolic"]
    names = [trace.name for trace in curves["hyperbolic"].data]
    assert names == ["taxonomy text (candidates)", "reference specimens (dna)"]
    lines = [shape for shape in curves["hyperbolic"].layout.shapes if shape.type == "line"]
    expected = Geometry("lorentz", engine.bundles["hyperbolic"].curvature).origin_distance(ref.embeddings["dna"][row])
    assert len(lines) == 1 and lines[0].y0 == pytest.approx(float(expected[0]))
