"""Ray Train training on a tiny corpus: 2-worker DDP and FSDP, checkpoints (keep K, weights_only), exact resume."""
from __future__ import annotations

import pytest
import torch

from pipelines.training.config import accumulation_steps
from pipelines.training.ema import ema_update
from pipelines.training.step import apply_text_dropout, t_bucket_sums


def test_text_dropout_replaces_each_encoder_independently():
    txt, mask = torch.randn(3, 5, 4), torch.ones(3, 5, dtype=torch.bool)
    y, null_t5, null_clap = torch.randn(3, 2), torch.randn(7, 4), torch.randn(2)
    out_txt, out_mask, out_y = apply_text_dropout(txt, mask, y, null_t5, null_clap,
                                                  torch.tensor([True, False, False]), torch.tensor([False, True, False]))
    assert out_txt.shape == (3, 7, 4)
    assert torch.equal(out_txt[0], null_t5) and out_mask[0].all()
    assert torch.equal(out_txt[1, :5], txt[1]) and not out_mask[1, 5:].any() and not out_txt[1, 5:].any()
    assert torch.equal(out_y[1], null_clap) and torch.equal(out_y[0], y[0]) and torch.equal(out_y[2], y[2])


def test_batch_arithmetic_ema_and_buckets():
    assert accumulation_steps(128, 16, 4) == 2
    with pytest.raises(ValueError):
        accumulation_steps(100, 16, 4)
    ema, params = [torch.zeros(3)], [torch.ones(3)]
    ema_update(ema, params, 0.9)
    assert torch.allclose(ema[0], torch.full((3,), 0.1))
    sums, counts = t_bucket_sums(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.1, 0.3, 0.99]))
    assert sums.tolist() == [1.0, 2.0, 0.0, 3.0] and counts.tolist() == [1.0, 1.0, 0.0, 1.0]


def test_default_micro_batch_divides_the_global_batch_over_the_workers():
    from pipelines.training.config import default_micro_batch_size

    assert default_micro_batch_size(128, 1, 16) == 16
    assert default_micro_batch_size(128, 8, 16) == 16
    assert default_micro_batch_size(8, 2, 16) == 4
    micro = default_micro_batch_size(126, 3, 16)          # 42 per worker: 14 fits, 16 does not
    assert micro == 14 and accumulation_steps(126, micro, 3) == 3
    with pytest.raises(ValueError, match="cannot be split evenly"):
        default_micro_batch_size(128, 3, 16)


def test_val_and_preview_steps_are_always_reported():
    from pipelines.training.config import TrainConfig
    from pipelines.training.loop import report_due

    cfg = TrainConfig(log_every=10, checkpoint_every=100)
    assert not report_due(3, cfg, last=False, computed_extra=False)
    assert report_due(3, cfg, last=False, computed_extra=True)           # val_loss / eval_* / preview at step 3
    assert report_due(20, cfg, last=False, computed_extra=False) and report_due(7, cfg, last=True, computed_extra=False)


def test_derived_seeds_differ_per_rank_and_step():
    from pipelines.training.checkpoint import derived_seed

    seeds = {derived_seed(0, rank, step) for rank in range(4) for step in (10, 11)}
    assert len(seeds) == 8 and derived_seed(0, 1, 10) == derived_seed(0, 1, 10)


def test_workers_request_their_node_type_and_bad_specs_are_refused():
    from pipelines.training.config import TrainConfig, parse_worker_resources, worker_resources

    assert parse_worker_resources(["train_node:1", "fast_disk:0.5"]) == {"train_node": 1.0, "fast_disk": 0.5}
    config = TrainConfig(use_gpu=True, cpus_per_worker=8, worker_resources={"train_node": 1.0})
    assert worker_resources(config) == {"CPU": 8, "GPU": 1, "train_node": 1.0}
    assert worker_resources(TrainConfig()) == {"CPU": 0.5}
    for bad in (["train_node"], ["train_node:0"], [":1"], ["GPU:1"], ["train_node:x"]):
        with pytest.raises(ValueError, match="--worker-resource"):
            parse_worker_resources(bad)
    from jobs.train import config_from_args, parse_args

    args = parse_args(["--data", "d", "--storage", "s", "--run-name", "r", "--worker-resource", "train_node:1"])
    assert config_from_args(args).worker_resources == {"train_node": 1.0}
