r"""Score text-to-music generations: FAD, KL, IS and CLAP score (docs/evaluation.md).

    python jobs/evaluate.py --checkpoint runs/small/checkpoint_step_00200000 --corpus out/corpus --split valid \
        --num-clips 1000 --output eval/small-200k
    python jobs/evaluate.py --generated samples/ --prompts prompts.csv --kit paper --output eval/samples

What is generated: --checkpoint (clips made here with pipelines/evaluation/generate.py, saved to OUTPUT/generated/) or
--generated (a folder of WAVs named <prompt id>.wav). Which prompts, and the reference audio FAD and KL compare
against: --prompts FILE, --hf-dataset DIR or --corpus DIR --split valid (--reference overrides the reference).
Writes OUTPUT/metrics.json (numbers, kit, checkpoint, clip count, seeds, classifier) and OUTPUT/metrics.md
(a row laid out like the paper's Table 3). Numbers from CLAP embeddings are not comparable with the paper's
VGGish/PANNs numbers (docs/evaluation.md).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import posixpath
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from pipelines import storage  # noqa: E402
from schemas.constants import SAMPLE_RATE  # noqa: E402
from pipelines.evaluation.evaluator import (PromptSet, digest_ids, read_source, fit_clip, load_reference_clip,  # noqa: E402
                                  read_corpus)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", help="training checkpoint (folder, its state.pt, or s3://) to generate from")
    what.add_argument("--generated", help="folder of already generated WAVs named <prompt id>.wav (any rate; "
                                          "resampled to 16 kHz, cut or zero-padded to 10.24 s)")
    prompts = p.add_mutually_exclusive_group(required=True)
    prompts.add_argument("--prompts", help="captions file: .txt (one per line, ids 000, 001, ...) or .csv/.jsonl "
                                           "with columns id, caption and optionally audio (reference clip path, "
                                           "relative to the file)")
    prompts.add_argument("--hf-dataset", help="a datasets.save_to_disk folder with caption and audio columns "
                                              "(and optionally id)")
    prompts.add_argument("--corpus", help="a prepare_corpus output: captions of --split, reference audio re-decoded "
                                          "from each clip's source_uri at start_seconds")
    p.add_argument("--split", default="valid", help="corpus split to evaluate on (default: %(default)s)")
    p.add_argument("--reference", help="reference set instead of the prompt set's audio: a folder of WAVs named "
                                       "<prompt id>.wav, or a cached reference .npz written by an earlier run")
    p.add_argument("--kit", default="", help="model kit for CLAP (and generation): name or YAML path "
                                             "(default: the checkpoint's kit, else tiny)")
    p.add_argument("--cfg", type=float, default=3.5, help="classifier-free guidance scale (default: %(default)s)")
    p.add_argument("--steps", type=int, default=50, help="Euler steps (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="noise seed of the first batch; batch b uses seed + b "
                                                       "(default: %(default)s)")
    p.add_argument("--weights", default="ema", choices=["ema", "model"], help="checkpoint weights (default: ema)")
    p.add_argument("--num-clips", type=int, default=None, help="evaluate the first N prompts (default: all)")
    p.add_argument("--batch-size", type=int, default=8, help="clips per generation/embedding batch (default: 8)")
    p.add_argument("--workers", type=int, default=1,
                   help="generate on Ray Data with this many workers (joins RAY_ADDRESS or starts a local Ray); "
                        "1 = in this process (default: %(default)s)")
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="GPUs per Ray generation worker (default: 1 when CUDA is available, else 0)")
    p.add_argument("--labels", default="audioset", choices=["audioset", "music"],
                   help="label set of the zero-shot CLAP classifier for KL/IS (default: all 527 AudioSet labels)")
    p.add_argument("--label-temperature", type=float, default=None,
                   help="softmax temperature over label cosines (default: the CLAP model's learned 1/logit_scale)")
    p.add_argument("--embedder", default="clap", help="FAD embedding model: clap (the kit's CLAP audio tower) or a "
                                                      "path to another CLAP checkpoint (default: clap)")
    p.add_argument("--cache-dir", default=None, help="reference statistics cache (default: $FLUXMUSIC_EVAL_CACHE or "
                                                     "~/.cache/fluxmusic-pipeline/eval)")
    p.add_argument("--name", default="", help="model name in the table (default: checkpoint folder or 'generated')")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    p.add_argument("--output", required=True, help="folder or s3:// prefix for metrics.json and metrics.md")
    return p.parse_args(argv)


def _resolve(base_uri: str, path: str) -> str:
    if storage.is_s3(path) or os.path.isabs(path):
        return path
    base = posixpath.dirname(base_uri) if storage.is_s3(base_uri) else os.path.dirname(os.path.abspath(base_uri))
    return storage.join(base, path)


def read_prompt_file(uri: str) -> PromptSet:
    """.txt: one caption per line (ids 000, 001, ...); .csv/.jsonl: id, caption[, audio]."""
    text = storage.read_bytes(uri).decode("utf-8")
    if uri.endswith(".txt"):
        captions = [line.strip() for line in text.splitlines() if line.strip()]
        rows = [{"id": f"{i:03d}", "caption": c} for i, c in enumerate(captions)]
    elif uri.endswith(".jsonl"):
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif uri.endswith(".csv"):
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        raise SystemExit(f"--prompts {uri}: expected .txt, .csv or .jsonl")
    if not rows or any("caption" not in r for r in rows):
        raise SystemExit(f"--prompts {uri}: every row needs a caption")
    ids = [str(r.get("id") if r.get("id") not in (None, "") else f"{i:03d}") for i, r in enumerate(rows)]
    captions = [str(r["caption"]) for r in rows]
    audio = [r.get("audio") for r in rows]
    reference = None
    if all(audio):
        paths = [_resolve(uri, a) for a in audio]
        reference = lambda: np.stack([load_reference_clip(read_source(p)) for p in paths])  # noqa: E731
    return PromptSet(f"prompts:{uri}", ids, captions, reference, f"prompts:{uri}:{digest_ids(ids + [str(a) for a in audio])}")


def read_hf_dataset(path: str) -> PromptSet:
    """A datasets.save_to_disk folder; audio is read undecoded (bytes/path) and decoded by pipelines.corpus.audio."""
    import datasets

    ds = datasets.load_from_disk(path)
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[next(iter(ds))]
    if "caption" not in ds.column_names:
        raise SystemExit(f"--hf-dataset {path}: no caption column (has {ds.column_names})")
    ids = [str(i) for i in ds["id"]] if "id" in ds.column_names else [f"{i:03d}" for i in range(len(ds))]
    captions = [str(c) for c in ds["caption"]]
    reference = None
    if "audio" in ds.column_names:
        if isinstance(ds.features["audio"], datasets.Audio):
            ds = ds.cast_column("audio", datasets.Audio(decode=False))

        def reference() -> np.ndarray:
            clips = []
            for item in ds["audio"]:
                if isinstance(item, dict) and item.get("array") is not None:    # a plain dict column
                    from pipelines.corpus.audio import normalise
                    import soxr

                    wave = np.asarray(item["array"], np.float32)
                    rate = int(item.get("sampling_rate", SAMPLE_RATE))
                    wave = soxr.resample(wave, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else wave
                    clips.append(normalise(*fit_clip(wave)))
                else:
                    source = item.get("bytes") or item.get("path") if isinstance(item, dict) else item
                    clips.append(load_reference_clip(source))
            return np.stack(clips)
    return PromptSet(f"hf-dataset:{path}", ids, captions, reference, f"hf:{os.path.abspath(path)}:{digest_ids(ids)}")


def read_wav_dir(folder: str, ids: list[str]) -> np.ndarray:
    """<id>.wav for every id -> [B, CLIP_SAMPLES] at 16 kHz (cut or zero-padded; not normalised)."""
    from pipelines.corpus.audio import decode

    uris = [storage.join(folder, f"{i}.wav") for i in ids]
    missing = [u for u in uris if not storage.exists(u)]
    if missing:
        raise SystemExit(f"{len(missing)} WAV(s) missing, e.g. {missing[:3]}")
    return np.stack([fit_clip(decode(read_source(u)).audio)[0] for u in uris])


# ---------------------------------------------------------------- generation

def generation_batches(ids: list[str], captions: list[str], batch_size: int, seed: int) -> list[dict]:
    """Prompts cut into generation batches; batch b is generated with seed + b wherever it runs."""
    return [{"seed": seed + b, "ids": ids[start:start + batch_size], "captions": captions[start:start + batch_size]}
            for b, start in enumerate(range(0, len(captions), batch_size))]


class GenerateBatch:
    """One Generator per worker: a batch row {seed, ids, captions} -> {seed, ids, audio [b, 163840]}."""

    def __init__(self, kit: str, checkpoint: str, *, weights: str, steps: int, cfg: float, device: str | None = None):
        from pipelines.evaluation.generate import Generator

        self.generator = Generator(kit, checkpoint, weights=weights, device=device)
        self.steps, self.cfg = steps, cfg

    def __call__(self, row: dict) -> dict:
        audio = self.generator.generate(list(row["captions"]), steps=self.steps, cfg_scale=self.cfg,
                                        seed=int(row["seed"]))
        return {"seed": int(row["seed"]), "ids": list(row["ids"]), "audio": audio}


def generate_on_ray(batches: list[dict], worker_args: dict, workers: int, gpus_per_worker: float) -> list[dict]:
    """The batches across a pool of `workers` Ray Data actors (one GPU each on a GPU cluster), in seed order."""
    import ray.data

    from pipelines.raylocal import init_local_ray

    init_local_ray()
    resources = {"num_gpus": gpus_per_worker} if gpus_per_worker else {"num_cpus": 0.5}  # fractional: 2-core hosts
    ds = ray.data.from_items(batches, override_num_blocks=len(batches))
    ds = ds.map(GenerateBatch, fn_constructor_kwargs=worker_args, concurrency=workers, **resources)
    return sorted(ds.take_all(), key=lambda row: row["seed"])


def generate(args: argparse.Namespace, kit: str, ids: list[str], captions: list[str]) -> tuple[np.ndarray, list[int], int]:
    """Batched generation from the checkpoint, in process or on Ray (--workers > 1).
    -> (audio [B, 163840] in prompt order, seeds, parameter count)."""
    from model import count_parameters
    from pipelines.evaluation.generate import model_from_checkpoint, save_wav

    batches = generation_batches(ids, captions, args.batch_size, args.seed)
    worker_args = dict(kit=kit, checkpoint=args.checkpoint, weights=args.weights, steps=args.steps, cfg=args.cfg)
    if args.workers > 1:
        import torch

        gpus = args.gpus_per_worker if args.gpus_per_worker is not None else float(torch.cuda.is_available())
        done = generate_on_ray(batches, worker_args, args.workers, gpus)
        params = int(count_parameters(model_from_checkpoint(args.checkpoint, args.weights)[0]))
    else:
        worker = GenerateBatch(**worker_args, device=args.device)
        done = [worker(b) for b in batches]
        params = int(count_parameters(worker.generator.model))
    audio = np.concatenate([np.asarray(row["audio"], np.float32) for row in done])
    for i, clip in zip(ids, audio):
        save_wav(storage.join(args.output, "generated", f"{i}.wav"), clip)
    return audio, [row["seed"] for row in done], params


# ---------------------------------------------------------------- report

def format_params(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def metrics_markdown(name: str, params: int | None, scores: dict, info: dict) -> str:
    """A Table 3 style row: Model | Params | FAD | KL | IS | CLAP."""
    row = (f"| {name} | {format_params(params)} | {_cell(scores.get('fad'), 2)} | {_cell(scores.get('kl'), 2)} | "
           f"{_cell(scores.get('is'), 2)} | {_cell(scores.get('clap_score'), 3)} |")
    return "\n".join([
        "| Model | Params | FAD↓ | KL↓ | IS↑ | CLAP↑ |",
        "|---|---|---|---|---|---|",
        row,
        "",
        f"{int(scores.get('n_generated', 0))} clips vs {int(scores.get('n_reference', 0))} reference clips "
        f"({info.get('prompt_source', '')}). FAD on {info.get('fad_embedder')} embeddings; KL/IS from "
        f"{info.get('classifier')} over {info.get('labels')} labels (T={info.get('label_temperature', 0):.4g}); "
        "not comparable with VGGish/PANNs numbers (docs/evaluation.md).",
        "",
    ])


def _json_safe(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pipelines.evaluation.evaluator import Evaluator

    args = parse_args(argv)
    started = time.time()
    if args.prompts:
        prompt_set = read_prompt_file(args.prompts)
    elif args.hf_dataset:
        prompt_set = read_hf_dataset(args.hf_dataset)
    else:
        prompt_set = read_corpus(args.corpus, args.split)
    prompt_set = prompt_set.head(args.num_clips)

    kit = args.kit
    if not kit and args.checkpoint:
        from pipelines.evaluation.generate import load_checkpoint_state

        kit = load_checkpoint_state(args.checkpoint)["model_config"].get("kit", "")
    kit = kit or "tiny"

    evaluator = Evaluator(kit, embedder=args.embedder, cache_dir=args.cache_dir, labels=args.labels,
                          label_temperature=args.label_temperature, batch_size=args.batch_size, device=args.device)
    if args.reference and args.reference.endswith(".npz"):
        ref = evaluator.load_reference(args.reference)
    else:
        if args.reference:
            folder, ids = args.reference, prompt_set.ids
            loader, key = (lambda: read_wav_dir(folder, ids)), f"wav-dir:{folder}:{digest_ids(ids)}"
        elif prompt_set.reference is not None:
            loader, key = prompt_set.reference, prompt_set.key
        else:
            raise SystemExit("no reference audio: the prompt set has none; give --reference")
        ref = evaluator.reference(loader, key, ids=prompt_set.ids)

    seeds: list[int] = []
    params = None
    if args.checkpoint:
        audio, seeds, params = generate(args, kit, prompt_set.ids, prompt_set.captions)
    else:
        audio = read_wav_dir(args.generated, prompt_set.ids)
    scores = evaluator.score(audio, prompt_set.captions, reference_key=ref.key, ids=prompt_set.ids)

    name = args.name or (os.path.basename(args.checkpoint.rstrip("/")) if args.checkpoint else "generated")
    info = {"model": name, "params": params, "kit": kit, "checkpoint": args.checkpoint, "generated": args.generated,
            "prompt_source": prompt_set.source, "num_clips": len(prompt_set.ids), "seeds": seeds,
            "cfg": args.cfg if args.checkpoint else None, "steps": args.steps if args.checkpoint else None,
            "weights": args.weights if args.checkpoint else None,
            "workers": args.workers if args.checkpoint else None, "reference_key": ref.key,
            **evaluator.describe(), "metrics": scores, "wall_seconds": round(time.time() - started, 2)}
    storage.write_bytes_atomic(storage.join(args.output, "metrics.json"),
                               json.dumps(_json_safe(info), indent=2).encode())
    table = metrics_markdown(name, params, scores, info)
    storage.write_bytes_atomic(storage.join(args.output, "metrics.md"), table.encode())
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
