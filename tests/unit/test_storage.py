"""pipelines.storage against the local disk and a real S3 server (SeaweedFS on 127.0.0.1)."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pytest

from pipelines import storage


def small_table(n: int = 5) -> pa.Table:
    return pa.table({"clip_id": [f"c{i:03d}" for i in range(n)], "value": np.arange(n, dtype=np.float32)})


def test_s3_options_come_from_standard_env_only():
    options = storage.s3_options_from_env({"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "eu-west-1",
                                           "AWS_SECRET_ACCESS_KEY": "never-passed"})
    assert options == {"endpoint_override": "127.0.0.1:9000", "scheme": "http", "region": "eu-west-1"}
    # The S3-specific endpoint wins over the generic one (AWS SDK rule).
    options = storage.s3_options_from_env({"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "https://b:2"})
    assert options["endpoint_override"] == "b:2" and options["scheme"] == "https"
    assert storage.s3_options_from_env({}) == {}


def test_local_roundtrip_and_list(tmp_path):
    root = str(tmp_path / "out")
    storage.write_bytes_atomic(storage.join(root, "a", "x.bin"), b"abc")
    storage.write_parquet_atomic(small_table(), storage.join(root, "b", "t.parquet"))
    storage.write_bytes_atomic(storage.join(root, "b", "_SUCCESS"), b"")
    assert storage.read_bytes(storage.join(root, "a", "x.bin")) == b"abc"
    assert storage.read_parquet(storage.join(root, "b", "t.parquet")).equals(small_table())
    assert storage.list_files(root) == [os.path.join(root, "a", "x.bin"), os.path.join(root, "b", "t.parquet")]
    assert storage.list_files(root, ".parquet") == [os.path.join(root, "b", "t.parquet")]
    assert storage.list_files(str(tmp_path / "missing")) == []


def _crash(*_args):
    raise KeyboardInterrupt("simulated crash before rename")


def test_local_crashed_write_leaves_nothing_under_final_name_and_no_temp_file(tmp_path, monkeypatch):
    target = str(tmp_path / "d" / "f.parquet")
    storage.write_bytes_atomic(target, b"old complete file")
    monkeypatch.setattr(storage.os, "replace", _crash)
    with pytest.raises(KeyboardInterrupt):
        storage.write_bytes_atomic(target, b"x" * 100_000)
    with pytest.raises(KeyboardInterrupt):
        storage.write_bytes_atomic(str(tmp_path / "d" / "new.parquet"), b"x" * 100_000)
    monkeypatch.undo()
    assert storage.read_bytes(target) == b"old complete file"  # the old version, never a mix
    assert os.listdir(tmp_path / "d") == ["f.parquet"]         # no new file, no .tmp left behind


def test_local_failed_write_removes_its_temp_file(tmp_path, monkeypatch):
    """A write that fails part-way (disk full: here fsync raises) leaves neither the file nor its temp file."""
    def full(_fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(storage.os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        storage.write_bytes_atomic(str(tmp_path / "d" / "g.bin"), b"x" * 1000)
    monkeypatch.undo()
    assert os.listdir(tmp_path / "d") == []


def test_local_write_is_fsynced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append(("fsync", os.path.realpath(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        calls.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(storage.os, "fsync", fsync)
    monkeypatch.setattr(storage.os, "replace", replace)
    storage.write_bytes_atomic(str(tmp_path / "d" / "h.bin"), b"data")
    monkeypatch.undo()
    (kind, first), second, third = calls
    assert kind == "fsync" and os.path.basename(first).startswith(".h.bin.") and first.endswith(".tmp")
    assert second == ("replace", "h.bin") and third == ("fsync", str(tmp_path / "d"))
    assert storage.read_bytes(str(tmp_path / "d" / "h.bin")) == b"data"


def test_local_copy_of_a_local_path_is_the_path(tmp_path):
    path = str(tmp_path / "a.wav")
    with storage.local_copy(path) as local:
        assert local == path
