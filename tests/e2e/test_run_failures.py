"""A run never lies: a stage of ours failing on most clips stops the run with its stage, reason and first error,
and a run that stores no clip exits non-zero (pipelines/corpus/failures.py)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipelines.corpus.config import CorpusConfig
from pipelines.corpus.failures import RunFailed
from pipelines.corpus.pipeline import prepare_corpus
from pipelines.models.kits import KITS_DIR, load_kit
from pipelines.models.paths import kit_cache_dir
from tests.audio_fixtures import write_tone_track

ROOT = Path(__file__).resolve().parents[2]


def test_a_caption_model_failing_on_every_clip_stops_the_run(ray_local, tmp_path):
    # A real failure of ours in the caption stage: the LLM's chat template raises, as a broken kit's would.
    load_kit("tiny").check()                                          # builds the tiny kit if needed
    llm = tmp_path / "llm"
    shutil.copytree(kit_cache_dir() / "tiny" / "llm", llm)
    (llm / "chat_template.jinja").write_text("{{ raise_exception('a broken chat template') }}")
    kit = tmp_path / "broken-llm.yaml"
    kit.write_text((KITS_DIR / "tiny.yaml").read_text().replace('llm: {path: "tiny://llm"', f'llm: {{path: "{llm}"'))
    music = tmp_path / "music"
    music.mkdir()
    write_tone_track(str(music / "long.flac"), seconds=200.0)        # 19 clips, all passing the content gates
    output = tmp_path / "out"
    config = CorpusConfig(inputs=[str(music)], output=str(output), kit=str(kit), batch_size=4,
                          original_caption_probability=0.0, near_duplicate_threshold=0)
    with pytest.raises(RunFailed) as failure:
        prepare_corpus(config, progress=lambda *_: None)
    message = str(failure.value)
    assert "stage 'caption'" in message and "'llm_error'" in message and "a broken chat template" in message
    # What was done before the stop is stored: the failed clips are in quarantine, none in the corpus.
    rows = [pq.read_table(p) for p in (output / "quarantine").glob("*.parquet")]
    reasons = [r for t in rows for r in t["reason"].to_pylist()]
    assert reasons and set(reasons) == {"llm_error"}
    assert not list((output / "corpus").glob("**/*.parquet"))


def test_a_run_that_stores_no_clip_exits_non_zero(tmp_path):
    music = tmp_path / "music"
    music.mkdir()
    for name in ("a.wav", "b.wav"):                                   # audio, but silent: every clip rejected
        sf.write(music / name, np.zeros(16_000 * 12, np.float32), 16_000)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    done = subprocess.run([sys.executable, "jobs/prepare_corpus.py", "--input", str(music), "--output",
                           str(tmp_path / "out")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert "error: 2 inputs, but the corpus holds no clip" in done.stderr and "silent" in done.stderr
    assert "rejected (content) " in done.stdout                      # the account says they are content rejects
    assert "Traceback" not in done.stderr
