"""Predictor: probability aggregation over the taxonomy, queries, degradations, neighbours and input checks."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from hirviz.barcode import BarcodeError, parse_barcode
from hirviz.degrade import DnaNoise, box_blur, degrade_barcode_with_edits
from hirviz.predict import (
    INPUT_ERRORS,
    MAX_IMAGE_PIXELS,
    ROW_COLUMNS,
    CandidateSet,
    ImageTooLarge,
    InputError,
    InvalidImage,
    agreement,
    deepest_rank,
    load_image,
    softmax_scores,
)
from hirviz.taxonomy import LEVELS

REPO_ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------------------
# A tiny bundle made with hirviz alone (random weights: these tests check the plumbing, not the accuracy).
# test_geometry.py and test_cli.py build theirs with make_tiny_bundle too.

TINY_MODEL = {
    "embed_dim": 32,
    "clip_model": "hirviz-tiny",
    "clip_overrides": {"embed_dim": 32, "vision_cfg": {"image_size": 32, "patch_size": 8, "layers": 1, "width": 32,
                                                       "head_width": 16},
                       "text_cfg": {"layers": 1, "width": 32, "heads": 2}},
    "dna_hidden": 32, "dna_layers": 1, "dna_heads": 2, "dna_intermediate": 64, "dna_dropout": 0.0,
}
N_REFERENCE = 40
NO_IMAGE_ROWS = range(0, 4)  # reference specimens without a photo
NO_DNA_ROWS = range(4, 8)  # ... and without a barcode


def tiny_candidates() -> list[tuple[str | None, ...]]:
    """2 orders x 2 families x 2 genera x 2 species, plus candidates identified only to order/family/genus."""
    ranks = []
    for o in range(2):
        for f in range(2):
            for g in range(2):
                for s in range(2):
                    genus = f"Genus{o}{f}{g}"
                    ranks.append((f"Order{o}", f"Family{o}{f}", genus, f"{genus} sp{s}"))
    ranks += [("Order0", None, None, None), ("Order1", "Family10", None, None),
              ("Order0", "Family01", "Genus010", None)]
    return ranks


def specimen_image(seed: int, size: tuple[int, int] = (40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, 3)
    noise = rng.integers(-40, 40, (size[1], size[0], 3))
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8), "RGB")


def specimen_barcode(seed: int, length: int = 300) -> str:
    return "".join(np.random.default_rng(seed + 1000).choice(list("ACGT"), length))


def make_tiny_bundle(out: Path) -> Path:
    """Write a small, complete bundle (model, candidates, reference with missing modalities, layouts)."""
    from hirviz.bundle import save_bundle
    from hirviz.model import ModelConfig, average_fusion, build_model
    from hirviz.taxonomy import Taxonomy, taxonomy_string

    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY_MODEL)).eval()
    ranks = tiny_candidates()
    candidates = [taxonomy_string(r) for r in ranks]
    with torch.no_grad():
        text = model.encode_text(model.tokenize_text(candidates)).numpy()
        transform = model.image_transform(train=False)
        pixels = torch.stack([transform(specimen_image(i)) for i in range(N_REFERENCE)])
        z_img = model.encode_image(pixels)
        tokens = model.tokenize_dna([specimen_barcode(i) for i in range(N_REFERENCE)])
        z_dna = model.encode_dna(tokens["input_ids"], tokens["attention_mask"])
        fused, _ = model.fuse(z_img, z_dna)
        avg = average_fusion(z_img, z_dna)
    has_image = np.ones(N_REFERENCE, dtype=bool)
    has_image[list(NO_IMAGE_ROWS)] = False
    has_dna = np.ones(N_REFERENCE, dtype=bool)
    has_dna[list(NO_DNA_ROWS)] = False
    both = has_image & has_dna
    masks = {"image": has_image, "dna": has_dna, "avg": both, "fused": both}
    embeddings = {"image": z_img.numpy(), "dna": z_dna.numpy(), "avg": avg.numpy(), "fused": fused.numpy()}
    embeddings = {s: np.where(masks[s][:, None], v, 0.0).astype(np.float32) for s, v in embeddings.items()}
    rng = np.random.default_rng(0)
    layouts = {s: np.where(masks[s][:, None], rng.normal(size=(N_REFERENCE, 2)), np.nan).astype(np.float32)
               for s in ("image", "dna", "fused")}
    ref_ranks = [ranks[i % len(ranks)] for i in range(N_REFERENCE)]
    reference = {"ids": [f"REF{i:03d}" for i in range(N_REFERENCE)], "ranks": ref_ranks,
                 "barcodes": [specimen_barcode(i) if has_dna[i] else "" for i in range(N_REFERENCE)],
                 "embeddings": embeddings, "has_image": has_image, "has_dna": has_dna, "layouts": layouts}
    return save_bundle(out, name="tiny-test", model=model, taxonomy=Taxonomy.from_lineages(ranks),
                       candidates=candidates, candidate_ranks=ranks, text_embeddings=text, reference=reference,
                       training_config={}, objective="clibd-hir-fuse", provenance={"made_by": "tests"},
                       card="# tiny test bundle\n")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from hirviz.bundle import load_bundle

    return load_bundle(make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny"))


@pytest.fixture(scope="module")
def predictor(bundle):
    return bundle.predictor()


# ---------------------------------------------------------------------------------------------------------------
# Aggregating candidate probabilities per level


def test_level_scores_sum_candidate_probabilities_and_unknown_ranks_are_unassigned():
    ranks = [("A", "F1", "G1", "G1 s1"), ("A", "F1", "G1", "G1 s2"), ("A", "F1", "G2", None),
             ("A", "F2", None, None), ("B", None, None, None)]
    cands = CandidateSet([" ".join(r for r in row if r) for row in ranks], ranks)
    p = np.array([0.1, 0.2, 0.3, 0.15, 0.25])
    levels, unassigned = cands.aggregate(p, top_k=5)
    scores = {lvl: dict(ranked) for lvl, ranked in levels.items()}
    assert scores["genus"]["G1"] == pytest.approx(p[0] + p[1])  # a genus = the sum of its species
    assert scores["genus"]["G1"] == pytest.approx(scores["species"]["G1 s1"] + scores["species"]["G1 s2"])
    assert scores["genus"]["G2"] == pytest.approx(p[2])  # a candidate known only to genus still counts there
    assert scores["family"] == pytest.approx({"F1": p[:3].sum(), "F2": p[3]})
    assert scores["order"] == pytest.approx({"A": p[:4].sum(), "B": p[4]})
    # Candidates unknown at a level are not a name but "unassigned" mass.
    assert unassigned["family"] == pytest.approx(p[4])
    assert unassigned["species"] == pytest.approx(p[2:].sum())
    assert set(scores["species"]) == {"G1 s1", "G1 s2"}
    # Ranked best first; equal scores broken by name.
    assert [n for n, _ in levels["genus"]] == ["G1", "G2"]  # 0.3 each
    assert levels["order"][0][0] == "A"


def test_level_scores_on_random_probabilities_conserve_mass():
    ranks = tiny_candidates()
    cands = CandidateSet([str(i) for i in range(len(ranks))], ranks)
    p = np.random.default_rng(1).dirichlet(np.ones(len(ranks)))
    levels, unassigned = cands.aggregate(p, top_k=100)
    for depth, level in enumerate(LEVELS):
        assert sum(s for _, s in levels[level]) + unassigned[level] == pytest.approx(1.0)
        assert [s for _, s in levels[level]] == sorted((s for _, s in levels[level]), reverse=True)
        for name, score in levels[level]:
            assert score == pytest.approx(sum(p[c] for c, r in enumerate(ranks) if r[depth] == name))
    top2, _ = cands.aggregate(p, top_k=2)
    assert all(top2[lvl] == levels[lvl][:2] for lvl in LEVELS)


def test_lineage_fills_the_ranks_above_a_name():
    ranks = [("A", None, "G1", "G1 s1"), ("A", "F1", "G1", None)]
    cands = CandidateSet(["A G1 G1 s1", "A F1 G1"], ranks)
    assert cands.lineage("genus", "G1") == {"order": "A", "family": "F1", "genus": "G1"}
    assert cands.lineage("species", "G1 s1") == {"order": "A", "family": None, "genus": "G1", "species": "G1 s1"}


def test_softmax_scores_use_the_logit_scale():
    rng = np.random.default_rng(0)
    text = rng.normal(size=(6, 8)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    z = text[2] + 0.1 * rng.normal(size=8)
    z /= np.linalg.norm(z)
    for scale in (1.0, 1 / 0.07):
        p = softmax_scores(z[None], text, scale)[0]
        assert p.sum() == pytest.approx(1.0)
        cos = text @ z
        assert np.log(p[0] / p[1]) == pytest.approx(scale * (cos[0] - cos[1]), rel=1e-5)
        assert np.argmax(p) == np.argmax(cos)


def test_deepest_rank_walks_down_from_order_and_stops_at_the_first_uncertain_level():
    levels = {"order": [("A", 0.9)], "family": [("F", 0.7)], "genus": [("G", 0.4)], "species": [("S", 0.35)]}
    assert deepest_rank(levels) == "family"
    assert deepest_rank(levels, threshold=0.3) == "species"
    assert deepest_rank(levels, threshold=0.95) is None
    confident_species = dict(levels, species=[("S", 0.8)])  # not counted under an uncertain genus
    assert deepest_rank(confident_species) == "family"
    assert deepest_rank(dict(levels, genus=[], species=[]), threshold=0.1) == "family"


def test_agreement_compares_top1_names_across_queries():
    a = {"order": [("A", 0.9)], "family": [("F", 0.5)], "genus": [("G", 0.3)], "species": []}
    b = {"order": [("A", 0.6)], "family": [("F2", 0.5)], "genus": [("G", 0.2)], "species": []}
    assert agreement({"image": a, "dna": b}) == {"order": True, "family": False, "genus": True, "species": False}
    assert agreement({"image": a}) == {"order": True, "family": True, "genus": True, "species": False}


# ---------------------------------------------------------------------------------------------------------------
# Predictions with a bundle


def test_queries_follow_the_inputs_and_the_gate_is_a_mean_in_0_1(predictor, bundle):
    image, barcode = specimen_image(10), specimen_barcode(10)
    assert set(predictor.predict(image=image).queries) == {"image"}
    assert set(predictor.predict(barcode=barcode).queries) == {"dna"}
    both = predictor.predict(image, barcode)
    assert list(both.queries) == ["image", "dna", "avg", "fused"]
    assert both.gate_vector.shape == (bundle.embed_dim,)
    assert 0.0 < both.gate < 1.0 and ((both.gate_vector > 0) & (both.gate_vector < 1)).all()
    assert both.gate == pytest.approx(float(both.gate_vector.mean()))
    assert predictor.predict(image=image).gate is None and predictor.predict(barcode=barcode).gate_vector is None
    assert both.model_input_image.mode == "RGB" and max(both.model_input_image.size) >= 128
    json.dumps(both.to_dict())  # serialisable as it is


def test_fusion_is_flagged_untrained_for_objectives_without_the_fusion_loss(predictor, bundle, tmp_path):
    assert predictor.fusion_trained and predictor.predict(specimen_image(10), specimen_barcode(10)).fusion_trained

    def flag(training: dict, objective: str) -> bool:
        """What a prediction says of a bundle exported from a run with this training config and objective."""
        import shutil

        from hirviz.bundle import load_bundle

        copy = tmp_path / f"bundle{len(list(tmp_path.iterdir()))}"
        shutil.copytree(bundle.path, copy)
        config = json.loads((copy / "config.json").read_text())
        config.pop("fusion_trained")  # a bundle from before the explicit flag: judged by its training config
        (copy / "config.json").write_text(json.dumps({**config, "training": training, "objective": objective}))
        return load_bundle(copy).predictor().predict(specimen_image(10), specimen_barcode(10)).fusion_trained
    assert not flag({"loss": {"objective": "clibd-hir"}}, "clibd-hir")
    assert not flag({"loss": {"objective": "clibd-hir-fuse", "fusion_weight": 0.0}}, "clibd-hir-fuse")
    assert flag({"loss": {"objective": "clibd-hir-fuse", "fusion_weight": 1.0}}, "clibd-hir-fuse")


def test_probabilities_are_a_softmax_over_candidates_and_levels_aggregate_them(predictor, bundle):
    pred = predictor.predict(specimen_image(11), specimen_barcode(11), top_k=3)
    scale = float(bundle.model.logit_scale_exp())
    for result in pred.queries.values():
        assert np.linalg.norm(result.embedding) == pytest.approx(1.0, abs=1e-5)
        logits = scale * (bundle.text_embeddings.astype(np.float64) @ result.embedding.astype(np.float64))
        expected = np.exp(logits - logits.max())
        np.testing.assert_allclose(result.probabilities, expected / expected.sum(), rtol=1e-5)
        for depth, level in enumerate(LEVELS):
            assert len(result.levels[level]) <= 3
            for taxon, score in result.levels[level]:
                members = [c for c, r in enumerate(bundle.candidate_ranks) if r[depth] == taxon]
                assert score == pytest.approx(result.probabilities[members].sum())
        assert result.candidates[0][0] == bundle.candidates[int(np.argmax(result.probabilities))]
        assert result.deepest_rank == deepest_rank(result.levels, 0.5)
    tops = {q: {lvl: r.levels[lvl][0][0] for lvl in LEVELS} for q, r in pred.queries.items()}
    assert pred.agreement == {lvl: len({t[lvl] for t in tops.values()}) == 1 for lvl in LEVELS}


def test_embeddings_match_the_evaluation_engine_with_the_same_degradations(predictor, bundle):
    """A query is built as train/embed.py builds evaluation queries (eval transform, blur on the input grid)."""
    import pandas as pd

    from train.embed import Degradation, embed_frame

    image, barcode = specimen_image(12, size=(90, 60)), specimen_barcode(12)
    frame = pd.DataFrame({"barcode": [barcode], "image_file": ["specimen.jpg"]})
    store = SimpleNamespace(get=lambda name: image)
    noise = DnaNoise().scaled(3.0)
    expected = embed_frame(bundle.model, frame, store, Degradation(dna=noise, blur_kernel=5, seed=7))
    pred = predictor.predict(image, barcode, blur_kernel=5, dna_noise=noise, seed=7)
    for query in ("image", "dna", "avg", "fused"):
        np.testing.assert_allclose(pred.queries[query].embedding, expected[query][0], atol=1e-5)
    np.testing.assert_allclose(pred.gate_vector, expected["gate"][0], atol=1e-5)


def test_blur_changes_what_the_image_tower_sees(predictor):
    image = specimen_image(13, size=(64, 64))
    clean, blurred = predictor.predict(image, blur_kernel=0), predictor.predict(image, blur_kernel=7)
    seen_clean = np.asarray(clean.model_input_image, dtype=float)
    seen_blurred = np.asarray(blurred.model_input_image, dtype=float)
    assert seen_blurred.std() < seen_clean.std()  # averaging removes the speckle
    assert not np.allclose(clean.queries["image"].embedding, blurred.queries["image"].embedding)
    pixels = predictor.preprocess(image)
    direct = predictor.model.encode_image(box_blur(pixels, 7)[None]).detach().numpy()[0]
    np.testing.assert_allclose(blurred.queries["image"].embedding, direct, atol=1e-5)


def test_dna_noise_is_seeded_and_reported(predictor):
    text = ">BOLD123 a specimen\n" + specimen_barcode(14)
    noise = DnaNoise().scaled(2.0)
    pred = predictor.predict(barcode=text, dna_noise=noise, seed=3)
    expected, edits = degrade_barcode_with_edits(parse_barcode(text), noise, 3, key=0)
    assert pred.degraded_barcode == expected and pred.barcode_edits == edits and edits
    assert pred.barcode == parse_barcode(text) and pred.barcode_id == "BOLD123"
    again = predictor.predict(barcode=text, dna_noise=noise, seed=3)
    np.testing.assert_array_equal(again.queries["dna"].embedding, pred.queries["dna"].embedding)
    other = predictor.predict(barcode=text, dna_noise=noise, seed=4)
    assert other.degraded_barcode != pred.degraded_barcode
    clean = predictor.predict(barcode=text)
    assert clean.degraded_barcode is None and clean.barcode_edits == []
    assert not np.allclose(clean.queries["dna"].embedding, pred.queries["dna"].embedding)


def test_neighbours_are_the_brute_force_nearest_reference_specimens(predictor, bundle):
    pred = predictor.predict(specimen_image(15), specimen_barcode(15), neighbours=6)
    ref = bundle.reference
    masks = {"image": ref.has_image, "dna": ref.has_dna, "avg": ref.has_image & ref.has_dna,
             "fused": ref.has_image & ref.has_dna}
    for query, result in pred.queries.items():
        sims = ref.embeddings[query] @ result.embedding
        rows = np.flatnonzero(masks[query])
        best = rows[np.argsort(-sims[rows], kind="stable")[:6]]
        assert [h["id"] for h in result.neighbours] == [str(ref.ids[r]) for r in best]
        np.testing.assert_allclose([h["similarity"] for h in result.neighbours], sims[best], atol=1e-5)
        for hit in result.neighbours:
            expected_ranks = [r or None for r in ref.ranks[hit["row"]]]
            assert list(hit["ranks"].values()) == expected_ranks and list(hit["ranks"]) == list(LEVELS)
    assert all(r.neighbours == [] for r in predictor.predict(specimen_image(15), neighbours=0).queries.values())


def test_a_batch_of_variants_embeds_like_each_variant_alone(predictor):
    image, barcode = specimen_image(16), specimen_barcode(16)
    kernels, noises = [0, 3, 5], [None, DnaNoise(), DnaNoise().scaled(4)]
    batch = predictor.embed(image, barcode, blur_kernels=kernels, dna_noises=noises, seed=2)
    for j, (k, noise) in enumerate(zip(kernels, noises)):
        alone = predictor.embed(image, barcode, blur_kernels=[k], dna_noises=[noise], seed=2)
        for space in ("image", "dna", "avg", "fused"):
            np.testing.assert_allclose(batch.vectors[space][j], alone.vectors[space][0], atol=1e-5)


def test_rows_have_pybioclip_like_columns_and_lineages(predictor):
    pred = predictor.predict(specimen_image(17), specimen_barcode(17), top_k=2)
    rows = pred.to_rows(file_name="bee.jpg", barcode_id="B1")
    assert all(tuple(row) == ROW_COLUMNS for row in rows)
    assert len(rows) == sum(len(r.levels[lvl]) for r in pred.queries.values() for lvl in LEVELS)
    for row in rows:
        depth = LEVELS.index(row["rank"])
        assert row["file_name"] == "bee.jpg" and row["barcode_id"] == "B1"
        assert dict(pred.queries[row["query"]].levels[row["rank"]])[row[row["rank"]]] == row["score"]
        assert all(row[lvl] == "" for lvl in LEVELS[depth + 1:])
        lineage = pred.candidate_set.lineage(row["rank"], row[row["rank"]])
        assert [row[lvl] for lvl in LEVELS[:depth + 1]] == [lineage[lvl] or "" for lvl in LEVELS[:depth + 1]]
    assert pred.to_rows()[0]["file_name"] == ""


# ---------------------------------------------------------------------------------------------------------------
# Bad input gets a clear message


def test_bad_arguments_are_input_errors(predictor):
    image = specimen_image(19)
    with pytest.raises(InputError, match="image, a DNA barcode or both"):
        predictor.predict()
    with pytest.raises(InputError, match="top_k"):
        predictor.predict(image, top_k=0)
    with pytest.raises(InputError, match="blur kernel"):
        predictor.predict(image, blur_kernel=-1)
    with pytest.raises(InputError, match="blur kernel"):
        predictor.predict(image, blur_kernel=10_000)
    with pytest.raises(InputError, match="threshold"):
        predictor.predict(image, threshold=1.5)


@pytest.mark.parametrize("text", ["", "MKVLAAGIVALLLAAGCSS", "ACGT\x00\x01\x02", ">a\nACGTACGT\n>b\nACGTACGT"])
def test_bad_barcodes_propagate_the_parser_message(predictor, text):
    with pytest.raises(BarcodeError) as expected:
        parse_barcode(text)
    with pytest.raises(INPUT_ERRORS) as got:
        predictor.predict(barcode=text)
    assert isinstance(got.value, BarcodeError) and str(got.value) == str(expected.value)


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but holds almost no data (a decompression-bomb shape)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def test_non_images_and_corrupt_files_are_invalid_images(tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("this is not a picture\n")
    jpeg = _encoded(specimen_image(20, size=(200, 150)), "JPEG", quality=90)
    truncated = tmp_path / "cut.jpg"
    truncated.write_bytes(jpeg[: len(jpeg) // 2])
    garbled = tmp_path / "garbled.jpg"
    garbled.write_bytes(jpeg[:20] + bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8)))
    for bad, message in [(text_file, "not an image"), (b"\x00\x01binary junk", "not an image"),
                         (truncated, "corrupt or truncated"), (garbled, "not an image|corrupt"),
                         (tmp_path / "missing.png", "not found"), (np.zeros((4, 4, 2)), "shape"),
                         (np.array([["a"]]), "numbers"), (42, "expected an image")]:
        with pytest.raises(InvalidImage, match=message):
            load_image(bad)
    # Callers catch every bad input with one clause (InputError), or as the ValueError it is.
    for catch in (InputError, ValueError):
        with pytest.raises(catch, match="not an image"):
            load_image(text_file)


def test_huge_images_are_refused_before_decoding(tmp_path):
    side = int(np.sqrt(MAX_IMAGE_PIXELS)) + 100
    over_limit = tmp_path / "big.png"
    over_limit.write_bytes(_png_header_only(side, side))
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_png_header_only(30_000, 30_000))  # beyond PIL's own decompression-bomb limit too
    for path in (over_limit, bomb):
        with pytest.raises(ImageTooLarge, match="megapixels|too large"):
            load_image(path)
    with pytest.raises(ImageTooLarge, match="megapixels"):
        load_image(np.broadcast_to(np.zeros(1, np.uint8), (side, side)))  # no memory needed
    with pytest.raises(ImageTooLarge):
        load_image(specimen_image(21), max_pixels=100)


def test_16_bit_images_are_rescaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 40, 257 * 200, 65535]], dtype=np.uint16).repeat(3, axis=0)
    for fmt in ("PNG", "TIFF"):
        path = tmp_path / f"grey16.{fmt.lower()}"
        Image.fromarray(values).save(path, fmt)
        assert Image.open(path).mode.startswith("I;16")
        rgb = np.asarray(load_image(path))
        assert rgb.dtype == np.uint8 and rgb.shape == (3, 4, 3)
        np.testing.assert_array_equal(rgb[0, :, 0], [0, 40, 200, 255])
        assert (rgb == rgb[..., :1]).all()
    np.testing.assert_array_equal(np.asarray(load_image(values))[0, :, 1], [0, 40, 200, 255])
    as_float = np.asarray(load_image(values.astype(np.float32) / 65535))
    np.testing.assert_array_equal(as_float[0, :, 2], [0, 40, 200, 255])


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 3, 4), dtype=np.uint8)  # transparent black background
    rgba[0, 0] = [255, 0, 0, 255]  # one opaque red pixel
    rgba[0, 1] = [0, 0, 0, 128]  # half-transparent black
    path = tmp_path / "cutout.png"
    Image.fromarray(rgba, "RGBA").save(path)
    for source in (path, rgba, Image.fromarray(rgba, "RGBA")):
        rgb = np.asarray(load_image(source)).astype(int)
        assert rgb[1, 2].tolist() == [255, 255, 255]
        assert rgb[0, 0].tolist() == [255, 0, 0]
        assert all(abs(v - 127) <= 1 for v in rgb[0, 1])
    palette = Image.fromarray(rgba[..., :3], "RGB").convert("P")
    palette.info["transparency"] = palette.getpixel((2, 1))
    palette_path = tmp_path / "palette.png"
    palette.save(palette_path, transparency=palette.getpixel((2, 1)))
    assert np.asarray(load_image(palette_path))[1, 2].tolist() == [255, 255, 255]


@pytest.mark.parametrize("fmt,mode", [("JPEG", "L"), ("PNG", "L"), ("WEBP", "RGB"), ("TIFF", "RGB"),
                                      ("JPEG", "CMYK"), ("BMP", "RGB"), ("GIF", "P")])
def test_common_formats_and_modes_load_as_8_bit_rgb(tmp_path, fmt, mode):
    original = specimen_image(22, size=(33, 21))
    source = original.convert(mode)
    path = tmp_path / f"specimen.{fmt.lower()}"
    source.save(path, fmt)
    for given in (path, str(path), path.read_bytes()):
        img = load_image(given)
        assert img.mode == "RGB" and img.size == (33, 21)
    if fmt in ("PNG", "TIFF", "BMP") and mode in ("L", "RGB"):  # lossless: the exact pixels come back
        assert np.array_equal(np.asarray(load_image(path)), np.asarray(source.convert("RGB")))


def test_exif_orientation_is_applied(tmp_path):
    image = specimen_image(23, size=(40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the camera held upright
    path = tmp_path / "rotated.jpg"
    image.save(path, "JPEG", exif=exif.tobytes())
    assert load_image(path).size == (20, 40)


def test_image_errors_reach_the_predictor_as_input_errors(predictor, tmp_path):
    bad = tmp_path / "fake.jpg"
    bad.write_bytes(b"GIF89a but not really")
    with pytest.raises(INPUT_ERRORS, match="fake.jpg"):
        predictor.predict(image=bad, barcode=specimen_barcode(24))


# ---------------------------------------------------------------------------------------------------------------
# Package boundary


def test_importing_the_predictor_does_not_import_the_trainer():
    code = ("import sys, hirviz.predict, hirviz.geometry, hirviz.__main__; "
            "bad = [m for m in sys.modules if m == 'train' or m.startswith('train.')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, timeout=120)
