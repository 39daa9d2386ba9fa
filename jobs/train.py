"""Train FluxMusic on a prepared corpus with Ray Train (docs/training.md).

    python -m jobs.train --size small --data OUT --storage runs/ --run-name small-1 --num-workers 8 --use-gpu
    python -m jobs.train ... --run-name small-1 --resume      # continue its latest checkpoint
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere

import argparse
from dataclasses import fields

from jobs.cli import run_job
from pipelines.corpus.check import require_corpus
from pipelines.errors import UserError, UserValueError
from pipelines.training.config import (
    DEFAULT_PROMPTS,
    DEFAULT_SHUFFLE_ROWS,
    TrainConfig,
    accumulation_steps,
    default_micro_batch_size,
    parse_worker_resources,
)
from pipelines.training.run import run_training
from schemas.manifest import TRAINING_KEYS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default=defaults.size, choices=["tiny", "small", "base", "large", "giant", "giant_full"],
                   help="model size of the paper's Table 1 (tiny: CPU tests; giant_full: the released 1.59 B model; "
                        "default: %(default)s)")
    p.add_argument("--data", required=True, help="a prepare_corpus output: local folder or s3:// prefix")
    p.add_argument("--storage", required=True,
                   help="where runs live (local folder or s3:// prefix): checkpoints, TensorBoard events, samples "
                        "under STORAGE/RUN_NAME")
    p.add_argument("--run-name", required=True, help="name of this run inside --storage")
    p.add_argument("--resume", action="store_true",
                   help="continue the latest checkpoint of --run-name (without it, a name that already holds a run "
                        "is refused rather than silently continued)")
    p.add_argument("--num-workers", type=int, default=defaults.num_workers, help="Ray Train workers, one GPU each with --use-gpu")
    p.add_argument("--use-gpu", action="store_true", help="train on GPUs (bf16 autocast); otherwise CPU fp32")
    p.add_argument("--cpus-per-worker", type=float, default=defaults.cpus_per_worker,
                   help="CPUs reserved per worker (fractional on small machines; default: %(default)s)")
    p.add_argument("--worker-resource", action="append", default=[], metavar="NAME:AMOUNT",
                   help="a custom Ray resource each worker requests, repeatable; on ray_cluster.yaml pass "
                        "train_node:1 so workers run on the gpu_train nodes only")
    p.add_argument("--strategy", default="", choices=["", "ddp", "fsdp"],
                   help="data parallelism: DDP, or FSDP (sharded; the default for large and giant sizes)")
    p.add_argument("--global-batch-size", type=int, default=defaults.global_batch_size,
                   help="samples per optimiser update, over all workers (the paper's 128; default: %(default)s)")
    p.add_argument("--micro-batch-size", type=int, default=0,
                   help="samples per worker per forward/backward; the rest of the global batch is gradient "
                        f"accumulation (default: global batch / workers, at most {defaults.micro_batch_size})")
    p.add_argument("--max-steps", type=int, default=defaults.max_steps, help="optimiser updates (default: %(default)s)")
    p.add_argument("--lr", type=float, default=defaults.lr, help="AdamW learning rate (paper: %(default)s)")
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="AdamW weight decay (default: %(default)s)")
    p.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps, help="steps of linear LR warm-up, 0 = none (default: %(default)s)")
    p.add_argument("--grad-clip", type=float, default=defaults.grad_clip,
                   help="gradient norm clipping, 0 = off (paper: %(default)s)")
    p.add_argument("--ema-every", type=int, default=defaults.ema_every,
                   help="update the EMA weights every N optimiser steps (paper 100; official code 1)")
    p.add_argument("--ema-decay", type=float, default=defaults.ema_decay,
                   help="EMA decay per update (paper 0.99; official code 0.9999)")
    p.add_argument("--cfg-dropout", type=float, default=defaults.cfg_dropout,
                   help="probability, per encoder and sample, of training on the empty-caption embedding "
                        "(classifier-free guidance; default: %(default)s)")
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every,
                   help="write a checkpoint every N steps (and at the last; default: %(default)s)")
    p.add_argument("--keep-checkpoints", type=int, default=defaults.keep_checkpoints,
                   help="keep the latest N checkpoints (default: %(default)s)")
    p.add_argument("--log-every", type=int, default=defaults.log_every, help="report metrics every N steps")
    p.add_argument("--val-every", type=int, default=defaults.val_every,
                   help="validation loss on the valid split every N steps (0 = off)")
    p.add_argument("--sample-every", type=int, default=defaults.sample_every,
                   help="WAV + mel PNG samples of the EMA weights every N steps (0 = off)")
    p.add_argument("--sample-prompt", action="append", dest="sample_prompts",
                   help=f"a prompt for those samples (repeatable; default: {' | '.join(DEFAULT_PROMPTS)})")
    p.add_argument("--sample-steps", type=int, default=defaults.sample_steps,
                   help="Euler steps for samples and evaluation (default: %(default)s)")
    p.add_argument("--sample-cfg", type=float, default=defaults.sample_cfg,
                   help="classifier-free guidance scale for samples and evaluation (default: %(default)s)")
    p.add_argument("--eval-every", type=int, default=defaults.eval_every,
                   help="FAD, KL, IS and CLAP score of EMA samples every N steps (0 = off; docs/evaluation.md)")
    p.add_argument("--eval-clips", type=int, default=defaults.eval_clips,
                   help="evaluate on the first N valid-split captions against their clips' audio (default: %(default)s)")
    p.add_argument("--eval-reference", default="",
                   help="instead, a reference-statistics file saved by pipelines.evaluation.evaluator.Evaluator")
    p.add_argument("--max-failures", type=int, default=defaults.max_failures,
                   help="worker failures Ray Train recovers from by restarting at the last checkpoint")
    p.add_argument("--shuffle-buffer", type=int, default=0,
                   help=f"rows in each worker's seeded shuffle buffer (0 = {DEFAULT_SHUFFLE_ROWS})")
    p.add_argument("--compile", action="store_true",
                   help="CUDA: torch.compile each transformer block and pad text to length buckets (32/64/128/256) "
                        "so shapes repeat; ignored on CPU")
    p.add_argument("--async-checkpoint", action="store_true",
                   help="write checkpoint shards in the background (dcp.async_save; the checkpoint is reported "
                        "one step later); default off")
    p.add_argument("--tensorboard-upload-s", type=float, default=defaults.tensorboard_upload_s,
                   help="s3:// runs: upload a finished TensorBoard event-file part at most this often "
                        "(default: %(default)s s)")
    p.add_argument("--no-exclude-overlap", dest="exclude_overlap", action="store_false",
                   help="train on every corpus track, even those of DATA/overlap/exclude_track_ids.txt (written by "
                        "jobs/check_overlap.py --exclude; by default they are left out)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of data order, noise and dropout")
    p.add_argument("--kit", default="", help="model kit for samples and evaluation (default: the corpus's kit)")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    try:
        return _config_from_args(args)
    except ValueError as error:          # --worker-resource, or a batch that does not split over the workers
        raise UserValueError(str(error)) from error


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    values["sample_prompts"] = args.sample_prompts or list(DEFAULT_PROMPTS)
    values["worker_resources"] = parse_worker_resources(args.worker_resource)
    if not args.micro_batch_size:
        values["micro_batch_size"] = default_micro_batch_size(args.global_batch_size, args.num_workers,
                                                              TrainConfig.micro_batch_size)
    config = TrainConfig(**values)
    accumulation_steps(config.global_batch_size, config.micro_batch_size, config.num_workers)
    return config


def main(argv: list[str] | None = None) -> int:
    from pipelines.raylocal import init_local_ray

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args = parse_args(argv)
    config = config_from_args(args)
    require_corpus(config.data, "--data", TRAINING_KEYS)     # before Ray starts
    init_local_ray()
    try:
        result = run_training(config, resume=args.resume)
    except FileExistsError as error:     # the run name holds a run and --resume was not given
        raise UserError(str(error)) from error
    print(f"finished {config.run_name}: {result.metrics}")
    if result.checkpoint is not None:
        print(f"latest checkpoint: {result.checkpoint.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_job(main))
