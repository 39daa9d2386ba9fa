"""What a run reports: TensorBoard scalars (mirrored to s3:// run folders), MFU, and the loss-curve PNG."""
from __future__ import annotations

import io
import os
import tempfile
import time

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
    """Scalars of rank 0 into run_dir/tensorboard.

    Local runs: one event file, flushed on request. TensorBoard writes local files only and S3 has no append, so
    for an s3:// run the writer works in a temporary folder and is rotated: at a flush at least `upload_every_s`
    after the last upload (and at close) the current event file is closed, uploaded once and deleted, and a new
    part is started. Each byte goes up once; TensorBoard reads every event file of a folder as one run.
    """

    def __init__(self, run_dir: str, upload_every_s: float = 60.0, clock=time.monotonic):
        self.run_dir, self.upload_every_s, self.clock = run_dir, upload_every_s, clock
        self.remote = storage.is_s3(run_dir)
        self.folder = (tempfile.mkdtemp(prefix="fluxmusic-tb-") if self.remote
                       else storage.join(run_dir, "tensorboard"))
        self.part, self.uploaded_bytes, self.last_upload = 0, 0, clock()
        self.writer = self._open()

    def _open(self):
        from torch.utils.tensorboard import SummaryWriter

        self.part += 1
        return SummaryWriter(self.folder, filename_suffix=f".part{self.part:06d}")

    def write(self, metrics: dict[str, float], step: int, flush: bool = True) -> None:
        for key, value in metrics.items():
            if key != "step" and isinstance(value, (int, float)) and np.isfinite(value):
                self.writer.add_scalar(key, value, step)
        if flush:
            self.writer.flush()
            if self.remote and self.clock() - self.last_upload >= self.upload_every_s:
                self._upload(reopen=True)

    def _upload(self, reopen: bool) -> None:
        """Close the current part, upload every finished file in the temporary folder, delete them."""
        self.writer.close()
        for name in sorted(os.listdir(self.folder)):
            path = os.path.join(self.folder, name)
            with open(path, "rb") as f:
                data = f.read()
            storage.write_bytes_atomic(storage.join(self.run_dir, "tensorboard", name), data)
            self.uploaded_bytes += len(data)
            os.remove(path)
        self.last_upload = self.clock()
        if reopen:
            self.writer = self._open()

    def close(self) -> None:
        if self.remote:
            self._upload(reopen=False)
        else:
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
