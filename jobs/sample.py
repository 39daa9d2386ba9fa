"""Generate 10.24 s clips at 16 kHz from a training checkpoint or release folder: one WAV + mel PNG per prompt.

    python -m jobs.sample --checkpoint runs/small-1/checkpoint_step_00200000 --prompt "calm piano" --output out/
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere

import argparse  # noqa: E402

from jobs.cli import run_job  # noqa: E402
from pipelines.errors import UserError  # noqa: E402
from pipelines.evaluation.generate import parse_encoders  # noqa: E402
from pipelines.evaluation.samples import SampleConfig, read_prompt_lines, write_samples  # noqa: E402
from pipelines.runs.forms import CHECKPOINT_FORMS, TRUST_NOTE  # noqa: E402


def parse_args(argv: list[str] | None = None) -> SampleConfig:
    defaults = SampleConfig(checkpoint="", output="")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help=f"what to sample: {CHECKPOINT_FORMS} (that file's weights, whatever --weights says); "
                        f"local or s3://. {TRUST_NOTE}.")
    p.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    p.add_argument("--prompts", help="text file, one prompt per line (added after the --prompt ones)")
    p.add_argument("--output", required=True, help="folder or s3:// prefix for NNN.wav, NNN.png, prompts.json")
    p.add_argument("--cfg", type=float, default=defaults.cfg, help="classifier-free guidance scale (default: %(default)s)")
    p.add_argument("--steps", type=int, default=defaults.steps, help="Euler steps (default: %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="noise seed (default: %(default)s)")
    p.add_argument("--encoders", default=defaults.encoders,
                   help="t5,clap | t5 | clap: a left-out encoder gets its null embedding (default: %(default)s)")
    p.add_argument("--weights", default=defaults.weights, choices=["ema", "model"],
                   help="checkpoint weights (default: %(default)s)")
    p.add_argument("--kit", default="", help="model kit (default: the kit recorded in the checkpoint)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    a = p.parse_args(argv)
    try:
        parse_encoders(a.encoders)
    except UserError as error:
        p.error(str(error))
    prompts = list(a.prompt) + (read_prompt_lines(a.prompts, "--prompts") if a.prompts else [])
    if not prompts:
        p.error("give at least one --prompt or a --prompts file")
    return SampleConfig(checkpoint=a.checkpoint, output=a.output, prompts=prompts, cfg=a.cfg, steps=a.steps,
                        seed=a.seed, encoders=a.encoders, weights=a.weights, kit=a.kit, device=a.device)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = parse_args(argv)
    wavs = write_samples(config)
    print(f"wrote {len(wavs)} clips to {config.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_job(main))
