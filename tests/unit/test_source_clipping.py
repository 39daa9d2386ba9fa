"""Clipping and peak are measured on the source channels before the down-mix (review S7): a stereo file clipped in
one channel only is `clipped`, though its mono mean never reaches full scale."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from pipelines.corpus import audio, loudness, sources
from pipelines.corpus.frontend import process_track
from tests.audio_fixtures import write_tone_track


def stereo(tmp_path, name: str, right_gain: float) -> str:
    """12 s of 44.1 kHz stereo PCM-16 music: left as written, right times right_gain, hard-clipped at full scale."""
    path = str(tmp_path / "base.flac")
    music = write_tone_track(path, seconds=12.0, sr=44_100, channels=2, fmt="flac", seed=5)
    music = 0.9 * music / np.abs(music).max()
    music[:, 1] = np.clip(right_gain * music[:, 1], -1.0, 1.0)
    out = str(tmp_path / name)
    sf.write(out, music, 44_100, subtype="PCM_16")
    return out


def test_a_channel_clipped_alone_is_detected(tmp_path):
    path = stereo(tmp_path, "one_side_clipped.wav", right_gain=8.0)
    data, _ = sf.read(path, dtype="float32")
    right = float(np.mean(np.abs(data[:, 1]) >= loudness.CLIP_LEVEL))
    assert right > 0.05 and float(np.abs(data.mean(axis=1)).max()) < loudness.CLIP_LEVEL   # the mono mix hides it
    decoded = audio.decode(path)
    assert loudness.clip_fraction(audio.segment(decoded.audio).clips[0]) < loudness.MAX_CLIP_FRACTION
    assert decoded.source.at(0)[0] == pytest.approx(right, rel=0.05)
    rows = process_track(sources.discover([path])[0])
    assert rows[0]["reject_reason"] == "clipped", rows[0]["reject_detail"]
    assert rows[0]["clipped_fraction"] > 0.05 and rows[0]["true_peak_dbtp"] > -0.01


def test_the_same_music_unclipped_is_kept_with_its_source_peak(tmp_path):
    path = stereo(tmp_path, "clean.wav", right_gain=1.0)
    data, _ = sf.read(path, dtype="float32")
    (row, _tail) = process_track(sources.discover([path])[0])
    assert row["reject_reason"] == "" and row["clipped_fraction"] == 0.0
    # the source's sample peak (0.9) is a lower bound of the stored true peak
    assert row["true_peak_dbtp"] >= 20 * np.log10(np.abs(data).max()) - 1e-6


def test_source_levels_are_per_clip_window():
    x = np.zeros((3 * 451_584 // 2, 2), np.float32)       # 1.5 clip windows at 44.1 kHz
    x[451_584:451_584 + 100, 0] = 1.0                      # 100 clipped frames in the second window only
    x[10, 1] = -0.5
    meter = audio._SourceMeter(44_100, loudness.CLIP_LEVEL)
    list(meter.tap(x[i:i + 65_536] for i in range(0, len(x), 65_536)))
    levels = meter.levels()
    assert levels.clipped.tolist() == [0.0, 100 / (len(x) - 451_584)]
    assert levels.peak.tolist() == [0.5, 1.0] and levels.at(2) is None
