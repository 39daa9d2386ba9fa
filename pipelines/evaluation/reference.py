"""Reference-set statistics (FAD moments, label distributions) and their on-disk cache."""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines import storage

CACHE_VERSION = 1


def default_cache_dir() -> str:
    return os.environ.get("FLUXMUSIC_EVAL_CACHE") or str(Path.home() / ".cache" / "fluxmusic-pipeline" / "eval")


@dataclass
class ReferenceStats:
    """What a reference set contributes to a score; saved as one .npz in the cache."""
    key: str                # names the set (e.g. "corpus:/data/out:valid")
    embedder_id: str        # the FAD embedding model
    classifier_id: str      # the label classifier (CLAP model + label set + temperature)
    mu: np.ndarray          # [D] float64
    sigma: np.ndarray       # [D, D] float64
    probs: np.ndarray       # [N, C] label distributions, for KL paired with the generated clips
    ids: list[str]          # one per reference clip ("" when unnamed); pairs clips by prompt id

    @property
    def count(self) -> int:
        return len(self.probs)

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        meta = dict(version=CACHE_VERSION, key=self.key, embedder_id=self.embedder_id,
                    classifier_id=self.classifier_id, ids=self.ids)
        np.savez(buf, mu=self.mu, sigma=self.sigma, probs=self.probs, meta=np.array(json.dumps(meta)))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "ReferenceStats":
        with np.load(io.BytesIO(data)) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("version") != CACHE_VERSION:
                raise ValueError(f"reference cache version {meta.get('version')} != {CACHE_VERSION}")
            return cls(meta["key"], meta["embedder_id"], meta["classifier_id"], z["mu"], z["sigma"], z["probs"],
                       list(meta["ids"]))


def cache_uri(cache_dir: str, key: str, embedder_id: str, classifier_id: str) -> str:
    digest = hashlib.sha256("\n".join([key, embedder_id, classifier_id]).encode()).hexdigest()[:24]
    return storage.join(cache_dir, f"reference-{digest}.npz")


def weights_digest(*tensors) -> str:
    """Content hash of a few weight tensors: a cache never outlives a change of weights under the same path."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]
