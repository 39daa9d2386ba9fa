"""Hostile inputs that need more than one process: S3 keys with spaces and Unicode through discovery and the
front end (SeaweedFS), and a whole prepare_corpus run that accounts for ignored files and a non-UTF-8 name
(docs/inputs.md holds the table; the single-file cases are in tests/unit/test_hostile_inputs.py)."""
from __future__ import annotations

import json
import os
import shutil

from pipelines import storage
from pipelines.corpus import sources
from pipelines.corpus.frontend import process_track
from tests.unit.test_hostile_inputs import excerpt
from tests.unit.test_hostile_inputs import pytestmark  # noqa: F401 - the same skip: needs ffmpeg and asc-music


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
