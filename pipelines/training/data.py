"""The training data: corpus files dealt to ranks per epoch, read in a reproducible order, collated to tensors.

Data order is deterministic and the same at any world size: each epoch the corpus files are permuted by
(seed, epoch) and read in that order (Ray Data, order preserved); the rows are shuffled inside consecutive windows
of `shuffle_buffer` rows, each window permuted by (seed, epoch, window). That is the epoch's global order. Ranks
take interleaved micro-batches of it: global micro-batch k goes to rank k % world. The position is (epoch, train
rows of the epoch consumed by all ranks together), which is what a checkpoint records, so a resume at any world
size continues at the same row, with no row repeated or skipped.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

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


def file_order(n_files: int, seed: int, epoch: int) -> list[int]:
    """This epoch's reading order of the corpus files: a permutation by (seed, epoch), whatever the world size."""
    return [int(i) for i in np.random.default_rng([seed, epoch]).permutation(n_files)]


def epoch_rounds(total: int, start: int, world: int, micro_batch_size: int) -> int:
    """Rounds (one micro-batch per rank) left in an epoch of `total` train rows from global row `start`: whole
    rounds only, so every rank runs the same count (DDP); the last < world * micro_batch_size rows of the global
    order are dropped for this epoch (another tail each epoch)."""
    return max(total - start, 0) // (world * micro_batch_size)


def deal(tables: Iterable[pa.Table], *, rank: int, world: int, micro_batch_size: int, window: int, seed: int,
         epoch: int, start: int, rounds: int) -> Iterator[tuple[int, pa.Table]]:
    """This rank's micro-batches of one epoch, from the epoch's rows in file order (`tables`, any block sizes).

    The global order permutes each window of `window` consecutive rows by (seed, epoch, window index); from
    global row `start` on, global micro-batch k (rows start + k*mb ...) belongs to rank k % world. Yields
    (rows of the epoch consumed by all ranks once every rank has taken this round, this rank's table), `rounds`
    times; only this rank's rows are copied (`take`), whole windows before `start` are not even permuted.
    """
    round_rows = world * micro_batch_size
    end = start + rounds * round_rows
    pending: list[pa.Table] = []          # rows read but not yet windowed
    pending_rows = window_start = 0
    mine: list[pa.Table] = []             # this rank's rows not yet yielded, in global order
    mine_rows = done = 0
    source, exhausted = iter(tables), False
    while done < rounds:
        if pending_rows < window and not exhausted:
            table = next(source, None)
            exhausted = table is None
            if table is not None:
                pending.append(table)
                pending_rows += table.num_rows
            continue
        if pending_rows == 0:
            raise RuntimeError(f"epoch {epoch}: the corpus ended after {window_start} train rows, {end} expected; "
                               f"the corpus changed after the scan?")
        rows = pa.concat_tables(pending)
        size = min(window, rows.num_rows)
        here, rest = rows.slice(0, size), rows.slice(size)
        pending, pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
        positions = window_start + np.arange(size)
        wanted = (positions >= start) & (positions < end) & (
            (np.maximum(positions - start, 0) // micro_batch_size) % world == rank)
        if wanted.any():
            permutation = np.random.default_rng([seed, epoch, window_start // window]).permutation(size)
            mine.append(here.take(pa.array(permutation[wanted])))
            mine_rows += int(wanted.sum())
        window_start += size
        while mine_rows >= micro_batch_size and done < rounds:
            batch = pa.concat_tables(mine)
            mine = [batch.slice(micro_batch_size)]
            mine_rows -= micro_batch_size
            done += 1
            yield start + done * round_rows, batch.slice(0, micro_batch_size)


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


def read_train_tables(uris: list[str], excluded: frozenset[str]) -> Iterator[pa.Table]:
    """The train rows of these files in this order (Ray Data blocks, order preserved)."""
    return read_split(uris, "train", excluded).iter_batches(batch_size=None, batch_format="pyarrow")


def rank_micro_batches(files: list[CorpusFile], *, rank: int, world: int, micro_batch_size: int,
                       collate, seed: int, shuffle_buffer: int, epoch: int, skip: int,
                       read: Callable[[list[str], frozenset[str]], Iterable[pa.Table]] = read_train_tables,
                       ) -> Iterator[tuple[int, int, dict]]:
    """Endless (epoch, train rows of the epoch consumed by all ranks, this rank's batch), from global row `skip`
    of `epoch` (see `deal`); `read` gives the rows of files in order (Ray Data; tests pass a plain reader).

    Every rank reads every train row of the epoch and collates only its own micro-batches: the price of a
    position that means the same at any world size. Rows before `skip` are read, not decoded.
    """
    rows = [f.train_rows for f in files]
    total = sum(rows)
    if total < world * micro_batch_size:
        raise ValueError(f"{total} train rows cannot give each of {world} ranks a micro-batch of {micro_batch_size}")
    while True:
        rounds = epoch_rounds(total, skip, world, micro_batch_size)
        if rounds == 0:         # resumed exactly at an epoch's end (or in its dropped tail): nothing of it to read
            epoch, skip = epoch + 1, 0
            continue
        uris = [files[f].uri for f in file_order(len(files), seed, epoch) if rows[f] > 0]
        for consumed, table in deal(read(uris, excluded_of(files)), rank=rank, world=world,
                                    micro_batch_size=micro_batch_size, window=shuffle_buffer, seed=seed,
                                    epoch=epoch, start=skip, rounds=rounds):
            yield epoch, consumed, collate({c: table[c].to_numpy(zero_copy_only=False) for c in table.column_names})
        epoch, skip = epoch + 1, 0


def stand_in_batch(null_t5: Tensor, null_clap: Tensor) -> dict[str, Tensor]:
    """A one-row batch (the null text, zero latent) for a rank whose validation slice is empty."""
    return {"latent_mean": torch.zeros(1, *LATENT_SHAPE, dtype=torch.float16),
            "latent_std": torch.zeros(1, *LATENT_SHAPE, dtype=torch.float16),
            "txt": null_t5[None], "txt_mask": torch.ones(1, null_t5.shape[0], dtype=torch.bool),
            "y": null_clap[None]}
