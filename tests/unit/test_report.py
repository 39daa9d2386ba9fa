"""The corpus data card on a real small corpus (prepare_corpus, tiny kit, real audio), opened in real Chromium."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.corpus.report.data import sample_ids
from tests.chromium import CHROMIUM

# User strings that break a page that does not escape them.
EVIL_CAPTION = """<script>alert("x")</script> a calm & 'quoted' melody"""
EVIL_ARTIST = "Ann & <Bob>"
EVIL_LICENCE = 'CC-BY-4.0 "test" <i>'
TONE, TWO = "tone & <one>.flac", "it's \"two\".wav"


def test_the_sample_is_seeded_and_independent_of_row_order():
    ids = [f"t{i:03d}-00000" for i in range(100)]
    first = sample_ids(ids, 12, seed=0)
    assert sample_ids(list(np.random.default_rng(1).permutation(ids)), 12, seed=0) == first
    assert len(set(first)) == 12 and set(sample_ids(ids, 12, seed=1)) != set(first)
    assert sorted(sample_ids(ids[:5], 12, seed=0)) == ids[:5]


chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
