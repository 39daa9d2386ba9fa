"""The caption stage (architecture step 5): `CaptionStage`, a Ray Data actor that writes `caption_synthetic`.

It plans each clip's prompt (`prompts.caption_plan`), asks a `CaptionWriter` (the transformers back end by default),
retries unusable outputs with derived seeds, and turns failures into reject rows of stage "caption":
`no_tags`, `caption_empty`, `llm_error`. The vLLM back end is a Ray Data processor instead (`vllm_stage`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pipelines.corpus.captions.prompts import build_messages, caption_plan, clean_caption, retry_seed
from pipelines.corpus.captions.transformers_writer import CaptionWriter, TransformersCaptionWriter
from pipelines.corpus.rows import batch_copy, reject_columns
from pipelines.corpus.tags import metadata_dict, original_caption

REJECT_STAGE = "caption"
CAPTION_ATTEMPTS = 3           # tries per clip before an unusable caption becomes a caption_empty rejection


class CaptionStage:
    """Architecture step 5: adds `caption_synthetic` (and `caption_original` if the tag stage did not)."""

    def __init__(self, kit_name_or_path: str, backend: str = "transformers", seed: int = 0,
                 writer: CaptionWriter | None = None, attempts: int = CAPTION_ATTEMPTS, **writer_options: Any):
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        self.seed, self.attempts = seed, attempts
        if writer is not None:
            self.writer = writer
        elif backend == "transformers":
            from pipelines.models.kits import load_kit

            self.writer = TransformersCaptionWriter(load_kit(kit_name_or_path), **writer_options)
        elif backend == "vllm":
            raise ValueError("the vllm back end is a Ray Data processor: use add_vllm_caption_stage(ds, kit)")
        else:
            raise ValueError(f"unknown caption backend {backend!r}; expected 'transformers' or 'vllm'")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["clip_id"])
        reasons, stages, details = reject_columns(batch, n)
        captions = np.full(n, "", dtype=object)
        todo, messages, seeds = [], {}, {}
        for i in range(n):
            if reasons[i]:
                continue
            task, words, sample_seed = caption_plan(batch["tags"][i], str(batch["clip_id"][i]), self.seed)
            if not words:
                reasons[i], stages[i], details[i] = "no_tags", REJECT_STAGE, "the clip has no usable tags"
                continue
            todo.append(i)
            messages[i], seeds[i] = build_messages(words, task), sample_seed
        last_text = {}
        # A sampled caption can come out as garbage (rare for a real LLM, ~2 % for the tiny kit's random one):
        # such clips are asked again with a new seed derived from their own, so the result stays deterministic.
        for attempt in range(self.attempts):
            if not todo:
                break
            try:
                texts = self.writer.write([messages[i] for i in todo], [retry_seed(seeds[i], attempt) for i in todo])
                if len(texts) != len(todo):
                    raise RuntimeError(f"the caption back end returned {len(texts)} texts for {len(todo)} prompts")
            except Exception as error:  # noqa: BLE001 - a failed batch becomes reject rows, not a crash
                for i in todo:
                    reasons[i], stages[i], details[i] = "llm_error", REJECT_STAGE, f"{type(error).__name__}: {error}"
                todo = []
                break
            for i, text in zip(todo, texts):
                captions[i], last_text[i] = clean_caption(text), text
            todo = [i for i in todo if not captions[i]]
        for i in todo:
            reasons[i], stages[i] = "caption_empty", REJECT_STAGE
            details[i] = f"unusable output after {self.attempts} attempt(s); last: {last_text[i][:200]!r}"
        out = batch_copy(batch)
        out.update(caption_synthetic=captions, reject_reason=reasons, reject_stage=stages, reject_detail=details)
        if "caption_original" not in out:
            metadata = batch.get("metadata", [None] * n)
            out["caption_original"] = np.array([original_caption(metadata_dict(m)) or "" for m in metadata],
                                               dtype=object)
        return out
