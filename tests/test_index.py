"""ReferenceIndex backends: exact FAISS, saved approximate FAISS (large banks), Qdrant; float16 bank storage."""

from __future__ import annotations

import json

import numpy as np
import pytest

import hirviz.bundle.reference as reference_module
import hirviz.bundle.save as save_module
from conftest import REPO_ROOT
from hirviz.bundle import BundleError, Reference
from hirviz.bundle.save import save_reference
from hirviz.geometry import ReferenceMap
from hirviz.index import (
    FaissIndex,
    ReferenceIndexError,
    backend,
    build_faiss,
    load_faiss,
    save_faiss,
    space_members,
)

D = 32


def clustered(n: int, seed: int = 0, clusters: int = 40) -> np.ndarray:
    """Unit vectors around ``clusters`` centres (a bank's shape: species clusters)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, D))
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def exact_top(bank: np.ndarray, rows: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    sims = queries @ bank[rows].T
    return rows[np.argsort(-sims, axis=1, kind="stable")[:, :k]]


def bank_reference(n: int, seed: int = 0) -> Reference:
    emb = clustered(n, seed)
    has_image = np.ones(n, bool)
    has_image[::7] = False  # specimens without a photo are absent from the image and fused spaces
    image = np.where(has_image[:, None], emb, 0)
    dna = clustered(n, seed + 1)
    fused = image + dna
    fused /= np.linalg.norm(fused, axis=1, keepdims=True)
    return Reference(ids=[f"S{i}" for i in range(n)], ranks=[[f"o{i % 3}", "", "", ""] for i in range(n)],
                     labels=np.full((n, 4), -1), barcodes=[""] * n,
                     embeddings={"image": image, "dna": dna, "fused": fused},
                     has_image=has_image, has_dna=np.ones(n, bool))


def test_flat_index_answers_reference_rows_exactly():
    bank = clustered(300)
    rows = np.arange(0, 300, 3)  # a space holding every third specimen
    index = build_faiss(bank, rows, kind="flat")
    queries = clustered(20, seed=5)
    scores, found = index.search(queries, 5)
    np.testing.assert_array_equal(found, exact_top(bank, rows, queries, 5))
    np.testing.assert_allclose(scores, np.take_along_axis(queries @ bank.T, found, axis=1), atol=1e-5)
    assert index.ntotal == 100 and index.params["exact"]
    scores, found = build_faiss(bank, rows[:3], kind="flat").search(queries[:1], 5)
    assert found[0, 3:].tolist() == [-1, -1] and np.isneginf(scores[0, 3:]).all()


def test_approximate_index_keeps_rows_and_reaches_high_recall(tmp_path):
    bank = clustered(4000)
    rows = np.flatnonzero(np.arange(4000) % 5 != 0)
    index = build_faiss(bank, rows, kind="IVF{nlist},SQfp16")
    assert index.params["factory"] == "IVF256,SQfp16" and index.params["nprobe"] > 0
    queries = clustered(100, seed=9)
    _, found = index.search(queries, 10)
    exact = exact_top(bank, rows, queries, 10)
    assert np.isin(found, rows).all()
    recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)])
    assert recall >= 0.9
    save_faiss(index, tmp_path / "index.faiss")
    loaded = load_faiss(tmp_path / "index.faiss", index.params)
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], found)


def test_a_damaged_index_file_is_one_clear_error(tmp_path):
    index = build_faiss(clustered(2000), np.arange(2000), kind="IVF{nlist},SQfp16")
    path = tmp_path / "index_dna.faiss"
    save_faiss(index, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReferenceIndexError, match="index_dna.faiss") as err:
        load_faiss(path, index.params)
    assert "\n" not in str(err.value)
    path.write_bytes(b"not a faiss index" * 10)
    with pytest.raises(ReferenceIndexError, match="index_dna.faiss"):
        load_faiss(path)
    with pytest.raises(ReferenceIndexError, match="missing"):
        load_faiss(tmp_path / "absent.faiss")


def test_large_bank_is_stored_float16_memory_mapped_with_saved_indexes(tmp_path, monkeypatch):
    monkeypatch.setattr(reference_module, "FLAT_MAX_ROWS", 1000)
    monkeypatch.setattr(save_module, "FLAT_MAX_ROWS", 1000)
    reference = bank_reference(3000)
    manifest = save_reference(tmp_path, reference)
    # the image space holds 2571 specimens (>= 1000): saved; all three spaces are large here
    assert set(manifest) == {"image", "dna", "fused"}
    assert manifest["image"]["ntotal"] == int(reference.has_image.sum())
    assert (tmp_path / manifest["dna"]["file"]).stat().st_size == manifest["dna"]["bytes"]
    (tmp_path / "config.json").write_text(json.dumps({"reference_index": manifest}))
    loaded = Reference.load(tmp_path / "reference.h5")
    assert isinstance(loaded.embeddings["dna"], np.memmap) and loaded.embeddings["dna"].dtype == np.float16
    np.testing.assert_allclose(loaded.embeddings["dna"], reference.embeddings["dna"], atol=1e-3)
    assert loaded.indexes.keys() == manifest.keys()
    refmap = ReferenceMap(loaded)
    assert refmap.index("image").params["factory"] == manifest["image"]["factory"]
    queries = clustered(50, seed=3)
    members = space_members(loaded, "image")
    np.testing.assert_array_equal(members, np.flatnonzero(reference.has_image))
    found = refmap.neighbours(queries, "image", k=10).rows
    exact = exact_top(np.asarray(loaded.embeddings["image"], np.float32), members, queries, 10)
    assert np.isin(found, members).all()
    assert np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact)]) >= 0.9


def test_small_bank_keeps_float32_and_builds_its_exact_index_at_load(tmp_path):
    reference = bank_reference(200)
    assert save_reference(tmp_path, reference) == {}
    loaded = Reference.load(tmp_path / "reference.h5")
    assert loaded.embeddings["dna"].dtype == np.float32 and not isinstance(loaded.embeddings["dna"], np.memmap)
    assert ReferenceMap(loaded).index("dna").params["exact"]


def test_the_demo_bundle_of_the_previous_format_still_loads():
    import hirviz

    bundle = hirviz.load_bundle(REPO_ROOT / "assets" / "demo-clibd")
    ref = bundle.reference
    assert ref.indexes == {} and all(v.dtype == np.float32 for v in ref.embeddings.values())
    refmap = ReferenceMap(ref)
    sims, rows = refmap.neighbours(ref.embeddings["dna"][5], "dna", k=3)
    assert rows[0] == 5 and sims[0] == pytest.approx(1.0, abs=1e-5)


def test_a_truncated_saved_index_is_refused_when_the_bundle_opens(tmp_path, monkeypatch):
    from hirviz.bundle.reference import check_reference_header

    monkeypatch.setattr(save_module, "FLAT_MAX_ROWS", 500)
    manifest = save_reference(tmp_path, bank_reference(1500))
    (tmp_path / "config.json").write_text(json.dumps({"reference_index": manifest}))
    check_reference_header(tmp_path / "reference.h5", D)  # intact: passes
    path = tmp_path / manifest["fused"]["file"]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(BundleError, match="index_fused.faiss is truncated"):
        check_reference_header(tmp_path / "reference.h5", D)
    path.unlink()
    with pytest.raises(BundleError, match="index_fused.faiss is missing"):
        check_reference_header(tmp_path / "reference.h5", D)


def test_a_corrupt_saved_index_fails_on_first_search_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(save_module, "FLAT_MAX_ROWS", 500)
    manifest = save_reference(tmp_path, bank_reference(1500))
    (tmp_path / "config.json").write_text(json.dumps({"reference_index": manifest}))
    path = tmp_path / manifest["dna"]["file"]
    path.write_bytes(b"\0" * path.stat().st_size)  # same size: only reading it can tell
    refmap = ReferenceMap(Reference.load(tmp_path / "reference.h5"))
    with pytest.raises(BundleError, match="index_dna.faiss"):
        refmap.neighbours(clustered(1)[0], "dna")


def test_backend_setting(monkeypatch):
    monkeypatch.delenv("HIRVIZ_INDEX", raising=False)
    assert backend() == "faiss"
    monkeypatch.setenv("HIRVIZ_INDEX", "Qdrant")
    assert backend() == "qdrant"
    monkeypatch.setenv("HIRVIZ_INDEX", "annoy")
    with pytest.raises(ReferenceIndexError, match="HIRVIZ_INDEX"):
        backend()


def test_qdrant_local_mode_gives_the_exact_top_k(monkeypatch):
    pytest.importorskip("qdrant_client", reason="qdrant-client is not installed (pip install 'hirviz[qdrant]')")
    from hirviz.index import QdrantIndex

    monkeypatch.delenv("HIRVIZ_QDRANT_URL", raising=False)
    reference = bank_reference(400)
    queries = clustered(25, seed=11)
    exact = ReferenceMap(reference)
    monkeypatch.setenv("HIRVIZ_INDEX", "qdrant")
    remote = ReferenceMap(reference)
    for space in ("image", "dna", "fused"):
        assert isinstance(remote.index(space), QdrantIndex)
        assert not isinstance(remote.index(space), FaissIndex)
        want, got = exact.neighbours(queries, space, k=8), remote.neighbours(queries, space, k=8)
        np.testing.assert_array_equal(got.rows, want.rows)
        np.testing.assert_allclose(got.similarity, want.similarity, atol=1e-5)
    assert remote.index("image").ntotal == int(reference.has_image.sum())
    # a second opening of the same bank reuses the filled collection of the same client
    again = QdrantIndex.build(reference.embeddings["dna"], np.arange(400), remote.index("dna").collection,
                              client=remote.index("dna").client)
    assert again.ntotal == 400


def test_bench_bank_builds_and_measures_a_small_bank(tmp_path, capsys):
    from conftest import load_repo_module

    bench_bank = load_repo_module("bench_bank_smoke", "bench/bench_bank.py")
    assert bench_bank.main(["--out", str(tmp_path), "--specimens", "3000", "--dim", "16", "--species", "60",
                            "--queries", "20", "--index", "large"]) == 0
    result = json.loads((tmp_path / "bench_result.json").read_text())
    assert [row["space"] for row in result["spaces"]] == ["image", "dna", "fused"]
    assert all(row["ntotal"] == 3000 and 0 <= row["recall10"] <= 1 and row["p50_ms"] > 0 for row in result["spaces"])
    assert result["rss_gb"] > 0
    assert "| fused | `IVF" in capsys.readouterr().out
