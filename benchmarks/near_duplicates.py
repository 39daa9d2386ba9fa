"""Precision and recall of the near-duplicate rule (pipelines/corpus/fingerprint.py) on real game music and its variants.

    python -m benchmarks.near_duplicates [--work /tmp/near-duplicates] [--excerpt 60] [--distractors 20000]

Sources: Debian asc-music, planetblupi-music-ogg, drascula-music (audio/ only: the language folders hold the same
files), nexuiz-music and ufoai-music (Ogg files inside .pk3 zips). Each track gives an excerpt (the "original":
FLAC at the native rate, from 10 s in; excerpts under 30 s are left out) and three variants made with ffmpeg:
MP3 128 kb/s; the first 7 s cut, Opus 96 kb/s; 5 s of the next track prepended, FLAC. Every file is decoded with pipelines.corpus.audio.decode, fingerprinted, added to
one NearDuplicateIndex and queried against it; a pair counts as a true match when both files come from the same
track. Also prints integrated loudness / true peak / clip fraction of every original excerpt (docs/quality.md).
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import itertools
import json
import os
import subprocess
import time
import zipfile

import numpy as np

from pipelines.corpus import fingerprint as F
from pipelines.corpus import loudness, quality
from pipelines.corpus.audio import decode
from schemas import constants as C

COLLECTIONS = {
    "asc-music": "/usr/share/games/asc/music/*.mp3",
    "planetblupi-music-ogg": "/usr/share/planetblupi/music/*.ogg",
    "drascula-music": "/usr/share/scummvm/drascula/audio/*.ogg",
    "nexuiz-music": "/usr/share/games/nexuiz/data/music.pk3",
    "ufoai-music": "/usr/share/games/ufoai/base/0music.pk3",
}


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-nostdin", *args], check=True)


def collect(work: str) -> list[tuple[str, str]]:
    """[(collection, path)] of every distinct source track (exact byte copies dropped), pk3 zips extracted."""
    found, seen = [], set()
    for name, pattern in COLLECTIONS.items():
        for path in sorted(glob.glob(pattern)):
            if path.endswith(".pk3"):
                target = os.path.join(work, "sources", name)
                with zipfile.ZipFile(path) as archive:
                    members = [m for m in archive.namelist() if m.lower().endswith((".ogg", ".mp3", ".wav", ".flac"))]
                    archive.extractall(target, members)
                paths = [os.path.join(target, m) for m in sorted(members)]
            else:
                paths = [path]
            for p in paths:
                digest = hashlib.sha256(open(p, "rb").read()).hexdigest()
                if digest not in seen:
                    seen.add(digest)
                    found.append((name, p))
    return found


MIN_EXCERPT_SECONDS = 30.0    # shorter tracks (jingles) are left out: the 7 s trim and the 10 s overlap need room


def audio_seconds(path: str) -> float:
    """Duration by ffprobe (0.0 when it cannot tell)."""
    done = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0", path],
                          capture_output=True, text=True)
    try:
        return float(done.stdout.strip())
    except ValueError:
        return 0.0


def make_variants(tracks: list[tuple[str, str]], work: str, excerpt: float) -> list[tuple[int, str, str]]:
    """[(track number, variant name, path)]: each long enough track's excerpt and its three variants."""
    folder = os.path.join(work, "variants")
    os.makedirs(folder, exist_ok=True)
    at = lambda number, kind, ext: os.path.join(folder, f"{number:03d}-{kind}.{ext}")   # noqa: E731
    kept = []
    for number, (_, path) in enumerate(tracks):
        original = at(number, "original", "flac")
        if not os.path.exists(original):
            _ffmpeg("-ss", "10", "-t", str(excerpt), "-i", path, "-c:a", "flac", original)
        if audio_seconds(original) >= MIN_EXCERPT_SECONDS:
            kept.append(number)
    out = []
    for i, number in enumerate(kept):
        original = at(number, "original", "flac")
        other = kept[(i + 1) % len(kept)]          # the intro comes from the next kept track
        intro = at(number, f"intro-from-{other:03d}", "flac")
        if not os.path.exists(at(number, "trim", "opus")):
            _ffmpeg("-i", original, "-b:a", "128k", at(number, "mp3", "mp3"))
            _ffmpeg("-ss", "7", "-i", original, "-c:a", "libopus", "-b:a", "96k", at(number, "trim", "opus"))
        if not os.path.exists(intro):
            _ffmpeg("-ss", "20", "-t", "5", "-i", at(other, "original", "flac"), "-i", original, "-filter_complex",
                    "[0:a]aresample=44100,aformat=channel_layouts=stereo[a];"
                    "[1:a]aresample=44100,aformat=channel_layouts=stereo[b];[a][b]concat=n=2:v=0:a=1",
                    "-c:a", "flac", intro)
        out += [(number, "original", original), (number, "mp3", at(number, "mp3", "mp3")),
                (number, "trim", at(number, "trim", "opus")), (number, "intro", intro)]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", default="/tmp/near-duplicates", help="scratch folder (default: %(default)s)")
    p.add_argument("--excerpt", type=float, default=60.0, help="seconds of each track to use (default: 60)")
    p.add_argument("--distractors", type=int, default=0,
                   help="also add this many random 120 s fingerprints to the index, to time queries at scale")
    p.add_argument("--json", default="", help="also write the results here")
    args = p.parse_args()
    os.makedirs(args.work, exist_ok=True)

    tracks = collect(args.work)
    files = make_variants(tracks, args.work, args.excerpt)

    index = F.NearDuplicateIndex(threshold=0.0)   # keep every verified score; the rule's threshold applies below
    fps, seconds, levels, decode_cpu, fingerprint_cpu, hashes = {}, 0.0, [], 0.0, 0.0, {}
    for number, kind, path in files:
        start = time.process_time()
        audio = decode(path).audio
        decode_cpu += time.process_time() - start
        seconds += len(audio) / C.SAMPLE_RATE
        hashes[path] = quality.content_hash(audio)   # the baseline: the front end's exact duplicate check
        start = time.process_time()
        fps[path] = F.fingerprint(audio)
        fingerprint_cpu += time.process_time() - start
        if kind == "original":                    # loudness of every original excerpt (not timed)
            levels.append((loudness.integrated_lufs(audio), loudness.true_peak_dbtp(audio),
                           loudness.clip_fraction(audio)))
    rng = np.random.default_rng(0)
    length = int(F.FINGERPRINT_SECONDS * F.ITEMS_PER_SECOND)
    start = time.process_time()
    for i in range(args.distractors):            # unrelated tracks: queries must stay fast and not match them
        index.add(f"distractor-{i}", rng.integers(0, 2**32, length, dtype=np.uint64).astype(np.uint32))
    for number, kind, path in files:
        index.add(path, fps[path])
    index_cpu = time.process_time() - start
    cpu = time.process_time()
    scores: dict[tuple[str, str], float] = {}
    distractor_scores = []
    for number, kind, path in files:
        for other, score, _ in index.query(fps[path]):
            if other.startswith("distractor-"):
                distractor_scores.append(score)
            elif other != path:
                pair = tuple(sorted((path, other)))
                scores[pair] = max(scores.get(pair, 0.0), score)
    query_cpu = time.process_time() - cpu
    group = {path: number for number, _, path in files}
    kind_of = {path: kind for _, kind, path in files}
    true_pairs = {tuple(sorted(p)) for p in itertools.combinations(group, 2) if group[p[0]] == group[p[1]]}
    # Index-free check of the scores: every true pair and every pair of originals, compared at all offsets.
    true_scores = {pair: F.similarity(fps[pair[0]], fps[pair[1]])[0] for pair in true_pairs}
    originals = [path for _, kind, path in files if kind == "original"]
    false_scores = [F.similarity(fps[a], fps[b])[0] for a, b in itertools.combinations(originals, 2)]

    rows = []
    for threshold in (0.6, 0.7, 0.75, 0.8, F.MATCH_THRESHOLD, 0.85, 0.9):
        found = {pair for pair, s in scores.items() if s >= threshold}
        tp, fp_, fn = len(found & true_pairs), len(found - true_pairs), len(true_pairs - found)
        rows.append({"threshold": threshold, "tp": tp, "fp": fp_, "fn": fn,
                     "precision": tp / max(1, tp + fp_), "recall": tp / max(1, len(true_pairs)),
                     "false_pairs": sorted(f"{os.path.basename(a)} ~ {os.path.basename(b)} {scores[(a, b)]:.3f}"
                                           for a, b in found - true_pairs)[:10],
                     "missed": sorted(f"{os.path.basename(a)} ~ {os.path.basename(b)} {true_scores[(a, b)]:.3f}"
                                      for a, b in true_pairs - found)[:10]})
    hash_found = {pair for pair in true_pairs if hashes[pair[0]] == hashes[pair[1]]}
    by_kind: dict[str, list[float]] = {}
    for (a, b), s in true_scores.items():
        by_kind.setdefault("+".join(sorted((kind_of[a], kind_of[b]))), []).append(s)
    lufs, peaks, clips = (np.array(v) for v in zip(*levels))
    originals_numbers = [number for number, kind, _ in files if kind == "original"]
    report = {
        "tracks": len(tracks), "tracks_long_enough": len(files) // 4, "files": len(files), "audio_seconds": round(seconds, 1),
        "collections": {name: sum(1 for n, _ in tracks if n == name) for name in COLLECTIONS},
        "collections_long_enough": {name: sum(1 for n, kind, _ in files if kind == "original" and tracks[n][0] == name)
                                    for name in COLLECTIONS},
        "index_tracks": len(index), "index_build_cpu_s": round(index_cpu, 2),
        "index_postings": int(len(index._keys)),
        "distractor_candidates": len(distractor_scores),
        "distractor_best_score": round(max(distractor_scores, default=0.0), 3),
        "cpu_ms_per_file": {"decode": round(1000 * decode_cpu / len(files), 1),
                            "fingerprint": round(1000 * fingerprint_cpu / len(files), 1),
                            "query": round(1000 * query_cpu / len(files), 2)},
        "true_pair_score_min_by_kind": {k: round(min(v), 3) for k, v in sorted(by_kind.items())},
        "different_track_best_score": {"pairs": len(false_scores), "max": round(max(false_scores), 3),
                                       "p99": round(float(np.percentile(false_scores, 99)), 3),
                                       "median": round(float(np.median(false_scores)), 3),
                                       "top5": [round(s, 3) for s in sorted(false_scores)[-5:]]},
        "thresholds": rows,
        "content_hash_true_pairs_found": len(hash_found),
        "loudness_excerpts": {"lufs_min": round(float(lufs.min()), 1), "lufs_median": round(float(np.median(lufs)), 1),
                                 "lufs_max": round(float(lufs.max()), 1),
                                 "true_peak_max_dbtp": round(float(peaks.max()), 2),
                                 "clip_fraction_max": float(clips.max()),
                                 "clip_fraction_p99": float(np.percentile(clips, 99)),
                                 "quietest": os.path.basename(tracks[originals_numbers[int(lufs.argmin())]][1]),
                                 "most_clipped": os.path.basename(tracks[originals_numbers[int(clips.argmax())]][1])},
        "load_average": os.getloadavg()[0],
    }
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
