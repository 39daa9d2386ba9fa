"""Build a small corpus of real music for the quick start and tests (34 clips; --small 13).

    python jobs/make_demo_corpus.py --output demo [--small]

What it holds and where it comes from: pipelines/corpus/demo.py.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere

import argparse  # noqa: E402

from jobs.cli import run_job  # noqa: E402
from pipelines.corpus.demo import build  # noqa: E402
from pipelines.errors import UserPathError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="folder to write the corpus into")
    parser.add_argument("--small", action="store_true", help="a smaller corpus for tests (13 clips)")
    args = parser.parse_args(argv)
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UserPathError(f"--output {args.output} is a file; give a folder (created if missing)")
    parent = os.path.dirname(os.path.abspath(args.output))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.access(parent if not os.path.isdir(args.output) else args.output, os.W_OK):
        raise UserPathError(f"--output {args.output} cannot be written (permissions); give a folder you can write")
    rows = build(args.output, args.small)
    print(f"[make_demo_corpus] wrote {len(rows)} tracks + 2 broken files and metadata.csv to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
