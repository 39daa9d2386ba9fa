"""The fused plan's actor: one track at a time through the front end and every clip stage, rows to the writers.

On a CPU-only run a Ray Data operator per stage costs more than it buys: every hop between stages moves the clips
through the object store and every stage's actors load their model and wait for the others. A pool of `TrackWorker`
actors (1 CPU each) instead does what one process per core would do: front end, then the clip stages in order on
batches of `batch_size`, then the rows of every `group_rows` clips to the track's writer (benchmarks/corpus_scale.py
measures both plans). The stages are the very same callables the staged plan runs as operators.

The stages run in the actor's crash domain (pipelines/corpus/crashguard.py): a child process that holds the models
and sends back each finished row group; the actor answers the child's dedup question and hands the rows to the
writers. A track that kills the child is redone (the rows already handed over are skipped) at most CRASH_RETRIES
times, then its remaining rows are quarantined `worker_crash`, naming the signal and the stage.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from pipelines.corpus import crashguard
from pipelines.corpus.frontend import claim_key, crash_row, process_track, settle
from pipelines.corpus.rows import rows_to_batch
from pipelines.corpus.writer import route_to_writers

Step = tuple[str, Callable, dict[str, Any]]     # (stage name, callable class or function, its kwargs)
IDENTITY = ("clip_id", "track_id", "source_uri", "clip_index", "track_clip_count")   # what a quarantine row needs


def ready_steps(steps: list[Step]) -> list[tuple[str, Callable]]:
    """(stage, callable on a batch) for each step: a class constructed with its kwargs (the model loads here),
    a function bound to its kwargs."""
    return [(name, fn(**kwargs) if isinstance(fn, type) else functools.partial(fn, **kwargs))
            for name, fn, kwargs in steps]


class TrackWorker:
    """Tracks in (a batch of source rows), summary rows out (one per item), after each track's rows are with its
    writer. The steps are made ready once, in the actor's crash domain (a model load per actor)."""

    def __init__(self, steps: list[Step], *, front_end_kwargs: dict[str, Any], writers: list, valid_fraction: float,
                 batch_size: int, group_rows: int):
        gates = dict(front_end_kwargs)
        self.registry = gates.pop("registry")
        self.plan = (steps, gates, batch_size, max(batch_size, group_rows))
        self.writers, self.valid_fraction = writers, valid_fraction
        self.domain = crashguard.CrashDomain()
        _, crash = crashguard.run_with_retries(self.domain, crashguard.prepare, steps)     # models load now
        if crash is not None:
            raise RuntimeError(f"the track worker's stages could not start: {crash.detail()}") from crash

    def __call__(self, tracks: dict[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        for i in range(len(tracks["track_id"])):
            yield from self.track(_source(tracks, i))

    def track(self, source: dict[str, Any]) -> Iterator[dict[str, np.ndarray]]:
        """One track's summaries. Each attempt skips the rows already handed over; after the last crash the rows
        not handed over (known from an attempt that got past the front end) are quarantined, or the track as one
        row when none did."""
        if source.get("crashed"):                       # it killed the dedup pre-pass: not decoded again
            yield self.hand_over(rows_to_batch([crash_row(source, "dedup", source["crashed"])]))
            return
        handed: set[str] = set()
        known: list[dict] = []
        crash = None
        for _ in range(1 + crashguard.CRASH_RETRIES):
            skip = sorted(handed | set(source["skip_ids"]))
            try:
                for kind, payload in self.domain.stream(fused_track, self.plan, source, skip, answer=self.answer):
                    if kind == "rows":
                        known = known or payload
                    else:
                        yield self.hand_over(payload)
                        handed.update(str(c) for c in payload["clip_id"])
                return
            except crashguard.WorkerCrash as err:
                crash = err
        detail = crash.detail()
        left = [dict(r, reject_stage=crash.stage, reject_reason=crashguard.WORKER_CRASH, reject_detail=detail)
                for r in known if r["clip_id"] not in handed]
        if not known:
            left = [{k: v for k, v in crash_row(source, crash.stage, detail).items()
                     if k in IDENTITY or k.startswith("reject_")}]
        if left:
            yield self.hand_over(rows_to_batch(left))

    def hand_over(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        crashguard.maybe_crash("writer", batch["source_uri"])      # the fault hook's one stage in this process
        return route_to_writers(batch, self.writers, self.valid_fraction)

    def answer(self, kind: str, payload: tuple[str, str, str]) -> str | None:
        """The child's question: is this track the kept copy of its content hash (the registry actor)?"""
        import ray

        return ray.get(self.registry.claim.remote(*payload))


def fused_track(ctx: crashguard.Context, plan: tuple, source: dict[str, Any], skip: list[str]) -> None:
    """Crash-domain job: one track through the front end and every clip stage. Sends the identity of its rows
    ("rows"), then each finished row group ("group"); only what the writers need crosses back."""
    steps, gates, batch_size, group_rows = plan
    ctx.stage("frontend", [source["source_uri"]])
    rows = process_track(source, **gates, skip_clip_ids=frozenset(skip))
    key = claim_key(rows)
    rows = settle(rows, source, ctx.ask("claim", (key, source["track_id"], source["source_uri"])) if key else None)
    ctx.send("rows", [{k: r[k] for k in IDENTITY} for r in rows])
    ready = [(spec[0], ctx.ready(spec)) for spec in steps]
    for start in range(0, len(rows), group_rows):
        group = rows[start:start + group_rows]
        done = []
        for b in range(0, len(group), batch_size):
            batch = rows_to_batch(group[b:b + batch_size])
            for name, step in ready:
                ctx.stage(name, crashguard.live_uris(batch))
                batch = step(batch)
            done.append(batch)
        ctx.send("group", _concat(done))


def _source(tracks: dict[str, np.ndarray], i: int) -> dict[str, Any]:
    """Row i of a Ray Data batch of source rows as the dict front_end takes (skip_ids a list)."""
    source = {key: column[i] for key, column in tracks.items()}
    skip = source.get("skip_ids")
    source["skip_ids"] = [] if skip is None else list(skip)
    return source


def _concat(batches: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Batches with the same columns as one batch (object columns stay object arrays)."""
    return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
