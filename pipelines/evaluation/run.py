"""One evaluation: read the prompt set, build (or load) the reference statistics, generate or read the clips,
score them, and write metrics.json + metrics.md."""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from pipelines import storage
from pipelines.errors import UserPathError, UserValueError
from pipelines.evaluation.prompts import (
    PromptSet,
    digest_ids,
    read_corpus,
    read_hf_dataset,
    read_prompt_file,
    read_wav_dir,
)
from pipelines.evaluation.results import json_safe, metrics_markdown


@dataclass
class EvalConfig:
    output: str                         # folder or s3:// prefix for metrics.json, metrics.md, generated/
    checkpoint: str = ""                # generate from this training checkpoint ...
    generated: str = ""                 # ... or score these WAVs named <prompt id>.wav
    prompts: str = ""                   # the prompt set: a prompt file, an HF dataset folder, or a corpus split
    hf_dataset: str = ""
    corpus: str = ""
    split: str = "valid"
    reference: str = ""                 # WAV folder or cached .npz instead of the prompt set's own audio
    kit: str = ""                       # "" = the checkpoint's kit, else tiny
    cfg: float = 3.5
    steps: int = 50
    seed: int = 0
    weights: str = "ema"
    num_clips: int | None = None
    batch_size: int = 8
    workers: int = 1
    gpus_per_worker: float | None = None
    labels: str = "audioset"
    label_temperature: float | None = None
    embedder: str = "clap"
    cache_dir: str | None = None
    name: str = ""
    device: str | None = None


def prompt_set_of(config: EvalConfig) -> PromptSet:
    if config.prompts:
        prompt_set = read_prompt_file(config.prompts)
    elif config.hf_dataset:
        prompt_set = read_hf_dataset(config.hf_dataset)
    else:
        prompt_set = read_corpus(config.corpus, config.split, limit=config.num_clips)   # decodes only those
    return prompt_set.head(config.num_clips)


def kit_of(config: EvalConfig) -> str:
    if not config.kit and config.checkpoint:
        from pipelines.runs.weights import load_checkpoint_state

        return load_checkpoint_state(config.checkpoint)["model_config"].get("kit", "") or "tiny"
    return config.kit or "tiny"


def check_given(config: EvalConfig) -> None:
    """What the user named exists and fits, before any model loads or clip decodes (UserError otherwise)."""
    from pipelines.corpus.check import require_corpus
    from pipelines.runs.weights import resolve_checkpoint

    if config.checkpoint:
        resolve_checkpoint(config.checkpoint)
    if config.corpus:
        require_corpus(config.corpus, "--corpus")
    for flag, path in (("--generated", config.generated), ("--reference", config.reference)):
        if path and not storage.exists(path):
            raise UserPathError(f"{flag} {path} does not exist")


def run_evaluation(config: EvalConfig) -> tuple[dict, str]:
    """-> (the metrics.json content, the markdown table); both are also written under config.output."""
    from pipelines.evaluation.batch import generate_clips
    from pipelines.evaluation.evaluator import Evaluator

    started = time.time()
    check_given(config)
    prompt_set = prompt_set_of(config)
    kit = kit_of(config)
    evaluator = Evaluator(kit, embedder=config.embedder, cache_dir=config.cache_dir, labels=config.labels,
                          label_temperature=config.label_temperature, batch_size=config.batch_size,
                          device=config.device)
    if config.reference.endswith(".npz"):
        ref = evaluator.load_reference(config.reference)
    else:
        if config.reference:
            folder, ids = config.reference, prompt_set.ids
            loader, key = (lambda: read_wav_dir(folder, ids)), f"wav-dir:{folder}:{digest_ids(ids)}"
        elif prompt_set.reference is not None:
            loader, key = prompt_set.reference, prompt_set.key
        else:
            raise UserValueError("no reference audio: the prompt set has none; give --reference")
        ref = evaluator.reference(loader, key, ids=prompt_set.ids)

    seeds: list[int] = []
    params = None
    if config.checkpoint:
        audio, seeds, params = generate_clips(
            config.checkpoint, kit, prompt_set.ids, prompt_set.captions, output=config.output,
            batch_size=config.batch_size, seed=config.seed, weights=config.weights, steps=config.steps,
            cfg=config.cfg, workers=config.workers, gpus_per_worker=config.gpus_per_worker, device=config.device)
    else:
        audio = read_wav_dir(config.generated, prompt_set.ids)
    scores = evaluator.score(audio, prompt_set.captions, reference_key=ref.key, ids=prompt_set.ids)

    generating = bool(config.checkpoint)
    name = config.name or (os.path.basename(config.checkpoint.rstrip("/")) if generating else "generated")
    info = {"model": name, "params": params, "kit": kit, "checkpoint": config.checkpoint or None,
            "generated": config.generated or None, "prompt_source": prompt_set.source,
            "num_clips": len(prompt_set.ids), "seeds": seeds,
            "cfg": config.cfg if generating else None, "steps": config.steps if generating else None,
            "weights": config.weights if generating else None,
            "workers": config.workers if generating else None, "reference_key": ref.key,
            **evaluator.describe(), "metrics": scores, "wall_seconds": round(time.time() - started, 2)}
    storage.write_bytes_atomic(storage.join(config.output, "metrics.json"),
                               json.dumps(json_safe(info), indent=2).encode())
    table = metrics_markdown(name, params, scores, info)
    storage.write_bytes_atomic(storage.join(config.output, "metrics.md"), table.encode())
    return info, table
