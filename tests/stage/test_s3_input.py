"""S3 inputs are streamed to a local temp file, decoded from it and the file removed (error or not): against a
real S3 server (SeaweedFS on 127.0.0.1). Before, the whole object was read into memory first."""
from __future__ import annotations

import os
import tempfile
import tracemalloc

import numpy as np
import pytest

from pipelines import storage
from pipelines.corpus import audio, frontend, sources
from tests.audio_fixtures import write_tone_track


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """tempfile's folder for this test only, so every temp file it leaves can be seen."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def upload(s3_server, local: str, key: str) -> dict:
    uri = s3_server.uri(f"inputs-{os.getpid()}", key)
    with open(local, "rb") as f:
        storage.write_bytes_atomic(uri, f.read())
    (source,) = sources.discover([uri])
    return source


def traced(source: dict) -> tuple[list[dict], int]:
    """analyse_track's rows up to the first kept clip, and the peak of traced memory while it ran."""
    tracemalloc.start()
    try:
        rows, _ = frontend.analyse_track(source, until_kept=True)
        return rows, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_an_s3_track_decodes_as_the_local_file_from_a_temp_file_it_removes(s3_server, tmp_path, private_tmp):
    import mutagen.flac

    local = str(tmp_path / "song.flac")
    write_tone_track(local, seconds=12.0, fmt="flac", seed=4)
    tags = mutagen.flac.FLAC(local)
    tags["title"] = "Streamed"
    tags.save()
    source = upload(s3_server, local, "album/song.flac")
    rows = frontend.process_track(source)
    expected = frontend.process_track(sources.discover([local])[0])
    assert [r["reject_reason"] for r in rows] == [r["reject_reason"] for r in expected] == ["", "short_tail"]
    assert rows[0]["content_hash"] == expected[0]["content_hash"]
    np.testing.assert_array_equal(rows[0]["audio"], expected[0]["audio"])
    assert rows[0]["metadata"]["title"] == "Streamed"          # embedded tags read from the temp file
    assert rows[0]["source_uri"] == source["source_uri"]
    assert os.listdir(private_tmp) == []


def test_the_temp_file_is_removed_when_decoding_fails(s3_server, tmp_path, private_tmp, monkeypatch):
    local = str(tmp_path / "song.wav")
    write_tone_track(local, seconds=6.0, fmt="wav")
    source = upload(s3_server, local, "failing/song.wav")
    seen = []

    def crash(path):
        seen.append(os.path.exists(path) and os.path.dirname(path) == str(private_tmp))
        raise RuntimeError("decoder crashed")

    monkeypatch.setattr(audio, "decode", crash)
    (row,) = frontend.process_track(source)
    assert row["reject_reason"] == "error" and "decoder crashed" in row["reject_detail"]
    assert seen == [True] and os.listdir(private_tmp) == []


def test_missing_and_empty_objects_are_not_downloaded(s3_server, private_tmp):
    empty = s3_server.uri(f"inputs-{os.getpid()}", "empty.wav")
    storage.write_bytes_atomic(empty, b"")
    (row,) = frontend.process_track({"source_uri": empty, "track_id": "e", "metadata": {}})
    assert (row["reject_reason"], row["reject_detail"]) == ("empty", "zero-byte object")
    gone = s3_server.uri(f"inputs-{os.getpid()}", "gone.wav")
    (row,) = frontend.process_track({"source_uri": gone, "track_id": "g", "metadata": {}})
    assert row["reject_reason"] == "missing" and gone in row["reject_detail"]
    assert os.listdir(private_tmp) == []


def test_an_s3_track_costs_no_more_memory_than_the_local_file(s3_server, tmp_path, private_tmp):
    """Two minutes of 44.1 kHz stereo WAV (21 MB): decoded from S3 the traced peak stays within one copy chunk of
    the local decode's; reading the object whole (as before) adds the 21 MB file."""
    local = str(tmp_path / "long.wav")
    write_tone_track(local, seconds=120.0, fmt="wav", seed=2)
    size = os.path.getsize(local)
    source = upload(s3_server, local, "long/long.wav")
    local_rows, local_peak = traced(sources.discover([local])[0])
    s3_rows, s3_peak = traced(source)
    assert [r["clip_id"][16:] for r in s3_rows] == [r["clip_id"][16:] for r in local_rows] == ["-00000"]
    margin = storage.COPY_CHUNK_BYTES + 4 * 2**20
    assert size > margin
    assert s3_peak < local_peak + margin, (s3_peak / 2**20, local_peak / 2**20)
    assert os.listdir(private_tmp) == []
