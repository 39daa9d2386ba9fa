"""The corpus data card: OUT/report/index.html, a self-contained page about a corpus (docs/corpus.md, "Report")."""
from __future__ import annotations

import io
import json
import re

import numpy as np
import soundfile as sf

from pipelines import storage
from pipelines.errors import UserPathError
from pipelines.corpus.report.data import ReportData, read_report_data
from pipelines.corpus.report.page import TAG_SOURCES, TOP_TAGS, render
from schemas import constants

REPORT_DIR = "report"

__all__ = ["write_report", "read_report_data", "charts_of", "own_files", "REPORT_DIR", "MARKER"]


def charts_of(d: ReportData) -> dict[str, bytes]:
    """Every chart of the page as PNG bytes, by the key page.render expects."""
    from pipelines.corpus.report import plots

    stage_colors = {}
    palette = ["#3465a4", "#cc0000", "#73d216", "#f57900", "#75507b", "#c17d11", "#555753", "#06989a"]
    keys = list(d.quarantine_counts)
    for stage, _ in keys:
        stage_colors.setdefault(stage, palette[len(stage_colors) % len(palette)])
    charts = {
        "quarantine": plots.bars([f"{s} / {r}" for s, r in keys], list(d.quarantine_counts.values()),
                                 "rows (colour: stage)", colors=[stage_colors[s] for s, _ in keys]),
        "duration": plots.histogram(d.durations, "clip duration (s), every clip"),
        "loudness": plots.histogram(d.loudness, d.loudness_label, bins=20),
        "t5": plots.histogram(d.t5_lengths, "T5 length (tokens), every clip"),
        "caption": plots.histogram(d.caption_lengths, "caption length (characters), every clip"),
    }
    for source, counter in d.tags_by_source.items():
        top = counter.most_common(TOP_TAGS)
        charts["tags:" + source] = plots.bars([t for t, _ in top], [c for _, c in top],
                                              f"clips, {TAG_SOURCES.get(source, source)}")
    total = sum(d.caption_sources.values())
    charts["mix"] = plots.mix_chart(d.caption_sources.get("original", 0) / total if total else 0.0,
                                    d.manifest.get("caption_mix", {}).get("target_original_probability"))
    stats = d.manifest.get("latent_stats", {})
    values = (np.concatenate([s.latent_mean.ravel() for s in d.samples if s.latent_mean is not None])
              if any(s.latent_mean is not None for s in d.samples) else np.zeros(0))
    lines = {}
    if "mean" in stats and "std" in stats:
        lines = {"corpus mean": stats["mean"], "mean - std": stats["mean"] - stats["std"],
                 "mean + std": stats["mean"] + stats["std"]}
    if d.manifest.get("vae_scaling_factor"):
        lines["1 / scaling factor"] = 1.0 / d.manifest["vae_scaling_factor"]   # the std a well-scaled latent has
    charts["latent"] = plots.histogram(values, "latent_mean values of the sampled clips (unscaled)", bins=60, lines=lines)
    return charts


def _wav(audio: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, np.clip(audio, -1.0, 1.0), constants.SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def _mel_png(audio: np.ndarray) -> bytes:
    from pipelines.corpus.audio import clips_to_log_mel
    from pipelines.corpus.report.plots import mel_image

    clip = np.zeros(constants.CLIP_SAMPLES, np.float32)
    n = min(len(audio), constants.CLIP_SAMPLES)
    clip[:n] = audio[:n]
    return mel_image(clips_to_log_mel(clip[None], lengths=np.array([n]))[0])


MARKER = "report-files.json"      # the sample files a report wrote into its folder: the only ones it ever deletes
_OWN_FILE = re.compile(r"(mel/[^/]+\.png|audio/[^/]+\.wav)")   # what a report writes; nothing else is deleted


def own_files(out_uri: str) -> list[str] | None:
    """The files (relative paths) the last report listed in out_uri's marker; None when there is no marker.
    Entries that are not a report's sample file names are dropped, so an edited marker cannot delete others."""
    uri = storage.join(out_uri, MARKER)
    if not storage.exists(uri):
        return None
    try:
        listed = json.loads(storage.read_bytes(uri))["files"]
    except (ValueError, KeyError, TypeError):
        return []
    return [f for f in listed if isinstance(f, str) and _OWN_FILE.fullmatch(f)] if isinstance(listed, list) else []


def _write_marker(out_uri: str, files: list[str]) -> None:
    body = {"written_by": "jobs/report.py (pipelines/corpus/report)", "files": sorted(set(files))}
    storage.write_bytes_atomic(storage.join(out_uri, MARKER), json.dumps(body, indent=1).encode())


def write_report(corpus_uri: str, out_uri: str | None = None, *, sample: int = 12, seed: int = 0) -> str:
    """Write the data card of the corpus at corpus_uri (local or s3://) to out_uri (default OUT/report/):
    index.html with the charts embedded, and mel/<clip>.png and audio/<clip>.wav of the sampled clips beside it.
    Returns the page's URI.

    A report deletes only the sample files an earlier report listed in out_uri's MARKER (an earlier sample's files
    would linger); anything else in the folder is never touched. An out_uri other than the corpus's own report
    folder that holds an index.html but no marker is refused: that page is not a report's."""
    default = storage.join(corpus_uri, REPORT_DIR)
    out_uri = out_uri or default
    previous = own_files(out_uri)
    if previous is None and out_uri != default and storage.exists(storage.join(out_uri, "index.html")):
        raise UserPathError(f"{out_uri} holds an index.html that no report wrote (no {MARKER}); a report would "
                            "overwrite it: give --output an empty or new folder, or an earlier report's")
    d = read_report_data(corpus_uri, sample=sample, seed=seed)
    mel_files, audio_files = {}, {}
    for s in d.samples:
        if s.audio is not None:
            mel_files[s.clip_id] = f"mel/{s.clip_id}.png"
            audio_files[s.clip_id] = f"audio/{s.clip_id}.wav"
    written = [*mel_files.values(), *audio_files.values()]
    _write_marker(out_uri, [*(previous or []), *written])     # listed before they exist: a crash orphans nothing
    for s in d.samples:
        if s.audio is not None:
            storage.write_bytes_atomic(storage.join(out_uri, mel_files[s.clip_id]), _mel_png(s.audio))
            storage.write_bytes_atomic(storage.join(out_uri, audio_files[s.clip_id]), _wav(s.audio))
    page = storage.join(out_uri, "index.html")
    storage.write_bytes_atomic(page, render(d, charts_of(d), mel_files, audio_files).encode("utf-8"))
    for stale in sorted(set(previous or []) - set(written)):
        if storage.exists(storage.join(out_uri, stale)):
            storage.delete(storage.join(out_uri, stale))
    _write_marker(out_uri, written)
    return page
