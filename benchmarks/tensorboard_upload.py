"""Bytes a run uploads for its TensorBoard events on s3:// storage: the old mirror (every event file re-uploaded
in full after each log) vs TensorBoardLog's rotated parts (each byte once). No network: uploads are counted.

    python benchmarks/tensorboard_upload.py --steps 2000 --step-seconds 1 --upload-every-s 60
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pipelines.training.metrics as metrics  # noqa: E402

SCALARS = ["loss", "loss_t0", "loss_t1", "loss_t2", "loss_t3", "grad_norm", "lr", "samples_per_s",
           "tokens_per_s", "step_seconds", "epoch"]


def old_mirror_bytes(steps: int) -> int:
    """The previous TensorBoardLog: flush, then upload every file of the folder in full, at each log step."""
    from torch.utils.tensorboard import SummaryWriter

    total = 0
    with tempfile.TemporaryDirectory() as folder:
        writer = SummaryWriter(folder)
        for step in range(1, steps + 1):
            for key in SCALARS:
                writer.add_scalar(key, 1.0 / step, step)
            writer.flush()
            total += sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))
        writer.close()
    return total


def rotated_bytes(steps: int, step_seconds: float, upload_every_s: float) -> tuple[int, int]:
    """-> (bytes uploaded, files uploaded) by TensorBoardLog on an s3:// run, with a simulated clock."""
    sent: list[int] = []
    metrics.storage.write_bytes_atomic = lambda uri, data: sent.append(len(data))   # count, don't send
    now = [0.0]
    log = metrics.TensorBoardLog("s3://bucket/run", upload_every_s=upload_every_s, clock=lambda: now[0])
    for step in range(1, steps + 1):
        now[0] += step_seconds
        log.write({key: 1.0 / step for key in SCALARS}, step)
    log.close()
    return sum(sent), len(sent)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--step-seconds", type=float, default=1.0)
    p.add_argument("--upload-every-s", type=float, default=60.0)
    args = p.parse_args(argv)
    old = old_mirror_bytes(args.steps)
    new, files = rotated_bytes(args.steps, args.step_seconds, args.upload_every_s)
    print(json.dumps({"steps": args.steps, "scalars_per_step": len(SCALARS), "old_bytes": old, "new_bytes": new,
                      "new_files": files, "ratio_old_over_new": round(old / new, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
