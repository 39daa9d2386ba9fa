"""Decode, down-mix, resample, segment, normalise and the log-mel pin (spec §1)."""
from __future__ import annotations

import shutil
import subprocess

import librosa
import numpy as np
import pytest
import soundfile as sf
import soxr

from pipelines.corpus import audio
from pipelines.corpus.demo import synth_track
from schemas import constants as C
from tests.audio_fixtures import decode_with_peak_memory, write_tone_track

# |ours - numpy float64 reference| in log-mel units (nats), measured on synthetic music: max ~2.2e-3, mean ~2e-5.
# float32 STFT error is ~1e-7 of a frame's peak magnitude, so only bins ~80 dB below the peak (mel ~1e-4, just
# above the 1e-5 floor) differ by ~1e-3 relative. 5e-3 nats = 0.02 dB; the mean bound catches any systematic error.
MEL_TOLERANCE = 5e-3
MEL_MEAN_TOLERANCE = 1e-4


@pytest.mark.parametrize("sr,channels,subtype", [(22_050, 1, "PCM_U8"), (96_000, 6, "PCM_16"),
                                                 (44_100, 2, "FLOAT"), (16_000, 1, "PCM_24")])
def test_decode_to_16k_mono_with_right_duration_and_content(tmp_path, sr, channels, subtype):
    path = str(tmp_path / "x.wav")
    written = write_tone_track(path, 6.0, sr, channels, "wav", subtype=subtype)
    decoded = audio.decode(path)
    assert (decoded.native_rate, decoded.channels, decoded.decoder) == (sr, channels, "soundfile")
    assert decoded.audio.dtype == np.float32 and decoded.audio.ndim == 1
    assert abs(len(decoded.audio) - 6.0 * C.SAMPLE_RATE) <= 1
    # Mono is the mean of the channels (as stored), resampled with soxr HQ.
    stored = sf.read(path, dtype="float32", always_2d=True)[0]
    mono = stored.mean(axis=1)
    expected = mono if sr == C.SAMPLE_RATE else soxr.resample(mono, sr, C.SAMPLE_RATE, "HQ")
    np.testing.assert_allclose(decoded.audio, expected, atol=1e-5)
    # ... and close to the synthesised signal itself (8-bit quantisation is coarse).
    level = np.sqrt(np.mean(decoded.audio ** 2))
    reference = np.sqrt(np.mean(written.mean(axis=1) ** 2))
    assert abs(level - reference) / reference < 0.05


@pytest.mark.parametrize("fmt,sr", [("flac", 44_100), ("ogg", 32_000), ("opus", 48_000), ("mp3", 44_100)])
def test_decode_compressed_formats_from_path_and_bytes(tmp_path, fmt, sr):
    path = str(tmp_path / f"x.{fmt}")
    write_tone_track(path, 5.5, sr, 2, fmt)
    from_path = audio.decode(path)
    with open(path, "rb") as f:
        from_bytes = audio.decode(f.read())
    assert abs(from_path.seconds - 5.5) < 0.08       # codec priming/padding may add a few ms
    np.testing.assert_array_equal(from_path.audio, from_bytes.audio)
    assert np.sqrt(np.mean(from_path.audio ** 2)) > 0.05


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_ffmpeg_fallback_decodes_aac_m4a_from_path_and_bytes(tmp_path):
    wav, m4a = str(tmp_path / "x.wav"), str(tmp_path / "x.m4a")
    write_tone_track(wav, 6.0, 44_100, 2, "wav")
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", wav, "-c:a", "aac", "-b:a", "128k", m4a], check=True)
    decoded = audio.decode(m4a)
    assert decoded.decoder == "ffmpeg" and (decoded.native_rate, decoded.channels) == (44_100, 2)
    assert abs(decoded.seconds - 6.0) < 0.1
    with open(m4a, "rb") as f:
        assert np.array_equal(audio.decode(f.read()).audio, decoded.audio)
    # The AAC round trip keeps the signal: correlate against the WAV path's decode.
    reference = audio.decode(wav).audio
    n = min(len(reference), len(decoded.audio)) - 4000
    lag = int(np.argmax([np.dot(reference[2000:n], decoded.audio[2000 + k:n + k]) for k in range(0, 1500)]))
    corr = np.corrcoef(reference[2000:n], decoded.audio[2000 + lag:n + lag])[0, 1]
    assert corr > 0.95


def test_decode_garbage_raises_decode_error_naming_both_decoders():
    with pytest.raises(audio.DecodeError, match="soundfile.*ffmpeg"):
        audio.decode(b"definitely not audio" * 100)


@pytest.mark.parametrize("block", [777, 4096, 1 << 16])
def test_streaming_resample_matches_one_shot_soxr(block):
    x = synth_track(7.3, 44_100, 2, seed=0)
    streamed = audio.downmix_resample((x[i:i + block] for i in range(0, len(x), block)), 44_100)
    one_shot = soxr.resample(x.mean(axis=1), 44_100, C.SAMPLE_RATE, "HQ")
    assert len(streamed) == len(one_shot)
    np.testing.assert_allclose(streamed, one_shot, atol=1e-6)


@pytest.mark.parametrize("seconds,kept,tail_dropped", [
    (2 * C.CLIP_SECONDS, 2, 0.0),                # exact multiple: no tail
    (2 * C.CLIP_SECONDS + 6.0, 3, 0.0),          # 6 s tail >= 5.12: zero-padded clip
    (2 * C.CLIP_SECONDS + 3.0, 2, 3.0),          # 3 s tail < 5.12: dropped and counted
    (6.0, 1, 0.0),
])
def test_segment_counts_padding_and_tail(seconds, kept, tail_dropped):
    n = int(round(seconds * C.SAMPLE_RATE))
    x = np.arange(1, n + 1, dtype=np.float32)     # non-zero everywhere, so padding is recognisable
    seg = audio.segment(x)
    assert seg.clips.shape == (kept, C.CLIP_SAMPLES) and seg.clips.dtype == np.float32
    assert seg.tail_length == int(round(tail_dropped * C.SAMPLE_RATE))
    assert seg.tail_start + seg.tail_length == n
    np.testing.assert_array_equal(seg.starts, np.arange(kept) * C.CLIP_SAMPLES)
    for clip, start, length in zip(seg.clips, seg.starts, seg.lengths):
        np.testing.assert_array_equal(clip[:length], x[start:start + length])
        assert not clip[length:].any()
    assert seg.lengths.sum() + seg.tail_length == n


def test_segment_min_clip_seconds_is_configurable():
    x = np.ones(C.CLIP_SAMPLES + 3 * C.SAMPLE_RATE, np.float32)
    assert len(audio.segment(x, min_clip_seconds=2.0).clips) == 2
    assert len(audio.segment(x, min_clip_seconds=5.12).clips) == 1


def test_normalise_removes_mean_sets_peak_and_keeps_padding_zero():
    clip = np.zeros(C.CLIP_SAMPLES, np.float32)
    clip[:80_000] = 0.3 + 0.1 * np.sin(np.arange(80_000) / 7.0)
    out = audio.normalise(clip, 80_000)
    assert abs(out[:80_000].mean()) < 1e-6
    assert abs(np.abs(out[:80_000]).max() - C.PEAK_LEVEL) < 1e-6
    assert not out[80_000:].any()
    assert audio.real_length(clip) == 80_000


def _reference_log_mel(clip: np.ndarray, length: int) -> np.ndarray:
    """Spec §1, written out plainly in float64: normalise, reflect pad, frame, periodic Hann, rfft, |.|, mel, ln."""
    x = np.zeros(C.CLIP_SAMPLES)
    real = clip[:length].astype(np.float64) - clip[:length].mean(dtype=np.float64)
    x[:length] = real / (np.abs(real).max() + 1e-8) * 0.5
    padded = np.pad(x, C.N_FFT // 2, mode="reflect")
    frames = 1 + (len(padded) - C.N_FFT) // C.HOP_LENGTH                 # 1025
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(C.N_FFT) / C.N_FFT)  # periodic Hann
    spectra = np.stack([np.fft.rfft(padded[i * C.HOP_LENGTH:i * C.HOP_LENGTH + C.N_FFT] * window)
                        for i in range(frames)])                           # [1025, 513]
    basis = librosa.filters.mel(sr=16_000, n_fft=1024, n_mels=64, fmin=0.0, fmax=8_000.0, htk=False, norm="slaney")
    mel = np.abs(spectra) @ basis.T.astype(np.float64)                     # [1025, 64]
    return np.log(np.maximum(mel, 1e-5))[:1024]


def test_log_mel_matches_independent_numpy_reference():
    full = synth_track(C.CLIP_SECONDS, C.SAMPLE_RATE, 1, seed=3)[:, 0] * 0.3 + 0.01
    short = np.zeros(C.CLIP_SAMPLES, np.float32)
    short[:100_000] = synth_track(6.25, C.SAMPLE_RATE, 1, seed=4)[:100_000, 0]
    batch = np.stack([full, short])
    ours = audio.clips_to_log_mel(batch)
    assert ours.shape == (2, C.MEL_FRAMES, C.N_MELS) and ours.dtype == np.float32
    for got, clip, length in zip(ours, batch, (C.CLIP_SAMPLES, 100_000)):
        expected = _reference_log_mel(clip, length)
        assert np.abs(got - expected).max() < MEL_TOLERANCE
        assert np.abs(got - expected).mean() < MEL_MEAN_TOLERANCE
    # Padded frames come out at the floor ln(1e-5), as in the official code (pad after normalising).
    assert np.allclose(ours[1, 640:], np.log(C.LOG_MEL_FLOOR), atol=1e-6)
    np.testing.assert_array_equal(audio.clip_to_log_mel(full), ours[0])
    # Gain does not matter (normalised inside); explicit lengths give the same answer as inferred ones.
    np.testing.assert_allclose(audio.clips_to_log_mel(batch * 3.0), ours, atol=MEL_TOLERANCE)
    np.testing.assert_array_equal(audio.clips_to_log_mel(batch, lengths=np.array([C.CLIP_SAMPLES, 100_000])), ours)


def test_log_mel_of_silence_is_the_floor_and_bad_shapes_are_refused():
    assert np.all(audio.clip_to_log_mel(np.zeros(C.CLIP_SAMPLES, np.float32)) == np.float32(np.log(1e-5)))
    with pytest.raises(ValueError, match="163840"):
        audio.clips_to_log_mel(np.zeros((1, 1000), np.float32))


def test_decode_is_streamed_never_holding_the_full_rate_track(tmp_path):
    path = str(tmp_path / "long.wav")
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", samplerate=48_000, channels=6, subtype="PCM_16") as f:
        for _ in range(30):                                    # 30 s of 6-channel 48 kHz noise, written per second
            f.write(rng.uniform(-0.5, 0.5, (48_000, 6)))
    full_rate_bytes = 30 * 48_000 * 6 * 4                      # 34.6 MB as float32
    decoded, peak = decode_with_peak_memory(path)
    assert len(decoded.audio) == 30 * C.SAMPLE_RATE
    assert peak < full_rate_bytes / 4, f"peak {peak / 1e6:.1f} MB"   # blocks + the 1.9 MB 16 kHz result
