"""process_track: the clips contract, hostile inputs, accounting, resume; the demo corpus end to end."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pytest

from pipelines.corpus import quality, sources
from pipelines.corpus.frontend import process_track
from schemas import constants as C
from schemas import tables
from tests.audio_fixtures import write_hostile_inputs, write_tone_track

ROW_KEYS = set(tables.CLIPS.names) | {"reject_stage", "reject_reason", "reject_detail"}


def _clips_table(rows: list[dict]) -> pa.Table:
    """Rows -> a table conformed to schemas.CLIPS: fails on a missing or extra key, an uncastable type, a null."""
    for row in rows:
        assert set(row) == ROW_KEYS, f"row keys differ from schemas.CLIPS: {sorted(set(row) ^ ROW_KEYS)}"
    columns = {name: [r[name] for r in rows] for name in tables.CLIPS.names}
    columns["audio"] = [np.asarray(a, dtype="<f4").tobytes() for a in columns["audio"]]
    columns["metadata"] = [list(m.items()) for m in columns["metadata"]]
    return tables.conform(pa.table({n: pa.array(v, type=tables.CLIPS.field(n).type) for n, v in columns.items()}),
                          tables.CLIPS)


def test_clips_table_check_can_fail():
    """The schema check above is not vacuous: a row with an extra key, a null or a wrong type is refused."""
    (good,) = process_track({"source_uri": "/nowhere.wav", "track_id": "0" * 16, "metadata": {}})
    _clips_table([good])
    for bad in ({**good, "surprise": 1}, {**good, "clip_index": "one"}, {**good, "source_uri": None}):
        with pytest.raises((AssertionError, pa.ArrowInvalid, pa.ArrowTypeError, tables.SchemaError)):
            _clips_table([bad])


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    expected = write_hostile_inputs(str(folder))
    rows = {}
    for source in sources.discover([str(folder)]):
        rows[os.path.basename(source["source_uri"])] = process_track(source)
    return expected, rows


def test_hostile_inputs_each_give_their_reason(hostile):
    expected, rows = hostile
    assert set(rows) == set(expected)
    for name, reason in expected.items():
        got = {r["reject_reason"] for r in rows[name]}
        assert got == ({""} if reason == "duplicate" else {reason}), name
        for row in rows[name]:
            assert set(row) == ROW_KEYS
            assert (row["reject_stage"] == "") == (row["reject_reason"] == "") == (row["reject_detail"] == "")
            assert row["reject_stage"] in ("", quality.REASONS.get(row["reject_reason"], ("",))[0])
    # Track-level rejects are one row with clip_index -1 and the track_id as item id.
    for name in ("zero_bytes.wav", "truncated.flac", "not_audio.mp3", "one_sample.wav"):
        (row,) = rows[name]
        assert row["clip_index"] == -1 and row["clip_id"] == row["track_id"] and row["track_clip_count"] == 1
        assert not row["audio"].any()
    assert "ffmpeg" in rows["truncated.flac"][0]["reject_detail"]       # the error text is kept
    assert rows["zero_bytes.wav"][0]["content_hash"] == ""
    # Duplicates: identical content hash, which the corpus stage's registry uses to keep one of them.
    original, copy = rows["original.flac"][0], rows["original_copy.flac"][0]
    assert original["content_hash"] == copy["content_hash"] != ""
    assert len({r[0]["content_hash"] for r in rows.values() if r[0]["content_hash"]}) > 2


def test_hostile_playable_files_decode_to_one_good_clip(hostile):
    _, rows = hostile
    for name in ("pcm_u8.wav", "surround_6ch_96k.wav", "odd name #1 – ünïcødé ♪.ogg", "original.flac"):
        (row,) = rows[name]
        assert row["clip_index"] == 0 and row["clip_id"] == f"{row['track_id']}-00000"
        assert abs(row["duration_seconds"] - 6.0) < 0.01 and row["start_seconds"] == 0.0
        assert row["audio"].dtype == np.float32 and row["audio"].shape == (C.CLIP_SAMPLES,)
        n = int(row["duration_seconds"] * C.SAMPLE_RATE)
        assert np.sqrt(np.mean(row["audio"][:n] ** 2)) > 0.05 and not row["audio"][n + 1:].any()
    all_rows = [r for track in rows.values() for r in track]
    table = _clips_table(all_rows)
    assert table.num_rows == len(all_rows)


def test_segments_rows_account_for_every_second(tmp_path):
    path = str(tmp_path / "long.flac")
    write_tone_track(path, 2 * C.CLIP_SECONDS + 3.0, 32_000, 2, "flac")      # 2 clips + a 3 s tail
    (source,) = sources.discover([str(tmp_path)])
    rows = process_track(source)
    assert [r["clip_index"] for r in rows] == [0, 1, 2]
    assert [r["reject_reason"] for r in rows] == ["", "", "short_tail"]
    assert {r["track_clip_count"] for r in rows} == {3}
    assert len({r["content_hash"] for r in rows}) == 1
    assert rows[2]["reject_stage"] == "segment" and abs(rows[2]["start_seconds"] - 2 * C.CLIP_SECONDS) < 1e-9
    assert abs(sum(r["duration_seconds"] for r in rows) - (2 * C.CLIP_SECONDS + 3.0)) < 1e-3
    # A lower min_clip_seconds keeps the tail as a zero-padded clip with its true duration.
    padded = process_track(source, min_clip_seconds=2.0)
    assert [r["reject_reason"] for r in padded] == ["", "", ""]
    assert abs(padded[2]["duration_seconds"] - 3.0) < 1e-3 and not padded[2]["audio"][3 * C.SAMPLE_RATE + 1:].any()


def test_resume_skips_done_clips_but_keeps_the_full_count(tmp_path):
    write_tone_track(str(tmp_path / "t.wav"), 2 * C.CLIP_SECONDS + 6.0, 16_000, 1, "wav")
    (source,) = sources.discover([str(tmp_path)])
    rows = process_track(source)
    done = frozenset(r["clip_id"] for r in rows[:2])
    rest = process_track(source, skip_clip_ids=done)
    assert [r["clip_index"] for r in rest] == [2] and rest[0]["track_clip_count"] == 3
    np.testing.assert_array_equal(rest[0]["audio"], rows[2]["audio"])
    assert process_track(source, skip_clip_ids=frozenset(r["clip_id"] for r in rows)) == []


def test_missing_silent_threshold_metadata_precedence_and_no_exceptions(tmp_path):
    from mutagen.id3 import ID3, TIT2, TPE1
    write_tone_track(str(tmp_path / "quiet.mp3"), 6.0, 44_100, 2, "mp3")
    tags = ID3()
    tags.add(TIT2(encoding=3, text="Embedded title"))
    tags.add(TPE1(encoding=3, text="Embedded artist"))
    tags.save(str(tmp_path / "quiet.mp3"))
    (tmp_path / "metadata.jsonl").write_text(
        json.dumps({"file_name": "quiet.mp3", "title": "Manifest title", "caption": "c"}) + "\n"
        + json.dumps({"file_name": "lost.wav", "caption": "gone"}) + "\n")
    found = {os.path.basename(s["source_uri"]): s for s in sources.discover([str(tmp_path)])}
    (lost,) = process_track(found["lost.wav"])
    assert (lost["reject_stage"], lost["reject_reason"], lost["clip_index"]) == ("decode", "missing", -1)
    assert lost["metadata"] == {"caption": "gone"}
    (row,) = process_track(found["quiet.mp3"])
    assert row["metadata"] == {"title": "Manifest title", "artist": "Embedded artist", "caption": "c"}
    (strict,) = process_track(found["quiet.mp3"], silence_dbfs=0.0)      # the threshold is configurable
    assert strict["reject_reason"] == "silent" and "dBFS" in strict["reject_detail"]
    (broken,) = process_track({"source_uri": str(tmp_path), "track_id": "0" * 16, "metadata": {}})
    assert broken["reject_reason"] in ("missing", "unreadable", "error") and broken["clip_index"] == -1


def test_demo_corpus_small_end_to_end(tmp_path):
    from pipelines.corpus.demo import build
    build(str(tmp_path), small=True)
    rows = [r for s in sources.discover([str(tmp_path)]) for r in process_track(s)]
    reasons = {}
    for r in rows:
        reasons[r["reject_reason"]] = reasons.get(r["reject_reason"], 0) + 1
    assert reasons.get("empty") == 1 and reasons.get("unreadable") == 1          # the two broken files
    assert 8 <= reasons[""] <= 16
    by_name = {os.path.basename(r["source_uri"]): r for r in rows}
    if "ambi_piano.flac" in by_name:                                             # Debian sonic-pi-samples installed
        assert by_name["ambi_piano.flac"]["reject_reason"] == "too_short"
    if "frontiers.mp3" in by_name:                                               # Debian asc-music installed
        assert by_name["frontiers.mp3"]["metadata"]["title"] == "Frontiers"      # embedded ID3
    assert by_name["calm_acoustic_1.opus"]["metadata"]["caption"].startswith("A calm acoustic")
    _clips_table(rows)


def test_clip_gates_measure_loudness_and_reject_quiet_and_clipped_clips():
    from pipelines.corpus.frontend import clip_gates

    t = np.arange(C.CLIP_SAMPLES) / C.SAMPLE_RATE
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    gates = dict(silence_dbfs=C.SILENCE_DBFS, min_lufs=-45.0, max_clipped_fraction=0.005)
    (reason, _), measured = clip_gates(0.3 * tone, **gates)
    assert reason == "" and -15 < measured["loudness_lufs"] < -5 and measured["clipped_fraction"] == 0.0
    assert -11.5 < measured["true_peak_dbtp"] < -10                      # 20 log10(0.3)
    (reason, detail), measured = clip_gates(0.003 * tone, **gates)      # RMS -53 dBFS: not silent, too quiet
    assert reason == "too_quiet" and "LUFS" in detail and measured["loudness_lufs"] < -45
    (reason, detail), measured = clip_gates(np.clip(3 * tone, -1, 1), **gates)
    assert reason == "clipped" and measured["clipped_fraction"] > 0.5 and "dBTP" in detail
    (reason, _), measured = clip_gates(np.zeros(C.CLIP_SAMPLES, np.float32), **gates)
    assert reason == "silent"
    (reason, _), measured = clip_gates(np.full(10, np.nan, np.float32), **gates)
    assert reason == "non_finite" and np.isnan(measured["loudness_lufs"])


def test_loudness_normalisation_levels_clips_before_the_mel():
    """Off: every clip is peak-normalised (a quiet and a loud copy give one mel). On: each clip is gained to the
    target loudness, a loud clip's peak capped at 1.0, and the mel moves by exactly that gain."""
    from pipelines.corpus import audio, loudness
    from pipelines.corpus.frontend import add_log_mel

    t = np.arange(C.CLIP_SAMPLES) / C.SAMPLE_RATE
    tone = (np.sin(2 * np.pi * 440 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 0.5 * t))).astype(np.float32)
    clips = np.stack([0.05 * tone, 0.8 * tone])
    batch = {"reject_reason": np.array(["", ""], dtype=object), "audio": clips,
             "duration_seconds": np.full(2, C.CLIP_SECONDS)}
    plain = add_log_mel(dict(batch))["mel"]
    above = plain[0] > np.log(C.LOG_MEL_FLOOR) + 4                    # well above the floor (rounding lives there)
    np.testing.assert_allclose(plain[0][above], plain[1][above], atol=1e-3)   # the peak step hides the gain
    levelled = add_log_mel(dict(batch), loudness_target=-30.0)["mel"]
    peak = loudness.loudness_peak(clips[0], -30.0)
    assert 0.0 < peak < 1.0 and peak == pytest.approx(loudness.loudness_peak(clips[1], -30.0), rel=1e-3)
    expected = audio.clips_to_log_mel(clips[:1], peaks=[peak])[0]
    np.testing.assert_allclose(levelled[0], expected, atol=1e-4)
    loud = np.log(peak / C.PEAK_LEVEL)                                  # the mel shifts by ln(gain) above the floor
    assert np.median(levelled[0][above] - plain[0][above]) == pytest.approx(loud, abs=1e-3)
    assert loudness.loudness_peak(clips[0], 0.0) == 1.0                 # a target too loud is capped: nothing clips
    assert loudness.loudness_peak(np.zeros(C.CLIP_SAMPLES, np.float32), -23.0) == C.PEAK_LEVEL
