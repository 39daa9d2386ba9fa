"""Writer batches for tests: the rows of one track as the writer stage receives them (no model, no audio)."""
from __future__ import annotations

import numpy as np


def batch(track: str, clips: int, rejected: int = 0, value: float = 1.0) -> dict[str, np.ndarray]:
    """A writer batch of one track: `clips` kept rows then `rejected` rejected ones."""
    n = clips + rejected
    obj = lambda values: np.array(values, dtype=object)  # noqa: E731
    return {
        "clip_id": obj([f"{track}-{i:05d}" for i in range(n)]), "track_id": obj([track] * n),
        "source_uri": obj([f"/m/{track}.wav"] * n), "clip_index": np.arange(n, dtype=np.int32),
        "start_seconds": np.arange(n) * 10.24, "duration_seconds": np.full(n, 10.24),
        "track_clip_count": np.full(n, n, np.int32), "content_hash": obj([f"h{track}"] * n),
        "latent_mean": np.full((n, 8, 256, 16), value, np.float16), "latent_std": np.ones((n, 8, 256, 16), np.float16),
        "tags": obj([[{"tag": "x", "source": "signal", "score": 1.0}] for _ in range(n)]),
        "caption": obj(["c"] * n), "caption_source": obj(["synthetic"] * n), "caption_original": obj([None] * n),
        "caption_synthetic": obj(["c"] * n), "t5": obj([b"\0\0" * 4] * n), "t5_length": np.full(n, 2, np.int32),
        "clap": obj([b"\0\0" * 2] * n), "loudness_lufs": np.full(n, -20.0, np.float32),
        "true_peak_dbtp": np.full(n, -3.0, np.float32), "clipped_fraction": np.zeros(n, np.float32),
        "reject_reason": obj([""] * clips + ["silent"] * rejected), "reject_stage": obj([""] * clips + ["quality"] * rejected),
        "reject_detail": obj([""] * n),
    }
