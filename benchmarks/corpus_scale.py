"""Hours of real music through the corpus job on local Ray against the same stages run single-process per core.

    python -m benchmarks.corpus_scale [--work /tmp/corpus-scale] [--hours 0] [--min-hours 6] [--batch-size 8]
                                      [--no-baseline] [--plans fused,staged] [--no-docs] [--json PATH]

Music: Debian packages that no test uses: planetblupi-music-ogg, drascula-music (audio/ only: the language
folders hold the same files), nexuiz-music and ufoai-music (Ogg files inside .pk3 zips, extracted), and
planetblupi-music-midi rendered with fluidsynth + timgm6mb-soundfont to FLAC. Assembled once under --work.
--hours H takes a deterministic subset (tracks round-robin over the packages until H hours; 0 = all).

Baseline: one process per core (spawned, 1 torch thread each), each running every stage of the job in order on
its share of the tracks (shares balanced by duration): the dedup pre-pass (decode, gates, content hash,
Chromaprint), the front end (decode, segment, gates, loudness), then batches of --batch-size rows through the
job's own stage list (`pipeline.clip_steps`: log-mel, signal descriptors, VaeStage, TagStage, CaptionStage
(transformers), mix, TextStage) and a local ShardWriter.
Its wall time runs from the first process's start to the last one's end, model loads and imports included.
Ray: `prepare_corpus` on a fresh output on a local Ray (default resources), Ray start excluded, once per --plans
entry: fused (the default on this CPU-only machine) and staged (an operator per stage, as on a GPU cluster).
Efficiency = baseline wall / Ray wall. Machine CPU busy seconds (/proc/stat) of each phase show where a
difference goes: more CPU-seconds is overhead (serialisation, repeated work), fewer busy cores is idling.
The results replace the block between the corpus_scale markers in docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import glob
import json
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.docs_block import replace_block  # noqa: E402
from benchmarks.near_duplicates import audio_seconds  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
PACKAGES = {
    "planetblupi-music-ogg": "/usr/share/planetblupi/music/*.ogg",
    "drascula-music": "/usr/share/scummvm/drascula/audio/*.ogg",
    "nexuiz-music": "/usr/share/games/nexuiz/data/music.pk3",
    "ufoai-music": "/usr/share/games/ufoai/base/0music.pk3",
    "planetblupi-music-midi": "/usr/share/planetblupi/music/*.mid",
}
SOUNDFONT = "/usr/share/sounds/sf2/TimGM6mb.sf2"
ZIPPED_AUDIO = (".ogg", ".mp3", ".wav", ".flac")
STAGE_LABELS = {"mel": "log-mel", "descriptors": "descriptors", "vae": "VAE", "tags": "CLAP tags",
                "captions": "captions", "mix": "mix", "text": "T5 + CLAP"}


# ----------------------------------------------------------------------------- the music


def _render_midi(midi: str, flac: str) -> None:
    """General MIDI -> 44.1 kHz stereo FLAC through fluidsynth's file renderer (no audio device)."""
    wav = flac[:-5] + ".wav"
    subprocess.run(["fluidsynth", "-ni", "-q", "-r", "44100", "-F", wav, SOUNDFONT, midi], check=True,
                   capture_output=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-nostdin", "-i", wav, flac], check=True)
    os.remove(wav)


def assemble(work: str) -> dict[str, list[tuple[str, float]]]:
    """{package: [(file in work/music/<package>/, seconds)]}, built once (links, zip members, MIDI renders)."""
    music = os.path.join(work, "music")
    out: dict[str, list[tuple[str, float]]] = {}
    for package, pattern in PACKAGES.items():
        folder = os.path.join(music, package)
        os.makedirs(folder, exist_ok=True)
        for path in sorted(glob.glob(pattern)):
            name = os.path.basename(path)
            if path.endswith(".pk3"):
                with zipfile.ZipFile(path) as archive:
                    for member in archive.namelist():
                        target = os.path.join(folder, member.replace("/", "_"))
                        if member.lower().endswith(ZIPPED_AUDIO) and not os.path.exists(target):
                            with archive.open(member) as src, open(target, "wb") as dst:
                                shutil.copyfileobj(src, dst)
            elif path.endswith(".mid"):
                target = os.path.join(folder, name[:-4] + ".flac")
                if not os.path.exists(target):
                    _render_midi(path, target)
            elif not os.path.lexists(os.path.join(folder, name)):
                os.symlink(path, os.path.join(folder, name))
        out[package] = [(p, audio_seconds(p)) for p in sorted(glob.glob(os.path.join(folder, "*")))]
    return out


def pick(collection: dict[str, list[tuple[str, float]]], hours: float, folder: str) -> dict[str, list[tuple[str, float]]]:
    """Round-robin over the packages until `hours` (0: everything); the picks are linked into folder."""
    queues = {k: list(v) for k, v in collection.items()}
    chosen: dict[str, list[tuple[str, float]]] = defaultdict(list)
    total = 0.0
    while any(queues.values()) and (hours <= 0 or total < hours * 3600):
        for package, queue in queues.items():
            if queue and (hours <= 0 or total < hours * 3600):
                path, seconds = queue.pop(0)
                chosen[package].append((path, seconds))
                total += seconds
    for package, files in chosen.items():
        os.makedirs(os.path.join(folder, package), exist_ok=True)
        for path, _ in files:
            os.symlink(os.path.realpath(path), os.path.join(folder, package, os.path.basename(path)))
    return dict(chosen)


# ----------------------------------------------------------------------------- machine CPU time

def busy_seconds() -> float:
    """CPU-seconds every core of the machine spent busy since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


class Phase:
    """Wall seconds and machine busy CPU-seconds of one `with` block."""

    def __enter__(self):
        self.wall0, self.busy0 = time.perf_counter(), busy_seconds()
        return self

    def __exit__(self, *exc):
        self.wall, self.busy = time.perf_counter() - self.wall0, busy_seconds() - self.busy0


def process_cpu() -> dict[int, tuple[str, float]]:
    """{pid: (name, CPU-seconds of it and its waited-for children)} of every process now running."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        name = argv[0].decode(errors="replace")
        if name.startswith("ray::"):
            name = "ray worker " + name[5:].split(" ")[0]        # the Ray title: the actor class or IDLE
        else:
            name = os.path.basename(name.split(" ")[0]) + ("" if len(argv) < 2 else " " + os.path.basename(
                argv[1].decode(errors="replace"))[:40])
        out[int(pid)] = (name, sum(int(x) for x in stat[11:15]) / tick)
    return out


class ProcessSampler:
    """CPU-seconds by process title, sampled every `every` s in a thread: a Ray worker's title names what it runs
    (ray::MapWorker(MapBatches(VaeStage)), ray::IDLE, ...), so each delta goes to what ran in that interval."""

    def __init__(self, every: float = 0.5):
        import threading

        self.every, self.used, self.workers = every, defaultdict(float), set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last = process_cpu()
        while not self.stop.wait(self.every):
            now = process_cpu()
            for pid, (name, cpu) in now.items():
                self.used[name] += cpu - (last[pid][1] if pid in last else 0.0)
                if name.startswith(("ray worker", "python default_worker")):
                    self.workers.add(pid)
            last = now

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def by_name(self) -> dict[str, float]:
        return {k: round(v, 1) for k, v in sorted(self.used.items(), key=lambda kv: -kv[1]) if v >= 0.5}


# ----------------------------------------------------------------------------- baseline: one process per core

def balance(sources: list[dict], seconds: dict[str, float], parts: int) -> list[list[dict]]:
    """Longest track first onto the least loaded part: shares of nearly equal audio duration."""
    shares: list[list[dict]] = [[] for _ in range(parts)]
    load = [0.0] * parts
    for source in sorted(sources, key=lambda s: -seconds.get(s["source_uri"], 0.0)):
        i = load.index(min(load))
        shares[i].append(source)
        load[i] += seconds.get(source["source_uri"], 0.0)
    return shares


def chain(share: list[dict], kit: str, batch_size: int, output: str, gates: dict, result) -> None:
    """Every stage of the corpus job in this one process, streamed in batches; puts per-stage seconds in result."""
    import torch

    torch.set_num_threads(1)
    from benchmarks.corpus_stages import cpu_seconds
    from pipelines.corpus.config import CorpusConfig
    from pipelines.corpus.dedup import content_claim
    from pipelines.corpus.frontend import _normalise_metadata, process_track
    from pipelines.corpus.fused import ready_steps
    from pipelines.corpus.pipeline import clip_steps
    from pipelines.corpus.rows import rows_to_batch
    from pipelines.corpus.writer import CorpusWriter

    seconds: dict[str, float] = defaultdict(float)

    def timed(name, fn, *args, **kwargs):
        t0 = cpu_seconds()
        out = fn(*args, **kwargs)
        seconds[name] += cpu_seconds() - t0
        return out

    def front_end(source: dict) -> list[dict]:
        rows = process_track(source, **gates)
        for row in rows:
            row["metadata"] = _normalise_metadata(row.get("metadata"))
        return rows

    t0 = cpu_seconds()
    steps = ready_steps(clip_steps(CorpusConfig(inputs=[], output=output, kit=kit)))    # the job's stages, in order
    stages = [(STAGE_LABELS[name], stage) for name, stage in steps] + [("writer", CorpusWriter(output, 0.02))]
    seconds["imports + model loads"] += cpu_seconds() - t0
    clips = 0

    def run(rows: list[dict]) -> None:
        nonlocal clips
        batch = rows_to_batch(rows)
        for name, stage in stages:
            batch = timed(name, stage, batch)
        clips += int(batch["ok"].sum())

    pending: list[dict] = []
    for source in share:
        timed("dedup pre-pass", content_claim, source, gates=gates, fingerprints=True)
        pending += timed("front end", front_end, source)
        while len(pending) >= batch_size:
            run(pending[:batch_size])
            pending = pending[batch_size:]
    if pending:
        run(pending)
    timed("writer", stages[-1][1].flush)
    result.put({"clips": clips, "seconds": dict(seconds), "cpu": cpu_seconds()})


def baseline(sources: list[dict], durations: dict[str, float], kit: str, batch_size: int, work: str,
             gates: dict, cores: int) -> dict:
    # As Ray does for a 1-CPU worker: one thread for OpenMP/BLAS (librosa, numpy), or each process spins two.
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    shares = balance(sources, durations, cores)
    with Phase() as phase:
        procs = [context.Process(target=chain, args=(share, kit, batch_size, os.path.join(work, f"baseline-{i}"),
                                                     gates, queue)) for i, share in enumerate(shares)]
        for p in procs:
            p.start()
        results = [queue.get() for _ in procs]
        for p in procs:
            p.join()
    per_stage: dict[str, float] = defaultdict(float)
    for r in results:
        for name, s in r["seconds"].items():
            per_stage[name] += s
    return {"wall": phase.wall, "busy": phase.busy, "clips": sum(r["clips"] for r in results),
            "processes": cores, "stage_cpu": dict(per_stage),
            "share_hours": [sum(durations.get(s["source_uri"], 0.0) for s in share) / 3600 for share in shares]}


# ----------------------------------------------------------------------------- the job on local Ray

def on_ray(folder: str, kit: str, batch_size: int, output: str, plan: str) -> dict:
    from pipelines.corpus.config import CorpusConfig
    from pipelines.corpus.pipeline import prepare_corpus
    from pipelines.raylocal import init_local_ray

    with Phase() as start:
        init_local_ray()
    import ray

    logical = int(ray.cluster_resources().get("CPU", 0))
    config = CorpusConfig(inputs=[folder], output=output, kit=kit, batch_size=batch_size, plan=plan)
    with ProcessSampler() as sampler, Phase() as phase:
        manifest = prepare_corpus(config, progress=lambda *_: None)
    processes = sampler.by_name()
    worker_processes = len(sampler.workers)
    ray.shutdown()
    counts = manifest["counts"]
    return {"wall": phase.wall, "busy": phase.busy, "ray_start_s": start.wall, "logical_cpus": logical,
            "clips": counts["clips"], "inputs": counts["inputs"], "quarantined": dict(counts["quarantined"]),
            "shards": manifest.get("shards", {}), "process_cpu": processes,
            "worker_processes": worker_processes}


# ----------------------------------------------------------------------------- report

def markdown(report: dict) -> str:
    env, hours = report["machine"], report["hours"]
    lines = [f"Command: `{report['command']}`",
             f"Machine: {env['machine']}, {env['cores']} CPU cores, kit `{report['kit']}`, batch {report['batch_size']}; "
             f"load average {env['load_before']:.1f} before, {env['load_after']:.1f} after; {env['date']}.", "",
             f"Music: {hours['total']:.2f} h in {hours['files']} files (Debian packages no test uses): " +
             ", ".join(f"{k} {v['files']} files {v['hours']:.2f} h" for k, v in hours["packages"].items()) + ".", ""]
    base, runs = report.get("baseline"), report.get("ray", {})
    lines += ["| run | wall s | clips | clips / s | machine busy CPU-s | busy cores (of {}) | efficiency |".format(env["cores"]),
              "|---|---|---|---|---|---|---|"]
    named = [("same stages, one process per core", base)] + [(f"`prepare_corpus` on local Ray, plan {plan}", r)
                                                            for plan, r in runs.items()]
    for name, r in named:
        if r:
            efficiency = f"**{base['wall'] / r['wall']:.0%}**" if base and r is not base else ""
            lines.append(f"| {name} | {r['wall']:.0f} | {r['clips']} | {r['clips'] / r['wall']:.2f} | {r['busy']:.0f} | "
                         f"{r['busy'] / r['wall']:.2f} | {efficiency} |")
    if base and runs:
        lines += ["", "Efficiency = baseline wall / Ray wall. CPU-seconds against the baseline's: " +
                  ", ".join(f"plan {plan} {r['busy'] / base['busy']:.2f}x" for plan, r in runs.items()) + "."]
    if base:
        total = sum(base["stage_cpu"].values())
        lines += ["", "Baseline CPU-seconds by stage (all processes): " +
                  ", ".join(f"{k} {v:.0f} ({v / total:.0%})" for k, v in
                            sorted(base["stage_cpu"].items(), key=lambda kv: -kv[1])) + "."]
    for plan, r in runs.items():
        lines += ["", f"Ray run, plan {plan}: {r['inputs']} inputs, {r['clips']} clips, quarantined "
                  f"{r['quarantined'] or 'none'}; {r['logical_cpus']} logical CPUs; Ray start "
                  f"{r['ray_start_s']:.1f} s not included; {r['worker_processes']} Ray worker processes were seen. "
                  "CPU-seconds by process title (sampled every 0.5 s; a process that lived under 0.5 s is missed): " +
                  ", ".join(f"{k} {v:.0f}" for k, v in r["process_cpu"].items() if v >= 1) + "."]
    return "\n".join(lines)


def write_docs(text: str) -> None:
    replace_block(DOCS, "corpus_scale", text)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "corpus-scale"),
                        help="where the assembled music is kept between runs (default: %(default)s)")
    parser.add_argument("--hours", type=float, default=0.0, help="a subset of about this many hours (0: all)")
    parser.add_argument("--min-hours", type=float, default=6.0, help="refuse less music than this (default 6)")
    parser.add_argument("--kit", default="tiny")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per batch, as prepare_corpus (default 8)")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--plans", default="fused,staged",
                        help="the corpus job's plans to run, in this order (default: %(default)s; '' runs none)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the block in docs/benchmarks.md")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.corpus_scale " + " ".join(argv if argv is not None else sys.argv[1:])
    cores = os.cpu_count() or 1
    report = {"command": command.strip(), "kit": args.kit, "batch_size": args.batch_size,
              "machine": {"machine": platform.machine(), "cores": cores, "load_before": os.getloadavg()[0],
                          "date": time.strftime("%Y-%m-%d %H:%M")}}
    collection = assemble(args.work)
    from pipelines.corpus.config import CorpusConfig, front_end_gates
    from pipelines.corpus.sources import discover

    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        chosen = pick(collection, args.hours, os.path.join(tmp, "music"))
        durations = {os.path.join(tmp, "music", k, os.path.basename(p)): s for k, v in chosen.items() for p, s in v}
        total = sum(durations.values()) / 3600
        report["hours"] = {"total": total, "files": len(durations),
                           "packages": {k: {"files": len(v), "hours": sum(s for _, s in v) / 3600}
                                        for k, v in chosen.items()}}
        print(f"{total:.2f} h of music in {len(durations)} files: {report['hours']['packages']}", flush=True)
        if total < args.min_hours:
            raise SystemExit(f"only {total:.2f} h of music (< --min-hours {args.min_hours}); install the packages "
                             f"of the docstring")
        sources = discover([os.path.join(tmp, "music")])
        if not args.no_baseline:
            gates = front_end_gates(CorpusConfig(inputs=[], output=""))
            report["baseline"] = baseline(sources, durations, args.kit, args.batch_size, tmp, gates, cores)
            print(f"baseline: {report['baseline']}", flush=True)
        report["ray"] = {}
        for plan in filter(None, args.plans.split(",")):
            report["ray"][plan] = on_ray(os.path.join(tmp, "music"), args.kit, args.batch_size,
                                         os.path.join(tmp, f"ray-{plan}"), plan)
            print(f"ray, plan {plan}: {report['ray'][plan]}", flush=True)
    report["machine"]["load_after"] = os.getloadavg()[0]
    text = markdown(report)
    print("\n" + text)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=float))
    if not args.no_docs:
        write_docs(text)
        print(f"results written to {DOCS}")
    return report


if __name__ == "__main__":
    main()
