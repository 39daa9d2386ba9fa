"""Duplicate tracks: the kept copy follows the documented rule, whatever the order of claims, across runs and restarts."""
from __future__ import annotations

from pipelines.corpus import dedup


def test_plan_keeps_an_earlier_runs_copy_then_the_smallest_uri():
    hashed = [{"content_hash": "h1", "track_id": "t-b", "source_uri": "/m/b.flac"},
              {"content_hash": "h1", "track_id": "t-a", "source_uri": "/m/a.flac"},
              {"content_hash": "h2", "track_id": "t-c", "source_uri": "/m/c.flac"}]
    assert dedup.plan_owners({}, hashed) == {"h1": {"track_id": "t-a", "source_uri": "/m/a.flac"},
                                             "h2": {"track_id": "t-c", "source_uri": "/m/c.flac"}}
    # h1 was kept by an earlier run's track t-old: this run's smaller URI does not take it over.
    assert dedup.plan_owners({"h1": "t-old"}, hashed)["h1"] == {"track_id": "t-old", "source_uri": ""}
    assert dedup.plan_owners({}, list(reversed(hashed))) == dedup.plan_owners({}, hashed)


# ----------------------------------------------------------------------------- near-duplicates in the plan

def _print(seed: int, n: int = 400):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)


def _copy(fp, flips: int = 60, seed: int = 0, trim: int = 0):
    """A noisy copy: `flips` random single-bit errors (a re-encode), the first `trim` items cut (a trim)."""
    import numpy as np

    out = fp.copy()
    rng = np.random.default_rng(seed)
    for i in rng.integers(0, len(out), flips):
        out[i] ^= np.uint32(1 << int(rng.integers(0, 32)))
    return out[trim:]


def _claim(track: str, uri: str, fp, content_hash: str | None = None) -> dict:
    return {"track_id": track, "source_uri": uri, "content_hash": content_hash or f"h-{track}", "fingerprint": fp}


def test_near_duplicate_plan_keeps_the_smallest_uri_and_names_it():
    from pipelines.corpus.fingerprint import NearDuplicateIndex

    original = _print(1)
    hashed = [_claim("t-z", "/m/z.flac", original), _claim("t-mp3", "/m/b.mp3", _copy(original, seed=2)),
              _claim("t-trim", "/m/c.flac", _copy(original, seed=3, trim=40)), _claim("t-other", "/m/d.flac", _print(9))]
    owners = dedup.plan_owners({}, hashed)
    plan = dedup.plan_near_duplicates(owners, hashed, NearDuplicateIndex())
    assert set(plan) == {"t-z", "t-trim"}                  # /m/b.mp3 sorts first: it is the kept copy
    assert {d["kept_track_id"] for d in plan.values()} == {"t-mp3"}
    assert plan["t-trim"]["kept_source_uri"] == "/m/b.mp3" and plan["t-trim"]["offset"] == 40
    assert plan["t-z"]["score"] > 0.99 and plan["t-z"]["offset"] == 0
    assert "/m/b.mp3" in dedup.describe_near(plan["t-trim"]) and "offset 40" in dedup.describe_near(plan["t-trim"])
    # Deterministic whatever order the pre-pass returned the tracks in.
    assert dedup.plan_near_duplicates(owners, list(reversed(hashed)), NearDuplicateIndex()) == plan


def test_near_duplicate_plan_an_earlier_runs_track_wins_and_exact_copies_stay_duplicates():
    from pipelines.corpus.fingerprint import NearDuplicateIndex

    original = _print(1)
    earlier = NearDuplicateIndex()
    earlier.add("t-old", original, "/old/z.flac")
    copy = _copy(original, seed=4)
    hashed = [_claim("t-a", "/m/a.flac", copy, "h-same"), _claim("t-b", "/m/b.flac", copy, "h-same"),
              _claim("t-new", "/m/c.flac", _print(5)), _claim("t-quiet", "/m/d.flac", [])]
    plan = dedup.plan_near_duplicates(dedup.plan_owners({}, hashed), hashed, earlier)
    # t-b has t-a's content hash: an exact duplicate, decided by plan_owners, not here.
    assert plan == {"t-a": {"kept_track_id": "t-old", "kept_source_uri": "/old/z.flac",
                            "score": plan["t-a"]["score"], "offset": 0}}
    assert "t-new" in earlier and "t-quiet" not in earlier          # kept new tracks join the index; no print, no entry


def test_fingerprints_of_kept_tracks_round_trip_in_keep_order(tmp_path):
    out = str(tmp_path)
    hashed = [_claim("t-b", "/m/b.flac", _print(2)), _claim("t-a", "/m/a.flac", _print(1)),
              _claim("t-gone", "/m/c.flac", _print(3))]
    assert dedup.write_fingerprints(out, hashed, set(), 0.0) is None
    uri = dedup.write_fingerprints(out, hashed, {"t-a", "t-b"}, 0.0)
    assert uri.rsplit("/", 1)[-1].startswith("19700101T000000Z-")
    index = dedup.load_fingerprints(out, 0.83)
    assert index.track_ids == ["t-a", "t-b"] and index.source_uri_of("t-b") == "/m/b.flac"
    assert list(index.fingerprints[0]) == list(_print(1))


def test_pre_pass_stops_at_the_first_kept_clip_and_claims_as_the_full_analysis(tmp_path):
    """content_claim gates a track only up to its first kept clip: same hash, same claim, fewer clips measured."""
    import numpy as np
    import soundfile as sf

    from pipelines.corpus.dedup import content_claim
    from pipelines.corpus.frontend import analyse_track
    from schemas import constants as C

    t = np.arange(int(4 * C.CLIP_SECONDS * C.SAMPLE_RATE)) / C.SAMPLE_RATE
    music = 0.3 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.5 * t))
    music[: int(C.CLIP_SECONDS * C.SAMPLE_RATE)] = 0.0                  # clip 0 silent, clips 1-3 kept
    sf.write(tmp_path / "late.wav", music.astype(np.float32), C.SAMPLE_RATE)
    sf.write(tmp_path / "silent.wav", np.zeros(len(t), np.float32), C.SAMPLE_RATE)
    late = {"source_uri": str(tmp_path / "late.wav"), "track_id": "a" * 16, "metadata": {}}
    silent = {"source_uri": str(tmp_path / "silent.wav"), "track_id": "b" * 16, "metadata": {}}

    full, _ = analyse_track(late)
    short, decoded = analyse_track(late, until_kept=True)
    assert [r["reject_reason"] for r in full] == ["silent", "", "", ""]
    assert [r["reject_reason"] for r in short] == ["silent", ""] and decoded is not None
    assert {r["content_hash"] for r in short} == {full[0]["content_hash"]} != {""}
    claim = content_claim(late, gates={}, fingerprints=True)
    assert claim["content_hash"] == full[0]["content_hash"] and len(claim["fingerprint"]) > 0
    assert content_claim(silent, gates={}, fingerprints=True)["content_hash"] == ""     # nothing kept: no claim
