"""Rejects that are failures of ours (a model, a worker, our code), not of the audio, and the rule that stops a run.

A clip quarantined as silent, too short or a duplicate says something about the input; a clip quarantined as
`llm_error` or `worker_crash` says something about us. A run whose caption model fails on every clip would
otherwise quarantine all of them and end "complete" with zero clips. So the driver watches the stream
(`FailureWatch`, fed with the writer stage's summary rows): once one (stage, reason) of ours has failed on at
least `MIN_FAILURES` items and on more than `MAX_FAILURE_SHARE` of the items that were not rejected for their
content, the run stops (what the writers hold is committed) and the job exits non-zero, naming the stage, the
reason and the first error. docs/operations.md "A run never lies".
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

# Every reason a stage of ours records when it, not the input, failed. Any other reason is about the content.
FAILURE_REASONS = frozenset({
    "error",              # front end: an unexpected exception
    "worker_crash",       # the process running a stage died (signal), after its retries
    "vae_error",          # the VAE raised
    "non_finite_latent",  # the VAE returned NaN/inf for finite audio
    "tagging_failed",     # descriptors or CLAP tagging raised
    "llm_error",          # the caption model raised
    "text_error",         # T5 / CLAP text encoding raised
})
MAX_FAILURE_SHARE = 0.5   # of the items not rejected for their content
MIN_FAILURES = 16         # a few failures in a small run are reported, not fatal


class RunFailed(RuntimeError):
    """The run stopped (or ended) in a state that must not pass for success; the message says why and what next."""


def is_failure(reason: str) -> bool:
    return reason in FAILURE_REASONS


def split_reasons(quarantined: dict[str, int]) -> tuple[dict[str, int], dict[str, int]]:
    """{reason: count} -> (content rejects, failures of ours)."""
    content = {r: n for r, n in quarantined.items() if not is_failure(r)}
    ours = {r: n for r, n in quarantined.items() if is_failure(r)}
    return content, ours


@dataclass
class FailureWatch:
    """Counts the run's items, content rejects and failures of ours by (stage, reason), with the first error."""
    max_share: float = MAX_FAILURE_SHARE
    min_failures: int = MIN_FAILURES

    def __post_init__(self):
        self.items = 0
        self.content_rejects = 0
        self.failures: Counter = Counter()
        self.first_error: dict[tuple[str, str], str] = {}

    def update(self, batch: dict[str, np.ndarray]) -> None:
        """One summary batch (reject_reason, reject_stage, reject_detail per item)."""
        reasons = batch["reject_reason"]
        self.items += len(reasons)
        for i, reason in enumerate(reasons):
            reason = str(reason)
            if not reason:
                continue
            if not is_failure(reason):
                self.content_rejects += 1
                continue
            key = (str(batch["reject_stage"][i]), reason)
            self.failures[key] += 1
            self.first_error.setdefault(key, str(batch["reject_detail"][i]))

    def tripped(self) -> RunFailed | None:
        """The error to stop with, if one (stage, reason) of ours is over the rule; else None."""
        given = max(1, self.items - self.content_rejects)
        for (stage, reason), count in self.failures.most_common():
            if count >= self.min_failures and count / given > self.max_share:
                return RunFailed(
                    f"stage {stage!r} failed with {reason!r} on {count} of {given} items that passed the content gates "
                    f"(more than {self.max_share:.0%} after at least {self.min_failures}); stopped early, what was done "
                    f"is stored. First error: {self.first_error[(stage, reason)] or '(no detail)'}")
        return None
