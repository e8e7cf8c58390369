"""Abstention: unusable or out-of-range inputs get "no confident match" with a reason, ordinary held-out specimens
get an answer, and the policy calibrated at export keeps its rejection target and travels with the bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hirviz.abstain import POLICY_FILE, AbstentionPolicy, calibrate
from hirviz.bundle import BundleError, load_bundle
from hirviz.quality import MIN_BARCODE_BP, barcode_limits, barcode_quality

# ---------------------------------------------------------------------------------------------------------------
# Calibration on known signal distributions (no model)


def _draw(n: int, seed: int) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, np.ndarray]]:
    """Three signals per row; the answer is wrong more often when the first signal is low."""
    rng = np.random.default_rng(seed)
    quality = rng.normal(size=n)
    signals = {"image": {"neighbour_similarity": quality + 0.3 * rng.normal(size=n),
                         "margin": rng.uniform(size=n), "sharpness": rng.exponential(size=n)}}
    wrong = rng.uniform(size=n) < 1 / (1 + np.exp(3 * quality + 2))
    return signals, {"image": ~wrong}


@pytest.mark.parametrize("target", [0.05, 0.10])
def test_calibration_meets_its_rejection_target_on_held_out_rows(target: float) -> None:
    signals, correct = _draw(4000, seed=0)
    policy = calibrate(signals, correct, target_reject=target)
    calibration = policy.stats["image"]["calibration"]
    assert target - 0.005 <= calibration["rejected"] <= target
    fresh, fresh_correct = _draw(4000, seed=1)  # specimens the thresholds never saw
    policy.report(fresh, fresh_correct)
    assert abs(policy.stats["image"]["report"]["rejected"] - target) < 0.015
    report = policy.stats["image"]["report"]
    assert report["confident_wrong_with"] < report["confident_wrong_without"]


def test_hard_rejections_count_against_the_target() -> None:
    signals, correct = _draw(2000, seed=2)
    hard = {"image": np.arange(2000) % 25 == 0}  # 4 % refused by the hard limits already
    policy = calibrate(signals, correct, 0.05, hard=hard)
    assert 0.045 <= policy.stats["image"]["calibration"]["rejected"] <= 0.05
    alone = calibrate(signals, correct, 0.05)
    assert policy.quantiles["image"] < alone.quantiles["image"]


def test_policy_json_round_trip_and_version_check() -> None:
    signals, correct = _draw(500, seed=3)
    policy = calibrate(signals, correct, 0.05)
    again = AbstentionPolicy.from_dict(json.loads(json.dumps(policy.to_dict())))
    assert again.to_dict() == policy.to_dict()
    with pytest.raises(ValueError, match="version"):
        AbstentionPolicy.from_dict({**policy.to_dict(), "version": 99})


def test_barcode_limits() -> None:
    assert "20 bp" in barcode_limits(barcode_quality("ACGT" * 5))
    assert "mostly unread" in barcode_limits(barcode_quality("ACGT" * 10 + "N" * 60))
    random_dna = "".join(np.random.default_rng(0).choice(list("ACGT"), 600))
    quality = barcode_quality(random_dna)
    assert not quality.coi_hit and quality.length == 600
    assert barcode_limits(quality) is None  # a synthetic-barcode model does not ask for COI
    assert "not a COI barcode" in barcode_limits(quality, require_coi=True)
    assert MIN_BARCODE_BP > 20


def test_real_coi_barcode_passes_the_coi_limit(shared_data: Path) -> None:
    table = pd.read_csv(shared_data / "real_dna" / "barcodes.tsv", sep="\t", nrows=5)
    for sequence in table["dna_barcode"]:
        quality = barcode_quality(sequence.replace("-", "").upper())
        assert quality.coi_hit and barcode_limits(quality, require_coi=True) is None


# ---------------------------------------------------------------------------------------------------------------
# A trained tiny bundle, exported with its calibrated policy


@pytest.fixture(scope="module")
def bundle_dir(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from train.export import export

    return export(tiny_run, tmp_path_factory.mktemp("abstain") / "bundle", max_reference=60, umap=False)


@pytest.fixture(scope="module")
def heldout(tiny_run: Path, tiny_synth: Path) -> pd.DataFrame:
    from train.rundir import select_rows

    return select_rows(tiny_synth / "metadata.tsv", tiny_run, "test")[0]


@pytest.fixture(scope="module")
def predictor(bundle_dir: Path):
    return load_bundle(bundle_dir).predictor()


def _image(tiny_synth: Path, image_file: str) -> Image.Image:
    from train.data import open_images

    return open_images(tiny_synth / "images.hdf5").get(image_file)


def test_export_writes_a_calibrated_policy_that_loads_with_the_bundle(bundle_dir: Path) -> None:
    policy = load_bundle(bundle_dir).abstention
    assert policy is not None and policy.target_reject == 0.05
    on_disk = json.loads((bundle_dir / POLICY_FILE).read_text())
    assert policy.to_dict() == on_disk and on_disk["version"] == 1
    for query in ("image", "dna", "avg", "fused"):
        stats = on_disk["queries"][query]
        assert stats["calibration"]["rejected"] <= 0.05
        assert {"rejected", "confident_wrong_without", "confident_wrong_with"} <= set(stats["report"])
        assert {"neighbour_similarity", "text_similarity", "margin"} <= set(stats["thresholds"])
    assert "sharpness" in on_disk["queries"]["image"]["thresholds"]
    assert "length" in on_disk["queries"]["dna"]["thresholds"]
    assert on_disk["require_coi"] is False  # synthetic barcodes are not COI


def test_ordinary_held_out_specimens_get_answers(predictor, heldout: pd.DataFrame, tiny_synth: Path) -> None:
    answered = []
    for row in heldout.itertuples():
        prediction = predictor.predict(image=_image(tiny_synth, row.image_file), barcode=row.barcode)
        assert prediction.settings["abstention"].startswith("calibrated")
        answered.append(not prediction.queries["fused"].abstained)
        if answered[-1]:
            assert prediction.queries["fused"].reason is None
            assert prediction.verdict[0] == "fused"
    # At most 5 % are rejected on the calibration half; the other half may differ a little, never by this much.
    assert np.mean(answered) >= 0.75


def test_one_pixel_image_abstains_with_a_size_reason(predictor, heldout: pd.DataFrame) -> None:
    prediction = predictor.predict(image=np.zeros((1, 1, 3), np.uint8), barcode=heldout.barcode.iloc[0])
    for query in ("image", "avg", "fused"):
        assert prediction.queries[query].abstained
        assert "1 x 1 pixels" in prediction.queries[query].reason
    # The barcode alone still answers, and the verdict comes from it.
    assert not prediction.queries["dna"].abstained
    assert prediction.verdict[0] == "dna"


def test_uniform_grey_square_abstains(predictor) -> None:
    prediction = predictor.predict(image=np.full((200, 200, 3), 128, np.uint8))
    assert prediction.queries["image"].abstained and "blank" in prediction.queries["image"].reason
    assert prediction.verdict == (None, None)


def test_photo_blurred_to_a_grey_blur_abstains(predictor, heldout: pd.DataFrame, tiny_synth: Path) -> None:
    photo = _image(tiny_synth, heldout.image_file.iloc[0])
    prediction = predictor.predict(image=photo, blur_kernel=max(predictor.model.image_size))
    assert prediction.queries["image"].abstained


def test_twenty_bp_read_abstains(predictor, heldout: pd.DataFrame) -> None:
    prediction = predictor.predict(barcode=heldout.barcode.iloc[0][:20])
    assert prediction.queries["dna"].abstained and "20 bp" in prediction.queries["dna"].reason


@pytest.mark.parametrize("kind", ["checkerboard", "noise", "gradient"])
def test_non_insect_pictures_abstain(predictor, kind: str) -> None:
    y, x = np.mgrid[0:240, 0:320]
    if kind == "checkerboard":
        picture = (((x // 20) + (y // 20)) % 2 * 255).astype(np.uint8)[..., None].repeat(3, axis=2)
    elif kind == "noise":
        picture = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    else:
        picture = np.stack([x * 255 // 320, y * 255 // 240, np.full_like(x, 60)], axis=2).astype(np.uint8)
    assert predictor.predict(image=picture).queries["image"].abstained


def test_real_empty_wells_abstain(predictor, shared_data: Path) -> None:
    folder = shared_data / "real_images" / "bioscan_imgfilter_1024px" / "empty"
    photos = sorted(folder.glob("*.jpg"))[:5]
    if not photos:
        pytest.skip(f"no empty-well photos in {folder}")
    for photo in photos:
        result = predictor.predict(image=photo).queries["image"]
        assert result.abstained and result.reason


def test_bundle_without_a_policy_applies_the_hard_limits_only(bundle_dir: Path, tmp_path: Path,
                                                               heldout: pd.DataFrame) -> None:
    bare = tmp_path / "bare"
    shutil.copytree(bundle_dir, bare)
    (bare / POLICY_FILE).unlink()
    predictor = load_bundle(bare).predictor()
    prediction = predictor.predict(barcode=heldout.barcode.iloc[0])
    assert prediction.settings["abstention"].startswith("not calibrated")
    assert not prediction.queries["dna"].abstained
    assert predictor.predict(barcode=heldout.barcode.iloc[0][:20]).queries["dna"].abstained
    (bare / POLICY_FILE).write_text(json.dumps({"format": "hirviz-abstention", "version": 99}))
    with pytest.raises(BundleError, match="abstention"):
        load_bundle(bare)


def test_calibrate_command_rederives_the_split_from_the_bundle(bundle_dir: Path, tiny_synth: Path, tiny_run: Path,
                                                               heldout: pd.DataFrame, tmp_path: Path) -> None:
    from train.__main__ import main
    from train.calibrate import rederived_heldout

    again = rederived_heldout(load_bundle(bundle_dir), str(tiny_synth / "metadata.tsv"))
    assert again["sampleid"].tolist() == heldout["sampleid"].tolist()
    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    (copy / POLICY_FILE).unlink()
    assert main(["calibrate", "--bundle", str(copy), "--metadata", str(tiny_synth / "metadata.tsv"),
                 "--images", str(tiny_synth / "images.hdf5"), "--seed", "0"]) == 0
    rebuilt = json.loads((copy / POLICY_FILE).read_text())
    original = json.loads((bundle_dir / POLICY_FILE).read_text())
    assert rebuilt["queries"] == original["queries"]  # same rows, same halves, same thresholds
    other = tmp_path / "other.tsv"
    pd.read_csv(tiny_synth / "metadata.tsv", sep="\t").iloc[:-10].to_csv(other, sep="\t", index=False)
    with pytest.raises(ValueError, match="not the bundle's training data"):
        rederived_heldout(load_bundle(bundle_dir), str(other))
