"""Loudness gates on real music: the defaults keep every real track and reject a -70 LUFS or a hard-clipped copy;
integrated loudness, true peak and the normaliser against values known by construction."""
from __future__ import annotations

import os

import numpy as np
import pytest
import soundfile as sf

from pipelines.corpus import loudness as L
from pipelines.corpus import quality
from pipelines.corpus.audio import decode
from schemas import constants as C
from tests.music_variants import ASC_DIR, ASC_TRACKS, SONIC_PI_DIR

SONIC_PI_LOOPS = ("loop_amen.flac", "loop_tabla.flac", "loop_garzul.flac", "ambi_glass_hum.flac", "guit_em9.flac")


@pytest.fixture(scope="module")
def real_music() -> dict[str, np.ndarray]:
    """Decoded 16 kHz mono: 60 s of each asc-music track and five sonic-pi-samples loops and pads."""
    paths = [os.path.join(ASC_DIR, t) for t in ASC_TRACKS] + [os.path.join(SONIC_PI_DIR, s) for s in SONIC_PI_LOOPS]
    paths = [p for p in paths if os.path.exists(p)]
    if len(paths) < 4:
        pytest.skip("needs Debian asc-music and sonic-pi-samples")
    return {os.path.basename(p): decode(p).audio[:60 * C.SAMPLE_RATE] for p in paths}


def _sine(freq: float, amplitude: float, seconds: float = 5.0, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * C.SAMPLE_RATE)) / C.SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * freq * t + phase)).astype(np.float32)


def test_bs1770_reference_sine_and_silence():
    # BS.1770: a full-scale 997 Hz sine in one channel reads -3.01 LKFS (the K-filter's 1 kHz gain is calibrated out).
    assert L.integrated_lufs(_sine(997.0, 1.0)) == pytest.approx(-3.01, abs=0.1)
    assert L.integrated_lufs(_sine(997.0, 0.1)) == pytest.approx(-23.01, abs=0.1)
    assert L.integrated_lufs(np.zeros(C.SAMPLE_RATE, np.float32)) == float("-inf")
    assert L.integrated_lufs(np.ones(100, np.float32)) == float("-inf")             # shorter than one 400 ms block
    assert L.loudness_gate(float("-inf"), float("-inf"), 0.0)[0] == "too_quiet"


def test_true_peak_sees_inter_sample_peaks():
    # A sine at a quarter of the rate, sampled 45 degrees off its crests: every sample is at 0.707, the wave at 1.0.
    x = _sine(C.SAMPLE_RATE / 4, 1.0, phase=np.pi / 4)
    assert 20 * np.log10(np.abs(x).max()) == pytest.approx(-3.01, abs=0.05)
    assert L.true_peak_dbtp(x) == pytest.approx(0.0, abs=0.3)
    assert L.clip_fraction(x) == 0.0


def test_defaults_keep_every_real_track(real_music):
    for name, audio in real_music.items():
        measured = L.measure(audio)
        assert L.MIN_LUFS + 10 < measured["lufs"] < 0, (name, measured)          # a margin, not just a pass
        assert measured["clip_fraction"] < L.MAX_CLIP_FRACTION / 10, (name, measured)
        assert L.loudness_gate(measured["lufs"], measured["true_peak_dbtp"], measured["clip_fraction"]) == quality.PASS


def test_defaults_reject_a_very_quiet_and_a_hard_clipped_copy(real_music, tmp_path):
    audio = real_music["frontiers.mp3"]
    lufs = L.integrated_lufs(audio)
    quiet = audio * np.float32(10 ** ((-70.0 - lufs) / 20))
    reason, detail = L.loudness_gate(**_gate_args(quiet))
    # Reads about -68.7, not -70: the -70 LKFS absolute gate drops the quietest blocks, as BS.1770 says.
    assert reason == "too_quiet" and "LUFS" in detail and -71.0 < L.integrated_lufs(quiet) < -65.0
    # Hard clipping as a bad master does it: +12 dB at the native rate, clipped (6.7 % of samples), stored as 16-bit
    # FLAC, then decoded by the front end (its resampler rings around the flat tops: 1.2 % stay at full scale).
    path = os.path.join(ASC_DIR, "frontiers.mp3")
    native, rate = sf.read(path, frames=sf.info(path).samplerate * 120, dtype="float32")      # 120 s at 22.05 kHz
    sf.write(tmp_path / "clipped.flac", np.clip(native * 4.0, -1.0, 1.0), rate, subtype="PCM_16")
    clipped = decode(str(tmp_path / "clipped.flac")).audio
    reason, detail = L.loudness_gate(**_gate_args(clipped))
    assert reason == "clipped" and "dBTP" in detail, detail
    assert L.REASONS["clipped"][0] == L.REASONS["too_quiet"][0] == "quality"


def _gate_args(audio: np.ndarray) -> dict[str, float]:
    m = L.measure(audio)
    return {"lufs": m["lufs"], "true_peak": m["true_peak_dbtp"], "clip_fraction": m["clip_fraction"]}


def test_normalise_loudness_is_optional_and_hits_its_target(real_music):
    audio = real_music["frontiers.mp3"]
    out = L.normalise_loudness(audio)
    assert out.dtype == np.float32 and L.integrated_lufs(out) == pytest.approx(L.TARGET_LUFS, abs=0.05)
    assert L.integrated_lufs(L.normalise_loudness(audio, -14.0)) == pytest.approx(-14.0, abs=0.05)
    np.testing.assert_array_equal(L.normalise_loudness(np.zeros(100, np.float32)), np.zeros(100, np.float32))
