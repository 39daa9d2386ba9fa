"""The fused plan's actor: one track at a time through the front end and every clip stage, rows to the writers.

On a CPU-only run a Ray Data operator per stage costs more than it buys: every hop between stages moves the clips
through the object store and every stage's actors load their model and wait for the others. A pool of `TrackWorker`
actors (1 CPU each) instead does what one process per core would do: front end, then the clip stages in order on
batches of `batch_size`, then the rows of every `group_rows` clips to the track's writer (benchmarks/corpus_scale.py
measures both plans). The stages are the very same callables the staged plan runs as operators.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from pipelines.corpus.frontend import front_end
from pipelines.corpus.rows import rows_to_batch
from pipelines.corpus.writer import route_to_writers

Step = tuple[str, Callable, dict[str, Any]]     # (stage name, callable class or function, its kwargs)


def ready_steps(steps: list[Step]) -> list[tuple[str, Callable]]:
    """(stage, callable on a batch) for each step: a class constructed with its kwargs (the model loads here),
    a function bound to its kwargs."""
    return [(name, fn(**kwargs) if isinstance(fn, type) else functools.partial(fn, **kwargs))
            for name, fn, kwargs in steps]


class TrackWorker:
    """Tracks in (a batch of source rows), summary rows out (one per item), after each track's rows are with its
    writer. The steps are made ready once, in the actor (a model load per actor)."""

    def __init__(self, steps: list[Step], *, front_end_kwargs: dict[str, Any], writers: list, valid_fraction: float,
                 batch_size: int, group_rows: int):
        self.steps = [stage for _, stage in ready_steps(steps)]
        self.front_end_kwargs, self.writers, self.valid_fraction = front_end_kwargs, writers, valid_fraction
        self.batch_size, self.group_rows = batch_size, max(batch_size, group_rows)

    def __call__(self, tracks: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(tracks["track_id"])):
            rows = front_end(_source(tracks, i), **self.front_end_kwargs)
            for start in range(0, len(rows), self.group_rows):
                group = rows[start:start + self.group_rows]
                done = [self.clip_stages(rows_to_batch(group[b:b + self.batch_size]))
                        for b in range(0, len(group), self.batch_size)]
                yield route_to_writers(_concat(done), self.writers, self.valid_fraction)

    def clip_stages(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for step in self.steps:
            batch = step(batch)
        return batch


def _source(tracks: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    """Row i of a Ray Data batch of source rows as the dict front_end takes (skip_ids a list)."""
    source = {key: column[i] for key, column in tracks.items()}
    skip = source.get("skip_ids")
    source["skip_ids"] = [] if skip is None else list(skip)
    return source


def _concat(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Batches with the same columns as one batch (object columns stay object arrays)."""
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
