"""Real-music test inputs for the quality checks: excerpts of Debian asc-music tracks and copies of one of them
re-encoded, trimmed and with another intro, made with ffmpeg (skips when asc-music or ffmpeg is missing)."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

ASC_DIR = "/usr/share/games/asc/music"
SONIC_PI_DIR = "/usr/share/sonic-pi/samples"
ASC_TRACKS = ("frontiers.mp3", "machine_wars.mp3", "time_to_strike.mp3")
EXCERPT_SECONDS = 40
TRIM_SECONDS = 7
INTRO_SECONDS = 5


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-nostdin", *args], check=True)


def make_variants(folder: str) -> dict[str, str]:
    """{name: path}: "excerpt-<track>" (FLAC, 40 s from 30 s in) for each asc track; and for the first one
    "mp3" (128 kb/s), "opus" (64 kb/s), "trimmed" (first 7 s cut) and "intro" (5 s of another track prepended)."""
    if shutil.which("ffmpeg") is None or not all(os.path.exists(os.path.join(ASC_DIR, t)) for t in ASC_TRACKS):
        pytest.skip("needs ffmpeg and Debian asc-music")
    at = lambda name: os.path.join(folder, name)   # noqa: E731
    out = {}
    for track in ASC_TRACKS:
        name = f"excerpt-{track.split('.')[0]}"
        _ffmpeg("-ss", "30", "-t", str(EXCERPT_SECONDS), "-i", os.path.join(ASC_DIR, track), "-c:a", "flac",
                at(name + ".flac"))
        out[name] = at(name + ".flac")
    original = out["excerpt-frontiers"]
    _ffmpeg("-i", original, "-b:a", "128k", at("mp3.mp3"))
    _ffmpeg("-i", original, "-c:a", "libopus", "-b:a", "64k", at("opus.opus"))
    _ffmpeg("-ss", str(TRIM_SECONDS), "-i", original, "-c:a", "flac", at("trimmed.flac"))
    _ffmpeg("-ss", "100", "-t", str(INTRO_SECONDS), "-i", os.path.join(ASC_DIR, "machine_wars.mp3"), "-i", original,
            "-filter_complex", "[0:a]aresample=44100[a];[1:a]aresample=44100[b];[a][b]concat=n=2:v=0:a=1",
            "-c:a", "flac", at("intro.flac"))
    out.update(mp3=at("mp3.mp3"), opus=at("opus.opus"), trimmed=at("trimmed.flac"), intro=at("intro.flac"))
    return out
