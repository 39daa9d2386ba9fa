"""`TrainState`: everything one worker trains and checkpoints, built identically on every rank."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from model import build_model, compile_blocks
from pipelines.training.config import (
    FSDP_SIZES,
    TrainConfig,
    accumulation_steps,
    learning_rate_factor,
)
from pipelines.training.data import read_null_text
from pipelines.training.optim import build_optimizer
from pipelines.training.parallel import local, unwrap, wrap_model


@dataclass
class TrainState:
    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    model: nn.Module                  # what forward/backward run on (DDP or FSDP wrapper)
    base: nn.Module                   # the FluxMusic module inside it
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator        # this rank's noise, t and dropout draws
    ema: list[Tensor]                 # this rank's piece of every parameter's EMA, in `names` order
    names: list[str]
    null_t5: Tensor                   # the empty-caption embeddings (CFG dropout target)
    null_clap: Tensor
    t5_dim: int
    clap_dim: int
    scaling_factor: float
    kit: str
    accumulation: int
    step: int = 0
    epoch: int = 0
    consumed: int = 0                 # train rows of `epoch` consumed by all ranks together (any world size)
    history: list[tuple[float, float]] = field(default_factory=list)   # (step, loss) for the loss curve

    @property
    def params(self) -> list[Tensor]:
        return [p for _, p in self.base.named_parameters()]

    @property
    def strategy(self) -> str:
        return self.cfg.resolved_strategy()

    @property
    def sharded(self) -> bool:
        return self.strategy == "fsdp" and self.world > 1

    def autocast(self):
        """bf16 autocast on CUDA; full fp32 on the CPU."""
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" else contextlib.nullcontext()


def build_state(cfg: TrainConfig, manifest: dict, data: str, *, rank: int, world: int,
                device: torch.device) -> TrainState:
    """Fresh weights (the same on every rank: seeded), wrapped for the strategy, with optimiser, EMA and RNG."""
    t5_dim, clap_dim = int(manifest["t5_dim"]), int(manifest["clap_dim"])
    null_t5, null_clap = read_null_text(data, t5_dim, clap_dim)
    torch.manual_seed(cfg.seed)            # identical initial weights on every rank
    base = build_model(cfg.size, context_in_dim=t5_dim, vec_in_dim=clap_dim,
                       gradient_checkpointing=cfg.size in FSDP_SIZES)
    if cfg.compile and device.type == "cuda":     # per block: one graph per block kind; CPU runs stay eager
        compile_blocks(base)
    model = wrap_model(base, cfg.resolved_strategy(), world, device)
    base = unwrap(model)
    optimizer = build_optimizer(model.parameters(), cfg.lr, cfg.weight_decay, device.type)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: learning_rate_factor(s, cfg.warmup_steps))
    return TrainState(
        cfg=cfg, rank=rank, world=world, device=device, model=model, base=base, optimizer=optimizer,
        scheduler=scheduler, generator=torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + rank),
        ema=[local(p).detach().clone() for _, p in base.named_parameters()],
        names=[n for n, _ in base.named_parameters()], null_t5=null_t5, null_clap=null_clap,
        t5_dim=t5_dim, clap_dim=clap_dim, scaling_factor=float(manifest["vae_scaling_factor"]),
        kit=cfg.kit or str(manifest.get("kit", "tiny")),
        accumulation=accumulation_steps(cfg.global_batch_size, cfg.micro_batch_size, world))
