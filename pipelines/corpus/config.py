"""What a corpus run is asked to do: `CorpusConfig` (inputs, output, kit, gates, caption mix, resources)."""
from __future__ import annotations

from dataclasses import dataclass

from schemas import constants


@dataclass
class CorpusConfig:
    inputs: list[str]
    output: str
    kit: str = "tiny"
    limit: int | None = None
    min_clip_seconds: float = constants.MIN_CLIP_SECONDS
    silence_dbfs: float = constants.SILENCE_DBFS
    valid_fraction: float = 0.02
    original_caption_probability: float = constants.CAPTION_ORIGINAL_PROBABILITY
    caption_backend: str = "transformers"   # or "vllm" (GPU clusters)
    seed: int = 0
    batch_size: int = 8
    actors_per_stage: int = 1
    cpus_per_actor: float = 0.5            # fractional: whole-CPU actors starve the CPU tasks on small machines
    gpus_per_actor: float = 0.0
