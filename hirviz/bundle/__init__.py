"""Model bundles: everything the app needs to use a trained model, in one directory or hub repo.

A bundle holds (format version :data:`FORMAT_VERSION`):

==========================  =====================================================================================
``config.json``             ``format_version``, ``name``, ``objective``, ``geometry`` (``{"name": "euclidean" |
                            "lorentz", "curvature": c}``; absent in older bundles: Euclidean), ``model`` (:class:`~hirviz.model.ModelConfig`
                            as a dict; a BPE DNA tokenizer points at the copy inside the bundle), ``training`` (the
                            run's config), ``provenance`` and ``fusion_trained`` (whether training taught the
                            fusion gate; without it, no ``fused`` query is offered)
``model.safetensors``       the :class:`~hirviz.model.HirvizModel` state dict
``taxonomy.json``           :meth:`Taxonomy.to_dict` plus ``candidates`` (the distinct taxonomy strings of the
                            training set) and ``candidate_ranks`` ([order, family, genus, species], null = unknown)
``text_embeddings.npy``     float32 ``[C, d]`` embeddings of the candidates, row-aligned (L2-normalised, or
                            Lorentz space parts)
``reference.h5``            the reference specimens: ``ids``, ``ranks``, ``labels``, ``barcodes``,
                            ``embeddings/<space>``, ``has_image``, ``has_dna``, ``umap/<space>`` (float32 [N, 2]
                            for every row; past 50k rows fitted on a sample, :mod:`hirviz.layout_scale`)
``index_<space>.faiss``     (large banks only) the space's saved FAISS index, listed with its parameters and size
                            in ``config.json`` under ``reference_index`` (:func:`~hirviz.bundle.save.save_reference`)
``eval.json`` (optional)    the evaluation results (``python -m train eval``)
``abstention.json`` (opt.)  the abstention policy calibrated on held-out specimens (:mod:`hirviz.abstain`; own
                            ``version``); without it queries abstain on the hard input limits only
``README.md``               the model card
==========================  =====================================================================================

:func:`load_bundle` opens a local directory or a Hugging Face hub repo id. Opening reads only the small files
and checks that they agree; the model is built on the first use of :attr:`Bundle.model` and the reference bank
is read on the first use of :attr:`Bundle.reference`. Nothing here imports the trainer.

Modules: :mod:`~hirviz.bundle.files` (format, shared checks), :mod:`~hirviz.bundle.reference`,
:mod:`~hirviz.bundle.opened` (:class:`Bundle`, :func:`load_bundle`), :mod:`~hirviz.bundle.save` and
:mod:`~hirviz.bundle.card` (the model card's evaluation section).
"""

from __future__ import annotations

from hirviz.bundle.card import EVAL_END, EVAL_START, eval_markdown, with_eval_section
from hirviz.bundle.files import FORMAT_VERSION, LAYOUT_SPACES, SPACES, BundleError
from hirviz.bundle.opened import Bundle, load_bundle
from hirviz.bundle.reference import Reference
from hirviz.bundle.save import save_bundle

__all__ = [
    "FORMAT_VERSION",
    "SPACES",
    "LAYOUT_SPACES",
    "EVAL_START",
    "EVAL_END",
    "Bundle",
    "BundleError",
    "Reference",
    "load_bundle",
    "save_bundle",
    "eval_markdown",
    "with_eval_section",
]
