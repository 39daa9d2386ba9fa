"""Exact-duplicate tracks: which copy of each content hash is kept, decided before any clip is emitted.

The rule (docs/architecture.md, "Duplicates"):
1. a content hash an earlier run kept (it is in the corpus) stays with that track: re-runs never change it;
2. otherwise, among this run's copies that have at least one clip to keep, the smallest source_uri wins.

Rule 2 needs every copy's hash before the first clip leaves the front end (a clip already downstream
cannot be recalled), so `start_registry` runs a hashing pass over the pending tracks first: one extra
decode per pending track. The plan is written to OUTPUT/dedup/claims.json and the registry actor re-reads
it whenever Ray restarts it, so a registry that dies mid-run answers exactly as before.
"""
from __future__ import annotations

import json

from pipelines import storage

CLAIMS = "dedup/claims.json"


def plan_owners(known: dict[str, str], hashed: list[dict]) -> dict[str, dict[str, str]]:
    """{content_hash: {"track_id", "source_uri"}} for every hash this run's tracks claim.

    known: {content_hash: track_id} kept by earlier runs. hashed: [{"content_hash", "track_id", "source_uri"}]
    for the tracks of this run that have a clip to keep.
    """
    owners: dict[str, dict[str, str]] = {}
    for item in sorted(hashed, key=lambda h: h["source_uri"]):      # the smallest URI is seen first
        content_hash = item["content_hash"]
        if content_hash in owners:
            continue
        if content_hash in known:                                     # rule 1: an earlier run's keep stands
            owners[content_hash] = {"track_id": known[content_hash], "source_uri": ""}
        else:
            owners[content_hash] = {"track_id": item["track_id"], "source_uri": item["source_uri"]}
    return owners


def describe(owner: dict[str, str]) -> str:
    return owner["source_uri"] or f"track {owner['track_id']} (kept by an earlier run)"


class DedupRegistry:
    """Ray actor: answers "is this track the kept copy of its content hash?" from the persisted plan.

    A hash missing from the plan (its track was not pending when the plan was made) goes to the first
    claimant, and that claim is persisted before it is answered.
    """

    def __init__(self, claims_uri: str, known: dict[str, str] | None = None):
        self.claims_uri = claims_uri
        self.known = dict(known or {})                     # {content_hash: track_id} kept by earlier runs
        self.claims: dict[str, dict[str, str]] = (
            json.loads(storage.read_bytes(claims_uri)) if storage.exists(claims_uri) else {})

    def claim(self, content_hash: str, track_id: str, source_uri: str) -> str | None:
        """None when track_id keeps content_hash; else a description of the copy that does."""
        owner = self.claims.get(content_hash)
        if owner is None and content_hash in self.known:
            owner = {"track_id": self.known[content_hash], "source_uri": ""}
        if owner is None:
            owner = self.claims[content_hash] = {"track_id": track_id, "source_uri": source_uri}
            self._save()                                   # before answering: a restart must answer the same
        return None if owner["track_id"] == track_id else describe(owner)

    def owners(self) -> dict[str, dict[str, str]]:
        return dict(self.claims)

    def _save(self) -> None:
        storage.write_bytes_atomic(self.claims_uri, json.dumps(self.claims, sort_keys=True).encode())


def content_claim(source: dict, *, min_clip_seconds: float, silence_dbfs: float) -> dict:
    """The hashing pass for one track: its content hash, and whether it has a clip to keep (only those claim)."""
    from pipelines.corpus.frontend import process_track

    rows = process_track(source, min_clip_seconds=min_clip_seconds, silence_dbfs=silence_dbfs)
    content_hash = next((r["content_hash"] for r in rows if r["content_hash"]), "")
    claims = bool(content_hash) and any(not r["reject_reason"] for r in rows)
    return {"track_id": source["track_id"], "source_uri": source["source_uri"],
            "content_hash": content_hash if claims else ""}


def hash_pending(pending: list[dict], *, min_clip_seconds: float, silence_dbfs: float) -> list[dict]:
    """content_claim over the pending tracks, in parallel on Ray; only the claiming tracks are returned."""
    import ray.data

    if not pending:
        return []
    env = storage.ray_worker_env()
    ds = ray.data.from_items([{"source_uri": s["source_uri"], "track_id": s["track_id"],
                               "metadata": s.get("metadata") or {}, "problem": s.get("problem", "")}
                              for s in pending], override_num_blocks=len(pending))
    ds = ds.map(content_claim, num_cpus=1, fn_kwargs=dict(min_clip_seconds=min_clip_seconds, silence_dbfs=silence_dbfs),
                **({"runtime_env": {"env_vars": env}} if env else {}))
    return [r for r in ds.take_all() if r["content_hash"]]


def start_registry(output: str, pending: list[dict], known: dict[str, str], *, min_clip_seconds: float,
                   silence_dbfs: float):
    """Hash the pending tracks, persist the plan to OUTPUT/dedup/claims.json, and start the registry actor
    (restarted by Ray if it dies; its calls are retried and it re-reads the plan)."""
    import ray

    claims_uri = storage.join(output, CLAIMS)
    hashed = hash_pending(pending, min_clip_seconds=min_clip_seconds, silence_dbfs=silence_dbfs)
    storage.write_bytes_atomic(claims_uri, json.dumps(plan_owners(known, hashed), sort_keys=True).encode())
    return ray.remote(DedupRegistry).options(num_cpus=0, max_restarts=-1, max_task_retries=-1).remote(claims_uri, known)
