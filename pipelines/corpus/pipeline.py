"""The corpus job: every stage wired into one streamed Ray Data pipeline, resumed from the shard index.

discover -> front end (decode, resample, segment, gates) -> log-mel + signal descriptors -> VAE -> CLAP tags
-> captions (transformers, or vLLM) -> 20/80 mix + T5 + CLAP -> a pool of shard-writer actors.
Two plans run those stages, chosen with every stage's resources once per run (`placement.plan_run`, a RunPlan):
staged, an operator per stage (CPU tasks, model actor pools; GPU clusters, or large kits); fused, one pool of actors
each taking a track through every stage (CPU-only runs with a CPU kit). docs/architecture.md "Two plans".
"""
from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable

from pipelines import storage
from pipelines.corpus.account import build_manifest
from pipelines.corpus.config import CorpusConfig, StageResources
from pipelines.corpus.dedup import may_keep, start_registry, write_fingerprints
from pipelines.corpus.failures import FailureWatch
from pipelines.corpus.index import OutputIndex
from pipelines.corpus.ledger import ledger_of
from pipelines.corpus.placement import RunPlan, plan_run
from pipelines.corpus.writer import start_writers, write_null_text
from schemas.manifest import MANIFEST


def clip_steps(config: CorpusConfig) -> list[tuple[str, Callable, dict]]:
    """The clip stages in the order both plans run them: (stage, callable class or function, its kwargs).
    All CPU work of a clip (log-mel, descriptors) comes before the first model, so on a cluster a clip crosses
    from CPU to GPU nodes once; the mix comes just before T5 (with the text stage's resources Ray fuses it in)."""
    from pipelines.corpus.captions import CaptionStage, mix_captions
    from pipelines.corpus.encode import TextStage, VaeStage
    from pipelines.corpus.frontend import add_log_mel
    from pipelines.corpus.tags import TagStage, add_signal_tags

    kit = {"kit_name_or_path": config.kit}
    return [("mel", add_log_mel, {"loudness_target": config.normalise_loudness}),
            ("descriptors", add_signal_tags, {}),
            ("vae", VaeStage, kit),
            ("tags", TagStage, kit),
            ("captions", CaptionStage, dict(kit, backend=config.caption_backend, seed=config.seed)),
            ("mix", mix_captions, dict(p_original=config.original_caption_probability, seed=config.seed)),
            ("text", TextStage, kit)]


def build_dataset(config: CorpusConfig, sources: list[dict], registry, writers: list, plan: RunPlan):
    """The streamed Ray Data pipeline from discovered tracks to writer summaries (lazy), in the run's plan.
    A track that killed the dedup pre-pass carries its crash detail ("crashed") and is quarantined, not decoded."""
    import ray
    import ray.data

    crashed = ray.get(registry.crashes.remote()) if registry is not None else {}
    sources = [dict(s, crashed=crashed.get(s["track_id"], "")) for s in sources]
    ds = ray.data.from_items(sources, override_num_blocks=max(1, len(sources)))
    if plan.plan == "fused":
        return _fused(ds, config, registry, writers, plan)
    return _staged(ds, config, registry, writers, plan)


def _staged(ds, config: CorpusConfig, registry, writers: list, plan: RunPlan):
    """An operator per stage with the stage's own CPUs, GPUs, actors and node resources. Every stage but vLLM's
    runs in its worker's crash domain (crashguard.guarded_step; the front end's decode in front_end itself), and
    Ray retries a task or restarts an actor that dies anyway at most RAY_RETRIES times."""
    import ray.data

    from pipelines.corpus.captions import add_vllm_caption_stage, engine_bundle
    from pipelines.corpus.crashguard import RAY_RETRIES, guarded_step
    from pipelines.corpus.frontend import front_end
    from pipelines.corpus.writer import route_to_writers

    env = _worker_env()

    def tasks(name: str, actors: bool = False) -> dict:
        options = plan.options(name, env)                     # CUDA hidden from the 0-GPU stages
        # Ray fuses the mix into the T5 actors only if their remote args are equal, and a task cannot take an actor's
        # retry options: that pair keeps Ray's defaults (their code still runs in the crash domain).
        if name == "text" or (name == "mix" and options == plan.options("text", env)):
            return options
        retries = dict(max_restarts=RAY_RETRIES, max_task_retries=RAY_RETRIES) if actors else dict(max_retries=RAY_RETRIES)
        return dict(options, **retries)

    ds = ds.flat_map(front_end, fn_kwargs=dict(registry=registry, **plan.gates), **tasks("frontend"))
    for name, fn, kwargs in clip_steps(config):
        stage = plan.stage(name)
        if name == "captions" and config.caption_backend == "vllm":
            ds = add_vllm_caption_stage(ds, config.kit, concurrency=max(1, stage.actors), seed=config.seed,
                                        bundle=engine_bundle(stage))   # its CPUs, GPUs and node tag
        elif isinstance(fn, type):           # a model stage: an actor pool, the model loaded once per actor
            ds = ds.map_batches(guarded_step(name, fn), compute=ray.data.ActorPoolStrategy(size=max(1, stage.actors)),
                                batch_size=config.batch_size, fn_constructor_kwargs=kwargs, **tasks(name, actors=True))
        else:                                # CPU tasks; Ray fuses neighbours with equal resources into one
            ds = ds.map_batches(guarded_step(name, fn), batch_size=config.batch_size, fn_kwargs=kwargs, **tasks(name))
    # The writer stage's tasks are light (Arrow conversion): the actors hold the shards and the CPUs for zstd.
    # One row group a task: a task per model batch cost more than the conversion (benchmarks/corpus_scale.py).
    return ds.map_batches(route_to_writers, batch_size=max(config.batch_size, config.row_group_rows),
                          max_retries=RAY_RETRIES, **StageResources(cpus=0.1).ray_options(env),
                          fn_kwargs=dict(writers=writers, valid_fraction=config.valid_fraction))


def _fused(ds, config: CorpusConfig, registry, writers: list, plan: RunPlan):
    """One pool of 1-CPU TrackWorker actors, each taking whole tracks through every stage to the writers (in its
    crash domain); Ray restarts an actor that dies anyway, and retries its track, at most RAY_RETRIES times."""
    import ray.data

    from pipelines.corpus.crashguard import RAY_RETRIES, ref
    from pipelines.corpus.fused import TrackWorker

    steps = [(name, ref(fn), kwargs) for name, fn, kwargs in clip_steps(config)]    # the models' modules: child only
    worker = dict(steps=steps, front_end_kwargs=dict(registry=registry, **plan.gates),
                  writers=writers, valid_fraction=config.valid_fraction, batch_size=config.batch_size,
                  group_rows=config.row_group_rows)
    return ds.map_batches(TrackWorker, batch_size=1, compute=ray.data.ActorPoolStrategy(size=plan.pool),
                          fn_constructor_kwargs=worker, max_restarts=RAY_RETRIES,
                          max_task_retries=RAY_RETRIES, **plan.worker_options(_worker_env()))


def _worker_env() -> dict[str, str]:
    """The S3 variables of this process for the stages that read or write storage: workers of a Ray started
    before they were set (a notebook, a test session) would otherwise not see them. Empty on a cluster
    whose nodes use an instance profile. The test-only fault hook (FLUXMUSIC_INJECT_CRASH) travels the same way."""
    from pipelines.corpus.crashguard import inject_env

    return {**storage.ray_worker_env(), **inject_env()}


def run_stream(config: CorpusConfig, pending: list[dict], registry, plan: RunPlan) -> Counter:
    """Stream the pending tracks through every stage; flush the writers at the end (or when stopped by an
    error: what they hold is whole and accounted). Returns this run's item and clip counts. Raises RunFailed
    as soon as a stage of ours fails on most clips (pipelines/corpus/failures.py)."""
    import ray

    run: Counter = Counter()
    watch = FailureWatch()
    writers = start_writers(config)
    failed = False
    try:
        # batch_size None: each summary block as the writer stage makes it, so the watch sees failures soon
        for batch in build_dataset(config, pending, registry, writers, plan).iter_batches(
                batch_size=None, batch_format="numpy"):
            run["items"] += len(batch["item_id"])
            run["clips"] += int(batch["ok"].sum())
            watch.update(batch)
            if (stop := watch.tripped()) is not None:
                raise stop                    # a stage of ours fails on most clips: stop now, keep what is done
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
    plan = plan_run(config, kit)                  # the one placement decision of this run
    for line in plan.lines():
        progress(line)
    progress(f"{len(sources)} inputs discovered, {len(sources) - len(pending)} already complete, {len(pending)} to do")

    run: Counter = Counter()
    if pending:
        registry, near, hashed = start_registry(config.output, pending, ledger.hashes, gates=dict(plan.gates),
                                                near_duplicate_threshold=config.near_duplicate_threshold)
        pending = [dict(s, near_duplicate=near.get(s["track_id"], "")) for s in pending]
        # Before any row (a run may die at any point): a fingerprint counts once its track holds a corpus clip.
        write_fingerprints(config.output, hashed, may_keep(ledger.hashes, hashed, near), started)
        run = run_stream(config, pending, registry, plan)
        index.refresh()                           # reads only the entries this run committed
    dims = write_null_text(config, plan.stage("text"))
    manifest = build_manifest(config, kit, sources, dims, index, run, time.time() - started)
    manifest["ignored"] = discovery.ignored.as_dict()      # every file that is not audio, by kind
    storage.write_bytes_atomic(storage.join(config.output, MANIFEST), json.dumps(manifest, indent=2).encode())
    return manifest
