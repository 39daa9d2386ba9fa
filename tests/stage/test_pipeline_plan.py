"""The corpus job's Ray Data plans: staged, where the stages Ray is meant to fuse are fused; fused, one actor pool."""
from __future__ import annotations

import re

from pipelines.corpus.config import CorpusConfig
from pipelines.corpus.pipeline import build_dataset


def _optimized_physical_plan(ds, capsys) -> str:
    capsys.readouterr()
    ds.explain()
    text = capsys.readouterr().out
    return text.split("Physical Plan (Optimized)")[1]


SOURCE = {"source_uri": "/music/a.flac", "track_id": "0" * 16, "metadata": {}}


def test_staged_plan_fuses_mel_with_descriptors_and_mix_with_text(ray_local, capsys):
    source = SOURCE
    config = CorpusConfig(inputs=[], output="x", plan="staged")
    plan = _optimized_physical_plan(build_dataset(config, [source], None, []), capsys)
    operators = re.findall(r"(TaskPool|ActorPool)MapOperator\[([^\]]+)\]", plan)
    assert ("TaskPool", "MapBatches(add_log_mel)->MapBatches(add_signal_tags)") in operators
    assert ("ActorPool", "MapBatches(mix_captions)->MapBatches(TextStage)") in operators
    # the CPU stages of a clip come before its first GPU stage (explain prints the last operator first)
    names = [name for _, name in operators][::-1]
    assert names.index("MapBatches(add_log_mel)->MapBatches(add_signal_tags)") < names.index("MapBatches(VaeStage)")

    # a mix given resources of its own is a task stage of its own again
    config = CorpusConfig(inputs=[], output="x", stage_resources={"mix": {"cpus": 0.25}})      # auto: staged
    plan = _optimized_physical_plan(build_dataset(config, [source], None, []), capsys)
    assert "TaskPoolMapOperator[MapBatches(mix_captions)]" in plan


def test_default_cpu_run_is_one_pool_of_track_workers(ray_local, capsys):
    plan = _optimized_physical_plan(build_dataset(CorpusConfig(inputs=[], output="x"), [SOURCE], None, []), capsys)
    operators = re.findall(r"(TaskPool|ActorPool)MapOperator\[([^\]]+)\]", plan)
    assert operators == [("ActorPool", "MapBatches(TrackWorker)")], operators
