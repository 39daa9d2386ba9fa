r"""Find corpus tracks that are the same recording as a track of an evaluation set (docs/quality.md).

    python jobs/check_overlap.py --corpus out/corpus --eval eval/musiccaps-audio/
    python jobs/check_overlap.py --corpus s3://bucket/corpus --eval eval/manifest.csv --exclude

The evaluation set is a folder of audio, an s3:// prefix or a manifest (as prepare_corpus --input). Corpus
fingerprints come from OUT/fingerprints/*.parquet, or are computed from the corpus tables' source_uri when that
table is absent. Writes OUT/overlap/report.json (every match: evaluation file, corpus track, score, offset);
--exclude also writes OUT/overlap/exclude_track_ids.txt, the matching corpus track ids, which jobs/train.py then
leaves out (unless --no-exclude-overlap).
Exits 1 when any corpus track matches, so CI can fail on leakage.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs.cli import run_job  # noqa: E402
from pipelines.corpus.check import check_inputs, require_corpus  # noqa: E402
from pipelines.corpus.fingerprint import MATCH_THRESHOLD  # noqa: E402
from pipelines.corpus.overlap import check_overlap  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, help="a prepare_corpus output folder or s3:// prefix")
    p.add_argument("--eval", action="append", required=True, metavar="FOLDER_OR_MANIFEST",
                   help="the evaluation set: folder, s3:// prefix, audio file or manifest. Repeatable.")
    p.add_argument("--exclude", action="store_true",
                   help="also write OUT/overlap/exclude_track_ids.txt (one corpus track id per line)")
    p.add_argument("--threshold", type=float, default=MATCH_THRESHOLD,
                   help="bit agreement at which two tracks are the same recording (default: %(default)s)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_corpus(args.corpus, "--corpus")
    check_inputs(args.eval, "--eval")
    report = check_overlap(args.corpus, args.eval, exclude=args.exclude, threshold=args.threshold)
    for m in report["matches"]:
        print(f"{m['score']:.3f}  {m['eval_source_uri']}  ~  {m['corpus_source_uri']} ({m['corpus_track_id']}, "
              f"offset {m['offset_seconds']:+.1f} s)")
    print(f"{report['corpus_tracks_matched']} of {report['corpus_tracks']} corpus tracks match "
          f"{report['eval_tracks_matched']} of {report['eval_tracks']} evaluation tracks "
          f"(corpus fingerprints: {report['corpus_fingerprints']}); report in {args.corpus}/overlap/report.json")
    return 1 if report["matches"] else 0


if __name__ == "__main__":
    sys.exit(run_job(main))
