"""One optimiser update: posterior sampling, CFG text dropout, the rectified-flow loss, accumulation, clipping.

The pure math is separate functions; `train_step` and `validate` drive them over a worker's `TrainState`.
"""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

import torch
from torch import Tensor

from model import pad_to_bucket, rectified_flow_loss
from pipelines.training.data import CorpusCollate, stand_in_batch
from pipelines.training.ema import ema_due, ema_update
from pipelines.training.metrics import mfu
from pipelines.training.parallel import all_reduce_sum, local
from pipelines.training.state import TrainState
from schemas.constants import MUSIC_TOKENS

T_BUCKETS = 4            # loss is also reported per quarter of t in [0, 1)


def draw_latent(mean: Tensor, std: Tensor, scaling_factor: float, generator: torch.Generator) -> Tensor:
    """A fresh posterior sample each step: (mean + std * eps) * vae scaling factor, float32."""
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=torch.float32)
    return (mean.float() + std.float() * eps) * scaling_factor


def apply_text_dropout(txt: Tensor, mask: Tensor, y: Tensor, null_t5: Tensor, null_clap: Tensor,
                       drop_t5: Tensor, drop_clap: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Replace the T5 rows where drop_t5 and CLAP rows where drop_clap by the stored null embeddings."""
    length = max(txt.shape[1], null_t5.shape[0])
    if length > txt.shape[1]:
        txt = torch.cat((txt, txt.new_zeros(txt.shape[0], length - txt.shape[1], txt.shape[2])), dim=1)
        mask = torch.cat((mask, mask.new_zeros(mask.shape[0], length - mask.shape[1])), dim=1)
    null_txt = txt.new_zeros(length, txt.shape[2])
    null_txt[: null_t5.shape[0]] = null_t5.to(txt)
    null_mask = torch.arange(length, device=mask.device) < null_t5.shape[0]
    drop_t5 = drop_t5.to(txt.device)
    txt = torch.where(drop_t5[:, None, None], null_txt, txt)
    mask = torch.where(drop_t5[:, None], null_mask, mask)
    y = torch.where(drop_clap.to(y.device)[:, None], null_clap.to(y), y)
    return txt, mask, y


def t_bucket_sums(loss: Tensor, t: Tensor, buckets: int = T_BUCKETS) -> tuple[Tensor, Tensor]:
    """Per-bucket loss sums and counts over t in [0, 1) split into equal-width buckets."""
    index = (t.detach().float() * buckets).long().clamp(0, buckets - 1)
    sums = torch.zeros(buckets, device=loss.device).index_add_(0, index, loss.detach().float())
    counts = torch.zeros(buckets, device=loss.device).index_add_(0, index, torch.ones_like(loss, dtype=torch.float))
    return sums, counts


def condition(state: TrainState, batch: dict) -> tuple[Tensor, dict]:
    """A micro-batch -> (x0: a fresh scaled posterior sample, cond with CFG dropout applied per encoder)."""
    mean = batch["latent_mean"].to(state.device)
    x0 = draw_latent(mean, batch["latent_std"].to(state.device), state.scaling_factor, state.generator)
    drop = torch.rand(mean.shape[0], 2, generator=state.generator, device=state.device) < state.cfg.cfg_dropout
    txt, mask, y = apply_text_dropout(batch["txt"].to(state.device), batch["txt_mask"].to(state.device),
                                      batch["y"].to(state.device), state.null_t5.to(state.device),
                                      state.null_clap.to(state.device), drop[:, 0], drop[:, 1])
    if state.cfg.compile:        # a few repeated text lengths instead of a recompile per new length
        txt, mask = pad_to_bucket(txt, mask)
    # an all-real mask is dropped inside the model (joint_key_mask -> None), so unpadded batches run unmasked
    return x0, {"txt": txt.float(), "txt_mask": mask, "y": y.float()}


def train_step(state: TrainState, batches: Iterator, flops_per_sample=None) -> dict[str, float]:
    """One optimiser update over `state.accumulation` micro-batches; returns the step's metrics (all ranks)."""
    started = time.perf_counter()
    state.model.train()
    sums = torch.zeros(3 + 2 * T_BUCKETS, device=state.device)   # loss sum, count, txt tokens, buckets
    for micro in range(state.accumulation):
        state.epoch, state.consumed, batch = next(batches)
        x0, cond = condition(state, batch)
        last = micro == state.accumulation - 1
        # DDP: all-reduce gradients only on the last micro-step of the update
        sync = contextlib.nullcontext() if last or not hasattr(state.model, "no_sync") else state.model.no_sync()
        if hasattr(state.model, "set_requires_gradient_sync"):     # FSDP2
            state.model.set_requires_gradient_sync(last)
        with sync, state.autocast():
            loss, t = rectified_flow_loss(state.model, x0, cond, generator=state.generator)
            (loss.mean() / state.accumulation).backward()
        bucket_sums, bucket_counts = t_bucket_sums(loss, t)
        sums += torch.cat((torch.stack([loss.detach().float().sum(), torch.tensor(float(loss.numel()),
                           device=state.device), cond["txt_mask"].sum().float()]), bucket_sums, bucket_counts))
    max_norm = state.cfg.grad_clip if state.cfg.grad_clip > 0 else float("inf")   # inf: measure, don't clip
    grad_norm = torch.nn.utils.clip_grad_norm_(list(state.model.parameters()), max_norm)
    grad_norm = float(grad_norm.full_tensor().item() if hasattr(grad_norm, "full_tensor") else local(grad_norm).item())
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    if ema_due(state.step, state.cfg.ema_every):
        ema_update(state.ema, [local(p) for p in state.params], state.cfg.ema_decay)
    sums = all_reduce_sum(sums)
    seconds = time.perf_counter() - started
    samples = float(sums[1])
    metrics = {"step": state.step, "epoch": state.epoch, "loss": float(sums[0] / sums[1]), "grad_norm": grad_norm,
               "lr": state.scheduler.get_last_lr()[0], "samples_per_s": samples / seconds,
               "tokens_per_s": (samples * MUSIC_TOKENS + float(sums[2])) / seconds, "step_seconds": seconds}
    for b in range(T_BUCKETS):
        count = float(sums[3 + T_BUCKETS + b])
        metrics[f"loss_t{b}"] = float(sums[3 + b]) / count if count else float("nan")
    if state.device.type == "cuda" and flops_per_sample is not None:
        utilisation = mfu(flops_per_sample(float(sums[2]) / samples) * samples / seconds, state.world)
        if utilisation is not None:
            metrics["mfu"] = utilisation
    state.history.append((float(state.step), metrics["loss"]))
    return metrics


@torch.no_grad()
def validate(state: TrainState, shard) -> float:
    """Mean loss over the fixed validation subset, with a fixed t and noise per (batch, rank)."""
    model = state.model if state.sharded else state.base
    model.eval()
    collate = CorpusCollate(state.rank, state.world, state.t5_dim, state.clap_dim)
    rows = state.cfg.micro_batch_size * state.world
    total = torch.zeros(2, device=state.device)
    batches = shard.iter_torch_batches(batch_size=rows, collate_fn=collate, device="cpu")
    for index, batch in enumerate(batches):
        if index * rows >= state.cfg.val_max_rows:
            break
        weight = 1.0
        if batch["y"].shape[0] == 0:     # this rank has no rows here: FSDP still needs its forward
            batch, weight = stand_in_batch(state.null_t5, state.null_clap), 0.0
        g = torch.Generator(device=state.device).manual_seed(state.cfg.seed + 7919 * index + state.rank)
        x0 = batch["latent_mean"].to(state.device).float() * state.scaling_factor
        cond = {"txt": batch["txt"].to(state.device).float(), "txt_mask": batch["txt_mask"].to(state.device),
                "y": batch["y"].to(state.device).float()}
        with state.autocast():
            loss, _ = rectified_flow_loss(model, x0, cond, generator=g)
        total += torch.stack([loss.float().sum() * weight, torch.tensor(loss.numel() * weight, device=state.device)])
    total = all_reduce_sum(total)
    return float(total[0] / total[1]) if float(total[1]) else float("nan")


def attention_backends(state: TrainState) -> dict[str, str]:
    """The SDPA kernel this run's attention dispatches to, unmasked (no padded text) and masked, for one
    sample of this model's shape and the training dtype (logged once at start: FLASH vs a fallback matters)."""
    from model.layers import sdpa_backend

    params = state.base.params
    heads, head_dim = params.num_heads, params.hidden_size // params.num_heads
    dtype = torch.bfloat16 if state.device.type == "cuda" else torch.float32
    q = torch.zeros(1, heads, MUSIC_TOKENS + 64, head_dim, device=state.device, dtype=dtype)
    mask = torch.ones(1, 1, 1, q.shape[2], dtype=torch.bool, device=state.device)
    mask[..., :8] = False
    return {"unmasked": sdpa_backend(q, q, q), "masked": sdpa_backend(q, q, q, mask)}
