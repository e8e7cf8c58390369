"""Evaluation: the papers' taxonomic-classification tables, a noise sweep and CLIBD's retrieval protocol.

``python -m train eval --bundle DIR --metadata TSV [--images H5] [--split RUN_DIR] --out results.json``

The package: :mod:`~train.evaluate.metrics` (the scores), :mod:`~train.evaluate.embedding` (query embeddings and
retrieval keys), :mod:`~train.evaluate.orchestration` (conditions, sweep, :func:`evaluate_bundle`),
:mod:`~train.evaluate.tables` (markdown) and :mod:`~train.evaluate.cli`; the rows of a run's split come from
:func:`train.rundir.select_rows`. The public names are importable from ``train.evaluate`` itself.

**Classification** (METHOD.md section 8). Candidates are taxonomy strings with their text embeddings: the
bundle's (the distinct strings of its training set; the default) or the evaluated dataset's own distinct strings
encoded by the bundle's text tower (``--candidates dataset``, as the HiR release does with its test CSV). A query
embedding (``image``, ``dna``, ``avg`` = normalised mean of the two, ``fused`` = the gated fusion) ranks the
candidates by cosine similarity. At level l (order, family, genus, species), top-k accuracy is the share of the
specimens labelled at level l whose level-l name is the level-l name of one of the top-k candidates; ``global``
is the share of specimens (with any known rank) whose whole taxonomy string is one of the top-k candidates.
A query is scored on the specimens that have its modalities (``avg``/``fused`` need both). Conditions:
``clean``, ``noisy_dna`` (:class:`hirviz.degrade.DnaNoise` at the paper's rates), ``noisy_image`` (a k x k box
blur; the paper's kernel size was lost, the default here is :data:`DEFAULT_BLUR_KERNEL`) and ``noisy_both``.

With ``--per-level independent`` (:mod:`~train.evaluate.perlevel`) each level instead ranks its own distinct
prefixes of the candidate strings; ``_meta.per_level`` says which reading produced the per-level numbers.

Results JSON (accuracies in percent; ``null`` where no evaluated specimen is labelled at a level)::

    {"<condition>": {"<query>": {"<level>": {"top1": float, "top5": float},
                                 "hierarchy": {"mistake_severity": {...}, "agreement": {...}, "drift": {...}}}},
     "_meta": {...}, "sweep": [...], "retrieval": {...}}

``hierarchy`` (beside the five levels of every query) holds the hierarchy-consistency numbers of
:mod:`~train.evaluate.consistency`: mistake severity and hierarchical distance@1/@5 of the ranked strings,
tree/embedding agreement over a fixed sample of specimen pairs, and the drift of the nearest reference under the
condition's noise (the baseline without noise in ``clean``).

Queries the data cannot support are left out (a barcode-only file gives only ``dna``), and so is ``fused`` for
a model trained without the fusion loss (its gate was never trained); a condition that degrades no modality
the data has (``noisy_image`` on barcodes alone) would repeat another one and is left out too.

**Sweep** (``--sweep``): top-1 accuracy against noise strength, ``DnaNoise().scaled(f)`` for
:data:`SWEEP_DNA_SCALES` and box blur for :data:`SWEEP_BLUR_KERNELS`, the other modality clean.

**Retrieval** (``--retrieval``, CLIBD's protocol, REFERENCE_CODE.md 7.2): each query searches the bundle's
reference bank of the same space (FAISS inner product on unit vectors = cosine); the top-k keys' labels at a
level are the predictions (k = 1, 3, 5). Micro accuracy is the share of queries whose true label is among them,
macro the mean over true classes of the per-class share. Queries are split into *seen* (species known and
present among the keys of that space) and *unseen* (everything else: species absent from the keys, or the
specimen not identified to species; the latter count only at the levels they are labelled at). A key with the
query's own id is skipped, so a reference bank that holds the evaluated specimens does not answer with itself.

Embedding dominates the cost. Each modality is embedded once per degradation and the averaged and fused
queries are composed from them, so the four conditions cost two image passes and two DNA passes; scoring is
one matrix product per query and condition (in row chunks) with ``argpartition`` for the top k.
"""

from __future__ import annotations

from hirviz.queries import QUERIES
from train.evaluate import metrics
from train.evaluate.cli import add_arguments, run
from train.evaluate.consistency import AGREEMENT_PAIRS, hierarchy_scores
from train.evaluate.embedding import KeyBank, QueryEmbedder
from train.evaluate.metrics import (
    EVAL_LEVELS,
    RETRIEVAL_KS,
    SEEN_DEFINITION,
    TOP_KS,
    classification_scores,
    hits_at_k,
    label_codes,
    ranked_scores,
    retrieval_scores,
    top_k,
)
from train.evaluate.orchestration import (
    CONDITIONS,
    DEFAULT_BLUR_KERNEL,
    SWEEP_BLUR_KERNELS,
    SWEEP_DNA_SCALES,
    evaluate_bundle,
    evaluate_model,
    noise_sweep,
)
from train.evaluate.perlevel import PER_LEVEL_READINGS, LevelCandidates, independent_level_scores
from train.evaluate.tables import format_hierarchy, format_table1, format_table2, format_tables, score_cell
from train.rundir import SUBSETS, select_rows

__all__ = [
    "AGREEMENT_PAIRS",
    "CONDITIONS",
    "DEFAULT_BLUR_KERNEL",
    "EVAL_LEVELS",
    "PER_LEVEL_READINGS",
    "QUERIES",
    "RETRIEVAL_KS",
    "SEEN_DEFINITION",
    "SUBSETS",
    "SWEEP_BLUR_KERNELS",
    "SWEEP_DNA_SCALES",
    "TOP_KS",
    "KeyBank",
    "LevelCandidates",
    "QueryEmbedder",
    "add_arguments",
    "classification_scores",
    "evaluate_bundle",
    "evaluate_model",
    "format_hierarchy",
    "format_table1",
    "format_table2",
    "format_tables",
    "hierarchy_scores",
    "hits_at_k",
    "independent_level_scores",
    "label_codes",
    "metrics",
    "noise_sweep",
    "ranked_scores",
    "retrieval_scores",
    "run",
    "score_cell",
    "select_rows",
    "top_k",
]
