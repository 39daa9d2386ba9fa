"""Forward + backward + AdamW step throughput of FluxMusic on the rectified-flow loss; MFU on CUDA.

    python benchmarks/train_step.py                                   # CPU: tiny (batch 4) and small (batch 1)
    python benchmarks/train_step.py --sizes base --batch 8 --peak-tflops 989   # CUDA: bf16 autocast, MFU

MFU = samples/s x 3 x forward FLOPs per sample (model_flops_per_sample, attention included) / peak FLOP/s.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import build_model, count_parameters, model_flops_per_sample, rectified_flow_loss  # noqa: E402
from schemas.constants import CLAP_DIM, LATENT_SHAPE, T5_MAX_TOKENS  # noqa: E402

DEFAULT_BATCH = {"tiny": 4, "small": 1, "base": 8, "large": 4, "giant": 2, "giant_full": 2}


def measure(size: str, batch: int, steps: int, warmup: int, device: torch.device, bf16: bool, txt_len: int,
            ctx: int, checkpointing: bool) -> dict:
    torch.manual_seed(0)
    model = build_model(size, context_in_dim=ctx, gradient_checkpointing=checkpointing).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x0 = torch.randn(batch, *LATENT_SHAPE, device=device)
    cond = {"txt": torch.randn(batch, txt_len, ctx, device=device),
            "txt_mask": torch.ones(batch, txt_len, dtype=torch.bool, device=device),
            "y": torch.randn(batch, CLAP_DIM, device=device)}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def step() -> float:
        with autocast:
            loss, _ = rectified_flow_loss(model, x0, cond)
        optimizer.zero_grad(set_to_none=True)
        loss.mean().backward()
        optimizer.step()
        return loss.mean().item()          # .item() synchronises the device

    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    flops = 3 * model_flops_per_sample(model.params, txt_len=txt_len)
    result = {"size": size, "params": count_parameters(model), "batch": batch, "txt_len": txt_len,
              "device": str(device), "bf16": bf16, "seconds_per_step": round(seconds, 4),
              "samples_per_s": round(batch / seconds, 3), "train_gflops_per_sample": round(flops / 1e9, 2),
              "achieved_tflops": round(batch * flops / seconds / 1e12, 4)}
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=None, help="default: tiny small on CPU, base on CUDA")
    parser.add_argument("--batch", type=int, default=None, help="per-size default: %s" % DEFAULT_BATCH)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--txt-len", type=int, default=T5_MAX_TOKENS)
    parser.add_argument("--context-dim", type=int, default=4096, help="T5 width (4096 for T5 v1.1 XXL)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fp32", action="store_true", help="on CUDA, skip bf16 autocast")
    parser.add_argument("--checkpointing", action="store_true", help="gradient checkpointing per block")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak (H100 SXM: 989)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    bf16 = device.type == "cuda" and not args.fp32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    sizes = args.sizes or (["base"] if device.type == "cuda" else ["tiny", "small"])
    print("command:", " ".join(["python"] + sys.argv), flush=True)
    for size in sizes:
        result = measure(size, args.batch or DEFAULT_BATCH[size], args.steps, args.warmup, device, bf16,
                         args.txt_len, args.context_dim, args.checkpointing)
        if device.type == "cuda":
            result["mfu"] = round(result["achieved_tflops"] / args.peak_tflops, 4)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
