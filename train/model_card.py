"""The model card (``README.md``) of a bundle written by :mod:`train.export`: data, objective and its variants,
recipe, geometry, the reference bank, provenance, and the accuracy tables of an evaluation when given."""

from __future__ import annotations

from typing import Any

from hirviz.bundle import EVAL_END, EVAL_START, Reference
from hirviz.poincare import POINCARE_LAYOUT
from hirviz.taxonomy import LEVELS, Taxonomy
from train.config import TrainConfig
from train.losses import LossConfig

__all__ = ["model_card"]

_OBJECTIVES = {
    "clibd": "CLIBD: contrastive alignment of image, DNA and taxonomy text (multi-positive InfoNCE)",
    "clibd-hir": "CLIBD-HiR: the CLIBD objective plus the hierarchical (HiR) contrastive loss",
    "clibd-hir-fuse": "CLIBD-HiR-Fuse: CLIBD-HiR plus the gated image-DNA fusion loss",
}


def model_card(name: str, cfg: TrainConfig, provenance: dict[str, Any], taxonomy: Taxonomy, n_candidates: int,
               reference: Reference) -> str:
    """The bundle's README (its evaluation section is filled in by :func:`hirviz.bundle.save_bundle`)."""
    m, d, o, loss = cfg.model, cfg.data, cfg.optim, cfg.loss
    clip = m.clip_model + (f" (pretrained: {m.clip_pretrained})" if m.clip_pretrained else "")
    if m.clip_model.startswith("hf-hub:"):
        clip += " (pretrained: the repo's weights)"
    elif not m.clip_pretrained:
        clip += " (trained from random initialisation)"
    dna = (f"BERT over k-mer tokens ({m.dna_layers} layer{'s' * (m.dna_layers != 1)}, width {m.dna_hidden}, "
           "random initialisation)"
           if m.dna_encoder == "kmer-bert" else f"{m.dna_model}")
    tokenizer = m.dna_tokenizer if isinstance(m.dna_tokenizer, str) else m.dna_tokenizer.get("type", "custom")
    counts = ", ".join(f"{taxonomy.num_classes(level)} {level_plural}" for level, level_plural in
                       zip(LEVELS, ("orders", "families", "genera", "species")))
    spaces = ", ".join(reference.embeddings) or "none"
    layouts = ", ".join(reference.layouts) or "none"
    steps = provenance.get("steps")
    lines = [
        "---",
        "library_name: hirviz",
        "tags: [biology, insects, biodiversity, dna-barcoding, clip, multimodal]",
        "---",
        "",
        f"# {name}",
        "",
        "A hierarchy-aware multimodal insect identification model: specimen photographs, DNA barcodes and "
        f"taxonomy text embedded in one {m.embed_dim}-dimensional space. Open it with "
        f"`hirviz.load_bundle(...)`.",
        "",
        "## Training data",
        "",
        f"- metadata: `{provenance.get('metadata')}`"
        + (f", images: `{provenance['images']}`" if provenance.get("images") else ", no images"),
        f"- {provenance.get('train_specimens')} training and {provenance.get('test_specimens')} held-out "
        f"specimens (closed-set split: test fraction {d.test_fraction}, seed {d.split_seed}"
        + (f", a seeded subset of {d.max_specimens}" if d.max_specimens else "") + ")",
        f"- training taxonomy: {counts}; {n_candidates} distinct taxonomy strings (the candidates)",
        "",
        "## Objective and recipe",
        "",
        f"- objective: {_OBJECTIVES.get(loss.objective, loss.objective)}" + _loss_weights(loss),
        *_geometry_lines(cfg, provenance.get("curvature")),
        f"- image and text towers: OpenCLIP {clip}" + ("; text tower frozen" if m.freeze_text else ""),
        f"- DNA encoder: {dna}; tokenizer: {tokenizer}",
        f"- optimisation: AdamW + OneCycle, max learning rate {o.max_lr}, {o.epochs} epochs, batch size "
        f"{d.batch_size} per process" + (f", {steps} optimizer steps" if steps is not None else ""),
        "",
        "## Reference bank",
        "",
        f"{len(reference)} training specimens (a seeded subsample covering every order and family) embedded in "
        f"the spaces: {spaces}; 2-D UMAP layouts: {layouts}.",
        *([] if m.geometry == "euclidean" else [
            "",
            "Lorentz geometry: the embeddings are space parts on the hyperboloid. Neighbours are searched by "
            "geodesic distance: a FAISS inner-product index over augmented vectors ([x, x_t] for queries, "
            "[y, -y_t] for keys, whose inner product is the Lorentzian one) gives candidates, re-ranked by the exact "
            "float64 distance; a bank too large for the flat index takes an approximate inner-product index (IVF, "
            "HNSW) over the same vectors in the first stage. The UMAP layouts are of the tangent-space points "
            "(log map at the origin) with the cosine metric; there is no fused space (no fusion head). Poincare "
            f"disk maps of the spaces {', '.join(reference.poincare) or 'none'}: {POINCARE_LAYOUT}."]),
        "",
        "## Evaluation",
        "",
        # save_bundle fills in the section between the markers (the tables of eval.json, when given).
        f"{EVAL_START}\n{EVAL_END}",
        "",
        "## Provenance",
        "",
        f"Run `{provenance.get('run')}`, exported {provenance.get('date')}"
        + (f" from commit `{provenance['git_commit']}`" if provenance.get("git_commit") else "") + ".",
        "",
    ]
    return "\n".join(lines)


def _geometry_lines(cfg: TrainConfig, trained: float | None = None) -> list[str]:
    """The model card's line on the geometry (none for the Euclidean default); ``trained``: the final curvature."""
    if cfg.model.geometry == "euclidean":
        return []
    loss = cfg.loss
    learnt = f" (learnt: {trained:.4g} after training)" if cfg.model.learn_curvature and trained else " (learnt)"
    return [f"- geometry: Lorentz (hyperbolic, METHOD.md section 9), curvature -c with initial c = {cfg.model.curvature}"
            f"{learnt if cfg.model.learn_curvature else ' (fixed)'}; entailment {loss.entailment} with weight "
            f"{loss.entail_weight}; pair losses reduced by {loss.hyperbolic_reduction}; candidates ranked by "
            "geodesic distance, scores softmax(-d * scale), the averaged query is the tangent-space mean"]


def _loss_weights(loss: LossConfig) -> str:
    """The weights and variants of the objective's HiR and fusion terms, e.g. `` (HiR weight 0.01, ...)``."""
    parts = []
    if loss.uses_hir:
        # hmce lifts level means and has no per-anchor maximum to scope (LossConfig refuses anchor with it)
        scope = "" if loss.hir_mode == "hmce" else f", max over {loss.hir_max_scope}"
        parts.append(f"HiR weight {loss.hir_weight}, {loss.hir_mode} mode{scope}, on {loss.hir_modality}")
    if loss.uses_fusion:
        parts.append(f"fusion weight {loss.fusion_weight}, {loss.fusion_direction} direction")
    return f" ({'; '.join(parts)})" if parts else ""
