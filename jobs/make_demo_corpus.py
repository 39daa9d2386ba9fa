"""Build a small corpus of real music for the quick start and tests (34 clips; --small 13).

    python jobs/make_demo_corpus.py --output demo [--small]

What it holds and where it comes from: pipelines/corpus/demo.py.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run as a script from anywhere

import argparse  # noqa: E402

from pipelines.corpus.demo import build  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="folder to write the corpus into")
    parser.add_argument("--small", action="store_true", help="a smaller corpus for tests (13 clips)")
    args = parser.parse_args(argv)
    rows = build(args.output, args.small)
    print(f"[make_demo_corpus] wrote {len(rows)} tracks + 2 broken files and metadata.csv to {args.output}")


if __name__ == "__main__":
    main()
