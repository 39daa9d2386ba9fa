"""The report's HTML: ReportData and ready-made assets in, one self-contained page out; every string escaped."""
from __future__ import annotations

import base64
import html
import json
import os
from urllib.parse import quote

from pipelines.corpus.report.data import ReportData

TAG_SOURCES = {"metadata": "metadata", "signal": "descriptors (signal)", "clap": "zero-shot (CLAP)"}
TOP_TAGS = 15

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1180px;padding:0 18px 40px;color:#222}
h1{margin:18px 0 2px}h2{border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:30px}
.sub{color:#666;margin:0 0 10px}table{border-collapse:collapse;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:top}th{background:#f4f4f4}
td.n{text-align:right;font-variant-numeric:tabular-nums}.grid{display:flex;flex-wrap:wrap;gap:14px}
.stat{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:110px}
.stat b{display:block;font-size:22px}.clips{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:12px}
.clip{border:1px solid #ddd;border-radius:6px;padding:8px}.clip img{width:100%;display:block}
.clip audio{width:100%;margin-top:4px}.tag{display:inline-block;background:#eef;border-radius:3px;padding:0 4px;margin:1px;font-size:12px}
.muted{color:#888}.detail{font-family:monospace;font-size:12px;word-break:break-all}figure{margin:0}
"""


def h(value) -> str:
    """Escape for HTML text and attribute values (quotes included): captions, tags and paths are user data."""
    return html.escape("" if value is None else str(value), quote=True)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _table(header: list[str], rows: list[list], numeric: set[int] = frozenset()) -> str:
    head = "".join(f"<th>{h(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td class='n'>{h(v)}</td>" if i in numeric else f"<td>{h(v)}</td>"
                                    for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _img(src: str, alt: str) -> str:
    return f"<img src='{h(src)}' alt='{h(alt)}'>"


def _stat(label: str, value) -> str:
    return f"<div class='stat'><b>{h(value)}</b>{h(label)}</div>"


def _summary(d: ReportData) -> str:
    counts = d.manifest.get("counts", {})
    stats = [("hours of audio", f"{d.hours:.3f}"), ("tracks", d.tracks), ("clips", d.clips)]
    stats += [(f"{split} clips", n) for split, n in sorted(d.splits.items())]
    if "inputs" in counts:
        stats += [("inputs discovered", counts["inputs"]), ("incomplete tracks", counts.get("incomplete_tracks", 0))]
    stats.append(("quarantined rows", sum(d.quarantine_counts.values())))
    return "<h2>Summary</h2><div class='grid'>" + "".join(_stat(k, v) for k, v in stats) + "</div>"


def _quarantine(d: ReportData, chart: str) -> str:
    out = ["<h2>Quarantine</h2>"]
    if not d.quarantine_counts:
        return out[0] + "<p>Nothing was quarantined.</p>"
    out.append(f"<figure>{_img(chart, 'quarantined rows by stage and reason')}</figure>")
    rows = []
    for (stage, reason), count in d.quarantine_counts.items():
        for i, ex in enumerate(d.quarantine_examples.get((stage, reason), [])):
            rows.append((stage if i == 0 else "", reason if i == 0 else "", count if i == 0 else "",
                         ex["item_id"], os.path.basename(ex["source_uri"]) or ex["source_uri"], ex["detail"]))
    head = "".join(f"<th>{c}</th>" for c in ("stage", "reason", "rows", "example item", "file", "detail"))
    body = "".join(f"<tr><td>{h(r[0])}</td><td>{h(r[1])}</td><td class='n'>{h(r[2])}</td><td>{h(r[3])}</td>"
                   f"<td>{h(r[4])}</td><td class='detail'>{h(r[5])}</td></tr>" for r in rows)
    out.append(f"<table><tr>{head}</tr>{body}</table>")
    return "".join(out)


def _ignored(d: ReportData) -> str:
    ignored = d.manifest.get("ignored")
    out = "<h2>Ignored inputs</h2>"
    if not isinstance(ignored, dict):
        return out + "<p class='muted'>not recorded (this manifest has no <code>ignored</code> entry)</p>"
    out += f"<p>{h(ignored.get('count', 0))} files under the inputs were not taken as audio.</p>"
    by_kind = ignored.get("by_kind") or {}
    if by_kind:
        out += _table(["kind", "files"], sorted(by_kind.items(), key=lambda kv: -kv[1]), {1})
    examples = ignored.get("examples") or []
    if examples:
        out += "<p>Examples:</p><ul>" + "".join(f"<li class='detail'>{h(e if isinstance(e, str) else json.dumps(e))}</li>"
                                                 for e in examples[:20]) + "</ul>"
    return out


def _distributions(d: ReportData, charts: dict[str, str]) -> str:
    figs = [("duration", "clip duration (s)"), ("loudness", d.loudness_label), ("t5", "T5 length (tokens)"),
            ("caption", "caption length (characters)")]
    return "<h2>Distributions</h2><div class='grid'>" + "".join(
        f"<figure>{_img(charts[key], label)}</figure>" for key, label in figs) + "</div>"


def _tags(d: ReportData, charts: dict[str, str]) -> str:
    out = ["<h2>Tag vocabulary</h2>"]
    if not d.tags_by_source:
        return out[0] + "<p>No tags.</p>"
    out.append("<p class='sub'>" + ", ".join(f"{h(TAG_SOURCES.get(s, s))}: {len(c)} distinct tags, "
                                              f"{sum(c.values())} uses" for s, c in sorted(d.tags_by_source.items(), key=lambda kv: _source_order(kv[0])))
               + "</p><div class='grid'>")
    for source in sorted(d.tags_by_source, key=_source_order):
        out.append(f"<figure><figcaption>{h(TAG_SOURCES.get(source, source))}</figcaption>"
                   f"{_img(charts['tags:' + source], 'top tags, ' + source)}</figure>")
    return "".join(out) + "</div>"


def _source_order(source: str) -> tuple:
    order = list(TAG_SOURCES)
    return (order.index(source) if source in order else len(order), source)


def _caption_mix(d: ReportData, chart: str) -> str:
    mix = d.manifest.get("caption_mix", {})
    rows = [["original (from metadata)", d.caption_sources.get("original", 0)],
            ["synthetic (LLM from tags)", d.caption_sources.get("synthetic", 0)]]
    target = mix.get("target_original_probability")
    note = (f"target probability of the original caption: {target}" if target is not None
            else "target not recorded in the manifest")
    return (f"<h2>Caption mix</h2><p class='sub'>achieved vs target; {h(note)}. Tracks without an original caption "
            "always use the synthetic one, so the achieved fraction is at most the target.</p>"
            + _table(["caption", "clips"], rows, {1}) + f"<figure>{_img(chart, 'caption mix')}</figure>")


def _latents(d: ReportData, chart: str) -> str:
    stats = d.manifest.get("latent_stats", {})
    scale = d.manifest.get("vae_scaling_factor")
    rows = [["mean of stored latent_mean (whole corpus)", stats.get("mean", "not recorded")],
            ["std of stored latent_mean (whole corpus)", stats.get("std", "not recorded")],
            ["VAE scaling factor", scale if scale is not None else "not recorded"],
            ["scaled std = std x scaling factor (about 1 when well scaled)", stats.get("scaled_std", "not recorded")]]
    if stats.get("std"):
        rows.append(["scaling factor that would give std 1 (1 / std)", round(1.0 / stats["std"], 5)])
    return ("<h2>Latents</h2>" + _table(["statistic", "value"], rows, {1})
            + f"<figure>{_img(chart, 'latent_mean values of the sampled clips')}</figure>")


def _samples(d: ReportData, mel_files: dict[str, str], audio_files: dict[str, str]) -> str:
    out = [f"<h2>Sample of clips</h2><p class='sub'>{len(d.samples)} clips drawn with a fixed seed.</p><div class='clips'>"]
    for s in d.samples:
        tags = "".join(f"<span class='tag' title='{h(t['source'])} {t['score']:.2f}'>{h(t['tag'])}</span>" for t in s.tags)
        media = ""
        if s.clip_id in mel_files:
            media += _img(quote(mel_files[s.clip_id]), "log-mel spectrogram of " + s.clip_id)
        if s.clip_id in audio_files:
            media += f"<audio controls preload='metadata' src='{h(quote(audio_files[s.clip_id]))}'></audio>"
        if s.audio_error:
            media += f"<p class='muted detail'>no audio: {h(s.audio_error)}</p>"
        out.append(f"<div class='clip'><div><b>{h(s.clip_id)}</b> <span class='muted'>{h(s.split)}, "
                   f"{s.start_seconds:.2f} s + {s.duration_seconds:.2f} s of {h(os.path.basename(s.source_uri))}</span></div>"
                   f"{media}<p>{h(s.caption)} <span class='muted'>({h(s.caption_source)})</span></p><div>{tags}</div></div>")
    return "".join(out) + "</div>"


def _attribution(d: ReportData) -> str:
    seen: dict[str, dict] = {}
    for s in d.samples:
        seen.setdefault(s.source_uri, s.attribution)
    out = "<h2>Sources and attribution</h2><p class='sub'>of the sampled clips' tracks, from their metadata</p>"
    keys = sorted({k for a in seen.values() for k in a})
    if not keys:
        return out + "<p class='muted'>no attribution in the sampled tracks' metadata</p>"
    rows = [[os.path.basename(uri)] + [a.get(k, "") for k in keys] for uri, a in sorted(seen.items())]
    return out + _table(["file"] + keys, rows)


def _kit(d: ReportData) -> str:
    models = d.manifest.get("kit_models") or {}
    rows = [[role, ref if isinstance(ref, str) else json.dumps(ref)] for role, ref in sorted(models.items())]
    return (f"<h2>Kit and models</h2><p>kit: <b>{h(d.manifest.get('kit', 'not recorded'))}</b>; "
            f"T5 width {h(d.manifest.get('t5_dim', '?'))}, CLAP width {h(d.manifest.get('clap_dim', '?'))}</p>"
            + (_table(["role", "model"], rows) if rows else "<p class='muted'>models not recorded</p>"))


def render(d: ReportData, charts: dict[str, bytes], mel_files: dict[str, str], audio_files: dict[str, str]) -> str:
    """The page. charts: PNG bytes by key (embedded); mel_files / audio_files: clip_id -> path relative to the page."""
    uris = {k: data_uri(v) for k, v in charts.items()}
    title = f"Corpus report: {d.corpus_uri}"
    body = (f"<h1>Corpus data card</h1><p class='sub'>{h(d.corpus_uri)}: schema v{h(d.manifest.get('schema_version', '?'))}, "
            f"kit {h(d.manifest.get('kit', '?'))}</p>"
            + _summary(d) + _quarantine(d, uris["quarantine"]) + _ignored(d) + _distributions(d, uris)
            + _tags(d, uris) + _caption_mix(d, uris["mix"]) + _latents(d, uris["latent"])
            + _samples(d, mel_files, audio_files) + _attribution(d) + _kit(d))
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{h(title)}</title>"
            f"<link rel='icon' href='data:,'><style>{CSS}</style></head><body>{body}</body></html>\n")
