"""The corpus data card: the seeded clip sample, and what a report may delete or overwrite in its --output folder
(a fixture corpus with real audio, no Ray); the page of a real corpus, in Chromium, is tests/e2e/test_report.py."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from pipelines.corpus.report.data import sample_ids
from tests.chromium import CHROMIUM

# User strings that break a page that does not escape them.
EVIL_CAPTION = """<script>alert("x")</script> a calm & 'quoted' melody"""
EVIL_ARTIST = "Ann & <Bob>"
EVIL_LICENCE = 'CC-BY-4.0 "test" <i>'
TONE, TWO = "tone & <one>.flac", "it's \"two\".wav"


def test_the_sample_is_seeded_and_independent_of_row_order():
    ids = [f"t{i:03d}-00000" for i in range(100)]
    first = sample_ids(ids, 12, seed=0)
    assert sample_ids(list(np.random.default_rng(1).permutation(ids)), 12, seed=0) == first
    assert len(set(first)) == 12 and set(sample_ids(ids, 12, seed=1)) != set(first)
    assert sorted(sample_ids(ids[:5], 12, seed=0)) == ids[:5]


chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


# ------------------------------------------------------------------ what --output may delete (review D8)

@pytest.fixture(scope="module")
def corpus_with_audio(tmp_path_factory):
    """A tiny corpus (tests/corpus_fixture.py) whose clips point at real audio files: 2 tracks of 2 clips."""
    import pyarrow.parquet as pq

    from pipelines import storage
    from tests.audio_fixtures import write_tone_track
    from tests.corpus_fixture import write_tiny_corpus

    root = tmp_path_factory.mktemp("report-output")
    corpus, music = root / "corpus", root / "music"
    music.mkdir()
    write_tiny_corpus(corpus, n_clips=4, clips_per_track=2, files=1, index=False)
    shard = corpus / "corpus" / "part-000.parquet"
    table = pq.read_table(shard)
    uris = []
    for uri in table.column("source_uri").to_pylist():
        local = str(music / uri.rsplit("/", 1)[1])
        if not os.path.exists(local):
            write_tone_track(local, seconds=21.0, sr=16_000, channels=1, seed=len(uris))
        uris.append(local)
    table = table.set_column(table.schema.get_field_index("source_uri"), "source_uri", pa.array(uris))
    storage.write_parquet_atomic(table, str(shard))
    return str(corpus)


def _files(folder) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), folder) for d, _, names in os.walk(folder) for f in names}


def test_report_output_deletes_only_its_own_files(corpus_with_audio, tmp_path):
    from jobs.report import main
    from pipelines.corpus.report import MARKER, own_files

    music = tmp_path / "my music"              # a user's folder that happens to have audio/ and mel/
    (music / "audio").mkdir(parents=True)
    (music / "mel").mkdir()
    (music / "audio" / "song.wav").write_bytes(b"the user's song")
    (music / "mel" / "a.png").write_bytes(b"the user's picture")
    assert main(["--corpus", corpus_with_audio, "--output", str(music), "--sample", "3", "--seed", "1"]) == 0
    first = own_files(str(music))
    assert len(first) == 6 and {f.split("/")[0] for f in first} == {"audio", "mel"}
    assert _files(music) == {"audio/song.wav", "mel/a.png", "index.html", MARKER, *first}
    # A second run into the same folder replaces its own files and still leaves the user's.
    assert main(["--corpus", corpus_with_audio, "--output", str(music), "--sample", "1", "--seed", "2"]) == 0
    second = own_files(str(music))
    assert len(second) == 2
    assert _files(music) == {"audio/song.wav", "mel/a.png", "index.html", MARKER, *second}
    assert (music / "audio" / "song.wav").read_bytes() == b"the user's song"


def test_a_marker_names_nothing_but_report_files_and_a_foreign_page_is_refused(corpus_with_audio, tmp_path):
    import json

    from pipelines.corpus.report import MARKER, own_files, write_report
    from pipelines.errors import UserPathError

    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("<p>my page</p>")
    with pytest.raises(UserPathError, match="no report wrote"):
        write_report(corpus_with_audio, str(site), sample=1)
    assert (site / "index.html").read_text() == "<p>my page</p>"
    card = tmp_path / "card"
    (card / "audio").mkdir(parents=True)
    (card / "keep.txt").write_text("x")
    (card / "audio" / "song.wav").write_text("x")
    (card / MARKER).write_text(json.dumps({"files": ["../site/index.html", "keep.txt", "audio/../keep.txt",
                                                     "audio/song.wav", 3]}))
    assert own_files(str(card)) == ["audio/song.wav"]         # a hand-edited marker can only name sample files
    write_report(corpus_with_audio, str(card), sample=1)
    assert (site / "index.html").exists() and (card / "keep.txt").exists()
    assert not (card / "audio" / "song.wav").exists()       # it was listed as the report's own
