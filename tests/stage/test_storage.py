"""pipelines.storage against the local disk and a real S3 server (SeaweedFS on 127.0.0.1)."""
from __future__ import annotations

import logging
import threading
import time
import uuid

import numpy as np
import pyarrow.fs as pafs
import pytest

from pipelines import storage
from tests.s3server import SECRET_KEY, S3Server
from tests.unit.test_storage import small_table


def test_s3_roundtrip_bytes_parquet_list(s3_server):
    root = s3_server.uri(f"rt-{uuid.uuid4().hex[:8]}")
    storage.write_bytes_atomic(storage.join(root, "m", "manifest.json"), b'{"a": 1}')
    storage.write_parquet_atomic(small_table(7), storage.join(root, "corpus", "p1.parquet"))
    storage.write_parquet_atomic(small_table(3), storage.join(root, "corpus", "p0.parquet"))
    assert storage.exists(storage.join(root, "m", "manifest.json"))
    assert not storage.exists(storage.join(root, "m", "other.json"))
    assert storage.read_bytes(storage.join(root, "m", "manifest.json")) == b'{"a": 1}'
    assert storage.read_parquet(storage.join(root, "corpus", "p1.parquet")).equals(small_table(7))
    assert storage.list_files(storage.join(root, "corpus"), ".parquet") == [
        storage.join(root, "corpus", "p0.parquet"), storage.join(root, "corpus", "p1.parquet")]
    assert storage.list_files(root, ".parquet") == storage.list_files(storage.join(root, "corpus"))
    assert storage.list_files(s3_server.uri("nothing-here")) == []
    # Visible to a plain boto3 client too: it is a real object in the bucket.
    key = root.split("/", 3)[3] + "/m/manifest.json"
    assert s3_server.client().get_object(Bucket=s3_server.bucket, Key=key)["Body"].read() == b'{"a": 1}'


def test_train_storage_and_filesystem(s3_server, tmp_path):
    path, fs = storage.train_storage(s3_server.uri("runs"))
    assert path == f"{s3_server.bucket}/runs" and isinstance(fs, pafs.S3FileSystem)
    fs.create_dir(path + "/probe", recursive=True)
    assert fs.get_file_info(path + "/probe").type == pafs.FileType.Directory
    assert storage.train_storage(str(tmp_path / "runs")) == (str(tmp_path / "runs"), None)
    fs, path = storage.filesystem(s3_server.uri("data/"))
    assert path == f"{s3_server.bucket}/data" and isinstance(fs, pafs.S3FileSystem)
    assert isinstance(storage.filesystem(str(tmp_path))[0], pafs.LocalFileSystem)


def test_credentials_never_logged_or_raised(s3_server, caplog, capfd):
    """Errors (missing object, wrong bucket, bad credentials) and debug logs never carry the secret key."""
    caplog.set_level(logging.DEBUG)
    messages = []
    for uri in (s3_server.uri("missing", "x.parquet"), "s3://no-such-bucket-zz/x.parquet"):
        with pytest.raises(Exception) as error:
            storage.read_parquet(uri)
        messages.append(f"{error.value!r} {error.value}")
    fs = storage.s3_filesystem()
    messages.append(repr(fs))
    messages.append(str(fs.__reduce__()))  # what pickling would send to a Ray worker
    out, err = capfd.readouterr()
    text = "\n".join([*messages, caplog.text, out, err])
    assert "missing" in text  # the errors were captured: this test can see what was said
    assert SECRET_KEY not in text


def test_s3_write_rides_over_server_restart_and_is_never_partial(s3_server):
    """SIGKILL the server while a multipart upload is in flight, bring it back: the write succeeds with
    the full payload, and while it was incomplete no object was visible under the final key."""
    key_uri = s3_server.uri(f"big-{uuid.uuid4().hex[:8]}", "part.bin")
    payload = np.random.default_rng(0).integers(0, 255, 48 * 2**20, dtype=np.uint8).tobytes()
    client = s3_server.client()
    prefix = key_uri.split("/", 3)[3]
    result: dict = {}

    def write():
        try:
            storage.write_bytes_atomic(key_uri, payload)
            result["ok"] = True
        except Exception as e:  # noqa: BLE001 - reported below
            result["error"] = e

    writer = threading.Thread(target=write)
    writer.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not client.list_multipart_uploads(Bucket=s3_server.bucket,
                                                                            Prefix=prefix).get("Uploads"):
        time.sleep(0.02)
    assert "ok" not in result, "upload finished before the restart: make the payload larger"
    # The upload may complete between these lines on a quiet machine; what must never be seen is a PART of it.
    seen = storage.read_bytes(key_uri) if storage.exists(key_uri) else None
    assert seen is None or seen == payload, f"a partial object ({len(seen)} bytes) under the final key"
    s3_server.restart(graceful=False, down_s=1.0)
    writer.join(timeout=120)
    assert result.get("ok"), result
    assert storage.read_bytes(key_uri) == payload


def test_s3_write_fails_clearly_when_server_stays_down(tmp_path, monkeypatch):
    """A server that dies mid-upload and stays down: a clear error, and once it is back nothing under the
    final key (no half object)."""
    server = S3Server(data_dir=str(tmp_path / "weed")).start()
    try:
        server.bucket = "outage"
        server.create_bucket(server.bucket)
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")  # fail fast; the default 10 rides over short outages
        uri, client, result = server.uri("x", "part.bin"), server.client(), {}
        writer = threading.Thread(target=_capture, args=(result, storage.write_bytes_atomic, uri, b"\1" * 48 * 2**20))
        writer.start()
        while writer.is_alive() and not client.list_multipart_uploads(Bucket="outage").get("Uploads"):
            time.sleep(0.02)
        server.stop(graceful=False)
        writer.join(timeout=300)
        assert isinstance(result.get("error"), OSError), result
        assert SECRET_KEY not in str(result["error"])
        server.start()
        assert not storage.exists(uri)
        assert storage.list_files(server.uri("x")) == []
    finally:
        server.cleanup()


def _capture(result: dict, fn, *args) -> None:
    try:
        fn(*args)
        result["ok"] = True
    except Exception as e:  # noqa: BLE001 - the test inspects it
        result["error"] = e


def test_ray_data_parquet_through_s3(s3_server, ray_local):
    """Ray Data writes and reads Parquet on S3 through storage.filesystem; workers get the env explicitly."""
    ray = ray_local
    runtime_env = {"env_vars": storage.ray_worker_env()}
    fs, path = storage.filesystem(s3_server.uri(f"ray-{uuid.uuid4().hex[:8]}"))
    items = [{"clip_id": f"c{i:03d}", "value": float(i)} for i in range(20)]
    ds = ray.data.from_items(items).repartition(2)
    ds.write_parquet(path, filesystem=fs, ray_remote_args={"runtime_env": runtime_env})   # no named parameter
    written = storage.list_files("s3://" + path, ".parquet")
    assert len(written) >= 2
    back = ray.data.read_parquet(path, filesystem=fs, runtime_env=runtime_env).to_pandas()
    assert sorted(back["clip_id"]) == [it["clip_id"] for it in items]
    assert back["value"].sum() == sum(range(20))
