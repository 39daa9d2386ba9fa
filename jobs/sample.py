"""Generate 10.24 s clips at 16 kHz from a training checkpoint or release folder: one WAV + mel PNG per prompt.

    python -m jobs.sample --checkpoint runs/small-1/checkpoint_step_00200000 --prompt "calm piano" --output out/
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere

import argparse
import json

from pipelines import storage


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, its state.pt, a run folder (its latest checkpoint) or a release folder "
                                                     "(ema.safetensors + config.json); local or s3://")
    p.add_argument("--prompt", action="append", default=[], help="repeatable")
    p.add_argument("--prompts", help="text file, one prompt per line")
    p.add_argument("--output", required=True, help="folder or s3:// prefix")
    p.add_argument("--cfg", type=float, default=3.5)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--encoders", default="t5,clap", help="t5,clap | t5 | clap (a left-out encoder gets its null)")
    p.add_argument("--weights", default="ema", choices=["ema", "model"])
    p.add_argument("--kit", default="", help="default: the kit recorded in the checkpoint")
    p.add_argument("--device", default=None)
    return p.parse_args(argv)


def read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt)
    if args.prompts:
        prompts += [line.strip() for line in storage.read_bytes(args.prompts).decode().splitlines() if line.strip()]
    if not prompts:
        raise SystemExit("give at least one --prompt or a --prompts file")
    return prompts


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pipelines.evaluation.generate import Generator, load_checkpoint_state, save_mel_png, save_wav

    args = parse_args(argv)
    prompts = read_prompts(args)
    kit = args.kit or load_checkpoint_state(args.checkpoint)["model_config"]["kit"]
    generator = Generator(kit, args.checkpoint, weights=args.weights, encoders=args.encoders, device=args.device)
    audio, mel = generator.generate(prompts, steps=args.steps, cfg_scale=args.cfg, seed=args.seed, return_mel=True)
    for i, prompt in enumerate(prompts):
        save_wav(storage.join(args.output, f"{i:03d}.wav"), audio[i])
        save_mel_png(storage.join(args.output, f"{i:03d}.png"), mel[i], title=prompt)
    settings = {"checkpoint": args.checkpoint, "prompts": prompts, "cfg": args.cfg, "steps": args.steps,
                "seed": args.seed, "encoders": args.encoders, "weights": args.weights, "kit": kit}
    storage.write_bytes_atomic(storage.join(args.output, "prompts.json"), json.dumps(settings, indent=2).encode())
    print(f"wrote {len(prompts)} clips to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
