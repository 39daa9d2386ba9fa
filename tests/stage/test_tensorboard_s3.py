"""TensorBoard on s3:// run storage against the loopback S3 server: every byte uploaded once, all steps readable."""
from __future__ import annotations

import os

from pipelines import storage


def _read_scalars(folder: str) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(folder)
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_s3_tensorboard_uploads_only_new_bytes(s3_server, monkeypatch, tmp_path):
    import pipelines.training.metrics as metrics

    uploads: list[tuple[str, int]] = []
    real_write = storage.write_bytes_atomic

    def counting_write(uri: str, data: bytes) -> None:
        uploads.append((uri, len(data)))
        real_write(uri, data)

    monkeypatch.setattr(metrics.storage, "write_bytes_atomic", counting_write)
    run_dir = s3_server.uri(f"tb-{os.getpid()}")
    clock = iter(range(10_000)).__next__                  # one "second" per call: upload interval by count
    log = metrics.TensorBoardLog(run_dir, upload_every_s=5, clock=clock)
    steps = 40
    for step in range(1, steps + 1):
        log.write({"loss": 1.0 / step, "lr": 1e-4, "step": step}, step, flush=step % 2 == 0)
        if step == 20:
            log.write({"val_loss": 0.5}, step)
    log.close()

    names = storage.list_files(storage.join(run_dir, "tensorboard"))
    stored = {n: len(storage.read_bytes(n)) for n in names}
    assert len(uploads) == len(stored) > 1                # each part uploaded exactly once
    assert sum(size for _, size in uploads) == sum(stored.values()) == log.uploaded_bytes
    local = tmp_path / "tb"
    local.mkdir()
    for name, size in stored.items():
        (local / name.rsplit("/", 1)[-1]).write_bytes(storage.read_bytes(name))
    scalars = _read_scalars(str(local))                    # TensorBoard reads the parts as one run
    assert scalars["loss"] == list(range(1, steps + 1)) and scalars["val_loss"] == [20]
