"""FluxMusic training on Ray Train: the per-worker loop, checkpoints with exact resume, EMA, metrics.

See docs/training.md. Data order is deterministic: each epoch the corpus files are permuted by (seed, epoch) and
dealt to the workers balanced by train rows; each worker reads only its files (Ray Data, order preserved)
through a local shuffle seeded by (seed, epoch, rank), and every worker runs the same number of micro-batches.
A checkpoint records (epoch, batches consumed), so a resumed run skips exactly what was already trained on.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Iterator

import numpy as np
import torch
from torch import Tensor, nn

from pipelines import storage
from schemas.constants import CFG_DROPOUT, LATENT_SHAPE

CHECKPOINT_PREFIX = "checkpoint_step_"
STATE_FILE = "state.pt"
TRAIN_COLUMNS = ["clip_id", "split", "latent_mean", "latent_std", "t5", "t5_length", "clap"]
FSDP_SIZES = ("large", "giant", "giant_full")
T_BUCKETS = 4
DEFAULT_SHUFFLE_ROWS = 2048      # per worker: ~1.2 GB of paper-kit T5 + latents; spans a few files
DEFAULT_PROMPTS = ["an upbeat electronic dance track with a driving beat",
                   "a calm solo piano piece, slow and gentle"]
# Dense bf16 peak FLOP/s per GPU, for MFU (name substring -> FLOP/s).
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12}


@dataclass
class TrainConfig:
    size: str = "small"
    data: str = ""                      # prepare_corpus output (manifest.json, corpus/, null_text/)
    storage: str = ""                   # local folder or s3:// prefix; the run lives at storage/run_name
    run_name: str = "fluxmusic"
    num_workers: int = 1
    use_gpu: bool = False
    global_batch_size: int = 128        # samples per optimiser update = micro * accumulation * workers
    micro_batch_size: int = 16          # samples per worker per forward/backward
    max_steps: int = 200_000            # optimiser updates
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0               # linear LR warm-up (the paper and code use none)
    grad_clip: float = 1.0              # 0 = off (the official code never clips)
    ema_every: int = 100                # paper: every 100 updates with decay 0.99; code: every update, 0.9999
    ema_decay: float = 0.99
    cfg_dropout: float = CFG_DROPOUT    # per encoder, independently
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 1
    val_every: int = 0                  # 0 = off
    val_max_rows: int = 256
    sample_every: int = 0
    sample_prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    sample_steps: int = 50
    sample_cfg: float = 3.5
    eval_every: int = 0                 # FAD/KL/IS/CLAP of EMA samples every N steps (0 = off)
    eval_clips: int = 8                 # the first N valid-split captions, against their clips' audio
    eval_reference: str = ""            # or a saved reference-statistics file (pipelines.evaluation.evaluator.Evaluator)
    seed: int = 0
    strategy: str = ""                  # ddp | fsdp; "" = fsdp for large/giant, ddp otherwise
    shuffle_buffer: int = 0             # rows in each worker's seeded local shuffle; 0 = DEFAULT_SHUFFLE_ROWS
    kit: str = ""                       # "" = the corpus manifest's kit
    max_failures: int = 0
    cpus_per_worker: float = 0.5        # fractional on CPU: whole-CPU workers starve Ray Data on small hosts

    def resolved_strategy(self) -> str:
        strategy = self.strategy or ("fsdp" if self.size in FSDP_SIZES else "ddp")
        if strategy not in ("ddp", "fsdp"):
            raise ValueError(f"strategy must be ddp or fsdp, got {strategy!r}")
        return strategy


def accumulation_steps(global_batch_size: int, micro_batch_size: int, num_workers: int) -> int:
    """Micro-steps per update so that global = micro * accumulation * workers exactly."""
    per_round = micro_batch_size * num_workers
    if global_batch_size % per_round:
        raise ValueError(f"global batch {global_batch_size} is not a multiple of micro batch {micro_batch_size} "
                         f"x {num_workers} workers")
    return global_batch_size // per_round


# ---------------------------------------------------------------- corpus reading

def read_manifest(data: str) -> dict:
    return json.loads(storage.read_bytes(storage.join(data, "manifest.json")))


def decode_tensor(raw: bytes, shape: tuple[int, ...]) -> np.ndarray:
    """Raw little-endian fp16 bytes (schemas.TENSOR_LAYOUT) -> a writable float16 array."""
    return np.frombuffer(raw, dtype="<f2").reshape(shape).astype(np.float16)


def read_null_text(data: str, t5_dim: int, clap_dim: int) -> tuple[Tensor, Tensor]:
    """The stored empty-caption embeddings: T5 [L0, t5_dim] and CLAP [clap_dim], float16."""
    row = storage.read_parquet(storage.join(data, "null_text", "null_text.parquet")).to_pylist()[0]
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
    """One corpus Parquet file and its rows per split (counted once, from the `split` column only)."""
    uri: str
    train_rows: int
    valid_rows: int


def _scan_file(uri: str) -> CorpusFile:
    import pyarrow.compute as pc

    fs, path = storage.filesystem(uri)
    check_corpus_files(fs, [uri], [path])
    try:
        split = storage.read_parquet(uri, columns=["split"])["split"]
    except Exception as error:  # noqa: BLE001 - a footer can be fine while the column chunk is not
        raise ValueError(f"corrupt corpus file {uri}: {error}") from error
    counts = {name: int(pc.sum(pc.equal(split, name)).as_py() or 0) for name in ("train", "valid")}
    return CorpusFile(uri, counts["train"], counts["valid"])


def scan_corpus(data: str, threads: int = 16) -> list[CorpusFile]:
    """Every corpus file (sorted) with its train/valid row counts; a bad file fails here, named."""
    from concurrent.futures import ThreadPoolExecutor

    files = storage.list_files(storage.join(data, "corpus"), ".parquet")
    if not files:
        raise FileNotFoundError(f"no corpus parquet files under {storage.join(data, 'corpus')}")
    with ThreadPoolExecutor(min(threads, len(files))) as pool:     # footers + one small column: I/O bound
        return list(pool.map(_scan_file, files))


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


def read_split(uris: list[str], split: str):
    """A Ray dataset of the training columns of `split` rows in these files, in the given file order."""
    import pyarrow.compute as pc
    import ray.data

    fs, _ = storage.filesystem(uris[0])
    dataset = ray.data.read_parquet([storage.filesystem(u)[1] for u in uris], filesystem=fs,
                                    shuffle=None).select_columns(TRAIN_COLUMNS)
    dataset.context.execution_options.preserve_order = True        # this dataset only (the context is a copy)
    return dataset.map_batches(lambda t: t.filter(pc.equal(t["split"], split)), batch_format="pyarrow",
                               batch_size=None)


def validation_dataset(files: list[CorpusFile], max_rows: int):
    """The fixed validation subset: the first `max_rows` valid rows in sorted file order, materialised."""
    chosen, rows = [], 0
    for f in files:
        if f.valid_rows and rows < max_rows:
            chosen.append(f.uri)
            rows += f.valid_rows
    if not chosen:
        raise ValueError("validation is on but the corpus has no valid rows")
    return read_split(chosen, "valid").limit(max_rows).materialize()


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
        batches = read_split([files[f].uri for f in plan[rank]], "train").iter_batches(
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


# ---------------------------------------------------------------- the math (pure)

def draw_latent(mean: Tensor, std: Tensor, scaling_factor: float, generator: torch.Generator) -> Tensor:
    """A fresh posterior sample each step: (mean + std * eps) * vae scaling factor, float32."""
    eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=torch.float32)
    return (mean.float() + std.float() * eps) * scaling_factor


def apply_text_dropout(txt: Tensor, mask: Tensor, y: Tensor, null_t5: Tensor, null_clap: Tensor,
                       drop_t5: Tensor, drop_clap: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Replace the T5 rows where drop_t5 and CLAP rows where drop_clap by the stored null embeddings."""
    length = max(txt.shape[1], null_t5.shape[0])
    if length > txt.shape[1]:
        txt = torch.cat((txt, txt.new_zeros(txt.shape[0], length - txt.shape[1], txt.shape[2])), dim=1)
        mask = torch.cat((mask, mask.new_zeros(mask.shape[0], length - mask.shape[1])), dim=1)
    null_txt = txt.new_zeros(length, txt.shape[2])
    null_txt[: null_t5.shape[0]] = null_t5.to(txt)
    null_mask = torch.arange(length, device=mask.device) < null_t5.shape[0]
    drop_t5 = drop_t5.to(txt.device)
    txt = torch.where(drop_t5[:, None, None], null_txt, txt)
    mask = torch.where(drop_t5[:, None], null_mask, mask)
    y = torch.where(drop_clap.to(y.device)[:, None], null_clap.to(y), y)
    return txt, mask, y


def t_bucket_sums(loss: Tensor, t: Tensor, buckets: int = T_BUCKETS) -> tuple[Tensor, Tensor]:
    """Per-bucket loss sums and counts over t in [0, 1) split into equal-width buckets."""
    index = (t.detach().float() * buckets).long().clamp(0, buckets - 1)
    sums = torch.zeros(buckets, device=loss.device).index_add_(0, index, loss.detach().float())
    counts = torch.zeros(buckets, device=loss.device).index_add_(0, index, torch.ones_like(loss, dtype=torch.float))
    return sums, counts


def ema_due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


@torch.no_grad()
def ema_update(ema: list[Tensor], params: list[Tensor], decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * params, in place."""
    torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - decay)


def learning_rate_factor(step: int, warmup_steps: int) -> float:
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


# ---------------------------------------------------------------- distributed helpers

def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def _all_reduce_sum(t: Tensor) -> Tensor:
    dist = _dist()
    if dist is not None:
        dist.all_reduce(t)
    return t


def _local(t: Tensor) -> Tensor:
    """This rank's piece of a (possibly FSDP-sharded DTensor) parameter."""
    return t.to_local() if hasattr(t, "to_local") else t


def _gather(local: Tensor, like: Tensor) -> Tensor:
    """The full tensor of a local piece laid out like parameter `like` (collective under FSDP)."""
    if hasattr(like, "device_mesh"):
        from torch.distributed.tensor import DTensor

        return DTensor.from_local(local, like.device_mesh, like.placements).full_tensor()
    return local


def _scatter(full: Tensor, like: Tensor) -> Tensor:
    if hasattr(like, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(like.device, like.dtype), like.device_mesh, like.placements).to_local()
    return full.to(like.device, like.dtype).clone()


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def apply_fsdp(model: nn.Module) -> nn.Module:
    """FSDP2: shard each transformer block, then the root (embedders, final layer)."""
    from torch.distributed.fsdp import fully_shard

    for block in [*model.double_blocks, *model.single_blocks]:
        fully_shard(block)
    fully_shard(model)
    return model


# ---------------------------------------------------------------- RNG state as tensors (weights_only-safe)

def rng_state(generator: torch.Generator) -> dict[str, Tensor]:
    py_version, py_state, py_gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "generator": generator.get_state(),
             "python": torch.tensor([py_version, *py_state], dtype=torch.int64),
             "python_gauss": torch.tensor([float("nan") if py_gauss is None else py_gauss], dtype=torch.float64),
             "numpy": torch.from_numpy(np_keys.astype(np.int64)),
             "numpy_extra": torch.tensor([np_pos, np_has_gauss, np_gauss], dtype=torch.float64)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Tensor], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    values = [int(v) for v in state["python"]]
    gauss = float(state["python_gauss"][0])
    random.setstate((values[0], tuple(values[1:]), None if np.isnan(gauss) else gauss))
    pos, has_gauss, cached = state["numpy_extra"].tolist()
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(pos), int(has_gauss), cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ---------------------------------------------------------------- checkpoints

def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def load_state(path: str) -> dict:
    """A checkpoint's state.pt (folder or file), loaded safely: tensors and plain types only."""
    if os.path.isdir(path):
        path = os.path.join(path, STATE_FILE)
    return torch.load(path, map_location="cpu", weights_only=True)


def _state_dict_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, **kw)


# ---------------------------------------------------------------- the worker loop

class _Run:
    """Everything one worker holds; methods are the loop's phases."""

    def __init__(self, config: dict):
        import ray.train
        import ray.train.torch

        from model import build_model

        self.cfg = TrainConfig(**config["train"])
        self.manifest = config["manifest"]
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.strategy = self.cfg.resolved_strategy()
        self.accumulation = accumulation_steps(self.cfg.global_batch_size, self.cfg.micro_batch_size, self.world)
        self.t5_dim, self.clap_dim = int(self.manifest["t5_dim"]), int(self.manifest["clap_dim"])
        self.scaling_factor = float(self.manifest["vae_scaling_factor"])
        self.null_t5, self.null_clap = read_null_text(config["data"], self.t5_dim, self.clap_dim)
        self.run_dir = config["run_dir"]

        torch.manual_seed(self.cfg.seed)            # identical initial weights on every rank
        base = build_model(self.cfg.size, context_in_dim=self.t5_dim, vec_in_dim=self.clap_dim,
                           gradient_checkpointing=self.cfg.size in FSDP_SIZES)
        self.flops_per_sample = None
        with contextlib.suppress(ImportError):
            from model import model_flops_per_sample
            self.flops_per_sample = lambda txt_len: 3 * model_flops_per_sample(base.params, txt_len=txt_len)
        if self.strategy == "fsdp" and self.world > 1:
            self.model = apply_fsdp(base.to(self.device))
        else:
            self.model = ray.train.torch.prepare_model(base, parallel_strategy="ddp")
        self.base = _unwrap(self.model)
        self.names = [n for n, _ in self.base.named_parameters()]
        self.params = [p for _, p in self.base.named_parameters()]
        self.ema = [_local(p).detach().clone() for p in self.params]
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr,
                                           weight_decay=self.cfg.weight_decay)
        warmup = self.cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           lambda s: learning_rate_factor(s, warmup))
        self.generator = torch.Generator(device=self.device).manual_seed(self.cfg.seed * 1_000_003 + self.rank)
        self.step, self.epoch, self.consumed = 0, 0, 0
        self.history: list[tuple[float, float]] = []
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if self.device.type == "cuda" \
            else contextlib.nullcontext()
        self.tb = None
        self.sampler = None
        self.evaluator = None
        self.eval_prompts = None

    # -- resume
    def restore(self) -> None:
        import ray.train
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return
        with checkpoint.as_directory() as folder:
            state = load_state(folder)
            rng = torch.load(os.path.join(folder, f"rng_rank{self.rank}.pt"), weights_only=True)
        set_model_state_dict(self.model, state["model"], options=_state_dict_options())
        set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=_state_dict_options())
        for i, (name, p) in enumerate(zip(self.names, self.params)):
            self.ema[i] = _scatter(state["ema"][name], p)
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.consumed = int(state["step"]), int(state["epoch"]), int(state["consumed"])
        self.history = [tuple(r) for r in state["loss_history"].tolist()]
        set_rng_state(rng, self.generator)
        if self.rank == 0:
            print(f"resumed {self.cfg.run_name} at step {self.step} (epoch {self.epoch}, batch {self.consumed})")

    def full_ema(self) -> dict[str, Tensor]:
        """Every rank must call this (a gather under FSDP)."""
        return {n: _gather(e, p).detach().cpu() for n, e, p in zip(self.names, self.ema, self.params)}

    def save(self, folder: str) -> None:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        options = _state_dict_options(cpu_offload=True)
        model_state = get_model_state_dict(self.model, options=options)
        optimizer_state = get_optimizer_state_dict(self.model, self.optimizer, options=options)
        ema = self.full_ema()
        torch.save(rng_state(self.generator), os.path.join(folder, f"rng_rank{self.rank}.pt"))
        if self.rank != 0:
            return
        torch.save({
            "format": 1, "step": self.step, "epoch": self.epoch, "consumed": self.consumed,
            "model": model_state, "ema": ema, "optimizer": optimizer_state,
            "scheduler": self.scheduler.state_dict(),
            "loss_history": torch.tensor(self.history, dtype=torch.float64).reshape(-1, 2),
            "config": asdict(self.cfg),
            "model_config": {"size": self.cfg.size, "context_in_dim": self.t5_dim, "vec_in_dim": self.clap_dim,
                             "vae_scaling_factor": self.scaling_factor, "kit": self.kit},
        }, os.path.join(folder, STATE_FILE))

    @property
    def kit(self) -> str:
        return self.cfg.kit or str(self.manifest.get("kit", "tiny"))

    # -- one optimiser update
    def condition(self, batch: dict) -> tuple[Tensor, dict]:
        mean = batch["latent_mean"].to(self.device)
        x0 = draw_latent(mean, batch["latent_std"].to(self.device), self.scaling_factor, self.generator)
        drop = torch.rand(mean.shape[0], 2, generator=self.generator, device=self.device) < self.cfg.cfg_dropout
        txt, mask, y = apply_text_dropout(batch["txt"].to(self.device), batch["txt_mask"].to(self.device),
                                          batch["y"].to(self.device), self.null_t5.to(self.device),
                                          self.null_clap.to(self.device), drop[:, 0], drop[:, 1])
        return x0, {"txt": txt.float(), "txt_mask": mask, "y": y.float()}

    def train_step(self, batches: Iterator) -> dict[str, float]:
        from model import rectified_flow_loss

        started = time.perf_counter()
        self.model.train()
        sums = torch.zeros(3 + 2 * T_BUCKETS, device=self.device)   # loss sum, count, txt tokens, buckets
        for micro in range(self.accumulation):
            self.epoch, self.consumed, batch = next(batches)
            x0, cond = self.condition(batch)
            last = micro == self.accumulation - 1
            # DDP: all-reduce gradients only on the last micro-step of the update
            sync = contextlib.nullcontext() if last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            if hasattr(self.model, "set_requires_gradient_sync"):     # FSDP2
                self.model.set_requires_gradient_sync(last)
            with sync, self.autocast:
                loss, t = rectified_flow_loss(self.model, x0, cond, generator=self.generator)
                (loss.mean() / self.accumulation).backward()
            bucket_sums, bucket_counts = t_bucket_sums(loss, t)
            sums += torch.cat((torch.stack([loss.detach().float().sum(), torch.tensor(float(loss.numel()),
                               device=self.device), cond["txt_mask"].sum().float()]), bucket_sums, bucket_counts))
        params = list(self.model.parameters())
        if self.cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
        grad_norm = float(_local(grad_norm).item() if not hasattr(grad_norm, "full_tensor")
                          else grad_norm.full_tensor().item())
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if ema_due(self.step, self.cfg.ema_every):
            ema_update(self.ema, [_local(p) for p in self.params], self.cfg.ema_decay)
        sums = _all_reduce_sum(sums)
        seconds = time.perf_counter() - started
        samples = float(sums[1])
        metrics = {"step": self.step, "epoch": self.epoch, "loss": float(sums[0] / sums[1]), "grad_norm": grad_norm,
                   "lr": self.scheduler.get_last_lr()[0], "samples_per_s": samples / seconds,
                   "tokens_per_s": (samples * 1024 + float(sums[2])) / seconds, "step_seconds": seconds}
        for b in range(T_BUCKETS):
            count = float(sums[3 + T_BUCKETS + b])
            metrics[f"loss_t{b}"] = float(sums[3 + b]) / count if count else float("nan")
        if self.device.type == "cuda" and self.flops_per_sample is not None:
            peak = next((v for k, v in PEAK_FLOPS.items() if k in torch.cuda.get_device_name()), None)
            if peak:
                txt_len = float(sums[2]) / samples
                metrics["mfu"] = self.flops_per_sample(txt_len) * samples / seconds / (self.world * peak)
        self.history.append((float(self.step), metrics["loss"]))
        return metrics

    # -- validation: fixed t and noise per (batch, rank)
    @torch.no_grad()
    def validate(self, shard) -> float:
        from model import rectified_flow_loss

        model = self.model if self.strategy == "fsdp" and self.world > 1 else self.base
        model.eval()
        collate = CorpusCollate(self.rank, self.world, self.t5_dim, self.clap_dim)
        rows = self.cfg.micro_batch_size * self.world
        total = torch.zeros(2, device=self.device)
        batches = shard.iter_torch_batches(batch_size=rows, collate_fn=collate, device="cpu")
        for index, batch in enumerate(batches):
            if index * rows >= self.cfg.val_max_rows:
                break
            weight = 1.0
            if batch["y"].shape[0] == 0:     # this rank has no rows here: FSDP still needs its forward
                batch, weight = collate_first_row(batch, self), 0.0
            g = torch.Generator(device=self.device).manual_seed(self.cfg.seed + 7919 * index + self.rank)
            x0 = batch["latent_mean"].to(self.device).float() * self.scaling_factor
            cond = {"txt": batch["txt"].to(self.device).float(), "txt_mask": batch["txt_mask"].to(self.device),
                    "y": batch["y"].to(self.device).float()}
            with self.autocast:
                loss, _ = rectified_flow_loss(model, x0, cond, generator=g)
            total += torch.stack([loss.float().sum() * weight, torch.tensor(loss.numel() * weight,
                                                                             device=self.device)])
        total = _all_reduce_sum(total)
        return float(total[0] / total[1]) if float(total[1]) else float("nan")

    # -- previews with the EMA weights (rank 0 decodes; every rank joins the gather)
    def preview(self, folder_uri: str, evaluate: bool) -> dict[str, float]:
        from model import build_model
        from pipelines.evaluation.generate import Generator, save_mel_png, save_wav

        ema = self.full_ema()
        if self.rank != 0:
            return {}
        model = build_model(self.cfg.size, context_in_dim=self.t5_dim, vec_in_dim=self.clap_dim, device="meta")
        model.load_state_dict(ema, assign=True)
        if self.sampler is None:
            self.sampler = Generator(self.kit, model.to(self.device), scaling_factor=self.scaling_factor,
                                     device=str(self.device))
        else:
            self.sampler.model = model.to(self.device)
        prompts = self.cfg.sample_prompts
        audio, mel = self.sampler.generate(prompts, steps=self.cfg.sample_steps, cfg_scale=self.cfg.sample_cfg,
                                           seed=self.cfg.seed, return_mel=True)
        for i, prompt in enumerate(prompts):
            save_wav(storage.join(folder_uri, f"{i:02d}.wav"), audio[i])
            save_mel_png(storage.join(folder_uri, f"{i:02d}.png"), mel[i], title=prompt)
        storage.write_bytes_atomic(storage.join(folder_uri, "prompts.json"), json.dumps(prompts).encode())
        return self.evaluate() if evaluate else {}

    def evaluate(self) -> dict[str, float]:
        """Metrics of the EMA weights' samples for a fixed prompt set: the first `eval_clips` captions of the
        valid split, scored against those clips' own audio (or against `eval_reference`). The evaluator and
        its reference statistics are built once per run (rank 0, after preview() loaded the EMA weights)."""
        from pipelines.evaluation.evaluator import Evaluator, read_corpus

        if self.evaluator is None:
            self.eval_prompts = read_corpus(self.cfg.data, "valid").head(self.cfg.eval_clips)
            self.evaluator = Evaluator(self.kit, self.cfg.eval_reference or None, device=str(self.device))
            if not self.cfg.eval_reference:
                self.evaluator.reference(self.eval_prompts.reference, self.eval_prompts.key, ids=self.eval_prompts.ids)
        prompts = self.eval_prompts
        audio = self.sampler.generate(prompts.captions, steps=self.cfg.sample_steps, cfg_scale=self.cfg.sample_cfg,
                                      seed=self.cfg.seed)
        scores = self.evaluator.score(audio, prompts.captions, ids=prompts.ids)
        return {f"eval_{k}": float(v) for k, v in scores.items()}

    # -- logging (rank 0)
    def log(self, metrics: dict[str, float]) -> None:
        if self.rank != 0:
            return
        if self.tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self.tb_dir = (storage.join(self.run_dir, "tensorboard") if not storage.is_s3(self.run_dir)
                           else tempfile.mkdtemp(prefix="fluxmusic-tb-"))
            self.tb = SummaryWriter(self.tb_dir)
        for key, value in metrics.items():
            if key != "step" and isinstance(value, (int, float)) and np.isfinite(value):
                self.tb.add_scalar(key, value, self.step)
        self.tb.flush()
        if storage.is_s3(self.run_dir):     # TensorBoard writes locally; mirror the event files
            for name in os.listdir(self.tb_dir):
                with open(os.path.join(self.tb_dir, name), "rb") as f:
                    storage.write_bytes_atomic(storage.join(self.run_dir, "tensorboard", name), f.read())

    def loss_curve(self) -> None:
        if self.rank != 0 or not self.history:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps, losses = zip(*self.history)
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(steps, losses, lw=1)
        ax.set(xlabel="optimiser step", ylabel="rectified-flow loss", title=self.cfg.run_name)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        storage.write_bytes_atomic(storage.join(self.run_dir, "loss_curve.png"), buffer.getvalue())


def collate_first_row(batch: dict, run: _Run) -> dict:
    """A stand-in one-row batch (the null text, zero latent) for a rank whose validation slice is empty."""
    return {"latent_mean": torch.zeros(1, *LATENT_SHAPE, dtype=torch.float16),
            "latent_std": torch.zeros(1, *LATENT_SHAPE, dtype=torch.float16),
            "txt": run.null_t5[None], "txt_mask": torch.ones(1, run.null_t5.shape[0], dtype=torch.bool),
            "y": run.null_clap[None]}


def _due(step: int, every: int, last: bool = False) -> bool:
    return (every > 0 and step % every == 0) or last


def train_loop_per_worker(config: dict) -> None:
    """Ray Train worker entry: config = {"train": asdict(TrainConfig), "manifest": {...}, "data": uri,
    "run_dir": uri}."""
    import ray.train

    run = _Run(config)
    run.restore()
    cfg = run.cfg
    files = [CorpusFile(**f) for f in config["files"]]
    batches = rank_micro_batches(files, rank=run.rank, world=run.world, micro_batch_size=cfg.micro_batch_size,
                                 collate=CorpusCollate(0, 1, run.t5_dim, run.clap_dim), seed=cfg.seed,
                                 shuffle_buffer=cfg.shuffle_buffer or DEFAULT_SHUFFLE_ROWS,
                                 epoch=run.epoch, skip=run.consumed)
    while run.step < cfg.max_steps:
        metrics = run.train_step(batches)
        last = run.step == cfg.max_steps
        if _due(run.step, cfg.val_every):
            metrics["val_loss"] = run.validate(ray.train.get_dataset_shard("valid"))
        if _due(run.step, cfg.sample_every) or _due(run.step, cfg.eval_every):
            folder = storage.join(run.run_dir, "samples", f"step_{run.step:08d}")
            metrics.update(run.preview(folder, evaluate=_due(run.step, cfg.eval_every)))
        if not (_due(run.step, cfg.log_every, last) or _due(run.step, cfg.checkpoint_every)):
            continue
        run.log(metrics)
        if _due(run.step, cfg.checkpoint_every, last):
            with tempfile.TemporaryDirectory() as folder:
                run.save(folder)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                                 checkpoint_dir_name=checkpoint_name(run.step))
        else:
            ray.train.report(metrics)
    run.loss_curve()
    if run.tb is not None:
        run.tb.close()


# ---------------------------------------------------------------- driver side

def list_checkpoints(storage_uri: str, run_name: str) -> list[str]:
    """This run's checkpoint folders (URIs), oldest first."""
    run_dir = storage.join(storage_uri, run_name)
    folders = {f.rsplit("/", 2)[-2] for f in storage.list_files(run_dir, STATE_FILE)}
    return [storage.join(run_dir, name) for name in sorted(folders) if name.startswith(CHECKPOINT_PREFIX)]


def _absolute(uri: str) -> str:
    return uri if storage.is_s3(uri) else os.path.abspath(uri)


def run_training(config: TrainConfig, *, resume: bool = False):
    """Train (or, with resume=True, continue the latest checkpoint of config.run_name); returns the Result.

    Without resume a run name that already has output fails loudly: Ray Train V2 would otherwise
    silently continue the old run.
    """
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
    files = scan_corpus(config.data)
    rows = [f.train_rows for f in files]
    if batches_per_epoch(rows, assign_files(rows, config.num_workers, config.seed, 0), config.micro_batch_size) < 1:
        raise ValueError(f"{sum(r > 0 for r in rows)} corpus files with {sum(rows)} train rows cannot give each of "
                         f"{config.num_workers} workers a micro-batch of {config.micro_batch_size}")
    datasets = {"valid": validation_dataset(files, config.val_max_rows)} if config.val_every > 0 else {}
    storage_path, storage_fs = storage.train_storage(config.storage)
    resources = {"CPU": config.cpus_per_worker}
    if config.use_gpu:
        resources["GPU"] = 1
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"train": asdict(config), "manifest": manifest, "data": config.data, "run_dir": run_dir,
                           "files": [asdict(f) for f in files]},
        scaling_config=ray.train.ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                               resources_per_worker=resources),
        run_config=ray.train.RunConfig(
            name=config.run_name, storage_path=storage_path, storage_filesystem=storage_fs,
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.keep_checkpoints),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures)),
        # training data: each worker reads its own files per epoch (rank_micro_batches); validation: the
        # fixed subset, unsplit + ordered, every worker takes rows rank::workers of each batch
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=[],
                                            execution_options=ExecutionOptions(preserve_order=True)),
    )
    return trainer.fit()
