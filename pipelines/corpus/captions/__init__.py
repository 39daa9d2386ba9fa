"""Synthetic captions from tags and the 20 % / 80 % caption mix (architecture steps 5 and 6), one idea a module:

prompts (plans, chats, clean-up; pure), transformers_writer (the transformers back end and its per-clip sampler),
stage (`CaptionStage`, the Ray Data actor), vllm_stage (the vLLM back end through ray.data.llm), mix (the mix and
its report). The names other modules use are re-exported here.
"""
from pipelines.corpus.captions.mix import mix_captions, mix_report
from pipelines.corpus.captions.prompts import TASKS, build_messages, caption_plan, clean_caption, tag_words
from pipelines.corpus.captions.stage import CAPTION_ATTEMPTS, REJECT_STAGE, CaptionStage
from pipelines.corpus.captions.transformers_writer import CaptionWriter, TransformersCaptionWriter
from pipelines.corpus.captions.vllm_stage import VllmUnavailable, add_vllm_caption_stage, engine_bundle

__all__ = ["CAPTION_ATTEMPTS", "REJECT_STAGE", "TASKS", "CaptionStage", "CaptionWriter", "TransformersCaptionWriter",
           "VllmUnavailable", "add_vllm_caption_stage", "build_messages", "caption_plan", "clean_caption",
           "engine_bundle", "mix_captions", "mix_report", "tag_words"]
