"""What a no-op re-run costs in bookkeeping at scale: resume + manifest + training index, sharded vs one file per batch.

    python -m benchmarks.bookkeeping [--clips 1000000] [--old-files 20000] [--shard-rows 1024] [--keep DIR] [--json PATH]
                                     [--s3]

--s3 runs both layouts on a real S3 server (SeaweedFS on 127.0.0.1, started and removed by the benchmark; every
read is a round trip through the S3 API, though on loopback: a cloud bucket adds its latency per request).

No models and no audio: it writes a simulated output directly, then times what prepare_corpus and training do
before and after any work when everything is already done.
- new layout: `--clips` clips in shards of `--shard-rows` (tiny shard files; the index entries are real: every
  item id, ~18 clips a track, 2 % quarantined), timed: index load + prune + ledger (start of a run), refresh +
  the manifest's account (end of a run), `scan_corpus` (training start).
- old layout: one corpus file per writer batch of 8 clips, every file read for the ledger at start and again
  for the manifest, and every footer + `split` read by training: written at `--old-files` files and
  extrapolated linearly to `--clips` (the cost is per file), as the issue measured it.
Tensors are a few bytes (the bookkeeping never reads them; the old layout's reads do not either).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pyarrow as pa  # noqa: E402

from pipelines import storage  # noqa: E402
from schemas import CORPUS, SHARD_INDEX, conform  # noqa: E402

CLIPS_PER_TRACK = 18           # ~3 min tracks
QUARANTINE_EVERY = 50          # 2 % of items


def track_id(t: int) -> str:
    return hashlib.sha256(f"/music/{t:07d}.flac".encode()).hexdigest()[:16]


def items(n_clips: int) -> list[tuple[str, str, int, bool]]:
    """(item id, track id, track_clip_count, kept) of a simulated output of n_clips items."""
    out = []
    for i in range(n_clips):
        t, c = divmod(i, CLIPS_PER_TRACK)
        tid = track_id(t)
        out.append((f"{tid}-{c:05d}", tid, CLIPS_PER_TRACK, i % QUARANTINE_EVERY != 0))
    return out


def tiny_rows(chunk, split: str = "train") -> pa.Table:
    """A corpus table of these items with few-byte tensors."""
    n = len(chunk)
    return conform(pa.table({
        "clip_id": [c[0] for c in chunk], "track_id": [c[1] for c in chunk], "source_uri": ["/music/x.flac"] * n,
        "clip_index": [0] * n, "start_seconds": [0.0] * n, "duration_seconds": [10.24] * n,
        "loudness_lufs": [-20.0] * n, "true_peak_dbtp": [-1.0] * n, "clipped_fraction": [0.0] * n,
        "track_clip_count": [c[2] for c in chunk], "content_hash": [c[1] * 4 for c in chunk], "split": [split] * n,
        "latent_mean": [b"\0\0"] * n, "latent_std": [b"\0\0"] * n, "tags": [[]] * n, "caption": ["c"] * n,
        "caption_source": ["synthetic"] * n, "caption_original": [None] * n, "caption_synthetic": ["c"] * n,
        "t5": [b"\0\0"] * n, "t5_length": [1] * n, "clap": [b"\0\0"] * n}), CORPUS)


def write_new(out: str, n_clips: int, shard_rows: int) -> int:
    """Shards + their real index entries (the shard file itself: one tiny row, its size recorded)."""
    from pipelines.corpus.index import index_name

    everything = items(n_clips)
    kept = [x for x in everything if x[3]]
    rejected = [x for x in everything if not x[3]]
    tiny = tiny_rows(kept[:1])
    shards = 0
    for kind, rows, size in (("corpus", kept, shard_rows), ("quarantine", rejected, 8192)):
        for start in range(0, len(rows), size):
            chunk = rows[start:start + size]
            shard = f"{kind}/{hashlib.sha256(chunk[0][0].encode()).hexdigest()[:24]}.parquet"
            nbytes = storage.write_parquet_atomic(tiny, storage.join(out, shard))
            tracks: dict[str, dict] = {}
            for item, tid, count, _ in chunk:
                tracks.setdefault(tid, {"track_id": tid, "track_clip_count": count,
                                        "content_hash": tid * 4 if kind == "corpus" else "", "item_ids": []})["item_ids"].append(item)
            n = len(chunk)
            entry = {"shard": shard, "table": kind, "bytes": nbytes, "rows": n,
                     "train_rows": n if kind == "corpus" else 0, "valid_rows": 0,
                     "duration_seconds": 10.24 * n if kind == "corpus" else 0.0,
                     "caption_sources": [("synthetic", n)] if kind == "corpus" else [],
                     "reasons": [] if kind == "corpus" else [("silent", n)],
                     "latent_sum": 0.0, "latent_sumsq": float(n), "latent_count": n, "tracks": list(tracks.values())}
            storage.write_parquet_atomic(conform(pa.Table.from_pylist([entry], schema=SHARD_INDEX), SHARD_INDEX),
                                         storage.join(out, index_name(shard)))
            shards += 1
    return shards


def write_old(out: str, n_files: int) -> int:
    """One corpus file per batch of 8 kept clips (the layout before shards); returns clips written."""
    everything = [x for x in items(n_files * 8 * QUARANTINE_EVERY // (QUARANTINE_EVERY - 1) + 8) if x[3]][: n_files * 8]
    for f in range(n_files):
        chunk = everything[f * 8:(f + 1) * 8]
        storage.write_parquet_atomic(tiny_rows(chunk), storage.join(out, "corpus", f"{f:024x}.parquet"))
    return len(everything)


class Stub:
    """The kit as build_manifest sees it, without a VAE config to read."""
    def models(self) -> dict:
        return {}


def time_new(out: str, n_clips: int) -> dict:
    from pipelines.corpus import account
    from pipelines.corpus.config import CorpusConfig
    from pipelines.corpus.index import OutputIndex
    from pipelines.corpus.ledger import ledger_of
    from pipelines.training.data import scan_corpus

    account.vae_scaling_factor = lambda kit: 1.0          # no kit on disk here: the VAE config is not bookkeeping
    sources = [{"track_id": track_id(t)} for t in range(-(-n_clips // CLIPS_PER_TRACK))]
    t0 = time.perf_counter()
    index = OutputIndex.load(out)
    index.prune()
    ledger = ledger_of(index)
    pending = [s for s in sources if not ledger.complete(s["track_id"])]
    t1 = time.perf_counter()
    index.refresh()
    manifest = account.build_manifest(CorpusConfig(inputs=[], output=out), Stub(), sources,
                                      {"t5_dim": 0, "clap_dim": 0}, index, Counter(), 1.0)
    t2 = time.perf_counter()
    files = scan_corpus(out)
    t3 = time.perf_counter()
    assert not pending and manifest["counts"]["incomplete_tracks"] == 0 and index.healed == 0
    assert sum(f.train_rows for f in files) == manifest["counts"]["clips"]
    return {"resume_s": t1 - t0, "manifest_s": t2 - t1, "training_index_s": t3 - t2, "total_s": t3 - t0,
            "shards": index.entries.num_rows, "corpus_files": len(files), "clips": manifest["counts"]["clips"]}


def time_old(out: str) -> dict:
    """The old bookkeeping: every file's account columns read one by one (start + manifest), every footer +
    `split` read by training (16 threads), as pipelines/corpus/ledger.py and training/data.py did."""
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.compute as pc

    files = storage.list_files(storage.join(out, "corpus"), ".parquet")
    account = ["clip_id", "track_id", "track_clip_count", "content_hash", "duration_seconds", "split", "caption_source"]

    def ledger_pass() -> int:
        return pa.concat_tables([storage.read_parquet(u, columns=account) for u in files]).num_rows

    def footer_and_split(uri: str) -> int:
        import pyarrow.parquet as pq

        fs, path = storage.filesystem(uri)
        with fs.open_input_file(path) as f:
            pq.ParquetFile(f).schema_arrow
        return int(pc.sum(pc.equal(storage.read_parquet(uri, columns=["split"])["split"], "train")).as_py())

    t0 = time.perf_counter()
    ledger_pass()
    t1 = time.perf_counter()
    ledger_pass()
    t2 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        rows = sum(pool.map(footer_and_split, files))
    t3 = time.perf_counter()
    return {"resume_s": t1 - t0, "manifest_s": t2 - t1, "training_index_s": t3 - t2, "total_s": t3 - t0,
            "files": len(files), "clips": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=1_000_000)
    p.add_argument("--old-files", type=int, default=20_000)
    p.add_argument("--shard-rows", type=int, default=1024)
    p.add_argument("--keep", default=None, help="write the simulated outputs here and keep them")
    p.add_argument("--json", default=None)
    p.add_argument("--s3", action="store_true", help="on a local S3 server (SeaweedFS, 127.0.0.1) instead of local disk")
    a = p.parse_args(argv)
    a.clips -= a.clips % CLIPS_PER_TRACK          # whole tracks only: every track complete
    server = None
    if a.s3:
        from tests.s3server import S3Server, set_env

        server = S3Server().start()
        set_env(server.env())
        server.create_bucket("bookkeeping")
        root = "s3://bookkeeping/run"
    else:
        root = a.keep or tempfile.mkdtemp(prefix="bookkeeping-")
    try:
        new_out, old_out = storage.join(root, "new"), storage.join(root, "old")
        t = time.perf_counter()
        shards = write_new(new_out, a.clips, a.shard_rows)
        print(f"new layout: {a.clips:,} clips in {shards:,} shards + index written in {time.perf_counter() - t:.1f} s", flush=True)
        new = time_new(new_out, a.clips)
        t = time.perf_counter()
        old_clips = write_old(old_out, a.old_files)
        print(f"old layout: {a.old_files:,} files ({old_clips:,} clips) written in {time.perf_counter() - t:.1f} s", flush=True)
        old = time_old(old_out)
        scale = (a.clips * (QUARANTINE_EVERY - 1) / QUARANTINE_EVERY / 8) / old["files"]   # files at --clips kept clips
        old_at_scale = {k: v * scale for k, v in old.items() if k.endswith("_s")}
        result = {"storage": "s3 (SeaweedFS, loopback)" if a.s3 else "local disk",
                  "clips": a.clips, "shard_rows": a.shard_rows, "new": new, "old_measured": old,
                  "old_extrapolated_files": round(old["files"] * scale), "old_extrapolated": old_at_scale,
                  "ratio": old_at_scale["total_s"] / new["total_s"], "cpus": os.cpu_count(),
                  "load_avg": os.getloadavg()}
        print("\n| layout | files | resume s | manifest s | training index s | total s |\n|---|---|---|---|---|---|")
        print(f"| shards + index (measured, {a.clips:,} clips) | {new['shards']:,} | {new['resume_s']:.2f} | "
              f"{new['manifest_s']:.2f} | {new['training_index_s']:.2f} | **{new['total_s']:.2f}** |")
        print(f"| 1 file per 8 clips (measured, {old['clips']:,} clips) | {old['files']:,} | {old['resume_s']:.2f} | "
              f"{old['manifest_s']:.2f} | {old['training_index_s']:.2f} | {old['total_s']:.2f} |")
        print(f"| 1 file per 8 clips (x{scale:.2f} linear, {a.clips:,} clips) | {result['old_extrapolated_files']:,} | "
              f"{old_at_scale['resume_s']:.1f} | {old_at_scale['manifest_s']:.1f} | {old_at_scale['training_index_s']:.1f} | "
              f"**{old_at_scale['total_s']:.1f}** |")
        print(f"\nratio old/new at {a.clips:,} clips: {result['ratio']:.0f}x; load average {result['load_avg'][0]:.1f}")
        if a.json:
            Path(a.json).write_text(json.dumps(result, indent=2))
    finally:
        if server is not None:
            server.cleanup()
        elif not a.keep:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
