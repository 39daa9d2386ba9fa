"""Ray Train training on a tiny corpus: 2-worker DDP and FSDP, sharded DCP checkpoints (keep K, weights_only),
exact resume, resume at another world size and strategy, the release folder, metrics on the step they happen."""
from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from pipelines import storage
from pipelines.runs.checkpoints import list_checkpoints, load_state
from pipelines.training.config import TrainConfig
from pipelines.training.data import rank_micro_batches, scan_corpus
from pipelines.training.run import run_training
from tests.corpus_fixture import write_tiny_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    write_tiny_corpus(folder, n_clips=16)
    return str(folder)


def _state(storage_uri: str, name: str) -> dict:
    return load_state(list_checkpoints(storage_uri, name)[-1])


def test_two_worker_ddp_checkpoints_exact_resume_and_fsdp(ray_local, corpus, tmp_path):
    runs = str(tmp_path / "runs")
    base = TrainConfig(size="tiny", data=corpus, storage=runs, num_workers=2, global_batch_size=8,
                       micro_batch_size=2, lr=1e-3, ema_every=1, ema_decay=0.9, seed=3,
                       cpus_per_worker=0.25)
    # uninterrupted: 4 updates = 8 global micro-batches of 4 rows over 12 train rows (crosses 2 epoch ends)
    full = run_training(replace(base, run_name="full", max_steps=4, checkpoint_every=1, keep_checkpoints=2,
                                val_every=2, sample_every=4, sample_steps=1, sample_prompts=["soft piano"]))
    assert np.isfinite(full.metrics["loss"]) and np.isfinite(full.metrics["val_loss"])
    assert {f"loss_t{b}" for b in range(4)} <= set(full.metrics) and full.metrics["samples_per_s"] > 0
    kept = list_checkpoints(runs, "full")
    assert [k.rsplit("_", 1)[-1] for k in kept] == ["00000003", "00000004"]      # keep_checkpoints=2
    run_dir = storage.join(runs, "full")
    assert storage.list_files(storage.join(run_dir, "tensorboard"))
    assert storage.exists(storage.join(run_dir, "loss_curve.png"))
    assert storage.exists(storage.join(run_dir, "samples", "step_00000004", "00.wav"))

    # interrupted: 2 updates, then the same name continues to 4 (resumes mid-epoch)
    run_training(replace(base, run_name="split", max_steps=2, checkpoint_every=2))
    with pytest.raises(FileExistsError):                       # a reused name without resume fails loudly
        run_training(replace(base, run_name="split", max_steps=4, checkpoint_every=2))
    halfway = _state(runs, "split")
    run_training(replace(base, run_name="split", max_steps=4, checkpoint_every=2), resume=True)

    a, b = _state(runs, "full"), _state(runs, "split")       # both loaded with weights_only=True
    assert a["step"] == b["step"] == 4 and (a["epoch"], a["consumed"]) == (b["epoch"], b["consumed"])
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a["ema"][key], b["ema"][key], rtol=1e-5, atol=1e-6)
    moved = max(float((a["model"][k] - halfway["model"][k]).abs().max()) for k in a["model"])
    assert moved > 1e-4                                       # the second half really trained
    exp_avg = [s["exp_avg"] for s in a["optimizer"]["state"].values()]
    assert exp_avg and all(torch.isfinite(t).all() for t in exp_avg)
    torch.testing.assert_close(a["loss_history"], b["loss_history"], rtol=1e-5, atol=1e-6)

    # FSDP2 shards the same computation: interrupted and resumed (from its own DCP shards), it ends where
    # uninterrupted DDP does, to float tolerance; load_state gives the same full layout.
    fsdp = replace(base, run_name="fsdp", strategy="fsdp", checkpoint_every=2)
    run_training(replace(fsdp, max_steps=2))
    run_training(replace(fsdp, max_steps=4), resume=True)
    c = _state(runs, "fsdp")
    assert c["step"] == 4 and set(c["model"]) == set(a["model"]) and set(c["ema"]) == set(a["ema"])
    for key in a["model"]:
        torch.testing.assert_close(c["model"][key], a["model"][key], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(c["ema"][key], a["ema"][key], rtol=1e-4, atol=1e-5)
    assert len(c["optimizer"]["state"]) == len(a["optimizer"]["state"])


def test_ranks_share_one_epoch_order_read_by_ray_data(ray_local, tmp_path):
    """Through Ray Data: 2 ranks take interleaved micro-batches of the 1-rank order (no row twice, the same rows),
    another epoch gives another order, and a resume at another world size continues at the recorded row."""
    write_tiny_corpus(tmp_path, n_clips=24, files=6)        # 4 rows per file; 2, 4 or 0 valid rows each
    files = scan_corpus(str(tmp_path))
    rows = [f.train_rows for f in files]
    assert rows == [4, 2, 4, 2, 4, 2] and sum(f.valid_rows for f in files) == 6
    train = {r["clip_id"] for f in files for r in storage.read_parquet(f.uri, columns=["clip_id", "split"]).to_pylist()
             if r["split"] == "train"}

    def stream(rank: int, world: int, epoch: int = 0, skip: int = 0):
        return rank_micro_batches(files, rank=rank, world=world, micro_batch_size=2,
                                  collate=lambda b: list(b["clip_id"]), seed=5, shuffle_buffer=8, epoch=epoch,
                                  skip=skip)

    one = [(e, c) for e, _, clips in itertools.islice(stream(0, 1), 18) for c in clips]      # 2 epochs of 18
    assert [e for e, _ in one] == [0] * 18 + [1] * 18
    epochs = [[c for e, c in one if e == n] for n in (0, 1)]
    assert all(sorted(clips) == sorted(train) for clips in epochs) and epochs[0] != epochs[1]
    two = [list(itertools.islice(stream(rank, 2), 4)) for rank in range(2)]                 # 16 of 18 rows
    assert [c for k in range(4) for rank in range(2) for c in two[rank][k][2]] == epochs[0][:16]
    assert [n for _, n, _ in two[0]] == [4, 8, 12, 16]
    resumed = [c for _, _, clips in itertools.islice(stream(0, 1, skip=8), 5) for c in clips]
    assert resumed == epochs[0][8:]


def _scalars(folder: str) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(folder)
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_resume_at_another_world_size_and_strategy_with_release(ray_local, corpus, tmp_path):
    """2-worker FSDP shards (one saved asynchronously) resume on 1 DDP worker (DCP re-shards; fresh derived RNG):
    the update after the resume provably starts from the saved weights, moments and EMA; val_loss of every step
    reaches Ray/TensorBoard though --log-every is larger; the run ends with a release equal to its EMA.
    Its workers request the cluster's training-node tag, as on ray_cluster.yaml (the session Ray has 2)."""
    from pipelines.runs.release import read_release_config, read_release_weights

    runs = str(tmp_path / "runs")
    base = TrainConfig(size="tiny", data=corpus, storage=runs, run_name="reshard", global_batch_size=8,
                       micro_batch_size=2, lr=1e-3, ema_every=1, ema_decay=0.9, seed=4, cpus_per_worker=0.25,
                       log_every=100, val_every=1, worker_resources={"train_node": 1})
    # step 1's checkpoint is written in the background (dcp.async_save) and reported at step 2
    run_training(replace(base, num_workers=2, strategy="fsdp", max_steps=2, checkpoint_every=1,
                         async_checkpoint=True))
    first, second = list_checkpoints(runs, "reshard")
    assert first.endswith("00000001") and load_state(first)["step"] == 1
    halfway = load_state(second)
    assert halfway["world"] == 2 and halfway["strategy"] == "fsdp"
    result = run_training(replace(base, num_workers=1, strategy="ddp", max_steps=3, checkpoint_every=3),
                          resume=True)
    assert np.isfinite(result.metrics["val_loss"])
    final = _state(runs, "reshard")
    assert final["step"] == 3 and final["world"] == 1 and final["loss_history"].shape == (3, 2)
    torch.testing.assert_close(final["loss_history"][:2], halfway["loss_history"])
    # The one update after the resume started from the loaded shards: AdamW's step 3 recomputed from the
    # checkpoint's weights and moments (halfway) and the final moments gives the final weights, the final
    # second moment follows from the first, and the EMA continues the checkpoint's. A fresh model, optimiser
    # or EMA (shards not loaded) breaks each of these by ~lr (1e-3); float32 rounding is ~1e-7.
    beta1, beta2, eps, lr = 0.9, 0.999, 1e-8, 1e-3
    for key, weights in final["model"].items():
        before, after = halfway["optimizer"]["state"][key], final["optimizer"]["state"][key]
        assert int(before["step"]) == 2 and int(after["step"]) == 3
        grad = (after["exp_avg"] - beta1 * before["exp_avg"]) / (1 - beta1)
        torch.testing.assert_close(after["exp_avg_sq"], beta2 * before["exp_avg_sq"] + (1 - beta2) * grad ** 2,
                                   rtol=1e-3, atol=1e-12)
        denominator = (after["exp_avg_sq"] / (1 - beta2 ** 3)).sqrt() + eps
        update = lr / (1 - beta1 ** 3) * after["exp_avg"] / denominator
        assert float(update.abs().max()) > 1e-5 or key.endswith("bias")
        torch.testing.assert_close(weights, halfway["model"][key] - update, rtol=0, atol=1e-6)
        torch.testing.assert_close(final["ema"][key], 0.9 * halfway["ema"][key] + 0.1 * weights, rtol=0, atol=1e-6)
    scalars = _scalars(str(tmp_path / "runs" / "reshard" / "tensorboard"))
    assert scalars["val_loss"] == [1, 2, 3] and scalars["loss"] == [1, 2, 3]

    release = storage.join(runs, "reshard", "release")
    assert read_release_config(release)["step"] == 3
    for name in ("ema", "model"):
        weights = read_release_weights(release, name)
        assert set(weights) == set(final[name])
        for key, value in weights.items():
            torch.testing.assert_close(value, final[name][key], rtol=0, atol=0)
