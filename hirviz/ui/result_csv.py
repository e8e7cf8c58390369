"""The Identify tab's whole answer as one CSV file: every model's queries, ranks and top names with their scores,
whether each query abstained and why, and the COI bundle's reconciled answer per rank.

The columns are :data:`CSV_COLUMNS`: ``model``, then :data:`hirviz.prediction.ROW_COLUMNS` (as
:meth:`~hirviz.prediction.Prediction.to_rows` writes them), then ``abstained`` and ``reason``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from hirviz.prediction import ROW_COLUMNS, Prediction
from hirviz.taxonomy import LEVELS
from hirviz.ui.coi_view import CoiView
from hirviz.ui.render import plain_reason

__all__ = ["CSV_COLUMNS", "COI_QUERY", "result_rows", "write_csv"]

CSV_COLUMNS: tuple[str, ...] = ("model", *ROW_COLUMNS, "abstained", "reason")
COI_QUERY = "alignment + model"  # the query column of the COI bundle's reconciled answers in the CSV


def result_rows(predictions: Mapping[str, Prediction], coi: CoiView | None = None, coi_name: str | None = None,
                file_name: str = "") -> list[dict[str, Any]]:
    """The whole identification as rows (columns :data:`CSV_COLUMNS`): every model's queries x ranks x top
    names (:meth:`Prediction.to_rows`) with whether the query abstained and why, then the COI bundle's answer
    per rank (query :data:`COI_QUERY`; ``abstained`` where the rank was left open)."""
    rows = []
    for name, prediction in predictions.items():
        for row in prediction.to_rows(file_name=file_name):
            result = prediction.queries[row["query"]]
            rows.append({"model": name, **row, "abstained": bool(result.abstained),
                         "reason": plain_reason(result.reason) if result.abstained else ""})
    if coi is not None and coi.result is not None:
        result, lineage = coi.result, {}
        for level in LEVELS:
            answer = result.answers[level]
            lineage[level] = answer.name
            verdict = result.verdicts.get(level)
            rows.append({"model": coi_name or "", "file_name": file_name, "barcode_id": result.to_row()["id"],
                         "query": COI_QUERY, "rank": level, **{lvl: lineage.get(lvl, "") or "" for lvl in LEVELS},
                         "score": answer.score, "abstained": not answer.name,
                         "reason": "" if answer.name else (verdict.note if verdict is not None and verdict.note
                                                           else "no close reference and no confident model score")})
    return rows


def write_csv(rows: list[dict[str, Any]], columns: Sequence[str] = CSV_COLUMNS,
              file_name: str = "identification.csv") -> str:
    """The rows as a CSV file (``columns``, :data:`CSV_COLUMNS` by default) in a fresh temporary folder; returns
    its path."""
    out = Path(tempfile.mkdtemp(prefix="hirviz-identify-")) / file_name
    pd.DataFrame(rows, columns=list(columns)).to_csv(out, index=False)
    return str(out)
