"""The corpus job's Ray Data plans: staged, where the stages Ray is meant to fuse are fused, each operator with its
placement's resources; fused, one actor pool. Built lazily on the session Ray; nothing is loaded or run."""
from __future__ import annotations

import re

from pipelines.corpus.config import CorpusConfig
from pipelines.corpus.pipeline import build_dataset
from pipelines.corpus.placement import Cluster, cpu_kit, place
from pipelines.models.kits import load_kit

def _optimized_physical_plan(ds, capsys) -> str:
    capsys.readouterr()
    ds.explain()
    text = capsys.readouterr().out
    return text.split("Physical Plan (Optimized)")[1]


def _remote_args(ds) -> dict[str, dict]:
    """Every map operator of the dataset's logical plan: name -> the Ray options its tasks or actors get."""
    out, todo = {}, [ds._logical_plan.dag]
    while todo:
        op = todo.pop()
        if hasattr(op, "ray_remote_args"):
            out[op.name] = op.ray_remote_args
        todo.extend(op.input_dependencies)
    return out


SOURCE = {"source_uri": "/music/a.flac", "track_id": "0" * 16, "metadata": {}}
CPU_ONLY = Cluster(cpus=4, cores=2)


def build(config: CorpusConfig, cluster: Cluster = CPU_ONLY):
    return build_dataset(config, [SOURCE], None, [], place(config, cluster, cpu_kit(load_kit(config.kit))))


def test_staged_plan_fuses_mel_with_descriptors_and_mix_with_text(ray_local, capsys):
    config = CorpusConfig(inputs=[], output="x", plan="staged")
    plan = _optimized_physical_plan(build(config), capsys)
    operators = re.findall(r"(TaskPool|ActorPool)MapOperator\[([^\]]+)\]", plan)
    assert ("TaskPool", "MapBatches(add_log_mel)->MapBatches(add_signal_tags)") in operators
    assert ("ActorPool", "MapBatches(mix_captions)->MapBatches(TextStage)") in operators
    # the CPU stages of a clip come before its first GPU stage (explain prints the last operator first)
    names = [name for _, name in operators][::-1]
    assert names.index("MapBatches(add_log_mel)->MapBatches(add_signal_tags)") < names.index("MapBatches(VaeStage)")

    # a mix given resources of its own is a task stage of its own again
    config = CorpusConfig(inputs=[], output="x", stage_resources={"mix": {"cpus": 0.25}})      # auto: staged
    plan = _optimized_physical_plan(build(config), capsys)
    assert "TaskPoolMapOperator[MapBatches(mix_captions)]" in plan

    # on GPUs too: the mix follows the text stage's share, so it is still fused into the T5 actors
    plan = _optimized_physical_plan(build(CorpusConfig(inputs=[], output="x"), Cluster(cpus=16, gpus=1)), capsys)
    assert "ActorPoolMapOperator[MapBatches(mix_captions)->MapBatches(TextStage)]" in plan


def test_paper_kit_on_one_gpu_model_actors_share_it_and_cpu_stages_hide_it(ray_local):
    args = _remote_args(build(CorpusConfig(inputs=[], output="x", kit="paper"), Cluster(cpus=16, gpus=1)))
    for name in ("MapBatches(VaeStage)", "MapBatches(TagStage)", "MapBatches(CaptionStage)", "MapBatches(TextStage)",
                 "MapBatches(mix_captions)"):
        assert args[name]["num_gpus"] == 0.25, (name, args[name])
        assert "CUDA_VISIBLE_DEVICES" not in args[name].get("runtime_env", {}).get("env_vars", {}), name
    for name in ("FlatMap(front_end)", "MapBatches(add_log_mel)", "MapBatches(add_signal_tags)",
                 "MapBatches(route_to_writers)"):
        assert not args[name].get("num_gpus"), (name, args[name])
        assert args[name]["runtime_env"]["env_vars"]["CUDA_VISIBLE_DEVICES"] == "", (name, args[name])


def test_paper_kit_on_cpus_alone_is_staged_one_actor_per_model(ray_local, capsys):
    plan = _optimized_physical_plan(build(CorpusConfig(inputs=[], output="x", kit="paper")), capsys)
    assert "TrackWorker" not in plan and "ActorPoolMapOperator[MapBatches(VaeStage)]" in plan


def test_default_cpu_run_is_one_pool_of_track_workers_that_never_see_cuda(ray_local, capsys):
    ds = build(CorpusConfig(inputs=[], output="x"))
    operators = re.findall(r"(TaskPool|ActorPool)MapOperator\[([^\]]+)\]", _optimized_physical_plan(ds, capsys))
    assert operators == [("ActorPool", "MapBatches(TrackWorker)")], operators
    worker = _remote_args(ds)["MapBatches(TrackWorker)"]
    assert worker["num_cpus"] == 1.0 and not worker.get("num_gpus")
    assert worker["runtime_env"]["env_vars"]["CUDA_VISIBLE_DEVICES"] == ""
