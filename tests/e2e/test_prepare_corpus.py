"""The whole corpus job on real Ray, real audio and real Parquet, with the tiny kit."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from pipelines import storage
from pipelines.corpus.config import CorpusConfig
from pipelines.corpus.pipeline import prepare_corpus
from schemas import CORPUS, NULL_TEXT, QUARANTINE, validate
from schemas.manifest import CORPUS_DIR, QUARANTINE_DIR
from tests.audio_fixtures import write_hostile_inputs, write_tone_track


def read_table(uri: str, schema: pa.Schema) -> pa.Table:
    tables = []
    for file in storage.list_files(uri, ".parquet"):
        table = storage.read_parquet(file)
        validate(table, schema)
        tables.append(table)
    return pa.concat_tables(tables) if tables else schema.empty_table()


def account(output: str) -> tuple[pa.Table, pa.Table]:
    return read_table(storage.join(output, CORPUS_DIR), CORPUS), read_table(storage.join(output, QUARANTINE_DIR), QUARANTINE)


def assert_exactly_once(corpus: pa.Table, quarantine: pa.Table, n_inputs: int) -> None:
    items = corpus["clip_id"].to_pylist() + quarantine["item_id"].to_pylist()
    assert len(items) == len(set(items)), "an item was written twice"
    tracks = corpus["track_id"].to_pylist() + quarantine["track_id"].to_pylist()
    counts = corpus["track_clip_count"].to_pylist() + quarantine["track_clip_count"].to_pylist()
    rows_per_track = Counter(tracks)
    for track, expected in zip(tracks, counts):
        assert rows_per_track[track] == expected, f"track {track}: {rows_per_track[track]} rows, expected {expected}"
    assert len(rows_per_track) == n_inputs, "every input ends somewhere"


@pytest.fixture(scope="module")
def music():
    # A fixed folder: track ids hash the source path, and the train/valid split hashes the track id, so a fixed
    # path gives the same split on every run (this one puts clips in both splits, train rows in several files).
    folder = Path(tempfile.gettempdir()) / "fluxmusic-test-music"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    hostile = write_hostile_inputs(folder)
    write_tone_track(folder / "song a.flac", seconds=25.0, sr=44_100, channels=2, fmt="flac")   # 2 clips + short tail
    # Seeds differ: the same synthetic music twice is a near-duplicate (docs/quality.md §7).
    write_tone_track(folder / "song b.wav", seconds=16.0, sr=22_050, channels=1, fmt="wav", seed=8)  # 1 clip + padded tail
    (folder / "metadata.csv").write_text("file_name,caption,genre\nsong b.wav,a calm test melody,ambient\n")
    return folder, hostile


@pytest.fixture(scope="module")
def corpus_run(ray_local, music, tmp_path_factory):
    folder, _ = music
    out = str(tmp_path_factory.mktemp("out"))
    # Shards of one row: the few clips here spread over several shards (the 2-worker training test needs train
    # rows in more than one file, and the re-run test loses one shard).
    config = CorpusConfig(inputs=[str(folder)], output=out, kit="tiny", valid_fraction=0.5, batch_size=4,
                          original_caption_probability=1.0, shard_rows=1)
    return config, prepare_corpus(config, progress=lambda *_: None)


def test_every_input_is_accounted_for_once(music, corpus_run):
    folder, hostile = music
    config, manifest = corpus_run
    corpus, quarantine = account(config.output)
    n_inputs = len([p for p in os.listdir(folder) if p != "metadata.csv"])
    assert manifest["counts"]["inputs"] == n_inputs
    assert manifest["counts"]["incomplete_tracks"] == 0
    assert_exactly_once(corpus, quarantine, n_inputs)
    reasons = {os.path.basename(u): r for u, r in zip(quarantine["source_uri"].to_pylist(), quarantine["reason"].to_pylist())}
    for name, reason in hostile.items():
        if reason:
            assert reasons.get(name) == reason, f"{name}: expected {reason}, got {reasons.get(name)}"
    assert reasons.get("song a.flac") == "short_tail"
    assert manifest["counts"]["clips"] == corpus.num_rows
    assert sum(manifest["counts"]["quarantined"].values()) == quarantine.num_rows


def test_corpus_rows_are_complete(corpus_run):
    config, manifest = corpus_run
    corpus, _ = account(config.output)
    rows = corpus.to_pylist()
    assert rows, "the tone tracks give clips"
    for row in rows:
        assert row["caption"] and row["caption_synthetic"], row["clip_id"]
        assert row["t5_length"] > 0 and len(row["t5"]) == row["t5_length"] * manifest["t5_dim"] * 2
        assert len(row["clap"]) == manifest["clap_dim"] * 2
        assert len(row["latent_mean"]) == len(row["latent_std"]) == 8 * 256 * 16 * 2
        assert np.isfinite(np.frombuffer(row["latent_mean"], np.float16)).all()
        assert row["tags"], row["clip_id"]
        assert row["split"] in ("train", "valid")
    by_track = {}
    for row in rows:
        by_track.setdefault(row["track_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in by_track.values()), "a track never spans both splits"
    song_b = sorted((r for r in rows if r["source_uri"].endswith("song b.wav")), key=lambda r: r["clip_index"])
    assert [r["caption_source"] for r in song_b] == ["original", "original"]
    assert song_b[0]["caption"] == "a calm test melody"
    assert song_b[1]["duration_seconds"] == pytest.approx(16.0 - 10.24, abs=1e-3)
    null = storage.read_parquet(storage.join(config.output, "null_text", "null_text.parquet"))
    validate(null, NULL_TEXT)
    saved = json.loads(storage.read_bytes(storage.join(config.output, "manifest.json")))
    assert saved["counts"] == manifest["counts"] and saved["vae_scaling_factor"] > 0


def test_two_workers_train_and_evaluate_on_the_prepared_corpus(corpus_run, tmp_path):
    """DDP training straight from what prepare_corpus wrote, with the evaluation hook on the valid split."""
    from pipelines.runs.checkpoints import list_checkpoints
    from pipelines.training.config import TrainConfig
    from pipelines.training.run import run_training

    config, _ = corpus_run
    runs = str(tmp_path / "runs")
    result = run_training(TrainConfig(size="tiny", data=config.output, storage=runs, run_name="e2e", num_workers=2,
                                      global_batch_size=2, micro_batch_size=1, max_steps=2, checkpoint_every=2,
                                      val_every=2, eval_every=2, eval_clips=2, sample_steps=2,
                                      sample_prompts=["a calm test melody"], cpus_per_worker=0.25))
    assert np.isfinite(result.metrics["loss"]) and np.isfinite(result.metrics["val_loss"])
    for name in ("eval_fad", "eval_kl", "eval_is", "eval_clap_score"):
        assert np.isfinite(result.metrics[name]), name
    assert [c.rsplit("_", 1)[-1] for c in list_checkpoints(runs, "e2e")] == ["00000002"]


def test_rerun_resumes_and_adds_new_inputs(music, corpus_run, tmp_path):
    folder, _ = music
    config, first = corpus_run
    corpus, quarantine = account(config.output)
    # A crash before one corpus file was written: the re-run must redo exactly its clips.
    lost = storage.list_files(storage.join(config.output, CORPUS_DIR), ".parquet")[0]
    lost_ids = set(storage.read_parquet(lost, columns=["clip_id"])["clip_id"].to_pylist())
    os.remove(lost)
    extra = tmp_path / "more"
    extra.mkdir()
    write_tone_track(extra / "song c.ogg", seconds=11.0, sr=48_000, channels=2, fmt="ogg", seed=9)
    config2 = CorpusConfig(**{**config.__dict__, "inputs": config.inputs + [str(extra)]})
    manifest = prepare_corpus(config2, progress=lambda *_: None)
    corpus2, quarantine2 = account(config.output)
    song_c = [u for u in corpus2["source_uri"].to_pylist() + quarantine2["source_uri"].to_pylist() if u.endswith("song c.ogg")]
    assert len(song_c) == 2, "one clip and its short tail"
    assert manifest["counts"]["this_run"]["items"] == len(lost_ids) + len(song_c)
    assert manifest["counts"]["inputs"] == first["counts"]["inputs"] + 1
    assert_exactly_once(corpus2, quarantine2, first["counts"]["inputs"] + 1)
    assert set(corpus2["clip_id"].to_pylist()) >= set(corpus["clip_id"].to_pylist())
    again = prepare_corpus(config2, progress=lambda *_: None)
    assert again["counts"]["this_run"]["items"] == 0
