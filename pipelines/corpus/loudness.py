"""Loudness of decoded audio: EBU R128 integrated loudness, true peak and clipping, and their gate
(docs/quality.md). Measured on decoded 16 kHz mono audio (the front end: each clip), before any normalisation;
clipping and peak also on the source channels before the down-mix, when the decoder gives them."""
from __future__ import annotations

import functools

import numpy as np
from scipy import signal

from pipelines.corpus import quality
from pipelines.corpus.quality import PASS, Gate
from schemas import constants as C

CLIP_LEVEL = 0.999            # |x| at or above this (re full scale 1.0) counts as a clipped sample
# Defaults from 121 real game-music excerpts (docs/quality.md): -34.3 to -11.0 LUFS, at most 7.1e-4 of the
# samples at full scale; a +12 dB hard-clipped master decodes to 1.2e-2 (the resampler rings around flat tops).
MIN_LUFS = -45.0              # 10 LU below the quietest real excerpt; a -70 LUFS copy is far below
MAX_CLIP_FRACTION = 0.005     # 7x the most clipped real excerpt, 2.3x below the hard-clipped copy
TARGET_LUFS = -23.0           # EBU R128 programme loudness, for the optional normaliser
TRUE_PEAK_OVERSAMPLING = 4    # BS.1770-4 annex 2: 4x oversampling at 48 kHz and below

# The gate's reasons, as quality.REASONS (the one table) states them.
REASONS = {reason: quality.REASONS[reason] for reason in ("too_quiet", "clipped")}


@functools.cache
def _meter(rate: int):
    import pyloudnorm

    return pyloudnorm.Meter(rate)          # BS.1770-4 K-weighting, 400 ms blocks, absolute and relative gates


def integrated_lufs(audio: np.ndarray, rate: int = C.SAMPLE_RATE) -> float:
    """EBU R128 / BS.1770-4 integrated loudness in LUFS of mono audio; -inf when silent or shorter than 0.4 s.

    At 16 kHz the K-weighting still applies (pyloudnorm designs its filters for the given rate); content above
    8 kHz is already gone, which lowers bright music by a fraction of a LU.
    """
    x = np.asarray(audio, dtype=np.float64)
    if len(x) < int(0.4 * rate) or not np.any(x):
        return float("-inf")
    return float(_meter(rate).integrated_loudness(x))


def true_peak_dbtp(audio: np.ndarray) -> float:
    """Peak of the 4x oversampled signal in dB true peak (dBTP); -inf for silence. Catches inter-sample peaks
    above 0 dBFS that a sample peak misses."""
    x = np.asarray(audio, dtype=np.float64)
    if not len(x):
        return float("-inf")
    peak = float(np.abs(signal.resample_poly(x, TRUE_PEAK_OVERSAMPLING, 1)).max())
    return float(20.0 * np.log10(peak)) if peak > 0 else float("-inf")


def clip_fraction(audio: np.ndarray, level: float = CLIP_LEVEL) -> float:
    """Fraction of samples with |x| >= level (full scale 1.0): measure on the decoded audio, before the
    peak normalisation of the front end, which would hide it."""
    x = np.asarray(audio)
    return float(np.count_nonzero(np.abs(x) >= level)) / len(x) if len(x) else 0.0


def loudness_gate(lufs: float, true_peak: float, clip_fraction: float, *, min_lufs: float = MIN_LUFS,
                  max_clip_fraction: float = MAX_CLIP_FRACTION) -> Gate:
    """too_quiet / clipped for one clip's (or track's) measurements (reason "" passes). true_peak goes into the detail
    only: lossy encodes of loud masters often peak above 0 dBTP without audible damage."""
    if not lufs >= min_lufs:             # also catches -inf and NaN
        return "too_quiet", f"integrated loudness {lufs:.1f} LUFS < min_lufs {min_lufs:g} LUFS"
    if clip_fraction > max_clip_fraction:
        return "clipped", (f"{100 * clip_fraction:.2f} % of samples at |x| >= {CLIP_LEVEL} > max_clip_fraction "
                           f"{100 * max_clip_fraction:g} % (true peak {true_peak:+.1f} dBTP)")
    return PASS


def measure(audio16k: np.ndarray, source: tuple[float, float] | None = None) -> dict[str, float]:
    """{"lufs", "true_peak_dbtp", "clip_fraction"} of decoded 16 kHz mono audio. With `source` (the clip's
    (clipped fraction, sample peak) on the native channels before the down-mix, audio.SourceLevels) the larger of
    each pair is kept: a channel clipped alone averages below CLIP_LEVEL in the mono mix, and its sample peak is a
    lower bound of the source's true peak that the 16 kHz mono true peak can miss."""
    measured = {"lufs": integrated_lufs(audio16k), "true_peak_dbtp": true_peak_dbtp(audio16k),
                "clip_fraction": clip_fraction(audio16k)}
    if source is not None:
        clipped, peak = source
        measured["clip_fraction"] = max(measured["clip_fraction"], float(clipped))
        if peak > 0:
            measured["true_peak_dbtp"] = max(measured["true_peak_dbtp"], float(20.0 * np.log10(peak)))
    return measured


def loudness_peak(audio: np.ndarray, target_lufs: float = TARGET_LUFS, max_peak: float = 1.0,
                  rate: int = C.SAMPLE_RATE) -> float:
    """The peak a clip is normalised to so that it measures target_lufs, at most max_peak (so nothing clips).

    The optional loudness normalisation of the corpus job replaces the front end's fixed peak of PEAK_LEVEL by
    this per-clip peak (mean removed first, as the peak step does); a silent or too short clip keeps PEAK_LEVEL."""
    x = np.asarray(audio, dtype=np.float64)
    x = x - x.mean() if x.size else x
    top = float(np.abs(x).max()) if x.size else 0.0
    if top == 0.0:
        return C.PEAK_LEVEL
    lufs = integrated_lufs((x / top * C.PEAK_LEVEL).astype(np.float32), rate)
    if not np.isfinite(lufs):
        return C.PEAK_LEVEL
    return float(min(max_peak, C.PEAK_LEVEL * 10.0 ** ((target_lufs - lufs) / 20.0)))


def normalise_loudness(audio: np.ndarray, target_lufs: float = TARGET_LUFS, rate: int = C.SAMPLE_RATE) -> np.ndarray:
    """Gain audio to target_lufs integrated loudness (float32; unchanged when silent). Off by default in the
    pipeline: the paper's front end normalises each clip's peak to 0.5 instead, and a gain here would be undone."""
    x = np.asarray(audio, dtype=np.float32)
    lufs = integrated_lufs(x, rate)
    if not np.isfinite(lufs):
        return x.copy()
    return (x * np.float32(10.0 ** ((target_lufs - lufs) / 20.0))).astype(np.float32)
