"""Captions: LP-MusicCaps-style prompt planning, clean-up, the caption stage (fake and tiny-LLM back ends),
vLLM request/result mapping, and the deterministic 20/80 mix."""
from __future__ import annotations

import importlib.util

import pytest

from pipelines.corpus import captions
from pipelines.corpus.captions import CaptionStage, mix_captions
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


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_stage_without_vllm_fails_clearly(ray_local):
    ds = ray_local.data.from_items([{"clip_id": "a-00000"}])
    with pytest.raises(captions.VllmUnavailable, match="vllm is not installed"):
        captions.add_vllm_caption_stage(ds, "tiny", runtime_env={})


def test_vllm_processor_builds_lazily(ray_local):
    """The Ray 2.60 ray.data.llm API accepts our config; nothing runs (that needs vllm and a GPU)."""
    ds = ray_local.data.from_items([{"clip_id": "a-00000", "tags": TAGS, "reject_reason": ""}])
    out = captions.add_vllm_caption_stage(ds, "tiny", timeout_s=123)
    plan = str(out)
    assert "vLLMEngineStageUDF" in plan and "ChatTemplateUDF" in plan and "_vllm_result" in plan
    assert out.context.wait_for_min_actors_s == 123     # the start-up hang guard travels with the dataset


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


@pytest.mark.gpu
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None or not _cuda(),
                    reason="needs vllm and a CUDA GPU (vLLM cannot share the CPU environment; see docs/captions.md)")
def test_vllm_caption_stage(ray_local):
    rows = [{"clip_id": f"abcdefabcdefabcd-{i:05d}", "tags": TAGS if i else [], "caption_original": None,
             "reject_reason": "", "reject_stage": "", "reject_detail": ""} for i in range(3)]
    ds = captions.add_vllm_caption_stage(ray_local.data.from_items(rows), "tiny", runtime_env={"env_vars": {}},
                                         timeout_s=600, max_new_tokens=16)
    out = sorted(ds.take_all(), key=lambda r: r["clip_id"])
    assert out[0]["reject_reason"] == "no_tags"
    # Both tagged rows must come back captioned: a run that rejects every row fails here.
    assert [r["reject_reason"] for r in out[1:]] == ["", ""], [r["reject_detail"] for r in out[1:]]
    assert all(r["caption_synthetic"] for r in out[1:])
