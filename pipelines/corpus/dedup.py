"""Exact-duplicate tracks: which copy of each content hash is kept, decided before any clip is emitted.

The rule (docs/architecture.md, "Duplicates"):
1. a content hash an earlier run kept (it is in the corpus) stays with that track: re-runs never change it;
2. otherwise, among this run's copies that have at least one clip to keep, the smallest source_uri wins.

Rule 2 needs every copy's hash before the first clip leaves the front end (a clip already downstream
cannot be recalled), so `start_registry` runs a hashing pass over the pending tracks first: one extra
decode per pending track. The plan is written to OUTPUT/dedup/claims.json and the registry actor re-reads
it whenever Ray restarts it, so a registry that dies mid-run answers exactly as before.

Near-duplicates (the same recording re-encoded, trimmed or with another intro; docs/quality.md §7) are decided
in the same pass: it also fingerprints each decoded track (Chromaprint), and the driver runs
`find_near_duplicates` over this run's kept copies against the index of earlier runs' kept tracks
(OUTPUT/fingerprints/*.parquet). The decisions go to OUTPUT/dedup/near_duplicates.json and travel with each
pending track into the front end. Fingerprints are computed in every run (also with near-duplicates off) and
the ones of the tracks that may keep a clip are written as a new OUTPUT/fingerprints/ file before the stream
starts, so they are on storage before any row of their track; a reader counts a fingerprint only while its track
holds a committed corpus clip (`load_fingerprints`), so a run that dies at any point loses none and adds none.
"""
from __future__ import annotations

import hashlib
import json
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import storage
from pipelines.corpus.fingerprint import ITEMS_PER_SECOND, NearDuplicateIndex, find_near_duplicates
from schemas.manifest import FINGERPRINTS_DIR

CLAIMS = "dedup/claims.json"
NEAR_DUPLICATES = "dedup/near_duplicates.json"


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

    def __init__(self, claims_uri: str, known: dict[str, str] | None = None, crashed: dict[str, str] | None = None):
        self.claims_uri = claims_uri
        self.known = dict(known or {})                     # {content_hash: track_id} kept by earlier runs
        self.crashed = dict(crashed or {})                 # {track_id: detail}: tracks that killed the pre-pass
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

    def crashes(self) -> dict[str, str]:
        """{track_id: worker_crash detail} of the tracks whose pre-pass killed its process (quarantined, not decoded again)."""
        return dict(self.crashed)

    def _save(self) -> None:
        storage.write_bytes_atomic(self.claims_uri, json.dumps(self.claims, sort_keys=True).encode())


def plan_near_duplicates(owners: dict[str, dict[str, str]], hashed: list[dict],
                         earlier: NearDuplicateIndex) -> dict[str, dict]:
    """{track_id: {"kept_track_id", "kept_source_uri", "score", "offset"}} for this run's near-duplicates.

    Only the copies that keep their content hash (owners, from plan_owners) take part: an exact copy is already
    a `duplicate`. earlier: the index of earlier runs' kept tracks (they win); this run's tracks are taken in
    (source_uri, track_id) order and the ones kept are added to earlier, which the caller may persist.
    hashed items need a "fingerprint" (uint32 values); an empty one matches nothing and is not indexed.
    """
    tracks = [{"track_id": h["track_id"], "source_uri": h["source_uri"],
               "fingerprint": np.asarray(h["fingerprint"], np.uint32)} for h in hashed
              if len(h.get("fingerprint", ())) and owners.get(h["content_hash"], {}).get("track_id") == h["track_id"]]
    uris = {t["track_id"]: t["source_uri"] for t in tracks}
    return {track_id: {"kept_track_id": kept, "score": round(float(score), 4), "offset": int(offset),
                       "kept_source_uri": earlier.source_uri_of(kept) if kept in earlier else uris.get(kept, "")}
            for track_id, (kept, score, offset) in find_near_duplicates(tracks, earlier).items()}


def describe_near(decision: dict) -> str:
    """The quarantine detail of a near-duplicate: the kept track (its source URI), score and offset."""
    kept = decision["kept_source_uri"] or f"track {decision['kept_track_id']}"
    return (f"same recording as {kept} (track {decision['kept_track_id']}): Chromaprint agreement "
            f"{decision['score']:.3f} at offset {decision['offset']} ({decision['offset'] / ITEMS_PER_SECOND:+.1f} s)")


def load_fingerprints(output: str, threshold: float, tracks: set[str] | None = None) -> NearDuplicateIndex:
    """The index of every earlier run's kept tracks, files in name (= time) order: earlier rows were kept earlier.
    tracks: the tracks that hold a committed corpus clip (the ledger's); rows of other tracks are left out (a run
    wrote them before its stream and stopped before committing the track, or the track became a duplicate).
    None: every row."""
    files = sorted(storage.list_files(storage.join(output, FINGERPRINTS_DIR), ".parquet"))
    if not files:
        return NearDuplicateIndex(threshold=threshold)
    table = pa.concat_tables([storage.read_parquet(f) for f in files])
    if tracks is not None:
        table = table.filter(pc.is_in(table["track_id"], value_set=pa.array(sorted(tracks), pa.string())))
    return NearDuplicateIndex.from_table(table, threshold=threshold)


def may_keep(known: dict[str, str], hashed: list[dict], near: dict[str, str]) -> set[str]:
    """The tracks of this run's claims that may keep a clip: they keep their content hash (`plan_owners`) and are
    no near-duplicate (near: {track_id: detail}). Their fingerprints are written before the stream."""
    owners = plan_owners(known, hashed)
    return {h["track_id"] for h in hashed
            if owners[h["content_hash"]]["track_id"] == h["track_id"] and h["track_id"] not in near}


def write_fingerprints(output: str, hashed: list[dict], kept_tracks: set[str], started: float) -> str | None:
    """This run's fingerprints of kept_tracks (before the stream: `may_keep`), as
    OUTPUT/fingerprints/<time>-<hash>.parquet (written atomically; the name sorts by run start). None when there is
    nothing to write. Readers count a row only while its track holds a committed corpus clip."""
    rows = sorted((h for h in hashed if h["track_id"] in kept_tracks and len(h.get("fingerprint", ()))),
                  key=lambda h: (h["source_uri"], h["track_id"]))        # the order they were kept in
    if not rows:
        return None
    index = NearDuplicateIndex()
    for h in rows:
        index.add(h["track_id"], np.asarray(h["fingerprint"], np.uint32), h["source_uri"])
    digest = hashlib.sha256("\n".join(h["track_id"] for h in rows).encode()).hexdigest()[:16]
    uri = storage.join(output, FINGERPRINTS_DIR, f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(started))}-{digest}.parquet")
    storage.write_parquet_atomic(index.to_table(), uri)
    return uri


def content_claim(source: dict, *, gates: dict, fingerprints: bool) -> dict:
    """The pre-pass for one track: its content hash if it has a clip to keep (only those claim), and the
    Chromaprint fingerprint of the same decoded audio (no second decode)."""
    from pipelines.corpus.fingerprint import fingerprint
    from pipelines.corpus.frontend import analyse_track

    rows, decoded = analyse_track(source, **gates, until_kept=True)
    content_hash = next((r["content_hash"] for r in rows if r["content_hash"]), "")
    claims = bool(content_hash) and any(not r["reject_reason"] for r in rows)
    fp = fingerprint(decoded) if claims and fingerprints and decoded is not None else np.zeros(0, np.uint32)
    return {"track_id": source["track_id"], "source_uri": source["source_uri"],
            "content_hash": content_hash if claims else "", "fingerprint": fp.astype(np.int64).tolist()}


def claim_job(ctx, source: dict, gates: dict, fingerprints: bool) -> dict:
    """Crash-domain job: content_claim of one track (stage `dedup`)."""
    ctx.stage("dedup", [source["source_uri"]])
    return content_claim(source, gates=gates, fingerprints=fingerprints)


def guarded_claim(source: dict, *, gates: dict, fingerprints: bool) -> dict:
    """content_claim in this process's crash domain (pipelines/corpus/crashguard.py); a track that kills it on
    every attempt claims nothing and carries the crash detail ("crash": "" otherwise)."""
    from pipelines.corpus import crashguard

    claim, crash = crashguard.run_with_retries(crashguard.process_domain(), claim_job, source, gates, fingerprints)
    if crash is not None:
        return {"track_id": source["track_id"], "source_uri": source["source_uri"], "content_hash": "",
                "fingerprint": [], "crash": crash.detail()}
    return dict(claim, crash="")


def hash_pending(pending: list[dict], *, gates: dict, fingerprints: bool = False) -> tuple[list[dict], dict[str, str]]:
    """content_claim over the pending tracks, in parallel on Ray: (the claiming tracks, {track_id: crash detail}
    of the tracks whose pre-pass killed its process on every attempt)."""
    import ray.data

    from pipelines.corpus.crashguard import RAY_RETRIES, inject_env

    if not pending:
        return [], {}
    env = {**storage.ray_worker_env(), **inject_env()}
    ds = ray.data.from_items([{"source_uri": s["source_uri"], "track_id": s["track_id"],
                               "metadata": s.get("metadata") or {}, "problem": s.get("problem", "")}
                              for s in pending], override_num_blocks=len(pending))
    ds = ds.map(guarded_claim, num_cpus=1, max_retries=RAY_RETRIES, fn_kwargs=dict(gates=gates, fingerprints=fingerprints),
                **({"runtime_env": {"env_vars": env}} if env else {}))
    results = ds.take_all()
    return ([{k: v for k, v in r.items() if k != "crash"} for r in results if r["content_hash"]],
            {r["track_id"]: r["crash"] for r in results if r["crash"]})


def start_registry(output: str, pending: list[dict], known: dict[str, str], *, gates: dict,
                   near_duplicate_threshold: float = 0.0):
    """The dedup plan: hash (and fingerprint) the pending tracks, persist the exact-duplicate plan to
    OUTPUT/dedup/claims.json and the near-duplicates to OUTPUT/dedup/near_duplicates.json, and start the
    registry actor (restarted by Ray if it dies, at most RAY_RETRIES times; its calls are retried and it re-reads
    the plan). Tracks whose pre-pass killed its process are held by the registry (`crashes`) for the stream to
    quarantine as `worker_crash` (stage dedup).

    Returns (registry, {track_id: near-duplicate detail}, hashed claims with fingerprints, for write_fingerprints).
    """
    import ray

    from pipelines.corpus.crashguard import RAY_RETRIES

    claims_uri = storage.join(output, CLAIMS)
    near = near_duplicate_threshold > 0
    hashed, crashed = hash_pending(pending, gates=gates, fingerprints=True)    # always: later runs and check_overlap need them
    owners = plan_owners(known, hashed)
    storage.write_bytes_atomic(claims_uri, json.dumps(owners, sort_keys=True).encode())
    # known's tracks are the ones holding a corpus clip: only their fingerprints are earlier runs' kept tracks
    earlier = load_fingerprints(output, near_duplicate_threshold, set(known.values())) if near else None
    decisions = plan_near_duplicates(owners, hashed, earlier) if near else {}
    storage.write_bytes_atomic(storage.join(output, NEAR_DUPLICATES), json.dumps(decisions, sort_keys=True).encode())
    registry = ray.remote(DedupRegistry).options(num_cpus=0, max_restarts=RAY_RETRIES,
                                                 max_task_retries=RAY_RETRIES).remote(claims_uri, known, crashed)
    return registry, {t: describe_near(d) for t, d in decisions.items()}, hashed
