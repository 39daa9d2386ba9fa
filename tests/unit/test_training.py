"""Training without Ray: the update math, batch arithmetic, and the data order and position at any world size."""
from __future__ import annotations

import itertools

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


def _fake_corpus(rows_per_file: list[int], block: int):
    """CorpusFiles + a reader of their train rows (ids "f<file>-<row>") in blocks of `block` rows: no Ray."""
    import pyarrow as pa

    from pipelines.training.data import CorpusFile

    files = [CorpusFile(f"f{i}", n, 0) for i, n in enumerate(rows_per_file)]
    ids = {f.uri: [f"{f.uri}-{r}" for r in range(f.train_rows)] for f in files}

    def read(uris, excluded):
        assert not excluded
        rows = [i for uri in uris for i in ids[uri]]
        for s in range(0, len(rows), block):
            yield pa.table({"clip_id": rows[s:s + block]})
    return files, read, [i for uri in sorted(ids) for i in ids[uri]]


def _stream(files, read, *, rank, world, epoch=0, skip=0):
    from pipelines.training.data import rank_micro_batches

    return rank_micro_batches(files, rank=rank, world=world, micro_batch_size=2, collate=lambda b: list(b["clip_id"]),
                              seed=5, shuffle_buffer=8, epoch=epoch, skip=skip, read=read)


def _global_order(files, read, world: int, micro_batches: int) -> tuple[list[str], list[int]]:
    """The rows all ranks of `world` take, in global micro-batch order, and the consumed count each reports."""
    streams = [_stream(files, read, rank=r, world=world) for r in range(world)]
    order, consumed = [], []
    for _ in range(micro_batches):
        for stream in streams:
            _, position, clips = next(stream)
            order += clips
            consumed.append(position)
    return order, consumed


def test_the_epoch_order_is_the_same_at_any_world_size_and_block_size():
    files, read, everything = _fake_corpus([5, 7, 3, 9, 0, 6], block=4)      # 30 train rows
    one, _ = _global_order(files, read, 1, 12)
    assert len(set(one)) == 24 and set(one) <= set(everything)
    assert one != sorted(one)                                                   # shuffled
    for world in (2, 3):
        order, consumed = _global_order(files, read, world, 12 // world)
        assert order == one[:24]
        assert consumed == [2 * world * (k // world + 1) for k in range(12)]    # rows all ranks took, per round
    other_blocks = _fake_corpus([5, 7, 3, 9, 0, 6], block=7)[1]
    assert _global_order(files, other_blocks, 1, 12)[0] == one
    epoch_1 = [c for _, _, clips in itertools.islice(_stream(files, read, rank=0, world=1, epoch=1), 12) for c in clips]
    assert epoch_1 != one and set(epoch_1) <= set(everything)


@pytest.mark.parametrize("before,after", [(a, b) for a in (1, 2, 3) for b in (1, 2, 3)])
def test_resume_at_another_world_size_sees_each_row_of_the_epoch_once(before, after):
    """World `before` trains 2 updates of 1 micro-batch per rank, checkpoints, world `after` resumes: the rows
    seen before plus after are the epoch's rows once each (less the tail of < after*2 rows no whole round fills)."""
    files, read, everything = _fake_corpus([5, 7, 3, 9, 0, 6, 6], block=4)   # 36 train rows
    streams = [_stream(files, read, rank=r, world=before) for r in range(before)]
    seen, positions = [], set()
    for _ in range(2):                              # 2 steps: every rank one micro-batch each
        for stream in streams:
            epoch, consumed, clips = next(stream)
            seen += clips
            positions.add((epoch, consumed))
    assert len(positions) == 2
    epoch, consumed = max(positions)                # what rank 0 writes to state.pt at the checkpoint
    assert (epoch, consumed) == (0, 2 * 2 * before)
    resumed = [_stream(files, read, rank=r, world=after, epoch=epoch, skip=consumed) for r in range(after)]
    while True:
        batch = [next(stream) for stream in resumed]
        if batch[0][0] != epoch:
            break
        seen += [c for _, _, clips in batch for c in clips]
    tail = (36 - consumed) % (2 * after)
    assert len(seen) == len(set(seen)) == 36 - tail
    one, _ = _global_order(files, read, 1, 18)
    assert seen == one[:36 - tail]                  # the uninterrupted order, resumed at the right row
    if tail == 0:
        assert sorted(seen) == sorted(everything)   # one epoch exactly


def test_listed_keys_that_leave_the_folder_are_refused():
    from pipelines.storage import safe_relative

    assert safe_relative("bucket/run/ckpt", "bucket/run/ckpt/dcp/.metadata") == "dcp/.metadata"
    assert safe_relative("bucket/run/ckpt/", "bucket/run/ckpt/state.pt") == "state.pt"
    for key in ("bucket/run/ckpt/../../x", "bucket/run/ckpt/dcp/../../../etc/x", "bucket/run/ckpt//abs",
                "bucket/run/ckpt/./state.pt", "bucket/run/other/state.pt", "bucket/run/ckpt", "bucket/run/ckpt/",
                "bucket/run/ckpt/a\\..\\..\\x"):
        with pytest.raises(ValueError, match="not a plain path"):
            safe_relative("bucket/run/ckpt", key)


def test_an_s3_checkpoint_with_a_traversal_key_is_refused_before_anything_is_written(monkeypatch, tmp_path):
    """local_folder downloads an s3:// checkpoint: a listed key with ../ fails the download, nothing is written."""
    import pyarrow.fs as pafs

    from pipelines import storage
    from pipelines.runs import checkpoints

    class Listing:
        def get_file_info(self, selector):
            return [pafs.FileInfo(f"bucket/ckpt/{k}", pafs.FileType.File) for k in ("state.pt", "../../evil.txt")]

    monkeypatch.setattr(storage, "filesystem", lambda uri: (Listing(), uri.removeprefix("s3://")))
    monkeypatch.setattr(storage, "read_bytes", lambda uri: pytest.fail(f"read {uri} before checking every key"))
    with pytest.raises(ValueError, match="evil"):
        with checkpoints.local_folder("s3://bucket/ckpt"):
            pass
