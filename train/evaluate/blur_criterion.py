"""Does image blur hurt like it does on real photographs? The check the synthetic study prints.

The paper's blur costs image -> text (IT) species top-1 about half its clean value and order about a tenth
(order 98.8 -> 88.8, species 46.6 -> 22.2). A benchmark whose "noisy image" condition is to mean the same must
lose at least :data:`MIN_SPECIES_LOSS` of IT species top-1 while losing at most :data:`MAX_ORDER_LOSS` of IT
order top-1 (relative losses, ``1 - noisy / clean``). :func:`blur_criterion` reads an evaluation results JSON
(``python -m train eval``: the ``clean`` and ``noisy_image`` conditions, or with ``kernel`` one point of its
``--sweep``) and returns a :class:`BlurCheck`; ``str()`` of it is the line to print.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_ORDER_LOSS", "MIN_SPECIES_LOSS", "BlurCheck", "blur_criterion", "sweep_kernels"]

MIN_SPECIES_LOSS = 0.40
MAX_ORDER_LOSS = 0.15


def _loss(clean: float | None, noisy: float | None) -> float | None:
    if clean is None or noisy is None or clean <= 0:
        return None  # nothing to lose: the criterion cannot be judged
    return 1.0 - noisy / clean


@dataclass(frozen=True)
class BlurCheck:
    """IT order and species top-1 (%) clean and blurred, and whether the blur hurts species but not order."""

    kernel: int | None
    order_clean: float | None
    order_noisy: float | None
    species_clean: float | None
    species_noisy: float | None

    @property
    def order_loss(self) -> float | None:
        """Share of clean IT order top-1 lost under blur (None when clean is 0 or missing)."""
        return _loss(self.order_clean, self.order_noisy)

    @property
    def species_loss(self) -> float | None:
        """Share of clean IT species top-1 lost under blur (None when clean is 0 or missing)."""
        return _loss(self.species_clean, self.species_noisy)

    @property
    def passed(self) -> bool:
        """Species loses at least :data:`MIN_SPECIES_LOSS` and order at most :data:`MAX_ORDER_LOSS`."""
        order, species = self.order_loss, self.species_loss
        return order is not None and species is not None and species >= MIN_SPECIES_LOSS and order <= MAX_ORDER_LOSS

    def __str__(self) -> str:
        def pct(v: float | None) -> str:
            return "–" if v is None else f"{v:.1f}"

        def rel(v: float | None) -> str:
            if v is None:
                return "n/a"
            return f"-{100 * v:.0f} %" if v >= 0 else f"+{-100 * v:.0f} %"  # a loss is shown as a fall

        blur = "?" if self.kernel is None else f"{self.kernel}x{self.kernel}"
        return (f"blur criterion ({blur} box blur, IT top-1): order {pct(self.order_clean)} -> {pct(self.order_noisy)}"
                f" ({rel(self.order_loss)}, allowed -{100 * MAX_ORDER_LOSS:.0f} %), species {pct(self.species_clean)}"
                f" -> {pct(self.species_noisy)} ({rel(self.species_loss)}, needed -{100 * MIN_SPECIES_LOSS:.0f} %):"
                f" {'PASS' if self.passed else 'FAIL'}")


def _top1(results: Mapping[str, Any], condition: str, level: str) -> float | None:
    try:
        value = results[condition]["image"][level]["top1"]
    except (KeyError, TypeError):
        raise ValueError(f"results have no image -> text {level} top-1 under {condition!r}: evaluate with images "
                         f"and the clean and noisy_image conditions") from None
    return None if value is None else float(value)


def _sweep_top1(results: Mapping[str, Any], kernel: int, level: str) -> float | None:
    for record in results.get("sweep") or ():
        if (record.get("kind"), record.get("query"), record.get("level")) == ("blur", "image", level) \
                and int(record.get("strength", -1)) == kernel:
            return None if record.get("top1") is None else float(record["top1"])
    raise ValueError(f"results have no image blur sweep point at kernel {kernel} for {level}: evaluate with --sweep"
                     f" (kernels there: {sweep_kernels(results)})")


def sweep_kernels(results: Mapping[str, Any]) -> list[int]:
    """The blur kernels of the results' ``--sweep`` (1 = no blur), ascending."""
    return sorted({int(r["strength"]) for r in results.get("sweep") or () if r.get("kind") == "blur"})


def blur_criterion(results: Mapping[str, Any], kernel: int | None = None) -> BlurCheck:
    """The blur check of one evaluation results dict.

    Without ``kernel``: ``clean`` against ``noisy_image`` (whose kernel ``_meta.blur_kernel`` records). With
    ``kernel``: the ``--sweep`` records at kernel 1 (clean) against ``kernel``. Raises ``ValueError`` naming what
    is missing when the results cannot answer.
    """
    if not isinstance(results, Mapping):
        raise ValueError(f"expected an evaluation results dict, got {type(results).__name__}")
    if kernel is None:
        meta_kernel = (results.get("_meta") or {}).get("blur_kernel")
        return BlurCheck(None if meta_kernel is None else int(meta_kernel),
                         _top1(results, "clean", "order"), _top1(results, "noisy_image", "order"),
                         _top1(results, "clean", "species"), _top1(results, "noisy_image", "species"))
    return BlurCheck(int(kernel), _sweep_top1(results, 1, "order"), _sweep_top1(results, kernel, "order"),
                     _sweep_top1(results, 1, "species"), _sweep_top1(results, kernel, "species"))
