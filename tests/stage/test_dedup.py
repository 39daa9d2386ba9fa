"""Duplicate tracks: the kept copy follows the documented rule, whatever the order of claims, across runs and restarts."""
from __future__ import annotations

import json

from pipelines import storage
from pipelines.corpus import dedup


def test_registry_seeded_with_bare_track_ids_answers_instead_of_crashing(tmp_path):
    """Issue 11 (a): the ledger seeds {hash: track_id}; the old registry split it as "id uri" -> IndexError."""
    registry = dedup.DedupRegistry(str(tmp_path / "claims.json"), known={"h1": "t-old"})
    assert registry.claim("h1", "t-new", "/m/copy.flac") == "track t-old (kept by an earlier run)"
    assert registry.claim("h1", "t-old", "/m/orig.flac") is None


def test_claim_order_does_not_change_the_kept_copy(tmp_path):
    claims = str(tmp_path / "claims.json")
    plan = dedup.plan_owners({}, [{"content_hash": "h", "track_id": t, "source_uri": f"/m/{t}.flac"} for t in "zya"])
    storage.write_bytes_atomic(claims, json.dumps(plan).encode())
    for order in ("zya", "ayz", "yaz"):
        registry = dedup.DedupRegistry(claims)
        answers = {t: registry.claim("h", t, f"/m/{t}.flac") for t in order}
        assert answers == {"a": None, "y": "/m/a.flac", "z": "/m/a.flac"}, order
