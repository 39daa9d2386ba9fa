"""Test-only: the corpus job on a private local Ray with logical GPUs, every stage recording where it runs.

`python -c "from tests.placement_probe import main; main()" OUT PROBES INPUT [--plan P]` starts its own Ray
(6 CPUs, 2 logical GPUs, loopback), swaps each stage callable for a subclass or wrapper of the same name that
writes one JSON file per process and stage into PROBES (the CUDA_VISIBLE_DEVICES it sees, and Ray's assigned
resources when it runs in a Ray worker), runs prepare_corpus and prints the manifest's counts as its last line.
The names stay the stages' own, so Ray names and fuses the operators as in a real run.
"""
from __future__ import annotations

import json
import os
import sys

from pipelines.corpus import captions, encode, frontend, fused, tags, writer

PROBE_DIR = "FLUXMUSIC_PLACEMENT_PROBES"
_seen: set[str] = set()


def record(stage: str) -> None:
    """Once per process and stage: what this process sees."""
    out = os.environ.get(PROBE_DIR)
    if not out or stage in _seen:
        return
    _seen.add(stage)
    resources = None
    import ray

    if ray.is_initialized():          # a Ray worker (not a crash-domain child)
        resources = ray.get_runtime_context().get_assigned_resources()
    with open(os.path.join(out, f"{stage}-{os.getpid()}.json"), "w") as f:
        json.dump({"stage": stage, "pid": os.getpid(), "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
                   "resources": resources}, f)


class VaeStage(encode.VaeStage):
    def __call__(self, batch):
        record("vae")
        return super().__call__(batch)


class TagStage(tags.TagStage):
    def __call__(self, batch):
        record("tags")
        return super().__call__(batch)


class CaptionStage(captions.CaptionStage):
    def __call__(self, batch):
        record("captions")
        return super().__call__(batch)


class TextStage(encode.TextStage):
    def __call__(self, batch):
        record("text")
        return super().__call__(batch)


class TrackWorker(fused.TrackWorker):
    def __call__(self, tracks):
        record("fused")
        yield from super().__call__(tracks)


class ShardWriter(writer.ShardWriter):
    def add(self, *args, **kwargs):
        record("writer")
        return super().add(*args, **kwargs)


def front_end(source, **kwargs):
    record("frontend")
    return frontend.front_end(source, **kwargs)


def add_log_mel(batch, **kwargs):
    record("mel")
    return frontend.add_log_mel(batch, **kwargs)


def add_signal_tags(batch, **kwargs):
    record("descriptors")
    return tags.add_signal_tags(batch, **kwargs)


def mix_captions(batch, **kwargs):
    record("mix")
    return captions.mix_captions(batch, **kwargs)


def route_to_writers(batch, **kwargs):
    record("route")
    return writer.route_to_writers(batch, **kwargs)


# (module, name) -> the probe; set in the driver only: the stage lists are built there and name these
PATCHES = [(encode, "VaeStage", VaeStage), (encode, "TextStage", TextStage), (tags, "TagStage", TagStage),
           (captions, "CaptionStage", CaptionStage), (fused, "TrackWorker", TrackWorker),
           (writer, "ShardWriter", ShardWriter), (frontend, "front_end", front_end),
           (frontend, "add_log_mel", add_log_mel), (tags, "add_signal_tags", add_signal_tags),
           (captions, "mix_captions", mix_captions), (writer, "route_to_writers", route_to_writers)]


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("output")
    p.add_argument("probes")
    p.add_argument("input")
    p.add_argument("--plan", default="auto")
    p.add_argument("--gpus", type=int, default=2)
    a = p.parse_args(argv)
    os.environ[PROBE_DIR] = a.probes          # before Ray starts: every worker (and its children) inherits it
    from pipelines.corpus import pipeline
    from pipelines.corpus.config import CorpusConfig
    from pipelines.raylocal import init_local_ray

    for module, name, probe in PATCHES:
        setattr(module, name, probe)
        if hasattr(pipeline, name):           # a name the pipeline imported at module level
            setattr(pipeline, name, probe)
    init_local_ray(num_cpus=6, num_gpus=a.gpus)
    config = CorpusConfig(inputs=[a.input], output=a.output, plan=a.plan, batch_size=2, row_group_rows=2,
                          near_duplicate_threshold=0.0)
    manifest = pipeline.prepare_corpus(config)
    print(json.dumps(manifest["counts"]), flush=True)
    sys.stdout.flush()
