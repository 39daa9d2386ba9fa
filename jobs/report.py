"""Write the data card of a prepared corpus: OUT/report/index.html, one self-contained page.

    python jobs/report.py --corpus out/demo-corpus
    python jobs/report.py --corpus s3://music/corpus --sample 24 --output /tmp/card

The page shows hours, tracks, clips and splits; the quarantine by stage and reason with examples; the ignored
inputs (when the manifest records them); histograms of clip duration, loudness, T5 length and caption length;
the tag vocabulary by source; the caption mix against its target; the latent statistics against the VAE's
scaling factor; a seeded sample of clips with caption, tags, mel spectrogram and audio; the sources'
attribution; and the kit's models. Charts are embedded; the sampled clips' mel PNGs and WAVs lie beside it.
Only small columns are read for the whole corpus; tensors and audio only for the sampled clips.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jobs.cli import run_job  # noqa: E402
from pipelines.corpus.check import require_corpus  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", required=True, metavar="OUT",
                   help="the prepare_corpus output: a folder or s3:// prefix holding corpus/, quarantine/, manifest.json")
    p.add_argument("--output", default=None, metavar="DIR",
                   help="where the page and its files go, folder or s3:// prefix (default: OUT/report)")
    p.add_argument("--sample", type=int, default=12,
                   help="clips shown with audio and spectrogram (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the clip sample (default: %(default)s)")
    a = p.parse_args(argv)
    require_corpus(a.corpus, "--corpus")
    from pipelines.corpus.report import write_report

    print(f"report: {write_report(a.corpus, a.output, sample=a.sample, seed=a.seed)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
