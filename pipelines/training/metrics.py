"""What a run reports: TensorBoard scalars (mirrored to s3:// run folders), MFU, and the loss-curve PNG."""
from __future__ import annotations

import io
import os
import tempfile

import numpy as np
import torch

from pipelines import storage

# Dense bf16 peak FLOP/s per GPU, for MFU (name substring -> FLOP/s).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


def mfu(flops_per_second: float, world: int) -> float | None:
    """Model FLOP utilisation of `world` GPUs like this one; None for a GPU without a known peak."""
    peak = next((v for k, v in PEAK_FLOPS.items() if k in torch.cuda.get_device_name()), None)
    return flops_per_second / (world * peak) if peak else None


class TensorBoardLog:
    """Scalars of rank 0 into run_dir/tensorboard. TensorBoard writes local files only, so for an s3:// run
    it writes to a temporary folder and uploads the event files after each flush."""

    def __init__(self, run_dir: str):
        from torch.utils.tensorboard import SummaryWriter

        self.run_dir = run_dir
        self.folder = (storage.join(run_dir, "tensorboard") if not storage.is_s3(run_dir)
                       else tempfile.mkdtemp(prefix="fluxmusic-tb-"))
        self.writer = SummaryWriter(self.folder)

    def write(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            if key != "step" and isinstance(value, (int, float)) and np.isfinite(value):
                self.writer.add_scalar(key, value, step)
        self.writer.flush()
        if storage.is_s3(self.run_dir):
            for name in os.listdir(self.folder):
                with open(os.path.join(self.folder, name), "rb") as f:
                    storage.write_bytes_atomic(storage.join(self.run_dir, "tensorboard", name), f.read())

    def close(self) -> None:
        self.writer.close()


def save_loss_curve(uri: str, history: list[tuple[float, float]], title: str) -> None:
    """(step, loss) pairs -> a PNG at `uri`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = zip(*history)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, lw=1)
    ax.set(xlabel="optimiser step", ylabel="rectified-flow loss", title=title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    storage.write_bytes_atomic(uri, buffer.getvalue())
