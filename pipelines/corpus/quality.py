"""Track and clip gates of the front end. Each gate answers (reason, detail); reason "" means the item passes."""
from __future__ import annotations

import hashlib

import numpy as np

from schemas import constants as C

# reason -> (stage, meaning); docs/front_end.md renders this table.
REASONS = {
    "missing": ("decode", "listed (e.g. in a manifest) but no file at that path"),
    "empty": ("decode", "zero-byte file, or it decodes to zero samples"),
    "unreadable": ("decode", "neither libsndfile nor ffmpeg could decode it (corrupt, truncated, not audio)"),
    "not_audio": ("decode", "the content is not an audio container (e.g. an HLS playlist or ffconcat list named "
                            ".mp3): ffmpeg refuses it before reading anything it names; detail names the format"),
    "too_short": ("segment", "the whole track is shorter than min_clip_seconds"),
    "short_tail": ("segment", "the track's last piece is shorter than min_clip_seconds and was dropped"),
    "non_finite": ("quality", "the clip has NaN or infinite samples"),
    "silent": ("quality", "the clip's RMS (before normalisation) is below silence_dbfs"),
    "duplicate": ("quality", "the decoded track has the content hash of another track (kept: an earlier run's copy, "
                             "else the smallest source_uri; pipelines/corpus/dedup.py)"),
    "near_duplicate": ("quality", "the track is the same recording as a kept track (Chromaprint agreement >= the "
                                  "near-duplicate threshold: a re-encode, trim or new intro); detail names the kept "
                                  "track, score and offset (pipelines/corpus/dedup.py)"),
    "too_quiet": ("quality", "the clip's integrated loudness (EBU R128, before normalisation) is below min_lufs, "
                             "or it has no gated 400 ms block"),
    "clipped": ("quality", "the fraction of the clip's samples at |x| >= 0.999 full scale is above "
                           "max_clipped_fraction"),
    "bad_file_name": ("discover", "the file name is not valid UTF-8 (source_uri shows its bytes as \\xNN); rename it"),
    "error": ("frontend", "an unexpected exception; detail holds its text"),
}

Gate = tuple[str, str]
PASS: Gate = ("", "")


def rms_dbfs(x: np.ndarray) -> float:
    """RMS level in dB relative to full scale 1.0 (a full-scale square wave is 0 dBFS); -inf for silence."""
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0
    return 20.0 * np.log10(rms) if rms > 0 else float("-inf")


def track_gate(n_samples: int, min_clip_seconds: float = C.MIN_CLIP_SECONDS) -> Gate:
    """empty / too_short for a decoded 16 kHz track of n_samples."""
    if n_samples == 0:
        return "empty", "decoded to 0 samples"
    seconds = n_samples / C.SAMPLE_RATE
    if seconds < min_clip_seconds:
        return "too_short", f"{seconds:.3f} s < min_clip_seconds {min_clip_seconds:g} s"
    return PASS


def clip_gate(samples: np.ndarray, silence_dbfs: float = C.SILENCE_DBFS) -> Gate:
    """non_finite / silent for a clip's real (un-padded, un-normalised) samples."""
    bad = int(np.count_nonzero(~np.isfinite(samples)))
    if bad:
        return "non_finite", f"{bad} of {len(samples)} samples are NaN or inf"
    level = rms_dbfs(samples)
    if level < silence_dbfs:
        return "silent", f"RMS {level:.1f} dBFS < {silence_dbfs:g} dBFS"
    return PASS


def content_hash(audio16k: np.ndarray) -> str:
    """sha256 of the decoded 16 kHz mono track as little-endian float32 bytes."""
    return hashlib.sha256(np.ascontiguousarray(audio16k, dtype="<f4").tobytes()).hexdigest()
