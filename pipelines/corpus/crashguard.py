"""The crash domain: stage code runs in a child process, so a native crash kills the child, not the Ray worker.

A track whose processing kills its process (SIGSEGV in a native library, SIGKILL from the OOM killer, abort) would
otherwise kill the Ray worker, and Ray retries that work forever. Here each Ray worker (fused TrackWorker, staged
task or model actor, pre-pass task) owns one persistent child (`CrashDomain`) that runs the stage callables and
holds their models. The parent sees the child's exit status (negative: the signal) and the last stage the child
reported; it restarts the child (models reload) and retries the unit at most `CRASH_RETRIES` times, then the caller
quarantines the unit as `worker_crash` (docs/operations.md "Worker crashes"). A batch of several clips that crashes
is redone clip by clip, so only the culprit is quarantined (`guarded_batch`).

The child is a fresh interpreter (`subprocess.Popen` of sys.executable, fork+exec at once, so no torch thread or
lock of the parent is ever forked; unlike multiprocessing's spawn it does not re-import the parent's `__main__`,
which in a Ray worker is Ray's own worker script). Parent and child talk over one socket pair with
multiprocessing's `Connection` (pickled messages): a job in, stage reports, streamed results and questions out.

Tests only: FLUXMUSIC_INJECT_CRASH="<stage>:<substring of source_uri>[:<signal>]" makes the process running that
stage on a matching file die by that real signal (default SIGSEGV). Off when unset.
"""
from __future__ import annotations

import faulthandler
import importlib
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from pipelines.corpus.rows import reject, reject_columns, with_rejects

CRASH_RETRIES = 2           # a unit whose child dies is run again at most this many times, each on a fresh child
RAY_RETRIES = 3             # Ray's own retries of our tasks / restarts of our actors (Ray's default: forever)
WORKER_CRASH = "worker_crash"
INJECT_ENV = "FLUXMUSIC_INJECT_CRASH"

Spec = tuple[str, Callable | str, dict[str, Any]]   # (stage, class or function or its "module:qualname", kwargs)


def ref(fn: Callable) -> str:
    """fn as "module:qualname": what a parent hands its child, so the parent never imports the stage's module
    (torch, the models' libraries) just to pass the stage on."""
    return f"{fn.__module__}:{fn.__qualname__}"


def resolve(fn: Callable | str) -> Callable:
    if not isinstance(fn, str):
        return fn
    module, _, name = fn.partition(":")
    return getattr(importlib.import_module(module), name)


class WorkerCrash(Exception):
    """The child died: by a signal (exitcode < 0) or an exit of its own, in `stage` (the last one it reported)."""

    def __init__(self, exitcode: int, stage: str):
        self.exitcode, self.stage = exitcode, stage or "start"
        super().__init__(f"the process running stage {self.stage} died by {self.cause}")

    @property
    def signal(self) -> str:
        """SIGSEGV, SIGKILL, ... or "" for a plain exit."""
        try:
            return signal.Signals(-self.exitcode).name if self.exitcode < 0 else ""
        except ValueError:
            return f"signal {-self.exitcode}"

    @property
    def cause(self) -> str:
        return f"{self.signal} (signal {-self.exitcode})" if self.exitcode < 0 else f"exit code {self.exitcode}"

    def detail(self, attempts: int = 1 + CRASH_RETRIES) -> str:
        """The quarantine detail: signal, stage, attempts."""
        return (f"{self.cause} in stage {self.stage}: the process running it died on each of {attempts} attempts "
                f"({attempts - 1} retries on a fresh process)")


# ----------------------------------------------------------------------------- parent side


class CrashDomain:
    """A persistent child process that runs jobs: `job(ctx, *args)`, job an importable function. Started on first
    use and again after a crash; it ends with its parent (EOF on the socket, or the parent's pid gone)."""

    def __init__(self):
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.lock = threading.Lock()

    def run(self, job: Callable, *args, answer: Callable | None = None) -> Any:
        """The job's return value; what it sends (`ctx.send`) is dropped. Raises WorkerCrash if the child dies."""
        stream = self.stream(job, *args, answer=answer)
        while True:
            try:
                next(stream)
            except StopIteration as done:
                return done.value

    def stream(self, job: Callable, *args, answer: Callable | None = None) -> Iterator[tuple[str, Any]]:
        """Yields (kind, payload) for each `ctx.send` of the job; returns its value. `answer(kind, payload)`
        answers its `ctx.ask`. A Python exception in the job is raised here as itself; a dead child as
        WorkerCrash (the next call starts a fresh child)."""
        with self.lock:
            self._start()
            stage, finished = "", False
            try:
                self._send(("run", job, args), stage)
                while True:
                    message = self._recv(stage)
                    kind = message[0]
                    if kind == "stage":
                        stage = message[1]
                    elif kind == "send":
                        yield message[1], message[2]
                    elif kind == "ask":
                        self._send(("reply", answer(message[1], message[2])), stage)
                    elif kind == "done":
                        finished = True
                        return message[1]
                    else:                                   # "error": the job raised
                        finished = True
                        raise _exception(message[1], message[2])
            finally:
                if not finished:          # a crash, or the consumer stopped mid-job: the child's state is unknown
                    self.stop()

    def stop(self) -> None:
        """End the child (killed if it does not exit at once)."""
        proc, conn, self.proc, self.conn = self.proc, self.conn, None, None
        if conn is not None:
            conn.close()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def _start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.stop()
        mine, theirs = socket.socketpair()
        path = os.pathsep.join(p for p in sys.path if p)    # the parent's imports (a Ray job's working dir too)
        env = dict(os.environ, PYTHONPATH=path)
        code = "import sys; from pipelines.corpus.crashguard import child_main; child_main(int(sys.argv[1]))"
        with theirs:
            self.proc = subprocess.Popen([sys.executable, "-c", code, str(theirs.fileno())],
                                         pass_fds=(theirs.fileno(),), env=env)
        self.conn = Connection(mine.detach())

    def _send(self, message, stage: str) -> None:
        try:
            self.conn.send(message)
        except OSError:
            raise self._crash(stage) from None

    def _recv(self, stage: str):
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            raise self._crash(stage) from None

    def _crash(self, stage: str) -> WorkerCrash:
        proc = self.proc
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:         # it closed the socket but lives on: end it
            proc.kill()
            code = proc.wait()
        return WorkerCrash(code, stage)

    def __del__(self):
        try:
            self.stop()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


_DOMAIN: CrashDomain | None = None


def process_domain() -> CrashDomain:
    """The crash domain of this process (one child per Ray worker process, shared by the stages it runs)."""
    global _DOMAIN
    if _DOMAIN is None:
        _DOMAIN = CrashDomain()
    return _DOMAIN


def run_with_retries(domain: CrashDomain, job: Callable, *args, answer: Callable | None = None
                     ) -> tuple[Any, WorkerCrash | None]:
    """(the job's value, None), or (None, the last crash) after 1 + CRASH_RETRIES attempts that killed the child."""
    crash = None
    for _ in range(1 + CRASH_RETRIES):
        try:
            return domain.run(job, *args, answer=answer), None
        except WorkerCrash as err:
            crash = err
    return None, crash


def _exception(error: bytes | None, text: str) -> BaseException:
    try:
        err = pickle.loads(error) if error else RuntimeError(text)
    except Exception:  # noqa: BLE001 - an exception that does not unpickle is reported by its text
        err = RuntimeError(text)
    err.add_note(f"raised in the crash-domain child:\n{text}")
    return err


# ----------------------------------------------------------------------------- child side


class Context:
    """What a job sees in the child: stage reports (and the fault hook), results out, questions to the parent,
    and the stage callables made ready once per child (`ready`, a model load)."""

    def __init__(self, conn: Connection):
        self.conn = conn
        self.steps: dict[str, Callable] = {}

    def stage(self, name: str, uris=()) -> None:
        """Now running stage `name` on these source URIs: reported first, so a crash names it."""
        self.conn.send(("stage", name))
        maybe_crash(name, uris)

    def send(self, kind: str, payload) -> None:
        self.conn.send(("send", kind, payload))

    def ask(self, kind: str, payload):
        self.conn.send(("ask", kind, payload))
        return self.conn.recv()[1]

    def ready(self, spec: Spec) -> Callable:
        """The step of spec as a callable on a batch: a class constructed with its kwargs, a function bound."""
        key = repr(spec)
        if key not in self.steps:
            name, fn, kwargs = spec
            self.stage(name)
            fn = resolve(fn)
            self.steps[key] = fn(**kwargs) if isinstance(fn, type) else _bind(fn, kwargs)
        return self.steps[key]


def _bind(fn: Callable, kwargs: dict) -> Callable:
    return lambda batch: fn(batch, **kwargs)


def child_main(fd: int) -> None:
    """The child's loop: run each job, answer its value or its exception; exit when the parent is gone."""
    os.set_inheritable(fd, False)
    conn = Connection(fd)
    parent = os.getppid()
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    ctx = Context(conn)
    while True:
        try:
            _, job, args = conn.recv()
        except (EOFError, OSError):
            return
        try:
            value = job(ctx, *args)
        except Exception as err:  # noqa: BLE001 - handed to the parent, which raises it
            text = traceback.format_exc()
            try:
                error = pickle.dumps(err)
            except Exception:  # noqa: BLE001
                error = None
            conn.send(("error", error, text))
        else:
            conn.send(("done", value))


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


# ----------------------------------------------------------------------------- the fault hook (tests only)


def inject_spec(environ=os.environ) -> tuple[str, str, int] | None:
    """(stage, substring, signal number) of FLUXMUSIC_INJECT_CRASH, or None when unset."""
    value = environ.get(INJECT_ENV, "")
    if not value:
        return None
    stage, _, rest = value.partition(":")
    substring, sig = rest, signal.SIGSEGV
    head, _, last = rest.rpartition(":")
    if head and last.upper() in signal.Signals.__members__:
        substring, sig = head, signal.Signals[last.upper()]
    if not stage or not substring:
        raise ValueError(f"{INJECT_ENV}={value!r}: expected <stage>:<substring of source_uri>[:<signal>]")
    return stage, substring, int(sig)


def inject_env() -> dict[str, str]:
    """The hook's variable of this process, for a stage's runtime_env env_vars (empty when unset)."""
    return {INJECT_ENV: os.environ[INJECT_ENV]} if os.environ.get(INJECT_ENV) else {}


def maybe_crash(stage: str, uris) -> None:
    """Die by the injected signal if the hook names this stage and one of these URIs."""
    spec = inject_spec()
    if spec is None or spec[0] != stage or not any(spec[1] in str(u) for u in uris):
        return
    sig = spec[2]
    if sig == signal.SIGSEGV:
        faulthandler._sigsegv()           # a real segmentation fault, as a native library makes
    elif sig == signal.SIGABRT:
        os.abort()
    if sig != signal.SIGKILL:                # SIGKILL has no handler to reset
        signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)
    time.sleep(60)                        # a signal that does not end the process at once


# ----------------------------------------------------------------------------- batch stages (the staged plan)


def live_uris(batch: dict) -> list[str]:
    """The source URIs of the batch's rows not yet rejected (the rows a stage works on)."""
    uris = batch.get("source_uri")
    if uris is None:
        return []
    reasons = batch.get("reject_reason")
    return [str(u) for i, u in enumerate(uris) if reasons is None or not reasons[i]]


def run_step(ctx: Context, spec: Spec, batch: dict) -> tuple[list[str], dict]:
    """Child job: one stage on one batch. Returns the output's column order and only the columns the stage made
    or replaced (stages never write into the arrays they are given: rows.reject_columns copies), so the columns
    the parent already holds do not cross the socket back."""
    step = ctx.ready(spec)
    ctx.stage(spec[0], live_uris(batch))
    given = dict(batch)                  # before the stage: some add their columns to the dict they are given
    out = step(batch)
    return list(out), {k: v for k, v in out.items() if k not in given or v is not given[k]}


def _merge(batch: dict, result: tuple[list[str], dict]) -> dict:
    order, changed = result
    return {k: changed[k] if k in changed else batch[k] for k in order}


def guarded_batch(domain: CrashDomain, spec: Spec, batch: dict) -> dict:
    """spec's stage on batch in the child. If the child dies, each row is run alone (each with its retries) and a
    row that still kills it is rejected `worker_crash` (stage, signal), then passed through the stage as a
    rejected row (no work on it), so the batch keeps every row and every column."""
    n = len(next(iter(batch.values()))) if batch else 0
    if n > 1:
        try:
            return _merge(batch, domain.run(run_step, spec, batch))
        except WorkerCrash:
            pass
    parts = []
    for i in range(n):
        one = {k: v[i:i + 1] for k, v in batch.items()}
        result, crash = run_with_retries(domain, run_step, spec, one)
        if crash is not None:
            columns = reject_columns(one, 1)
            reject(columns, [0], crash.stage, WORKER_CRASH, crash.detail())
            one = with_rejects(one, columns)
            result, again = run_with_retries(domain, run_step, spec, one)
            if again is not None:
                raise RuntimeError(f"stage {spec[0]} kills its process even on a rejected row ({again.cause}): "
                                   "not caused by one input; see the worker's log") from again
        parts.append(_merge(one, result))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else batch


class GuardedStep:
    """A model stage as a Ray Data callable class whose model lives in this process's crash domain.
    `guarded_step` makes a subclass per stage named like the stage class (Ray names operators after it)."""

    spec_stage: str = ""
    spec_class: str = ""            # "module:qualname" of the stage class (resolved in the child only)

    def __init__(self, **kwargs):
        self.domain = process_domain()
        self.spec = (self.spec_stage, self.spec_class, kwargs)
        _, crash = run_with_retries(self.domain, prepare, [self.spec])     # the model loads now, in the child
        if crash is not None:
            raise RuntimeError(f"stage {self.spec_stage} could not start: {crash.detail()}") from crash

    def __call__(self, batch: dict) -> dict:
        return guarded_batch(self.domain, self.spec, batch)


def prepare(ctx: Context, specs: list[Spec]) -> None:
    """Child job: make the steps ready (construct the classes: model loads)."""
    for spec in specs:
        ctx.ready(spec)


def guarded_step(stage: str, fn: Callable) -> Callable:
    """fn (a stage class or function on batches) run in the crash domain, under fn's own name (Ray Data names its
    operators and fuses them by it)."""
    target = ref(fn)
    if isinstance(fn, type):
        return type(fn.__name__, (GuardedStep,), {"spec_stage": stage, "spec_class": target, "__module__": __name__,
                                                 "__qualname__": fn.__name__})

    def run(batch: dict, **kwargs) -> dict:
        return guarded_batch(process_domain(), (stage, target, kwargs), batch)

    run.__name__ = run.__qualname__ = fn.__name__
    return run
