"""Caption prompts and plans (LP-MusicCaps-style tag-to-caption tasks) and the clean-up of a model's output: pure.

`caption_plan` fixes, per (seed, clip_id), the task, the tag subset and order and the sampling seed; every back end
asks with `build_messages` and tidies with `clean_caption` (docs/captions.md §2).
"""
from __future__ import annotations

import hashlib
import random
import re

import numpy as np

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


def retry_seed(seed: int, attempt: int) -> int:
    """The sampling seed of a clip's attempt-th caption try (attempt 0: its own seed)."""
    return seed if attempt == 0 else (seed + attempt * 0x9E3779B1) % (1 << 31)
