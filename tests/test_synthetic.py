"""The synthetic benchmark generator: file format, determinism, labels, and the signal in DNA and images."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image

from hirviz.taxonomy import LEVELS, NOT_CLASSIFIED, Taxonomy
from train.synthetic import SynthConfig, build_tree, generate, sample_species

SMALL = dict(specimens=300, image_height=48, jpeg_quality=85)
BIOSCAN_COLUMNS = ["sampleid", "processid", "order", "family", "genus", "species", "nucraw", "image_file"]


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def read_images(path: Path) -> dict[str, bytes]:
    with h5py.File(path, "r") as h5:
        return {key: h5["bioscan_dataset"][key][()].tobytes() for key in h5["bioscan_dataset"]}


def decode(jpeg: bytes) -> Image.Image:
    return Image.open(io.BytesIO(jpeg))


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("seed7"), SynthConfig(seed=7, workers=1, **SMALL))


@pytest.fixture(scope="module")
def rows(bench: Path) -> list[dict[str, str]]:
    return read_tsv(bench / "metadata.tsv")


@pytest.fixture(scope="module")
def truth(bench: Path) -> list[dict[str, str]]:
    return read_tsv(bench / "truth.tsv")


def test_metadata_has_bioscan_columns(bench: Path, rows: list[dict[str, str]]) -> None:
    header = (bench / "metadata.tsv").read_text(encoding="utf-8").splitlines()[0].split("\t")
    assert header[: len(BIOSCAN_COLUMNS)] == BIOSCAN_COLUMNS
    assert len(rows) == SMALL["specimens"]
    assert len({r["sampleid"] for r in rows}) == len(rows)
    assert all(r[c] for r in rows for c in BIOSCAN_COLUMNS), "unknown ranks must be spelled, not left empty"
    assert any(r["species"] == NOT_CLASSIFIED for r in rows)
    assert all(set(r["nucraw"]) <= set("ACGTN") and 300 <= len(r["nucraw"]) <= 658 for r in rows)
    assert np.mean([len(r["nucraw"]) == 658 for r in rows]) > 0.85


def test_hdf5_holds_one_decodable_jpeg_per_image_file(bench: Path, rows: list[dict[str, str]]) -> None:
    with h5py.File(bench / "images.hdf5", "r") as h5:
        assert list(h5) == ["bioscan_dataset"]
        group = h5["bioscan_dataset"]
        assert set(group) == {r["image_file"] for r in rows}
        sample = group[rows[0]["image_file"]]
        assert sample.dtype == np.uint8 and sample.ndim == 1
    for jpeg in list(read_images(bench / "images.hdf5").values())[:50]:
        image = decode(jpeg)
        assert image.format == "JPEG" and image.mode == "RGB"
        assert image.height == SMALL["image_height"] and 1.0 < image.width / image.height < 1.5


def test_tree_is_a_taxonomy_and_truth_follows_it(bench: Path, rows: list[dict[str, str]],
                                                   truth: list[dict[str, str]]) -> None:
    taxonomy = Taxonomy.load(str(bench / "tree.json"))
    assert [taxonomy.num_classes(level) for level in LEVELS] == [5, 20, 60, 200]
    assert all(name.endswith("ptera") for name in taxonomy.names["order"])
    assert all(name.endswith("idae") for name in taxonomy.names["family"])
    assert all(name[0].isupper() for name in taxonomy.names["genus"])
    for row in truth:
        lineage = [row[level] for level in LEVELS]
        assert taxonomy.inconsistent(lineage) == []
        assert row["species"].split(" ")[0] == row["genus"], "species are binomials of their genus"
    for shown, true in zip(rows, truth):
        assert shown["sampleid"] == true["sampleid"]
        assert all(shown[lvl] in (true[lvl], NOT_CLASSIFIED) for lvl in LEVELS)
    nested = json.loads((bench / "tree.json").read_text())["tree"]
    assert sum(len(f["genera"]) for o in nested for f in o["families"]) == 60


def test_labels_are_hidden_from_the_finest_rank_up(rows: list[dict[str, str]]) -> None:
    known = np.array([[r[level] != NOT_CLASSIFIED for level in LEVELS] for r in rows])
    assert known[:, 0].all(), "every specimen has an order"
    assert not (known[:, 1:] & ~known[:, :-1]).any(), "a rank is never known below an unknown one"
    fractions = known.mean(axis=0)
    np.testing.assert_allclose(fractions[1:], [0.85, 0.50, 0.20], atol=0.08)


def test_species_abundances_are_long_tailed() -> None:
    tree = build_tree(SynthConfig())
    counts = np.sort(np.bincount(sample_species(tree, 20000, seed=0), minlength=200))[::-1]
    assert counts.min() >= 1, "every species is present when there are enough specimens"
    assert counts[:20].sum() > 0.35 * counts.sum(), "the commonest 10% of species hold a large share"
    assert counts[0] > 10 * np.median(counts)


def test_same_seed_gives_identical_output_for_any_worker_count(bench: Path, tmp_path: Path) -> None:
    again = generate(tmp_path, SynthConfig(seed=7, workers=2, **SMALL))
    for name in ("metadata.tsv", "truth.tsv", "tree.json"):
        assert (again / name).read_bytes() == (bench / name).read_bytes(), name
    assert read_images(again / "images.hdf5") == read_images(bench / "images.hdf5")


def test_a_different_seed_gives_a_different_benchmark(bench: Path, tmp_path: Path) -> None:
    other = generate(tmp_path, SynthConfig(seed=8, workers=1, **SMALL))
    assert (other / "metadata.tsv").read_bytes() != (bench / "metadata.tsv").read_bytes()
    names = [json.loads((d / "tree.json").read_text())["names"] for d in (bench, other)]
    assert names[0] != names[1]
    ours, theirs = read_images(bench / "images.hdf5"), read_images(other / "images.hdf5")
    assert sum(ours[k] != theirs[k] for k in ours) > 0.95 * len(ours)


def _full_length_codes(rows: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    """Aligned (untrimmed, N-free) barcodes as uint8 [M, 658] and their row indices."""
    keep = [i for i, r in enumerate(rows) if len(r["nucraw"]) == 658 and "N" not in r["nucraw"]]
    codes = np.array([np.frombuffer(rows[i]["nucraw"].encode(), dtype=np.uint8) for i in keep])
    return codes, np.array(keep)


def test_dna_distance_follows_the_hierarchy(rows: list[dict[str, str]], truth: list[dict[str, str]]) -> None:
    codes, keep = _full_length_codes(rows)
    labels = np.array([[truth[i][level] for level in LEVELS] for i in keep])
    distance = (codes[:, None, :] != codes[None, :, :]).mean(axis=2)
    same = [labels[:, None, k] == labels[None, :, k] for k in range(len(LEVELS))]
    pairs = np.triu(np.ones_like(distance, dtype=bool), k=1)
    groups = [same[3], same[2] & ~same[3], same[1] & ~same[2], same[0] & ~same[1], ~same[0]]
    means = [distance[g & pairs].mean() for g in groups]
    assert all((g & pairs).sum() > 10 for g in groups)
    assert means == sorted(means), f"within species < genus < family < order < between orders: {means}"
    assert means[0] < 0.02 and means[-1] > 0.15
    at = np.isin(codes, np.frombuffer(b"AT", dtype=np.uint8)).mean()
    assert 0.6 < at < 0.72, "COI barcodes are AT-rich"


def test_barcodes_have_no_stop_codons_in_frame(rows: list[dict[str, str]]) -> None:
    codes, _ = _full_length_codes(rows)
    codons = codes[:, :657].reshape(len(codes), -1, 3).copy().view("S3")[..., 0]
    assert not np.isin(codons, [b"TAA", b"TAG"]).any()


def test_kmer_nearest_neighbour_identifies_genus(rows: list[dict[str, str]], truth: list[dict[str, str]]) -> None:
    k = 4
    lookup = np.zeros(256, dtype=np.int64)
    lookup[np.frombuffer(b"ACGT", dtype=np.uint8)] = np.arange(4)
    profiles = np.zeros((len(rows), 4**k))
    for i, row in enumerate(rows):
        seq = np.frombuffer(row["nucraw"].replace("N", "").encode(), dtype=np.uint8)
        index = sum(lookup[seq[j : len(seq) - k + 1 + j]] * 4 ** (k - 1 - j) for j in range(k))
        profiles[i] = np.bincount(index, minlength=4**k)
    profiles /= np.linalg.norm(profiles, axis=1, keepdims=True)
    similarity = profiles @ profiles.T
    np.fill_diagonal(similarity, -1)
    nearest = similarity.argmax(axis=1)
    genus = np.array([t["genus"] for t in truth])
    has_relative = np.array([(genus == g).sum() > 1 for g in genus])
    assert (genus[nearest] == genus)[has_relative].mean() > 0.9


def test_images_carry_order_signal(bench: Path, rows: list[dict[str, str]], truth: list[dict[str, str]]) -> None:
    images = read_images(bench / "images.hdf5")
    area = []
    for row in rows:
        grey = np.asarray(decode(images[row["image_file"]]).convert("L"), dtype=float)
        area.append((grey < np.median(grey) - 40).mean())  # share of the frame covered by the insect
    area, orders = np.array(area), np.array([t["order"] for t in truth])
    groups = [area[orders == o] for o in np.unique(orders)]
    between = sum(len(g) * (g.mean() - area.mean()) ** 2 for g in groups) / (len(groups) - 1)
    within = sum(((g - g.mean()) ** 2).sum() for g in groups) / (len(area) - len(groups))
    assert between / within > 10, "body plans differ between orders (one-way ANOVA F statistic)"


def test_blur_erases_species_marks_before_the_body_plan() -> None:
    """Species differ in fine marks (a blur erases the difference), orders in the body plan (a blur keeps it)."""
    from dataclasses import replace

    from hirviz.degrade import box_blur
    from train.synthetic.config import _rng
    from train.synthetic.images import render_image
    from train.synthetic.looks import _PERIODS, build_looks

    config = SynthConfig(image_height=96)
    looks = build_looks(build_tree(config), config)

    def photo(look, i: int) -> Image.Image:  # the same pose, plate and lighting for every look
        grey = decode(render_image(look, config.image_height, 90, _rng(0, 5, i))).convert("L")
        return grey.resize((round(64 * grey.width / grey.height), 64), Image.BICUBIC)  # hirviz-tiny's input grid

    def kept(a: Image.Image, b: Image.Image) -> float:  # share of the difference's energy left by a 5x5 blur
        def energy(k: int) -> float:
            return float(((np.asarray(box_blur(a, k), float) - np.asarray(box_blur(b, k), float)) ** 2).sum())
        return energy(5) / energy(1)

    species_kept, order_kept = [], []
    for i in range(0, 200, 25):
        look = looks[i]
        period = next(p for p in _PERIODS if p != look.detail.period)
        sister = replace(look, detail=replace(look.detail, period=period, spots=(look.detail.spots + 1) % 3))
        other_order = replace(look, plan=next(x.plan for x in looks if x.plan.archetype != look.plan.archetype))
        species_kept.append(kept(photo(look, i), photo(sister, i)))
        order_kept.append(kept(photo(look, i), photo(other_order, i)))
    assert np.median(species_kept) < 0.2, species_kept  # the blur leaves little of a species difference
    assert np.median(order_kept) > 2 * np.median(species_kept), order_kept  # and much more of an order one
    assert np.mean(np.array(species_kept) < np.array(order_kept)) >= 0.75


def test_cli_writes_the_benchmark(tmp_path: Path) -> None:
    from train.__main__ import main

    argv = ["synth", "--out", str(tmp_path), "--specimens", "12", "--seed", "3", "--image-height", "32",
            "--workers", "1", "--orders", "2", "--families", "3", "--genera", "4", "--species", "5"]
    assert main(argv) == 0
    assert len(read_tsv(tmp_path / "metadata.tsv")) == 12 == len(read_images(tmp_path / "images.hdf5"))
    assert len(Taxonomy.load(str(tmp_path / "tree.json")).names["order"]) == 2


@pytest.mark.parametrize("bad", [dict(orders=5, families=4), dict(genus_known=0.9), dict(image_height=8)])
def test_inconsistent_settings_are_rejected(bad: dict, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        generate(tmp_path, SynthConfig(**bad))
