"""Local paths and s3:// URIs behind one pyarrow filesystem API, with atomic writes.

S3 endpoint and credentials come only from the standard AWS environment/config (AWS_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, ..., or an instance profile); they are never logged.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import uuid
from collections.abc import Iterator, Mapping

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path within it) for a local path or an s3:// URI."""
    if is_s3(uri):
        return s3_filesystem(), uri[len("s3://"):].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


S3_MAX_ATTEMPTS = 10  # default: rides over a few seconds of S3 downtime (boto3's default 3 does not)


def s3_options_from_env(environ: Mapping[str, str] | None = None) -> dict:
    """S3FileSystem keyword arguments from the standard AWS variables only (no keys: the AWS SDK's own
    chain finds them in the environment, ~/.aws or the instance profile, so they never pass through us)."""
    env = os.environ if environ is None else environ
    options: dict = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        scheme, _, rest = endpoint.partition("://")
        options.update(endpoint_override=(rest or scheme).rstrip("/"), scheme=scheme if rest else "https")
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    return options


def s3_filesystem() -> pafs.S3FileSystem:
    """A fresh S3 filesystem from this process's environment, with retries.

    Call it in each process (driver, Ray worker): a filesystem pickled to a Ray worker comes back with
    pyarrow's default retry strategy, so workers derive their own from the same env instead.
    """
    attempts = int(os.environ.get("AWS_MAX_ATTEMPTS") or S3_MAX_ATTEMPTS)  # the standard AWS variable
    return pafs.S3FileSystem(retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=attempts),
                             connect_timeout=5, request_timeout=60, **s3_options_from_env())


def train_storage(uri: str) -> tuple[str, pafs.FileSystem | None]:
    """(storage_path, storage_filesystem) for ray.train.RunConfig.

    Ray Train wants storage_path without the scheme once storage_filesystem is given; locally an
    absolute path and no filesystem.
    """
    if is_s3(uri):
        fs, path = filesystem(uri)
        return path, fs
    return os.path.abspath(uri), None


def ray_worker_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The S3/AWS variables to hand to Ray workers (runtime_env={"env_vars": ...}) on a local cluster.

    On a real cluster nodes get credentials from their instance profile and this is usually empty.
    """
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if k in AWS_ENV_KEYS}


AWS_ENV_KEYS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_MAX_ATTEMPTS",
                "AWS_EC2_METADATA_DISABLED")


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])


def safe_relative(prefix: str, key: str) -> str:
    """`key` (from a listing of `prefix`) as a path relative to it, refused (ValueError) unless it stays below:
    an S3 key may hold `..`, `.`, empty or absolute parts, which joined to a local folder would write outside it."""
    head = prefix.rstrip("/") + "/"
    relative = key[len(head):] if key.startswith(head) else None
    parts = relative.split("/") if relative else []
    if not parts or any(p in ("", ".", "..") or "\\" in p for p in parts):
        raise ValueError(f"listed key {key!r} is not a plain path below {prefix!r}; refusing to write it locally")
    return relative


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def size(uri: str) -> int | None:
    """Size in bytes of the file at uri; None when there is no file (missing, or a folder)."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    return info.size if info.type == pafs.FileType.File else None


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Every file below uri (recursively) whose name ends with suffix, as URIs of the same kind, sorted."""
    return sorted(list_sizes(uri, suffix))


def list_sizes(uri: str, suffix: str = "") -> dict[str, int]:
    """{URI: size in bytes} of every file below uri (recursively) whose name ends with suffix: one listing
    (on S3, one LIST request per 1,000 keys), no file opened."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return {}
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    prefix = "s3://" if is_s3(uri) else ""
    return {prefix + i.path: i.size for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix)
            and not i.base_name.startswith((".", "_"))}


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write so that a reader never sees a partial file: temp name + fsync + rename locally; one PUT on S3
    (an S3 object becomes visible only when its upload completes)."""
    fs, path = filesystem(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if is_s3(uri):
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    _write_local_atomic(path, data)


def _write_local_atomic(path: str, data: bytes) -> None:
    """Temp file beside path, fsync'd before the rename (else a power loss can leave the new name pointing at
    empty or partial data), the folder fsync'd after (else the rename itself can be lost); the temp file is
    removed when anything fails. A process killed mid-write still leaves it: hidden (`.name.*.tmp`), never listed."""
    parent = os.path.dirname(path)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(parent)


def _fsync_dir(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


COPY_CHUNK_BYTES = 8 << 20     # bytes held at once while an object is copied to local disk


@contextlib.contextmanager
def local_copy(uri: str, chunk_bytes: int = COPY_CHUNK_BYTES) -> Iterator[str]:
    """A local path holding uri's bytes, for readers that want a file: a local path as it is; an s3 object
    streamed in chunks to a temp file (named with the object's extension, which format detection may use),
    removed on exit, on error too. Never more than chunk_bytes of it in memory."""
    if not is_s3(uri):
        yield uri
        return
    fs, path = filesystem(uri)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix="fluxmusic-input-", suffix=suffix if re.fullmatch(r"\.\w{1,8}", suffix) else "")
    try:
        with os.fdopen(fd, "wb") as out, fs.open_input_stream(path) as f:
            while chunk := f.read(chunk_bytes):
                out.write(chunk)
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def write_parquet_atomic(table: pa.Table, uri: str, row_group_rows: int | None = None) -> int:
    """Write `table` as zstd Parquet atomically (row groups of `row_group_rows`); returns the file's size."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd", row_group_size=row_group_rows)
    data = buffer.getvalue()
    write_bytes_atomic(uri, data)
    return len(data)


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = filesystem(uri)
    return pq.read_table(path, filesystem=fs, columns=columns)


def delete(uri: str) -> None:
    fs, path = filesystem(uri)
    fs.delete_file(path)
