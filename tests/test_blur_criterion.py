"""The blur criterion the synthetic study prints: IT species must lose >= 40 % under blur, IT order <= 15 %."""

from __future__ import annotations

import pytest

from train.evaluate.blur_criterion import blur_criterion


def results(order: tuple[float, float], species: tuple[float | None, float | None], kernel: int = 5) -> dict:
    def cond(o: float, s: float | None) -> dict:
        return {"image": {"order": {"top1": o, "top5": 100.0}, "species": {"top1": s, "top5": None}}}

    return {"clean": cond(order[0], species[0]), "noisy_image": cond(order[1], species[1]),
            "_meta": {"blur_kernel": kernel}}


def test_blur_that_hurts_species_but_not_order_passes() -> None:
    check = blur_criterion(results(order=(98.8, 88.8), species=(46.6, 22.2), kernel=7))  # the paper's numbers
    assert check.kernel == 7
    assert check.order_loss == pytest.approx(1 - 88.8 / 98.8)
    assert check.species_loss == pytest.approx(1 - 22.2 / 46.6)
    assert check.passed
    assert "PASS" in str(check) and "7x7" in str(check) and "46.6 -> 22.2" in str(check)


@pytest.mark.parametrize("order, species", [
    ((91.2, 89.9), (6.0, 6.3)),  # blur changes nothing (the old synthetic photos)
    ((90.0, 70.0), (40.0, 10.0)),  # species falls, but order falls too far
    ((90.0, 88.0), (40.0, 25.0)),  # species loses only 37.5 %
])
def test_blur_that_does_not_separate_the_ranks_fails(order: tuple, species: tuple) -> None:
    check = blur_criterion(results(order, species))
    assert not check.passed and "FAIL" in str(check)


def test_no_clean_species_accuracy_cannot_pass() -> None:
    check = blur_criterion(results((90.0, 90.0), (0.0, 0.0)))
    assert check.species_loss is None and not check.passed
    assert not blur_criterion(results((90.0, 90.0), (None, None))).passed


def test_a_sweep_point_is_checked_against_the_unblurred_one() -> None:
    sweep = [{"kind": "blur", "strength": k, "query": "image", "level": level, "top1": top1}
             for k, level, top1 in [(1, "order", 95.0), (1, "species", 30.0), (5, "order", 90.0),
                                    (5, "species", 12.0), (9, "order", 60.0), (9, "species", 3.0)]]
    sweep.append({"kind": "dna", "strength": 1.0, "query": "dna", "level": "species", "top1": 80.0})
    data = {"sweep": sweep}
    assert blur_criterion(data, kernel=5).passed
    assert not blur_criterion(data, kernel=9).passed  # order lost too
    with pytest.raises(ValueError, match="kernel 7"):
        blur_criterion(data, kernel=7)


def test_results_without_images_give_a_clear_error() -> None:
    with pytest.raises(ValueError, match="noisy_image"):
        blur_criterion({"clean": {"dna": {}}, "noisy_dna": {"dna": {}}})
    with pytest.raises(ValueError, match="results dict"):
        blur_criterion([1, 2])  # type: ignore[arg-type]
