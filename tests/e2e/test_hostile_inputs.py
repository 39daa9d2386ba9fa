"""A hostile-input round: containers, sample formats, broken files, odd names, links and S3 keys, each with its
expected outcome (docs/inputs.md holds the table). The front end and discovery run directly; one Ray run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from pipelines import storage
from pipelines.corpus import sources
from pipelines.corpus.frontend import process_track

REAL_MUSIC = "/usr/share/games/asc/music/frontiers.mp3"       # Debian asc-music: 22.05 kHz stereo MP3
pytestmark = pytest.mark.skipif(not os.path.exists(REAL_MUSIC) or not shutil.which("ffmpeg"),
                                reason="needs ffmpeg and the Debian asc-music package")


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], check=True, timeout=300)


def excerpt(path: str, *codec: str, seconds: float = 6.0, start: float = 30.0) -> str:
    """`seconds` of real music from REAL_MUSIC, encoded with the given ffmpeg output options."""
    ffmpeg("-ss", str(start), "-t", str(seconds), "-i", REAL_MUSIC, *codec, path)
    return path


CONTAINERS = {
    "opus.webm": ("-c:a", "libopus", "-b:a", "64k"),
    "vorbis.mka": ("-c:a", "libvorbis"),
    "audio_only.mkv": ("-c:a", "flac"),
    "aac.mp4": ("-c:a", "aac", "-b:a", "96k"),
    "aac.m4a": ("-c:a", "aac", "-b:a", "96k"),
    "alac.m4a": ("-c:a", "alac"),
    "pcm16.aiff": ("-c:a", "pcm_s16be"),
    "pcm24.wav": ("-c:a", "pcm_s24le"),
    "float64.wav": ("-c:a", "pcm_f64le"),
    "u8_8khz.wav": ("-c:a", "pcm_u8", "-ar", "8000", "-ac", "1"),
    "six_channels.flac": ("-c:a", "flac", "-ac", "6"),
}


UNICODE_NAMES = ["🎵 emoji 🎶.flac", "שיר עברי.flac", "موسيقى.flac", "Zoë – ünïcødé ♪.flac"]


def test_s3_keys_with_spaces_and_unicode(s3_server, tmp_path):
    local = excerpt(str(tmp_path / "x.flac"), "-c:a", "flac")
    prefix = f"s3://{s3_server.bucket}/hostile keys"
    keys = ["my album/01 first song.flac", "my album/02 ünï ♪.flac"]
    for key in keys:
        storage.write_bytes_atomic(f"{prefix}/{key}", open(local, "rb").read())
    storage.write_bytes_atomic(f"{prefix}/my album/cover art.jpg", b"\xff\xd8")
    found = sources.discover_all([prefix])
    assert [s["source_uri"] for s in found.sources] == [f"{prefix}/{k}" for k in keys]
    assert found.ignored.as_dict()["by_kind"] == {"image": 1}
    for source in found.sources:
        assert {r["reject_reason"] for r in process_track(source)} == {""}


def test_end_to_end_the_account_holds_ignored_files_and_bad_names(ray_local, tmp_path):
    from pipelines.corpus.config import CorpusConfig
    from pipelines.corpus.pipeline import prepare_corpus

    music = tmp_path / "music"
    music.mkdir()
    excerpt(str(music / "song.webm"), "-c:a", "libopus", seconds=6.0)
    shutil.copyfile(music / "song.webm", music / os.fsdecode(b"\xff\xfe name.webm"))
    os.symlink("..", music / "loop")
    (music / "cover.png").write_bytes(b"\x89PNG")
    output = str(tmp_path / "out")
    manifest = prepare_corpus(CorpusConfig(inputs=[str(music)], output=output, kit="tiny", batch_size=4),
                              progress=lambda *_: None)
    assert manifest["counts"]["inputs"] == 2 and manifest["counts"]["incomplete_tracks"] == 0
    assert manifest["counts"]["tracks_ok"] == 1 and manifest["counts"]["quarantined"] == {"bad_file_name": 1}
    assert manifest["ignored"]["by_kind"] == {"image": 1, "seen_folder": 1}
    assert json.loads(storage.read_bytes(storage.join(output, "manifest.json")))["ignored"] == manifest["ignored"]
