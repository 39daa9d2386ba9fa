"""Overlap between a corpus and an evaluation set: corpus tracks that are the same recording as an evaluation
track, by Chromaprint fingerprint (docs/quality.md, "Overlap with evaluation sets")."""
from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.compute as pc

from pipelines import storage
from pipelines.corpus import fingerprint as F
from pipelines.corpus import sources
from pipelines.corpus.audio import DecodeError, decode
from pipelines.corpus.index import OutputIndex, track_items
from schemas.manifest import CORPUS_DIR, EXCLUDE_FILE, FINGERPRINTS_DIR, OVERLAP_DIR

REPORT = "report.json"


def fingerprint_sources(found: list[dict]) -> tuple[list[dict], list[dict]]:
    """(fingerprinted, failed) for sources.discover-style dicts: decode each once, fingerprint the audio."""
    done, failed = [], []
    for source in found:
        uri = source["source_uri"]
        try:
            data = storage.read_bytes(uri) if storage.is_s3(uri) else uri
            fp = F.fingerprint(decode(data).audio)
        except (DecodeError, OSError) as err:
            failed.append({"source_uri": uri, "error": f"{type(err).__name__}: {err}"[:300]})
            continue
        done.append({"track_id": source["track_id"], "source_uri": uri, "fingerprint": fp})
    return done, failed


def corpus_tracks(corpus: str) -> tuple[dict[str, str], pa.Table]:
    """({track_id: source_uri} of every track with a corpus row, the index's corpus entries): tracks from the shard
    index (no shard opened; source URI ""), plus the rows of shards it does not vouch for (track_id, source_uri)."""
    index = OutputIndex.load(corpus, heal=False)
    entries = index.table(CORPUS_DIR)
    tracks = {t: "" for t in track_items(entries)["track_id"].to_pylist()}
    shards = {s for s in index.shard_sizes() if s.startswith(CORPUS_DIR + "/")}
    unindexed = sorted(shards - set(entries["shard"].to_pylist()))
    for shard in unindexed:
        rows = storage.read_parquet(storage.join(corpus, shard), columns=["track_id", "source_uri"])
        tracks.update(zip(rows["track_id"].to_pylist(), rows["source_uri"].to_pylist()))
    return tracks, entries


def source_uris(corpus: str, entries: pa.Table, track_ids: set[str]) -> dict[str, str]:
    """{track_id: source_uri} of these indexed tracks, read from the shards their entries say hold them."""
    column = entries["tracks"].combine_chunks()
    held = pc.is_in(pc.list_flatten(column).field("track_id"), value_set=pa.array(sorted(track_ids), pa.string()))
    names = entries["shard"].to_pylist()
    found = {}
    for row in sorted(set(pc.filter(pc.list_parent_indices(column), held).to_pylist())):
        rows = storage.read_parquet(storage.join(corpus, names[row]), columns=["track_id", "source_uri"])
        found.update((t, u) for t, u in zip(rows["track_id"].to_pylist(), rows["source_uri"].to_pylist())
                     if t in track_ids)
    return found


def corpus_index(corpus: str, **options) -> tuple[F.NearDuplicateIndex, str, list[dict]]:
    """(index of the corpus's tracks, where the fingerprints came from, tracks that failed).

    Fingerprints of OUT/fingerprints/*.parquet (schemas.FINGERPRINTS) for the tracks that hold a corpus row (a row
    of a track that never got one is left out); every corpus track without a stored fingerprint (an output written
    before fingerprints were stored with the rows) is decoded from its source_uri and fingerprinted here (slow).
    """
    tracks, entries = corpus_tracks(corpus)
    if not tracks and not storage.list_files(storage.join(corpus, CORPUS_DIR), ".parquet"):
        raise FileNotFoundError(f"{corpus}: no {CORPUS_DIR}/*.parquet")
    stored = storage.list_files(storage.join(corpus, FINGERPRINTS_DIR), ".parquet")
    table = pa.concat_tables([storage.read_parquet(uri) for uri in stored]) if stored else None
    if table is not None:
        table = table.filter(pc.is_in(table["track_id"], value_set=pa.array(sorted(tracks), pa.string())))
    index = F.NearDuplicateIndex.from_table(table, **options) if table is not None else F.NearDuplicateIndex(**options)
    missing = {t: u for t, u in tracks.items() if t not in index}
    unknown = {t for t, u in missing.items() if not u}
    missing.update(source_uris(corpus, entries, unknown) if unknown else {})
    done, failed = fingerprint_sources([{"source_uri": u, "track_id": t} for t, u in sorted(missing.items(),
                                                                                         key=lambda kv: kv[1])])
    from_table = len(index)
    for track in done:
        index.add(track["track_id"], track["fingerprint"], track["source_uri"])
    if not missing:
        return index, "fingerprints table", failed
    if not from_table:
        return index, "decoded from corpus source_uri", failed
    return index, f"fingerprints table + {len(missing)} decoded from corpus source_uri", failed


def check_overlap(corpus: str, eval_inputs: list[str], *, exclude: bool = False,
                  threshold: float = F.MATCH_THRESHOLD) -> dict:
    """Match every evaluation track against the corpus; write OUT/overlap/report.json (and, with exclude,
    OUT/overlap/exclude_track_ids.txt: the matching corpus track ids, one per line, sorted). Returns the report."""
    started = time.time()
    index, origin, corpus_failed = corpus_index(corpus, threshold=threshold)
    evaluation, eval_failed = fingerprint_sources(sources.discover(eval_inputs))
    matches = []
    for track in evaluation:
        for corpus_track, score, offset in index.query(track["fingerprint"]):
            matches.append({"eval_source_uri": track["source_uri"], "corpus_track_id": corpus_track,
                            "corpus_source_uri": index.source_uri_of(corpus_track), "score": round(score, 4),
                            # positive: the evaluation track starts this far into the corpus track
                            "offset_seconds": round(offset / F.ITEMS_PER_SECOND, 2)})
    matched = sorted({m["corpus_track_id"] for m in matches})
    report = {
        "corpus": corpus, "eval": eval_inputs, "corpus_fingerprints": origin, "threshold": threshold,
        "min_overlap_seconds": F.MIN_OVERLAP_SECONDS, "corpus_tracks": len(index),
        "eval_tracks": len(evaluation), "eval_tracks_matched": len({m["eval_source_uri"] for m in matches}),
        "corpus_tracks_matched": len(matched), "matches": matches,
        "failed": {"corpus": corpus_failed, "eval": eval_failed},
        "exclude_file": storage.join(corpus, OVERLAP_DIR, EXCLUDE_FILE) if exclude else None,
        "wall_seconds": round(time.time() - started, 2),
    }
    storage.write_bytes_atomic(storage.join(corpus, OVERLAP_DIR, REPORT), json.dumps(report, indent=1).encode())
    if exclude:
        storage.write_bytes_atomic(report["exclude_file"], "".join(t + "\n" for t in matched).encode())
    return report
