"""Audio-seconds processed per CPU-second by the front end (decode, resample, segment, gates, log-mel),
side by side with a naive per-item loader that does what the official FluxMusic/AudioLDM2 dataset does.

    python -m benchmarks.front_end [--corpus DIR] [--no-full-tracks] [--no-docs]

Ours: each track decoded once (streamed mean down-mix + soxr), cut into every 10.24 s clip, mel batched.
Naive: per 10.24 s item, decode the whole file, random crop at the native rate, resample the crop (soxr HQ:
torchaudio is not installed here), keep channel 0, normalise, pad, mel of that one item. Both run the same
items (the clips our front end keeps) on one torch thread; CPU time includes child processes (ffmpeg).
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import sys
import tempfile
import time

import numpy as np
import soundfile as sf
import soxr
import torch

from pipelines.corpus import audio
from schemas import constants as C
from pipelines.corpus.frontend import process_track
from pipelines.corpus.sources import discover

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs", "front_end.md")
ASC_DIR = "/usr/share/games/asc/music"


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def ours(tracks: list[dict]) -> tuple[float, float, dict[str, list[float]]]:
    """(audio seconds in kept clips, CPU seconds, {extension: [audio s, CPU s]})."""
    total_audio, per_format = 0.0, {}
    start = cpu_seconds()
    for track in tracks:
        t0 = cpu_seconds()
        rows = [r for r in process_track(track) if not r["reject_reason"]]
        if rows:
            audio.clips_to_log_mel(np.stack([r["audio"] for r in rows]),
                                   lengths=np.array([round(r["duration_seconds"] * C.SAMPLE_RATE) for r in rows]))
        seconds = sum(r["duration_seconds"] for r in rows)
        total_audio += seconds
        entry = per_format.setdefault(os.path.splitext(track["source_uri"])[1].lower(), [0.0, 0.0])
        entry[0] += seconds
        entry[1] += cpu_seconds() - t0
    return total_audio, cpu_seconds() - start, per_format


def naive_item(path: str, rng: np.random.Generator) -> np.ndarray:
    """One training item the official way: whole-file decode, random native-rate crop, resample, channel 0."""
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except sf.LibsndfileError:
        return np.zeros(C.CLIP_SAMPLES, np.float32)
    crop = int(sr * C.CLIP_SECONDS)
    if len(data) > crop:
        begin = int(rng.integers(0, len(data) - crop + 1))
        data = data[begin:begin + crop]
    channel0 = data[:, 0] if sr == C.SAMPLE_RATE else soxr.resample(data[:, 0], sr, C.SAMPLE_RATE, "HQ")
    clip = np.zeros(C.CLIP_SAMPLES, np.float32)
    clip[:min(len(channel0), C.CLIP_SAMPLES)] = channel0[:C.CLIP_SAMPLES]
    return audio.clip_to_log_mel(clip)


def naive(tracks: list[dict], items_per_track: dict[str, int]) -> float:
    rng = np.random.default_rng(0)
    start = cpu_seconds()
    for track in tracks:
        for _ in range(items_per_track.get(track["source_uri"], 0)):
            naive_item(track["source_uri"], rng)
    return cpu_seconds() - start


def run(name: str, tracks: list[dict]) -> dict:
    audio.clips_to_log_mel(np.zeros((1, C.CLIP_SAMPLES), np.float32))   # warm-up: librosa import, mel basis
    counts: dict[str, int] = {}
    for track in tracks:          # the items: clips our front end keeps (also warms caches and imports)
        counts[track["source_uri"]] = sum(1 for r in process_track(track) if not r["reject_reason"])
    audio_s, ours_cpu, per_format = ours(tracks)
    naive_cpu = naive(tracks, counts)
    result = {"name": name, "tracks": len(tracks), "clips": sum(counts.values()), "audio_s": audio_s,
              "ours_cpu": ours_cpu, "naive_cpu": naive_cpu, "ours_x": audio_s / ours_cpu,
              "naive_x": audio_s / naive_cpu, "ratio": naive_cpu / ours_cpu, "per_format": per_format}
    print(f"\n[{name}] {len(tracks)} tracks, {result['clips']} clips, {audio_s:.1f} s of audio")
    print(f"  ours : {ours_cpu:7.3f} CPU-s  -> {result['ours_x']:7.0f}x real time per CPU core")
    print(f"  naive: {naive_cpu:7.3f} CPU-s  -> {result['naive_x']:7.0f}x real time per CPU core")
    print(f"  ours / naive speed: {result['ratio']:.1f}x")
    for ext, (seconds, cpu) in sorted(per_format.items()):
        if seconds:
            print(f"    {ext:6s} {seconds:7.1f} s audio  {cpu:6.3f} CPU-s  {seconds / cpu:6.0f}x")
    return result


def markdown(results: list[dict], command: str) -> str:
    lines = [f"Command: `{command}` (one torch thread; CPU time = user + system of the process and its children).",
             f"Machine: {platform.machine()}, {os.cpu_count()} cores, shared with other jobs while measured "
             f"(load average {os.getloadavg()[0]:.1f} at the end); {time.strftime('%Y-%m-%d')}.", "",
             "| input | tracks | clips | audio s | ours CPU-s | ours x real time / core | naive CPU-s | "
             "naive x real time / core | ours vs naive |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['name']} | {r['tracks']} | {r['clips']} | {r['audio_s']:.1f} | {r['ours_cpu']:.2f} | "
                     f"**{r['ours_x']:.0f}x** | {r['naive_cpu']:.2f} | {r['naive_x']:.0f}x | **{r['ratio']:.1f}x** |")
    lines += ["", "Ours per input format (demo corpus):", "", "| format | audio s | CPU-s | x real time / core |",
              "|---|---|---|---|"]
    for ext, (seconds, cpu) in sorted(results[0]["per_format"].items()):
        if seconds:
            lines.append(f"| {ext} | {seconds:.1f} | {cpu:.3f} | {seconds / cpu:.0f}x |")
    return "\n".join(lines)


def write_docs(text: str) -> None:
    with open(DOCS, encoding="utf-8") as f:
        doc = f.read()
    block = f"<!-- benchmark:start -->\n{text}\n<!-- benchmark:end -->"
    doc = re.sub(r"<!-- benchmark:start -->.*<!-- benchmark:end -->", lambda _: block, doc, flags=re.S)
    with open(DOCS, "w", encoding="utf-8") as f:
        f.write(doc)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", help="demo corpus folder (default: build one in a temp folder)")
    parser.add_argument("--no-full-tracks", action="store_true", help="skip the full-length asc-music tracks")
    parser.add_argument("--no-docs", action="store_true", help="do not write the results into docs/front_end.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    command = "python -m benchmarks.front_end " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        corpus = args.corpus
        if corpus is None:
            from pipelines.corpus.demo import build
            corpus = os.path.join(tmp, "demo")
            build(corpus)
        results = [run("demo corpus (make_demo_corpus)", discover([corpus]))]
    if not args.no_full_tracks and os.path.isdir(ASC_DIR):
        results.append(run("full-length tracks (asc-music, 3 x ~6 min MP3)", discover([ASC_DIR])))
    print(f"\ncommand: {command.strip()}")
    if not args.no_docs:
        write_docs(markdown(results, command.strip()))
        print(f"results written to {os.path.normpath(DOCS)}")


if __name__ == "__main__":
    main()
