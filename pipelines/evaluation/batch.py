"""Batched generation for evaluation: seeded batches, in this process or across a pool of Ray Data actors."""
from __future__ import annotations

import numpy as np

from pipelines import storage


def generation_batches(ids: list[str], captions: list[str], batch_size: int, seed: int) -> list[dict]:
    """Prompts cut into generation batches; batch b is generated with seed + b wherever it runs."""
    return [{"seed": seed + b, "ids": ids[start:start + batch_size], "captions": captions[start:start + batch_size]}
            for b, start in enumerate(range(0, len(captions), batch_size))]


class GenerateBatch:
    """One Generator per worker: a batch row {seed, ids, captions} -> {seed, ids, audio [b, 163840]}."""

    def __init__(self, kit: str, checkpoint: str, *, weights: str, steps: int, cfg: float, device: str | None = None):
        from pipelines.evaluation.generate import Generator

        self.generator = Generator(kit, checkpoint, weights=weights, device=device)
        self.steps, self.cfg = steps, cfg

    def __call__(self, row: dict) -> dict:
        audio = self.generator.generate(list(row["captions"]), steps=self.steps, cfg_scale=self.cfg,
                                        seed=int(row["seed"]))
        return {"seed": int(row["seed"]), "ids": list(row["ids"]), "audio": audio}


def generate_on_ray(batches: list[dict], worker_args: dict, workers: int, gpus_per_worker: float) -> list[dict]:
    """The batches across a pool of `workers` Ray Data actors (one GPU each on a GPU cluster), in seed order."""
    import ray.data

    from pipelines.raylocal import init_local_ray

    init_local_ray()
    resources = {"num_gpus": gpus_per_worker} if gpus_per_worker else {"num_cpus": 0.5}  # fractional: 2-core hosts
    ds = ray.data.from_items(batches, override_num_blocks=len(batches))
    ds = ds.map(GenerateBatch, fn_constructor_kwargs=worker_args, concurrency=workers, **resources)
    return sorted(ds.take_all(), key=lambda row: row["seed"])


def generate_clips(checkpoint: str, kit: str, ids: list[str], captions: list[str], *, output: str,
                   batch_size: int = 8, seed: int = 0, weights: str = "ema", steps: int = 50, cfg: float = 3.5,
                   workers: int = 1, gpus_per_worker: float | None = None,
                   device: str | None = None) -> tuple[np.ndarray, list[int], int]:
    """Batched generation from the checkpoint, in process or on Ray (workers > 1); each clip is saved as
    output/generated/<id>.wav. -> (audio [B, 163840] in prompt order, seeds, parameter count)."""
    from model import count_parameters
    from pipelines.evaluation.generate import save_wav
    from pipelines.runs.weights import model_from_checkpoint

    batches = generation_batches(ids, captions, batch_size, seed)
    worker_args = dict(kit=kit, checkpoint=checkpoint, weights=weights, steps=steps, cfg=cfg)
    if workers > 1:
        import torch

        gpus = gpus_per_worker if gpus_per_worker is not None else float(torch.cuda.is_available())
        done = generate_on_ray(batches, worker_args, workers, gpus)
        params = int(count_parameters(model_from_checkpoint(checkpoint, weights)[0]))
    else:
        worker = GenerateBatch(**worker_args, device=device)
        done = [worker(b) for b in batches]
        params = int(count_parameters(worker.generator.model))
    audio = np.concatenate([np.asarray(row["audio"], np.float32) for row in done])
    for i, clip in zip(ids, audio):
        save_wav(storage.join(output, "generated", f"{i}.wav"), clip)
    return audio, [row["seed"] for row in done], params
