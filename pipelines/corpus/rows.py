"""Ray Data batch helpers every corpus stage shares: rows to a batch, a copy to extend, the three reject columns.

A clip row carries reject_reason / reject_stage / reject_detail ("" = fine) through every stage, so each item
reaches the writer, which puts it in corpus/ or quarantine/. A stage skips rows already rejected.
"""
from __future__ import annotations

import numpy as np

RejectColumns = tuple[np.ndarray, np.ndarray, np.ndarray]     # reason, stage, detail (object arrays)
MAX_DETAIL_CHARS = 2000


def tag_lists(values) -> np.ndarray:
    """The tags column as plain lists of tag dicts. Ray Data hands a list<struct> column to numpy batches as
    ndarrays of dicts, which it cannot turn back into Arrow (it pickles them, with a warning); lists it can."""
    out = np.empty(len(values), dtype=object)
    for i, tags in enumerate(values):
        out[i] = [] if tags is None else list(tags)
    return out


def rows_to_batch(rows: list[dict]) -> dict[str, np.ndarray]:
    """Rows (dicts with the same keys) -> a numpy batch as Ray Data hands a stage: arrays stacked, numbers as
    arrays, everything else (str, dict, list, bytes, None) in object arrays."""
    batch = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        if isinstance(values[0], np.ndarray):
            batch[key] = np.stack(values)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            batch[key] = np.asarray(values)
        else:
            column = np.empty(len(values), dtype=object)
            column[:] = values
            batch[key] = column
    return batch


def batch_copy(batch: dict) -> dict:
    """A shallow copy of a Ray Data batch for a stage to extend, its tags column (if any) as tag_lists."""
    out = dict(batch)
    if "tags" in out:
        out["tags"] = tag_lists(out["tags"])
    return out


def reject_columns(batch: dict, n: int) -> RejectColumns:
    """Writable copies of the batch's reject columns ("" where a batch has none yet)."""
    def column(name: str) -> np.ndarray:
        values = batch.get(name)
        return np.array(["" if v is None else str(v) for v in values] if values is not None else [""] * n,
                        dtype=object)
    return column("reject_reason"), column("reject_stage"), column("reject_detail")


def reject(columns: RejectColumns, rows, stage: str, reason: str, detail: str) -> None:
    reason_col, stage_col, detail_col = columns
    for i in rows:
        reason_col[i], stage_col[i], detail_col[i] = reason, stage, detail[:MAX_DETAIL_CHARS]


def with_rejects(batch: dict, columns: RejectColumns) -> dict:
    out = batch_copy(batch)
    out["reject_reason"], out["reject_stage"], out["reject_detail"] = columns
    return out
