"""The failure watch: content rejects never stop a run; one (stage, reason) of ours failing on most of the rest does."""
from __future__ import annotations

import numpy as np

from pipelines.corpus.account import format_account
from pipelines.corpus.failures import FAILURE_REASONS, FailureWatch, split_reasons


def _batch(reasons: list[str], stage: str = "captions", detail: str = "RuntimeError: boom") -> dict:
    return {"reject_reason": np.array(reasons, object), "reject_stage": np.array([stage if r else "" for r in reasons], object),
            "reject_detail": np.array([detail if r else "" for r in reasons], object)}


def test_content_rejects_never_trip():
    watch = FailureWatch(min_failures=4)
    watch.update(_batch(["silent"] * 50 + ["too_short"] * 50, stage="quality"))
    assert watch.tripped() is None


def test_most_clips_failing_in_one_stage_trips_with_stage_reason_and_first_error():
    watch = FailureWatch(min_failures=4)
    watch.update(_batch(["silent"] * 10, stage="quality"))       # not counted against the stage
    watch.update(_batch(["llm_error"] * 3 + [""] * 2, detail="RuntimeError: CPU generator, CUDA probs"))
    assert watch.tripped() is None                               # under the minimum count
    watch.update(_batch(["llm_error"]))
    stop = watch.tripped()
    assert stop is not None
    assert "'captions'" in str(stop) and "'llm_error'" in str(stop) and "4 of 6" in str(stop)
    assert "CPU generator, CUDA probs" in str(stop)


def test_a_minority_of_failures_is_reported_not_fatal():
    watch = FailureWatch(min_failures=4)
    watch.update(_batch(["vae_error"] * 10 + [""] * 11, stage="vae"))
    assert watch.tripped() is None                               # 10 of 21 is under half


def test_the_account_splits_content_rejects_from_failures_of_ours():
    content, ours = split_reasons({"silent": 3, "worker_crash": 1, "duplicate": 2, "llm_error": 5})
    assert content == {"silent": 3, "duplicate": 2} and ours == {"worker_crash": 1, "llm_error": 5}
    assert {"worker_crash", "llm_error", "vae_error", "text_error", "error"} <= FAILURE_REASONS
    manifest = {"counts": {"inputs": 4, "tracks_ok": 1, "clips": 2, "hours": 0.01, "incomplete_tracks": 0,
                           "quarantined": {"silent": 3, "worker_crash": 1}},
                "splits": {"train": 2}, "caption_mix": {"original": 0, "synthetic": 2}, "wall_seconds": 1.0,
                "throughput": {"clips_per_second": 2.0, "audio_seconds_per_second": 20.0}}
    text = format_account(manifest)
    assert "rejected (content) 3  silent: 3" in text and "failed (ours)     1  worker_crash: 1" in text
