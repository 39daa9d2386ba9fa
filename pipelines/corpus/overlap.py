"""Overlap between a corpus and an evaluation set: corpus tracks that are the same recording as an evaluation
track, by Chromaprint fingerprint (docs/quality.md, "Overlap with evaluation sets")."""
from __future__ import annotations

import json
import time

import pyarrow as pa

from pipelines import storage
from pipelines.corpus import fingerprint as F
from pipelines.corpus import sources
from pipelines.corpus.audio import DecodeError, decode
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


def corpus_index(corpus: str, **options) -> tuple[F.NearDuplicateIndex, str, list[dict]]:
    """(index of the corpus's tracks, where the fingerprints came from, tracks that failed).

    OUT/fingerprints/*.parquet (schemas.FINGERPRINTS) when present; otherwise every distinct source_uri of
    OUT/corpus/*.parquet is decoded and fingerprinted here (slow: the corpus stage will write the table).
    """
    stored = storage.list_files(storage.join(corpus, FINGERPRINTS_DIR), ".parquet")
    if stored:
        table = pa.concat_tables([storage.read_parquet(uri) for uri in stored])
        return F.NearDuplicateIndex.from_table(table, **options), "fingerprints table", []
    files = storage.list_files(storage.join(corpus, CORPUS_DIR), ".parquet")
    if not files:
        raise FileNotFoundError(f"{corpus}: neither {FINGERPRINTS_DIR}/*.parquet nor {CORPUS_DIR}/*.parquet")
    rows = pa.concat_tables([storage.read_parquet(uri, columns=["track_id", "source_uri"]) for uri in files])
    tracks = sorted(set(zip(rows.column("source_uri").to_pylist(), rows.column("track_id").to_pylist())))
    done, failed = fingerprint_sources([{"source_uri": uri, "track_id": tid} for uri, tid in tracks])
    index = F.NearDuplicateIndex(**options)
    for track in done:
        index.add(track["track_id"], track["fingerprint"], track["source_uri"])
    return index, "decoded from corpus source_uri", failed


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
