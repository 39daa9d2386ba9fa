"""A hostile-input round: containers, sample formats, broken files, playlists and concat lists under audio
names, odd names and links, each with its expected outcome (docs/inputs.md holds the table). The front end and
discovery run directly, in this process; S3 keys and a whole run are in tests/e2e/test_hostile_inputs.py."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import unicodedata

import numpy as np
import pytest
import soundfile as sf

from pipelines.corpus import audio, sources
from pipelines.corpus.frontend import process_track
from tests.audio_fixtures import decode_with_peak_memory

REAL_MUSIC = "/usr/share/games/asc/music/frontiers.mp3"       # Debian asc-music: 22.05 kHz stereo MP3
pytestmark = pytest.mark.skipif(not os.path.exists(REAL_MUSIC) or not shutil.which("ffmpeg"),
                                reason="needs ffmpeg and the Debian asc-music package")


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], check=True, timeout=300)


def excerpt(path: str, *codec: str, seconds: float = 6.0, start: float = 30.0) -> str:
    """`seconds` of real music from REAL_MUSIC, encoded with the given ffmpeg output options."""
    ffmpeg("-ss", str(start), "-t", str(seconds), "-i", REAL_MUSIC, *codec, path)
    return path


def outcome(path: str) -> set[str]:
    """The set of reject reasons of a file's rows ("" = a kept clip)."""
    (source,) = sources.discover([path])
    return {r["reject_reason"] for r in process_track(source)}


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


@pytest.fixture(scope="module")
def containers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("containers")
    return {name: excerpt(str(folder / name), *codec) for name, codec in CONTAINERS.items()}


@pytest.mark.parametrize("name", sorted(CONTAINERS))
def test_every_container_and_sample_format_gives_a_kept_clip(containers, name):
    assert sources.is_audio(name)
    decoded = audio.decode(containers[name])
    assert decoded.seconds == pytest.approx(6.0, abs=0.1)
    assert np.isfinite(decoded.audio).all() and np.abs(decoded.audio).max() > 0.01
    assert outcome(containers[name]) == {""}
    if name.endswith((".webm", ".mka", ".mkv", ".mp4", ".m4a")):
        assert decoded.decoder == "ffmpeg", "libsndfile has no demuxer for these"
    if name == "six_channels.flac":
        assert decoded.channels == 6


def test_broken_containers(tmp_path):
    real = excerpt(str(tmp_path / "real.mp3"), "-c:a", "libmp3lame", seconds=12.0)
    flac = excerpt(str(tmp_path / "real.flac"), "-c:a", "flac", seconds=12.0)
    data_mp3, data_flac = open(real, "rb").read(), open(flac, "rb").read()
    cases = {
        # An MP3 cut in half is a valid shorter stream: what remains (~6 s, one clip) is kept.
        "half.mp3": (data_mp3[: len(data_mp3) // 2], {""}),
        # Only the first frames: shorter than min_clip_seconds.
        "head.mp3": (data_mp3[:4096], {"too_short"}),
        # FLAC cut mid-frame: both decoders report corrupt data.
        "half.flac": (data_flac[: len(data_flac) // 2], {"unreadable"}),
        "zero.wav": (b"", {"empty"}),
        "text.mp3": (b"this is a text file with an .mp3 name\n" * 50, {"unreadable"}),
        "header_only.wav": (data_flac[:0] + sf_header(), {"empty"}),
    }
    for name, (data, expected) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert outcome(str(tmp_path / name)) == expected, name


def sf_header() -> bytes:
    """A WAV file with a valid header and no samples."""
    import io

    buffer = io.BytesIO()
    sf.write(buffer, np.zeros((0, 2), np.float32), 44_100, format="WAV")
    return buffer.getvalue()


def test_long_track_decodes_within_a_memory_bound(tmp_path):
    """Decoding streams native-rate blocks: peak memory follows the 16 kHz mono result, not the file.

    20 minutes of 44.1 kHz stereo (the whole native signal would be 5.5x the result as float32); the same bound
    holds for a 3-hour track, whose result is 691 MB (docs/inputs.md)."""
    long = str(tmp_path / "long.wav")
    ffmpeg("-stream_loop", "-1", "-i", REAL_MUSIC, "-t", "1200", "-ar", "44100", "-c:a", "pcm_s16le", long)
    decoded, peak = decode_with_peak_memory(long)
    result = decoded.audio.nbytes
    assert decoded.seconds == pytest.approx(1200, abs=0.5)
    native = 1200 * 44_100 * 2 * 4
    assert peak < 2.2 * result + 32 * 2**20 < native, (peak / 2**20, result / 2**20)   # list + concatenate


UNICODE_NAMES = ["🎵 emoji 🎶.flac", "שיר עברי.flac", "موسيقى.flac", "Zoë – ünïcødé ♪.flac"]


def test_unicode_names_nfc_and_nfd_and_bytes_that_are_not_utf8(tmp_path):
    base = excerpt(str(tmp_path / "base.flac"), "-c:a", "flac")
    names = UNICODE_NAMES + [unicodedata.normalize("NFC", "café.flac"), unicodedata.normalize("NFD", "café.flac")]
    for i, name in enumerate(names):
        data, rate = sf.read(base)
        sf.write(str(tmp_path / name), data * (0.5 + 0.05 * i), rate)     # distinct content: no duplicates
    bad = os.fsdecode(b"caf\xe9 latin-1.flac")
    shutil.copyfile(base, tmp_path / bad)
    os.remove(base)
    found = {s["source_uri"]: s for s in sources.discover([str(tmp_path)])}
    # NFC and NFD spell different bytes: on Linux they are two files, two inputs, two track ids.
    assert len(found) == len(names) + 1 and len({s["track_id"] for s in found.values()}) == len(found)
    for name in names:
        source = found[str(tmp_path / name)]
        assert {r["reject_reason"] for r in process_track(source)} == {""}, name
    printable = str(tmp_path / "caf\\xe9 latin-1.flac")
    source = found[printable]
    assert source["problem"] == "bad_file_name" and source["track_id"] == sources.track_id(str(tmp_path / bad))
    (row,) = process_track(source)
    assert row["reject_reason"] == "bad_file_name" and row["source_uri"] == printable
    row["source_uri"].encode("utf-8")          # storable as a Parquet string


def test_links_loops_and_special_files_are_each_accounted_once(tmp_path):
    music = tmp_path / "music"
    (music / "album").mkdir(parents=True)
    for i in range(4):
        excerpt(str(music / "album" / f"{i}.flac"), "-c:a", "flac", seconds=0.5, start=10 + i)
    os.symlink("..", music / "album" / "loop")                  # a loop: music/album/loop -> music
    os.symlink(music / "album", music / "same album")          # a second name for a folder
    os.symlink(music / "album" / "0.flac", music / "alias.flac")
    os.link(music / "album" / "1.flac", music / "hard.flac")
    os.symlink(tmp_path / "gone.flac", music / "dangling.flac")
    os.mkfifo(music / "pipe.wav")                               # never opened: it would block a reader
    (music / "cover.jpg").write_bytes(b"\xff\xd8\xff")
    (music / "notes.txt").write_text("liner notes")
    (music / "list.m3u").write_text("album/0.flac\n")
    (music / ".DS_Store").write_bytes(b"\0")
    (music / "._0.flac").write_bytes(b"\0")                    # AppleDouble: named like audio, is not
    (music / "_intro.flac").write_bytes(open(music / "album" / "2.flac", "rb").read())
    found = sources.discover_all([str(music)])
    assert [s["source_uri"] for s in found.sources] == sorted(
        [str(music / "_intro.flac")] + [str(music / "album" / f"{i}.flac") for i in range(4)])
    summary = found.ignored.as_dict()
    assert summary["by_kind"] == {"broken_link": 1, "hidden": 2, "image": 1, "playlist": 1, "same_file": 2,
                                  "seen_folder": 2, "special": 1, "text": 1}
    assert summary["count"] == 11 and len(summary["examples"]) == 11
    json.dumps(summary)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file anyway (these tests run as root)")
def test_unreadable_permissions_are_quarantined(tmp_path):
    path = excerpt(str(tmp_path / "locked.flac"), "-c:a", "flac")
    os.chmod(path, 0)
    assert outcome(path) == {"unreadable"}


# ------------------------------------------------------------------ playlists and reference files under audio names

@pytest.fixture(scope="module")
def secret(tmp_path_factory):
    """A real AAC file in another folder, and its decoded audio: what a playlist must never leak."""
    folder = tmp_path_factory.mktemp("some") / "other" / "folder"
    folder.mkdir(parents=True)
    path = excerpt(str(folder / "secret.aac"), "-c:a", "aac", "-b:a", "96k", seconds=12.0)
    return path, audio.decode(path).audio


def refused(path: str, container: str | None, secret_audio: np.ndarray) -> dict:
    """The file's one row: quarantined at decode (not_audio naming `container`, or unreadable when None),
    without the secret's audio anywhere; and decode() raises."""
    rows = process_track(sources.discover([path])[0])
    assert len(rows) == 1, f"decoded into {len(rows)} rows: {[r['reject_reason'] for r in rows]}"
    row = rows[0]
    assert row["reject_stage"] == "decode" and not row["audio"].any(), row
    if container is None:
        assert row["reject_reason"] in ("unreadable", "not_audio"), row
    else:
        assert row["reject_reason"] == "not_audio" and f"content is '{container}'" in row["reject_detail"], row
        with pytest.raises(audio.NotAudioError) as caught:
            audio.decode(path)
        assert caught.value.container == container
    try:
        leaked = audio.decode(path).audio
    except audio.DecodeError:
        return row
    pytest.fail(f"decoded {len(leaked)} samples (the secret has {len(secret_audio)})")


def test_the_reported_hls_playlist_named_mp3_is_not_decoded(tmp_path, secret):
    # The exact file of the report. FFmpeg 5.1 only takes #EXTM3U for HLS with a TARGETDURATION, STREAM-INF or
    # MEDIA-SEQUENCE tag, so here it is merely unreadable; the next test has the tag.
    path, secret_audio = secret
    song = tmp_path / "song.mp3"
    song.write_text(f"#EXTM3U\n#EXTINF:12,\nfile://{path}\n")
    refused(str(song), None, secret_audio)


@pytest.mark.parametrize("segment", ["file://{path}", "{path}", "secret"])
def test_an_hls_playlist_named_mp3_is_quarantined_not_audio(tmp_path, secret, segment):
    """Before the format whitelist ffmpeg decoded the 12 s of secret.aac as the song (and a playlist without
    #EXT-X-ENDLIST made it wait for updates for ever)."""
    path, secret_audio = secret
    segment = segment.format(path=path)
    if segment == "secret":           # a relative segment, as a playlist beside its media would have
        shutil.copyfile(path, tmp_path / "secret.aac")
        segment = "secret.aac"
    for name, end in (("song.mp3", "#EXT-X-ENDLIST\n"), ("live.mp3", "")):
        song = tmp_path / name
        song.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:12\n#EXTINF:12,\n{segment}\n{end}")
        refused(str(song), "hls", secret_audio)


def test_an_hls_playlist_with_an_http_segment_makes_no_connection(tmp_path, secret):
    """SSRF: a cluster worker must not fetch the URLs a file names. A listener on 127.0.0.1 stands in for the
    target; the kernel completes a TCP connect without accept(), so any attempt would be in its queue."""
    import socket

    _, secret_audio = secret
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        song = tmp_path / "song.flac"
        song.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:12\n#EXTINF:12,\nhttp://127.0.0.1:{port}/secret.aac\n"
                        "#EXT-X-ENDLIST\n")
        refused(str(song), "hls", secret_audio)
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()                 # nothing connected


@pytest.mark.parametrize("name", ["song.wav", "song.flac", "song.m4a"])
def test_an_ffconcat_list_under_an_audio_name_is_quarantined_not_audio(tmp_path, secret, name):
    """ffconcat's own safe mode refuses absolute paths, not a relative one: before the whitelist song.wav
    listing `file secret.aac` decoded to the secret's 12 s."""
    path, secret_audio = secret
    shutil.copyfile(path, tmp_path / "secret.aac")
    for listed in ("secret.aac", path):
        song = tmp_path / name
        song.write_text(f"ffconcat version 1.0\nfile '{listed}'\n")
        refused(str(song), "concat", secret_audio)


def test_every_ffmpeg_call_on_user_files_has_the_whitelists():
    """The decoder's probe and decode both pass FFMPEG_INPUT_OPTIONS (a file: URL, file protocol only, audio
    demuxers only); nothing else in pipelines/ runs ffmpeg on an input (demo.py reads the Debian package's files)."""
    import inspect

    for function in (audio._ffmpeg_probe, audio._ffmpeg_blocks):
        assert "*ffmpeg_input(path)" in inspect.getsource(function)
    assert audio.ffmpeg_input("x.mp3")[:4] == ["-protocol_whitelist", "file", "-format_whitelist",
                                              ",".join(audio.AUDIO_CONTAINERS)]
    assert audio.ffmpeg_input("http:x.mp3")[-1] == "file:" + os.path.abspath("http:x.mp3")
    assert not audio.REFERENCE_FORMATS & set(audio.AUDIO_CONTAINERS)
