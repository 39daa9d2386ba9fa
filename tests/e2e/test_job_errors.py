"""A user's mistake in any job prints one `error: ...` line saying what to do and exits 2: no traceback, no Ray.

Every job runs as the README runs it (python jobs/X.py) with RAY_ADDRESS pointing at a closed port, so a job
that started Ray before noticing the mistake would fail with a connection traceback instead.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MISSING = "/nonexistent/fluxmusic"


def _cases(tmp: Path) -> dict[str, list[str]]:
    not_corpus = tmp / "not-a-corpus"
    corpus = tmp / "corpus"
    a_file = tmp / "notes.txt"
    prompts = tmp / "prompts.txt"
    release = tmp / "release"
    return {
        "prepare_corpus missing input": ["prepare_corpus", "--input", MISSING, "--output", str(tmp / "o")],
        "prepare_corpus unknown kit": ["prepare_corpus", "--input", str(not_corpus), "--output", str(tmp / "o"),
                                       "--kit", "no-such-kit"],
        "prepare_corpus kit model missing": ["prepare_corpus", "--input", str(not_corpus), "--output", str(tmp / "o"),
                                             "--kit", str(tmp / "kit.yaml")],
        "prepare_corpus missing resources file": ["prepare_corpus", "--input", str(not_corpus), "--output",
                                                  str(tmp / "o"), "--resources", MISSING + ".yaml"],
        "prepare_corpus bad stage resources": ["prepare_corpus", "--input", str(not_corpus), "--output",
                                               str(tmp / "o"), "--stage-resources", "vae=gpus"],
        "train missing data": ["train", "--data", MISSING, "--storage", str(tmp / "runs"), "--run-name", "a"],
        "train not a corpus": ["train", "--data", str(not_corpus), "--storage", str(tmp / "runs"), "--run-name", "a"],
        "train bad worker resource": ["train", "--data", str(corpus), "--storage", str(tmp / "runs"),
                                      "--run-name", "a", "--worker-resource", "train_node"],
        "train batch does not split": ["train", "--data", str(corpus), "--storage", str(tmp / "runs"),
                                       "--run-name", "a", "--global-batch-size", "7", "--num-workers", "2"],
        "sample missing checkpoint": ["sample", "--checkpoint", MISSING, "--prompt", "x", "--output", str(tmp / "s")],
        "sample checkpoint is a text file": ["sample", "--checkpoint", str(a_file), "--prompt", "x",
                                             "--output", str(tmp / "s")],
        "sample release of another size": ["sample", "--checkpoint", str(release / "ema.safetensors"),
                                           "--prompt", "x", "--output", str(tmp / "s"), "--device", "cpu"],
        "sample kit does not fit the checkpoint": ["sample", "--checkpoint", str(tmp / "other-dims"), "--prompt", "x",
                                                   "--output", str(tmp / "s"), "--device", "cpu"],
        "sample missing prompts file": ["sample", "--checkpoint", str(release), "--prompts", MISSING + ".txt",
                                        "--output", str(tmp / "s")],
        "sample bad encoders": ["sample", "--checkpoint", str(release), "--prompt", "x", "--encoders", "t5,vae",
                                "--output", str(tmp / "s")],
        "evaluate missing checkpoint": ["evaluate", "--checkpoint", MISSING, "--prompts", str(prompts),
                                        "--output", str(tmp / "e")],
        "evaluate missing generated": ["evaluate", "--generated", MISSING, "--prompts", str(prompts),
                                       "--output", str(tmp / "e")],
        "evaluate not a corpus": ["evaluate", "--generated", str(tmp), "--corpus", str(not_corpus),
                                  "--output", str(tmp / "e")],
        "export_weights missing weights file": ["export_weights", "--checkpoint", MISSING + "/model.safetensors",
                                                "--output", str(tmp / "r")],
        "export_weights not a checkpoint": ["export_weights", "--checkpoint", str(not_corpus),
                                            "--output", str(tmp / "r")],
        "report not a corpus": ["report", "--corpus", str(not_corpus)],
        "check_overlap missing corpus": ["check_overlap", "--corpus", MISSING, "--eval", str(not_corpus)],
        "check_overlap missing eval set": ["check_overlap", "--corpus", str(corpus), "--eval", MISSING],
        "make_demo_corpus output is a file": ["make_demo_corpus", "--output", str(a_file)],
    }


def _write_inputs(tmp: Path) -> None:
    """A folder that is not a corpus, a corpus-shaped folder (manifest.json with the training keys, no data),
    a text file, a prompt file, a kit of missing models, a release whose config.json names another size than its
    weights, and one whose text dimensions are not the tiny kit's."""
    from model import build_model
    from pipelines.runs.release import write_release
    from schemas.manifest import TRAINING_KEYS

    (tmp / "not-a-corpus").mkdir()
    (tmp / "not-a-corpus" / "song.txt").write_text("not audio")
    (tmp / "corpus" / "corpus").mkdir(parents=True)
    (tmp / "corpus" / "manifest.json").write_text(json.dumps({k: 1 for k in TRAINING_KEYS}))
    (tmp / "notes.txt").write_text("hello")
    roles = ("vae", "vocoder", "t5", "clap", "llm")
    (tmp / "kit.yaml").write_text("".join(f"{role}: {MISSING}/{role}\n" for role in roles))     # none exists
    (tmp / "prompts.txt").write_text("calm piano\n")
    tiny = build_model("tiny", context_in_dim=32, vec_in_dim=16, device="meta").to_empty(device="cpu")
    info = {"size": "small", "context_in_dim": 32, "vec_in_dim": 16, "vae_scaling_factor": 0.4, "kit": "tiny"}
    write_release(str(tmp / "release"), info, {"ema": tiny.state_dict(), "model": tiny.state_dict()}, 1, "test")
    write_release(str(tmp / "other-dims"), {**info, "size": "tiny"}, {"ema": tiny.state_dict()}, 1, "test")


# One case per job runs as the README runs it, in its own process; the others run main() in this one (same
# code path, without a Python and torch start-up each).
IN_PROCESS_OF = ("prepare_corpus missing input", "train missing data", "sample missing checkpoint",
                 "evaluate missing checkpoint", "export_weights missing weights file", "report not a corpus",
                 "check_overlap missing corpus", "make_demo_corpus output is a file")

AFTER_MODELS_LOAD = ("sample kit does not fit the checkpoint",)


def _subprocess(argv: list[str]) -> tuple[int, str]:
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:1", "HF_HUB_OFFLINE": "1"}   # Ray would fail here, loudly
    done = subprocess.run([sys.executable, str(REPO / "jobs" / f"{argv[0]}.py"), *argv[1:]], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    return done.returncode, done.stderr


def _in_process(argv: list[str], capsys) -> tuple[int, str]:
    import importlib

    from jobs.cli import run_job

    capsys.readouterr()
    try:
        code = run_job(importlib.import_module(f"jobs.{argv[0]}").main, argv[1:])
    except SystemExit as exit_:          # argparse
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, list[str]]:
    tmp = tmp_path_factory.mktemp("job-errors")
    _write_inputs(tmp)
    return _cases(tmp)


@pytest.fixture(scope="module")
def in_subprocesses(inputs) -> dict[str, tuple[int, str]]:
    with ThreadPoolExecutor(4) as pool:          # each is one Python start-up: run a few side by side
        return dict(zip(IN_PROCESS_OF, pool.map(_subprocess, [inputs[c] for c in IN_PROCESS_OF])))


@pytest.mark.parametrize("case", list(_cases(Path("/tmp"))))
def test_a_users_mistake_is_one_error_line_and_exit_2(inputs, in_subprocesses, case, capsys, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    code, stderr = in_subprocesses[case] if case in in_subprocesses else _in_process(inputs[case], capsys)
    assert code == 2, (code, stderr[-2000:])
    assert "Traceback" not in stderr, stderr[-2000:]
    # ours: stderr is `error: ...` (a kit's missing models: one more line each); argparse's: its usage, then
    # `prog: error: ...`. A mistake found once the models load follows their loading bars (transformers, stderr).
    told = stderr[stderr.index("error: "):] if case in AFTER_MODELS_LOAD and "error: " in stderr else stderr
    assert told.startswith("error: ") or (told.startswith("usage: ") and ": error: " in told), stderr[-2000:]
    if case == "prepare_corpus missing input":
        assert "does not exist; give a folder, an s3:// prefix" in stderr
    if case == "prepare_corpus unknown kit":
        assert "shipped kits" in stderr
    if case == "prepare_corpus kit model missing":
        assert "model(s) missing" in stderr
    if case == "train not a corpus":
        assert "is not a corpus (no manifest.json); give the --output folder" in stderr
    if case == "sample release of another size":
        assert "does not fit the FluxMusic small" in stderr
    if case == "sample kit does not fit the checkpoint":      # the tiny kit's T5 / CLAP give 64 / 32 dims
        assert "use the kit it was trained with" in stderr
    if case == "sample missing checkpoint":
        assert "model.safetensors" in stderr                   # names every form


def test_a_bug_keeps_its_traceback():
    from jobs.cli import run_job
    from pipelines.errors import UserPathError

    def buggy(argv):
        raise KeyError("ours")

    with pytest.raises(KeyError):
        run_job(buggy)
    assert run_job(lambda argv: None) == 0 and run_job(lambda argv: 3) == 3

    def wrong_path(argv):
        raise UserPathError("--x /y does not exist")

    assert run_job(wrong_path) == 2


def test_checkpoint_help_says_which_weights_are_safe(capsys):
    import importlib

    for job in ("sample", "evaluate", "export_weights"):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            importlib.import_module(f"jobs.{job}").parse_args(["--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert exit_.value.code == 0 and "model.safetensors" in text and "release (safetensors) only" in text, job
