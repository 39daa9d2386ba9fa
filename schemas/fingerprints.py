"""pyarrow schema of the `fingerprints` table: one Chromaprint fingerprint per kept track (docs/quality.md)."""
from __future__ import annotations

import pyarrow as pa

from schemas.tables import _schema

# One row per track, in the order the tracks were kept (row order is the near-duplicate index's insertion order).
FINGERPRINTS = _schema("fingerprints", [
    pa.field("track_id", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("fingerprint", pa.list_(pa.uint32()), nullable=False),  # raw Chromaprint sub-fingerprints, ~8.07 / s
])
