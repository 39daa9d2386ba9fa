"""Checkpoint save/restore time and rank-0 peak host memory: full state dicts on rank 0 (the old layout) vs
sharded DCP (pipelines.training.checkpoint), on 2 CPU processes (gloo) with FSDP2 or DDP.

    python benchmarks/checkpoint.py --size small --strategy fsdp --workers 2

Each (mode) runs in a fresh process group so peak RSS is its own: rank 0 resets its RSS high-water mark
(/proc/self/clear_refs) before the save and the restore and reports VmHWM - VmRSS-before. Results: JSON lines.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import build_model, count_parameters  # noqa: E402


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak() -> int:
    """Reset this process's RSS high-water mark to its current RSS; -> current RSS (kB)."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS")


def _folder_bytes(folder: str) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def _build(size: str, strategy: str, world: int):
    from pipelines.training.parallel import apply_fsdp, local

    torch.manual_seed(0)
    model = build_model(size, context_in_dim=64, vec_in_dim=32)
    if strategy == "fsdp" and world > 1:
        model = apply_fsdp(model)
    else:
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():               # AdamW state exists (exp_avg, exp_avg_sq) as after a real step
        p.grad = torch.zeros_like(p)
    optimizer.step()
    base = model.module if hasattr(model, "module") else model
    names = [n for n, _ in base.named_parameters()]
    params = [p for _, p in base.named_parameters()]
    return model, optimizer, names, params, [local(p).detach().clone() for p in params]


def save_full(model, optimizer, names, params, ema, folder: str, rank: int) -> None:
    """The previous layout: gather full model, optimiser and EMA onto rank 0's host memory, torch.save."""
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)

    from pipelines.training.ema import full_ema

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = {"model": get_model_state_dict(model, options=options),
             "optimizer": get_optimizer_state_dict(model, optimizer, options=options),
             "ema": full_ema(names, ema, params)}
    if rank == 0:
        torch.save(state, os.path.join(folder, "state.pt"))
    dist.barrier()


def restore_full(model, optimizer, names, params, ema, folder: str, rank: int) -> None:
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                         set_optimizer_state_dict)

    from pipelines.training.parallel import scatter

    saved = torch.load(os.path.join(folder, "state.pt"), map_location="cpu", weights_only=True)
    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, saved["model"], options=options)
    set_optimizer_state_dict(model, optimizer, saved["optimizer"], options=options)
    ema[:] = [scatter(saved["ema"][n], p) for n, p in zip(names, params)]


def save_dcp(model, optimizer, names, params, ema, folder: str, rank: int) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    from pipelines.training.ema import ema_state_dict

    dcp.save({"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer),
              "ema": ema_state_dict(names, ema, params)}, checkpoint_id=os.path.join(folder, "dcp"))


def restore_dcp(model, optimizer, names, params, ema, folder: str, rank: int) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict, get_optimizer_state_dict,
                                                         set_model_state_dict, set_optimizer_state_dict)

    from pipelines.training.ema import ema_state_dict
    from pipelines.training.parallel import local

    target = {"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, optimizer),
              "ema": ema_state_dict(names, ema, params)}
    dcp.load(target, checkpoint_id=os.path.join(folder, "dcp"))
    set_model_state_dict(model, target["model"])
    set_optimizer_state_dict(model, optimizer, target["optimizer"])
    ema[:] = [local(target["ema"][n]).detach().clone() for n in names]


MODES = {"full": (save_full, restore_full), "dcp": (save_dcp, restore_dcp)}


def worker(rank: int, world: int, port: int, args, mode: str, folder: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model, optimizer, names, params, ema = _build(args.size, args.strategy, world)
    save, restore = MODES[mode]
    dist.barrier()
    before = _reset_peak()
    started = time.perf_counter()
    save(model, optimizer, names, params, ema, folder, rank)
    dist.barrier()
    save_s, save_peak = time.perf_counter() - started, _status_kb("VmHWM") - before
    before = _reset_peak()
    started = time.perf_counter()
    restore(model, optimizer, names, params, ema, folder, rank)
    dist.barrier()
    restore_s, restore_peak = time.perf_counter() - started, _status_kb("VmHWM") - before
    if rank == 0:
        base = model.module if hasattr(model, "module") else model
        Path(out).write_text(json.dumps({
            "mode": mode, "size": args.size, "strategy": args.strategy, "workers": world,
            "params": count_parameters(base), "save_s": round(save_s, 2), "restore_s": round(restore_s, 2),
            "rank0_save_peak_mb": round(save_peak / 1024, 1), "rank0_restore_peak_mb": round(restore_peak / 1024, 1),
            "rank0_rss_mb": round(before / 1024, 1), "checkpoint_mb": round(_folder_bytes(folder) / 2**20, 1)}))
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="small")
    p.add_argument("--strategy", default="fsdp", choices=["fsdp", "ddp"])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--port", type=int, default=29731)
    args = p.parse_args(argv)
    results = {}
    for i, mode in enumerate(MODES):
        with tempfile.TemporaryDirectory() as folder, tempfile.NamedTemporaryFile(suffix=".json") as out:
            mp.spawn(worker, args=(args.workers, args.port + i, args, mode, folder, out.name), nprocs=args.workers)
            results[mode] = json.loads(Path(out.name).read_text())
            print(json.dumps(results[mode]), flush=True)
    full, dcp = results["full"], results["dcp"]
    print(json.dumps({"ratio_full_over_dcp": {
        "save_s": round(full["save_s"] / max(dcp["save_s"], 1e-9), 2),
        "restore_s": round(full["restore_s"] / max(dcp["restore_s"], 1e-9), 2),
        "rank0_save_peak_mb": round(full["rank0_save_peak_mb"] / max(dcp["rank0_save_peak_mb"], 1e-9), 2),
        "rank0_restore_peak_mb": round(full["rank0_restore_peak_mb"] / max(dcp["rank0_restore_peak_mb"], 1e-9), 2)}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
