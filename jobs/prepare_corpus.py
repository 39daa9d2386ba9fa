"""Build a FluxMusic training corpus from a music folder, an s3:// prefix or a manifest.

    python jobs/prepare_corpus.py --input demo/ --output out/corpus-demo
    ray job submit --working-dir . -- python jobs/prepare_corpus.py --input s3://music/raw --output s3://music/corpus --kit paper

Writes OUTPUT/corpus/*.parquet (shards of ~1,000 rows, one row per 10.24 s clip: VAE posterior, tags, captions,
T5 + CLAP embeddings), OUTPUT/quarantine/*.parquet (every input or clip that was rejected, with stage and reason),
OUTPUT/index/*.parquet (one small entry per shard: what resume, the manifest and training read),
OUTPUT/null_text/null_text.parquet (the empty-caption embeddings), OUTPUT/fingerprints/*.parquet (Chromaprint
fingerprints of the kept tracks, for the near-duplicate stage of later runs) and OUTPUT/manifest.json (the account).
Re-running on the same OUTPUT skips what is complete and adds new inputs.

Two plans run the stages (--plan): "staged", a Ray Data operator per stage with its own resources (--stage-resources,
--resources; GPU clusters), and "fused", a pool of 1-CPU actors each taking whole tracks through every stage (CPU-only
runs). The default, auto, is staged when the cluster has GPUs (the model stages share them), when the kit is not a CPU
kit (paper: one actor per model stage), when a stage resource is declared or captions use vLLM; fused otherwise
(tiny or cpu-real on CPUs). The job's first lines say which plan and placement it chose (docs/architecture.md).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pipelines.corpus import config as corpus_config  # noqa: E402
from pipelines.corpus import loudness  # noqa: E402
from jobs.cli import run_job  # noqa: E402
from pipelines.corpus.account import format_account  # noqa: E402
from pipelines.corpus.check import check_inputs  # noqa: E402
from pipelines.corpus.config import CorpusConfig, load_stage_resources, parse_stage_resources  # noqa: E402
from pipelines.corpus.failures import RunFailed  # noqa: E402
from pipelines.corpus.pipeline import prepare_corpus  # noqa: E402
from pipelines.corpus.placement import check_plan  # noqa: E402
from pipelines.corpus.report import write_report  # noqa: E402
from schemas import constants  # noqa: E402


def parse_args(argv: list[str] | None = None) -> CorpusConfig:
    defaults = CorpusConfig(inputs=[], output="")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", action="append", required=True, metavar="PATH",
                   help="a local folder, an s3:// prefix, or a manifest (.csv/.jsonl/.parquet with a file_name/path "
                        "column and optional caption/tags/title/artist/genre columns). Repeatable.")
    p.add_argument("--output", required=True, help="output folder or s3:// prefix (created; re-runs resume into it)")
    p.add_argument("--kit", default=defaults.kit,
                   help="model kit: a name in pipelines/models/kits/ (tiny, paper, cpu-real) or a path to a kit YAML (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="process at most this many inputs (in sorted order)")
    p.add_argument("--min-clip-seconds", type=float, default=defaults.min_clip_seconds,
                   help="a track's last piece shorter than this is dropped (and counted); a longer one is zero-padded "
                        f"to {constants.CLIP_SECONDS} s (default: %(default)s)")
    p.add_argument("--silence-dbfs", type=float, default=defaults.silence_dbfs,
                   help="clips whose RMS is below this level are rejected as silent (default: %(default)s)")
    p.add_argument("--min-lufs", type=float, default=defaults.min_lufs,
                   help="clips whose integrated loudness (EBU R128, before normalisation) is below this are "
                        "rejected as too_quiet (default: %(default)s; docs/quality.md)")
    p.add_argument("--max-clipped-fraction", type=float, default=defaults.max_clipped_fraction,
                   help=f"clips with more than this fraction of samples at |x| >= {loudness.CLIP_LEVEL} full scale are "
                        "rejected as clipped (default: %(default)s)")
    p.add_argument("--normalise-loudness", type=float, default=defaults.normalise_loudness, metavar="LUFS",
                   help="normalise each clip to this integrated loudness (peak at most 1.0) before the mel, instead "
                        "of the paper's peak of 0.5; off by default (docs/quality.md)")
    p.add_argument("--near-duplicate-threshold", type=float, default=defaults.near_duplicate_threshold,
                   help="Chromaprint bit agreement at or above which a track is the same recording as a kept one "
                        "(quarantined near_duplicate; 0 turns the stage off; default: %(default)s, the middle of the "
                        "measured gap, docs/quality.md)")
    p.add_argument("--no-near-duplicates", action="store_true",
                   help="no near-duplicate stage (no fingerprints are computed or written); same as --near-duplicate-threshold 0")
    p.add_argument("--valid-fraction", type=float, default=defaults.valid_fraction,
                   help="fraction of tracks (by track, deterministic) in the valid split (default: %(default)s)")
    p.add_argument("--original-caption-probability", type=float, default=defaults.original_caption_probability,
                   help="probability of training on a clip's original caption when it has one; otherwise the "
                        "LLM-written caption (the paper's 20/80 mix; default: %(default)s)")
    p.add_argument("--caption-backend", choices=["transformers", "vllm"], default=defaults.caption_backend,
                   help="LLM back end for captions: transformers (CPU or GPU) or vllm (GPU clusters; default: %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of every random choice (captions, mix; default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="clips per batch in each stage (default: %(default)s)")
    p.add_argument("--actors-per-stage", type=int, default=defaults.actors_per_stage,
                   help="actor-pool size of each model stage (VAE, tags, captions, text encoders; default: %(default)s)")
    p.add_argument("--gpus-per-actor", type=float, default=defaults.gpus_per_actor,
                   help="GPUs per model-stage actor; 0 runs the models on CPU (default: the cluster's GPUs shared out "
                        "among the model stages, none without GPUs)")
    p.add_argument("--cpus-per-actor", type=float, default=defaults.cpus_per_actor,
                   help="CPUs reserved per model-stage actor (fractional on small machines; default: %(default)s)")
    p.add_argument("--writers", type=int, default=2,
                   help="writer actors, each filling its own shards (default: %(default)s; or --stage-resources writer=actors:N)")
    p.add_argument("--shard-rows", type=int, default=corpus_config.SHARD_ROWS,
                   help="a corpus shard is committed at this many rows ... (default: %(default)s)")
    p.add_argument("--shard-mb", type=float, default=corpus_config.SHARD_BYTES / 2**20,
                   help="... or at this many MiB of Arrow data, whichever comes first (default: %(default)s)")
    p.add_argument("--row-group-rows", type=int, default=corpus_config.ROW_GROUP_ROWS,
                   help="Parquet row group size of the shards (default: %(default)s)")
    p.add_argument("--plan", choices=corpus_config.PLANS, default=defaults.plan,
                   help="staged: an operator per stage with its own resources; fused: actors that each take a track "
                        "through every stage (CPU kits only); auto: staged with GPUs in the cluster, a kit that is not "
                        "a CPU kit, declared stage resources or vLLM, fused otherwise (default: %(default)s)")
    p.add_argument("--fused-actors", type=int, default=defaults.fused_actors, metavar="N",
                   help="actors of the fused plan, 1 CPU each (default: one per CPU Ray has beside the writers, at most "
                        "one per core on a one-node Ray)")
    p.add_argument("--stage-resources", action="append", default=[], metavar="STAGE=KEY:VALUE,...",
                   help="resources of one stage, e.g. vae=gpus:1,actors:8,corpus_gpu:0.01 (keys cpus, gpus, actors, "
                        "memory; any other key is a custom Ray resource). Stages: " + ", ".join(corpus_config.STAGES)
                        + ". Repeatable; wins over --resources")
    p.add_argument("--resources", metavar="FILE", default=None,
                   help="YAML/JSON {stage: {cpus, gpus, actors, memory, resources: {name: amount}}}; "
                        "corpus_resources.yaml is the one for ray_cluster.yaml")
    a = p.parse_args(argv)
    stages: dict[str, dict] = {}
    try:
        if a.resources:
            with open(a.resources) as f:
                stages = load_stage_resources(f.read())
        for stage, fields in parse_stage_resources(a.stage_resources).items():
            merged = {**stages.get(stage, {}), **fields}
            if "resources" in fields and "resources" in stages.get(stage, {}):
                merged["resources"] = {**stages[stage]["resources"], **fields["resources"]}
            stages[stage] = merged
    except OSError as error:
        p.error(f"--resources {a.resources}: {error.strerror or error}")
    except ValueError as error:         # both parse flag values only
        p.error(str(error))
    config = CorpusConfig(inputs=a.input, output=a.output, kit=a.kit, limit=a.limit, min_clip_seconds=a.min_clip_seconds,
                        silence_dbfs=a.silence_dbfs, valid_fraction=a.valid_fraction, min_lufs=a.min_lufs,
                        max_clipped_fraction=a.max_clipped_fraction, normalise_loudness=a.normalise_loudness,
                        near_duplicate_threshold=0.0 if a.no_near_duplicates else a.near_duplicate_threshold,
                        original_caption_probability=a.original_caption_probability,
                        caption_backend=a.caption_backend, seed=a.seed, batch_size=a.batch_size,
                        actors_per_stage=a.actors_per_stage, gpus_per_actor=a.gpus_per_actor,
                        cpus_per_actor=a.cpus_per_actor, writers=a.writers, shard_rows=a.shard_rows,
                        shard_bytes=int(a.shard_mb * 2**20), row_group_rows=a.row_group_rows, stage_resources=stages,
                        plan=a.plan, fused_actors=a.fused_actors)
    try:
        check_plan(config)
    except ValueError as error:
        p.error(str(error))
    return config


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    from pipelines.models.kits import load_kit
    from pipelines.raylocal import init_local_ray

    os.environ.setdefault("HF_HUB_OFFLINE", "1")   # never download models implicitly (README, "Models")
    check_inputs(config.inputs)                    # a missing input, kit or model fails now, before Ray starts
    load_kit(config.kit).check()
    init_local_ray()
    try:
        manifest = prepare_corpus(config)
    except RunFailed as failure:      # a stage of ours failed on most clips: what was done is stored
        print(f"error: {failure}", file=sys.stderr)
        return 1
    print("\n" + format_account(manifest))
    print(f"\nmanifest: {config.output.rstrip('/')}/manifest.json")
    try:        # the corpus is complete either way: a failed data card is reported, not fatal
        print(f"report:   {write_report(config.output)}")
    except Exception as error:  # noqa: BLE001
        print(f"report:   not written ({type(error).__name__}: {error}); retry with jobs/report.py", file=sys.stderr)
    counts = manifest["counts"]
    if counts["inputs"] and not counts["clips"]:
        print(f"error: {counts['inputs']} inputs, but the corpus holds no clip (quarantined: {counts['quarantined']}); "
              "see the account above and quarantine/", file=sys.stderr)
        return 1
    if manifest["counts"]["incomplete_tracks"]:
        print(json.dumps(manifest["incomplete"], indent=1), file=sys.stderr)
        print("some inputs are not fully accounted for: re-run the same command to complete them", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_job(main))
