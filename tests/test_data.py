"""Tests for train.data: readers, image stores, dataset/collate, hierarchical sampler and closed-set split."""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from hirviz.taxonomy import LEVELS
from train.data import (
    COLUMNS,
    FolderImages,
    HDF5Images,
    HierarchicalBatchSampler,
    SpecimenDataset,
    closed_set_split,
    collate_specimens,
    eval_transform,
    hierarchical_groups,
    make_collate,
    open_images,
    read_metadata,
    train_transform,
)

# ------------------------------------------------------------------------------------------------ fixtures


def jpeg_bytes(colour: tuple[int, int, int], size: tuple[int, int] = (48, 32)) -> bytes:
    """A small JPEG with a gradient, so crops and flips change the pixels."""
    img = Image.new("RGB", size, colour)
    for x in range(size[0]):
        img.putpixel((x, x % size[1]), (255 - colour[0], x * 5 % 256, 0))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


BIOSCAN1M_HEADER = (
    "sampleid\tprocessid\turi\tname\tphylum\tclass\torder\tfamily\tsubfamily\ttribe\tgenus\tspecies\tsubspecies\t"
    "nucraw\timage_file\tlarge_diptera_family\tchunk_number\tcopyright_holder"
)
BIOSCAN1M_ROWS = [
    # sampleid, processid, order, family, genus, species, nucraw, image_file
    ("0001", "P1", "Diptera", "Sciaridae", "Bradysia", "Bradysia sp1", "  acgtn ", "a.jpg"),
    ("0002", "P2", "Diptera", "Sciaridae", "not_classified", "not_classified", "ACGTACGT", "b.jpg"),
    ("0003", "P3", "Hymenoptera", "not_classified", "not_classified", "not_classified", "", "corrupt.jpg"),
    ("0004", "P4", "Diptera", "Cecidomyiidae", "not_classified", "not_classified", "TTTT", "missing.jpg"),
    ("0005", "P5", "Diptera", "Sciaridae", "Bradysia", "Bradysia sp1", "GGGG", "e.jpg"),
    ("0006", "P6", "not_classified", "not_classified", "not_classified", "not_classified", "CCCC", "f.jpg"),
]


@pytest.fixture()
def bioscan1m_tsv(tmp_path: Path) -> Path:
    lines = [BIOSCAN1M_HEADER]
    for sid, pid, o, f, g, s, dna, img in BIOSCAN1M_ROWS:
        extra = ["BOLD:AAA0001", "x", "Arthropoda", "Insecta"]
        lines.append("\t".join([sid, pid, *extra, o, f, "not_classified", "not_classified", g, s,
                                "not_classified", dna, img, "Sciaridae", "3", "CBG"]))
    path = tmp_path / "metadata.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def images_h5(tmp_path: Path) -> Path:
    """JPEGs for every row except missing.jpg; corrupt.jpg holds bytes that are not an image."""
    path = tmp_path / "images.hdf5"
    with h5py.File(path, "w") as fh:
        grp = fh.create_group("bioscan_dataset")
        for i, name in enumerate(["a.jpg", "b.jpg", "e.jpg", "f.jpg"]):
            grp.create_dataset(name, data=np.frombuffer(jpeg_bytes((40 * i, 100, 200)), dtype=np.uint8))
        truncated = jpeg_bytes((1, 2, 3))[:60]
        grp.create_dataset("corrupt.jpg", data=np.frombuffer(truncated, dtype=np.uint8))
    return path


# ------------------------------------------------------------------------------------------------ readers


def test_read_bioscan1m_normalises(bioscan1m_tsv: Path) -> None:
    frame = read_metadata(bioscan1m_tsv)
    assert frame.attrs["format"] == "bioscan1m"
    assert list(frame.columns) == list(COLUMNS)
    assert len(frame) == len(BIOSCAN1M_ROWS)
    first = frame.iloc[0]
    assert first["sampleid"] == "0001"  # read as text: leading zeros survive
    assert (first["order"], first["family"], first["genus"], first["species"]) == (
        "Diptera", "Sciaridae", "Bradysia", "Bradysia sp1")
    assert first["barcode"] == "ACGTN"  # stripped, upper-cased
    assert first["taxonomy"] == "Diptera Sciaridae Bradysia Bradysia sp1"
    second = frame.iloc[1]
    assert second["genus"] is None and second["species"] is None
    assert second["taxonomy"] == "Diptera Sciaridae"
    assert frame.iloc[2]["barcode"] is None  # empty nucraw
    last = frame.iloc[5]
    assert all(last[lvl] is None for lvl in LEVELS) and last["taxonomy"] == ""
    assert frame["image_file"].tolist() == [r[7] for r in BIOSCAN1M_ROWS]


def test_read_bioscan1m_nrows(bioscan1m_tsv: Path) -> None:
    assert len(read_metadata(bioscan1m_tsv, nrows=2)) == 2


def test_read_authors_csv_integer_ids(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "train.csv"
    path.write_text(
        "image_file,taxonomy,nucraw,unique_label,order,family,genus,species,All_level_label\n"
        "a.jpg,Diptera Sciaridae not_classified not_classified,acgt,1,3,12,0,0,\"[3, 12, 0, 0]\"\n"
        "b.jpg,Diptera Sciaridae Bradysia Bradysia sp1,ACGT,2,3,12,7,9,\"[3, 12, 7, 9]\"\n"
        "c.jpg,,,3,3,x,0,0,\"[3, 0, 0, 0]\"\n",
        encoding="utf-8",
    )
    with caplog.at_level(logging.WARNING, logger="train.data"):
        frame = read_metadata(path)
    assert frame.attrs["format"] == "authors_csv"
    assert frame.loc[0, ["order", "family", "genus", "species"]].tolist() == ["order_3", "family_12", None, None]
    assert frame.loc[1, "species"] == "species_9"
    # the file's own prompt is kept; an empty one is rebuilt from the ranks
    assert frame.loc[0, "taxonomy"] == "Diptera Sciaridae not_classified not_classified"
    assert frame.loc[2, "taxonomy"] == "order_3"
    assert frame.loc[2, "family"] is None and "not integer ids" in caplog.text
    assert frame.loc[0, "barcode"] == "ACGT" and frame.loc[2, "barcode"] is None
    assert frame["sampleid"].isna().all() and frame.loc[1, "image_file"] == "b.jpg"


def test_read_bioscan5m(tmp_path: Path) -> None:
    path = tmp_path / "BIOSCAN_5M.csv"
    path.write_text(
        "processid,sampleid,taxon,phylum,class,order,family,subfamily,genus,species,dna_bin,dna_barcode,split\n"
        "P9,S9,Sciaridae,Arthropoda,Insecta,Diptera,Sciaridae,,,,BOLD:A,acgtt ,pretrain\n",
        encoding="utf-8",
    )
    frame = read_metadata(path)
    assert frame.attrs["format"] == "bioscan5m"
    row = frame.iloc[0]
    assert (row["processid"], row["sampleid"], row["barcode"], row["image_file"]) == ("P9", "S9", "ACGTT", "P9.jpg")
    assert row["genus"] is None and row["taxonomy"] == "Diptera Sciaridae"


def test_unknown_header_lists_formats(tmp_path: Path) -> None:
    path = tmp_path / "x.tsv"
    path.write_text("id\tname\n1\ta\n", encoding="utf-8")
    with pytest.raises(ValueError) as err:
        read_metadata(path)
    for name in ("bioscan1m", "bioscan5m", "authors_csv", "barcode_tsv", "image_table", "nucraw"):
        assert name in str(err.value)
    with pytest.raises(ValueError, match="lacks"):
        read_metadata(path, format="barcode_tsv")
    with pytest.raises(FileNotFoundError):
        read_metadata(tmp_path / "absent.tsv")


def test_read_real_barcode_tsv(shared_data: Path) -> None:
    frame = read_metadata(shared_data / "real_dna" / "barcodes.tsv")
    assert frame.attrs["format"] == "barcode_tsv"
    assert len(frame) == 8926
    # the counts the data's README gives
    assert [frame[lvl].nunique() for lvl in LEVELS] == [12, 221, 556, 401]
    assert frame["image_file"].isna().all() and frame["processid"].notna().all()
    assert frame["barcode"].notna().all()
    assert not frame["barcode"].str.contains(r"[a-z\s]").any()
    for lvl in LEVELS:  # empty cells became None, never ""
        assert not (frame[lvl] == "").any()


# ------------------------------------------------------------------------------------------------ images


def test_hdf5_images_skip_corrupt_and_missing(images_h5: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = open_images(images_h5)
    assert isinstance(store, HDF5Images)
    img = store.get("a.jpg")
    assert img is not None and img.mode == "RGB" and img.size == (48, 32)
    with caplog.at_level(logging.WARNING, logger="train.data"):
        assert store.get("corrupt.jpg") is None
        assert store.get("corrupt.jpg") is None
        assert store.get("missing.jpg") is None
    messages = [r.getMessage() for r in caplog.records]
    assert sum("corrupt.jpg" in m for m in messages) == 1  # once per key
    assert sum("missing.jpg" in m for m in messages) == 1
    # pickles (for DataLoader workers) after the handle is open, and reads again after unpickling
    clone = pickle.loads(pickle.dumps(store))
    assert clone.get("b.jpg") is not None and len(clone) == 5


def test_hdf5_wrong_group(images_h5: Path) -> None:
    with pytest.raises(ValueError, match="no group 'images'"):
        HDF5Images(images_h5, group="images")


def test_folder_images_and_open_images(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "imgs" / "sub").mkdir(parents=True)
    (tmp_path / "imgs" / "sub" / "x.jpg").write_bytes(jpeg_bytes((10, 20, 30)))
    (tmp_path / "imgs" / "bad.jpg").write_bytes(b"not a jpeg")
    store = open_images(tmp_path / "imgs")
    assert isinstance(store, FolderImages)
    assert store.get("sub/x.jpg").mode == "RGB"
    with caplog.at_level(logging.WARNING, logger="train.data"):
        assert store.get("bad.jpg") is None
        assert store.get("x.jpg") is None  # not at the top level
    assert "bad.jpg" in caplog.text and "x.jpg" in caplog.text
    assert FolderImages(tmp_path / "imgs", recursive=True).get("x.jpg") is not None
    (tmp_path / "meta.txt").write_text("x")
    with pytest.raises(ValueError, match="folder or an .h5"):
        open_images(tmp_path / "meta.txt")
    assert open_images(None) is None


def test_real_photographs_go_through_the_transforms(shared_data: Path) -> None:
    root = shared_data / "real_images"
    frame = read_metadata(root / "index.tsv")
    assert frame.attrs["format"] == "image_table" and frame["barcode"].isna().all()
    # one photograph of each kind: full-size originals, BIOSCAN-1M crops, and each quality class
    picks = frame.groupby(frame["image_file"].str.rsplit("/", n=1).str[0]).head(1)
    assert len(picks) >= 5
    ds = SpecimenDataset(picks, FolderImages(root), train_transform(64), views=2)
    batch = collate_specimens([ds[i] for i in range(len(ds))])
    assert batch["dropped"] == 0 and batch["image_views"].shape == (len(picks), 2, 3, 64, 64)
    assert torch.isfinite(batch["image_views"]).all()


# ------------------------------------------------------------------------------------------------ dataset


def fake_dna_tokenizer(seqs: list[str]) -> dict[str, list[list[int]]]:
    """Stand-in for the real tokenizer: one id per base, padded to the longest."""
    width = max(len(s) for s in seqs)
    ids = [[" ACGTN".index(c) if c in "ACGTN" else 5 for c in s] + [0] * (width - len(s)) for s in seqs]
    return {"input_ids": ids, "attention_mask": [[int(i > 0) for i in row] for row in ids]}


def fake_text_tokenizer(texts: list[str]) -> torch.Tensor:
    return torch.tensor([[len(t), t.count(" ")] for t in texts])


def test_dataset_items(bioscan1m_tsv: Path, images_h5: Path) -> None:
    frame = read_metadata(bioscan1m_tsv)
    ds = SpecimenDataset(frame, open_images(images_h5), train_transform(24), views=2)
    assert ds.texts == sorted(set(frame["taxonomy"]))
    item = ds[0]
    assert item["taxonomy"] == ds.texts[item["text_id"]] == frame.loc[0, "taxonomy"]
    names = ds.taxonomy.decode(item["labels"].numpy()[None])[0]
    assert names == ("Diptera", "Sciaridae", "Bradysia", "Bradysia sp1")
    assert ds[1]["labels"].tolist()[2:] == [-1, -1]
    assert item["labels"].dtype == torch.long and item["barcode"] == "ACGTN"
    views = item["image_views"]
    assert views.shape == (2, 3, 24, 24) and views.dtype == torch.float32
    assert not torch.allclose(views[0], views[1])  # independent random augmentations
    assert ds[2]["image_views"] is None and ds[3]["image_views"] is None  # corrupt, missing

    fixed = SpecimenDataset(frame, open_images(images_h5), eval_transform(24), views=2)
    v = fixed[0]["image_views"]
    assert torch.equal(v[0], v[1])


def test_eval_view_is_the_models_own_view() -> None:
    """The trainer's deterministic view gives the pixels the app feeds the model (one pipeline, not two)."""
    from hirviz.model import ModelConfig, build_model

    model = build_model(ModelConfig(embed_dim=16))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 130, 3), dtype=np.uint8))
    expected = model.image_transform(train=False)(image)
    got = eval_transform(model.image_size[0], model.image_mean, model.image_std)(image)
    assert got.shape == (3, *model.image_size)
    assert torch.equal(got, expected)


def test_seeded_views_are_reproducible(bioscan1m_tsv: Path, images_h5: Path) -> None:
    frame = read_metadata(bioscan1m_tsv)

    def make() -> SpecimenDataset:
        return SpecimenDataset(frame, open_images(images_h5), train_transform(24), views=2, seed=7)

    a, b = make(), make()
    torch.rand(3)  # the global random state must not matter
    first = a[0]["image_views"]
    assert torch.equal(first, b[0]["image_views"])
    assert not torch.allclose(first[0], first[1])
    before = torch.get_rng_state()
    a.set_epoch(1)
    assert not torch.allclose(a[0]["image_views"], first)
    assert torch.equal(torch.get_rng_state(), before)  # the global generator is left untouched


def test_identical_views_repeat_one_random_view(bioscan1m_tsv: Path, images_h5: Path) -> None:
    frame = read_metadata(bioscan1m_tsv)
    ds = SpecimenDataset(frame, open_images(images_h5), train_transform(24), views=2, seed=7, identical_views=True)
    views = ds[0]["image_views"]
    assert views.shape == (2, 3, 24, 24) and torch.equal(views[0], views[1])
    # still a random augmentation: another epoch draws another one
    ds.set_epoch(1)
    assert not torch.allclose(ds[0]["image_views"][0], views[0])


def test_dna_augment_degrades_training_barcodes_reproducibly() -> None:
    rng = np.random.default_rng(0)
    barcodes = ["".join(rng.choice(list("ACGT"), 600)) for _ in range(20)]
    frame = pd.DataFrame({"order": ["Diptera"] * 20, "family": None, "genus": None, "species": None,
                          "barcode": barcodes, "image_file": None, "sampleid": [str(i) for i in range(20)],
                          "processid": None})
    frame["taxonomy"] = "Diptera"
    ds = SpecimenDataset(frame, dna_augment=4.0, seed=3)
    first = [ds[i]["barcode"] for i in range(20)]
    assert sum(b != clean for b, clean in zip(first, barcodes)) >= 15  # a scale near 0 may leave one clean
    assert first == [SpecimenDataset(frame, dna_augment=4.0, seed=3)[i]["barcode"] for i in range(20)]
    ds.set_epoch(1)
    assert [ds[i]["barcode"] for i in range(20)] != first  # fresh noise every epoch
    assert SpecimenDataset(frame, seed=3)[0]["barcode"] == barcodes[0]  # off by default
    with pytest.raises(ValueError, match="needs a seed"):
        SpecimenDataset(frame, dna_augment=1.0)


def test_dataset_without_images_uses_given_taxonomy(shared_data: Path) -> None:
    frame = read_metadata(shared_data / "real_dna" / "barcodes.tsv")
    train_idx, test_idx = closed_set_split(frame, seed=0)
    train = SpecimenDataset(frame.iloc[train_idx])
    test = SpecimenDataset(frame.iloc[test_idx], taxonomy=train.taxonomy)
    assert "image_views" not in train[0]
    # closed set: every known test label has an id in the training vocabulary
    known_names = frame.iloc[test_idx][list(LEVELS)].notna().to_numpy()
    assert ((test.labels >= 0) == known_names).all()


def test_dataloader_survives_corrupt_and_missing(
    bioscan1m_tsv: Path, images_h5: Path, caplog: pytest.LogCaptureFixture
) -> None:
    frame = read_metadata(bioscan1m_tsv)
    ds = SpecimenDataset(frame, open_images(images_h5), train_transform(16), views=2)
    collate = make_collate(fake_dna_tokenizer, fake_text_tokenizer)
    with caplog.at_level(logging.WARNING, logger="train.data"):
        batches = list(DataLoader(ds, batch_size=3, collate_fn=collate))
    kept = torch.cat([b["index"] for b in batches]).tolist()
    # row 2: corrupt image and no barcode, row 3: missing image
    assert kept == [0, 1, 4, 5]
    assert sum(b["dropped"] for b in batches) == 2
    assert "dropped" in caplog.text
    first = batches[0]
    assert first["image_views"].shape == (2, 2, 3, 16, 16)
    assert first["labels"].shape == (2, 4) and first["text_ids"].shape == (2,)
    assert first["dna_input_ids"].shape == first["dna_attention_mask"].shape
    assert first["dna_input_ids"].shape[0] == 2 and first["text_tokens"].shape == (2, 2)


def test_dataloader_workers_open_their_own_handle(bioscan1m_tsv: Path, images_h5: Path) -> None:
    frame = read_metadata(bioscan1m_tsv)
    store = open_images(images_h5)
    store.get("a.jpg")  # the parent holds an open handle before the workers fork
    ds = SpecimenDataset(frame, store, eval_transform(16), views=1)
    loader = DataLoader(ds, batch_size=2, num_workers=2, collate_fn=make_collate(fake_dna_tokenizer))
    kept = sorted(torch.cat([b["index"] for b in loader]).tolist())
    assert kept == [0, 1, 4, 5]


def test_collate_drops_samples_without_barcode_only_when_tokenising() -> None:
    items = [
        {"index": 0, "labels": torch.tensor([0, 0, -1, -1]), "text_id": 0, "taxonomy": "A B", "barcode": "ACGT"},
        {"index": 1, "labels": torch.tensor([0, -1, -1, -1]), "text_id": 1, "taxonomy": "A", "barcode": None},
    ]
    assert collate_specimens(items)["index"].tolist() == [0, 1]
    batch = collate_specimens(items, dna_tokenizer=fake_dna_tokenizer)
    assert batch["index"].tolist() == [0] and batch["dropped"] == 1
    assert batch["dna_input_ids"].tolist() == [[1, 2, 3, 4]]
    empty = collate_specimens(items[1:], dna_tokenizer=fake_dna_tokenizer)
    assert len(empty["index"]) == 0 and empty["labels"].shape == (0, 4) and "dna_input_ids" not in empty


# ------------------------------------------------------------------------------------------------ sampler


def synthetic_labels(n: int, seed: int = 0, n_genera: int = 200) -> np.ndarray:
    """Hierarchical labels with unknowns: 4 species per genus, 5 genera per family, 10 families per order."""
    rng = np.random.default_rng(seed)
    species = rng.integers(0, n_genera * 4, n)
    labels = np.stack([species // 200, species // 20, species // 4, species], axis=1).astype(np.int64)
    depth = (rng.random(n)[:, None] < np.array([0.95, 0.8, 0.6, 0.3])[None, :]).cumprod(axis=1).astype(bool)
    labels[~depth] = -1
    return labels


def same_label_pair_fraction(labels: np.ndarray, batches: list[list[int]], level: int) -> float:
    same = total = 0
    for batch in batches:
        lab = labels[batch, level]
        counts = np.unique(lab[lab >= 0], return_counts=True)[1]
        same += int((counts * (counts - 1) // 2).sum())
        total += len(batch) * (len(batch) - 1) // 2
    return same / total


def test_sampler_uses_each_sample_at_most_once() -> None:
    labels = synthetic_labels(2013)  # 402 groups of 5: 40 batches of 10 groups and one of 2
    sampler = HierarchicalBatchSampler(labels, batch_size=50, group_size=5)
    batches = list(sampler)
    flat = np.concatenate(batches)
    assert len(flat) == len(np.unique(flat))
    assert len(flat) == 2010  # only the remainder of whole groups is left out
    assert len(batches) == len(sampler) == 41 and len(batches[-1]) == 10
    dropped = HierarchicalBatchSampler(labels, batch_size=50, drop_last=True)
    assert len(list(dropped)) == len(dropped) == 40


def test_sampler_groups_relatives() -> None:
    labels = synthetic_labels(5000)
    hier = list(HierarchicalBatchSampler(labels, batch_size=25, group_size=5))
    rand = list(HierarchicalBatchSampler(labels, batch_size=25, group_size=1))
    for level in (2, 3):  # genus, species
        assert same_label_pair_fraction(labels, hier, level) > 5 * same_label_pair_fraction(labels, rand, level)

    # slot 1 is a species relative whenever the anchor's species is known and relatives are plentiful
    labels = synthetic_labels(5000, n_genera=25)  # about 19 specimens per known species
    hier = list(HierarchicalBatchSampler(labels, batch_size=25, group_size=5))
    groups = np.concatenate(hier).reshape(-1, 5)
    anchors, mates = labels[groups[:, 0]], labels[groups[:, 1]]
    known = anchors[:, 3] >= 0
    assert (anchors[known, 3] == mates[known, 3]).mean() > 0.9
    # slot 4 is an order relative
    known = anchors[:, 0] >= 0
    assert (anchors[known, 0] == labels[groups[known, 4], 0]).mean() > 0.9


def test_groups_fall_back_when_labels_unknown() -> None:
    labels = np.full((103, 4), -1)
    groups = hierarchical_groups(labels, 5, np.random.default_rng(0))
    assert groups.shape == (20, 5) and len(np.unique(groups)) == 100 and groups.min() >= 0
    # a species of two: at most one anchor can get the other as its species relative
    labels[:2, 3] = 7
    groups = hierarchical_groups(labels, 5, np.random.default_rng(1))
    assert len(np.unique(groups)) == 100


def test_sampler_shards_are_disjoint_and_equal() -> None:
    labels = synthetic_labels(3001)
    world = 3
    ranks = [list(HierarchicalBatchSampler(labels, batch_size=50, rank=r, world_size=world, seed=4))
             for r in range(world)]
    assert len({len(b) for b in ranks}) == 1
    assert len(ranks[0]) == len(HierarchicalBatchSampler(labels, batch_size=50, world_size=world))
    for step in zip(*ranks):  # equal batch sizes at every step, so all_gather works
        assert len({len(b) for b in step}) == 1
    shards = [set(np.concatenate(b).tolist()) for b in ranks]
    assert all(not (shards[i] & shards[j]) for i in range(world) for j in range(i + 1, world))
    used = sum(len(s) for s in shards)
    assert 3001 - 5 * world <= used <= 3001


def test_sampler_is_deterministic_per_epoch() -> None:
    labels = synthetic_labels(1000)
    a = HierarchicalBatchSampler(labels, batch_size=50, seed=1)
    b = HierarchicalBatchSampler(labels, batch_size=50, seed=1)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    second = list(a)
    assert first != second
    b.set_epoch(1)
    assert list(b) == second
    assert list(HierarchicalBatchSampler(labels, batch_size=50, seed=2)) != first


def test_sampler_resumes_mid_epoch() -> None:
    labels = synthetic_labels(1200)
    full = HierarchicalBatchSampler(labels, batch_size=50, seed=3)
    full.set_epoch(2)
    expected = list(full)

    run = HierarchicalBatchSampler(labels, batch_size=50, seed=3)
    run.set_epoch(2)
    it = iter(run)
    seen = [next(it) for _ in range(7)]
    state = run.state_dict()
    assert state["epoch"] == 2 and state["batches_done"] == 7

    resumed = HierarchicalBatchSampler(labels, batch_size=50, seed=3)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the training loop calls this again; it must keep the offset
    rest = list(resumed)
    assert seen + rest == expected
    assert resumed.state_dict()["batches_done"] == len(expected)
    # the offset applies to one pass: the next pass of the same epoch is whole again
    assert list(resumed) == expected

    override = run.state_dict(batches_done=5)
    again = HierarchicalBatchSampler(labels, batch_size=50, seed=3)
    again.load_state_dict(override)
    assert list(again) == expected[5:]

    with pytest.raises(ValueError, match="seed"):
        HierarchicalBatchSampler(labels, batch_size=50, seed=4).load_state_dict(state)


def test_sampler_rejects_bad_arguments() -> None:
    labels = synthetic_labels(100)
    with pytest.raises(ValueError, match="multiple of group_size"):
        HierarchicalBatchSampler(labels, batch_size=12, group_size=5)
    with pytest.raises(ValueError, match="rank"):
        HierarchicalBatchSampler(labels, batch_size=10, rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        HierarchicalBatchSampler(labels[:, :2], batch_size=10)


# ------------------------------------------------------------------------------------------------ split


def assert_closed(frame: pd.DataFrame, train_idx: np.ndarray, test_idx: np.ndarray) -> None:
    train, test = frame.iloc[train_idx], frame.iloc[test_idx]
    for col in (*LEVELS, "taxonomy"):
        missing = set(test[col].dropna()) - set(train[col].dropna())
        assert not missing, f"{col} values only in test: {sorted(missing)[:5]}"


def test_closed_set_split_real(shared_data: Path) -> None:
    frame = read_metadata(shared_data / "real_dna" / "barcodes.tsv")
    train_idx, test_idx = closed_set_split(frame, test_fraction=0.2, seed=0)
    assert len(np.intersect1d(train_idx, test_idx)) == 0
    assert len(train_idx) + len(test_idx) == len(frame)
    assert 0.15 < len(test_idx) / len(frame) <= 0.21
    assert_closed(frame, train_idx, test_idx)
    # a taxonomy string seen once stays in training
    counts = frame["taxonomy"].value_counts()
    singletons = frame.index[frame["taxonomy"].map(counts) == 1]
    assert len(singletons) and set(singletons) <= set(train_idx)
    again = closed_set_split(frame, test_fraction=0.2, seed=0)
    assert np.array_equal(again[1], test_idx)
    assert not np.array_equal(closed_set_split(frame, test_fraction=0.2, seed=1)[1], test_idx)


def test_closed_set_split_labels() -> None:
    labels = synthetic_labels(4000)
    train_idx, test_idx = closed_set_split(labels, test_fraction=0.3, seed=5)
    assert 0.25 < len(test_idx) / len(labels) < 0.32
    for level in range(4):
        test_known = set(labels[test_idx, level]) - {-1}
        assert test_known <= set(labels[train_idx, level])
    full_train = {tuple(r) for r in labels[train_idx]}
    assert all(tuple(r) in full_train for r in labels[test_idx])
    with pytest.raises(ValueError, match="test_fraction"):
        closed_set_split(labels, test_fraction=1.0)
