r"""Score text-to-music generations: FAD, KL, IS and CLAP score (docs/evaluation.md).

    python jobs/evaluate.py --checkpoint runs/small/checkpoint_step_00200000 --corpus out/corpus --split valid \
        --num-clips 1000 --output eval/small-200k
    python jobs/evaluate.py --generated samples/ --prompts prompts.csv --kit paper --output eval/samples

What is generated: --checkpoint (clips made here with pipelines/evaluation/generate.py, saved to OUTPUT/generated/) or
--generated (a folder of WAVs named <prompt id>.wav). Which prompts, and the reference audio FAD and KL compare
against: --prompts FILE, --hf-dataset DIR or --corpus DIR --split valid (--reference overrides the reference).
Writes OUTPUT/metrics.json (numbers, kit, checkpoint, clip count, seeds, classifier) and OUTPUT/metrics.md
(a row laid out like the paper's Table 3). Numbers from CLAP embeddings are not comparable with the paper's
VGGish/PANNs numbers (docs/evaluation.md).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere

from jobs.cli import run_job  # noqa: E402
from pipelines.evaluation.run import EvalConfig, run_evaluation  # noqa: E402
from pipelines.runs.forms import CHECKPOINT_FORMS, TRUST_NOTE  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help=f"generate from: {CHECKPOINT_FORMS} (that file's weights, whatever "
                                              f"--weights says); local or s3://. {TRUST_NOTE}.")
    what.add_argument("--generated", help="folder of already generated WAVs named <prompt id>.wav (any rate; "
                                          "resampled to 16 kHz, cut or zero-padded to 10.24 s)")
    prompts = p.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompts", help="captions file: .txt (one per line, ids 000, 001, ...) or .csv/.jsonl "
                                           "with columns id, caption and optionally audio (reference clip path, "
                                           "relative to the file)")
    prompts.add_argument("--hf-dataset", help="a datasets.save_to_disk folder with caption and audio columns "
                                              "(and optionally id)")
    prompts.add_argument("--corpus", help="a prepare_corpus output: captions of --split, reference audio re-decoded "
                                          "from each clip's source_uri at start_seconds")
    p.add_argument("--split", default="valid", help="corpus split to evaluate on (default: %(default)s)")
    p.add_argument("--reference", help="reference set instead of the prompt set's audio: a folder of WAVs named "
                                       "<prompt id>.wav, or a cached reference .npz written by an earlier run")
    p.add_argument("--kit", default="", help="model kit for CLAP (and generation): name or YAML path "
                                             "(default: the checkpoint's kit, else tiny)")
    p.add_argument("--cfg", type=float, default=3.5, help="classifier-free guidance scale (default: %(default)s)")
    p.add_argument("--steps", type=int, default=50, help="Euler steps (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the first batch; batch b uses seed + b "
                                                       "(default: %(default)s)")
    p.add_argument("--weights", default="ema", choices=["ema", "model"], help="checkpoint weights (default: ema)")
    p.add_argument("--num-clips", type=int, default=None, help="evaluate the first N prompts (default: all)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per generation/embedding batch (default: 8)")
    p.add_argument("--workers", type=int, default=1,
                   help="generate on Ray Data with this many workers (joins RAY_ADDRESS or starts a local Ray); "
                        "1 = in this process (default: %(default)s)")
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per Ray generation worker (default: 1 when CUDA is available, else 0)")
    p.add_argument("--labels", default="audioset", choices=["audioset", "music"],
                   help="label set of the zero-shot CLAP classifier for KL/IS (default: all 527 AudioSet labels)")
    p.add_argument("--label-temperature", type=float, default=None,
                   help="softmax temperature over label cosines (default: the CLAP model's learned 1/logit_scale)")
    p.add_argument("--embedder", default="clap", help="FAD embedding model: clap (the kit's CLAP audio tower) or a "
                                                      "path to another CLAP checkpoint (default: clap)")
    p.add_argument("--cache-dir", default=None, help="reference statistics cache (default: $FLUXMUSIC_EVAL_CACHE or "
                                                     "~/.cache/fluxmusic-pipeline/eval)")
    p.add_argument("--name", default="", help="model name in the table (default: checkpoint folder or 'generated')")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--output", required=True, help="folder or s3:// prefix for metrics.json and metrics.md")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    values = {k: ("" if v is None and isinstance(getattr(EvalConfig, k, None), str) else v)
              for k, v in vars(args).items()}
    return EvalConfig(**values)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    config = config_from_args(parse_args(argv))
    _, table = run_evaluation(config)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_job(main))
