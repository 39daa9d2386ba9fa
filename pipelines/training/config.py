"""What a training run is asked to do: `TrainConfig`, and the batch arithmetic and LR schedule it implies."""
from __future__ import annotations

from dataclasses import dataclass, field

from schemas.constants import CFG_DROPOUT

FSDP_SIZES = ("large", "giant", "giant_full")   # sizes sharded (and checkpointed per block) by default
DEFAULT_SHUFFLE_ROWS = 2048      # per worker: ~1.2 GB of paper-kit T5 + latents; spans a few files
DEFAULT_PROMPTS = ["an upbeat electronic dance track with a driving beat",
                   "a calm solo piano piece, slow and gentle"]


@dataclass
class TrainConfig:
    size: str = "small"
    data: str = ""                      # prepare_corpus output (manifest.json, corpus/, null_text/)
    storage: str = ""                   # local folder or s3:// prefix; the run lives at storage/run_name
    run_name: str = "fluxmusic"
    num_workers: int = 1
    use_gpu: bool = False
    global_batch_size: int = 128        # samples per optimiser update = micro * accumulation * workers
    micro_batch_size: int = 16          # samples per worker per forward/backward
    max_steps: int = 200_000            # optimiser updates
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0               # linear LR warm-up (the paper and code use none)
    grad_clip: float = 1.0              # 0 = off (the official code never clips)
    ema_every: int = 100                # paper: every 100 updates with decay 0.99; code: every update, 0.9999
    ema_decay: float = 0.99
    cfg_dropout: float = CFG_DROPOUT    # per encoder, independently
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 1
    val_every: int = 0                  # 0 = off
    val_max_rows: int = 256
    sample_every: int = 0
    sample_prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    sample_steps: int = 50
    sample_cfg: float = 3.5
    eval_every: int = 0                 # FAD/KL/IS/CLAP of EMA samples every N steps (0 = off)
    eval_clips: int = 8                 # the first N valid-split captions, against their clips' audio
    eval_reference: str = ""            # or a saved reference-statistics file (pipelines.evaluation.evaluator.Evaluator)
    seed: int = 0
    strategy: str = ""                  # ddp | fsdp; "" = fsdp for large/giant, ddp otherwise
    shuffle_buffer: int = 0             # rows in each worker's seeded local shuffle; 0 = DEFAULT_SHUFFLE_ROWS
    kit: str = ""                       # "" = the corpus manifest's kit
    max_failures: int = 0
    cpus_per_worker: float = 0.5        # fractional on CPU: whole-CPU workers starve Ray Data on small hosts
    worker_resources: dict[str, float] = field(default_factory=dict)   # custom Ray resources per worker
    exclude_overlap: bool = True        # leave out the tracks of the corpus's overlap exclusion list, if any
    compile: bool = False               # CUDA: torch.compile each block, text padded to length buckets
    async_checkpoint: bool = False      # dcp.async_save: write shards in the background, report one step later
    tensorboard_upload_s: float = 60.0  # s3:// runs: upload a finished TensorBoard event-file part this often

    def resolved_strategy(self) -> str:
        strategy = self.strategy or ("fsdp" if self.size in FSDP_SIZES else "ddp")
        if strategy not in ("ddp", "fsdp"):
            raise ValueError(f"strategy must be ddp or fsdp, got {strategy!r}")
        return strategy


def worker_resources(config: TrainConfig) -> dict[str, float]:
    """What each Ray Train worker asks for: its CPUs, one GPU with use_gpu, and the custom node resources
    (on ray_cluster.yaml `train_node: 1`, so workers land on the gpu_train nodes only)."""
    resources = {"CPU": config.cpus_per_worker, **config.worker_resources}
    if config.use_gpu:
        resources["GPU"] = 1
    return resources


def parse_worker_resources(specs: list[str]) -> dict[str, float]:
    """`["train_node:1"]` -> {"train_node": 1.0}; CPU and GPU have their own flags."""
    out: dict[str, float] = {}
    for spec in specs:
        name, _, amount = spec.partition(":")
        name = name.strip()
        try:
            value = float(amount)
        except ValueError:
            value = -1.0
        if not name or value <= 0:
            raise ValueError(f"--worker-resource {spec!r}: expected NAME:AMOUNT with AMOUNT > 0, e.g. train_node:1")
        if name in ("CPU", "GPU"):
            raise ValueError(f"--worker-resource {spec!r}: use --cpus-per-worker / --use-gpu for {name}")
        out[name] = value
    return out


def accumulation_steps(global_batch_size: int, micro_batch_size: int, num_workers: int) -> int:
    """Micro-steps per update so that global = micro * accumulation * workers exactly."""
    per_round = micro_batch_size * num_workers
    if global_batch_size % per_round:
        raise ValueError(f"global batch {global_batch_size} is not a multiple of micro batch {micro_batch_size} "
                         f"x {num_workers} workers")
    return global_batch_size // per_round


def learning_rate_factor(step: int, warmup_steps: int) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def default_micro_batch_size(global_batch_size: int, num_workers: int, cap: int) -> int:
    """The largest micro batch <= cap with global = micro x accumulation x workers exactly."""
    fits = [d for d in range(1, cap + 1) if global_batch_size % (d * num_workers) == 0]
    if not fits:
        raise ValueError(f"a global batch of {global_batch_size} cannot be split evenly over {num_workers} workers")
    return max(fits)
