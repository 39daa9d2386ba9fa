"""Evaluator on the tiny kit (reference cache, metric plumbing) and jobs/evaluate.py end to end."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from schemas.constants import CLIP_SAMPLES, SAMPLE_RATE


def _tones(freqs: list[float], rate: int = SAMPLE_RATE, seconds: float = 10.24, seed: int = 0) -> np.ndarray:
    """Harmonic tones with a little noise: [len(freqs), rate * seconds] float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(rate * seconds))) / rate
    out = [0.4 * np.sin(2 * np.pi * f * t) + 0.2 * np.sin(2 * np.pi * 2.01 * f * t)
           + 0.02 * rng.normal(size=t.size) for f in freqs]
    return np.asarray(out, dtype=np.float32)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("eval-cache"))


@pytest.fixture(scope="module")
def evaluator(cache_dir):
    from pipelines.evaluation.evaluator import Evaluator

    return Evaluator("tiny", cache_dir=cache_dir, batch_size=4, labels="music")


def test_reference_stats_are_cached_on_disk(evaluator, cache_dir):
    from pipelines.evaluation.evaluator import Evaluator
    from pipelines.evaluation.reference import cache_uri

    reference = _tones([220, 330, 440, 550, 660])
    before = evaluator.clips_embedded
    stats = evaluator.reference(reference, "tones-5", ids=list("abcde"))
    assert evaluator.clips_embedded - before == 5
    assert stats.mu.shape == (16,) and stats.sigma.shape == (16, 16) and stats.probs.shape[0] == 5
    np.testing.assert_allclose(stats.probs.sum(axis=1), 1.0, rtol=1e-9)

    # The second call reads the cache file: nothing is embedded, the audio is not even produced.
    calls = []
    cached = evaluator.reference(lambda: calls.append(1) or reference, "tones-5")
    assert evaluator.clips_embedded - before == 5 and calls == []
    np.testing.assert_array_equal(cached.mu, stats.mu)
    np.testing.assert_array_equal(cached.sigma, stats.sigma)
    assert cached.ids == list("abcde")

    # The cache is on disk: remove its file and the next call embeds again.
    entry = Path(cache_uri(cache_dir, "tones-5", evaluator.embedder_id, evaluator.classifier_id))
    assert entry.is_file()
    entry.unlink()
    evaluator.reference(reference, "tones-5")
    assert evaluator.clips_embedded - before == 10

    # Another set key, or another classifier (label temperature), is another cache entry.
    evaluator.reference(reference[:3], "tones-3")
    assert evaluator.clips_embedded - before == 13
    other = Evaluator("tiny", cache_dir=cache_dir, batch_size=4, labels="music", label_temperature=0.5)
    other.reference(reference, "tones-5")
    assert other.clips_embedded == 5
    assert other.classifier_id != evaluator.classifier_id
    assert Path(cache_uri(cache_dir, "tones-5", other.embedder_id, other.classifier_id)).is_file()


def test_score_against_itself_and_against_other_audio(evaluator):
    reference = _tones([200, 300, 400, 500, 600, 700], seed=1)
    evaluator.reference(reference, "tones-6")
    prompts = ["a calm piano melody with soft strings"] * 6
    same = evaluator.score(reference, prompts, "tones-6")
    assert set(same) >= {"fad", "kl", "is", "is_std", "clap_score", "n_generated", "n_reference", "kl_pairs"}
    assert same["fad"] == pytest.approx(0.0, abs=1e-9)
    assert same["kl"] == pytest.approx(0.0, abs=1e-12) and same["kl_pairs"] == 6
    assert same["is"] >= 1.0 - 1e-12
    assert -1.0 <= same["clap_score"] <= 1.0

    noise = np.random.default_rng(2).normal(scale=0.3, size=(6, CLIP_SAMPLES)).astype(np.float32)
    other = evaluator.score(noise, prompts, "tones-6")
    assert other["fad"] > 1e-6 and other["kl"] > 0

    # clap_score is the mean cosine of the prompt and audio embeddings, computed by the kit's CLAP.
    from pipelines.evaluation.metrics import clap_score

    expected = clap_score(evaluator.clap.text(prompts), evaluator.clap.audio(noise))
    assert other["clap_score"] == pytest.approx(expected, rel=1e-6)
    assert evaluator.describe()["classifier"] == "clap-zero-shot"
    with pytest.raises(KeyError):
        evaluator.score(noise, prompts, "never-seen")


def test_prompt_sets_txt_jsonl_and_corpus(tmp_path):
    from pipelines.evaluation.prompts import read_corpus, read_prompt_file

    (tmp_path / "p.txt").write_text("first prompt\n\nsecond prompt\n")
    ps = read_prompt_file(str(tmp_path / "p.txt"))
    assert ps.ids == ["000", "001"] and ps.captions == ["first prompt", "second prompt"] and ps.reference is None

    (tmp_path / "p.jsonl").write_text('{"id": "x", "caption": "one"}\n{"id": "y", "caption": "two"}\n')
    assert read_prompt_file(str(tmp_path / "p.jsonl")).ids == ["x", "y"]

    # A corpus: reference clips are re-decoded from source_uri at start_seconds and normalised (peak 0.5).
    track = _tones([330], rate=22_050, seconds=25.0)[0]
    track[int(10.24 * 22_050):] *= 0.1          # the second clip is quieter in the source
    sf.write(tmp_path / "track.flac", track, 22_050)
    (tmp_path / "corpus" / "corpus").mkdir(parents=True)
    uri = str(tmp_path / "track.flac")
    table = pa.table({"clip_id": ["t-00001", "t-00000", "t-00002"], "source_uri": [uri] * 3,
                      "start_seconds": [10.24, 0.0, 20.48], "duration_seconds": [10.24, 10.24, 4.52],
                      "caption": ["second", "first", "third"], "split": ["valid", "valid", "train"]})
    pq.write_table(table, tmp_path / "corpus" / "corpus" / "part.parquet")
    ps = read_corpus(str(tmp_path / "corpus"), "valid")
    assert ps.ids == ["t-00000", "t-00001"] and ps.captions == ["first", "second"]
    clips = ps.reference()
    assert clips.shape == (2, CLIP_SAMPLES)
    np.testing.assert_allclose(np.abs(clips).max(axis=1), 0.5, rtol=1e-3)
    assert ps.head(1).ids == ["t-00000"] and ps.head(1).reference().shape == (1, CLIP_SAMPLES)


def test_prompt_set_from_saved_hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    from pipelines.evaluation.prompts import read_hf_dataset

    tones = _tones([250, 500], rate=44_100, seconds=12.0)
    paths = []
    for i, wave in enumerate(tones):
        paths.append(str(tmp_path / f"a{i}.wav"))
        sf.write(paths[-1], wave, 44_100)
    ds = datasets.Dataset.from_dict({"caption": ["low tone", "high tone"], "audio": paths})
    ds.cast_column("audio", datasets.Audio()).save_to_disk(str(tmp_path / "ds"))
    ps = read_hf_dataset(str(tmp_path / "ds"))
    assert ps.ids == ["000", "001"] and ps.captions == ["low tone", "high tone"]
    clips = ps.reference()
    assert clips.shape == (2, CLIP_SAMPLES)
    # 250 Hz vs 500 Hz survive decoding + resampling: compare zero-crossing rates.
    crossings = (np.diff(np.sign(clips), axis=1) != 0).sum(axis=1)
    assert 1.8 < crossings[1] / crossings[0] < 2.2


def test_corpus_head_decodes_only_the_clips_it_scores(tmp_path, monkeypatch):
    """read_corpus(limit=n) and PromptSet.head(n) decode n clips' tracks, not the whole split."""
    import pipelines.corpus.audio as audio
    from pipelines.evaluation.prompts import read_corpus

    (tmp_path / "corpus" / "corpus").mkdir(parents=True)
    uris = []
    for i in range(4):                                   # one track per clip: decodes count clips
        uris.append(str(tmp_path / f"track{i}.flac"))
        sf.write(uris[-1], _tones([220 + 40 * i], seconds=10.24, seed=i)[0], SAMPLE_RATE)
    table = pa.table({"clip_id": [f"t-{i:05d}" for i in range(4)], "source_uri": uris,
                      "start_seconds": [0.0] * 4, "duration_seconds": [10.24] * 4,
                      "caption": [f"c{i}" for i in range(4)], "split": ["valid"] * 4})
    pq.write_table(table, tmp_path / "corpus" / "corpus" / "part.parquet")
    decoded = []
    real_decode = audio.decode
    monkeypatch.setattr(audio, "decode", lambda source: decoded.append(source) or real_decode(source))

    limited = read_corpus(str(tmp_path / "corpus"), "valid", limit=2)
    assert limited.ids == ["t-00000", "t-00001"] and limited.reference().shape == (2, CLIP_SAMPLES)
    assert decoded == uris[:2]
    decoded.clear()
    full = read_corpus(str(tmp_path / "corpus"), "valid")
    head = full.head(1)
    assert head.reference().shape == (1, CLIP_SAMPLES) and decoded == uris[:1]
    assert head.key != full.key


def test_move_to_reaches_every_model_of_a_generator():
    """Generator.to/release walk the flow model, the text encoders, the VAE decoder and the vocoder."""
    import torch

    from model import build_model
    from pipelines.evaluation.generate import Generator
    from pipelines.evaluation.placement import module_devices, move_to
    from pipelines.models.encoders import TextEncoder
    from pipelines.models.kits import ensure_tiny_kit

    ensure_tiny_kit()
    text = TextEncoder("tiny", device="cpu")
    gen = Generator("tiny", build_model("tiny", context_in_dim=text.t5_dim, vec_in_dim=text.clap_dim),
                    device="cpu")
    assert module_devices(gen) == {"cpu"}
    move_to(gen, "meta")                   # a device nothing starts on: shows every holder is reached
    assert module_devices(gen) == {"meta"}
    assert gen.device == gen.text.device == gen.mel_decoder.device == gen.vocoder.device == "meta"
    assert all(p.device.type == "meta" for p in gen.model.parameters())
    assert callable(gen.release) and isinstance(gen.null_t5, torch.Tensor)
