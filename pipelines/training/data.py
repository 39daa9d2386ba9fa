"""The training data: corpus files dealt to ranks per epoch, read in a reproducible order, collated to tensors.

Data order is deterministic: each epoch the corpus files are permuted by (seed, epoch) and dealt to the workers
balanced by train rows; each worker reads only its files (Ray Data, order preserved) through a local shuffle
seeded by (seed, epoch, rank), and every worker runs the same number of micro-batches. The position in this
stream is (epoch, batches consumed), which is what a checkpoint records.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import torch
from torch import Tensor

from pipelines import storage
from schemas.constants import LATENT_SHAPE
from schemas.manifest import (CORPUS_DIR, EXCLUDE_FILE, MANIFEST, NULL_TEXT_DIR, NULL_TEXT_FILE, OVERLAP_DIR,
                              check_manifest)

TRAIN_COLUMNS = ["clip_id", "track_id", "split", "latent_mean", "latent_std", "t5", "t5_length", "clap"]


def read_manifest(data: str) -> dict:
    """The corpus's manifest.json, checked for what training needs."""
    return check_manifest(json.loads(storage.read_bytes(storage.join(data, MANIFEST))))


def decode_tensor(raw: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Raw little-endian fp16 bytes (schemas.TENSOR_LAYOUT) -> a writable float16 array."""
    return np.frombuffer(raw, dtype="<f2").reshape(shape).astype(np.float16)


def read_null_text(data: str, t5_dim: int, clap_dim: int) -> tuple[Tensor, Tensor]:
    """The stored empty-caption embeddings: T5 [L0, t5_dim] and CLAP [clap_dim], float16."""
    row = storage.read_parquet(storage.join(data, NULL_TEXT_DIR, NULL_TEXT_FILE)).to_pylist()[0]
    t5 = decode_tensor(row["t5"], (row["t5_length"], t5_dim))
    return torch.from_numpy(t5), torch.from_numpy(decode_tensor(row["clap"], (clap_dim,)))


def pad_states(states: list[Tensor], dim: int) -> tuple[Tensor, Tensor]:
    """Zero-pad T5 states [L_i, D] to [B, Lmax, D] + mask (True = real); an empty list gives [0, 1, D]."""
    from model import pad_text

    if not states:
        return torch.zeros(0, 1, dim, dtype=torch.float16), torch.zeros(0, 1, dtype=torch.bool)
    return pad_text(states)


class CorpusCollate:
    """Ray Data numpy batch of ``world`` workers' rows -> this rank's tensors (rows rank::world)."""

    def __init__(self, rank: int, world: int, t5_dim: int, clap_dim: int):
        self.rank, self.world, self.t5_dim, self.clap_dim = rank, world, t5_dim, clap_dim

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Tensor]:
        rows = slice(self.rank, None, self.world)
        lengths = [int(n) for n in batch["t5_length"][rows]]
        txt, mask = pad_states([torch.from_numpy(decode_tensor(b, (n, self.t5_dim)))
                                for b, n in zip(batch["t5"][rows], lengths)], self.t5_dim)

        def stack(column: str, shape: tuple[int, ...]) -> Tensor:
            arrays = [decode_tensor(b, shape) for b in batch[column][rows]]
            return torch.from_numpy(np.stack(arrays) if arrays else np.zeros((0, *shape), np.float16))

        return {"latent_mean": stack("latent_mean", LATENT_SHAPE), "latent_std": stack("latent_std", LATENT_SHAPE),
                "txt": txt, "txt_mask": mask, "y": stack("clap", (self.clap_dim,))}


def check_corpus_files(fs, uris: list[str], paths: list[str]) -> None:
    """Read every file's Parquet footer now: a truncated or foreign file fails here, naming it, instead of
    deep inside a Ray Train worker after the run has started."""
    import pyarrow.parquet as pq

    for uri, path in zip(uris, paths):
        try:
            with fs.open_input_file(path) as f:
                names = set(pq.ParquetFile(f).schema_arrow.names)
        except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a bad file
            raise ValueError(f"corrupt corpus file {uri}: {error}") from error
        missing = [c for c in TRAIN_COLUMNS if c not in names]
        if missing:
            raise ValueError(f"corpus file {uri} lacks columns {missing}")


@dataclass(frozen=True)
class CorpusFile:
    """One corpus Parquet file and its rows per split (counted once, from the `split` column only), less the
    rows of `excluded` tracks (an overlap check's exclusion list), which training never reads."""
    uri: str
    train_rows: int
    valid_rows: int
    excluded: tuple[str, ...] = ()


def read_exclusions(data: str) -> frozenset[str]:
    """The track ids `jobs/check_overlap.py --exclude` asked training to leave out (empty without a list)."""
    uri = storage.join(data, OVERLAP_DIR, EXCLUDE_FILE)
    return frozenset(storage.read_bytes(uri).decode().split()) if storage.exists(uri) else frozenset()


def _scan_file(uri: str, excluded: frozenset[str] = frozenset()) -> CorpusFile:
    import pyarrow.compute as pc

    fs, path = storage.filesystem(uri)
    check_corpus_files(fs, [uri], [path])
    try:
        table = storage.read_parquet(uri, columns=["split", "track_id"] if excluded else ["split"])
    except Exception as error:  # noqa: BLE001 - a footer can be fine while the column chunk is not
        raise ValueError(f"corrupt corpus file {uri}: {error}") from error
    left_out: tuple[str, ...] = ()
    if excluded:
        dropped = pc.is_in(table["track_id"], value_set=pa.array(sorted(excluded)))
        left_out = tuple(sorted(set(table.filter(dropped)["track_id"].to_pylist())))
        table = table.filter(pc.invert(dropped))
    counts = {name: int(pc.sum(pc.equal(table["split"], name)).as_py() or 0) for name in ("train", "valid")}
    return CorpusFile(uri, counts["train"], counts["valid"], left_out)


def indexed_files(data: str, sizes: dict[str, int], excluded: frozenset[str] = frozenset()) -> dict[str, CorpusFile]:
    """{uri: CorpusFile} of the corpus files the shard index vouches for (entry present, same size now), from
    one parallel read of the index; never writes (training only reads a corpus). A shard holding an excluded
    track is left to the scan, which counts its rows without that track."""
    from pipelines.corpus.index import OutputIndex

    by_name = {f"{CORPUS_DIR}/{uri.rsplit('/', 1)[-1]}": uri for uri in sizes}
    columns = ["shard", "table", "bytes", "train_rows", "valid_rows"] + (["tracks"] if excluded else [])
    entries = OutputIndex.load(data, heal=False, columns=columns).table(CORPUS_DIR)
    tracks = entries["tracks"].to_pylist() if excluded else [()] * entries.num_rows
    out = {}
    for shard, train, valid, held in zip(entries["shard"].to_pylist(), entries["train_rows"].to_pylist(),
                                         entries["valid_rows"].to_pylist(), tracks):
        if shard in by_name and not any(t["track_id"] in excluded for t in held):
            out[by_name[shard]] = CorpusFile(by_name[shard], train, valid)
    return out


def scan_corpus(data: str, threads: int = 16, excluded: frozenset[str] = frozenset()) -> list[CorpusFile]:
    """Every corpus file (sorted) with its train/valid row counts; a bad file fails here, named.

    Counts come from the shard index for the files it vouches for (entry present, size unchanged); only the
    others (a corpus written without an index, a file changed since, a shard holding an `excluded` track) have
    their footer and `split` read."""
    from concurrent.futures import ThreadPoolExecutor

    sizes = storage.list_sizes(storage.join(data, CORPUS_DIR), ".parquet")
    if not sizes:
        raise FileNotFoundError(f"no corpus parquet files under {storage.join(data, CORPUS_DIR)}")
    known = indexed_files(data, sizes, excluded)
    rest = sorted(u for u in sizes if u not in known)
    if rest:
        with ThreadPoolExecutor(min(threads, len(rest))) as pool:     # footers + one small column: I/O bound
            known.update((f.uri, f) for f in pool.map(lambda uri: _scan_file(uri, excluded), rest))
    return [known[u] for u in sorted(sizes)]


def excluded_of(files: list[CorpusFile]) -> frozenset[str]:
    return frozenset(t for f in files for t in f.excluded)


def files_of(files) -> list[CorpusFile]:
    """The workers' file list from what run_training passes: an ObjectRef of it (put once, not copied into
    every worker's config), or the list itself."""
    import ray

    if isinstance(files, ray.ObjectRef):
        files = ray.get(files)
    return [f if isinstance(f, CorpusFile) else CorpusFile(**{**f, "excluded": tuple(f.get("excluded", ()))})
            for f in files]


def assign_files(train_rows: list[int], world: int, seed: int, epoch: int) -> list[list[int]]:
    """This epoch's file indices per rank, each rank's in reading order.

    Files are permuted by (seed, epoch); then, largest first (ties in permutation order), each goes to the
    rank with the fewest train rows so far, so ranks are balanced by rows and disjoint. Files without train
    rows are never read.
    """
    import heapq

    order = [int(i) for i in np.random.default_rng([seed, epoch]).permutation(len(train_rows))]
    position = {f: p for p, f in enumerate(order)}
    loads = [(0, rank) for rank in range(world)]
    ranks: list[list[int]] = [[] for _ in range(world)]
    for f in sorted(order, key=lambda f: -train_rows[f]):       # stable: permutation order among equals
        if train_rows[f] <= 0:
            continue
        load, rank = heapq.heappop(loads)
        ranks[rank].append(f)
        heapq.heappush(loads, (load + train_rows[f], rank))
    return [sorted(files, key=position.__getitem__) for files in ranks]


def batches_per_epoch(train_rows: list[int], assignment: list[list[int]], micro_batch_size: int) -> int:
    """Micro-batches every rank runs this epoch: the minimum over ranks (DDP needs equal counts); the
    rest of each rank's rows is dropped for this epoch (a different remainder each epoch)."""
    return min(sum(train_rows[f] for f in files) // micro_batch_size for files in assignment)


def read_split(uris: list[str], split: str, excluded: frozenset[str] = frozenset()):
    """A Ray dataset of the training columns of `split` rows in these files, in the given file order, without
    the rows of `excluded` tracks."""
    import pyarrow.compute as pc
    import ray.data

    fs, _ = storage.filesystem(uris[0])
    dataset = ray.data.read_parquet([storage.filesystem(u)[1] for u in uris], filesystem=fs,
                                    shuffle=None).select_columns(TRAIN_COLUMNS)
    dataset.context.execution_options.preserve_order = True        # this dataset only (the context is a copy)
    left_out = pa.array(sorted(excluded), pa.string())

    def keep(table):
        rows = pc.equal(table["split"], split)
        return table.filter(pc.and_(rows, pc.invert(pc.is_in(table["track_id"], value_set=left_out))) if excluded
                            else rows)
    return dataset.map_batches(keep, batch_format="pyarrow", batch_size=None)


def validation_dataset(files: list[CorpusFile], max_rows: int):
    """The fixed validation subset: the first `max_rows` valid rows in sorted file order, materialised."""
    chosen, rows = [], 0
    for f in files:
        if f.valid_rows and rows < max_rows:
            chosen.append(f.uri)
            rows += f.valid_rows
    if not chosen:
        raise ValueError("validation is on but the corpus has no valid rows")
    return read_split(chosen, "valid", excluded_of(files)).limit(max_rows).materialize()


def shuffle_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.default_rng([seed, epoch, rank]).integers(2**31))


def rank_micro_batches(files: list[CorpusFile], *, rank: int, world: int, micro_batch_size: int,
                       collate: CorpusCollate, seed: int, shuffle_buffer: int, epoch: int,
                       skip: int) -> Iterator[tuple[int, int, dict]]:
    """Endless (epoch, micro-batches consumed in epoch, this rank's batch), skipping `skip` batches first.

    Each epoch this rank reads only its files (`assign_files`) with Ray Data, in permutation order,
    through a local shuffle buffer seeded by (seed, epoch, rank), and stops after `batches_per_epoch`
    batches, like every other rank. Given (epoch, skip) the stream is reproducible; skipped batches are
    read but not decoded.
    """
    rows = [f.train_rows for f in files]
    while True:
        plan = assign_files(rows, world, seed, epoch)
        count = batches_per_epoch(rows, plan, micro_batch_size)
        if count == 0:
            raise ValueError(f"epoch {epoch}: some of the {world} ranks get fewer than {micro_batch_size} train "
                             f"rows from {sum(r > 0 for r in rows)} files with train rows; use more, smaller "
                             f"files or fewer workers")
        if skip >= count:       # resumed exactly at an epoch's end: nothing of it to read
            epoch, skip = epoch + 1, 0
            continue
        batches = read_split([files[f].uri for f in plan[rank]], "train", excluded_of(files)).iter_batches(
            batch_size=micro_batch_size, batch_format="pyarrow", drop_last=True,
            local_shuffle_buffer_size=shuffle_buffer, local_shuffle_seed=shuffle_seed(seed, epoch, rank))
        index = 0
        for index, table in enumerate(batches, start=1):
            if index > skip:
                yield epoch, index, collate({c: table[c].to_numpy(zero_copy_only=False) for c in table.column_names})
            if index == count:
                break
        if index < count:
            raise RuntimeError(f"epoch {epoch}: rank {rank} read {index} of {count} batches; the corpus changed "
                               f"after the scan?")
        epoch, skip = epoch + 1, 0


def stand_in_batch(null_t5: Tensor, null_clap: Tensor) -> dict[str, Tensor]:
    """A one-row batch (the null text, zero latent) for a rank whose validation slice is empty."""
    return {"latent_mean": torch.zeros(1, *LATENT_SHAPE, dtype=torch.float16),
            "latent_std": torch.zeros(1, *LATENT_SHAPE, dtype=torch.float16),
            "txt": null_t5[None], "txt_mask": torch.ones(1, null_t5.shape[0], dtype=torch.bool),
            "y": null_clap[None]}
