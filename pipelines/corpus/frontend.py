"""The front end: one discovered track -> its clip rows and reject rows (the `clips` contract of
docs/architecture.md), then clip rows -> log-mels. Never raises for bad input: every problem becomes a row
with a reason."""
from __future__ import annotations

import os

import numpy as np

from pipelines import storage
from pipelines.corpus import audio, loudness, quality
from pipelines.corpus.sources import BAD_FILE_NAME, read_embedded_tags
from schemas import constants as C

_SILENT_AUDIO = np.zeros(C.CLIP_SAMPLES, np.float32)   # shared by every rejected row, so read-only
_SILENT_AUDIO.flags.writeable = False
_UNMEASURED = {"loudness_lufs": float("nan"), "true_peak_dbtp": float("nan"), "clipped_fraction": float("nan")}


def clip_loudness(samples: np.ndarray, source: tuple[float, float] | None = None) -> dict[str, float]:
    """The clip's loudness columns, measured on its real samples before the peak normalisation hides them; with
    source (its clipping and peak on the native channels, audio.SourceLevels.at) clipping and peak count those too."""
    m = loudness.measure(samples, source)
    return {"loudness_lufs": m["lufs"], "true_peak_dbtp": m["true_peak_dbtp"], "clipped_fraction": m["clip_fraction"]}


def _row(source: dict, clip_index: int, *, start: float = 0.0, duration: float = 0.0, samples=None,
         metadata: dict | None = None, stage: str = "", reason: str = "", detail: str = "",
         measured: dict[str, float] | None = None) -> dict:
    tid = source["track_id"]
    return {
        # Track-level rows (clip_index -1) carry the track_id as their item id.
        "clip_id": tid if clip_index < 0 else f"{tid}-{clip_index:05d}",
        "track_id": tid,
        "source_uri": source["source_uri"],
        "clip_index": clip_index,
        "start_seconds": float(start),
        "duration_seconds": float(duration),
        "track_clip_count": 0,     # filled in once the track's rows are known
        "content_hash": "",
        **(measured or _UNMEASURED),
        "audio": _SILENT_AUDIO if samples is None else samples,
        "metadata": dict(metadata if metadata is not None else source.get("metadata") or {}),
        "reject_stage": stage,
        "reject_reason": reason,
        "reject_detail": detail,
    }


def _absent(uri: str) -> tuple[str, str]:
    """(reason, detail) when there is nothing to decode at uri (missing, zero bytes), else ("", "")."""
    if storage.is_s3(uri):
        size = storage.size(uri)
        if size is None:
            return "missing", f"no object at {uri}"
        return ("empty", "zero-byte object") if size == 0 else ("", "")
    if not os.path.isfile(uri):
        return "missing", f"no file at {uri}"
    return ("empty", "zero-byte file") if os.path.getsize(uri) == 0 else ("", "")


def _decode(uri: str) -> tuple[audio.Decoded | None, dict, str, str]:
    """(decoded, embedded tags, reason, detail) of one input. A local path is decoded in place; an s3 object is
    streamed to a local temp file first (never whole in memory), removed once decoded."""
    reason, detail = _absent(uri)
    if reason:
        return None, {}, reason, detail
    with storage.local_copy(uri) as path:
        try:
            decoded = audio.decode(path)
        except audio.NotAudioError as err:       # e.g. a playlist named .mp3: refused, never decoded
            return None, {}, "not_audio", str(err)
        except audio.DecodeError as err:
            return None, {}, "unreadable", str(err)
        return decoded, read_embedded_tags(path), "", ""


def clip_gates(samples: np.ndarray, silence_dbfs: float, min_lufs: float, max_clipped_fraction: float,
               source: tuple[float, float] | None = None) -> tuple[quality.Gate, dict[str, float]]:
    """Every gate of one clip's real samples, in order (non_finite, silent, too_quiet, clipped), and its loudness
    (source: see clip_loudness)."""
    reason, detail = quality.clip_gate(samples, silence_dbfs)
    if reason == "non_finite":
        return (reason, detail), dict(_UNMEASURED)
    measured = clip_loudness(samples, source)
    if not reason:
        reason, detail = loudness.loudness_gate(measured["loudness_lufs"], measured["true_peak_dbtp"],
                                                measured["clipped_fraction"], min_lufs=min_lufs,
                                                max_clip_fraction=max_clipped_fraction)
    return (reason, detail), measured


def _track_rows(source: dict, min_clip_seconds: float, silence_dbfs: float, min_lufs: float,
                max_clipped_fraction: float, until_kept: bool = False) -> tuple[list[dict], str, np.ndarray | None]:
    """(rows, content hash, decoded 16 kHz audio or None) of one track; with until_kept the clips after the
    first kept one are not gated or returned (all the dedup pre-pass needs to know)."""
    if source.get("problem") == BAD_FILE_NAME:
        # The real name is not UTF-8: no corpus row could name it. source_uri shows its bytes as \xNN.
        return [_row(source, -1, stage="discover", reason=BAD_FILE_NAME,
                     detail="file name is not valid UTF-8; rename it (e.g. convmv -f latin1 -t utf8) and re-run")], "", None
    decoded, tags, reason, detail = _decode(source["source_uri"])
    if decoded is None:
        return [_row(source, -1, stage="decode", reason=reason, detail=detail)], "", None
    # Manifest metadata wins over tags embedded in the file.
    metadata = {**tags, **(source.get("metadata") or {})}
    digest = quality.content_hash(decoded.audio)
    reason, detail = quality.track_gate(len(decoded.audio), min_clip_seconds)
    if reason:
        stage = "decode" if reason == "empty" else "segment"
        return [_row(source, -1, duration=decoded.seconds, metadata=metadata, stage=stage, reason=reason,
                     detail=detail)], digest, decoded.audio

    segments = audio.segment(decoded.audio, min_clip_seconds)
    rows = []
    for index, (clip, start, length) in enumerate(zip(segments.clips, segments.starts, segments.lengths)):
        (reason, detail), measured = clip_gates(clip[:length], silence_dbfs, min_lufs, max_clipped_fraction,
                                                decoded.source.at(index) if decoded.source else None)
        rows.append(_row(source, index, start=start / C.SAMPLE_RATE, duration=length / C.SAMPLE_RATE,
                         samples=None if reason else clip, metadata=metadata, measured=measured,
                         stage="quality" if reason else "", reason=reason, detail=detail))
        if until_kept and not reason:
            return rows, digest, decoded.audio
    if segments.tail_length:
        tail_seconds = segments.tail_length / C.SAMPLE_RATE
        rows.append(_row(source, len(rows), start=segments.tail_start / C.SAMPLE_RATE, duration=tail_seconds,
                         metadata=metadata, stage="segment", reason="short_tail",
                         detail=f"tail {tail_seconds:.3f} s < min_clip_seconds {min_clip_seconds:g} s, dropped"))
    return rows, digest, decoded.audio


def analyse_track(source: dict, *, min_clip_seconds: float = C.MIN_CLIP_SECONDS, silence_dbfs: float = C.SILENCE_DBFS,
                  min_lufs: float = loudness.MIN_LUFS, max_clipped_fraction: float = loudness.MAX_CLIP_FRACTION,
                  until_kept: bool = False) -> tuple[list[dict], np.ndarray | None]:
    """process_track's rows (nothing skipped) and the decoded 16 kHz audio (None when it did not decode), for
    the dedup pre-pass, which fingerprints that audio instead of decoding the track again. until_kept: stop
    at the first kept clip (the pre-pass only asks whether there is one; the gates are ~40 % of its cost)."""
    try:
        rows, digest, decoded = _track_rows(source, min_clip_seconds, silence_dbfs, min_lufs, max_clipped_fraction,
                                            until_kept)
    except Exception as err:  # noqa: BLE001 - the contract: bad input becomes a row, never an exception
        rows, digest, decoded = [_row(source, -1, stage="frontend", reason="error",
                                      detail=f"{type(err).__name__}: {err}")], "", None
    for row in rows:
        row["track_clip_count"] = len(rows)
        row["content_hash"] = digest
    return rows, decoded


def process_track(source: dict, *, min_clip_seconds: float = C.MIN_CLIP_SECONDS,
                  silence_dbfs: float = C.SILENCE_DBFS, min_lufs: float = loudness.MIN_LUFS,
                  max_clipped_fraction: float = loudness.MAX_CLIP_FRACTION,
                  skip_clip_ids: frozenset = frozenset()) -> list[dict]:
    """Decode, segment and gate one track (a dict from sources.discover) into rows of the `clips` contract.

    Kept clips carry float32 [163840] `audio` (as segmented, not normalised, zero-padded tail) and their
    loudness; rejected rows carry zeros and a reject_stage/reason/detail. Rows whose clip_id is in skip_clip_ids
    are left out (resume), but track_clip_count always counts every row of the track.
    """
    rows, _ = analyse_track(source, min_clip_seconds=min_clip_seconds, silence_dbfs=silence_dbfs,
                            min_lufs=min_lufs, max_clipped_fraction=max_clipped_fraction)
    return [row for row in rows if row["clip_id"] not in skip_clip_ids]


# ---------------------------------------------------------------- Ray Data wiring

# Track metadata travels as a dict with these keys only, so every block has the same Arrow struct type.
METADATA_KEYS = ("title", "artist", "album", "genre", "mood", "tags", "caption", "comment", "bpm", "key", "date", "extra")


def _normalise_metadata(metadata: dict) -> dict:
    out = {k: "" for k in METADATA_KEYS}
    extra = []
    for key, value in (metadata or {}).items():
        key, value = str(key).lower(), "" if value is None else str(value)
        if key in out and key != "extra":
            out[key] = value
        elif value:
            extra.append(f"{key}={value}")
    out["extra"] = "; ".join(extra)
    return out


def _track_reject(rows: list[dict], source: dict, reason: str, detail: str) -> list[dict]:
    """The track's rows replaced by one track-level quarantine row."""
    return [dict(rows[0], clip_id=source["track_id"], clip_index=-1, track_clip_count=1, **_UNMEASURED,
                 audio=np.zeros(C.CLIP_SAMPLES, np.float32), duration_seconds=0.0,
                 reject_stage="quality", reject_reason=reason, reject_detail=detail)]


def front_end(source: dict, *, registry, min_clip_seconds: float, silence_dbfs: float,
              min_lufs: float = loudness.MIN_LUFS, max_clipped_fraction: float = loudness.MAX_CLIP_FRACTION
              ) -> list[dict]:
    """One track -> its rows; an exact duplicate of an earlier track, or a near-duplicate the dedup plan
    decided (source["near_duplicate"]: its detail), becomes one track-level rejection. The decode runs in this
    process's crash domain (pipelines/corpus/crashguard.py): a track that kills it is retried, then becomes one
    track-level `worker_crash` row, as does a track that killed the dedup pre-pass (source["crashed"])."""
    import ray

    from pipelines.corpus import crashguard

    gates = dict(min_clip_seconds=min_clip_seconds, silence_dbfs=silence_dbfs, min_lufs=min_lufs,
                 max_clipped_fraction=max_clipped_fraction)
    if source.get("crashed"):
        rows = [crash_row(source, "dedup", source["crashed"])]
    else:
        rows, crash = crashguard.run_with_retries(crashguard.process_domain(), guarded_process_track, source, gates)
        if crash is not None:
            rows = [crash_row(source, crash.stage, crash.detail())]
    key = claim_key(rows)
    original = ray.get(registry.claim.remote(key, source["track_id"], source["source_uri"])) if key else None
    return settle(rows, source, original)


def guarded_process_track(ctx, source: dict, gates: dict) -> list[dict]:
    """Crash-domain job: process_track of one track (resume: its skip_ids left out)."""
    ctx.stage("frontend", [source["source_uri"]])
    return process_track(source, **gates, skip_clip_ids=frozenset(source.get("skip_ids", ())))


def claim_key(rows: list[dict]) -> str:
    """The content hash a track claims with the dedup registry: its hash if it has a clip to keep, else ""."""
    content_hash = next((r["content_hash"] for r in rows if r["content_hash"]), "")
    return content_hash if any(not r["reject_reason"] for r in rows) else ""


def settle(rows: list[dict], source: dict, original: str | None) -> list[dict]:
    """The track's rows after the registry's answer (original: the kept copy, None when this track keeps its
    hash) and the near-duplicate plan, with metadata normalised."""
    if original:
        rows = _track_reject(rows, source, "duplicate", f"same audio as {original}")
    elif source.get("near_duplicate") and claim_key(rows):
        rows = _track_reject(rows, source, "near_duplicate", source["near_duplicate"])
    for row in rows:
        row["metadata"] = _normalise_metadata(row.get("metadata"))
    return rows


def crash_row(source: dict, stage: str, detail: str) -> dict:
    """The one track-level `worker_crash` row of a track whose processing killed its process (stage, signal)."""
    from pipelines.corpus.crashguard import WORKER_CRASH

    row = _row(source, -1, stage=stage, reason=WORKER_CRASH, detail=detail)
    row["track_clip_count"] = 1
    return row


def add_log_mel(batch: dict[str, np.ndarray], loudness_target: float | None = None) -> dict[str, np.ndarray]:
    """The mel stage; with loudness_target (LUFS) each clip is normalised to that loudness instead of peak 0.5."""
    ok = batch["reject_reason"] == ""
    mel = np.zeros((len(ok), C.MEL_FRAMES, C.N_MELS), np.float32)
    if ok.any():
        lengths = np.round(np.asarray(batch["duration_seconds"][ok]) * C.SAMPLE_RATE).astype(np.int64)
        clips = np.asarray(batch["audio"][ok], np.float32)
        peaks = None if loudness_target is None else [
            loudness.loudness_peak(clip[:n], loudness_target) for clip, n in zip(clips, lengths)]
        mel[ok] = audio.clips_to_log_mel(clips, lengths=lengths, peaks=peaks)
    batch["mel"] = mel
    return batch
