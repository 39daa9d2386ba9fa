"""The caption stage with the tiny LLM on local Ray, and the vLLM processor as built for Ray 2.60's ray.data.llm
(its real run on CPU: tests/e2e/test_vllm_captions.py)."""
from __future__ import annotations

import sys

import pytest

from pipelines.corpus import captions
from pipelines.corpus.captions import CaptionStage, mix_captions, vllm_stage
from tests.unit.test_captions import TAGS


def test_caption_stage_and_mix_on_ray_with_tiny_llm(ray_local):
    rows = [{"clip_id": f"abcdefabcdefabcd-{i:05d}", "tags": TAGS if i < 3 else [], "caption_original": None,
             "reject_reason": "", "reject_stage": "", "reject_detail": ""} for i in range(4)]
    rows.append(dict(rows[0], clip_id="abcdefabcdefabcd-00004", reject_reason="tagging_failed", reject_stage="tags"))
    ds = ray_local.data.from_items(rows).map_batches(
        CaptionStage, fn_constructor_kwargs={"kit_name_or_path": "tiny", "seed": 0, "max_new_tokens": 12},
        batch_size=8, concurrency=1, num_cpus=0.5)
    ds = ds.map_batches(mix_captions, batch_size=8, fn_kwargs={"p_original": 0.2, "seed": 0})
    out = sorted(ds.take_all(), key=lambda r: r["clip_id"])
    for row in out[:3]:
        assert row["reject_reason"] == "" and row["caption_synthetic"].strip()
        assert row["caption"] == row["caption_synthetic"] and row["caption_source"] == "synthetic"
    assert out[0]["caption_synthetic"] != out[1]["caption_synthetic"]
    assert (out[3]["reject_reason"], out[3]["reject_stage"]) == ("no_tags", "caption")
    assert (out[4]["reject_reason"], out[4]["caption_synthetic"], out[4]["caption"]) == ("tagging_failed", "", "")


def test_vllm_stage_without_its_python_fails_clearly(ray_local):
    ds = ray_local.data.from_items([{"clip_id": "a-00000"}])
    with pytest.raises(captions.VllmUnavailable, match="does not exist"):
        captions.add_vllm_caption_stage(ds, "tiny", bundle={"CPU": 1}, runtime_env={"py_executable": "/nonexistent/python"})


def test_vllm_processor_places_the_engine_and_keeps_light_stages_home(ray_local):
    """The Ray 2.60 ray.data.llm API accepts our config (nothing runs): the engine gets the stage's bundle (GPU and
    the corpus_gpu tag on the cluster, CPU only here), the vLLM venv's python and a max_model_len within the model's
    1024; the chat-template/tokenize/detokenize stages stay in the main environment."""
    python = str(vllm_stage.LOCAL_VLLM_PYTHON)
    gpu = vllm_stage.caption_processor("tiny", bundle={"CPU": 2, "GPU": 1, "corpus_gpu": 0.01},
                                       runtime_env={"py_executable": sys.executable})   # one node: must exist
    engine = gpu.get_stage_by_name("vLLMEngineStage")
    kwargs, engine_kwargs = engine.map_batches_kwargs, engine.fn_constructor_kwargs["engine_kwargs"]
    assert (kwargs["num_cpus"], kwargs["num_gpus"], kwargs["resources"]) == (2, 1, {"corpus_gpu": 0.01})
    assert kwargs["runtime_env"] == {"py_executable": sys.executable}
    assert engine_kwargs["max_model_len"] == 1024 and engine_kwargs["gpu_memory_utilization"] == 0.85
    for name in ("ChatTemplateStage", "TokenizeStage", "DetokenizeStage"):
        assert gpu.get_stage_by_name(name).map_batches_kwargs["runtime_env"] == {}
    cpu = vllm_stage.caption_processor("tiny", bundle={"CPU": 1}, runtime_env=vllm_stage.engine_runtime_env(
        {"CPU": 1}, python=sys.executable, kv_cache_gib=0.5))
    kwargs = cpu.get_stage_by_name("vLLMEngineStage").map_batches_kwargs
    assert kwargs["num_cpus"] == 1 and not kwargs.get("num_gpus") and "resources" not in kwargs
    assert kwargs["runtime_env"]["env_vars"] == {"VLLM_CPU_KVCACHE_SPACE": "0.5"}
    assert cpu.get_stage_by_name("vLLMEngineStage").fn_constructor_kwargs["engine_kwargs"]["enforce_eager"]
    assert vllm_stage.vllm_python() in (python, vllm_stage.CLUSTER_VLLM_PYTHON)


def test_vllm_stage_builds_lazily(ray_local):
    ds = ray_local.data.from_items([{"clip_id": "a-00000", "tags": TAGS, "reject_reason": ""}])
    out = captions.add_vllm_caption_stage(ds, "tiny", bundle={"CPU": 1}, timeout_s=123,
                                          runtime_env={"py_executable": sys.executable})
    plan = str(out)
    assert "vLLMEngineStageUDF" in plan and "ChatTemplateUDF" in plan and "_vllm_result" in plan
    assert out.context.wait_for_min_actors_s == 123     # the start-up hang guard travels with the dataset
