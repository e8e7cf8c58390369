"""Hyperbolic CLIBD end to end: training in the Lorentz geometry, the optimizer's no-decay group, export, prediction
and evaluation ranking by geodesic distance, and the refusal of HiR / fusion with it (METHOD.md section 9)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import CI_CONFIG, tiny_overrides
from hirviz.geometry import Geometry, ReferenceMap
from hirviz.lorentz import exp_map0, pairwise_distance
from train.config import load_config

LORENTZ = ("model.geometry=lorentz", "loss.objective=clibd", "model.learn_temperature=true")


def _lorentz_config(synth: Path, out: Path, *extra: str):
    return load_config(CI_CONFIG, tiny_overrides(synth, out, *LORENTZ, "optim.epochs=1", "run.log_every=1", *extra))


@pytest.fixture(scope="module")
def lorentz_run(tiny_synth: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch Lorentz CLIBD run (SEL entailment) of the CI model on the tiny synthetic set."""
    from train.loop import fit

    return fit(_lorentz_config(tiny_synth, tmp_path_factory.mktemp("lorentz-run") / "run"))


@pytest.fixture(scope="module")
def lorentz_bundle(lorentz_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import hirviz.geometry
    from conftest import stand_in_layout
    from train.export import export

    original = hirviz.geometry.fit_layout
    hirviz.geometry.fit_layout = stand_in_layout  # module-scoped stand-in for UMAP (see conftest.no_umap)
    try:
        return export(lorentz_run, tmp_path_factory.mktemp("lorentz-bundle") / "bundle", max_reference=60)
    finally:
        hirviz.geometry.fit_layout = original


def _random_points(n: int, d: int, seed: int, c: float) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    return exp_map0(torch.randn(n, d, generator=g, dtype=torch.float64) * 0.8, c).float().numpy()


# ----------------------------------------------------------------------------------------------------------------
# Configuration


@pytest.mark.parametrize("objective", ["clibd-hir", "clibd-hir-fuse"])
def test_lorentz_refuses_hir_and_fusion_naming_the_keys(objective: str) -> None:
    with pytest.raises(ValueError, match=r"model\.geometry=lorentz.*loss\.objective=" + objective):
        load_config(CI_CONFIG, ["model.geometry=lorentz", f"loss.objective={objective}"])
    with pytest.raises(ValueError, match="loss.entailment"):
        load_config(CI_CONFIG, [*LORENTZ, "loss.entailment=cones"])
    cfg = load_config(CI_CONFIG, [*LORENTZ, "loss.entailment=b", "loss.entail_weight=0.2",
                                  "loss.hyperbolic_reduction=mean6"])
    assert (cfg.loss.entailment, cfg.loss.entail_weight, cfg.loss.hyperbolic_reduction) == ("b", 0.2, "mean6")


# ----------------------------------------------------------------------------------------------------------------
# Training


def test_lorentz_steps_lower_the_loss_and_keep_the_curvature_in_range(tiny_synth: Path, tmp_path: Path) -> None:
    """Optimizer steps on one batch lower its hyperbolic loss (contrastive + SEL cones); a step that would push c
    out of [0.1, 10] is clamped back."""
    from torch.utils.data import DataLoader

    from hirviz.model import build_model
    from train.data import SpecimenDataset, make_collate, open_images, train_transform
    from train.hyperbolic_training import RankPrompts, param_groups
    from train.loop import autocast_for, batch_loss
    from train.rundir import load_training_split

    torch.manual_seed(0)
    cfg = _lorentz_config(tiny_synth, tmp_path / "run")
    frame, train_idx, _ = load_training_split(cfg, None)
    model = build_model(cfg.model)
    dataset = SpecimenDataset(frame.iloc[train_idx], open_images(cfg.data.images),
                              train_transform(model.image_size[0], model.image_mean, model.image_std), views=1)
    collate = make_collate(dna_tokenizer=model.dna_tokenizer, text_tokenizer=model.tokenize_text)
    batch = next(iter(DataLoader(dataset, batch_size=20, collate_fn=collate)))
    prompts = RankPrompts(model, dataset.texts, dataset.text_ids, dataset.labels, dataset.taxonomy,
                          torch.device("cpu"))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(param_groups(model, params), lr=1e-3)
    model.train()
    losses = []
    for _ in range(6):
        loss, parts = batch_loss(model, batch, cfg, torch.device("cpu"), autocast_for("fp32", torch.device("cpu")),
                                 rank_prompts=prompts)
        assert {"clip", "entail", "entail_intra", "entail_inter"} <= set(parts)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.projector.clamp_()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    with torch.no_grad():
        model.projector.log_curvature.add_(5.0)  # c = e^5 ~ 148: what a runaway step would leave
    model.projector.clamp_()
    assert 0.1 <= model.projector.curvature().item() <= 10.0
    assert float(model.projector.log_curvature) == pytest.approx(np.log(10.0), abs=1e-6)


def test_frozen_text_cache_gives_the_same_points_as_the_tower(tiny_synth: Path, tmp_path: Path) -> None:
    """The frozen-tower caches (taxonomy strings and SEL's rank prompts) hold features that the projector embeds in
    the forward pass: the points equal those of encoding the tokens, and the batch's rank prompts are its own."""
    from hirviz.model import build_model
    from hirviz.taxonomy import Taxonomy
    from train.data import encode_labels, read_metadata
    from train.embed import embed_texts
    from train.hyperbolic_training import RankPrompts
    from train.losses.hyperbolic import rank_prompts

    cfg = _lorentz_config(tiny_synth, tmp_path / "run")
    model = build_model(cfg.model).eval()
    frame = read_metadata(str(tiny_synth / "metadata.tsv")).iloc[:40]
    taxonomy = Taxonomy.from_lineages(frame[["order", "family", "genus", "species"]].itertuples(index=False))
    texts, text_ids = np.unique(frame["taxonomy"].fillna("").to_numpy(str), return_inverse=True)
    labels = encode_labels(frame, taxonomy)
    device = torch.device("cpu")
    live = RankPrompts(model, texts.tolist(), text_ids, labels, taxonomy, device)
    frozen = RankPrompts(model, texts.tolist(), text_ids, labels, taxonomy, device, frozen=True)
    ids = torch.from_numpy(text_ids[:12])
    a, b = {}, {}
    live.add(a, ids)
    frozen.add(b, ids)
    with torch.no_grad():
        bank = torch.from_numpy(embed_texts(model, texts.tolist(), features=True))
        out_live = model({**a, "text_tokens": model.tokenize_text(texts[text_ids[:12]].tolist())})
        out_frozen = model({**b, "text_features": bank[ids]})
    torch.testing.assert_close(out_frozen["text"], out_live["text"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out_frozen["rank_text"], out_live["rank_text"], rtol=1e-5, atol=1e-6)
    # Row 0's species-rank point is the embedding of its own deepest prompt.
    prompts = rank_prompts(frame.iloc[0][["order", "family", "genus", "species"]].tolist())
    deepest = max(i for i, p in enumerate(prompts) if p is not None)
    with torch.no_grad():
        own = model.encode_text(model.tokenize_text([prompts[deepest]]))[0]
    torch.testing.assert_close(out_live["rank_text"][0, deepest], own, rtol=1e-5, atol=1e-6)
    unknown = [i for i, p in enumerate(prompts) if p is None]
    assert all(float(out_live["rank_text"][0, i].abs().sum()) == 0 for i in unknown)


def test_lorentz_fit_logs_the_geometry_and_exempts_exactly_the_projector_from_decay(lorentz_run: Path) -> None:
    records = [json.loads(line) for line in (lorentz_run / "metrics.jsonl").read_text().splitlines()]
    assert records
    for record in records:
        assert 0.1 <= record["curvature"] <= 10.0
        assert {"alpha_image", "alpha_dna", "alpha_text", "logit_scale", "entail", "entail_intra"} <= set(record)
        assert all(0 < record[f"alpha_{m}"] <= 1 for m in ("image", "dna", "text"))

    from train.export import load_run

    _, model, _ = load_run(lorentz_run)
    ckpt = torch.load(lorentz_run / "checkpoint.pt", map_location="cpu", weights_only=False)
    groups = ckpt["optimizer"]["param_groups"]
    assert len(groups) == 2
    assert groups[0]["weight_decay"] > 0 and groups[1]["weight_decay"] == 0.0
    # The no-decay group is as large as the projector's trainable parameters (which ones: the test below).
    trainable = [p for p in model.parameters() if p.requires_grad]
    exempt = model.projector.no_weight_decay_parameters()
    assert len(exempt) == 5  # three alphas, the curvature, the (learnt) logit scale
    assert (len(groups[0]["params"]), len(groups[1]["params"])) == (len(trainable) - 5, 5)


def test_decay_hyperbolic_params_keeps_one_group() -> None:
    from hirviz.model import build_model
    from train.hyperbolic_training import param_groups

    cfg = load_config(CI_CONFIG, [*LORENTZ])
    model = build_model(cfg.model)
    params = [p for p in model.parameters() if p.requires_grad]
    assert [len(g["params"]) for g in param_groups(model, params, decay_hyperbolic=True)] == [len(params)]
    groups = param_groups(model, params)
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.projector.parameters() if p.requires_grad}


# ----------------------------------------------------------------------------------------------------------------
# Export, bundle and prediction


def test_lorentz_bundle_round_trip_ranks_by_geodesic_distance(lorentz_bundle: Path, tiny_synth: Path) -> None:
    import hirviz
    from train.data import open_images, read_metadata

    bundle = hirviz.load_bundle(lorentz_bundle)
    assert bundle.geometry_name == "lorentz" and 0.1 <= bundle.curvature <= 10.0
    assert "fused" not in bundle.reference.embeddings
    frame = read_metadata(str(tiny_synth / "metadata.tsv"))
    row = frame.iloc[0]
    image = open_images(str(tiny_synth / "images.hdf5")).get(row["image_file"])
    predictor = bundle.predictor()
    prediction = predictor.predict(image=image, barcode=row["barcode"], top_k=3, neighbours=4)
    assert set(prediction.queries) == {"image", "dna", "avg"} and prediction.gate is None

    c = float(bundle.model.curvature())
    assert c == pytest.approx(bundle.curvature)
    texts = torch.from_numpy(bundle.text_embeddings).double()
    for name, result in prediction.queries.items():
        d = pairwise_distance(torch.from_numpy(result.embedding[None]).double(), texts, c, eps=0.0)[0].numpy()
        expected = np.exp(-predictor.logit_scale * (d - d.min()))
        np.testing.assert_allclose(result.probabilities, expected / expected.sum(), rtol=1e-6)
        assert result.candidates[0][0] == bundle.candidates[int(np.argmin(d))]
        # Neighbours: the reference specimens nearest by geodesic distance, nearest first.
        ref = bundle.reference
        space = ReferenceMap(ref, Geometry("lorentz", c)).members(name)
        dist = pairwise_distance(torch.from_numpy(result.embedding[None]).double(),
                                 torch.from_numpy(ref.embeddings[name][space]).double(), c, eps=0.0)[0].numpy()
        assert [n["row"] for n in result.neighbours] == space[np.argsort(dist, kind="stable")[:4]].tolist()


def test_geodesic_search_matches_brute_force_distances() -> None:
    """Top-k (evaluation), FAISS retrieval and the reference map agree with pairwise_distance on random points."""
    from types import SimpleNamespace

    from train.evaluate.metrics import retrieval_scores, top_k

    c = 0.7
    keys, queries = _random_points(200, 8, seed=1, c=c), _random_points(30, 8, seed=2, c=c)
    geometry = Geometry("lorentz", c)
    truth = np.argsort(pairwise_distance(torch.from_numpy(queries).double(), torch.from_numpy(keys).double(),
                                         c).numpy(), axis=1)[:, :5]
    np.testing.assert_array_equal(top_k(queries, keys, 5, geometry), truth)
    # Euclidean inner products of the same points would rank differently: the geometry argument matters.
    assert not np.array_equal(top_k(queries, keys, 5), truth)

    reference = SimpleNamespace(ids=np.arange(200).astype(str), ranks=np.full((200, 4), "", dtype=object),
                                embeddings={"dna": keys}, layouts={}, has_dna=np.ones(200, bool))
    found = ReferenceMap(reference, geometry).neighbours(queries, "dna", k=5)
    np.testing.assert_array_equal(found.rows, truth)

    codes = np.arange(200)[:, None].repeat(4, axis=1)  # every key its own class: top-1 hit = the nearest key
    query_codes = truth[:, :1].repeat(4, axis=1)
    scores = retrieval_scores(queries, query_codes, keys, codes, geometry=geometry)
    assert scores["all"]["micro"]["species"]["top1"] == 100.0


# ----------------------------------------------------------------------------------------------------------------
# Evaluation


def test_lorentz_eval_records_the_variant_and_ranks_by_geodesic_distance(lorentz_bundle: Path, lorentz_run: Path,
                                                                         tiny_synth: Path) -> None:
    import hirviz
    from train.evaluate import evaluate_bundle
    from train.evaluate.metrics import label_codes
    from train.rundir import select_rows

    bundle = hirviz.load_bundle(lorentz_bundle)
    test, _ = select_rows(tiny_synth / "metadata.tsv", lorentz_run)
    results = evaluate_bundle(bundle, test, conditions=("clean",), retrieval=True)
    meta = results["_meta"]["geometry"]
    assert meta["name"] == "lorentz" and meta["entailment"] == "sel" and meta["entail_weight"] == 1.0
    assert meta["ranking"] == "geodesic distance"
    assert "fused" not in results["clean"] and "dna" in results["retrieval"]["clean"]

    # The DNA query's top-1 order accuracy, recomputed from geodesic distances to the candidates.
    model = bundle.model
    tokens = model.tokenize_dna(test["barcode"].tolist())
    with torch.no_grad():
        z = model.encode_dna(tokens["input_ids"], tokens["attention_mask"]).double()
    d = pairwise_distance(z, torch.from_numpy(bundle.text_embeddings).double(), model.curvature().item(), eps=0.0)
    best = d.argmin(1).numpy()
    truth, cand = label_codes(test[["order", "family", "genus", "species"]].to_numpy(object),
                              test["taxonomy"].tolist(), np.asarray(bundle.candidate_ranks, object), bundle.candidates)
    labelled = truth[:, 0] >= 0
    expected = 100.0 * (cand[best, 0] == truth[:, 0])[labelled].mean()
    assert results["clean"]["dna"]["order"]["top1"] == pytest.approx(expected, abs=1e-3)
