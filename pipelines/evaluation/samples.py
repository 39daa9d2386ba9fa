"""Prompts -> WAV + mel PNG per prompt and a prompts.json of the settings, from a checkpoint (jobs/sample.py)."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from pipelines import storage
from pipelines.errors import UserPathError, UserValueError


@dataclass
class SampleConfig:
    checkpoint: str                      # any of pipelines.runs.weights.CHECKPOINT_FORMS (local or s3://)
    output: str                          # folder or s3:// prefix
    prompts: list[str] = field(default_factory=list)
    cfg: float = 3.5
    steps: int = 50
    seed: int = 0
    encoders: str = "t5,clap"            # a left-out encoder gets its null embedding
    weights: str = "ema"
    kit: str = ""                        # "" = the kit recorded in the checkpoint
    device: str | None = None


def read_prompt_lines(uri: str, flag: str = "prompts file") -> list[str]:
    """A text file (local or s3://), one prompt per non-empty line."""
    if not storage.exists(uri):
        raise UserPathError(f"{flag} {uri} does not exist; give a text file with one prompt per line")
    return [line.strip() for line in storage.read_bytes(uri).decode().splitlines() if line.strip()]


def write_samples(config: SampleConfig) -> list[str]:
    """Generate one 10.24 s clip per prompt; -> the WAV URIs (NNN.wav, with NNN.png beside each)."""
    from pipelines.evaluation.generate import Generator, save_mel_png, save_wav
    from pipelines.runs.weights import load_checkpoint_state

    if not config.prompts:
        raise UserValueError("no prompts to sample: give at least one")
    kit = config.kit or load_checkpoint_state(config.checkpoint)["model_config"]["kit"]
    generator = Generator(kit, config.checkpoint, weights=config.weights, encoders=config.encoders,
                          device=config.device)
    audio, mel = generator.generate(config.prompts, steps=config.steps, cfg_scale=config.cfg, seed=config.seed,
                                    return_mel=True)
    wavs = []
    for i, prompt in enumerate(config.prompts):
        wavs.append(storage.join(config.output, f"{i:03d}.wav"))
        save_wav(wavs[-1], audio[i])
        save_mel_png(storage.join(config.output, f"{i:03d}.png"), mel[i], title=prompt)
    settings = {k: v for k, v in asdict(config).items() if k not in ("output", "device")} | {"kit": kit}
    storage.write_bytes_atomic(storage.join(config.output, "prompts.json"), json.dumps(settings, indent=2).encode())
    return wavs
