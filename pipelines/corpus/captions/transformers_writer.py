"""The transformers caption back end: any causal LM of a kit's `llm` role, with seeded per-clip sampling.

`TransformersCaptionWriter` runs the chat template, left-padded batches and `model.generate`; `per_row_sampler`
draws each clip's token with that clip's own `torch.Generator`, made on the device of the scores
(`generator_for`): a CPU generator on CUDA scores makes `torch.multinomial` raise (review D1).
"""
from __future__ import annotations

from typing import Protocol


class CaptionWriter(Protocol):
    """A caption back end: one generated text per chat (seeds: one sampling seed per chat, optional)."""

    def write(self, messages: list[list[dict[str, str]]], seeds: list[int] | None = None) -> list[str]: ...


def generator_for(device, seed: int):
    """A torch.Generator on `device` seeded with `seed`: torch.multinomial needs the generator beside its input."""
    import torch

    return torch.Generator(device=device).manual_seed(int(seed))


def per_row_sampler(seeds: list[int], temperature: float, top_p: float, top_k: int):
    """A logits processor that samples each row (top-k, then top-p) with its own generator and leaves only that
    token allowed, so greedy decoding returns it: a clip's caption depends on its seed, not on its batch."""
    import torch
    from transformers import LogitsProcessor

    class PerRowSampler(LogitsProcessor):
        def __init__(self):
            self.generators = None      # made on the first call, on the device of the scores

        def __call__(self, input_ids, scores):
            if self.generators is None:
                self.generators = [generator_for(scores.device, s) for s in seeds]
            # topk first: a full sort of a 262k vocabulary costs ~0.2 s per step on a CPU core.
            top, index = scores.float().topk(min(top_k, scores.shape[-1]), dim=-1)   # sorted, descending
            probs = torch.softmax(top / temperature, dim=-1)
            outside = probs.cumsum(dim=-1) - probs > top_p   # keep the smallest nucleus holding top_p
            probs = probs.masked_fill(outside, 0.0)
            picks = [index[i, torch.multinomial(probs[i], 1, generator=g)] for i, g in enumerate(self.generators)]
            out = torch.full_like(scores, float("-inf"))
            out[torch.arange(len(picks), device=scores.device), torch.cat(picks)] = 0.0
            return out

    return PerRowSampler()


class TransformersCaptionWriter:
    """Any transformers causal LM of the kit's `llm` role: chat template, left-padded batches, seeded sampling."""

    def __init__(self, kit, max_new_tokens: int = 64, temperature: float = 0.8, top_p: float = 0.95,
                 top_k: int = 64, batch_size: int = 8, device: str | None = None):
        from pipelines.models.kits import default_device

        self.device = device or default_device()
        self.model, self.tokenizer = kit.load_llm(self.device)
        self.tokenizer.padding_side = "left"   # generation continues from the right end of every row
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_new_tokens, self.temperature, self.top_p, self.top_k = max_new_tokens, temperature, top_p, top_k
        self.batch_size = batch_size

    def prompt_text(self, messages: list[dict[str, str]]) -> str:
        if self.tokenizer.chat_template:
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        # A base model without a chat template: plain text ending where the answer starts.
        return "\n\n".join(m["content"] for m in messages) + "\nDescription:"

    def write(self, messages: list[list[dict[str, str]]], seeds: list[int] | None = None) -> list[str]:
        seeds = list(seeds) if seeds is not None else list(range(len(messages)))
        out: list[str] = []
        for start in range(0, len(messages), self.batch_size):
            out += self._generate(messages[start:start + self.batch_size], seeds[start:start + self.batch_size])
        return out

    def _generate(self, messages: list[list[dict[str, str]]], seeds: list[int]) -> list[str]:
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        texts = [self.prompt_text(m) for m in messages]
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=False, no_repeat_ngram_size=3,
                                  pad_token_id=self.tokenizer.pad_token_id,
                                  eos_token_id=self.model.generation_config.eos_token_id or self.tokenizer.eos_token_id)
        sampler = per_row_sampler(seeds, self.temperature, self.top_p, self.top_k)
        with torch.no_grad():
            tokens = self.model.generate(**inputs, generation_config=config,
                                         logits_processor=LogitsProcessorList([sampler]))
        new = tokens[:, inputs["input_ids"].shape[1]:]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)
