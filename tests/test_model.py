"""Tests of hirviz.model on tiny configs: shapes, pooling, fusion, freezing, forward, loading paths."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from hirviz.model import (
    BackboneUnavailable,
    DnaEncoder,
    GatedFusion,
    HirvizModel,
    ModelConfig,
    average_fusion,
    build_model,
)

D = 32
TAXA = [
    "Diptera Cecidomyiidae",
    "Diptera Phoridae Megaselia",
    "Hymenoptera Braconidae",
    "Lepidoptera Geometridae Eupithecia",
]


def random_barcodes(n: int, seed: int, lengths: tuple[int, int] = (200, 660)) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("ACGT"), size=int(rng.integers(*lengths)))) for _ in range(n)]


def tiny_config(**changes) -> ModelConfig:
    return ModelConfig(**{"embed_dim": D, "dna_dropout": 0.0, **changes})


@pytest.fixture(scope="module")
def model() -> HirvizModel:
    torch.manual_seed(0)
    return build_model(tiny_config()).eval()


@pytest.fixture(scope="module")
def batch(model: HirvizModel) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    dna = model.tokenize_dna(random_barcodes(4, seed=1))
    return {
        "image_views": torch.randn(4, 2, 3, 64, 64),
        "dna_input_ids": dna["input_ids"],
        "dna_attention_mask": dna["attention_mask"],
        "text_tokens": model.tokenize_text(TAXA),
    }


def assert_unit_rows(z: torch.Tensor) -> None:
    torch.testing.assert_close(z.norm(dim=-1), torch.ones(z.shape[0]), atol=1e-5, rtol=0)


# -- config --------------------------------------------------------------------------------------


def test_config_round_trip_through_json():
    cfg = ModelConfig(
        embed_dim=48,
        clip_overrides={"vision_cfg": {"layers": 1}},
        freeze_text=True,
        dna_tokenizer={"type": "kmer", "k": 4, "max_bp": 400},
        learn_temperature=True,
        temperature=0.05,
        detach_dna_in_fusion=True,
    )
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    # The dict is a copy: editing it leaves the config alone.
    d = cfg.to_dict()
    d["clip_overrides"]["vision_cfg"]["layers"] = 9
    assert cfg.clip_overrides["vision_cfg"]["layers"] == 1


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dna_encoder": "lstm"}, "dna_encoder must be one of"),
        ({"dna_encoder": "auto"}, "needs dna_model"),
        ({"temperature": 0.0}, "temperature must be positive"),
        ({"embed_dim": 0}, "embed_dim must be positive"),
        ({"dna_hidden": 30, "dna_heads": 4}, "divisible"),
        ({"fusion_dropout": 1.0}, "fusion_dropout"),
    ],
)
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**changes)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown ModelConfig keys.*'embed_dims'"):
        ModelConfig.from_dict({**ModelConfig().to_dict(), "embed_dims": 3})


# -- encoders ------------------------------------------------------------------------------------


def test_encoders_give_unit_vectors_of_embed_dim(model, batch):
    with torch.no_grad():
        z_i = model.encode_image(batch["image_views"][:, 0])
        z_t = model.encode_text(batch["text_tokens"])
        z_d = model.encode_dna(batch["dna_input_ids"], batch["dna_attention_mask"])
    for z in (z_i, z_t, z_d):
        assert z.shape == (4, D)
        assert_unit_rows(z)
    assert model.embed_dim == D
    assert batch["text_tokens"].shape == (4, 32)  # hirviz-tiny's context length
    assert batch["dna_input_ids"].shape == (4, 133)  # CLS + 132 5-mers


def test_bad_input_shapes_are_clear_errors(model):
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        model.encode_image(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        model.encode_text(torch.zeros(32, dtype=torch.long))
    with pytest.raises(ValueError, match="same shape"):
        model.encode_dna(torch.zeros(2, 10, dtype=torch.long), torch.ones(2, 9, dtype=torch.long))
    with pytest.raises(TypeError, match="list"):
        model.tokenize_text("Diptera")


class _FixedHidden(nn.Module):
    """A stand-in backbone whose token states are given, to check the pooling arithmetic exactly."""

    def __init__(self, hidden: torch.Tensor) -> None:
        super().__init__()
        self.hidden = hidden

    def forward(self, input_ids, attention_mask):
        return (self.hidden,)


def test_dna_pooling_averages_only_real_tokens():
    torch.manual_seed(0)
    hidden = torch.randn(2, 6, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    enc = DnaEncoder(_FixedHidden(hidden), hidden_size=8, embed_dim=4)
    z = enc(torch.zeros(2, 6, dtype=torch.long), mask)
    expected = F.normalize(torch.stack([enc.proj(hidden[0, :3]).mean(0), enc.proj(hidden[1]).mean(0)]), dim=-1)
    torch.testing.assert_close(z, expected)
    # Pooling over the padding too (the authors' code) gives another answer for the padded row.
    over_padding = F.normalize(enc.proj(hidden[0]).mean(0), dim=-1)
    assert not torch.allclose(z[0], over_padding, atol=1e-3)


def test_dna_embedding_ignores_padding_tokens(model):
    dna = model.tokenize_dna(random_barcodes(2, seed=5, lengths=(150, 300)))
    assert (dna["attention_mask"] == 0).any()
    scrambled = dna["input_ids"].clone()
    pad = dna["attention_mask"] == 0
    scrambled[pad] = torch.randint(3, model.dna_tokenizer.vocab_size, (int(pad.sum()),))
    with torch.no_grad():
        z = model.encode_dna(dna["input_ids"], dna["attention_mask"])
        z_scrambled = model.encode_dna(scrambled, dna["attention_mask"])
        z_unmasked = model.encode_dna(scrambled, torch.ones_like(scrambled))
    torch.testing.assert_close(z, z_scrambled, atol=1e-5, rtol=0)
    assert not torch.allclose(z, z_unmasked, atol=1e-3)


@pytest.mark.parametrize("name", ["dnabert2_bpe", "barcode_bpe_4096"])
def test_bpe_tokenizer_embedding_is_batch_independent(shared_data, name):
    torch.manual_seed(0)
    tokenizer = shared_data / "tokenizers" / name / "tokenizer.json"
    m = build_model(tiny_config(dna_tokenizer=str(tokenizer))).eval()
    seqs = random_barcodes(2, seed=3, lengths=(100, 120)) + random_barcodes(1, seed=4, lengths=(600, 650))
    together = m.tokenize_dna(seqs)
    assert together["input_ids"].max() < m.dna.backbone.get_input_embeddings().num_embeddings
    assert (together["attention_mask"] == 0).any()  # the short ones are padded to the long one
    with torch.no_grad():
        z_batch = m.encode_dna(together["input_ids"], together["attention_mask"])
        z_alone = torch.cat([m.encode_dna(**m.tokenize_dna([s])) for s in seqs])
    torch.testing.assert_close(z_batch, z_alone, atol=1e-5, rtol=0)


# -- fusion --------------------------------------------------------------------------------------


def test_gate_is_in_open_unit_interval_and_fusion_is_unit():
    torch.manual_seed(0)
    fusion = GatedFusion(D, hidden_mult=2)
    assert fusion.gate[0].weight.shape == (2 * D, 2 * D) and fusion.gate[3].weight.shape == (D, 2 * D)
    z_i, z_d = F.normalize(torch.randn(5, D), dim=-1), F.normalize(torch.randn(5, D), dim=-1)
    z_f, g = fusion(z_i, z_d)
    assert g.shape == (5, D) and ((g > 0) & (g < 1)).all()
    assert_unit_rows(z_f)
    torch.testing.assert_close(z_f, F.normalize(g * z_i + (1 - g) * z_d, dim=-1))


@pytest.mark.parametrize(("bias", "target"), [(30.0, "image"), (-30.0, "dna")])
def test_saturated_gate_selects_one_modality(bias, target):
    torch.manual_seed(0)
    fusion = GatedFusion(D)
    with torch.no_grad():
        fusion.gate[3].weight.zero_()
        fusion.gate[3].bias.fill_(bias)
    z = {"image": F.normalize(torch.randn(3, D), dim=-1), "dna": F.normalize(torch.randn(3, D), dim=-1)}
    z_f, _ = fusion(z["image"], z["dna"])
    torch.testing.assert_close(z_f, z[target], atol=1e-6, rtol=0)


def test_average_fusion():
    a, b = F.normalize(torch.randn(3, D), dim=-1), F.normalize(torch.randn(3, D), dim=-1)
    torch.testing.assert_close(average_fusion(a, b), F.normalize(a + b, dim=-1))
    with pytest.raises(ValueError, match="differ in shape"):
        average_fusion(a, b[:, :5])


def test_detach_dna_in_fusion_stops_fusion_gradients_into_dna():
    torch.manual_seed(0)
    for detach in (False, True):
        m = build_model(tiny_config(detach_dna_in_fusion=detach))
        dna = m.tokenize_dna(random_barcodes(2, seed=0))
        out = m({"image": torch.randn(2, 3, 64, 64), "dna_input_ids": dna["input_ids"],
                 "dna_attention_mask": dna["attention_mask"]})
        out["fused"].sum().backward()
        dna_grad = m.dna.proj.weight.grad
        image_grad = m.clip.visual.conv1.weight.grad
        assert image_grad is not None and image_grad.abs().sum() > 0
        assert (dna_grad is None or dna_grad.abs().sum() == 0) == detach


# -- freezing, temperature -----------------------------------------------------------------------

TEXT_TOWER = ("clip.token_embedding.", "clip.positional_embedding", "clip.transformer.", "clip.ln_final.",
              "clip.text_projection")


@pytest.mark.parametrize("freeze", [False, True])
def test_freeze_text_freezes_exactly_the_text_tower(freeze):
    m = build_model(tiny_config(freeze_text=freeze))
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    text = {n for n, _ in m.named_parameters() if n.startswith(TEXT_TOWER)}
    assert text and any(n.startswith("clip.transformer.") for n in text)
    # open_clip's own logit scale is never used (the model owns the temperature) and stays frozen.
    assert frozen == (text if freeze else set()) | {"clip.logit_scale"}
    assert all(p.requires_grad for n, p in m.named_parameters() if n.startswith(("clip.visual.", "dna.", "fusion.")))


def test_temperature_fixed_or_learnt():
    fixed = build_model(tiny_config())
    assert "logit_scale" not in dict(fixed.named_parameters())
    assert "logit_scale" in fixed.state_dict()
    assert fixed.logit_scale_exp().item() == pytest.approx(1 / 0.07, rel=1e-6)

    learnt = build_model(tiny_config(learn_temperature=True, temperature=0.05))
    assert learnt.logit_scale.requires_grad
    assert learnt.logit_scale_exp().item() == pytest.approx(20.0, rel=1e-6)
    with torch.no_grad():
        learnt.logit_scale.fill_(math.log(500.0))
    assert learnt.logit_scale_exp().item() == pytest.approx(100.0)


# -- forward -------------------------------------------------------------------------------------


def test_forward_all_modalities(model, batch):
    with torch.no_grad():
        out = model(batch)
    assert set(out) == {"image", "image_views", "dna", "text", "fused", "gate", "logit_scale"}
    assert out["image_views"].shape == (4, 2, D)
    torch.testing.assert_close(out["image"], out["image_views"][:, 0])
    for key in ("image", "dna", "text", "fused"):
        assert out[key].shape == (4, D)
        assert_unit_rows(out[key])


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        ({"image"}, {"image"}),
        ({"dna_input_ids", "dna_attention_mask"}, {"dna"}),
        ({"text_tokens"}, {"text"}),
        ({"dna_input_ids", "dna_attention_mask", "text_tokens"}, {"dna", "text"}),
        ({"image", "dna_input_ids", "dna_attention_mask"}, {"image", "dna", "fused", "gate"}),
    ],
)
def test_forward_omits_missing_modalities(model, batch, keys, expected):
    full = {**batch, "image": batch["image_views"][:, 0]}
    with torch.no_grad():
        out = model({k: full[k] for k in keys})
    assert set(out) == expected | {"logit_scale"}


def test_forward_rejects_inconsistent_batches(model, batch):
    with pytest.raises(ValueError, match="both 'image_views' and 'image'"):
        model({"image_views": batch["image_views"], "image": batch["image_views"][:, 0]})
    with pytest.raises(ValueError, match="needs both 'dna_input_ids' and 'dna_attention_mask'"):
        model({"dna_input_ids": batch["dna_input_ids"]})
    with pytest.raises(ValueError, match=r"\[B, V, C, H, W\]"):
        model({"image_views": batch["image_views"][:, 0]})
    with pytest.raises(ValueError, match="different batch sizes"):
        model({"image": batch["image_views"][:3, 0], "text_tokens": batch["text_tokens"]})


def test_two_views_in_one_pass_equal_separate_passes(model, batch, monkeypatch):
    calls = []
    original = model.clip.visual.forward
    monkeypatch.setattr(model.clip.visual, "forward", lambda x: calls.append(x.shape[0]) or original(x))
    with torch.no_grad():
        out = model({"image_views": batch["image_views"]})
        assert calls == [8]  # one batched pass over B * 2 images
        first = model.encode_image(batch["image_views"][:, 0])
        second = model.encode_image(batch["image_views"][:, 1])
    torch.testing.assert_close(out["image_views"][:, 0], first, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["image_views"][:, 1], second, atol=1e-5, rtol=0)


def _toy_info_nce(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """Symmetric one-positive InfoNCE over the three modality pairs (written here, independent of train/)."""
    target = torch.arange(out["image"].shape[0])
    total = torch.zeros(())
    for a, b in (("image", "dna"), ("image", "text"), ("dna", "text")):
        logits = out["logit_scale"] * out[a] @ out[b].T
        total = total + (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
    return total


def test_tiny_model_learns_a_toy_contrastive_task():
    torch.manual_seed(0)
    m = build_model(tiny_config())
    dna = m.tokenize_dna(random_barcodes(len(TAXA), seed=7))
    data = {
        "image": torch.randn(len(TAXA), 3, 64, 64),
        "dna_input_ids": dna["input_ids"],
        "dna_attention_mask": dna["attention_mask"],
        "text_tokens": m.tokenize_text(TAXA),
    }
    with torch.no_grad():
        before = _toy_info_nce(m.eval()(data)).item()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-3)
    m.train()
    for _ in range(8):
        opt.zero_grad()
        _toy_info_nce(m(data)).backward()
        opt.step()
    with torch.no_grad():
        after = _toy_info_nce(m.eval()(data)).item()
    assert after < 0.5 * before, (before, after)


# -- preprocessing -------------------------------------------------------------------------------


def test_image_transforms_follow_the_tower(model):
    import open_clip  # after hirviz (imported above), which makes torchvision importable

    assert model.image_size == (64, 64)
    assert model.image_mean == tuple(open_clip.OPENAI_DATASET_MEAN)
    assert model.image_std == tuple(open_clip.OPENAI_DATASET_STD)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 90, 3), dtype=np.uint8))
    val = model.image_transform(train=False)
    x = val(img)
    assert x.shape == (3, 64, 64)
    torch.testing.assert_close(val(img), x)  # deterministic
    torch.manual_seed(0)
    train = model.image_transform(train=True, aug_cfg={"scale": (0.3, 0.5)})
    assert train(img).shape == (3, 64, 64)
    assert not torch.allclose(train(img), x)


def test_clip_overrides_reshape_the_towers_and_tokenizer():
    m = build_model(tiny_config(clip_overrides={"vision_cfg": {"width": 32, "image_size": 32},
                                                "text_cfg": {"context_length": 16}}))
    assert m.clip.visual.conv1.out_channels == 32
    assert m.image_size == (32, 32)
    assert m.image_transform()(Image.new("RGB", (50, 40))).shape == (3, 32, 32)
    tokens = m.tokenize_text(TAXA)
    assert tokens.shape == (len(TAXA), 16)
    assert m.encode_text(tokens).shape == (len(TAXA), D)
    with pytest.raises(ValueError, match="unknown OpenCLIP architecture"):
        build_model(tiny_config(clip_model="no-such-arch"))


def test_project_architectures_come_from_the_package_data():
    import importlib.resources

    import open_clip

    shipped = importlib.resources.files("hirviz") / "model_configs" / "hirviz-tiny.json"
    assert shipped.is_file()
    build_model(tiny_config())  # registers the project architectures with open_clip
    assert open_clip.get_model_config("hirviz-tiny") == json.loads(shipped.read_text(encoding="utf-8"))
    model = build_model(ModelConfig())  # the shipped config as it is: 64-d, 64 px, 32 tokens
    assert model.embed_dim == 64 and model.image_size == (64, 64)
    assert model.tokenize_text(TAXA).shape == (len(TAXA), 32)


def test_importing_hirviz_leaves_torchvision_alone_until_a_model_needs_it():
    import subprocess
    import sys

    # The shim is applied by the modules that need torchvision, so a plain import loads neither torch nor torchvision.
    code = ("import sys, hirviz, hirviz.bundle; assert not {'torch', 'torchvision'} & set(sys.modules), 'imported'; "
            "import hirviz.model, torchvision.transforms; assert 'open_clip' in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]



def test_a_model_config_is_read_without_torch_and_keeps_its_old_import_path():
    import subprocess
    import sys

    # Checking a bundle's or a run's model settings must not cost a torch import; hirviz.model re-exports the class.
    code = ("import sys; from hirviz.model_config import ModelConfig; "
            "assert ModelConfig.from_dict({'embed_dim': 32, 'geometry': 'lorentz'}).embed_dim == 32; "
            "assert 'torch' not in sys.modules, 'imported torch'; "
            "import hirviz.model; assert hirviz.model.ModelConfig is ModelConfig")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

# -- loading pretrained backbones ----------------------------------------------------------------


def test_clip_checkpoint_file_is_loaded_and_embed_dim_checked(tmp_path):
    torch.manual_seed(0)
    source = build_model(ModelConfig())  # hirviz-tiny at its own embed_dim (64)
    path = tmp_path / "tiny.pt"
    torch.save(source.clip.state_dict(), path)
    loaded = build_model(ModelConfig(clip_pretrained=str(path)))
    for name, tensor in source.clip.state_dict().items():
        torch.testing.assert_close(loaded.clip.state_dict()[name], tensor)
    with pytest.raises(ValueError, match="embed_dim=32 but the pretrained"):
        build_model(ModelConfig(embed_dim=32, clip_pretrained=str(path)))
    with pytest.raises(ValueError, match="neither an OpenCLIP pretrained tag"):
        build_model(ModelConfig(clip_model="ViT-B-16", embed_dim=512, clip_pretrained="no_such_tag"))


UNAVAILABLE = [
    {"clip_model": "hf-hub:imageomics/bioclip", "embed_dim": 512},
    {"clip_model": "ViT-L-14", "clip_pretrained": "commonpool_xl_laion_s13b_b90k", "embed_dim": 768},
    {"dna_encoder": "auto", "dna_model": "zhihan1996/DNABERT-2-117M", "dna_trust_remote_code": True},
]


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache with nothing in it, so that the test never loads a user's cached weights."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HOME", str(tmp_path))  # open_clip's URL cache lives under ~/.cache/clip


@pytest.mark.parametrize("changes", UNAVAILABLE, ids=["bioclip", "vit-l-14", "dnabert2"])
def test_unavailable_backbone_fails_fast_with_one_line(empty_hub_cache, monkeypatch, changes):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # huggingface_hub reads the variable once, on import
    with pytest.raises(BackboneUnavailable) as info:
        build_model(ModelConfig(**changes))
    message = str(info.value)
    assert "\n" not in message
    assert "cannot load" in message and "offline" in message
    assert (changes.get("dna_model") or changes["clip_model"]) in message


def test_unreachable_hub_fails_fast_when_not_offline(empty_hub_cache, monkeypatch):
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(BackboneUnavailable, match="unreachable") as info:
        build_model(ModelConfig(clip_model="hf-hub:imageomics/bioclip", embed_dim=512))
    assert "\n" not in str(info.value)


def _save_tiny_bert(path, vocab_size: int, hidden: int = 24) -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=48, max_position_embeddings=140))
    bert.save_pretrained(path)
    return bert


def test_auto_dna_path_loads_a_local_checkpoint_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    saved = _save_tiny_bert(tmp_path / "dna_ckpt", vocab_size=4**5 + 3)
    m = build_model(tiny_config(dna_encoder="auto", dna_model=str(tmp_path / "dna_ckpt"))).eval()
    assert m.dna.proj.in_features == 24
    torch.testing.assert_close(m.dna.backbone.embeddings.word_embeddings.weight,
                               saved.embeddings.word_embeddings.weight)
    dna = m.tokenize_dna(random_barcodes(3, seed=2))
    with torch.no_grad():
        z = m.encode_dna(dna["input_ids"], dna["attention_mask"])
    assert z.shape == (3, D)
    assert_unit_rows(z)
    # A relative dna_model is looked up in base_dir (a bundle directory).
    rel = build_model(tiny_config(dna_encoder="auto", dna_model="dna_ckpt"), base_dir=tmp_path)
    assert rel.dna.proj.in_features == 24


def test_auto_dna_path_rejects_a_tokenizer_larger_than_the_vocabulary(tmp_path):
    _save_tiny_bert(tmp_path / "small_vocab", vocab_size=100)
    with pytest.raises(ValueError, match="DNA tokenizer has 1027 tokens"):
        build_model(tiny_config(dna_encoder="auto", dna_model=str(tmp_path / "small_vocab")))


def test_dna_views_come_from_one_pass_and_differ_only_by_dropout():
    model = build_model(ModelConfig(embed_dim=16, dna_hidden=16, dna_layers=1, dna_heads=2, dna_intermediate=32,
                                    dna_dropout=0.3))
    tokens = model.tokenize_dna(["ACGT" * 40, "TTGCA" * 30])
    ids = tokens["input_ids"].unsqueeze(1).expand(-1, 2, -1)
    mask = tokens["attention_mask"].unsqueeze(1).expand(-1, 2, -1)
    model.train()
    out = model({"dna_input_ids": ids, "dna_attention_mask": mask})
    assert out["dna_views"].shape == (2, 2, 16)
    assert not torch.allclose(out["dna_views"][:, 0], out["dna_views"][:, 1])
    model.eval()
    out = model({"dna_input_ids": ids, "dna_attention_mask": mask})
    torch.testing.assert_close(out["dna_views"][:, 0], out["dna_views"][:, 1])
    torch.testing.assert_close(out["dna"], model.encode_dna(tokens["input_ids"], tokens["attention_mask"]))
