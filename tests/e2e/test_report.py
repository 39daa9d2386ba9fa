"""The corpus data card on a real small corpus (prepare_corpus, tiny kit, real audio), opened in real Chromium."""
from __future__ import annotations

import csv
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipelines import storage
from pipelines.corpus.config import CorpusConfig
from pipelines.corpus.pipeline import prepare_corpus
from pipelines.corpus.report import charts_of, read_report_data, write_report
from pipelines.corpus.report.page import render
from schemas import constants
from tests.audio_fixtures import write_tone_track
from tests.chromium import check_page
from tests.unit.test_report import EVIL_ARTIST, EVIL_CAPTION, EVIL_LICENCE, chromium

# User strings that break a page that does not escape them.
TONE, TWO = "tone & <one>.flac", "it's \"two\".wav"


@pytest.fixture(scope="module")
def music():
    # A fixed folder: the track ids (and so the splits) hash the source paths.
    folder = Path(tempfile.gettempdir()) / "fluxmusic-test-report-music"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    write_tone_track(folder / TONE, seconds=12.0, sr=44_100, channels=2, fmt="flac")            # 1 clip + short tail
    write_tone_track(folder / TWO, seconds=16.0, sr=22_050, channels=1, fmt="wav", seed=3)      # 2 clips, padded tail
    open(folder / "zero_bytes.wav", "wb").close()                                              # quarantined: empty
    with open(folder / "metadata.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "caption", "artist", "album", "license", "tags"])
        writer.writerow([TWO, EVIL_CAPTION, EVIL_ARTIST, "Tests & Co", EVIL_LICENCE, "<b>bold</b>, r&b"])
    return folder


@pytest.fixture(scope="module")
def corpus(ray_local, music, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("report-corpus"))
    prepare_corpus(CorpusConfig(inputs=[str(music)], output=out, kit="tiny", valid_fraction=0.5, batch_size=4,
                                original_caption_probability=1.0), progress=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def report(corpus):
    return write_report(corpus)


def _sources(page: str) -> list[str]:
    return re.findall(r"""<(?:img|audio)[^>]*\ssrc='([^']*)'""", page)


def test_report_page_shows_the_corpus_with_every_user_string_escaped(corpus, report):
    assert report == storage.join(corpus, "report", "index.html")
    page = Path(report).read_text()
    assert "<script" not in page.lower(), "a caption became markup"
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page      # the original caption, escaped
    assert "Ann &amp; &lt;Bob&gt;" in page and "CC-BY-4.0 &quot;test&quot; &lt;i&gt;" in page  # attribution
    assert "&lt;b&gt;bold&lt;/b&gt;" in page                                 # a metadata tag
    assert "tone &amp; &lt;one&gt;.flac" in page                             # a file name
    for text in ("Quarantine", "empty", "short_tail", "Ignored inputs", "tiny://vae", "Caption mix", "Latents"):
        assert text in page, text
    ignored = json.loads(storage.read_bytes(storage.join(corpus, "manifest.json")))["ignored"]  # prepare_corpus records it
    assert f"{ignored['count']} files under the inputs were not taken as audio" in page
    data = read_report_data(corpus, audio=False)
    assert data.clips == 3 and len(data.samples) == 3                      # fewer clips than the default 12
    srcs = _sources(page)
    assert sum(s.startswith("audio/") for s in srcs) == 3 and sum(s.startswith("mel/") for s in srcs) == 3
    folder = Path(report).parent
    for src in srcs:
        assert src.startswith("data:image/png;base64,") or (folder / src).is_file(), src


def test_the_audio_beside_the_page_is_the_clip_cut_from_its_source(corpus, report):
    """Each WAV is the clip's real audio: decoded from source_uri at start_seconds for duration_seconds."""
    from pipelines.corpus.audio import decode

    data = read_report_data(corpus)
    for s in data.samples:
        wav, rate = sf.read(Path(report).parent / "audio" / f"{s.clip_id}.wav", dtype="float32")
        assert rate == constants.SAMPLE_RATE
        assert len(wav) == round(s.duration_seconds * constants.SAMPLE_RATE)
        start = round(s.start_seconds * constants.SAMPLE_RATE)
        source = decode(s.source_uri).audio[start:start + len(wav)]
        assert np.abs(wav - np.clip(source, -1, 1)).max() < 2e-4, s.clip_id   # PCM-16 rounding only
    assert len(data.loudness) == 3 and np.all(data.loudness < 0)            # RMS dBFS of the sampled clips


def test_ignored_inputs_are_shown_when_the_manifest_records_them(corpus):
    data = read_report_data(corpus, audio=False)
    data.manifest["ignored"] = {"count": 3, "by_kind": {"<text>": 2, "image": 1}, "examples": ["a&b <c>.txt"]}
    page = render(data, charts_of(data), {}, {})
    assert "not recorded" not in page
    assert "&lt;text&gt;" in page and "a&amp;b &lt;c&gt;.txt" in page


def test_report_job_writes_where_asked(corpus, tmp_path, capsys):
    from jobs.report import main

    assert main(["--corpus", corpus, "--output", str(tmp_path / "card"), "--sample", "2", "--seed", "5"]) == 0
    assert str(tmp_path / "card" / "index.html") in capsys.readouterr().out
    assert len(os.listdir(tmp_path / "card" / "audio")) == 2
    assert main(["--corpus", corpus, "--output", str(tmp_path / "card"), "--sample", "1"]) == 0
    assert len(os.listdir(tmp_path / "card" / "audio")) == 1 == len(os.listdir(tmp_path / "card" / "mel"))  # none left over
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "--sample" in capsys.readouterr().out


def test_report_of_an_s3_corpus_whose_sources_are_gone(s3_server, tmp_path):
    """s3:// in and out through pipelines.storage; sources that no longer exist are shown as such, not fatal."""
    from tests.corpus_fixture import write_tiny_corpus

    uri = f"s3://{s3_server.bucket}/report-tiny"
    write_tiny_corpus(uri, n_clips=6, files=2)
    page_uri = write_report(uri, sample=4)
    assert page_uri == f"{uri}/report/index.html"
    page = storage.read_bytes(page_uri).decode()
    assert page.count("no audio:") == 4 and "<audio" not in page
    assert "Tag vocabulary" in page and "metadata" in page


@chromium
def test_report_loads_in_chromium_without_errors(report, tmp_path):
    check = check_page(report)
    (tmp_path / "report.png").write_bytes(check.screenshot)
    assert check.problems == [], check.problems
    assert check.images >= 3 + 6 and check.audios == 3                     # mels + charts; one player per clip
    assert check.screenshot.startswith(b"\x89PNG") and len(check.screenshot) > 10_000


@chromium
def test_the_browser_check_catches_a_missing_image_and_audio(report, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(Path(report).parent, broken)
    mel = sorted((broken / "mel").iterdir())[0]
    wav = sorted((broken / "audio").iterdir())[-1]
    mel.unlink()
    wav.unlink()
    check = check_page(broken / "index.html")
    assert check.broken_images == [f"mel/{mel.name}"]
    assert check.broken_audio == [f"audio/{wav.name}"]
    assert any(mel.name in e for e in check.console_errors)
