"""Abstention: answer "no confident match" instead of a name when the evidence is out of the model's range.

Every query (image, dna, avg, fused) of a prediction gets signals, all oriented so that *higher is better*:

* embedding signals: ``neighbour_similarity`` (cosine to the nearest reference specimen in the query's space),
  ``text_similarity`` (cosine to the best candidate taxonomy string) and ``margin`` (top-1 minus top-2 score at
  the deepest rank answered, at the order when none is);
* input quality (:mod:`hirviz.quality`) of the inputs the query uses: the image's for ``image``, the barcode's for
  ``dna``, both for ``avg`` and ``fused``.

A query abstains when an input breaks a hard limit (:func:`hirviz.quality.image_limits` /
:func:`~hirviz.quality.barcode_limits`: a 1x1 or blank image, a 20-bp read, a non-COI sequence for a model of real
COI barcodes), or when any signal falls below the threshold its bundle's :class:`AbstentionPolicy` calibrated on
held-out specimens (:func:`calibrate`). A bundle without a policy applies the hard limits only ("not calibrated").

The policy is the bundle's ``abstention.json`` (:data:`POLICY_FILE`, format :data:`POLICY_VERSION`)::

    {"format": "hirviz-abstention", "version": 1, "target_reject": 0.05, "require_coi": false,
     "queries": {"image": {"thresholds": {"neighbour_similarity": 0.61, ...},   # reject when value < threshold
                           "quantile": 0.008,               # the per-signal held-out quantile the thresholds sit at
                           "calibration": {"n": 400, "rejected": 0.049},
                           "report": {"n": 400, "rejected": 0.05, "confident_wrong_without": 0.21,
                                      "confident_wrong_with": 0.19, "confident_wrong_among_answered": 0.2}}, ...},
     "data": {...}}                                          # where the held-out specimens came from

``calibration`` describes the slice the thresholds were chosen on and ``report`` a disjoint slice they were not
(the honest numbers). A confident wrong answer is a query whose deepest confident rank names the wrong taxon.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "POLICY_FILE",
    "POLICY_VERSION",
    "AbstentionPolicy",
    "assess",
    "calibrate",
    "load_policy",
    "verdict",
]

POLICY_FILE = "abstention.json"
POLICY_VERSION = 1
_FORMAT = "hirviz-abstention"
IMAGE_QUERIES = ("image", "avg", "fused")
DNA_QUERIES = ("dna", "avg", "fused")
# The query whose deepest rank is the overall verdict, first that answers wins (the joint evidence first).
VERDICT_ORDER = ("fused", "avg", "image", "dna")

# Plain-language phrase per signal, for a query rejected by its calibrated threshold.
_PHRASES = {
    "neighbour_similarity": "it is less like any reference specimen than the model's held-out specimens are",
    "text_similarity": "it matches no known taxon as closely as held-out specimens do",
    "margin": "the two best names are too close to tell apart",
    "sharpness": "the photo the model sees is blurrier than the photos it was calibrated on",
    "contrast": "the photo has less contrast than the photos it was calibrated on",
    "subject": "little of the photo stands out from the background (no specimen, or a tiny one)",
    "colour": "the photo's colours are flatter than those of the photos it was calibrated on",
    "length": "the barcode is shorter than the barcodes it was calibrated on",
    "acgt_fraction": "the barcode has more unread bases (N) than those it was calibrated on",
    "coi_hit": "the sequence does not match the COI-5P barcode region, unlike the barcodes it was calibrated on",
    "no_stop_codons": "the barcode has stop codons in its reading frame (a pseudogene or a sequencing error?)",
}


@dataclass
class AbstentionPolicy:
    """Calibrated thresholds per query (see the module docstring); a signal below its threshold rejects."""

    target_reject: float
    thresholds: dict[str, dict[str, float]]
    quantiles: dict[str, float] = field(default_factory=dict)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)
    require_coi: bool = False
    data: dict[str, Any] = field(default_factory=dict)

    def rejects(self, query: str, signals: Mapping[str, Any]) -> np.ndarray:
        """Which rows (or the one row) the thresholds reject: any signal strictly below its threshold.

        ``signals`` maps names to values or arrays; a missing or NaN value never rejects."""
        out = np.zeros(np.shape(next(iter(signals.values()), 0.0)), dtype=bool)
        for name, limit in self.thresholds.get(query, {}).items():
            if name in signals:
                values = np.asarray(signals[name], dtype=np.float64)
                out |= np.nan_to_num(values, nan=np.inf) < limit
        return out

    def reason(self, query: str, signals: Mapping[str, float]) -> str | None:
        """Why ``query`` abstains under the thresholds (``None`` when it does not)."""
        failed = [(name, float(signals[name]), limit) for name, limit in self.thresholds.get(query, {}).items()
                  if name in signals and np.isfinite(signals[name]) and signals[name] < limit]
        if not failed:
            return None
        parts = [f"{_PHRASES.get(name, name)} ({name.replace('_', ' ')} {value:.3g} < {limit:.3g})"
                 for name, value, limit in failed]
        return "no confident match: " + "; ".join(parts)

    def report(self, signals: Mapping[str, Mapping[str, np.ndarray]], correct: Mapping[str, np.ndarray],
               hard: Mapping[str, np.ndarray] | None = None, key: str = "report") -> None:
        """Measure the policy on held-out rows (``stats[query][key]``): rejection rate and the rate of confident
        wrong answers without and with abstention (both over all rows), and among the answered rows."""
        for query, sig in signals.items():
            ok = np.asarray(correct[query], dtype=bool)
            rejected = self.rejects(query, sig) | _hard(hard, query, len(ok))
            answered = ~rejected
            self.stats.setdefault(query, {})[key] = {
                "n": int(len(ok)),
                "rejected": _rate(rejected.sum(), len(ok)),
                "confident_wrong_without": _rate((~ok).sum(), len(ok)),
                "confident_wrong_with": _rate((~ok & answered).sum(), len(ok)),
                "confident_wrong_among_answered": _rate((~ok & answered).sum(), answered.sum()),
            }

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the module docstring shows it)."""
        queries = {q: {"thresholds": dict(t), "quantile": self.quantiles.get(q), **self.stats.get(q, {})}
                   for q, t in self.thresholds.items()}
        return {"format": _FORMAT, "version": POLICY_VERSION, "target_reject": self.target_reject,
                "require_coi": self.require_coi, "queries": queries, "data": dict(self.data)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AbstentionPolicy:
        """Read :meth:`to_dict`'s form; ``ValueError`` for another format or a newer version."""
        if data.get("format") != _FORMAT:
            raise ValueError(f"not an abstention policy (format {data.get('format')!r})")
        version = data.get("version")
        if not isinstance(version, int) or not 1 <= version <= POLICY_VERSION:
            raise ValueError(f"abstention policy version {version!r}; this hirviz reads 1..{POLICY_VERSION}")
        queries = data.get("queries") or {}
        return cls(
            target_reject=float(data["target_reject"]),
            thresholds={q: {k: float(v) for k, v in (e.get("thresholds") or {}).items()} for q, e in queries.items()},
            quantiles={q: float(e["quantile"]) for q, e in queries.items() if e.get("quantile") is not None},
            stats={q: {k: v for k, v in e.items() if k not in ("thresholds", "quantile")} for q, e in queries.items()},
            require_coi=bool(data.get("require_coi", False)),
            data=dict(data.get("data") or {}),
        )

    def save(self, bundle_dir: str | os.PathLike) -> Path:
        """Write ``abstention.json`` into a bundle directory."""
        path = Path(bundle_dir) / POLICY_FILE
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return path


def load_policy(bundle_dir: str | os.PathLike) -> AbstentionPolicy | None:
    """The policy of a bundle directory, ``None`` when it has none (ValueError when it is unreadable)."""
    path = Path(bundle_dir) / POLICY_FILE
    if not path.is_file():
        return None
    try:
        return AbstentionPolicy.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err


# ---------------------------------------------------------------------------------------------------- calibration


def calibrate(signals_heldout: Mapping[str, Mapping[str, np.ndarray]], correct_heldout: Mapping[str, np.ndarray],
              target_reject: float = 0.05, *, hard: Mapping[str, np.ndarray] | None = None,
              require_coi: bool = False) -> AbstentionPolicy:
    """Thresholds rejecting at most ``target_reject`` of the held-out rows, per query.

    ``signals_heldout[query][signal]`` holds one value per held-out row (NaN = not measured), ``correct_heldout
    [query]`` whether the query's confident answer was right (a query naming nothing is not wrong) and ``hard
    [query]`` which rows the hard limits already reject. Every signal of a query gets its threshold at the same
    held-out quantile q (its lower q-quantile), q the largest for which the union of rejections (hard limits
    included) stays within the target; ``stats[query]["calibration"]`` records what it achieved on these rows.
    """
    if not 0.0 <= target_reject < 1.0:
        raise ValueError(f"target_reject must be in [0, 1), got {target_reject}")
    policy = AbstentionPolicy(target_reject=float(target_reject), thresholds={}, require_coi=require_coi)
    for query, signals in signals_heldout.items():
        columns = {name: np.asarray(v, dtype=np.float64) for name, v in signals.items()}
        base = _hard(hard, query, len(np.asarray(correct_heldout[query])))
        # The rejection rate grows with q (every threshold rises), so bisect for the largest q within the target.
        low, high = 0.0, float(target_reject)
        if _union_rate(query, columns, base, high) <= target_reject:
            low = high
        else:
            for _ in range(40):
                mid = (low + high) / 2
                low, high = (mid, high) if _union_rate(query, columns, base, mid) <= target_reject else (low, mid)
        policy.thresholds[query] = _thresholds_at(columns, low)
        policy.quantiles[query] = low
    policy.report(signals_heldout, correct_heldout, hard, key="calibration")
    return policy


def _thresholds_at(columns: Mapping[str, np.ndarray], q: float) -> dict[str, float]:
    """Each signal's lower q-quantile over its measured (finite) held-out values."""
    out = {}
    for name, values in columns.items():
        finite = values[np.isfinite(values)]
        if len(finite):
            out[name] = float(np.quantile(finite, q, method="lower"))
    return out


def _union_rate(query: str, columns: Mapping[str, np.ndarray], base: np.ndarray, q: float) -> float:
    """The share of rows rejected by the hard limits (``base``) or by any threshold at quantile q."""
    if not len(base):
        return 0.0
    trial = AbstentionPolicy(0.0, {query: _thresholds_at(columns, q)})
    return float((trial.rejects(query, columns) | base).mean())


def _hard(hard: Mapping[str, np.ndarray] | None, query: str, n: int) -> np.ndarray:
    if hard is None or query not in hard:
        return np.zeros(n, dtype=bool)
    return np.asarray(hard[query], dtype=bool)


def _rate(count: Any, total: Any) -> float | None:
    return round(float(count) / float(total), 4) if total else None


# ---------------------------------------------------------------------------------------------------- prediction


def assess(predictor: Any, queries: Mapping[str, Any], embedded: Any, image_size: tuple[int, int] | None) -> str:
    """Measure every query's signals and decide whether it abstains (the :class:`hirviz.predict.Predictor` hook).

    Sets ``signals``, ``abstained`` and ``reason`` on each :class:`~hirviz.predict.QueryResult` of ``queries``;
    ``predictor.abstention`` is the policy (``None``: hard limits only). Returns how abstention was decided, for
    the prediction's settings.
    """
    from hirviz.quality import barcode_limits, barcode_quality, image_limits, image_quality

    policy: AbstentionPolicy | None = getattr(predictor, "abstention", None)
    inputs: dict[str, tuple[dict[str, float], str | None]] = {}
    if embedded.pixels is not None and image_size is not None:
        iq = image_quality(_model_input_rgb(predictor.model, embedded.pixels[0]), image_size)
        inputs["image"] = (iq.signals(), image_limits(iq))
    if embedded.barcodes:
        bq = barcode_quality(embedded.barcodes[0])
        inputs["dna"] = (bq.signals(), barcode_limits(bq, require_coi=bool(policy and policy.require_coi)))
    reference = predictor.reference_map
    for name, result in queries.items():
        signals = embedding_signals(result, reference, predictor.text_embeddings)
        hard = []
        for modality, members in (("image", IMAGE_QUERIES), ("dna", DNA_QUERIES)):
            if name in members and modality in inputs:
                signals.update(inputs[modality][0])
                if inputs[modality][1]:
                    hard.append(inputs[modality][1])
        result.signals = signals
        result.reason = "; ".join(hard) if hard else (policy.reason(name, signals) if policy else None)
        result.abstained = result.reason is not None
    if policy is None:
        return "not calibrated: hard input limits only"
    return f"calibrated on held-out specimens (target rejection {policy.target_reject:.0%})"


def embedding_signals(result: Any, reference: Any, text_embeddings: np.ndarray) -> dict[str, float]:
    """``neighbour_similarity``, ``text_similarity`` and ``margin`` of one query result (see the module docstring).

    ``reference`` is a :class:`hirviz.geometry.ReferenceMap` (or ``None``: no neighbour similarity);
    ``text_embeddings`` the candidates' unit embeddings ``[C, d]``."""
    signals = {"neighbour_similarity": float("nan"), "text_similarity": float("nan"), "margin": float("nan")}
    if reference is not None and result.query in reference.spaces:
        found = reference.neighbours(result.embedding, result.query, 1)
        if len(found.similarity) and np.isfinite(found.similarity[0]):
            signals["neighbour_similarity"] = float(found.similarity[0])
    if len(text_embeddings):
        signals["text_similarity"] = float(np.max(text_embeddings @ np.asarray(result.embedding, np.float32)))
    ranked = result.levels.get(result.deepest_rank or "order") or []
    if ranked:
        signals["margin"] = float(ranked[0][1] - (ranked[1][1] if len(ranked) > 1 else 0.0))
    return signals


def _model_input_rgb(model: Any, pixels: Any) -> np.ndarray:
    """A normalised model input ``[C, H, W]`` back to RGB ``[H, W, 3]`` in [0, 1]."""
    mean = np.asarray(model.image_mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(model.image_std, dtype=np.float32).reshape(-1, 1, 1)
    return np.clip(pixels.detach().cpu().float().numpy() * std + mean, 0.0, 1.0).transpose(1, 2, 0)


def verdict(prediction: Any) -> tuple[str | None, str | None]:
    """The overall answer: ``(query, deepest rank)`` of the first query of :data:`VERDICT_ORDER` that does not
    abstain, or ``(None, None)`` when every query abstains."""
    for name in VERDICT_ORDER:
        result = prediction.queries.get(name)
        if result is not None and not getattr(result, "abstained", False):
            return name, result.deepest_rank
    return None, None
