"""The corpus job: every stage wired into one streamed Ray Data pipeline, resumed from the ledger.

discover -> front end (decode, resample, segment, gates; CPU tasks) -> log-mel (CPU) -> VAE (actors)
-> tags (actors) -> captions (actors, or vLLM) -> 20/80 mix (CPU) -> T5 + CLAP (actors) -> writer (CPU).
"""
from __future__ import annotations

import json
import time
from collections import Counter

import numpy as np

from pipelines import storage
from pipelines.corpus.account import build_manifest
from pipelines.corpus.config import CorpusConfig
from pipelines.corpus.dedup import start_registry
from pipelines.corpus.ledger import read_ledger
from pipelines.corpus.writer import write_null_text
from schemas.manifest import MANIFEST


def build_dataset(config: CorpusConfig, sources: list[dict], registry):
    """The streamed Ray Data pipeline from discovered tracks to writer summaries (lazy)."""
    import ray.data

    from pipelines.corpus.captions import CaptionStage, add_vllm_caption_stage, mix_captions
    from pipelines.corpus.encode import TextStage, VaeStage
    from pipelines.corpus.frontend import add_log_mel, front_end
    from pipelines.corpus.tags import TagStage
    from pipelines.corpus.writer import CorpusWriter

    env = _worker_env()
    actor = dict(compute=ray.data.ActorPoolStrategy(size=config.actors_per_stage), num_cpus=config.cpus_per_actor,
                 num_gpus=config.gpus_per_actor, batch_size=config.batch_size,
                 fn_constructor_kwargs={"kit_name_or_path": config.kit}, **env)
    ds = ray.data.from_items(sources, override_num_blocks=max(1, len(sources)))
    ds = ds.flat_map(front_end, num_cpus=1, fn_kwargs=dict(registry=registry, min_clip_seconds=config.min_clip_seconds,
                                                           silence_dbfs=config.silence_dbfs), **env)
    ds = ds.map_batches(add_log_mel, num_cpus=1, batch_size=config.batch_size, **env)
    ds = ds.map_batches(VaeStage, **actor)
    ds = ds.map_batches(TagStage, **actor)
    if config.caption_backend == "vllm":
        ds = add_vllm_caption_stage(ds, config.kit, concurrency=config.actors_per_stage, seed=config.seed)
    else:
        ds = ds.map_batches(CaptionStage, **dict(actor, fn_constructor_kwargs={
            "kit_name_or_path": config.kit, "backend": config.caption_backend, "seed": config.seed}))
    ds = ds.map_batches(mix_captions, num_cpus=0.25, batch_size=config.batch_size,
                        fn_kwargs=dict(p_original=config.original_caption_probability, seed=config.seed), **env)
    ds = ds.map_batches(TextStage, **actor)
    return ds.map_batches(CorpusWriter, compute=ray.data.ActorPoolStrategy(size=1), num_cpus=0.25, batch_size=config.batch_size,
                          fn_constructor_kwargs=dict(output=config.output, valid_fraction=config.valid_fraction), **env)


def _worker_env() -> dict:
    """The S3 variables of this process for the stages that read or write storage: workers of a Ray started
    before they were set (a notebook, a test session) would otherwise not see them. Empty on a cluster
    whose nodes use an instance profile."""
    env = storage.ray_worker_env()
    return {"runtime_env": {"env_vars": env}} if env else {}


def prepare_corpus(config: CorpusConfig, progress=print) -> dict:
    """Run the whole pipeline on a started Ray; return (and write) the manifest with the full account."""
    from pipelines.models.kits import load_kit
    from pipelines.corpus.sources import discover_all

    started = time.time()
    kit = load_kit(config.kit)
    kit.check()                                   # a missing model fails now, not after hours
    discovery = discover_all(config.inputs)
    sources = discovery.sources
    if config.limit:
        sources = sources[: config.limit]
    ledger = read_ledger(config.output)
    pending = [dict(s, skip_ids=sorted(ledger.items.get(s["track_id"], ()))) for s in sources
               if not ledger.complete(s["track_id"])]
    progress(f"{len(sources)} inputs discovered, {len(sources) - len(pending)} already complete, {len(pending)} to do")

    run = Counter()
    latent = np.zeros(3)
    if pending:
        registry = start_registry(config.output, pending, ledger.hashes, min_clip_seconds=config.min_clip_seconds,
                                  silence_dbfs=config.silence_dbfs)
        for batch in build_dataset(config, pending, registry).iter_batches(batch_size=256, batch_format="numpy"):
            run["items"] += len(batch["item_id"])
            run["clips"] += int(batch["ok"].sum())
            latent += [batch["latent_sum"].sum(), batch["latent_sumsq"].sum(), batch["latent_count"].sum()]
    dims = write_null_text(config)
    manifest = build_manifest(config, kit, sources, dims, latent, run, time.time() - started)
    manifest["ignored"] = discovery.ignored.as_dict()      # every file that is not audio, by kind
    storage.write_bytes_atomic(storage.join(config.output, MANIFEST), json.dumps(manifest, indent=2).encode())
    return manifest
