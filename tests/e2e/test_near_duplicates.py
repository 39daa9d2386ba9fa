"""Near-duplicates and loudness as stages of the corpus job: one copy of a recording kept across re-encodes,
trims and runs, the others quarantined naming it; every corpus clip carries its loudness."""
from __future__ import annotations

import re
import shutil

import pyarrow as pa

from pipelines import storage
from pipelines.corpus import dedup, loudness
from pipelines.corpus.config import CorpusConfig
from pipelines.corpus.fingerprint import ITEMS_PER_SECOND
from pipelines.corpus.pipeline import prepare_corpus
from schemas.manifest import CORPUS_DIR, QUARANTINE_DIR
from tests.e2e.test_dedup import _account
from tests.music_variants import TRIM_SECONDS, make_variants


def _table(output: str, folder: str) -> pa.Table:
    return pa.concat_tables([storage.read_parquet(f) for f in storage.list_files(storage.join(output, folder), ".parquet")])


def _near_details(output: str) -> dict[str, str]:
    """{file name: detail} of the near_duplicate quarantine rows."""
    rows = _table(output, QUARANTINE_DIR).to_pylist()
    return {r["source_uri"].rsplit("/", 1)[-1]: r["detail"] for r in rows if r["reason"] == "near_duplicate"}


def test_one_copy_of_a_recording_is_kept_across_reencodes_trims_and_runs(ray_local, tmp_path):
    (tmp_path / "made").mkdir()
    made = make_variants(str(tmp_path / "made"))
    first, second = tmp_path / "first", tmp_path / "a-second"      # the second folder's URIs sort first
    first.mkdir(), second.mkdir()
    for name in ("excerpt-frontiers", "excerpt-machine_wars", "mp3", "trimmed"):
        shutil.copy(made[name], first)
    shutil.copy(made["opus"], second)
    output = str(tmp_path / "out")
    config = CorpusConfig(inputs=[str(first)], output=output, kit="tiny", batch_size=4)

    prepare_corpus(config, progress=lambda *_: None)
    kept = str(first / "excerpt-frontiers.flac")
    assert _account(output) == {"excerpt-frontiers.flac": "", "excerpt-machine_wars.flac": "",
                                "mp3.mp3": "near_duplicate", "trimmed.flac": "near_duplicate"}
    details = _near_details(output)
    assert all(kept in d and "Chromaprint agreement" in d for d in details.values()), details
    offset = int(re.search(r"at offset (-?\d+)", details["trimmed.flac"]).group(1))
    assert abs(offset / ITEMS_PER_SECOND - TRIM_SECONDS) < 0.3, details          # it names where the trim starts
    prints = dedup.load_fingerprints(output, 0.83)
    assert sorted(u.rsplit("/", 1)[-1] for u in prints.source_uris) == ["excerpt-frontiers.flac",
                                                                        "excerpt-machine_wars.flac"]

    corpus = _table(output, CORPUS_DIR).to_pydict()
    for lufs, peak, clipped in zip(corpus["loudness_lufs"], corpus["true_peak_dbtp"], corpus["clipped_fraction"]):
        assert loudness.MIN_LUFS <= lufs < 0 and -40 < peak < 3 and 0 <= clipped <= loudness.MAX_CLIP_FRACTION
    assert len(set(corpus["loudness_lufs"])) > 1                     # measured per clip, not one constant

    # Run 2 adds another re-encode: the first run's kept track wins although the new URI sorts first.
    manifest = prepare_corpus(CorpusConfig(**{**config.__dict__, "inputs": [str(first), str(second)]}),
                              progress=lambda *_: None)
    assert _account(output)["opus.opus"] == "near_duplicate"
    assert kept in _near_details(output)["opus.opus"]
    assert manifest["counts"]["incomplete_tracks"] == 0 and manifest["counts"]["quarantined"]["near_duplicate"] == 3
    assert len(storage.list_files(storage.join(output, dedup.FINGERPRINTS_DIR), ".parquet")) == 1   # nothing new kept
