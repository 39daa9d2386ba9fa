"""Placement without Ray: which plan a kit and a cluster get, how the GPUs are shared out, what 0-GPU stages hide."""
from __future__ import annotations

import pytest

from pipelines.corpus.config import MODEL_STAGES, CorpusConfig, StageResources, front_end_gates, fused_pool_size
from pipelines.corpus.placement import Cluster, cpu_kit, place
from pipelines.models.kits import load_kit

CPU_STAGES = ("frontend", "mel", "descriptors", "writer")
HIDDEN = {"env_vars": {"CUDA_VISIBLE_DEVICES": ""}}


def config(**fields) -> CorpusConfig:
    return CorpusConfig(inputs=[], output="x", **fields)


def test_cpu_kits_are_the_tiny_kit_and_wheel_models_only():
    assert cpu_kit(load_kit("tiny")) and cpu_kit(load_kit("cpu-real"))
    assert not cpu_kit(load_kit("paper")) and not cpu_kit(load_kit("paper-shaped"))


def test_plan_from_kit_cluster_and_declared_resources():
    cpu, gpu = Cluster(cpus=4, cores=2), Cluster(cpus=16, gpus=1)
    assert place(config(), cpu, small_kit=True).plan == "fused"           # the tiny kit on CPUs: as measured
    assert place(config(writers=4), cpu, small_kit=True).plan == "fused"
    assert place(config(kit="paper"), cpu, small_kit=False).plan == "staged"   # big models: once each, not per CPU
    assert place(config(), gpu, small_kit=True).plan == "staged"          # GPUs: whatever the kit
    assert place(config(kit="paper"), gpu, small_kit=False).plan == "staged"
    for declared in ({"stage_resources": {"vae": {"gpus": 1.0}}}, {"gpus_per_actor": 0.0}, {"actors_per_stage": 2},
                     {"cpus_per_actor": 1.0}, {"caption_backend": "vllm"}):
        assert place(config(**declared), cpu, small_kit=True).plan == "staged", declared
    assert place(config(plan="staged"), cpu, True).plan == "staged"
    assert place(config(plan="fused", actors_per_stage=2), gpu, True).plan == "fused"
    with pytest.raises(ValueError, match="only for a CPU kit"):
        place(config(kit="paper", plan="fused"), cpu, small_kit=False)
    with pytest.raises(ValueError, match="vllm"):
        place(config(plan="fused", caption_backend="vllm"), cpu, True)
    with pytest.raises(ValueError, match="plans"):
        place(config(plan="both"), cpu, True)


def test_the_paper_kit_on_one_gpu_shares_it_and_keeps_the_cpu_stages_off_it():
    plan = place(config(kit="paper"), Cluster(cpus=16, gpus=1, cores=16), cpu_kit(load_kit("paper")))
    assert plan.plan == "staged" and plan.pool == 0 and plan.why == "1 GPU in the cluster"
    for name in MODEL_STAGES:
        assert (plan.stage(name).gpus, plan.stage(name).actors) == (0.25, 1), name
        assert plan.options(name) == {"num_cpus": 0.5, "num_gpus": 0.25}, name       # Ray gives it its device
    assert plan.options("mix") == plan.options("text")                                # fused into the T5 actors
    for name in CPU_STAGES:
        assert plan.stage(name).gpus == 0 and plan.options(name)["runtime_env"] == HIDDEN, name
    assert plan.options("frontend", {"AWS_REGION": "x"})["runtime_env"] == {
        "env_vars": {"AWS_REGION": "x", "CUDA_VISIBLE_DEVICES": ""}}
    lines = plan.lines()
    assert lines[0] == "plan: staged (1 GPU in the cluster), an operator per stage:"
    assert "  vae: 1 actor x 0.25 GPU, 0.5 CPU" in lines and "  mix: inside the text actors (same resources, fused by Ray)" in lines
    assert "  frontend: tasks of 1 CPU, no GPU (CUDA hidden)" in lines


@pytest.mark.parametrize("gpus, shares", [
    (2, {"vae": (0.5, 1), "tags": (0.5, 1), "captions": (0.5, 1), "text": (0.5, 1)}),
    # 3 GPUs of 2 slots: the 2 spare slots go to the slowest stages
    (3, {"vae": (0.5, 1), "tags": (0.5, 1), "captions": (0.5, 2), "text": (0.5, 2)}),
    (4, {"vae": (1.0, 1), "tags": (1.0, 1), "captions": (1.0, 1), "text": (1.0, 1)}),
    (6, {"vae": (1.0, 1), "tags": (1.0, 1), "captions": (1.0, 2), "text": (1.0, 2)}),
    (8, {"vae": (1.0, 2), "tags": (1.0, 2), "captions": (1.0, 2), "text": (1.0, 2)}),
])
def test_gpus_are_shared_so_that_every_actor_fits(gpus, shares):
    plan = place(config(), Cluster(cpus=64, gpus=gpus), small_kit=True)
    got = {n: (plan.stage(n).gpus, plan.stage(n).actors) for n in MODEL_STAGES}
    assert got == shares
    assert sum(g * a for g, a in got.values()) <= gpus
    assert all(round(1 / g) * g == 1 for g, _ in got.values())      # 1/k: k actors fill one GPU exactly


def test_declared_gpus_and_actors_are_kept_and_the_rest_shares_what_is_left():
    # vae declared 0.5 GPU on a 1-GPU box: the other three share the other half
    plan = place(config(stage_resources={"vae": {"gpus": 0.5}}), Cluster(cpus=16, gpus=1), True)
    assert plan.stage("vae").gpus == 0.5 and [plan.stage(n).gpus for n in ("tags", "captions", "text")] == [0.1666] * 3
    # actors declared: kept, the fraction follows (8 actors on 2 GPUs: 4 a GPU)
    plan = place(config(actors_per_stage=2), Cluster(cpus=16, gpus=2), True)
    assert {(plan.stage(n).gpus, plan.stage(n).actors) for n in MODEL_STAGES} == {(0.25, 2)}
    # --gpus-per-actor 0: the models on CPU, CUDA hidden from them too
    plan = place(config(gpus_per_actor=0.0), Cluster(cpus=16, gpus=1), True)
    assert all(plan.options(n)["runtime_env"] == HIDDEN for n in MODEL_STAGES)
    # a cluster file that places every stage: nothing changed
    files = {n: {"gpus": 1.0, "actors": 4} for n in MODEL_STAGES}
    plan = place(config(stage_resources=files), Cluster(cpus=64, gpus=32), False)
    assert all((plan.stage(n).gpus, plan.stage(n).actors) == (1.0, 4) for n in MODEL_STAGES)


def test_vllm_engines_take_whole_gpus_and_the_other_model_stages_share_the_rest():
    plan = place(config(caption_backend="vllm"), Cluster(cpus=16, gpus=2), False)
    assert (plan.stage("captions").gpus, plan.stage("captions").actors) == (1.0, 1)    # the engine's bundle
    assert [plan.stage(n).gpus for n in ("vae", "tags", "text")] == [0.3333] * 3
    assert "  captions: vLLM, 1 engine x 1 GPU, 0.5 CPU" in plan.lines()
    # one GPU, taken by the engine: the others run on CPU, CUDA hidden
    plan = place(config(caption_backend="vllm"), Cluster(cpus=16, gpus=1), False)
    assert plan.stage("captions").gpus == 1.0 and all(plan.stage(n).gpus == 0 for n in ("vae", "tags", "text"))
    with pytest.raises(ValueError, match="whole GPU each"):
        place(config(caption_backend="vllm", stage_resources={"captions": {"actors": 3}}), Cluster(16, 2), False)
    # declared: kept as declared (corpus_resources.yaml)
    plan = place(config(caption_backend="vllm", stage_resources={"captions": {"gpus": 1.0, "actors": 2}}),
                 Cluster(16, 4), False)
    assert (plan.stage("captions").gpus, plan.stage("captions").actors) == (1.0, 2)
    assert [plan.stage(n).gpus for n in ("vae", "tags", "text")] == [0.5] * 3      # the 2 GPUs left, 2 slots each


def test_fused_plan_is_one_pool_of_cpu_actors_that_never_see_cuda():
    plan = place(config(), Cluster(cpus=4, cores=2), small_kit=True)
    assert plan.pool == 2 and plan.worker_options() == {"num_cpus": 1.0, "runtime_env": HIDDEN}
    assert plan.lines()[0].startswith("plan: fused (no GPU in the cluster, CPU kit 'tiny'): 2 actors x 1 CPU")
    assert plan.gates == front_end_gates(config())
    # forced on a GPU box: still no GPU, still hidden
    plan = place(config(plan="fused"), Cluster(cpus=8, gpus=2), small_kit=True)
    assert plan.worker_options()["runtime_env"] == HIDDEN and plan.stage("writer").ray_options()["runtime_env"] == HIDDEN


def test_ray_options_hide_cuda_only_without_a_gpu():
    assert StageResources(cpus=1.0).ray_options() == {"num_cpus": 1.0, "runtime_env": HIDDEN}
    assert StageResources(cpus=1.0, gpus=0.5).ray_options({"A": "1"}) == {
        "num_cpus": 1.0, "num_gpus": 0.5, "runtime_env": {"env_vars": {"A": "1"}}}
    assert StageResources(cpus=1.0, gpus=1.0).ray_options() == {"num_cpus": 1.0, "num_gpus": 1.0}


def test_fused_pool_is_one_actor_per_cpu_beside_the_writers_at_most_one_per_core():
    c = config()                                                   # 2 writers x 0.25 CPU
    assert fused_pool_size(c, ray_cpus=4.0, cores=2) == 2          # a local Ray declaring 4 CPUs on 2 cores
    assert fused_pool_size(c, ray_cpus=4.0) == 3                   # a cluster: its CPUs are cores
    assert fused_pool_size(c, ray_cpus=64.0, cores=64) == 63
    assert fused_pool_size(c, ray_cpus=0.5) == 1
    assert fused_pool_size(config(fused_actors=5), ray_cpus=4.0, cores=2) == 5
