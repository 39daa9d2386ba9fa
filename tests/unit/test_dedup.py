"""Duplicate tracks: the kept copy follows the documented rule, whatever the order of claims, across runs and restarts."""
from __future__ import annotations

from pipelines.corpus import dedup


def test_plan_keeps_an_earlier_runs_copy_then_the_smallest_uri():
    hashed = [{"content_hash": "h1", "track_id": "t-b", "source_uri": "/m/b.flac"},
              {"content_hash": "h1", "track_id": "t-a", "source_uri": "/m/a.flac"},
              {"content_hash": "h2", "track_id": "t-c", "source_uri": "/m/c.flac"}]
    assert dedup.plan_owners({}, hashed) == {"h1": {"track_id": "t-a", "source_uri": "/m/a.flac"},
                                             "h2": {"track_id": "t-c", "source_uri": "/m/c.flac"}}
    # h1 was kept by an earlier run's track t-old: this run's smaller URI does not take it over.
    assert dedup.plan_owners({"h1": "t-old"}, hashed)["h1"] == {"track_id": "t-old", "source_uri": ""}
    assert dedup.plan_owners({}, list(reversed(hashed))) == dedup.plan_owners({}, hashed)
