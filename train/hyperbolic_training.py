"""What the training loop adds for the Lorentz geometry (METHOD.md section 9), kept out of the loop itself.

* :class:`RankPrompts` -- SEL's per-rank prompts ("Order: X; Family: Y", ...) of the training taxonomy strings,
  added to each batch's model inputs: the batch's distinct prompts are embedded once each by the text tower
  (a frozen tower's features are computed once, like the loop's text cache) and indexed per specimen and rank.
* :func:`param_groups` -- the optimizer groups: the projector's alphas, curvature and logit scale without weight
  decay (MERU), unless ``optim.decay_hyperbolic_params`` (the authors' early code).
* :func:`geometry_record` -- the curvature, alphas and logit scale for ``metrics.jsonl``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hirviz.model import HirvizModel
from train.embed import embed_texts
from train.losses.hyperbolic import rank_prompts_from_ids

__all__ = ["RankPrompts", "geometry_record", "param_groups"]


class RankPrompts:
    """The per-rank prompts of a dataset's taxonomy strings, as model inputs (``rank_index`` with ``rank_tokens``
    or ``rank_features``; see :meth:`hirviz.model.HirvizModel.forward`).

    Args:
        model: the model being trained (its tokenizer; its text tower when ``frozen``).
        texts, text_ids, labels: the dataset's distinct taxonomy strings, each specimen's string id and its
            labels ``[N, 4]`` (a string determines its ranks, so the first specimen of each string is read).
        taxonomy: decodes the label ids into names.
        frozen: the text tower is frozen: embed every prompt once now and reuse the features.
    """

    def __init__(self, model: HirvizModel, texts: list[str], text_ids: np.ndarray, labels: np.ndarray,
                 taxonomy: Any, device: torch.device, frozen: bool = False) -> None:
        ids, first = np.unique(np.asarray(text_ids), return_index=True)
        table = np.full((len(texts), labels.shape[1]), -1, dtype=np.int64)
        prompts: dict[str, int] = {}
        for text_id, row in zip(ids, first):  # once per distinct taxonomy string, at set-up
            for rank, prompt in enumerate(rank_prompts_from_ids(labels[row], taxonomy)):
                if prompt is not None:
                    table[text_id, rank] = prompts.setdefault(prompt, len(prompts))
        self.prompts = list(prompts)
        if not self.prompts:
            raise ValueError("loss.entailment=sel needs specimens with a known order (the rank prompts come from the "
                             "labels); none has one: use another loss.entailment")
        self.table = torch.from_numpy(table).to(device)
        self.device = device
        self.features: torch.Tensor | None = None
        self.tokens: torch.Tensor | None = None
        if frozen:
            self.features = torch.from_numpy(embed_texts(model, self.prompts, device=device, features=True)).to(device)
        else:
            self.tokens = model.tokenize_text(self.prompts)

    def add(self, inputs: dict[str, torch.Tensor], text_ids: torch.Tensor) -> None:
        """Put ``rank_index`` ``[B, 4]`` and the batch's distinct prompts (tokens or features) into ``inputs``."""
        index = self.table[text_ids.to(self.device)]
        known = index >= 0
        used, inverse = torch.unique(index[known], return_inverse=True)
        local = torch.full_like(index, -1)
        local[known] = inverse
        inputs["rank_index"] = local
        if self.features is not None:
            inputs["rank_features"] = self.features[used]
        else:
            inputs["rank_tokens"] = self.tokens[used.cpu()].to(self.device)


def param_groups(model: HirvizModel, params: list[torch.nn.Parameter], decay_hyperbolic: bool = False
                 ) -> list[dict[str, Any]]:
    """AdamW groups: everything decays, except (Lorentz, unless ``decay_hyperbolic``) the projector's
    :meth:`~hirviz.lorentz.LorentzProjector.no_weight_decay_parameters`, which get ``weight_decay=0``."""
    if model.projector is None or decay_hyperbolic:
        return [{"params": params}]
    exempt = {id(p) for p in model.projector.no_weight_decay_parameters()}
    return [{"params": [p for p in params if id(p) not in exempt]},
            {"params": [p for p in params if id(p) in exempt], "weight_decay": 0.0}]


@torch.no_grad()
def geometry_record(model: HirvizModel) -> dict[str, float]:
    """``curvature``, ``logit_scale`` and ``alpha_<modality>`` of a Lorentz model (empty for a Euclidean one)."""
    projector = model.projector
    if projector is None:
        return {}
    record = {"curvature": float(projector.curvature()), "logit_scale": float(projector.logit_scale())}
    record.update({f"alpha_{m}": float(projector.alpha(m)) for m in projector.modalities})
    return record
