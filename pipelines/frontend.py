"""`process_track`: one discovered track -> its clip rows and reject rows (the `clips` contract of
docs/architecture.md). Never raises for bad input: every problem becomes a row with a reason."""
from __future__ import annotations

import os

import numpy as np

from pipelines import audio, constants as C, quality, storage
from pipelines.sources import BAD_FILE_NAME, read_embedded_tags

_SILENT_AUDIO = np.zeros(C.CLIP_SAMPLES, np.float32)   # shared by every rejected row, so read-only
_SILENT_AUDIO.flags.writeable = False


def _row(source: dict, clip_index: int, *, start: float = 0.0, duration: float = 0.0, samples=None,
         metadata: dict | None = None, stage: str = "", reason: str = "", detail: str = "") -> dict:
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
        "audio": _SILENT_AUDIO if samples is None else samples,
        "metadata": dict(metadata if metadata is not None else source.get("metadata") or {}),
        "reject_stage": stage,
        "reject_reason": reason,
        "reject_detail": detail,
    }


def _load(uri: str) -> tuple[audio.AudioSource | None, str, str]:
    """(what to decode, reason, detail): a local path is decoded in place; an s3 object is fetched whole."""
    if storage.is_s3(uri):
        if not storage.exists(uri):
            return None, "missing", f"no object at {uri}"
        data = storage.read_bytes(uri)
        return (data, "", "") if data else (None, "empty", "zero-byte object")
    if not os.path.isfile(uri):
        return None, "missing", f"no file at {uri}"
    if os.path.getsize(uri) == 0:
        return None, "empty", "zero-byte file"
    return uri, "", ""


def _track_rows(source: dict, min_clip_seconds: float, silence_dbfs: float) -> tuple[list[dict], str]:
    if source.get("problem") == BAD_FILE_NAME:
        # The real name is not UTF-8: no corpus row could name it. source_uri shows its bytes as \xNN.
        return [_row(source, -1, stage="discover", reason=BAD_FILE_NAME,
                     detail="file name is not valid UTF-8; rename it (e.g. convmv -f latin1 -t utf8) and re-run")], ""
    data, reason, detail = _load(source["source_uri"])
    if data is None:
        return [_row(source, -1, stage="decode", reason=reason, detail=detail)], ""
    try:
        decoded = audio.decode(data)
    except audio.DecodeError as err:
        return [_row(source, -1, stage="decode", reason="unreadable", detail=str(err))], ""
    # Manifest metadata wins over tags embedded in the file.
    metadata = {**read_embedded_tags(data), **(source.get("metadata") or {})}
    digest = quality.content_hash(decoded.audio)
    reason, detail = quality.track_gate(len(decoded.audio), min_clip_seconds)
    if reason:
        stage = "decode" if reason == "empty" else "segment"
        return [_row(source, -1, duration=decoded.seconds, metadata=metadata, stage=stage, reason=reason,
                     detail=detail)], digest

    segments = audio.segment(decoded.audio, min_clip_seconds)
    rows = []
    for index, (clip, start, length) in enumerate(zip(segments.clips, segments.starts, segments.lengths)):
        reason, detail = quality.clip_gate(clip[:length], silence_dbfs)
        rows.append(_row(source, index, start=start / C.SAMPLE_RATE, duration=length / C.SAMPLE_RATE,
                         samples=None if reason else clip, metadata=metadata,
                         stage="quality" if reason else "", reason=reason, detail=detail))
    if segments.tail_length:
        tail_seconds = segments.tail_length / C.SAMPLE_RATE
        rows.append(_row(source, len(rows), start=segments.tail_start / C.SAMPLE_RATE, duration=tail_seconds,
                         metadata=metadata, stage="segment", reason="short_tail",
                         detail=f"tail {tail_seconds:.3f} s < min_clip_seconds {min_clip_seconds:g} s, dropped"))
    return rows, digest


def process_track(source: dict, *, min_clip_seconds: float = C.MIN_CLIP_SECONDS,
                  silence_dbfs: float = quality.SILENCE_DBFS, skip_clip_ids: frozenset = frozenset()) -> list[dict]:
    """Decode, segment and gate one track (a dict from sources.discover) into rows of the `clips` contract.

    Kept clips carry float32 [163840] `audio` (as segmented, not normalised, zero-padded tail); rejected rows
    carry zeros and a reject_stage/reason/detail. Rows whose clip_id is in skip_clip_ids are left out (resume),
    but track_clip_count always counts every row of the track.
    """
    try:
        rows, digest = _track_rows(source, min_clip_seconds, silence_dbfs)
    except Exception as err:  # noqa: BLE001 - the contract: bad input becomes a row, never an exception
        rows, digest = [_row(source, -1, stage="frontend", reason="error", detail=f"{type(err).__name__}: {err}")], ""
    for row in rows:
        row["track_clip_count"] = len(rows)
        row["content_hash"] = digest
    return [row for row in rows if row["clip_id"] not in skip_clip_ids]
