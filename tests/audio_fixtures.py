"""Small, fast audio inputs for tests: music-like tone tracks and a folder of hostile inputs, each with the
reject reason the pipeline must give it. Reused by the pipeline tests of other modules."""
from __future__ import annotations

import os
import shutil

import numpy as np
import soundfile as sf

from pipelines.corpus.demo import synth_track

# fmt -> (soundfile format, default subtype)
FORMATS = {
    "wav": ("WAV", "PCM_16"),
    "flac": ("FLAC", "PCM_16"),
    "ogg": ("OGG", "VORBIS"),
    "opus": ("OGG", "OPUS"),      # libsndfile's Opus needs 8/12/16/24/48 kHz
    "mp3": ("MP3", "MPEG_LAYER_III"),
}
HOSTILE_SECONDS = 6.0             # > MIN_CLIP_SECONDS (5.12) and < one clip: every playable file gives one clip


def write_tone_track(path: str, seconds: float = HOSTILE_SECONDS, sr: int = 44_100, channels: int = 2,
                     fmt: str = "flac", *, subtype: str | None = None, seed: int = 0) -> np.ndarray:
    """Write synthetic music (chords, melody, bass, hi-hats) and return what was written: float32 [n, channels]."""
    audio = synth_track(seconds, sr, channels, seed=seed)
    file_format, default_subtype = FORMATS[fmt]
    sf.write(path, audio, sr, format=file_format, subtype=subtype or default_subtype)
    return audio


def write_hostile_inputs(folder: str) -> dict[str, str]:
    """Create the hostile inputs in folder; returns {file name: expected reject reason}, "" = must be kept.

    Every playable file is 6 s (one clip), so each file's rows all carry its expected reason, except
    "duplicate": process_track keeps both copies and the corpus stage keeps the copy with the smallest source_uri
    (pipelines/corpus/dedup.py), whatever order the tasks run in: "original.flac" < "original_copy.flac".
    """
    os.makedirs(folder, exist_ok=True)
    expected = {}

    def at(name: str) -> str:
        return os.path.join(folder, name)

    open(at("zero_bytes.wav"), "wb").close()
    expected["zero_bytes.wav"] = "empty"

    write_tone_track(at("whole.flac"), seed=1)
    with open(at("whole.flac"), "rb") as f:
        data = f.read()
    with open(at("truncated.flac"), "wb") as f:
        f.write(data[: len(data) // 2])            # cut mid-frame: both decoders report corrupt data
    os.remove(at("whole.flac"))
    expected["truncated.flac"] = "unreadable"

    with open(at("not_audio.mp3"), "wb") as f:
        f.write(b"<html><body>404 Not Found: this is not an MP3.</body></html>\n" * 40)
    expected["not_audio.mp3"] = "unreadable"

    write_tone_track(at("pcm_u8.wav"), sr=22_050, channels=1, fmt="wav", subtype="PCM_U8", seed=2)
    expected["pcm_u8.wav"] = ""

    write_tone_track(at("surround_6ch_96k.wav"), sr=96_000, channels=6, fmt="wav", seed=3)
    expected["surround_6ch_96k.wav"] = ""

    nan = synth_track(HOSTILE_SECONDS, 16_000, 1, seed=4)
    nan[16_000:16_100] = np.nan
    sf.write(at("nan_samples.wav"), nan, 16_000, subtype="FLOAT")
    expected["nan_samples.wav"] = "non_finite"

    sf.write(at("silence.wav"), np.zeros((int(HOSTILE_SECONDS * 44_100), 2), np.float32), 44_100)
    expected["silence.wav"] = "silent"

    write_tone_track(at("original.flac"), seed=5)
    shutil.copyfile(at("original.flac"), at("original_copy.flac"))   # a larger URI: the copy is the duplicate
    assert at("original.flac") < at("original_copy.flac")
    expected["original.flac"] = ""
    expected["original_copy.flac"] = "duplicate"

    sf.write(at("one_sample.wav"), np.full((1, 1), 0.5, np.float32), 16_000)
    expected["one_sample.wav"] = "too_short"

    odd = "odd name #1 – ünïcødé ♪.ogg"
    write_tone_track(at(odd), sr=48_000, fmt="ogg", seed=6)
    expected[odd] = ""
    return expected


def decode_with_peak_memory(path: str):
    """(decoded, peak bytes traced while pipelines.corpus.audio.decode ran): for the decoder's memory bound."""
    import tracemalloc

    from pipelines.corpus import audio

    tracemalloc.start()
    try:
        decoded = audio.decode(path)
        return decoded, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
