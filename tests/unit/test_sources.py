"""Discovery of folders, manifests (CSV/JSONL/Parquet), audiofolder metadata.csv, path escapes, embedded tags."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.corpus import sources
from tests.audio_fixtures import write_tone_track


def _tid(path: str) -> str:
    return hashlib.sha256(path.encode()).hexdigest()[:16]


@pytest.fixture
def music(tmp_path):
    """A folder with two tracks, one in a sub-folder, plus files discovery must ignore."""
    root = tmp_path / "music"
    (root / "sub").mkdir(parents=True)
    write_tone_track(str(root / "b.wav"), 0.5, 16_000, 1, "wav")
    write_tone_track(str(root / "sub" / "a.FLAC"), 0.5, 16_000, 1, "flac")
    (root / "notes.txt").write_text("not audio")
    (root / "cover.jpg").write_bytes(b"\xff\xd8")
    return root


def test_folder_discovery_is_sorted_with_track_ids(music):
    found = sources.discover([str(music)])
    uris = [s["source_uri"] for s in found]
    assert uris == sorted([str(music / "b.wav"), str(music / "sub" / "a.FLAC")])
    for s in found:
        assert s["track_id"] == _tid(s["source_uri"]) and s["metadata"] == {}
    assert sources.discover([str(music / "b.wav")])[0]["source_uri"] == str(music / "b.wav")


def test_every_audio_extension_is_found(tmp_path):
    names = [f"x{i}.{ext}" for i, ext in enumerate(
        ["wav", "flac", "ogg", "oga", "opus", "mp3", "m4a", "aac", "aiff", "aif", "WAV", "txt", "mid"])]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    found = {os.path.basename(s["source_uri"]) for s in sources.discover([str(tmp_path)])}
    assert found == set(names) - {"x11.txt", "x12.mid"}


def test_audiofolder_metadata_csv_is_picked_up_and_missing_files_kept(music):
    with open(music / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "caption", "tags", "genre"])
        writer.writerow(["b.wav", "A bright tone.", "synth, bright", "electronic"])
        writer.writerow(["sub/a.FLAC", "", "", ""])
        writer.writerow(["gone.wav", "Listed but missing.", "", ""])
    found = {os.path.basename(s["source_uri"]): s for s in sources.discover([str(music)])}
    assert set(found) == {"b.wav", "a.FLAC", "gone.wav"}
    assert found["b.wav"]["metadata"] == {"caption": "A bright tone.", "tags": "synth, bright", "genre": "electronic"}
    assert found["a.FLAC"]["metadata"] == {}                     # empty cells are not metadata
    assert found["gone.wav"]["source_uri"] == str(music / "gone.wav")


@pytest.mark.parametrize("kind,column", [("csv", "file_name"), ("jsonl", "path"), ("parquet", "audio"),
                                         ("parquet", "file_name")])
def test_manifests_resolve_relative_paths_and_keep_metadata(music, tmp_path, kind, column):
    rows = [{column: "music/b.wav", "caption": "Tone B", "bpm": 120, "tags": ["a", "b"]},
            {column: str(music / "sub" / "a.FLAC"), "caption": None, "bpm": 90, "tags": []}]
    path = tmp_path / f"manifest.{kind}"
    if kind == "csv":
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[column, "caption", "bpm", "tags"])
            writer.writeheader()
            writer.writerows({**r, "tags": ", ".join(r["tags"])} for r in rows)
    elif kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        if column == "audio":       # HF datasets' Audio feature stores {"bytes", "path"}
            rows = [{**r, "audio": {"bytes": None, "path": r["audio"]}} for r in rows]
        pq.write_table(pa.Table.from_pylist(rows), path)
    found = sources.discover([str(path)])
    assert [s["source_uri"] for s in found] == [str(music / "b.wav"), str(music / "sub" / "a.FLAC")]
    assert found[0]["metadata"] == {"caption": "Tone B", "bpm": "120", "tags": "a, b"}
    assert found[1]["metadata"] == {"bpm": "90"}


@pytest.mark.parametrize("entry", ["../outside.wav", "sub/../../outside.wav", "/etc/passwd", "."])
def test_manifest_paths_escaping_the_manifest_folder_are_refused(tmp_path, entry):
    (tmp_path / "data").mkdir()
    manifest = tmp_path / "data" / "m.jsonl"
    manifest.write_text(json.dumps({"file_name": "ok.wav"}) + "\n" + json.dumps({"file_name": entry}) + "\n")
    with pytest.raises(sources.ManifestError, match="escapes the manifest folder"):
        sources.discover([str(manifest)])


def test_manifest_without_path_column_and_missing_input_fail_clearly(tmp_path):
    (tmp_path / "m.csv").write_text("title\nx\n")
    with pytest.raises(sources.ManifestError, match="no path column"):
        sources.discover([str(tmp_path / "m.csv")])
    with pytest.raises(FileNotFoundError):
        sources.discover([str(tmp_path / "nowhere")])


def test_several_inputs_merge_metadata_later_wins(music, tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"file_name": "music/b.wav", "caption": "from manifest"}) + "\n")
    found = sources.discover([str(music), str(manifest)])
    assert len(found) == 2
    assert next(s for s in found if s["source_uri"].endswith("b.wav"))["metadata"] == {"caption": "from manifest"}


def test_embedded_tags_id3_mp3(tmp_path):
    from mutagen.id3 import COMM, ID3, TALB, TBPM, TCON, TDRC, TIT2, TKEY, TPE1
    path = str(tmp_path / "t.mp3")
    write_tone_track(path, 1.0, 44_100, 2, "mp3")
    tags = ID3()
    for frame in (TIT2(encoding=3, text="Night Drive"), TPE1(encoding=3, text="The Testers"),
                  TALB(encoding=3, text="Fixtures"), TCON(encoding=3, text="Synthwave"),
                  COMM(encoding=3, lang="eng", desc="", text="made in a test"), TBPM(encoding=3, text="104"),
                  TKEY(encoding=3, text="Am"), TDRC(encoding=3, text="2024")):
        tags.add(frame)
    tags.save(path)
    expected = {"title": "Night Drive", "artist": "The Testers", "album": "Fixtures", "genre": "Synthwave",
                "comment": "made in a test", "bpm": "104", "key": "Am", "date": "2024"}
    assert sources.read_embedded_tags(path) == expected
    with open(path, "rb") as f:
        assert sources.read_embedded_tags(f.read()) == expected


@pytest.mark.parametrize("fmt", ["flac", "ogg", "opus"])
def test_embedded_tags_vorbis_comments(tmp_path, fmt):
    import mutagen
    path = str(tmp_path / f"t.{fmt}")
    write_tone_track(path, 1.0, 48_000, 1, fmt)
    audio = mutagen.File(path)
    audio["TITLE"] = "Dawn"
    audio["ARTIST"] = ["A", "B"]
    audio["GENRE"] = "ambient"
    audio["BPM"] = "70"
    audio["INITIALKEY"] = "C"
    audio["DESCRIPTION"] = "soft pads"
    audio.save()
    assert sources.read_embedded_tags(path) == {"title": "Dawn", "artist": "A, B", "genre": "ambient", "bpm": "70",
                                                "key": "C", "comment": "soft pads"}


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed (needed to encode AAC)")
def test_embedded_tags_mp4_and_untagged_or_garbage(tmp_path):
    from mutagen.mp4 import MP4
    wav, m4a = str(tmp_path / "t.wav"), str(tmp_path / "t.m4a")
    write_tone_track(wav, 1.0, 44_100, 1, "wav")
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", wav, "-c:a", "aac", m4a], check=True)
    tagged = MP4(m4a)
    tagged["\xa9nam"] = ["Harbour"]
    tagged["\xa9ART"] = ["Quay"]
    tagged["tmpo"] = [96]
    tagged.save()
    assert sources.read_embedded_tags(m4a) == {"title": "Harbour", "artist": "Quay", "bpm": "96"}
    assert sources.read_embedded_tags(wav) == {}
    assert sources.read_embedded_tags(b"garbage" * 10) == {}
