"""Export a training checkpoint's EMA and raw weights as safetensors + config.json (a release folder).

    python -m jobs.export_weights --checkpoint runs/small-1 --output releases/small-1   # a run: its latest
    python -m jobs.export_weights --checkpoint runs/small-1/checkpoint_step_00200000 --output s3://bucket/rel
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere

import argparse  # noqa: E402

from jobs.cli import run_job  # noqa: E402
from pipelines.runs.forms import CHECKPOINT_FORMS, TRUST_NOTE  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help=f"what to export: {CHECKPOINT_FORMS}; local or s3://. {TRUST_NOTE}.")
    p.add_argument("--output", required=True, help="release folder (local or s3://): ema.safetensors, "
                                                   "model.safetensors, config.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from pipelines.runs.weights import export_release   # torch: not for --help

    args = parse_args(argv)
    config = export_release(args.checkpoint, args.output)
    print(f"wrote {args.output}: {config['size']} from {config['source']} (step {config['step']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_job(main))
