"""The demo corpus: a small folder of real music for the quick start and tests (34 clips; small: 13).

Sources (all free to redistribute): Debian `asc-music` (MP3 game soundtrack, GPL-2+), Debian `sonic-pi-samples`
(FLAC loops, CC0/MIT), PyPI `immich-memories-music` (Opus, MIT, with mood/style/BPM/key labels), a few
synthesised tracks with known tags, and two broken files so the quick start shows the quarantine.
Labels and captions go into an HF-audiofolder `metadata.csv`. The output is deterministic.
"""
from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys

import numpy as np
import soundfile as sf

ASC_DIR = "/usr/share/games/asc/music"
SONIC_PI_DIR = "/usr/share/sonic-pi/samples"
ASC_TRACKS = ("frontiers", "machine_wars", "time_to_strike")
ASC_EXCERPT = (60.0, 30.0)            # start, seconds: 3 clips per track
# (file, tags, caption or ""): loops longer than 5.12 s, plus one shorter sample that shows `too_short`
SONIC_PI = (
    ("loop_amen_full", "drums, breakbeat, loop", "The full Amen break, a classic funk drum break."),
    ("loop_garzul", "electronic, synth, loop", ""),
    ("loop_3d_printer", "electronic, noise, loop", ""),
    ("ambi_sauna", "ambient, drone, pad", "A warm ambient drone with slowly shifting tones."),
    ("ambi_haunted_hum", "ambient, dark, drone", ""),
    ("guit_em9", "guitar, chord, acoustic", ""),
    ("ambi_piano", "piano, ambient", ""),                # 2.8 s: shorter than a clip's minimum, too_short
)
# The package's LICENSE-MUSIC labels: (mood, file, bpm, key, style)
IMMICH = (
    ("calm", "calm_acoustic_1", 68, "C major", "acoustic"),
    ("energetic", "energetic_electronic_2", 150, "G minor", "electronic"),
    ("happy", "happy_acoustic_1", 110, "E major", "acoustic"),
    ("nostalgic", "nostalgic_electronic_2", 84, "Bb minor", "electronic"),
    ("tender", "tender_acoustic_2", 90, "G major", "acoustic"),
)
# (name, bpm, root MIDI note, minor?, seconds): 20.48 s = exactly 2 clips
SYNTH = (("synth_c_major_120", 120, 60, False, 20.48), ("synth_a_minor_90", 90, 57, True, 20.48))
FIELDS = ("file_name", "caption", "tags", "title", "artist", "album", "genre", "mood", "bpm", "key")


# ----------------------------------------------------------------------------- synthesis

def _midi_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12)


def synth_track(seconds: float, sr: int = 44_100, channels: int = 2, *, bpm: float = 120.0, root: int = 60,
                minor: bool = False, seed: int = 0) -> np.ndarray:
    """Music-like float32 [n, channels] audio: a I-vi-IV-V (or i-VI-iv-v) chord progression, an arpeggiated
    melody with decaying notes, a bass line and noise hi-hats, peak 0.7. Deterministic for a seed."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * sr))
    t = np.arange(n) / sr
    beat = 60.0 / bpm
    scale = np.array([0, 2, 3, 5, 7, 8, 10] if minor else [0, 2, 4, 5, 7, 9, 11])
    degrees = [0, 5, 3, 4]                           # chord roots as scale degrees, one bar (4 beats) each
    bar = ((t / (4 * beat)).astype(int)) % len(degrees)
    mix = np.zeros(n)
    chord_hz = np.array([[_midi_hz(root + scale[(d + 2 * v) % 7] + 12 * ((d + 2 * v) // 7)) for v in range(3)]
                         for d in degrees])          # [bar, voice]: triads on scale degrees d, d+2, d+4
    for voice in range(3):
        mix += 0.12 * np.sin(2 * np.pi * chord_hz[bar, voice] * t)
    eighth = (t / (beat / 2)).astype(int)
    melody_steps = rng.integers(0, 10, size=eighth.max() + 1)
    melody_notes = root + 12 + scale[melody_steps % 7] + 12 * (melody_steps // 7)
    phase_in_note = t - eighth * beat / 2
    melody_hz = np.array([_midi_hz(x) for x in melody_notes])[eighth]
    melody = np.sin(2 * np.pi * melody_hz * t) + 0.3 * np.sin(4 * np.pi * melody_hz * t)
    mix += 0.25 * melody * np.exp(-phase_in_note * 6)
    bass_hz = np.array([_midi_hz(root - 12 + scale[d]) for d in degrees])[bar]
    mix += 0.2 * np.sin(2 * np.pi * bass_hz * t)
    hat = rng.standard_normal(n) * np.exp(-phase_in_note * 60)
    mix += 0.05 * np.diff(hat, prepend=0.0)          # first difference: a crude high-pass
    mix *= 0.7 / (np.abs(mix).max() + 1e-9)
    pans = np.linspace(0.85, 1.0, channels)          # slightly different levels per channel
    return (mix[:, None] * pans[None]).astype(np.float32)


# ----------------------------------------------------------------------------- corpus

def _cut_mp3(src: str, dst: str, start: float, seconds: float) -> None:
    """A stream-copied MP3 excerpt (no re-encoding); bit-exact flags keep it deterministic."""
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", "-ss", str(start), "-t", str(seconds), "-i", src,
                    "-map_metadata", "-1", "-c", "copy", "-fflags", "+bitexact", "-flags:a", "+bitexact",
                    "-write_xing", "0", "-id3v2_version", "0", dst], check=True)


def _tag_mp3(path: str, title: str, artist: str, album: str) -> None:
    from mutagen.id3 import ID3, TALB, TIT2, TPE1
    tags = ID3()
    tags.add(TIT2(encoding=3, text=title))
    tags.add(TPE1(encoding=3, text=artist))
    tags.add(TALB(encoding=3, text=album))
    tags.save(path)


def _missing(package: str) -> None:
    print(f"[make_demo_corpus] Debian package {package!r} is missing; skipping it. "
          f"Install it with: sudo apt-get install -y {package}", file=sys.stderr)


def build(output: str, small: bool = False) -> list[dict]:
    """Write the demo corpus into output (replacing earlier demo files) and return its metadata rows."""
    os.makedirs(output, exist_ok=True)
    rows: list[dict] = []

    asc = ASC_TRACKS[:1] if small else ASC_TRACKS
    if os.path.isdir(ASC_DIR) and shutil.which("ffmpeg"):
        os.makedirs(f"{output}/asc", exist_ok=True)
        for name in asc:
            dst = f"asc/{name}.mp3"
            _cut_mp3(f"{ASC_DIR}/{name}.mp3", f"{output}/{dst}", *ASC_EXCERPT)
            title = name.replace("_", " ").title()
            # Title/artist/album are embedded as ID3 tags (not in metadata.csv): they exercise tag reading.
            _tag_mp3(f"{output}/{dst}", title, "Michael Kievernagel", "Advanced Strategic Command")
            rows.append({"file_name": dst, "tags": "game soundtrack, instrumental", "genre": "soundtrack"})
    else:
        _missing("asc-music" if not os.path.isdir(ASC_DIR) else "ffmpeg")

    sonic = SONIC_PI[:2] + SONIC_PI[-1:] if small else SONIC_PI
    if os.path.isdir(SONIC_PI_DIR):
        os.makedirs(f"{output}/sonic_pi", exist_ok=True)
        for name, tags, caption in sonic:
            dst = f"sonic_pi/{name}.flac"
            shutil.copyfile(f"{SONIC_PI_DIR}/{name}.flac", f"{output}/{dst}")
            rows.append({"file_name": dst, "tags": tags, "caption": caption, "artist": "Sonic Pi samples"})
    else:
        _missing("sonic-pi-samples")

    try:
        from immich_memories_music import tracks_dir
        immich = IMMICH[:2] if small else IMMICH
        os.makedirs(f"{output}/immich", exist_ok=True)
        for mood, name, bpm, key, style in immich:
            dst = f"immich/{name}.opus"
            shutil.copyfile(tracks_dir() / mood / f"{name}.opus", f"{output}/{dst}")
            article = "An" if mood[0] in "aeiou" else "A"
            rows.append({"file_name": dst, "mood": mood, "bpm": str(bpm), "key": key, "genre": style,
                         "tags": f"{mood}, {style}, {bpm} bpm, {key}",
                         "caption": f"{article} {mood} {style} piece at {bpm} BPM in {key}."})
    except ImportError:
        print("[make_demo_corpus] PyPI package immich-memories-music is missing; skipping it. "
              "Install it with: pip install immich-memories-music", file=sys.stderr)

    os.makedirs(f"{output}/synth", exist_ok=True)
    for seed, (name, bpm, root, minor, seconds) in enumerate(SYNTH[:1] if small else SYNTH):
        dst = f"synth/{name}.flac"
        sf.write(f"{output}/{dst}", synth_track(seconds, 44_100, 2, bpm=bpm, root=root, minor=minor, seed=seed),
                 44_100, format="FLAC", subtype="PCM_16")
        mode = "minor" if minor else "major"
        rows.append({"file_name": dst, "tags": f"synthesizer, chords, arpeggio, {bpm} bpm, {mode}",
                     "bpm": str(bpm), "genre": "electronic",
                     "caption": f"A synthesized {mode}-key chord progression with an arpeggiated melody at {bpm} BPM."})

    os.makedirs(f"{output}/broken", exist_ok=True)
    open(f"{output}/broken/empty.wav", "wb").close()
    with open(f"{output}/broken/not_audio.mp3", "wb") as f:
        f.write(b"This is a text file with an .mp3 name, not audio.\n" * 40)

    with open(f"{output}/metadata.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for row in sorted(rows, key=lambda r: r["file_name"]):
            writer.writerow({k: row.get(k, "") for k in FIELDS})
    return rows
