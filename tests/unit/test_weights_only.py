"""Surviving faults: a Ray worker SIGKILLed mid-job, a training worker killed mid-run, the S3 server restarted
mid-write, corrupt Parquet; and the security basics (weights_only loads, manifest escapes, no public dashboard).

Workers are found by their process title (Ray names a busy worker `ray::<task or actor>`), among the
descendants of this test process only, so another session's Ray on the same machine is never touched.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRACK_SECONDS = (21.0, 12.0, 16.0, 6.0)          # 2 clips + tail, 1 + short tail, 1 + padded tail, 1


# ----------------------------------------------------------------------------- helpers


def test_every_torch_load_is_weights_only():
    calls = []
    for path in [*REPO.glob("pipelines/**/*.py"), *REPO.glob("jobs/*.py"), *REPO.glob("model/*.py"),
                 *REPO.glob("schemas/*.py"), *REPO.glob("benchmarks/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load" \
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", safe))
    assert calls, "the checkpoint loader is found"
    assert all(safe for _, safe in calls), [where for where, safe in calls if not safe]
