"""One prepared GPU check, under 8 minutes on one H200: training-step MFU, VAE and T5 throughput, SDPA backends.

    PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out $OUT/gpu_check.json   # on the GPU machine
    python benchmarks/gpu_check.py --dry-run                                        # tiny sizes, CPU, seconds

Parts, in the order they run (a global time guard skips what would pass --budget-s, default 420 s):
  sdpa     the SDPA backend chosen for FluxMusic-base attention shapes, unmasked and with padded text
  train    bf16-autocast forward + backward + fused AdamW step of FluxMusic small, base, large, eager,
           text unmasked (no attention mask) and masked (padded rows); MFU = batch x 3 x
           model_flops_per_sample / step time / peak (989e12, H200 dense bf16)
  vae      real-size AudioLDM2 VAE encode (random weights from the spec §2 config) clips/s, fp32 (TF32) and bf16;
           needs diffusers, which the GPU machine lacks: carry its wheel (docs/benchmarks.md)
  t5       real-size T5 v1.1 XXL-shaped encoder (random weights, bf16) tokens/s at 256 tokens
  kit      the corpus job's model stages through a kit's own loaders, tokenizers and encoder classes
           (default the paper-shaped kit: the paper's configs and file layouts, random weights, built on the
           machine in ~1 min, so no hub is needed): VAE encode, CLAP audio + text, T5 encode, clips or captions/s
  compile  the train part again with compile_blocks (torch.compile per block), last: compiling is the slow part
  captions the transformers caption back end on the device (review D1: its sampler's generators must live
           beside the scores): the tiny kit's LLM, built here, one batch of 8 clips' chats, per-clip seeds
Only torch and transformers (+ diffusers if present) are imported: the GPU machine has no ray. The kit part
also needs diffusers, sentencepiece and soxr (carried wheels, docs/benchmarks.md) and PyYAML.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import (build_model, compile_blocks, count_parameters, model_flops_per_sample,  # noqa: E402
                   rectified_flow_loss)
from model.layers import sdpa_backend  # noqa: E402
from pipelines.training.optim import build_optimizer  # noqa: E402

PEAK_BF16_FLOPS = 989e12      # H200 SXM dense bf16 (datasheet; KINDS.md measured ~790e12 on an 8192^3 matmul)
# AudioLDM2 `vae/config.json` (spec §2); the same dict as benchmarks/corpus_stages.REAL_VAE_CONFIG (a test checks).
# Not imported from there: that module pulls in the corpus pipeline, which the GPU machine cannot import.
VAE_CONFIG = dict(in_channels=1, out_channels=1, latent_channels=8, block_out_channels=(128, 256, 512),
                  down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
                  layers_per_block=2, norm_num_groups=32, act_fn="silu", sample_size=1024,
                  scaling_factor=0.4110932946205139)
VAE_ENCODE_FLOPS_PER_CLIP = 345e9   # spec §7.3, one 1x1024x64 mel
# T5 v1.1 XXL (spec §3): the SD3 text_encoder_3 shapes
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, pad_token_id=0, eos_token_id=1,
              decoder_start_token_id=0, tie_word_embeddings=False)


@dataclass
class Plan:
    """Every size the check uses: the real one for the GPU, a tiny one for --dry-run on CPU."""
    device: str
    train_batches: dict[str, int]          # FluxMusic size -> batch
    txt_len: int
    latent: tuple[int, int, int]
    context_dim: int
    vec_dim: int
    warmup: int
    steps: int
    compile_kwargs: dict
    vae_config: dict
    vae_batch: int
    mel: tuple[int, int]
    t5_config: dict
    t5_batch: int
    t5_tokens: int
    reps: int
    kit: str = "paper-shaped"              # the kit part's kit (a name or a kit YAML path)
    kit_batch: int = 16                    # clips or captions per batch in the kit part
    estimates_s: dict[str, float] = field(default_factory=dict)   # first guess of one item's cost, per part


FULL = Plan(device="cuda", train_batches={"base": 8, "large": 8, "small": 16}, txt_len=256, latent=(8, 256, 16),
            context_dim=4096, vec_dim=768, warmup=3, steps=8, compile_kwargs={}, vae_config=VAE_CONFIG, vae_batch=16,
            mel=(1024, 64), t5_config=T5_XXL, t5_batch=32, t5_tokens=256, reps=5,
            estimates_s={"train": 25.0, "vae": 40.0, "t5": 60.0, "kit": 120.0, "compile": 100.0})

DRY = Plan(device="cpu", train_batches={"tiny": 1}, txt_len=16, latent=(8, 16, 16), context_dim=32, vec_dim=16,
           warmup=1, steps=1, compile_kwargs={"backend": "eager"},   # dynamo only: inductor on CPU takes minutes
           vae_config=dict(VAE_CONFIG, block_out_channels=(8, 16, 16), layers_per_block=1, norm_num_groups=4),
           vae_batch=1, mel=(64, 64),
           t5_config=dict(T5_XXL, vocab_size=100, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                          relative_attention_num_buckets=8),
           t5_batch=2, t5_tokens=16, reps=1, kit="tiny", kit_batch=2,
           estimates_s={"train": 1.0, "vae": 1.0, "t5": 1.0, "kit": 5.0, "compile": 2.0})


class Budget:
    """Wall-clock guard: an item runs only if its estimated cost still fits before the limit."""

    def __init__(self, limit_s: float):
        self.start, self.limit_s = time.perf_counter(), limit_s
        self.measured: dict[str, float] = {}      # part -> slowest item so far, a better guess than the default

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def fits(self, part: str, default_s: float) -> bool:
        return self.elapsed() + max(default_s, self.measured.get(part, 0.0)) <= self.limit_s

    def record(self, part: str, seconds: float) -> None:
        self.measured[part] = max(seconds, self.measured.get(part, 0.0))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None


def padded_mask(batch: int, length: int, device: torch.device) -> torch.Tensor:
    """Text mask with real lengths spread over [length/8, length]: a padded batch (the last row always is)."""
    g = torch.Generator().manual_seed(0)
    real = torch.randint(max(1, length // 8), length + 1, (batch,), generator=g)
    if batch > 1:
        real[0] = length
    real[-1] = max(1, length // 4)        # at least one padded row, whatever the draw
    return (torch.arange(length)[None] < real[:, None]).to(device)


# ---------------------------------------------------------------- parts

def sdpa_part(plan: Plan, device: torch.device) -> dict:
    """Backend for base-shaped attention ([B, 12, 1280, 64]) in bf16 (CUDA) or fp32 (CPU), with and without mask."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    batch, heads, head_dim = 2, 12, 64
    length = plan.txt_len + plan.latent[1] * plan.latent[2] // 4
    q, k, v = (torch.randn(batch, heads, length, head_dim, device=device, dtype=dtype) for _ in range(3))
    text = padded_mask(batch, plan.txt_len, device)
    music = torch.ones(batch, length - plan.txt_len, dtype=torch.bool, device=device)
    mask = torch.cat((text, music), dim=1)[:, None, None, :]    # as model.flux.joint_key_mask builds it
    result = {"shape": list(q.shape), "dtype": str(dtype).removeprefix("torch."),
              "unmasked": sdpa_backend(q, k, v, None), "masked": sdpa_backend(q, k, v, mask)}
    if device.type == "cuda":
        result["unmasked_kernels"] = attention_kernels(q, k, v, None)
        result["masked_kernels"] = attention_kernels(q, k, v, mask)
    return result


def attention_kernels(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> list[str]:
    """CUDA kernel names of one unrestricted SDPA call (the profiler's view: what really ran)."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with torch.no_grad(), profile(activities=[ProfilerActivity.CUDA]) as prof:
            torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            torch.cuda.synchronize()
        names = {e.key for e in prof.key_averages()}
    except Exception as error:          # the profiler is a nicety here: never let it sink the check
        return [f"profiler failed: {error!r}"[:200]]
    return sorted(names, key=len)[:4]


def train_item(plan: Plan, device: torch.device, size: str, batch: int, masked: bool, compiled: bool,
               peak_flops: float) -> dict:
    torch.manual_seed(0)
    # built on the device: initialising 840 M parameters on the host CPU would cost seconds of the lease
    model = build_model(size, context_in_dim=plan.context_dim, vec_in_dim=plan.vec_dim, device=device).train()
    if compiled:
        torch._dynamo.reset()       # fresh static-shape graphs for this size (no automatic dynamic shapes)
        compile_blocks(model, **plan.compile_kwargs)
    optimizer = build_optimizer(model.parameters(), lr=1e-4, weight_decay=0.0, device_type=device.type)
    x0 = torch.randn(batch, *plan.latent, device=device)
    mask = (padded_mask(batch, plan.txt_len, device) if masked
            else torch.ones(batch, plan.txt_len, dtype=torch.bool, device=device))
    cond = {"txt": torch.randn(batch, plan.txt_len, plan.context_dim, device=device), "txt_mask": mask,
            "y": torch.randn(batch, plan.vec_dim, device=device)}

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss, _ = rectified_flow_loss(model, x0, cond)
        optimizer.zero_grad(set_to_none=True)
        loss.mean().backward()
        optimizer.step()

    first = time.perf_counter()
    for _ in range(plan.warmup):          # the first compiled step compiles forward and backward
        step()
    synchronize(device)
    warmup_s = time.perf_counter() - first
    start = time.perf_counter()
    for _ in range(plan.steps):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - start) / plan.steps
    img_len = plan.latent[1] * plan.latent[2] // 4
    flops = 3 * model_flops_per_sample(model.params, txt_len=plan.txt_len, img_len=img_len)
    return {"size": size, "params": count_parameters(model), "batch": batch, "masked": masked,
            "compiled": compiled, "real_text_fraction": round(mask.float().mean().item(), 3),
            "warmup_s": round(warmup_s, 2), "seconds_per_step": round(seconds, 4),
            "samples_per_s": round(batch / seconds, 2), "achieved_tflops": round(batch * flops / seconds / 1e12, 2),
            "mfu": round(batch * flops / seconds / peak_flops, 4), "peak_memory_gib": peak_gib(device)}


def train_part(plan: Plan, device: torch.device, budget: Budget, compiled: bool, peak_flops: float,
               notes: list[str]) -> list[dict]:
    part = "compile" if compiled else "train"
    results = []
    for size, batch in plan.train_batches.items():
        for masked in (False, True):
            label = f"{part} {size} {'masked' if masked else 'unmasked'}"
            if not budget.fits(part, plan.estimates_s[part]):
                notes.append(f"skipped {label}: would pass the {budget.limit_s:.0f} s budget "
                             f"(at {budget.elapsed():.0f} s)")
                print(notes[-1], flush=True)
                continue
            start = time.perf_counter()
            item_batch = batch
            while True:
                try:
                    result = train_item(plan, device, size, item_batch, masked, compiled, peak_flops)
                    break
                except torch.cuda.OutOfMemoryError:
                    free_memory(device)
                    if item_batch == 1 or not budget.fits(part, plan.estimates_s[part]):
                        result = {"size": size, "masked": masked, "compiled": compiled,
                                  "error": f"out of memory at batch {item_batch}"}
                        break
                    notes.append(f"{label}: out of memory at batch {item_batch}, retried at {item_batch // 2}")
                    item_batch //= 2
                except Exception as error:    # one broken item must not cost the others their device time
                    traceback.print_exc()
                    result = {"size": size, "masked": masked, "compiled": compiled, "error": repr(error)[:500]}
                    break
            budget.record(part, time.perf_counter() - start)
            results.append(result)
            print(label, json.dumps(result), flush=True)
            free_memory(device)
    return results


def time_calls(call: Callable[[], object], device: torch.device, warmup: int, reps: int) -> float:
    """Mean seconds per call after warmup calls, device synchronised."""
    for _ in range(warmup):
        call()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        call()
    synchronize(device)
    return (time.perf_counter() - start) / reps


def vae_part(plan: Plan, device: torch.device, budget: Budget, notes: list[str]) -> dict:
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        return {"skipped": "diffusers is not installed here: carry its wheel "
                           "(docs/benchmarks.md, 'GPU check'), then pip install --no-deps .gpu_wheels/*.whl"}
    import diffusers

    diffusers.logging.set_verbosity_error()    # its note on casting with .to(dtype) does not apply to encode
    torch.manual_seed(0)
    vae = AutoencoderKL(**plan.vae_config).to(device).eval()
    result = {"diffusers": diffusers.__version__, "batch": plan.vae_batch, "mel": list(plan.mel),
              "encoder_params": count_parameters(vae.encoder) + count_parameters(vae.quant_conv)}
    for dtype in (torch.float32, torch.bfloat16):
        name = str(dtype).removeprefix("torch.")
        if not budget.fits("vae", plan.estimates_s["vae"] / 2):
            notes.append(f"skipped vae {name}: would pass the budget")
            continue
        vae.to(dtype)
        mel = torch.randn(plan.vae_batch, 1, *plan.mel, device=device, dtype=dtype)
        with torch.inference_mode():
            seconds = time_calls(lambda: vae.encode(mel).latent_dist.sample(), device, 1, plan.reps)
        clips_per_s = plan.vae_batch / seconds
        real_size = plan.vae_config is VAE_CONFIG and plan.mel == (1024, 64)   # the spec's FLOPs fit only it
        result[name] = {"seconds_per_batch": round(seconds, 4), "clips_per_s": round(clips_per_s, 2),
                        "achieved_tflops": (round(clips_per_s * VAE_ENCODE_FLOPS_PER_CLIP / 1e12, 2)
                                            if real_size else None),
                        "peak_memory_gib": peak_gib(device)}
        print(f"vae {name}", json.dumps(result[name]), flush=True)
    del vae
    free_memory(device)
    return result


def t5_encoder_flops(config: dict, tokens: int) -> float:
    """Forward FLOPs of one sequence: projections and gated MLP per token per layer, plus QK^T and AV (spec §7.3)."""
    inner = config["num_heads"] * config["d_kv"]
    per_token = 4 * config["d_model"] * inner + 3 * config["d_model"] * config["d_ff"]
    attention = 2 * tokens * tokens * inner
    return 2.0 * config["num_layers"] * (tokens * per_token + attention)


def t5_part(plan: Plan, device: torch.device, peak_flops: float) -> dict:
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    with torch.device(device):          # init the 4.7 B weights on the GPU: on 16 CPU cores it takes minutes
        model = T5EncoderModel(T5Config(**plan.t5_config))
    model = model.to(torch.bfloat16).eval()
    ids = torch.randint(2, plan.t5_config["vocab_size"], (plan.t5_batch, plan.t5_tokens), device=device)
    attention_mask = torch.ones_like(ids)
    with torch.inference_mode():
        seconds = time_calls(lambda: model(input_ids=ids, attention_mask=attention_mask).last_hidden_state,
                             device, 2 if plan.device == "cuda" else 1, plan.reps)
    flops = plan.t5_batch * t5_encoder_flops(plan.t5_config, plan.t5_tokens)
    result = {"params": count_parameters(model), "batch": plan.t5_batch, "tokens": plan.t5_tokens,
              "dtype": "bfloat16", "attn_implementation": getattr(model.config, "_attn_implementation", None),
              "seconds_per_batch": round(seconds, 4),
              "tokens_per_s": round(plan.t5_batch * plan.t5_tokens / seconds, 1),
              "sequences_per_s": round(plan.t5_batch / seconds, 2),
              "achieved_tflops": round(flops / seconds / 1e12, 2), "mfu": round(flops / seconds / peak_flops, 4),
              "peak_memory_gib": peak_gib(device)}
    del model
    free_memory(device)
    return result


def demo_audio(batch: int, seconds: float = 10.24, rate: int = 16_000) -> "np.ndarray":
    """[batch, seconds*rate] float32 music-like test audio: a different chord of decaying partials per clip."""
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    rng = np.random.default_rng(0)
    out = np.zeros((batch, t.size), np.float32)
    for i in range(batch):
        for f in 110.0 * 2 ** (rng.integers(0, 24, 3) / 12):
            out[i] += (np.sin(2 * np.pi * f * t) * np.exp(-((t * 2) % 1) * 3)).astype(np.float32)
        out[i] *= 0.3 / max(1e-6, np.abs(out[i]).max())
    return out


def demo_log_mel(audio: "np.ndarray") -> tuple[torch.Tensor, str]:
    """[B, 163840] -> ([B, 1024, 64] log-mel, how). The corpus job's exact front end where its imports (soxr,
    soundfile, librosa) exist; otherwise the same STFT with its 513 bins averaged into 64 bands (same shape and
    range: a throughput input, not the spec's mel)."""
    try:
        from pipelines.corpus.audio import clips_to_log_mel

        return torch.from_numpy(clips_to_log_mel(audio)), "pipelines.corpus.audio.clips_to_log_mel"
    except ImportError as error:
        x = torch.from_numpy(audio)
        spec = torch.stft(x, 1024, 160, 1024, window=torch.hann_window(1024), center=True, pad_mode="reflect",
                          return_complex=True).abs()[:, :512]                     # [B, 512, 1025]
        bands = spec.reshape(len(x), 64, 8, -1).mean(dim=2)
        return torch.log(bands.clamp_min(1e-5)).transpose(1, 2)[:, :1024].contiguous(), f"torch bands ({error.name} absent)"


def kit_part(plan: Plan, device: torch.device, kit_name: str | None, notes: list[str]) -> dict:
    """The corpus job's model stages, each through the kit's loader and the encoder class the job uses, on real
    batches (mel of synthetic music, real caption text): VAE encode, CLAP audio, CLAP text, T5 encode."""
    from pipelines.models.encoders import ClapEmbedder, TextEncoder, VaeEncoder, clap_text_pooled, t5_token_states
    from pipelines.models.kits import load_kit
    from pipelines.models.tiny_kit import _SENTENCES

    start = time.perf_counter()
    kit = load_kit(kit_name or plan.kit).check()         # builds a built:// kit here, once
    result: dict = {"kit": kit.name, "models": kit.models(), "batch": plan.kit_batch,
                    "check_and_build_s": round(time.perf_counter() - start, 1)}
    batch, dev = plan.kit_batch, str(device)
    audio = demo_audio(batch)
    mel, result["mel"] = demo_log_mel(audio)
    captions = [_SENTENCES[i % len(_SENTENCES)] + f", take {i}" for i in range(batch)]
    warm = 1 if device.type == "cuda" else 0

    def stage(name: str, build, call, unit: str) -> None:
        try:
            load = time.perf_counter()
            runner = build()
            load_s = time.perf_counter() - load
            with torch.inference_mode():
                seconds = time_calls(lambda: call(runner), device, warm, plan.reps)
            result[name] = {"load_s": round(load_s, 1), "seconds_per_batch": round(seconds, 4),
                            f"{unit}_per_s": round(batch / seconds, 2), "peak_memory_gib": peak_gib(device)}
        except Exception as error:       # one broken stage must not cost the others their device time
            traceback.print_exc()
            result[name] = {"error": repr(error)[:500]}
        print(f"kit {name}", json.dumps(result[name]), flush=True)
        free_memory(device)

    shapes: dict = {}

    def vae(encoder):
        mean, _ = encoder.encode(mel)
        shapes["latent"] = list(mean.shape[1:])

    stage("vae_encode", lambda: VaeEncoder(kit, device=dev, batch_size=batch), vae, "clips")
    stage("clap_audio", lambda: ClapEmbedder(kit, device=dev, batch_size=batch),
          lambda e: shapes.__setitem__("clap_audio", e.audio(audio).shape[1]), "clips")
    text = {}

    def text_encoder():
        if "encoder" not in text:
            text["encoder"] = TextEncoder(kit, device=dev, batch_size=batch)
        return text["encoder"]

    stage("clap_text", text_encoder,
          lambda e: shapes.__setitem__("clap_text", clap_text_pooled(e.clap_text, e.clap_tokenizer, captions).shape[1]),
          "captions")
    stage("t5_encode", text_encoder,
          lambda e: shapes.__setitem__("t5", list(t5_token_states(e.t5_model, e.t5_tokenizer, captions)[0].shape)),
          "captions")
    if "encoder" in text:
        encoder = text.pop("encoder")
        result["t5_dtype"] = str(encoder.t5_model.dtype).removeprefix("torch.")
        result["t5_layers"] = int(encoder.t5_model.config.num_layers)
        result["t5_vocab"] = len(encoder.t5_tokenizer)
        del encoder
    result["shapes"] = shapes
    free_memory(device)
    return result


class _FolderLlm:
    """The one kit method TransformersCaptionWriter uses, over a built model folder."""

    def __init__(self, folder: Path):
        self.folder = folder

    def load_llm(self, device: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(self.folder).eval().requires_grad_(False).to(device)
        return model, AutoTokenizer.from_pretrained(self.folder)


def captions_part(plan: Plan, device: torch.device) -> dict:
    """One real batch through the transformers caption back end on the device: every clip must come back with a
    text (no exception: a CPU generator on CUDA scores raised in torch.multinomial, review D1)."""
    import tempfile

    from pipelines.corpus.captions.prompts import build_messages, caption_plan, clean_caption
    from pipelines.corpus.captions.transformers_writer import TransformersCaptionWriter, per_row_sampler
    from pipelines.models.tiny_kit import BUILDERS

    tags = ["rock", "electric guitar", "fast tempo", "A minor", "loud", "energetic"]
    plans = [caption_plan(tags, f"0123456789abcdef-{i:05d}", 0) for i in range(8)]
    chats, seeds = [build_messages(words, task) for task, words, _ in plans], [seed for _, _, seed in plans]
    with tempfile.TemporaryDirectory() as folder:
        BUILDERS["llm"](Path(folder))
        writer = TransformersCaptionWriter(_FolderLlm(Path(folder)), max_new_tokens=16, batch_size=8,
                                           device=str(device))
        start = time.perf_counter()
        texts = writer.write(chats, seeds)
        synchronize(device)
        seconds = time.perf_counter() - start
        alone = writer.write(chats[2:3], seeds[2:3])
    sampler = per_row_sampler([1, 2], 1.0, 0.9, 10)
    sampler(None, torch.randn(2, 50, device=device))
    cleaned = [clean_caption(t) for t in texts]
    return {"clips": len(chats), "texts": len(texts), "usable_after_clean_up": sum(bool(c) for c in cleaned),
            "seconds_per_batch": round(seconds, 3), "same_alone_as_in_batch": alone == texts[2:3],
            "generator_devices": sorted({str(g.device) for g in sampler.generators}), "first": cleaned[0][:80]}


# ---------------------------------------------------------------- report

def markdown(report: dict) -> str:
    lines = ["| part | case | result | TFLOP/s | MFU | peak GiB |", "|---|---|---|---|---|---|"]
    sdpa = report.get("sdpa") or {}
    if "unmasked" in sdpa:
        lines.append(f"| sdpa | {sdpa['shape']} {sdpa['dtype']} | unmasked {sdpa['unmasked']}, "
                     f"masked {sdpa['masked']} | | | |")
    for r in report.get("train", []) + report.get("compile", []):
        if "error" in r:
            lines.append(f"| train | {r['size']} {'masked' if r['masked'] else 'unmasked'}"
                         f"{' compiled' if r['compiled'] else ''} | error: {r['error'][:100]} | | | |")
            continue
        case = (f"{r['size']} b{r['batch']} {'masked' if r['masked'] else 'unmasked'}"
                f"{' compiled' if r['compiled'] else ''}")
        lines.append(f"| train | {case} | {r['seconds_per_step']} s/step, {r['samples_per_s']} samples/s | "
                     f"{r['achieved_tflops']} | {r['mfu']} | {r['peak_memory_gib']} |")
    vae = report.get("vae") or {}
    for name in ("float32", "bfloat16"):
        if name in vae:
            r = vae[name]
            lines.append(f"| vae encode | {name} b{vae['batch']} | {r['clips_per_s']} clips/s | "
                         f"{r['achieved_tflops']} | | {r['peak_memory_gib']} |")
    t5 = report.get("t5") or {}
    if "tokens_per_s" in t5:
        lines.append(f"| t5 encoder | bf16 b{t5['batch']} x {t5['tokens']} tokens | {t5['tokens_per_s']} tokens/s | "
                     f"{t5['achieved_tflops']} | {t5['mfu']} | {t5['peak_memory_gib']} |")
    kit = report.get("kit") or {}
    for name, unit in (("vae_encode", "clips"), ("clap_audio", "clips"), ("clap_text", "captions"),
                       ("t5_encode", "captions")):
        r = kit.get(name) or {}
        if f"{unit}_per_s" in r:
            lines.append(f"| kit {kit['kit']} | {name} b{kit['batch']} | {r[f'{unit}_per_s']} {unit}/s | | | "
                         f"{r['peak_memory_gib']} |")
        elif "error" in r:
            lines.append(f"| kit {kit['kit']} | {name} | error: {r['error'][:100]} | | | |")
    for part in ("sdpa", "vae", "t5", "kit"):
        value = report.get(part) or {}
        for key in ("skipped", "error"):
            if key in value:
                lines.append(f"| {part} | {key} | {value[key][:120]} | | | |")
    return "\n".join(lines)


def environment(device: torch.device, peak_flops: float, dry_run: bool) -> dict:
    import transformers

    meta = {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "device": str(device), "dry_run": dry_run, "peak_flops": peak_flops, "command": " ".join(sys.argv)}
    if device.type == "cuda":
        meta["gpu"] = torch.cuda.get_device_name()
        meta["cuda"] = torch.version.cuda
    return meta


def output_path(arg: str | None) -> Path | None:
    if arg:
        return Path(arg)
    return Path(os.environ["OUT"]) / "gpu_check.json" if os.environ.get("OUT") else None


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU: checks the script, not the GPU")
    parser.add_argument("--out", default=None, help="JSON path (default $OUT/gpu_check.json when $OUT is set)")
    parser.add_argument("--budget-s", type=float, default=420.0, help="time guard: skip parts past this")
    parser.add_argument("--parts", nargs="+", default=["sdpa", "train", "vae", "t5", "kit", "captions", "compile"],
                        choices=["sdpa", "train", "vae", "t5", "kit", "captions", "compile"])
    parser.add_argument("--kit", default=None,
                        help="kit of the kit part (default: paper-shaped; tiny with --dry-run)")
    parser.add_argument("--peak-tflops", type=float, default=PEAK_BF16_FLOPS / 1e12)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (dry run default 1)")
    args = parser.parse_args(argv)

    plan = DRY if args.dry_run else FULL
    if plan.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run with --dry-run on CPU")
    torch.set_num_threads(args.threads or (1 if args.dry_run else torch.get_num_threads()))
    device = torch.device(plan.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True     # as training and the spec's fp32 VAE do
        torch.backends.cudnn.allow_tf32 = True
    peak_flops = args.peak_tflops * 1e12
    budget = Budget(args.budget_s)
    out = output_path(args.out)
    notes: list[str] = []
    report: dict = {"meta": environment(device, peak_flops, args.dry_run), "plan": asdict(plan),
                    "sdpa": None, "train": [], "vae": None, "t5": None, "kit": None, "captions": None, "compile": [],
                    "notes": notes}

    def save() -> None:       # after every part: a run cut short still leaves what it measured
        report["elapsed_s"] = round(budget.elapsed(), 1)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=2, default=str))

    steps: list[tuple[str, Callable[[], object]]] = [
        ("sdpa", lambda: sdpa_part(plan, device)),
        ("train", lambda: train_part(plan, device, budget, False, peak_flops, notes)),
        ("vae", lambda: vae_part(plan, device, budget, notes)),
        ("t5", lambda: t5_part(plan, device, peak_flops)),
        ("kit", lambda: kit_part(plan, device, args.kit, notes)),
        ("captions", lambda: captions_part(plan, device)),
        ("compile", lambda: train_part(plan, device, budget, True, peak_flops, notes)),
    ]
    print(json.dumps(report["meta"]), flush=True)
    for name, run in steps:
        if name not in args.parts:
            report[name] = {"skipped": "not in --parts"} if report[name] is None else report[name]
            continue
        if name in ("vae", "t5", "kit") and not budget.fits(name, plan.estimates_s[name]):
            report[name] = {"skipped": f"would pass the {budget.limit_s:.0f} s budget (at {budget.elapsed():.0f} s)"}
            continue
        start = time.perf_counter()
        try:
            report[name] = run()
        except Exception as error:        # one broken part must not cost the others their device time
            traceback.print_exc()
            report[name] = {"error": repr(error)[:500]}
            free_memory(device)
        if name in ("vae", "t5", "kit"):      # train and compile record each item themselves
            budget.record(name, time.perf_counter() - start)
        print(f"-- {name} done at {budget.elapsed():.1f} s", flush=True)
        save()
    save()
    print("\n" + markdown(report))
    if notes:
        print("\n" + "\n".join(f"- {n}" for n in notes))
    print(f"\nelapsed {budget.elapsed():.1f} s; JSON: {out or '(no --out and no $OUT)'}")
    return report


if __name__ == "__main__":
    main()
