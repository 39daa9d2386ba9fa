"""The driver side of training: check the corpus and the run name, then start Ray Train's TorchTrainer."""
from __future__ import annotations

import os
from dataclasses import asdict, replace

from pipelines import storage
from pipelines.training.config import TrainConfig, accumulation_steps, worker_resources
from pipelines.training.data import (
    read_exclusions,
    read_manifest,
    scan_corpus,
    validation_dataset,
)
from pipelines.training.loop import train_loop_per_worker
from pipelines.training.rendezvous import BoundStoreTorchConfig


def _absolute(uri: str) -> str:
    return uri if storage.is_s3(uri) else os.path.abspath(uri)


def run_training(config: TrainConfig, *, resume: bool = False):
    """Train (or, with resume=True, continue the latest checkpoint of config.run_name); returns the Result.

    Without resume a run name that already has output fails loudly: Ray Train V2 would otherwise
    silently continue the old run.
    """
    import ray
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train.torch import TorchTrainer

    if not config.data or not config.storage:
        raise ValueError("data and storage are required")
    config = replace(config, data=_absolute(config.data), storage=_absolute(config.storage))
    run_dir = storage.join(config.storage, config.run_name)
    if not resume and storage.exists(run_dir) and storage.list_files(run_dir):
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or pick another name")
    accumulation_steps(config.global_batch_size, config.micro_batch_size, config.num_workers)
    manifest = read_manifest(config.data)
    excluded = read_exclusions(config.data) if config.exclude_overlap else frozenset()
    files = scan_corpus(config.data, excluded=excluded)
    if excluded:
        print(f"leaving out {len(excluded)} tracks of the corpus's exclusion list (jobs/check_overlap.py --exclude), "
              f"found in {sum(bool(f.excluded) for f in files)} files")
    rows = [f.train_rows for f in files]
    if sum(rows) < config.num_workers * config.micro_batch_size:
        raise ValueError(f"{sum(r > 0 for r in rows)} corpus files with {sum(rows)} train rows cannot give each of "
                         f"{config.num_workers} workers a micro-batch of {config.micro_batch_size}")
    datasets = {"valid": validation_dataset(files, config.val_max_rows)} if config.val_every > 0 else {}
    storage_path, storage_fs = storage.train_storage(config.storage)
    # One object in the store for every worker (and every restart), instead of the list in each worker's config.
    files_ref = ray.put([asdict(f) for f in files])
    trainer = TorchTrainer(
        train_loop_per_worker,
        torch_config=BoundStoreTorchConfig(),      # the rendezvous store on the rank-0 address only, not every interface
        train_loop_config={"train": asdict(config), "manifest": manifest, "data": config.data, "run_dir": run_dir,
                           "files": files_ref},
        scaling_config=ray.train.ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                               resources_per_worker=worker_resources(config)),
        run_config=ray.train.RunConfig(
            name=config.run_name, storage_path=storage_path, storage_filesystem=storage_fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures)),
        # training data: every worker reads the epoch's global order and takes its own micro-batches
        # (rank_micro_batches); validation: the fixed subset, unsplit + ordered, every worker takes rows
        # rank::workers of each batch
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=[],
                                            execution_options=ExecutionOptions(preserve_order=True)),
    )
    result = trainer.fit()
    if result.error is None:
        write_run_release(run_dir, config.max_steps)
    return result


def write_run_release(run_dir: str, max_steps: int) -> str | None:
    """run_dir/release from the final checkpoint (on the driver, after the workers are gone: it reads one set
    of weights at a time from the DCP shards, never a gathered optimiser); None if the run did not finish."""
    from pipelines.runs.checkpoints import checkpoint_name
    from pipelines.runs.weights import export_release

    final = storage.join(run_dir, checkpoint_name(max_steps))
    if not storage.exists(storage.join(final, "state.pt")):
        return None
    output = storage.join(run_dir, "release")
    export_release(final, output)
    return output
