"""The app's barcode parts: the Batch barcodes tab (a multi-FASTA in, a TSV of answers out) and the real-barcode
examples of the Identify tab. The work is done by :mod:`hirviz.ui.coi_view`; this module lays out and wires."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import gradio as gr
import numpy as np

from hirviz.coi import ROW_COLUMNS
from hirviz.coi_refs import RANK_THRESHOLDS
from hirviz.ui.coi_view import MAX_BATCH_BYTES, MAX_BATCH_RECORDS, batch_identify
from hirviz.ui.engine import Engine

__all__ = ["BatchTab", "batch_tab", "wire_batch", "real_examples", "BATCH_API_NAME"]

BATCH_API_NAME = "identify_batch"
FASTA_TYPES = [".fasta", ".fa", ".fas", ".fna", ".fsa", ".txt"]


@dataclass
class BatchTab:
    """The Batch barcodes tab's components."""

    upload: gr.File
    run_button: gr.Button
    status: gr.Markdown
    download: gr.File
    table: gr.Dataframe


def batch_tab(engine: Engine) -> BatchTab:
    """Lay out the Batch barcodes tab (inside ``gr.Tabs``)."""
    with gr.Tab("Batch barcodes", id="batch"):
        if engine.coi_name is None:
            gr.Markdown("No COI-barcode bundle is loaded, so batches cannot be identified here.")
        else:
            thresholds = ", ".join(f"{level} {t[0]:g} %" for level, t in RANK_THRESHOLDS.items())
            gr.Markdown(
                f"Upload a FASTA file of COI barcodes (one record per specimen; up to {MAX_BATCH_RECORDS} records, "
                f"{MAX_BATCH_BYTES / 1e6:g} MB). Each is identified as on the Identify tab by **{engine.coi_name}**, "
                "the real COI model: alignment to its reference barcodes decides where a reference is close "
                f"enough ({thresholds}), its DNA model below that. The answer is a TSV, one row per record, "
                f"with the columns `{'`, `'.join(ROW_COLUMNS)}` (the same as `python -m hirviz identify`).")
        with gr.Row(equal_height=False):
            with gr.Column(scale=2):
                upload = gr.File(label="FASTA file of barcodes", file_types=FASTA_TYPES, type="filepath",
                                 elem_id="hz-batch-file")
                run_button = gr.Button("Identify all", variant="primary", elem_id="hz-batch-run",
                                       interactive=engine.coi_name is not None)
            with gr.Column(scale=3):
                status = gr.Markdown("", elem_id="hz-batch-status")
                download = gr.File(label="Answers (TSV)", interactive=False, elem_id="hz-batch-download")
        table = gr.Dataframe(label="Answers", interactive=False, wrap=True, max_height=480, elem_id="hz-batch-table")
    return BatchTab(upload, run_button, status, download, table)


def wire_batch(engine: Engine, tab: BatchTab, guard: Callable[[int, Callable[..., tuple]], Callable[..., tuple]]
               ) -> None:
    """Wire the batch button (endpoint :data:`BATCH_API_NAME`); ``guard`` wraps callbacks as the layout does."""

    def run_batch(fasta_file, progress=gr.Progress()):  # noqa: B008 (Gradio finds the progress bar by its default)
        """Identify every barcode of a FASTA file with the real COI bundle; returns a TSV of answers."""
        status, path, frame = batch_identify(engine, fasta_file,
                                             lambda done, total: progress((done, total), desc="identifying"))
        if path is None:
            gr.Warning(status.split(" ", 1)[1])
        return status, path, frame

    tab.run_button.click(guard(3, run_batch), [tab.upload], [tab.status, tab.download, tab.table],
                         api_name=BATCH_API_NAME, api_description="Identify every COI barcode of a FASTA file.",
                         concurrency_limit=1, concurrency_id="batch")


def real_examples(engine: Engine, count: int = 3) -> tuple[list[str], list[str]]:
    """A few barcodes of the COI bundle's own reference bank (identified to species, different orders): their
    sequences as FASTA text and their labels. Empty without a COI bundle."""
    if engine.coi_name is None:
        return [], []
    reference = engine.bundles[engine.coi_name].reference
    ranks, barcodes = reference.ranks, reference.barcodes
    rows = np.flatnonzero((ranks[:, 3] != "") & (np.char.str_len(barcodes.astype(str)) >= 600))
    picked: list[int] = []
    for row in rows:  # the first well-identified record of each order, in bank order (deterministic)
        if ranks[row, 0] not in {ranks[p, 0] for p in picked}:
            picked.append(int(row))
        if len(picked) == count:
            break
    texts = [f">{reference.ids[p]}\n{barcodes[p]}" for p in picked]
    labels = [f"{ranks[p, 3]} ({ranks[p, 0]}, real)" for p in picked]
    return texts, labels
