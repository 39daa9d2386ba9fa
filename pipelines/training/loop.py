"""The Ray Train worker loop: build or restore the state, then update, validate, preview, log and checkpoint."""
from __future__ import annotations

import tempfile

from model import model_flops_per_sample
from pipelines import storage
from pipelines.runs.checkpoints import checkpoint_name
from pipelines.training.checkpoint import (
    restore_checkpoint,
    save_checkpoint,
)
from pipelines.training.config import DEFAULT_SHUFFLE_ROWS, TrainConfig
from pipelines.training.data import CorpusCollate, files_of, rank_micro_batches
from pipelines.training.metrics import TensorBoardLog, save_loss_curve
from pipelines.training.previews import Previewer
from pipelines.training.state import build_state
from pipelines.training.step import attention_backends, train_step, validate


def due(step: int, every: int, last: bool = False) -> bool:
    return (every > 0 and step % every == 0) or last


def report_due(step: int, cfg: TrainConfig, last: bool, computed_extra: bool) -> bool:
    """Report to Ray Train at log and checkpoint steps, and at any step that computed val/eval/preview metrics
    (so those are never dropped when their cadence is not a multiple of --log-every)."""
    return due(step, cfg.log_every, last) or due(step, cfg.checkpoint_every) or computed_extra


class PendingCheckpoint:
    """An async DCP save in flight: its folder lives until the shards are written and Ray has the checkpoint."""

    def __init__(self, future, folder: tempfile.TemporaryDirectory, metrics: dict, step: int):
        self.future, self.folder, self.metrics, self.step = future, folder, metrics, step

    def report(self) -> None:
        import ray.train

        self.future.result()           # every rank waits for its own shards before Ray uploads them
        ray.train.report(self.metrics, checkpoint=ray.train.Checkpoint.from_directory(self.folder.name),
                         checkpoint_dir_name=checkpoint_name(self.step))
        self.folder.cleanup()


def checkpoint_and_report(state, metrics: dict, asynchronous: bool) -> PendingCheckpoint | None:
    import ray.train

    folder = tempfile.TemporaryDirectory(prefix="fluxmusic-ckpt-")
    future = save_checkpoint(state, folder.name, asynchronous=asynchronous)
    pending = PendingCheckpoint(future, folder, metrics, state.step)
    if future is None:
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder.name),
                         checkpoint_dir_name=checkpoint_name(state.step))
        folder.cleanup()
        return None
    return pending


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker entry: config = {"train": asdict(TrainConfig), "manifest": {...}, "data": uri,
    "run_dir": uri, "files": [asdict(CorpusFile), ...]}."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig(**config["train"])
    context = ray.train.get_context()
    state = build_state(cfg, config["manifest"], config["data"], rank=context.get_world_rank(),
                        world=context.get_world_size(), device=ray.train.torch.get_device())
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            restore_checkpoint(state, folder)
        if state.rank == 0:
            print(f"resumed {cfg.run_name} at step {state.step} (epoch {state.epoch}, "
                  f"row {state.consumed} of its global order)")
    if state.rank == 0:
        print(f"attention (SDPA) backend on {state.device}: {attention_backends(state)}")

    run_dir = config["run_dir"]
    batches = rank_micro_batches(files_of(config["files"]), rank=state.rank, world=state.world,
                                 micro_batch_size=cfg.micro_batch_size,
                                 collate=CorpusCollate(0, 1, state.t5_dim, state.clap_dim), seed=cfg.seed,
                                 shuffle_buffer=cfg.shuffle_buffer or DEFAULT_SHUFFLE_ROWS,
                                 epoch=state.epoch, skip=state.consumed)
    flops_per_sample = lambda txt_len: 3 * model_flops_per_sample(state.base.params, txt_len=txt_len)  # noqa: E731
    previewer = Previewer(state)
    tensorboard = TensorBoardLog(run_dir, cfg.tensorboard_upload_s) if state.rank == 0 else None
    pending: PendingCheckpoint | None = None
    while state.step < cfg.max_steps:
        metrics = train_step(state, batches, flops_per_sample)
        last = state.step == cfg.max_steps
        extra = False
        if due(state.step, cfg.val_every):
            metrics["val_loss"] = validate(state, ray.train.get_dataset_shard("valid"))
            extra = True
        if due(state.step, cfg.sample_every) or due(state.step, cfg.eval_every):
            folder = storage.join(run_dir, "samples", f"step_{state.step:08d}")
            metrics.update(previewer.preview(folder, evaluate=due(state.step, cfg.eval_every)))
            extra = True
        reporting = report_due(state.step, cfg, last, extra)
        if tensorboard is not None:        # every step's scalars; flushed (and uploaded) only when reporting
            tensorboard.write(metrics, state.step, flush=reporting)
        if pending is not None:            # the previous async save: its shards are written by now (or soon)
            pending.report()
            pending = None
        if not reporting:
            continue
        if due(state.step, cfg.checkpoint_every, last):
            pending = checkpoint_and_report(state, metrics, cfg.async_checkpoint and not last)
        else:
            ray.train.report(metrics)
    if pending is not None:
        pending.report()
    if state.rank == 0 and state.history:
        save_loss_curve(storage.join(run_dir, "loss_curve.png"), state.history, cfg.run_name)
    if tensorboard is not None:
        tensorboard.close()
