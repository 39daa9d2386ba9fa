"""Evaluation results as written: metrics.json (JSON-safe) and a Table-3 style markdown row."""
from __future__ import annotations

import math


def format_params(n: int | None) -> str:
    if not n:
        return "-"
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def _cell(value: float | None, digits: int) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def metrics_markdown(name: str, params: int | None, scores: dict, info: dict) -> str:
    """A Table 3 style row: Model | Params | FAD | KL | IS | CLAP."""
    row = (f"| {name} | {format_params(params)} | {_cell(scores.get('fad'), 2)} | {_cell(scores.get('kl'), 2)} | "
           f"{_cell(scores.get('is'), 2)} | {_cell(scores.get('clap_score'), 3)} |")
    return "\n".join([
        "| Model | Params | FAD↓ | KL↓ | IS↑ | CLAP↑ |",
        "|---|---|---|---|---|---|",
        row,
        "",
        f"{int(scores.get('n_generated', 0))} clips vs {int(scores.get('n_reference', 0))} reference clips "
        f"({info.get('prompt_source', '')}). FAD on {info.get('fad_embedder')} embeddings; KL/IS from "
        f"{info.get('classifier')} over {info.get('labels')} labels (T={info.get('label_temperature', 0):.4g}); "
        "not comparable with VGGish/PANNs numbers (docs/evaluation.md).",
        "",
    ])


def json_safe(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [json_safe(v) for v in obj]
    return obj
