"""The crash domain (pipelines/corpus/crashguard.py) without Ray: a real child process, real signals."""
from __future__ import annotations

import os

import numpy as np
import pytest

from pipelines.corpus import crashguard
from pipelines.corpus.crashguard import CRASH_RETRIES, WORKER_CRASH, CrashDomain, WorkerCrash


def work(ctx, n: int) -> tuple[int, int]:
    ctx.stage("work", ["/music/fine.flac"])
    return os.getpid(), n * 2


def streamed(ctx, n: int) -> str:
    for i in range(n):
        ctx.send("item", i)
    return ctx.ask("question", n)


def segfault(ctx, stage: str) -> None:
    ctx.stage(stage, ["/music/bad.flac"])
    crashguard.faulthandler._sigsegv()


def fails(ctx) -> None:
    raise ValueError("a plain Python error")


def double(batch: dict, factor: int = 2) -> dict:
    """A batch stage that adds its column to the dict it is given (as add_log_mel does)."""
    batch["doubled"] = np.asarray(batch["x"]) * factor
    return batch


@pytest.fixture
def domain():
    d = CrashDomain()
    yield d
    d.stop()


def test_child_survives_normal_work_and_streams(domain):
    pid, value = domain.run(work, 21)
    assert value == 42 and pid != os.getpid()
    assert domain.run(work, 1)[0] == pid                      # the same persistent child
    items = []
    stream = domain.stream(streamed, 3, answer=lambda kind, n: f"{kind} {n}")
    while True:
        try:
            items.append(next(stream))
        except StopIteration as done:
            assert done.value == "question 3"
            break
    assert items == [("item", 0), ("item", 1), ("item", 2)]


def test_segfault_names_signal_and_stage_then_a_fresh_child(domain):
    pid, _ = domain.run(work, 1)
    with pytest.raises(WorkerCrash) as crash:
        domain.run(segfault, "vae")
    assert crash.value.signal == "SIGSEGV" and crash.value.stage == "vae" and crash.value.exitcode == -11
    assert "SIGSEGV" in crash.value.detail() and "stage vae" in crash.value.detail()
    assert domain.run(work, 2)[1] == 4 and domain.run(work, 2)[0] != pid       # restarted


def test_python_errors_are_raised_as_themselves(domain):
    with pytest.raises(ValueError, match="a plain Python error"):
        domain.run(fails)
    assert domain.run(work, 3)[1] == 6                        # the child lives on


def test_retries_are_bounded(domain):
    starts = []
    real_start = domain._start

    def counting_start():
        if domain.proc is None or domain.proc.poll() is not None:
            starts.append(1)
        real_start()

    domain._start = counting_start
    value, crash = crashguard.run_with_retries(domain, segfault, "frontend")
    assert value is None and crash.signal == "SIGSEGV" and crash.stage == "frontend"
    assert len(starts) == 1 + CRASH_RETRIES                   # every attempt on a fresh child, then no more


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGABRT"])
def test_fault_hook_dies_by_the_named_signal(domain, monkeypatch, sig):
    monkeypatch.setenv(crashguard.INJECT_ENV, f"work:fine.fl:{sig}")
    with pytest.raises(WorkerCrash) as crash:
        domain.run(work, 1)
    assert crash.value.signal == sig and crash.value.stage == "work"
    monkeypatch.setenv(crashguard.INJECT_ENV, "work:other.flac")
    domain.stop()
    assert domain.run(work, 1)[1] == 2                        # another file: unaffected


def test_inject_spec_parsing():
    assert crashguard.inject_spec({}) is None
    assert crashguard.inject_spec({crashguard.INJECT_ENV: "vae:a b.flac"}) == ("vae", "a b.flac", 11)
    assert crashguard.inject_spec({crashguard.INJECT_ENV: "dedup:x:y.wav:SIGKILL"}) == ("dedup", "x:y.wav", 9)
    with pytest.raises(ValueError):
        crashguard.inject_spec({crashguard.INJECT_ENV: "vae"})


def test_guarded_batch_quarantines_only_the_culprit(domain, monkeypatch):
    monkeypatch.setenv(crashguard.INJECT_ENV, "mel:bad")
    uris = np.array(["/m/good1.flac", "/m/bad.flac", "/m/good2.flac"], dtype=object)
    batch = {"source_uri": uris, "x": np.arange(3), "reject_reason": np.array(["", "", ""], dtype=object),
             "reject_stage": np.array(["", "", ""], dtype=object), "reject_detail": np.array(["", "", ""], dtype=object)}
    out = crashguard.guarded_batch(domain, ("mel", double, {"factor": 3}), batch)
    assert list(out["doubled"]) == [0, 3, 6] and list(out["source_uri"]) == list(uris)
    assert list(out["reject_reason"]) == ["", WORKER_CRASH, ""]
    assert out["reject_stage"][1] == "mel" and "SIGSEGV" in out["reject_detail"][1]
    # a stage that does not crash returns only what it made; the rest is the parent's own arrays
    monkeypatch.delenv(crashguard.INJECT_ENV)
    domain.stop()                                             # a child reads the hook from its start environment
    clean = crashguard.guarded_batch(domain, ("mel", crashguard.ref(double), {}), batch)    # by name, as the plans pass it
    assert clean["x"] is batch["x"] and list(clean["reject_reason"]) == ["", "", ""]


def test_guarded_step_keeps_the_stage_name():
    assert crashguard.guarded_step("mel", double).__name__ == "double"

    class VaeStage:
        def __init__(self, kit_name_or_path: str):
            pass

    guarded = crashguard.guarded_step("vae", VaeStage)
    assert guarded.__name__ == "VaeStage" and issubclass(guarded, crashguard.GuardedStep)
