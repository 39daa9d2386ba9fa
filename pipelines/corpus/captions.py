"""Synthetic captions from tags (LP-MusicCaps-style tag-to-caption prompts) and the 20 % / 80 % caption mix.

Architecture steps 5 and 6. Prompt planning and the mix are pure functions; `TransformersCaptionWriter`
(CPU/GPU, any causal LM with a chat template) and `add_vllm_caption_stage` (vLLM through `ray.data.llm` on GPU
clusters) are the back ends. A row that cannot be captioned becomes a reject row (stage "caption"):
`no_tags` (nothing usable to describe), `caption_empty` (empty or garbage output), `llm_error` (an exception).
"""
from __future__ import annotations

import hashlib
import importlib.util
import random
import re
from collections import Counter
from typing import Any, Protocol

import numpy as np

from pipelines.corpus.rows import batch_copy, reject_columns, tag_lists
from pipelines.corpus.tags import metadata_dict, original_caption
from schemas import constants

TASKS = ("writing", "summary", "paraphrase")

SYSTEM_PROMPT = ("You describe music for a text-to-music dataset. You answer with the description only: "
                 "plain prose, no lists, no quotes, no introduction.")

# The three LP-MusicCaps tag-to-caption tasks (attribute prediction is left out: it invents tags).
TASK_PROMPTS = {
    "writing": "Write one sentence that describes a piece of music with all of these attributes: {tags}.",
    "summary": ("Sum up a piece of music with these attributes in one short sentence. "
                "Leave out artist and album names: {tags}."),
    "paraphrase": ("Describe a piece of music with these attributes in one or two sentences. Rephrase the "
                   "attributes freely in your own words instead of repeating them: {tags}."),
}

MAX_CAPTION_CHARS = 300
MIN_CAPTION_LETTERS = 3        # fewer letters than this is garbage, not a caption
MIN_TAG_FRACTION = 0.6         # each clip sees a random subset of at least this share of its tags
REJECT_STAGE = "caption"
CAPTION_ATTEMPTS = 3           # tries per clip before an unusable caption becomes a caption_empty rejection


# ---------------------------------------------------------------- prompts (pure)

def tag_words(tags) -> list[str]:
    """Usable tag strings, in order, deduplicated (case-insensitive); accepts tag dicts or strings."""
    words, seen = [], set()
    for tag in tags if tags is not None else []:
        text = tag.get("tag") if isinstance(tag, dict) else tag
        text = " ".join(str(text or "").split())
        if re.search(r"\w", text) and text.lower() not in seen:
            seen.add(text.lower())
            words.append(text)
    return words


def clip_rng(clip_id: str, seed: int, purpose: str) -> random.Random:
    """A random generator fixed by (seed, clip_id, purpose): reruns and any batching give the same draws."""
    digest = hashlib.sha256(f"{seed}\x00{clip_id}\x00{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def clip_uniform(clip_id: str, seed: int, purpose: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, clip_id, purpose)."""
    digest = hashlib.sha256(f"{seed}\x00{clip_id}\x00{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2.0 ** 64


def caption_plan(tags, clip_id: str, seed: int = 0) -> tuple[str, list[str], int]:
    """(task, ordered tag subset, sampling seed) for one clip: clips of one track get different tasks,
    tag subsets and orders, so their captions differ even though their tags mostly agree."""
    words = tag_words(tags)
    rng = clip_rng(clip_id, seed, "caption")
    task = rng.choice(TASKS)
    keep = rng.randint(min(len(words), max(1, int(np.ceil(MIN_TAG_FRACTION * len(words))))), len(words))
    subset = rng.sample(words, keep)
    return task, subset, rng.getrandbits(31)


def build_messages(tags, task: str) -> list[dict[str, str]]:
    """Chat messages asking for a caption of `tags` (strings or tag dicts, used in the given order)."""
    if task not in TASK_PROMPTS:
        raise ValueError(f"unknown caption task {task!r}; expected one of {TASKS}")
    words = tag_words(tags)
    if not words:
        raise ValueError("no usable tags to caption")
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": TASK_PROMPTS[task].format(tags=", ".join(words))}]


def clean_caption(text: str, max_chars: int = MAX_CAPTION_CHARS) -> str:
    """One tidy paragraph, at most max_chars (cut at a sentence end when possible); "" when it is garbage."""
    # Control characters and undecodable bytes (U+FFFD) are never part of a caption.
    text = "".join(ch for ch in str(text or "") if ch in "\n\t" or (ch.isprintable() and ch != "\ufffd"))
    lines = [line.strip() for line in text.strip().splitlines()]
    paragraph = next((line for line in lines if line), "")
    paragraph = re.sub(r"^(assistant|caption|description)\s*:\s*", "", paragraph, flags=re.IGNORECASE)
    paragraph = " ".join(paragraph.split()).strip(" \"'*`")
    if len(paragraph) > max_chars:
        cut = paragraph[:max_chars]
        end = max(cut.rfind(". "), cut.rfind("! "), cut.rfind("? "))
        paragraph = cut[:end + 1] if end >= max_chars // 3 else cut.rsplit(" ", 1)[0].rstrip(",;:")
    if sum(ch.isalpha() for ch in paragraph) < MIN_CAPTION_LETTERS:
        return ""
    return paragraph


# ---------------------------------------------------------------- back ends

class CaptionWriter(Protocol):
    """A caption back end: one generated text per chat (seeds: one sampling seed per chat, optional)."""

    def write(self, messages: list[list[dict[str, str]]], seeds: list[int] | None = None) -> list[str]: ...


def _per_row_sampler(seeds: list[int], temperature: float, top_p: float, top_k: int):
    """A logits processor that samples each row (top-k, then top-p) with its own generator and leaves only that
    token allowed, so greedy decoding returns it: a clip's caption depends on its seed, not on its batch."""
    import torch
    from transformers import LogitsProcessor

    class PerRowSampler(LogitsProcessor):
        def __init__(self):
            self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

        def __call__(self, input_ids, scores):
            # topk first: a full sort of a 262k vocabulary costs ~0.2 s per step on a CPU core.
            top, index = scores.float().topk(min(top_k, scores.shape[-1]), dim=-1)   # sorted, descending
            probs = torch.softmax(top / temperature, dim=-1)
            outside = probs.cumsum(dim=-1) - probs > top_p   # keep the smallest nucleus holding top_p
            probs = probs.masked_fill(outside, 0.0)
            picks = [index[i, torch.multinomial(probs[i], 1, generator=g)] for i, g in enumerate(self.generators)]
            out = torch.full_like(scores, float("-inf"))
            out[torch.arange(len(picks)), torch.cat(picks)] = 0.0
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
        sampler = _per_row_sampler(seeds, self.temperature, self.top_p, self.top_k)
        with torch.no_grad():
            tokens = self.model.generate(**inputs, generation_config=config,
                                         logits_processor=LogitsProcessorList([sampler]))
        new = tokens[:, inputs["input_ids"].shape[1]:]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)


# ---------------------------------------------------------------- Ray Data stage

def retry_seed(seed: int, attempt: int) -> int:
    """The sampling seed of a clip's attempt-th caption try (attempt 0: its own seed)."""
    return seed if attempt == 0 else (seed + attempt * 0x9E3779B1) % (1 << 31)


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


# ---------------------------------------------------------------- vLLM on GPU clusters (ray.data.llm)

DEFAULT_VLLM_RUNTIME_ENV = {"pip": ["vllm>=0.33"]}
_VLLM_KEYS = "_caption_keys"


class VllmUnavailable(RuntimeError):
    """The vLLM back end cannot run here (no ray.data.llm, or no vllm and no runtime_env that installs it)."""


def _vllm_request(row: dict[str, Any], *, seed: int, max_new_tokens: int, temperature: float,
                  top_p: float, top_k: int) -> dict[str, Any]:
    """Preprocess: the chat and per-clip sampling seed; rejected or tagless rows ask for one token only."""
    task, words, sample_seed = caption_plan(row.get("tags"), str(row["clip_id"]), seed)
    live = not row.get("reject_reason") and bool(words)
    chat = build_messages(words, task) if live else [{"role": "user", "content": "-"}]
    return {"messages": chat, _VLLM_KEYS: list(row.keys()),
            "sampling_params": {"temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": sample_seed,
                                "max_tokens": max_new_tokens if live else 1}}


def _vllm_result(row: dict[str, Any]) -> dict[str, Any]:
    """After the processor: back to the input columns plus `caption_synthetic` and the reject columns."""
    out = {k: row[k] for k in row[_VLLM_KEYS]}
    out["caption_synthetic"] = ""
    if "tags" in out:
        out["tags"] = tag_lists([out["tags"]])[0]
    out.setdefault("caption_original", "")
    if out.get("reject_reason"):
        return out
    error = row.get("__inference_error__") or ""
    text = clean_caption(row.get("generated_text") or "") if not error else ""
    if error:
        out.update(reject_reason="llm_error", reject_stage=REJECT_STAGE, reject_detail=str(error)[:2000])
    elif not tag_words(row.get("tags")):
        out.update(reject_reason="no_tags", reject_stage=REJECT_STAGE, reject_detail="the clip has no usable tags")
    elif not text:
        out.update(reject_reason="caption_empty", reject_stage=REJECT_STAGE,
                   reject_detail=f"unusable output: {(row.get('generated_text') or '')[:200]!r}")
    out["caption_synthetic"] = text
    return out


def vllm_model_source(kit) -> str:
    """What vLLM loads for the kit's llm role: a hub id, a local folder, or a GGUF file inside it."""
    ref = kit.llm
    where = ref.location()
    return f"{where}/{ref.gguf_file}" if ref.gguf_file else where


def add_vllm_caption_stage(ds, kit, *, concurrency: int | tuple[int, int] = 1,
                           runtime_env: dict | None = None, timeout_s: float = 1800.0, seed: int = 0,
                           max_new_tokens: int = 64, temperature: float = 0.8, top_p: float = 0.95,
                           top_k: int = 64, batch_size: int = 64, engine_kwargs: dict | None = None):
    """Append the vLLM caption processor (Ray Data LLM API) to `ds`; GPU clusters only.

    vLLM pins its own torch/transformers, so its engine actors run in `runtime_env` (default: pip vllm).
    `timeout_s` bounds how long an actor pool of this dataset may take to start: a vLLM engine that hangs
    while allocating its KV cache (CUDA OOM) fails the job with a clear timeout instead of stalling forever.
    """
    try:
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    except ImportError as error:
        raise VllmUnavailable(f"ray.data.llm is not importable ({error}); install ray[data,llm]") from error
    runtime_env = dict(DEFAULT_VLLM_RUNTIME_ENV if runtime_env is None else runtime_env)
    installs = any(k in runtime_env for k in ("pip", "uv", "conda", "container", "image_uri", "py_executable"))
    if not installs and importlib.util.find_spec("vllm") is None:
        raise VllmUnavailable("vllm is not installed here and runtime_env installs nothing: pass "
                              "runtime_env={'pip': ['vllm>=0.33']} or run on a GPU image with vLLM")
    if isinstance(kit, str):
        from pipelines.models.kits import load_kit

        kit = load_kit(kit)
    config = vLLMEngineProcessorConfig(
        model_source=vllm_model_source(kit), runtime_env=runtime_env, concurrency=concurrency,
        batch_size=batch_size, should_continue_on_error=True,
        engine_kwargs={"max_model_len": 2048, "gpu_memory_utilization": 0.85, **(engine_kwargs or {})})
    request = dict(seed=seed, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k)
    processor = build_processor(config, preprocess=lambda row: _vllm_request(row, **request),
                                postprocess=lambda row: row)
    # Ray Data otherwise waits forever for actors that never become ready (a vLLM engine stuck on CUDA OOM).
    ds.context.wait_for_min_actors_s = int(timeout_s)
    return processor(ds).map(_vllm_result)


# ---------------------------------------------------------------- the 20 / 80 mix (architecture step 6)

def mix_captions(batch: dict[str, np.ndarray], *, p_original: float = constants.CAPTION_ORIGINAL_PROBABILITY,
                 seed: int = 0) -> dict[str, np.ndarray]:
    """Adds `caption` and `caption_source`: the original caption with probability p_original where one
    exists (a fixed draw per (seed, clip_id)), the synthetic one otherwise; rejected rows get ""."""
    n = len(batch["clip_id"])
    reasons = batch.get("reject_reason", np.full(n, ""))
    originals = batch.get("caption_original", np.full(n, None, dtype=object))
    captions, sources = np.full(n, "", dtype=object), np.full(n, "", dtype=object)
    for i in range(n):
        if reasons[i]:
            continue
        original = originals[i] if isinstance(originals[i], str) and originals[i].strip() else None
        if original is not None and clip_uniform(str(batch["clip_id"][i]), seed, "mix") < p_original:
            captions[i], sources[i] = original, "original"
        else:
            captions[i], sources[i] = batch["caption_synthetic"][i], "synthetic"
    out = batch_copy(batch)
    out.update(caption=captions, caption_source=sources)
    return out


def mix_report(sources) -> dict:
    """The manifest's `caption_mix` from the `caption_source` values of the kept rows."""
    counts = Counter(s for s in sources if s)
    total = counts["original"] + counts["synthetic"]
    return {"original": counts["original"], "synthetic": counts["synthetic"],
            "original_fraction": round(counts["original"] / total, 4) if total else 0.0}
