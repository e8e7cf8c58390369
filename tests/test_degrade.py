"""The DNA noise model (rates, order, edits, seeding) and the image box blur."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from hirviz.degrade import DnaNoise, Edit, box_blur, degrade_barcode, degrade_barcode_with_edits, degrade_barcodes

OFF = DnaNoise.off()


def random_dna(length: int, seed: int = 0, alphabet: str = "ACGT") -> str:
    rng = np.random.default_rng(seed)
    return "".join(rng.choice(list(alphabet), size=length))


def binomial_ok(count: int, n: int, p: float) -> bool:
    """Whether ``count`` events out of ``n`` fit rate ``p`` (within 5 standard deviations)."""
    return abs(count - n * p) <= 5 * np.sqrt(n * p * (1 - p)) + 1


LONG = random_dna(50_000, seed=1)


# ------------------------------------------------------------------------------------------------ DnaNoise


def test_defaults_are_the_papers_values() -> None:
    assert DnaNoise() == DnaNoise(0.01, 0.003, 0.002, 0.002, 0.05, 0.10)
    assert OFF.is_off() and not DnaNoise().is_off()


def test_scaled_multiplies_every_rate_and_clips() -> None:
    doubled = DnaNoise().scaled(2)
    assert doubled.substitution == pytest.approx(0.02) and doubled.truncation == pytest.approx(0.2)
    assert DnaNoise(truncation=0.7, n_run=0.6).scaled(2).truncation == 1.0
    assert DnaNoise().scaled(0) == OFF
    with pytest.raises(ValueError, match="scale factor"):
        DnaNoise().scaled(-1)


@pytest.mark.parametrize("bad", [{"substitution": -0.1}, {"deletion": 1.5}, {"n_run": float("nan")}])
def test_invalid_rates_are_rejected(bad: dict[str, float]) -> None:
    name = next(iter(bad))
    with pytest.raises(ValueError, match=f"DnaNoise.{name} must be between 0 and 1"):
        DnaNoise(**bad)


def test_non_numeric_rate_is_rejected() -> None:
    with pytest.raises(TypeError, match="must be a number"):
        DnaNoise(substitution="0.1")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ each operation


def test_zero_noise_is_identity_after_clean_up() -> None:
    seq = random_dna(700, alphabet="ACGTN")
    assert degrade_barcode(seq, OFF, seed=5) == seq
    assert degrade_barcode_with_edits(seq.lower(), OFF, seed=5) == (seq, [])
    # The clean-up keeps only A/C/G/T/N, upper-cased.
    assert degrade_barcode("acgT-RYx n", OFF, seed=0) == "ACGTN"
    assert degrade_barcode("", DnaNoise(), seed=0) == ""


def test_substitution_rate_and_targets() -> None:
    seq = random_dna(20_000, seed=2, alphabet="ACGTN")
    out = degrade_barcode(seq, DnaNoise(0.1, 0, 0, 0, 0, 0), seed=3)
    a, b = np.array(list(seq)), np.array(list(out))
    changed = a != b
    acgt = a != "N"
    assert len(out) == len(seq)
    assert not changed[~acgt].any() and (b[changed] != "N").all()  # only ACGT, never to N
    assert binomial_ok(int(changed.sum()), int(acgt.sum()), 0.1)
    # Uniform over the other three: the cyclic shift (1, 2 or 3 places in ACGT) is a third each.
    shifts = (np.searchsorted(list("ACGT"), b[changed]) - np.searchsorted(list("ACGT"), a[changed])) % 4
    counts = np.bincount(shifts, minlength=4)
    assert counts[0] == 0
    assert all(binomial_ok(int(c), int(changed.sum()), 1 / 3) for c in counts[1:])


def test_n_mask_rate_changes_nothing_else() -> None:
    out = degrade_barcode(LONG, DnaNoise(0, 0.05, 0, 0, 0, 0), seed=4)
    a, b = np.array(list(LONG)), np.array(list(out))
    assert (b[b != "N"] == a[b != "N"]).all()
    assert binomial_ok(int((b == "N").sum()), len(LONG), 0.05)


def test_deletion_and_insertion_rates() -> None:
    deleted = degrade_barcode(LONG, DnaNoise(0, 0, 0.03, 0, 0, 0), seed=5)
    assert binomial_ok(len(LONG) - len(deleted), len(LONG), 0.03)
    inserted = degrade_barcode(LONG, DnaNoise(0, 0, 0, 0.03, 0, 0), seed=5)
    assert binomial_ok(len(inserted) - len(LONG), len(LONG), 0.03)
    # Removing the inserted bases gives the input back.
    _, edits = degrade_barcode_with_edits(LONG, DnaNoise(0, 0, 0, 0.03, 0, 0), seed=5)
    positions = {e.position for e in edits}
    assert {e.kind for e in edits} == {"insertion"}
    assert "".join(c for i, c in enumerate(inserted) if i not in positions) == LONG


@pytest.mark.parametrize(("length", "frac"), [(658, 0.05), (313, 0.05), (1000, 0.123), (10, 0.04)])
def test_n_run_is_one_contiguous_run_of_exact_length(length: int, frac: float) -> None:
    seq = random_dna(length, seed=length)
    for key in range(5):
        out = degrade_barcode(seq, DnaNoise(0, 0, 0, 0, frac, 0), seed=6, key=key)
        runs = re.findall("N+", out)
        expected = round(frac * length)
        assert [len(r) for r in runs] == ([expected] if expected else [])
        assert re.sub("N", "", out) == "".join(c for c, o in zip(seq, out) if o != "N")


@pytest.mark.parametrize("length", [658, 313, 101, 1])
def test_truncation_keeps_exactly_the_first_fraction(length: int) -> None:
    seq = random_dna(length, seed=length)
    out = degrade_barcode(seq, DnaNoise(0, 0, 0, 0, 0, 0.1), seed=7)
    assert out == seq[: round(0.9 * length)]


def test_paper_noise_lengths_follow_the_indels() -> None:
    out, edits = degrade_barcode_with_edits(random_dna(658), DnaNoise(), seed=123)
    after_indels = 658 + sum(e.kind == "insertion" for e in edits) - sum(e.kind == "deletion" for e in edits)
    assert len(out) == round(0.9 * after_indels)
    (run,) = [e for e in edits if e.kind == "n_run"]
    assert run.length == round(0.05 * after_indels)


# ------------------------------------------------------------------------------------------------ edits


def undo_edits(output: str, edits: list[Edit]) -> str:
    """Rebuild the clean input from the output and its edits, stage by stage in reverse order."""
    seq = list(output)
    for edit in edits:
        if edit.kind == "truncation":
            assert edit.position == len(output)
            seq += list(edit.before)
    for edit in edits:
        if edit.kind == "n_run":
            assert seq[edit.position : edit.position + edit.length] == list(edit.after) == ["N"] * edit.length
            seq[edit.position : edit.position + edit.length] = list(edit.before)
    for edit in edits:
        if edit.kind in ("substitution", "mask"):
            assert seq[edit.position] == edit.after != edit.before
            assert (edit.after == "N") == (edit.kind == "mask")
            seq[edit.position] = edit.before
    inserted = {e.position for e in edits if e.kind == "insertion"}
    assert all(seq[e.position] == e.after for e in edits if e.kind == "insertion")
    deleted: dict[int, list[str]] = {}
    for edit in edits:
        if edit.kind == "deletion":
            deleted.setdefault(edit.position, []).append(edit.before)
    clean = []
    for position in range(len(seq) + 1):
        clean += deleted.get(position, [])
        if position < len(seq) and position not in inserted:
            clean.append(seq[position])
    return "".join(clean)


@pytest.mark.parametrize("key", range(6))
def test_edits_explain_the_output_exactly(key: int) -> None:
    seq = random_dna(658, seed=key, alphabet="ACGTTN")
    out, edits = degrade_barcode_with_edits(seq, DnaNoise().scaled(8), seed=11, key=key)
    assert out == degrade_barcode(seq, DnaNoise().scaled(8), seed=11, key=key)
    assert {e.kind for e in edits} == {"substitution", "mask", "deletion", "insertion", "n_run", "truncation"}
    assert undo_edits(out, edits) == seq


# ------------------------------------------------------------------------------------------------ seeding


def test_deterministic_and_key_dependent() -> None:
    seq = random_dna(658)
    noise = DnaNoise().scaled(3)
    assert degrade_barcode(seq, noise, seed=1, key=2) == degrade_barcode(seq, noise, seed=1, key=2)
    assert degrade_barcode(seq, noise, seed=1, key=2) != degrade_barcode(seq, noise, seed=1, key=3)
    assert degrade_barcode(seq, noise, seed=1, key=2) != degrade_barcode(seq, noise, seed=2, key=2)


def test_batch_results_do_not_depend_on_batch_size_or_order() -> None:
    seqs = [random_dna(658, seed=i) for i in range(12)]
    noise = DnaNoise().scaled(3)
    full = degrade_barcodes(seqs, noise, seed=9)
    assert full == [degrade_barcode(s, noise, seed=9, key=i) for i, s in enumerate(seqs)]
    assert degrade_barcodes(seqs[5:8], noise, seed=9, keys=[5, 6, 7]) == full[5:8]
    order = list(reversed(range(12)))
    assert degrade_barcodes([seqs[i] for i in order], noise, seed=9, keys=order) == [full[i] for i in order]


def test_a_higher_rate_only_adds_events() -> None:
    # Random numbers never depend on the rates, so severity sweeps are nested and comparable.
    low = np.array(list(degrade_barcode(LONG, DnaNoise(0.01, 0, 0, 0, 0, 0), seed=3)))
    high = np.array(list(degrade_barcode(LONG, DnaNoise(0.02, 0, 0, 0, 0, 0), seed=3)))
    original = np.array(list(LONG))
    assert ((low != original) <= (high != original)).all()


def test_bad_seed_keys_and_input_are_rejected() -> None:
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        degrade_barcode("ACGT", DnaNoise(), seed=-1)
    with pytest.raises(ValueError, match="2 keys for 3 sequences"):
        degrade_barcodes(["A", "C", "G"], DnaNoise(), seed=0, keys=[0, 1])
    with pytest.raises(TypeError, match="not a single string"):
        degrade_barcodes("ACGT", DnaNoise(), seed=0)


# ------------------------------------------------------------------------------------------------ blur


@pytest.mark.parametrize("k", [3, 5, 4])
def test_blur_spreads_a_delta_into_a_k_by_k_box(k: int) -> None:
    image = torch.zeros(2, 1, 15, 15)
    image[:, :, 7, 7] = 1.0
    out = box_blur(image, k)
    assert out.shape == image.shape
    low, high = 7 - k // 2, 7 + (k - 1) // 2  # an even window reaches one pixel less up/left
    expected = torch.zeros(15, 15)
    expected[low : high + 1, low : high + 1] = 1 / k**2
    torch.testing.assert_close(out[1, 0], expected)
    assert out.sum().item() == pytest.approx(2.0)


def test_blur_keeps_uniform_images_uniform_and_preserves_shape() -> None:
    image = torch.full((3, 10, 12), 0.8)
    torch.testing.assert_close(box_blur(image, 7), image)
    assert box_blur(image, 1) is image and box_blur(image, 0) is image


def test_blur_tensor_errors() -> None:
    with pytest.raises(TypeError, match="float tensor"):
        box_blur(torch.zeros(3, 8, 8, dtype=torch.uint8), 3)
    with pytest.raises(ValueError, match=r"\[C, H, W\]"):
        box_blur(torch.zeros(8, 8), 3)


@pytest.mark.parametrize("mode", ["RGB", "L", "RGBA"])
def test_pil_and_tensor_paths_agree(mode: str) -> None:
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)).convert(mode)
    blurred = box_blur(image, 5)
    assert isinstance(blurred, Image.Image) and (blurred.mode, blurred.size) == (mode, image.size)
    array = np.asarray(image, dtype=np.float32).reshape(24, 32, -1)
    tensor = torch.from_numpy(array).permute(2, 0, 1) / 255
    expected = box_blur(tensor, 5).permute(1, 2, 0).numpy() * 255
    got = np.asarray(blurred, dtype=np.float32).reshape(24, 32, -1)
    assert np.abs(got - expected).max() <= 0.5 + 1e-3
    assert np.abs(got - array).max() > 10  # it did blur


def test_pil_identity_and_palette_images() -> None:
    image = Image.new("P", (8, 6))
    assert box_blur(image, 1).tobytes() == image.tobytes()
    assert box_blur(image, 3).mode == "RGB"
