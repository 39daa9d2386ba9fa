"""The corpus job: every stage wired into one streamed Ray Data pipeline, resumed from the shard index.

discover -> front end (decode, resample, segment, gates; CPU tasks) -> log-mel + signal descriptors (CPU tasks)
-> VAE (actors) -> CLAP tags (actors) -> captions (actors, or vLLM) -> 20/80 mix + T5 + CLAP (actors)
-> writer (CPU tasks handing rows to a pool of shard-writer actors).
Each stage's CPUs, GPUs, actors and node resources come from `CorpusConfig.stage(name)`.
"""
from __future__ import annotations

import json
import time
from collections import Counter

from pipelines import storage
from pipelines.corpus.account import build_manifest
from pipelines.corpus.config import CorpusConfig, front_end_gates
from pipelines.corpus.dedup import start_registry, write_fingerprints
from pipelines.corpus.index import OutputIndex
from pipelines.corpus.ledger import ledger_of
from pipelines.corpus.writer import start_writers, write_null_text
from schemas.manifest import MANIFEST


def build_dataset(config: CorpusConfig, sources: list[dict], registry, writers: list):
    """The streamed Ray Data pipeline from discovered tracks to writer summaries (lazy)."""
    import ray.data

    from pipelines.corpus.captions import (
        CaptionStage,
        add_vllm_caption_stage,
        mix_captions,
    )
    from pipelines.corpus.encode import TextStage, VaeStage
    from pipelines.corpus.frontend import add_log_mel, front_end
    from pipelines.corpus.tags import TagStage, add_signal_tags
    from pipelines.corpus.writer import route_to_writers

    env = _worker_env()
    kit = {"kit_name_or_path": config.kit}

    def tasks(name: str) -> dict:
        return dict(config.stage(name).ray_options(), **env)

    def actors(name: str, constructor: dict) -> dict:
        stage = config.stage(name)
        return dict(compute=ray.data.ActorPoolStrategy(size=max(1, stage.actors)), batch_size=config.batch_size,
                    fn_constructor_kwargs=constructor, **stage.ray_options(), **env)

    ds = ray.data.from_items(sources, override_num_blocks=max(1, len(sources)))
    ds = ds.flat_map(front_end, fn_kwargs=dict(registry=registry, **front_end_gates(config)), **tasks("frontend"))
    # mel then descriptors, both CPU tasks with the same resources: Ray fuses them into one task (one pass of the
    # audio through the object store instead of two), and the CPU work is done before the GPU stages.
    ds = ds.map_batches(add_log_mel, batch_size=config.batch_size, fn_kwargs={"loudness_target": config.normalise_loudness},
                        **tasks("mel"))
    ds = ds.map_batches(add_signal_tags, batch_size=config.batch_size, **tasks("descriptors"))
    ds = ds.map_batches(VaeStage, **actors("vae", kit))
    ds = ds.map_batches(TagStage, **actors("tags", kit))
    if config.caption_backend == "vllm":
        ds = add_vllm_caption_stage(ds, config.kit, concurrency=max(1, config.stage("captions").actors),
                                    seed=config.seed)
    else:
        ds = ds.map_batches(CaptionStage, **actors("captions", dict(kit, backend=config.caption_backend,
                                                                    seed=config.seed)))
    # With the text stage's resources (the default) Ray fuses the mix into the T5 actors: no extra hop.
    ds = ds.map_batches(mix_captions, batch_size=config.batch_size, **tasks("mix"),
                        fn_kwargs=dict(p_original=config.original_caption_probability, seed=config.seed))
    ds = ds.map_batches(TextStage, **actors("text", kit))
    # The writer stage's tasks are light (Arrow conversion): the actors hold the shards and the CPUs for zstd.
    # One row group a task: a task per model batch cost more than the conversion (benchmarks/corpus_scale.py).
    return ds.map_batches(route_to_writers, batch_size=max(config.batch_size, config.row_group_rows), num_cpus=0.1, **env,
                          fn_kwargs=dict(writers=writers, valid_fraction=config.valid_fraction))


def _worker_env() -> dict:
    """The S3 variables of this process for the stages that read or write storage: workers of a Ray started
    before they were set (a notebook, a test session) would otherwise not see them. Empty on a cluster
    whose nodes use an instance profile."""
    env = storage.ray_worker_env()
    return {"runtime_env": {"env_vars": env}} if env else {}


def run_stream(config: CorpusConfig, pending: list[dict], registry) -> Counter:
    """Stream the pending tracks through every stage; flush the writers at the end (or when stopped by an
    error: what they hold is whole and accounted). Returns this run's item and clip counts."""
    import ray

    run: Counter = Counter()
    writers = start_writers(config)
    failed = False
    try:
        for batch in build_dataset(config, pending, registry, writers).iter_batches(batch_size=256,
                                                                                   batch_format="numpy"):
            run["items"] += len(batch["item_id"])
            run["clips"] += int(batch["ok"].sum())
    except BaseException:
        failed = True
        raise
    finally:
        try:
            run["shards"] += sum(len(s) for s in ray.get([w.flush.remote() for w in writers]))
        except Exception:  # noqa: BLE001 - a failed flush must not hide the error that stopped the stream
            if not failed:
                raise
        finally:
            for writer in writers:
                ray.kill(writer)
    return run


def prepare_corpus(config: CorpusConfig, progress=print) -> dict:
    """Run the whole pipeline on a started Ray; return (and write) the manifest with the full account."""
    from pipelines.corpus.sources import discover_all
    from pipelines.models.kits import load_kit

    started = time.time()
    kit = load_kit(config.kit)
    kit.check()                                   # a missing model fails now, not after hours
    discovery = discover_all(config.inputs)
    sources = discovery.sources
    if config.limit:
        sources = sources[: config.limit]
    index = OutputIndex.load(config.output)       # the one read of the index this run (new entries come later)
    index.prune()
    ledger = ledger_of(index)
    pending = [dict(s, skip_ids=sorted(ledger.items.get(s["track_id"], ()))) for s in sources
               if not ledger.complete(s["track_id"])]
    progress(f"{len(sources)} inputs discovered, {len(sources) - len(pending)} already complete, {len(pending)} to do")

    run: Counter = Counter()
    if pending:
        registry, near, hashed = start_registry(config.output, pending, ledger.hashes, gates=front_end_gates(config),
                                                near_duplicate_threshold=config.near_duplicate_threshold)
        pending = [dict(s, near_duplicate=near.get(s["track_id"], "")) for s in pending]
        run = run_stream(config, pending, registry)
        index.refresh()                           # reads only the entries this run committed
        # Only now: a track is indexed for later runs once it holds a committed corpus clip.
        write_fingerprints(config.output, hashed, ledger_of(index).corpus_tracks, started)
    dims = write_null_text(config)
    manifest = build_manifest(config, kit, sources, dims, index, run, time.time() - started)
    manifest["ignored"] = discovery.ignored.as_dict()      # every file that is not audio, by kind
    storage.write_bytes_atomic(storage.join(config.output, MANIFEST), json.dumps(manifest, indent=2).encode())
    return manifest
