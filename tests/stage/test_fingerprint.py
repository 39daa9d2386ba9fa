"""Near-duplicates by Chromaprint: re-encodes, trims and new intros of real music match, other music does not;
the index finds them, persists, and keeps one copy by a deterministic rule."""
from __future__ import annotations

import glob
import os
import random

import numpy as np
import pyarrow as pa
import pytest

from pipelines.corpus import fingerprint as F
from pipelines.corpus.audio import decode
from schemas import FINGERPRINTS, TABLES, validate
from tests.music_variants import (
    INTRO_SECONDS,
    SONIC_PI_DIR,
    TRIM_SECONDS,
    make_variants,
)


@pytest.fixture(scope="module")
def prints(tmp_path_factory) -> dict[str, np.ndarray]:
    files = make_variants(str(tmp_path_factory.mktemp("variants")))
    return {name: F.fingerprint(decode(path).audio) for name, path in files.items()}


def test_fingerprint_is_raw_uint32_at_about_8_per_second(prints):
    fp = prints["excerpt-frontiers"]
    # Chromaprint's first item needs a 4096-sample frame and 16 frames of filter context: ~21 items fewer.
    assert fp.dtype == np.uint32 and 40 * F.ITEMS_PER_SECOND - 25 < len(fp) <= 40 * F.ITEMS_PER_SECOND
    assert len(np.unique(fp)) > len(fp) // 2               # music, not a constant
    short = F.fingerprint(np.zeros(16_000 * 3, np.float32))           # 3 s of silence: a few words at most
    assert short.dtype == np.uint32 and len(short) < 10 and F.similarity(fp, short) == (0.0, 0)
    assert len(F.fingerprint(np.zeros(0, np.float32))) == 0


@pytest.mark.parametrize("variant, offset_seconds", [("mp3", 0.0), ("opus", 0.0), ("trimmed", TRIM_SECONDS),
                                                     ("intro", -INTRO_SECONDS)])
def test_reencoded_trimmed_and_new_intro_copies_match(prints, variant, offset_seconds):
    score, offset = F.similarity(prints["excerpt-frontiers"], prints[variant])
    assert score >= F.MATCH_THRESHOLD + 0.08, (variant, score)      # well above the threshold, not just over it
    assert abs(offset - offset_seconds * F.ITEMS_PER_SECOND) <= 2, (variant, offset)


def test_different_music_does_not_match(prints):
    others = [prints["excerpt-machine_wars"], prints["excerpt-time_to_strike"]]
    for name in ("excerpt-frontiers", "mp3", "trimmed", "intro"):
        for other in others:
            score, _ = F.similarity(prints[name], other)
            assert score < F.MATCH_THRESHOLD - 0.1, (name, score)
    # Real instrument loops (Debian sonic-pi-samples), 8-11 s each: shorter than the 10 s minimum overlap, so
    # they match nothing by rule; even at a 4 s overlap they stay far below the threshold.
    for path in sorted(glob.glob(os.path.join(SONIC_PI_DIR, "loop_*.flac")))[:4]:
        loop = F.fingerprint(decode(path).audio)
        assert F.similarity(prints["excerpt-frontiers"], loop) == (0.0, 0)
        assert F.similarity(prints["excerpt-frontiers"], loop, min_overlap_seconds=4.0)[0] < F.MATCH_THRESHOLD - 0.1


def test_similarity_needs_the_minimum_overlap():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**32, 400, dtype=np.uint64).astype(np.uint32)
    b = np.concatenate([a[-20:], rng.integers(0, 2**32, 300, dtype=np.uint64).astype(np.uint32)])
    assert F.similarity(a, b, min_overlap_seconds=2.0)[0] == 1.0          # 20 items = 2.5 s shared at the seam
    assert F.similarity(a, b)[0] < 0.7                                   # 10 s required: unrelated beyond
    assert F.similarity(a, a[:60]) == (0.0, 0)                           # 7.4 s: shorter than the overlap
    assert F.similarity(a, a[100:200], offsets=np.array([100]))[0] == 1.0


def test_index_finds_each_copy_and_only_it(prints):
    index = F.NearDuplicateIndex()
    for name in ("excerpt-frontiers", "excerpt-machine_wars", "excerpt-time_to_strike"):
        index.add(name, prints[name])
    for variant, offset_seconds in (("mp3", 0), ("opus", 0), ("trimmed", TRIM_SECONDS), ("intro", -INTRO_SECONDS)):
        matches = index.query(prints[variant])
        assert [m[0] for m in matches] == ["excerpt-frontiers"], (variant, matches)
        assert abs(matches[0][2] - offset_seconds * F.ITEMS_PER_SECOND) <= 2
    assert index.query(prints["excerpt-machine_wars"])[0][:2] == ("excerpt-machine_wars", 1.0)


def test_index_persists_as_the_fingerprints_table(prints, tmp_path):
    import pyarrow.parquet as pq

    index = F.NearDuplicateIndex()
    for name in ("excerpt-frontiers", "excerpt-machine_wars"):
        index.add(name, prints[name], f"/music/{name}.flac")
    table = index.to_table()
    validate(table, FINGERPRINTS)
    assert TABLES["fingerprints"] is FINGERPRINTS and table.column_names == ["track_id", "source_uri", "fingerprint"]
    pq.write_table(table, tmp_path / "f.parquet")
    for again in (F.NearDuplicateIndex.from_table(pq.read_table(tmp_path / "f.parquet")),
                  F.NearDuplicateIndex.from_bytes(index.to_bytes())):
        assert again.track_ids == index.track_ids and again.source_uris == index.source_uris
        np.testing.assert_array_equal(again.fingerprints[0], prints["excerpt-frontiers"])
        assert again.query(prints["trimmed"])[0][0] == "excerpt-frontiers"
    assert pa.types.is_uint32(table.schema.field("fingerprint").type.value_type)


def test_keep_rule_is_deterministic_and_earlier_runs_win(prints):
    tracks = [{"track_id": f"t-{name}", "source_uri": f"/music/{name}", "fingerprint": prints[name]}
              for name in ("excerpt-frontiers", "mp3", "opus", "trimmed", "intro", "excerpt-machine_wars")]
    results = []
    for seed in range(3):                                    # any arrival order gives the same answer
        shuffled = random.Random(seed).sample(tracks, len(tracks))
        index = F.NearDuplicateIndex()
        duplicates = F.find_near_duplicates(shuffled, index)
        results.append(({k: v[0] for k, v in duplicates.items()}, index.track_ids))
    assert all(r == results[0] for r in results)
    duplicates, kept = results[0]
    # Sorted by source URI "/music/excerpt-frontiers" comes first, so it is the copy that is kept.
    assert kept == ["t-excerpt-frontiers", "t-excerpt-machine_wars"]
    assert duplicates == {f"t-{n}": "t-excerpt-frontiers" for n in ("mp3", "opus", "trimmed", "intro")}
    # An incremental run: the index of the earlier run holds only the trimmed copy, which stays kept.
    earlier = F.NearDuplicateIndex()
    earlier.add("t-trimmed", prints["trimmed"], "/music/trimmed")
    later = F.find_near_duplicates([t for t in tracks if t["track_id"] != "t-trimmed"], earlier)
    assert {k: v[0] for k, v in later.items()} == {f"t-{n}": "t-trimmed"
                                                   for n in ("excerpt-frontiers", "mp3", "opus", "intro")}
