"""Held-out validation during training: the learning curves of ``python -m train fit`` (``run.eval_every``).

Every ``run.eval_every`` optimizer steps the loop scores the model on the run's validation rows (carved from the
training split by ``data.val_fraction``, :func:`train.data.split.carve_validation`; never the test rows): DNA->text
and image->text top-1 at family and Global (the whole taxonomy string), clean inputs, against the taxonomy
strings of the training rows, as :func:`train.evaluate.evaluate_model` scores a bundle. It is meant to be cheap:
at most ``run.eval_specimens`` validation specimens (a seeded subset, the same at every step), no noise, no sweep.

The check leaves training exactly as it was: it runs in eval mode under ``no_grad`` and restores every RNG state
afterwards, so a run with validation ends with the weights of one without, and a resumed run stays exact.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pandas as pd
import torch

from hirviz.model import HirvizModel
from train.data import ImageStore
from train.embed import frame_candidates
from train.evaluate import evaluate_model
from train.rng import rng_state, set_rng_state

VALIDATION_QUERIES = ("dna", "image")
VALIDATION_LEVELS = ("family", "global")
PREFIX = "val_"


class Validator:
    """Scores a model on a fixed validation sample; ``record(model, step)`` is one ``metrics.jsonl`` line.

    ``train_frame``: the training rows (their distinct taxonomy strings are the candidates, as in an exported
    bundle); ``val_frame``: the validation rows, of which at most ``max_specimens`` (seeded by ``seed``) are scored.
    """

    def __init__(self, train_frame: pd.DataFrame, val_frame: pd.DataFrame, images: ImageStore | None,
                 max_specimens: int = 500, seed: int = 0, device: str | torch.device = "cpu") -> None:
        if len(val_frame) == 0:
            raise ValueError("there are no validation rows to score: set data.val_fraction > 0")
        if len(val_frame) > max_specimens:
            val_frame = val_frame.sample(n=max_specimens, random_state=seed).sort_index()
        self.val_frame = val_frame.reset_index(drop=True)
        self.candidate_frame = train_frame.drop_duplicates("taxonomy").reset_index(drop=True)
        self.images, self.device = images, torch.device(device)

    def scores(self, model: HirvizModel) -> dict[str, dict[str, float | None]]:
        """``{query: {level: top-1 %}}`` of ``model`` on the validation sample (clean inputs)."""
        candidates = frame_candidates(model, self.candidate_frame, device=self.device)
        results = evaluate_model(model, self.val_frame, candidates, self.images, ("clean",),
                                 queries=[q for q in VALIDATION_QUERIES], device=self.device)
        return {query: {level: scores[level]["top1"] for level in VALIDATION_LEVELS}
                for query, scores in results["clean"].items() if query in VALIDATION_QUERIES}

    def record(self, model: HirvizModel, step: int, epoch: int) -> dict[str, Any]:
        """The validation line for ``metrics.jsonl``: ``{"step", "epoch", "val_<query>_<level>": top-1 %, ...}``.

        The model is put back in training mode and every RNG (python, numpy, torch) where it was.
        """
        was_training, saved = model.training, rng_state()
        started = time.perf_counter()
        try:
            with torch.no_grad():
                scores = self.scores(model)
        finally:
            set_rng_state(saved)
            model.train(was_training)
        record: dict[str, Any] = {"step": step, "epoch": epoch}
        for query, levels in scores.items():
            for level, value in levels.items():
                record[f"{PREFIX}{query}_{level}"] = value
        record[f"{PREFIX}specimens"] = int(len(self.val_frame))
        record[f"{PREFIX}seconds"] = round(time.perf_counter() - started, 2)
        return record


def validation_curve(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of one validation metric (``"val_dna_global"``...) from a run's ``metrics.jsonl`` records.

    A resumed run may have logged a step twice (once before the kill, once after): the last record of a step wins.
    """
    by_step = {int(r["step"]): r[key] for r in records if r.get(key) is not None}
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps], dtype=float)
