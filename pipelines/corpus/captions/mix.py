"""The 20 % / 80 % caption mix (architecture step 6): `mix_captions` picks each clip's training caption by a fixed
draw per (seed, clip_id); `mix_report` is the manifest's `caption_mix`. Pure."""
from __future__ import annotations

from collections import Counter

import numpy as np

from pipelines.corpus.captions.prompts import clip_uniform
from pipelines.corpus.rows import batch_copy
from schemas import constants


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
