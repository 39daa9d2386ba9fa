"""Decode, down-mix, resample, segment, normalise and log-mel: the signal path of the audio front end.

Decoding is streamed: blocks of the native-rate file go through a mean down-mix and a streaming soxr
resampler, so only the 16 kHz mono result is ever held whole (docs/front_end.md).
"""
from __future__ import annotations

import functools
import io
import json
import os
import re
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf
import soxr
import torch

from pipelines.corpus.loudness import CLIP_LEVEL
from schemas import constants as C

AudioSource = str | bytes          # a local path, or the whole file's bytes (e.g. read from s3://)
BLOCK_FRAMES = 1 << 16             # native-rate frames per decoded block


class DecodeError(RuntimeError):
    """Neither libsndfile nor ffmpeg could decode the input; the message carries both errors."""


@dataclass(frozen=True)
class SourceLevels:
    """Per clip window (CLIP_SAMPLES of the 16 kHz track), measured on the native-rate channels before the down-mix:
    a channel clipped on its own averages below full scale in the mono mix, and resampling smooths its flat tops."""
    clipped: np.ndarray     # float64 [windows]: fraction of the window's frames with any channel at |x| >= clip_level
    peak: np.ndarray        # float32 [windows]: largest |x| of any channel (sample peak) in the window

    def at(self, window: int) -> tuple[float, float] | None:
        """(clipped fraction, sample peak) of one clip window; None past the end."""
        return (float(self.clipped[window]), float(self.peak[window])) if window < len(self.peak) else None


@dataclass(frozen=True)
class Decoded:
    audio: np.ndarray   # float32 [n], mono, 16 kHz
    native_rate: int
    channels: int
    decoder: str        # "soundfile" | "ffmpeg"
    source: SourceLevels | None = None

    @property
    def seconds(self) -> float:
        return len(self.audio) / C.SAMPLE_RATE


# ----------------------------------------------------------------------------- decode

def _soundfile_blocks(source: AudioSource, block_frames: int) -> tuple[int, int, Iterator[np.ndarray]]:
    handle = sf.SoundFile(io.BytesIO(source) if isinstance(source, bytes) else source)

    def blocks() -> Iterator[np.ndarray]:
        with handle:
            while True:
                block = handle.read(block_frames, dtype="float32", always_2d=True)
                if not len(block):
                    return
                yield block

    return handle.samplerate, handle.channels, blocks()


class NotAudioError(DecodeError):
    """The content is a container ffmpeg must not open: a playlist or other reference format (it would read the
    files or URLs it names), or anything else outside AUDIO_CONTAINERS. `container` is ffmpeg's name for it."""

    def __init__(self, container: str, message: str):
        super().__init__(message)
        self.container = container


# ffmpeg demuxers allowed to open an input: real audio containers only. Everything else is refused before its
# header is read (ffmpeg's format_whitelist), so playlists (hls, dash), concat lists, image sequences, SDP/RTSP
# descriptions and the like never open the files or URLs they name (docs/inputs.md, "Untrusted content").
AUDIO_CONTAINERS = ("wav", "w64", "flac", "mp3", "aac", "ac3", "eac3", "dts", "truehd", "mlp", "mov", "matroska",
                    "ogg", "aiff", "caf", "asf", "ape", "wv", "tta", "tak", "mpc", "mpc8", "au", "amr", "dsf",
                    "shn", "xwma")
# Formats that name other inputs: refused like the rest, with a detail that says why.
REFERENCE_FORMATS = frozenset({"hls", "dash", "concat", "imf", "webm_dash_manifest", "image2", "sdp", "rtsp",
                               "lavfi"})
# Input options of every ffprobe/ffmpeg call on a user's file: only the local file protocol (no http, no
# crypto/data/pipe), and only AUDIO_CONTAINERS. The path is given as file:ABSOLUTE so no name is a protocol.
FFMPEG_INPUT_OPTIONS = ("-protocol_whitelist", "file", "-format_whitelist", ",".join(AUDIO_CONTAINERS))
_REFUSED = re.compile(r"\[([^\s@\]]+) @ 0x[0-9a-fA-F]+\] Format not on whitelist")


def ffmpeg_input(path: str) -> list[str]:
    """The `-i` part of an ffprobe/ffmpeg command for a local file, with FFMPEG_INPUT_OPTIONS."""
    return [*FFMPEG_INPUT_OPTIONS, "-i", "file:" + os.path.abspath(path)]


def _refusal(stderr: str) -> NotAudioError | None:
    """The NotAudioError for ffmpeg's "Format not on whitelist" message, naming the container it detected."""
    found = _REFUSED.search(stderr)
    if not found:
        return None
    name = found.group(1)
    why = ("a playlist or reference file: ffmpeg would open the files or URLs it names"
           if name in REFERENCE_FORMATS else "not an audio container")
    return NotAudioError(name, f"content is '{name}', {why}; refused, not decoded")


def _ffmpeg_probe(path: str) -> tuple[int, int]:
    cmd = ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries", "stream=sample_rate,channels",
           "-of", "json", *ffmpeg_input(path)]
    done = subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=120)
    stderr = done.stderr.decode(errors="replace").strip()
    refused = _refusal(stderr)
    if refused:
        raise refused
    streams = json.loads(done.stdout or b"{}").get("streams") if done.returncode == 0 else None
    if not streams:
        raise DecodeError(f"ffprobe: no audio stream ({stderr[-300:]})")
    return int(streams[0]["sample_rate"]), int(streams[0]["channels"])


def _ffmpeg_blocks(source: AudioSource, block_frames: int) -> tuple[int, int, Iterator[np.ndarray]]:
    """ffmpeg decodes to f32le on a stdout pipe at the native rate; -xerror turns corrupt data into a failure.

    Bytes are spooled to a temporary file, not stdin: MP4/M4A often keep their index (moov) at the end,
    which a demuxer cannot reach on a pipe.
    """
    spool = None
    if isinstance(source, bytes):
        spool = tempfile.NamedTemporaryFile(prefix="fluxmusic-decode-")
        spool.write(source)
        spool.flush()
    path = spool.name if spool else source
    try:
        rate, channels = _ffmpeg_probe(path)
    except Exception:
        if spool:
            spool.close()
        raise
    cmd = ["ffmpeg", "-v", "error", "-xerror", "-nostdin", *ffmpeg_input(path), "-map", "0:a:0", "-f", "f32le",
           "-acodec", "pcm_f32le", "pipe:1"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.append(proc.stderr.read()), daemon=True)
    reader.start()
    frame_bytes = 4 * channels

    def blocks() -> Iterator[np.ndarray]:
        pending = b""
        try:
            while chunk := proc.stdout.read(block_frames * frame_bytes):
                pending += chunk
                whole = len(pending) - len(pending) % frame_bytes
                if whole:
                    yield np.frombuffer(pending[:whole], dtype="<f4").reshape(-1, channels)
                    pending = pending[whole:]
        finally:
            proc.stdout.close()
            code = proc.wait()
            reader.join()
            if spool:
                spool.close()
        if code != 0:
            raise DecodeError(f"ffmpeg exit {code}: {b''.join(stderr).decode(errors='replace').strip()[-300:]}")

    return rate, channels, blocks()


def downmix_resample(blocks: Iterable[np.ndarray], in_rate: int) -> np.ndarray:
    """Native-rate [n, channels] blocks -> float32 mono 16 kHz: channel mean, then streaming soxr "HQ"."""
    stream = None if in_rate == C.SAMPLE_RATE else soxr.ResampleStream(in_rate, C.SAMPLE_RATE, 1, "float32", "HQ")
    out = []
    for block in blocks:
        mono = np.ascontiguousarray(block.mean(axis=1, dtype=np.float32))
        out.append(mono if stream is None else stream.resample_chunk(mono))
    if stream is not None:
        out.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
    return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros(0, np.float32)


class _SourceMeter:
    """Streams blocks through unchanged while it counts, per clip window, the frames with a channel at clip_level
    and the sample peak of the native-rate channels (cheap next to the resampler: one abs and max per frame)."""

    def __init__(self, rate: int, clip_level: float):
        self.frames_per_window = C.CLIP_SAMPLES * rate / C.SAMPLE_RATE
        self.clip_level = clip_level
        self.offset = 0
        self.frames = np.zeros(0, np.int64)
        self.clipped = np.zeros(0, np.int64)
        self.peak = np.zeros(0, np.float32)

    def tap(self, blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        for block in blocks:
            self._add(block)
            yield block

    def _add(self, block: np.ndarray) -> None:
        if not len(block):
            return
        top = np.abs(block).max(axis=1)                        # per frame, over the channels
        window = ((self.offset + np.arange(len(top))) // self.frames_per_window).astype(np.int64)
        self.offset += len(top)
        starts = np.flatnonzero(np.diff(window, prepend=-1))   # windows are contiguous runs of frames
        index = window[starts]
        if index[-1] >= len(self.peak):
            grow = index[-1] + 1 - len(self.peak)
            self.frames, self.clipped = (np.pad(a, (0, grow)) for a in (self.frames, self.clipped))
            self.peak = np.pad(self.peak, (0, grow))
        self.frames[index] += np.diff(np.append(starts, len(top)))
        self.clipped[index] += np.add.reduceat((top >= self.clip_level).astype(np.int64), starts)
        self.peak[index] = np.maximum(self.peak[index], np.maximum.reduceat(top, starts))

    def levels(self) -> SourceLevels:
        return SourceLevels(self.clipped / np.maximum(self.frames, 1), self.peak.copy())


def decode(source: AudioSource, *, block_frames: int = BLOCK_FRAMES) -> Decoded:
    """Decode any file to float32 mono 16 kHz, streamed. libsndfile first (WAV/FLAC/OGG/Opus/MP3/AIFF),
    ffmpeg for the rest (AAC/M4A, odd codecs) or when libsndfile fails part-way, on AUDIO_CONTAINERS only.
    `source` holds each clip window's clipping and sample peak measured on the native channels (SourceLevels).
    Raises DecodeError; NotAudioError (a DecodeError) when the content is a playlist or another non-audio format."""
    errors = []
    for name, open_blocks in (("soundfile", _soundfile_blocks), ("ffmpeg", _ffmpeg_blocks)):
        try:
            rate, channels, blocks = open_blocks(source, block_frames)
            meter = _SourceMeter(rate, CLIP_LEVEL)
            mono = downmix_resample(meter.tap(blocks), rate)
            return Decoded(mono, rate, channels, name, meter.levels())
        except NotAudioError as err:     # refused by content: never decoded by anything
            raise NotAudioError(err.container, "; ".join([f"{name}: {err}", *errors])) from None
        except Exception as err:  # noqa: BLE001 - each decoder's failure is reported, not raised
            errors.append(f"{name}: {type(err).__name__}: {err}")
    raise DecodeError("; ".join(errors))


# ----------------------------------------------------------------------------- segment

@dataclass(frozen=True)
class Segments:
    clips: np.ndarray        # float32 [n, CLIP_SAMPLES], last one zero-padded if short
    starts: np.ndarray       # int64 [n] first sample of each clip in the track
    lengths: np.ndarray      # int64 [n] true samples in each clip (<= CLIP_SAMPLES)
    tail_start: int          # first sample of the dropped tail (== track length when none)
    tail_length: int         # samples dropped because the tail was shorter than min_clip_seconds


def segment(audio16k: np.ndarray, min_clip_seconds: float = C.MIN_CLIP_SECONDS) -> Segments:
    """Non-overlapping CLIP_SAMPLES windows; a tail >= min_clip_seconds is zero-padded, a shorter one dropped."""
    n = len(audio16k)
    full, tail = divmod(n, C.CLIP_SAMPLES)
    keep_tail = tail > 0 and tail >= round(min_clip_seconds * C.SAMPLE_RATE)
    count = full + int(keep_tail)
    clips = np.zeros((count, C.CLIP_SAMPLES), np.float32)
    kept = min(n, count * C.CLIP_SAMPLES)
    clips.reshape(-1)[:kept] = audio16k[:kept]
    starts = np.arange(count, dtype=np.int64) * C.CLIP_SAMPLES
    lengths = np.minimum(C.CLIP_SAMPLES, n - starts)
    return Segments(clips, starts, lengths, kept, n - kept)


# ----------------------------------------------------------------------------- normalise and mel

def real_length(clip: np.ndarray) -> int:
    """Samples up to the last non-zero one: trailing exact zeros are taken as padding."""
    nonzero = np.flatnonzero(clip)
    return int(nonzero[-1]) + 1 if len(nonzero) else 0


def normalise(clip: np.ndarray, length: int | None = None) -> np.ndarray:
    """Spec §1 step 5 on the real part: remove the mean, divide by max|x| + 1e-8, times PEAK_LEVEL;
    padding stays zero (the official code normalises the short waveform, then pads)."""
    length = len(clip) if length is None else length
    x = np.asarray(clip[:length], dtype=np.float32)
    out = np.zeros(len(clip), np.float32)
    if length:
        x = x - x.mean()
        out[:length] = x / (np.abs(x).max() + 1e-8) * C.PEAK_LEVEL
    return out


@functools.cache
def _mel_basis() -> torch.Tensor:
    from pipelines.corpus.numba_cache import librosa_module

    librosa = librosa_module()  # librosa defaults: Slaney mel scale, Slaney area normalisation (spec §1)
    basis = librosa.filters.mel(sr=C.SAMPLE_RATE, n_fft=C.N_FFT, n_mels=C.N_MELS, fmin=C.F_MIN, fmax=C.F_MAX)
    return torch.from_numpy(basis.astype(np.float32))


@functools.cache
def _window() -> torch.Tensor:
    return torch.hann_window(C.WIN_LENGTH, periodic=True)


MEL_CHUNK = 2   # clips per STFT call: small chunks stay in cache and measured ~2x faster than one big batch


def _log_mel_chunk(x: torch.Tensor, lengths: list[int], peaks: list[float]) -> torch.Tensor:
    for row, n, peak in zip(x, lengths, peaks):         # normalise the real part in place; padding stays zero
        if n:
            real = row[:n]
            real -= real.mean()
            real *= peak / (real.abs().max() + 1e-8)
        row[n:] = 0.0
    spec = torch.stft(x, C.N_FFT, C.HOP_LENGTH, C.WIN_LENGTH, window=_window(), center=True,
                      pad_mode="reflect", return_complex=True)                  # [b, 513, 1025]
    ri = torch.view_as_real(spec)
    magnitude = torch.sqrt(ri[..., 0] * ri[..., 0] + ri[..., 1] * ri[..., 1])   # faster than complex abs()
    log_mel = torch.log(torch.clamp(torch.matmul(_mel_basis(), magnitude), min=C.LOG_MEL_FLOOR))
    return log_mel.transpose(1, 2)[:, :C.MEL_FRAMES]                            # [b, 1024, 64]


def clips_to_log_mel(clips: np.ndarray, lengths: np.ndarray | None = None,
                     peaks: np.ndarray | None = None) -> np.ndarray:
    """[B, 163840] waveforms (as segmented) -> float32 [B, 1024, 64] log-mel, spec §1 exactly.

    Each clip is normalised over its real samples (`lengths`, or up to its last non-zero sample; samples
    beyond are padding and stay zero) to the peak PEAK_LEVEL (or its own entry of `peaks`: the optional
    loudness normalisation, pipelines/corpus/loudness.py), then: centred reflect-padded STFT (n_fft 1024, hop 160, periodic
    Hann), magnitude, Slaney mel 0-8 kHz, ln(max(., 1e-5)), time-major, the 1025th frame dropped.
    """
    clips = np.asarray(clips, dtype=np.float32)
    if clips.ndim != 2 or clips.shape[1] != C.CLIP_SAMPLES:
        raise ValueError(f"expected clips [B, {C.CLIP_SAMPLES}], got {clips.shape}")
    lengths = [real_length(c) for c in clips] if lengths is None else [int(n) for n in lengths]
    peaks = [C.PEAK_LEVEL] * len(clips) if peaks is None else [float(p) for p in peaks]
    out = np.empty((len(clips), C.MEL_FRAMES, C.N_MELS), np.float32)
    with torch.inference_mode():
        for i in range(0, len(clips), MEL_CHUNK):
            out[i:i + MEL_CHUNK] = _log_mel_chunk(torch.tensor(clips[i:i + MEL_CHUNK]),  # a copy: normalised in place
                                                  lengths[i:i + MEL_CHUNK], peaks[i:i + MEL_CHUNK]).numpy()
    return out


def clip_to_log_mel(clip: np.ndarray) -> np.ndarray:
    """One 163,840-sample clip -> float32 [1024, 64] log-mel (see clips_to_log_mel)."""
    return clips_to_log_mel(np.asarray(clip, dtype=np.float32)[None])[0]
