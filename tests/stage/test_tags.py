"""Tags: signal descriptors on synthetic signals with known tempo/key, metadata, vocabulary, CLAP zero-shot, TagStage."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipelines.corpus import tags
from schemas import constants
from tests.unit.test_tags import A_MINOR, NOISE, SR, chords, click_track, words


def _row(i: int, audio: np.ndarray, metadata: dict, reason: str = "") -> dict:
    return {"clip_id": f"track{i:012d}-00000", "track_id": f"track{i:012d}", "duration_seconds": len(audio) / SR,
            "audio": np.pad(audio, (0, constants.CLIP_SAMPLES - len(audio))).astype(np.float32),
            "mel": np.zeros((constants.MEL_FRAMES, constants.N_MELS), np.float32), "metadata": metadata,
            "reject_reason": reason, "reject_stage": "quality" if reason else "", "reject_detail": ""}


def test_tag_stage_on_ray(ray_local):
    broken = np.full(constants.CLIP_SAMPLES, np.nan, np.float32)   # librosa refuses non-finite audio
    rows = [_row(0, click_track(120, 8.0), {"genre": "Techno", "caption": "a  steady click"}),
            _row(1, chords(A_MINOR), {"mood": "sad"}),
            _row(2, NOISE, {"genre": "noise"}, reason="silent"),
            _row(3, broken, {"genre": "x"})]
    ds = ray_local.data.from_items(rows).map_batches(
        tags.TagStage, fn_constructor_kwargs={"kit_name_or_path": "tiny", "top_k": 2},
        batch_size=4, concurrency=1, num_cpus=0.5).materialize()
    out = {r["clip_id"]: r for r in ds.take_all()}
    first, second, rejected, failed = (out[r["clip_id"]] for r in rows)
    assert "audio" not in first and "mel" not in first
    assert first["caption_original"] == "a steady click" and second["caption_original"] == ""
    sources = [t["source"] for t in first["tags"]]
    assert sources[0] == "metadata" and sources.count("clap") == 2 and "signal" in sources
    assert "120 bpm" in words(first["tags"]) or "121 bpm" in words(first["tags"])
    assert "A minor" in words(second["tags"]) and "sad" in words(second["tags"])
    assert rejected["reject_reason"] == "silent" and rejected["reject_stage"] == "quality" and len(rejected["tags"]) == 0
    assert (failed["reject_reason"], failed["reject_stage"]) == ("tagging_failed", "tags")
    assert "finite" in failed["reject_detail"]

    # Tags survive the Arrow round trip into the caption stage and the mix (steps 4 -> 5 -> 6).
    from pipelines.corpus.captions import CaptionStage, mix_captions

    captioned = ds.map_batches(CaptionStage, fn_constructor_kwargs={"kit_name_or_path": "tiny", "max_new_tokens": 8},
                               batch_size=4, concurrency=1, num_cpus=0.5)
    mixed_ds = captioned.map_batches(mix_captions, batch_size=4, fn_kwargs={"p_original": 1.0}).materialize()
    # ... as native Arrow lists of structs, not Ray's pickled-object fallback
    assert pa.types.is_list(mixed_ds.schema().base_schema.field("tags").type)
    mixed = {r["clip_id"]: r for r in mixed_ds.take_all()}
    first, second = mixed[rows[0]["clip_id"]], mixed[rows[1]["clip_id"]]
    assert (first["caption"], first["caption_source"]) == ("a steady click", "original")
    assert second["caption_source"] == "synthetic" and second["caption"] == second["caption_synthetic"] != ""
    assert mixed[rows[3]["clip_id"]]["reject_stage"] == "tags" and mixed[rows[3]["clip_id"]]["caption"] == ""
