"""What a corpus run is asked to do: `CorpusConfig` (inputs, output, kit, gates, caption mix, shards, resources, plan)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

from pipelines.corpus import fingerprint, loudness
from schemas import constants

# Every stage of the pipeline, in order (docs/architecture.md "Batches between stages").
STAGES = ("frontend", "mel", "vae", "descriptors", "tags", "captions", "mix", "text", "writer")
MODEL_STAGES = ("vae", "tags", "captions", "text")          # actors that load a model
RESOURCE_KEYS = ("cpus", "gpus", "actors", "memory")         # any other key is a custom Ray resource

# Shard targets for the paper kit (docs/corpus.md §3): ~612 KiB a clip at 60 T5 tokens, so 512 MiB is
# ~860 clips; 1,024 rows caps shards of short captions. Row groups of 64 clips (~38 MiB) read well.
SHARD_ROWS = 1024
SHARD_BYTES = 512 * 2**20
ROW_GROUP_ROWS = 64
QUARANTINE_SHARD_ROWS = 8192   # quarantine rows are a few hundred bytes: sharded by count alone

# How the stages run (docs/architecture.md "Two plans"): "staged", a Ray Data operator per stage with its own
# resources; "fused", one pool of 1-CPU actors each taking a track through every stage (no hops between stages, the
# models loaded once per actor: CPU-only runs with a CPU kit); "auto": placement.place decides from kit and cluster.
PLANS = ("auto", "fused", "staged")
# Ray leaves CUDA_VISIBLE_DEVICES alone for a worker that asks for no GPU, which then sees every GPU of its node:
# 0-GPU stages set it empty (an explicit value wins even over Ray's own assignment, so never on GPU stages).
HIDE_CUDA = {"CUDA_VISIBLE_DEVICES": ""}
FUSED_CPUS = 1.0               # one core's work: every stage in turn, 1 torch / BLAS thread, as Ray sets for 1 CPU


@dataclass
class StageResources:
    """What one stage asks Ray for: CPUs and GPUs per task or actor, the actor-pool size (0: plain tasks),
    memory per actor in bytes (0: unset), and custom node resources such as {"corpus_gpu": 0.01}."""
    cpus: float = 1.0
    gpus: float = 0.0
    actors: int = 0
    memory: int = 0
    resources: dict[str, float] = field(default_factory=dict)

    def ray_options(self, env: Mapping[str, str] | None = None) -> dict:
        """num_cpus / num_gpus / memory / resources as map_batches and .options() take them, and as runtime_env
        env_vars `env` plus, without a GPU, HIDE_CUDA (Ray merges them with the job's own env_vars)."""
        out: dict = {"num_cpus": self.cpus}
        if self.gpus:
            out["num_gpus"] = self.gpus
        if self.memory:
            out["memory"] = self.memory
        if self.resources:
            out["resources"] = dict(self.resources)
        env_vars = {**(env or {}), **({} if self.gpus else HIDE_CUDA)}
        if env_vars:
            out["runtime_env"] = {"env_vars": env_vars}
        return out


@dataclass
class CorpusConfig:
    inputs: list[str]
    output: str
    kit: str = "tiny"
    limit: int | None = None
    min_clip_seconds: float = constants.MIN_CLIP_SECONDS
    silence_dbfs: float = constants.SILENCE_DBFS
    min_lufs: float = loudness.MIN_LUFS                       # clip gate too_quiet
    max_clipped_fraction: float = loudness.MAX_CLIP_FRACTION  # clip gate clipped
    normalise_loudness: float | None = None                   # LUFS target instead of the paper's peak 0.5 (off)
    near_duplicate_threshold: float = fingerprint.MATCH_THRESHOLD   # 0: no near-duplicate stage
    valid_fraction: float = 0.02
    original_caption_probability: float = constants.CAPTION_ORIGINAL_PROBABILITY
    caption_backend: str = "transformers"   # or "vllm" (GPU clusters)
    seed: int = 0
    batch_size: int = 8
    actors_per_stage: int = 1              # defaults of the model stages; stage_resources overrides per stage
    cpus_per_actor: float = 0.5            # fractional: whole-CPU actors starve the CPU tasks on small machines
    gpus_per_actor: float | None = None    # None: placement shares the cluster's GPUs out; 0: models on CPU
    writers: int = 2                       # writer actors, each filling its own shards
    shard_rows: int = SHARD_ROWS
    shard_bytes: int = SHARD_BYTES
    row_group_rows: int = ROW_GROUP_ROWS
    quarantine_shard_rows: int = QUARANTINE_SHARD_ROWS
    stage_resources: dict[str, dict] = field(default_factory=dict)   # stage -> StageResources fields
    plan: str = "auto"                     # PLANS: fused, staged, or auto (placement.place)
    fused_actors: int = 0                  # the fused plan's actors; 0: one per CPU Ray has beside the writers

    def stage(self, name: str) -> StageResources:
        """The resources of one stage: its default, then this config's overrides."""
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}")
        base = mix_resources(self) if name == "mix" else default_resources(self)[name]
        return StageResources(**{**asdict(base), **self.stage_resources.get(name, {})})


def fused_pool_size(config: CorpusConfig, ray_cpus: float, cores: int | None = None) -> int:
    """The fused plan's actor count: --fused-actors, or one 1-CPU actor per CPU Ray has beside the writers, at most
    one per core of this machine when Ray runs on it alone (`cores`): a local Ray may declare more CPUs than there
    are cores, and a third actor on two cores measured slower than two (docs/benchmarks.md)."""
    if config.fused_actors:
        return config.fused_actors
    writers = config.stage("writer")
    fit = int((ray_cpus - writers.cpus * max(1, writers.actors)) // FUSED_CPUS)
    return max(1, min(fit, cores) if cores else fit)


def front_end_gates(config: CorpusConfig) -> dict[str, float]:
    """The gate settings process_track takes: the dedup pre-pass and the front end must use the same ones."""
    return dict(min_clip_seconds=config.min_clip_seconds, silence_dbfs=config.silence_dbfs,
                min_lufs=config.min_lufs, max_clipped_fraction=config.max_clipped_fraction)


def default_resources(config: CorpusConfig) -> dict[str, StageResources]:
    """Model stages: an actor pool each (actors_per_stage x cpus/gpus_per_actor); CPU stages: tasks. GPUs the
    cluster has are shared out by placement.place, not here."""
    model = dict(cpus=config.cpus_per_actor, gpus=config.gpus_per_actor or 0.0, actors=config.actors_per_stage)
    return {"frontend": StageResources(cpus=1.0), "mel": StageResources(cpus=1.0),
            "descriptors": StageResources(cpus=1.0),
            **{name: StageResources(**model) for name in MODEL_STAGES},
            "writer": StageResources(cpus=0.25, actors=config.writers)}


def mix_resources(config: CorpusConfig) -> StageResources:
    """The mix's task resources: the text stage's (CPUs, GPUs, memory, node resources), so that Ray fuses the mix
    into the T5 actors (it fuses a task stage into the next actor stage only when their resources are equal)."""
    text = config.stage("text")
    return StageResources(cpus=text.cpus, gpus=text.gpus, memory=text.memory, resources=dict(text.resources))


def parse_stage_resources(specs: list[str]) -> dict[str, dict]:
    """`["vae=gpus:1,actors:8,corpus_gpu:0.01", "writer=actors:4"]` -> {stage: StageResources fields}.
    Keys other than cpus/gpus/actors/memory are custom Ray resources."""
    out: dict[str, dict] = {}
    for spec in specs:
        stage, _, rest = spec.partition("=")
        stage = stage.strip()
        if stage not in STAGES or not rest:
            raise ValueError(f"--stage-resources {spec!r}: expected STAGE=key:value,... with STAGE in {', '.join(STAGES)}")
        entry = out.setdefault(stage, {})
        for pair in rest.split(","):
            key, _, value = pair.partition(":")
            key = key.strip()
            if not value:
                raise ValueError(f"--stage-resources {spec!r}: {pair!r} is not key:value")
            if key in RESOURCE_KEYS:
                entry[key] = int(float(value)) if key in ("actors", "memory") else float(value)
            else:
                entry.setdefault("resources", {})[key] = float(value)
    return out


def load_stage_resources(text: str) -> dict[str, dict]:
    """A --resources file (YAML or JSON): {stage: {cpus, gpus, actors, memory, resources: {name: amount}}}."""
    import yaml  # YAML is a superset of JSON: one parser for both

    data = yaml.safe_load(text) or {}
    out: dict[str, dict] = {}
    for stage, fields in data.items():
        if stage not in STAGES:
            raise ValueError(f"resources file: unknown stage {stage!r}; stages: {', '.join(STAGES)}")
        unknown = set(fields) - set(RESOURCE_KEYS) - {"resources"}
        if unknown:
            raise ValueError(f"resources file: stage {stage!r} has unknown keys {sorted(unknown)}")
        out[stage] = dict(fields)
    return out
