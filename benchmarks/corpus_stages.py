"""Clips per second of every corpus stage (tiny kit, in-process, same batches), the whole job on local Ray,
bytes per clip in the written Parquet, and one batch through a real-size AudioLDM2 VAE encoder on CPU.

    python -m benchmarks.corpus_stages [--corpus DIR] [--small] [--batch-size 8] [--threads 1]
                                       [--no-ray] [--no-real-vae] [--vae-batch 2] [--no-docs] [--json PATH]

Stages are called exactly as Ray Data calls them (numpy batches of `--batch-size` rows, rejected rows
included), each stage's output feeding the next: front end (`process_track` per track), log-mel, VaeStage,
TagStage, CaptionStage (transformers), mix, TextStage, CorpusWriter. Models load before timing and every
batch stage first runs its first batch once untimed (imports, mel basis, first-call allocations). clips/s counts
the live clips entering the stage; wall and CPU seconds (this process and its ffmpeg children) are both reported
because the machine is shared.
The results replace the block between the corpus_stages markers in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402

from schemas import constants as C  # noqa: E402

from benchmarks.docs_block import replace_block  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
TENSOR_COLUMNS = ("latent_mean", "latent_std", "t5", "clap")
REPORTED_COLUMNS = ("latent_mean", "latent_std", "t5", "clap", "tags", "captions")
CAPTION_COLUMNS = ("caption", "caption_original", "caption_synthetic")
# AudioLDM2 `vae/config.json` (spec §2); weights random: the cost depends on the shapes only.
REAL_VAE_CONFIG = dict(in_channels=1, out_channels=1, latent_channels=8, block_out_channels=(128, 256, 512),
                       down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                       layers_per_block=2, norm_num_groups=32, act_fn="silu", sample_size=1024,
                       scaling_factor=0.4110932946205139)
REAL_VAE_GFLOP_PER_CLIP = 345.0     # spec §7.3, encoder forward on one 1x1024x64 mel


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Clock:
    """Wall and CPU seconds of one `with` block."""

    def __enter__(self):
        self.wall0, self.cpu0 = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.wall0, cpu_seconds() - self.cpu0


# ----------------------------------------------------------------------------- batches as Ray Data makes them

def live_count(batch: dict[str, np.ndarray]) -> int:
    return int(sum(1 for r in batch["reject_reason"] if not r))


def front_end_rows(sources: list[dict]) -> tuple[list[dict], dict]:
    """process_track per track, as the pipeline's flat_map does (duplicate registry left out: no Ray here)."""
    from pipelines.corpus.frontend import _normalise_metadata
    from pipelines.corpus.frontend import process_track

    process_track(sources[0])            # warm-up, untimed: decoder imports
    rows = []
    with Clock() as clock:
        for source in sources:
            for row in process_track(source):
                row["metadata"] = _normalise_metadata(row.get("metadata"))
                rows.append(row)
    kept = sum(1 for r in rows if not r["reject_reason"])
    audio_s = sum(r["duration_seconds"] for r in rows if not r["reject_reason"])
    return rows, {"stage": "front end (process_track, per track)", "rows": len(sources), "clips": kept,
                  "wall": clock.wall, "cpu": clock.cpu, "audio_s": audio_s, "unit": "tracks"}


def run_stage(name: str, stage, batches: list[dict]) -> tuple[list[dict], dict]:
    stage(copy.deepcopy(batches[0]))      # warm-up, untimed
    rows = sum(len(b["clip_id"]) for b in batches)
    clips = sum(live_count(b) for b in batches)
    with Clock() as clock:
        out = [stage(b) for b in batches]
    return out, {"stage": name, "rows": rows, "clips": clips, "wall": clock.wall, "cpu": clock.cpu}


def descriptors_only(batches: list[dict]) -> dict:
    """The CPU part of TagStage that no GPU takes over: tempo, key, loudness, brightness of each live clip."""
    from pipelines.corpus.tags import signal_descriptors

    clips = [np.asarray(b["audio"][i], np.float32)[: int(round(b["duration_seconds"][i] * C.SAMPLE_RATE))]
             for b in batches for i in range(len(b["clip_id"])) if not b["reject_reason"][i]]
    signal_descriptors(clips[0])         # warm-up, untimed
    with Clock() as clock:
        for clip in clips:
            signal_descriptors(clip)
    return {"stage": "(TagStage part: signal descriptors only)", "rows": len(clips), "clips": len(clips),
            "wall": clock.wall, "cpu": clock.cpu}


def in_process_stages(sources: list[dict], kit: str, batch_size: int, output: str) -> tuple[list[dict], dict]:
    """Every stage in order on the same batches; returns per-stage results and model load seconds."""
    from pipelines.corpus.captions import CaptionStage, mix_captions
    from pipelines.corpus.encode import TextStage, VaeStage
    from pipelines.corpus.frontend import add_log_mel
    from pipelines.corpus.rows import rows_to_batch
    from pipelines.corpus.tags import TagStage
    from pipelines.corpus.writer import CorpusWriter

    rows, front = front_end_rows(sources)
    batches = [rows_to_batch(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
    loads = {}
    stages = [("log-mel", lambda: add_log_mel),
              ("VaeStage", lambda: VaeStage(kit)),
              ("TagStage (signal + CLAP)", lambda: TagStage(kit)),
              ("CaptionStage (transformers)", lambda: CaptionStage(kit, backend="transformers")),
              ("mix", lambda: mix_captions),
              ("TextStage (T5 + CLAP)", lambda: TextStage(kit)),
              # Its warm-up batch is written again by the timed pass under the same name (atomic replace).
              ("CorpusWriter (Parquet, zstd)", lambda: CorpusWriter(output, 0.02))]
    results = [front]
    for name, make in stages:
        if name.startswith("TagStage"):
            results.append(descriptors_only(batches))
        with Clock() as load:
            stage = make()
        loads[name] = load.wall
        batches, result = run_stage(name, stage, batches)
        results.append(result)
    return results, loads


# ----------------------------------------------------------------------------- the whole job on local Ray

def end_to_end(corpus: str, kit: str, batch_size: int, output: str) -> dict:
    from pipelines.corpus.config import CorpusConfig
    from pipelines.corpus.pipeline import prepare_corpus
    from pipelines.raylocal import init_local_ray

    with Clock() as start:
        init_local_ray()
    config = CorpusConfig(inputs=[corpus], output=output, kit=kit, batch_size=batch_size)
    with Clock() as first:
        manifest = prepare_corpus(config, progress=lambda *_: None)
    with Clock() as again:                       # every track complete: the ledger read and the manifest only
        prepare_corpus(config, progress=lambda *_: None)
    clips = manifest["counts"]["clips"]
    return {"ray_start_s": start.wall, "wall": first.wall, "clips": clips, "clips_per_s": clips / first.wall,
            "quarantined": sum(manifest["counts"]["quarantined"].values()), "inputs": manifest["counts"]["inputs"],
            "resume_noop_s": again.wall, "manifest_wall_s": manifest["wall_seconds"]}


# ----------------------------------------------------------------------------- bytes per clip

def bytes_per_clip(corpus_dir: str) -> dict:
    """Compressed bytes per clip by column (Parquet column-chunk sizes), raw tensor bytes, whole files."""
    files = sorted(str(p) for p in Path(corpus_dir).glob("*.parquet"))
    compressed, uncompressed = defaultdict(int), defaultdict(int)
    file_bytes, rows = 0, 0
    raw = defaultdict(int)
    t5_lengths = []
    for path in files:
        meta = pq.ParquetFile(path).metadata
        file_bytes += os.path.getsize(path)
        rows += meta.num_rows
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                column = group.column(c)
                top = column.path_in_schema.split(".")[0]
                top = "captions" if top in CAPTION_COLUMNS else top
                compressed[top] += column.total_compressed_size
                uncompressed[top] += column.total_uncompressed_size
        table = pq.read_table(path, columns=[*TENSOR_COLUMNS, "t5_length"])
        for name in TENSOR_COLUMNS:
            raw[name] += sum(len(b) for b in table[name].to_pylist())
        t5_lengths += table["t5_length"].to_pylist()
    per = lambda d: {k: v / rows for k, v in d.items()} if rows else {}  # noqa: E731
    return {"files": len(files), "clips": rows, "file_bytes_per_clip": file_bytes / max(rows, 1),
            "compressed": per(compressed), "uncompressed": per(uncompressed), "raw": per(raw),
            "t5_length_mean": float(np.mean(t5_lengths)) if t5_lengths else 0.0}


# ----------------------------------------------------------------------------- real-size VAE on CPU

def real_vae(mel: np.ndarray) -> dict:
    """One batch of real mels through a random-weight AudioLDM2-size VAE encoder (posterior only)."""
    from diffusers import AutoencoderKL

    from pipelines.models.encoders import vae_posterior

    torch.manual_seed(0)
    vae = AutoencoderKL(**REAL_VAE_CONFIG).eval()
    params = sum(p.numel() for p in vae.encoder.parameters()) + sum(p.numel() for p in vae.quant_conv.parameters())
    with torch.no_grad(), Clock() as clock:
        mean, _ = vae_posterior(vae, torch.from_numpy(np.ascontiguousarray(mel, np.float32)))
    assert tuple(mean.shape[1:]) == C.LATENT_SHAPE, mean.shape
    seconds = clock.wall / len(mel)
    return {"batch": len(mel), "wall": clock.wall, "cpu": clock.cpu, "seconds_per_clip": seconds,
            "encoder_params": params, "gflop_per_s": REAL_VAE_GFLOP_PER_CLIP / seconds}


# ----------------------------------------------------------------------------- report

def rate(clips: int, seconds: float) -> str:
    return f"{clips / seconds:,.1f}" if seconds >= 0.005 else "> 1,000 (too fast to time)"


def table(results: list[dict]) -> list[str]:
    lines = ["| stage | items in | live clips | wall s | clips / s (wall) | CPU s | clips / CPU-s |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        items = f"{r['rows']} {r.get('unit', 'rows')}"
        lines.append(f"| {r['stage']} | {items} | {r['clips']} | {r['wall']:.2f} | **{rate(r['clips'], r['wall'])}** | "
                     f"{r['cpu']:.2f} | {rate(r['clips'], r['cpu'])} |")
    return lines


def markdown(report: dict) -> str:
    env = report["machine"]
    lines = [f"Command: `{report['command']}`",
             f"Machine: {env['machine']}, {env['cores']} CPU cores, torch threads {env['threads']}, "
             f"kit `{report['kit']}`, batch {report['batch_size']}; load average {env['load_before']:.1f} before, "
             f"{env['load_after']:.1f} after (shared with other jobs); {env['date']}.", "",
             f"In-process stages on {report['corpus_label']} ({report['stages'][0]['rows']} tracks -> "
             f"{report['stages'][0]['clips']} clips, {report['stages'][0]['audio_s']:.1f} s of audio):", ""]
    lines += table(report["stages"])
    lines += ["", "Model load (constructor) seconds: " +
              ", ".join(f"{k} {v:.1f}" for k, v in report["loads"].items() if v >= 0.05) + "."]
    e2e = report.get("end_to_end")
    if e2e:
        lines += ["", f"End to end, `prepare_corpus` on local Ray (4 logical CPUs, 1 actor per model stage): "
                  f"{e2e['inputs']} inputs -> {e2e['clips']} clips + {e2e['quarantined']} quarantined in "
                  f"{e2e['wall']:.1f} s = **{e2e['clips_per_s']:.2f} clips/s** (start-up, model loads and the null "
                  f"text included; Ray start {e2e['ray_start_s']:.1f} s not included). A re-run on the complete "
                  f"output (resume, nothing to do): {e2e['resume_noop_s']:.1f} s."]
    size = report["bytes"]
    lines += ["", f"Bytes per clip in the written corpus ({size['files']} files, {size['clips']} clips, zstd; "
              f"tiny kit: t5_dim 64, clap_dim 32, mean t5_length {size['t5_length_mean']:.1f}):", "",
              "| column | raw bytes / clip | Parquet bytes / clip (compressed) | compression |", "|---|---|---|---|"]
    for name in REPORTED_COLUMNS:
        raw = size["raw"].get(name, size["uncompressed"].get(name, 0.0))
        comp = size["compressed"].get(name, 0.0)
        lines.append(f"| {name} | {raw:,.0f} | {comp:,.0f} | {raw / comp if comp else 0:.2f}x |")
    rest = size["file_bytes_per_clip"] - sum(size["compressed"].get(n, 0.0) for n in REPORTED_COLUMNS)
    lines.append(f"| other columns + footer | | {rest:,.0f} | |")
    lines.append(f"| **whole file** | | **{size['file_bytes_per_clip']:,.0f}** | |")
    vae = report.get("real_vae")
    if vae:
        lines += ["", f"Real-size AudioLDM2 VAE encoder (spec §2 config, random weights, "
                  f"{vae['encoder_params'] / 1e6:.1f} M encoder parameters, fp32, batch {vae['batch']} of real demo "
                  f"mels): {vae['wall']:.1f} s wall ({vae['cpu']:.1f} CPU-s) = "
                  f"**{vae['seconds_per_clip']:.1f} s per clip** on CPU ({vae['gflop_per_s']:.0f} GFLOP/s at "
                  f"{REAL_VAE_GFLOP_PER_CLIP:.0f} GFLOP per clip)."]
    return "\n".join(lines)


def write_docs(text: str) -> None:
    replace_block(DOCS, "corpus_stages", text)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", help="demo corpus folder (default: build one in a temp folder)")
    parser.add_argument("--small", action="store_true", help="build the small demo corpus (when --corpus is not given)")
    parser.add_argument("--kit", default="tiny")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per batch, as prepare_corpus (default 8)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a Ray actor's share)")
    parser.add_argument("--no-ray", action="store_true", help="skip the end-to-end prepare_corpus run")
    parser.add_argument("--no-real-vae", action="store_true", help="skip the real-size VAE encoder batch")
    parser.add_argument("--vae-batch", type=int, default=2, help="clips through the real-size VAE (default 2)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the block in docs/benchmarks.md")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python -m benchmarks.corpus_stages " + " ".join(argv if argv is not None else sys.argv[1:])
    report = {"command": command.strip(), "kit": args.kit, "batch_size": args.batch_size,
              "machine": {"machine": platform.machine(), "cores": os.cpu_count(), "threads": args.threads,
                          "load_before": os.getloadavg()[0], "date": time.strftime("%Y-%m-%d %H:%M")}}
    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus
        if corpus is None:
            from pipelines.corpus.demo import build
            corpus = os.path.join(tmp, "demo")
            build(corpus, small=args.small)
        report["corpus_label"] = (f"the demo corpus (`--corpus {args.corpus}`)" if args.corpus else
                                  f"the {'small ' if args.small else ''}demo corpus (make_demo_corpus)")
        from pipelines.corpus.sources import discover

        sources = discover([corpus])
        out = os.path.join(tmp, "in_process")
        report["stages"], report["loads"] = in_process_stages(sources, args.kit, args.batch_size, out)
        report["bytes"] = bytes_per_clip(os.path.join(out, "corpus"))
        print(f"\n{len(sources)} tracks, batch {args.batch_size}, {args.threads} torch thread(s)")
        print("\n".join(table(report["stages"])))
        if not args.no_real_vae:
            from pipelines.corpus.audio import clips_to_log_mel
            from pipelines.corpus.frontend import process_track

            rows = [r for s in sources for r in process_track(s) if not r["reject_reason"]][: args.vae_batch]
            report["real_vae"] = real_vae(clips_to_log_mel(np.stack([r["audio"] for r in rows])))
            print(f"\nreal-size VAE encoder: {report['real_vae']['seconds_per_clip']:.2f} s per clip "
                  f"(batch {report['real_vae']['batch']})")
        if not args.no_ray:
            report["end_to_end"] = end_to_end(corpus, args.kit, args.batch_size, os.path.join(tmp, "ray_out"))
            print(f"\nend to end on local Ray: {report['end_to_end']['clips_per_s']:.2f} clips/s")
    report["machine"]["load_after"] = os.getloadavg()[0]
    text = markdown(report)
    print("\n" + text + f"\n\ncommand: {report['command']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=float))
    if not args.no_docs:
        write_docs(text)
        print(f"results written to {DOCS}")
    return report


if __name__ == "__main__":
    main()
