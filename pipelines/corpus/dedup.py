"""Exact duplicates across the whole output: one registry actor owns every kept track's content hash."""
from __future__ import annotations


class DedupRegistry:
    """Ray actor: the first track to claim a content hash keeps it; later ones are exact duplicates."""

    def __init__(self, known: dict[str, str]):
        self.owner = dict(known)

    def claim(self, content_hash: str, track_id: str, source_uri: str) -> str | None:
        owner = self.owner.setdefault(content_hash, f"{track_id} {source_uri}")
        return None if owner.split(" ", 1)[0] == track_id else owner.split(" ", 1)[1]
