"""The Ray Train worker loop: build or restore the state, then update, validate, preview, log and checkpoint."""
from __future__ import annotations

import tempfile

from model import model_flops_per_sample
from pipelines import storage
from pipelines.training.checkpoint import checkpoint_name, restore_checkpoint, save_checkpoint
from pipelines.training.config import DEFAULT_SHUFFLE_ROWS, TrainConfig
from pipelines.training.data import CorpusCollate, files_of, rank_micro_batches
from pipelines.training.metrics import TensorBoardLog, save_loss_curve
from pipelines.training.previews import Previewer
from pipelines.training.state import build_state
from pipelines.training.step import train_step, validate


def due(step: int, every: int, last: bool = False) -> bool:
    return (every > 0 and step % every == 0) or last


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
            print(f"resumed {cfg.run_name} at step {state.step} (epoch {state.epoch}, batch {state.consumed})")

    run_dir = config["run_dir"]
    batches = rank_micro_batches(files_of(config["files"]), rank=state.rank, world=state.world,
                                 micro_batch_size=cfg.micro_batch_size,
                                 collate=CorpusCollate(0, 1, state.t5_dim, state.clap_dim), seed=cfg.seed,
                                 shuffle_buffer=cfg.shuffle_buffer or DEFAULT_SHUFFLE_ROWS,
                                 epoch=state.epoch, skip=state.consumed)
    flops_per_sample = lambda txt_len: 3 * model_flops_per_sample(state.base.params, txt_len=txt_len)  # noqa: E731
    previewer = Previewer(state)
    tensorboard = None
    while state.step < cfg.max_steps:
        metrics = train_step(state, batches, flops_per_sample)
        last = state.step == cfg.max_steps
        if due(state.step, cfg.val_every):
            metrics["val_loss"] = validate(state, ray.train.get_dataset_shard("valid"))
        if due(state.step, cfg.sample_every) or due(state.step, cfg.eval_every):
            folder = storage.join(run_dir, "samples", f"step_{state.step:08d}")
            metrics.update(previewer.preview(folder, evaluate=due(state.step, cfg.eval_every)))
        if not (due(state.step, cfg.log_every, last) or due(state.step, cfg.checkpoint_every)):
            continue
        if state.rank == 0:
            tensorboard = tensorboard or TensorBoardLog(run_dir)
            tensorboard.write(metrics, state.step)
        if due(state.step, cfg.checkpoint_every, last):
            with tempfile.TemporaryDirectory() as folder:
                save_checkpoint(state, folder)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                                 checkpoint_dir_name=checkpoint_name(state.step))
        else:
            ray.train.report(metrics)
    if state.rank == 0 and state.history:
        save_loss_curve(storage.join(run_dir, "loss_curve.png"), state.history, cfg.run_name)
    if tensorboard is not None:
        tensorboard.close()
