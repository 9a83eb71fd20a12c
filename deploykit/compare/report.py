"""``deploykit report``: one self-contained HTML page for a run directory.

Reads what ``deploykit demo``, ``deploykit bench --json`` and ``deploykit parity --json``
leave in a directory (``summary.json``, bench and parity JSON files, PNG pictures) and
writes a single HTML file: inline CSS, inline SVG charts drawn here, pictures embedded
as base64 data URIs. No scripts, no external references. See docs/report.md.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from pathlib import Path
from typing import Any, Iterable

from ..errors import BadInput, expected_got
from ..fileio import atomic_path

PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d"]
MAX_PICTURES = 16

CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1120px;
color:#222;background:#fff;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:4px;
margin-top:32px}.sub{color:#666;margin-top:0}
table{border-collapse:collapse;margin:8px 0 16px;font-size:.92em}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}.pass{color:#1a7f37;font-weight:600}.fail{color:#cf222e;font-weight:600}
.note{color:#666;font-size:.9em}svg{display:block;margin:8px 0}
.pics{display:flex;flex-wrap:wrap;gap:12px}.pics figure{margin:0;flex:1 1 240px;max-width:100%}
.pics figure.wide{flex-basis:100%}.pics figure.wide img{width:min(100%,560px);image-rendering:pixelated}.pics img{max-width:100%;border:1px solid #ddd;image-rendering:auto}
figcaption{font-size:.85em;color:#555;text-align:center}
td:last-child{white-space:nowrap}.grid4{display:grid;grid-template-columns:repeat(4,minmax(0,1fr));gap:8px;margin-bottom:12px}
.grid4 figure{margin:0}.grid4 img{width:100%;border:1px solid #ddd}
"""


# -- loading -------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _is_bench(d: Any) -> bool:
    return isinstance(d, dict) and isinstance(d.get("results"), list) and "batch_range" in d


def _is_parity(d: Any) -> bool:
    return isinstance(d, dict) and isinstance(d.get("verdict"), dict) and isinstance(d.get("outputs"), dict)


def _as_list(x: Any) -> list:
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _discover(run_dir: Path) -> tuple[dict | None, list[dict], list[dict], list[Path]]:
    """summary.json, bench JSONs, parity JSONs and PNG pictures found directly in ``run_dir``."""
    summary = _read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else None
    benches, parities = [], []
    for p in sorted(run_dir.glob("*.json")):
        if p.name == "summary.json":
            continue
        d = _read_json(p)
        if _is_bench(d):
            d.setdefault("_file", p.name)
            benches.append(d)
        elif _is_parity(d):
            d.setdefault("_file", p.name)
            parities.append(d)
    pictures = sorted(p for p in run_dir.glob("*.png") if p.is_file())
    return (summary if isinstance(summary, dict) else None), benches, parities, pictures


def _budget_manifests(run_dir: Path) -> list[dict]:
    """Manifests in ``run_dir`` of graphs written by ``deploykit quantize --accuracy-budget``."""
    found = []
    for p in sorted(run_dir.glob("*.json")):
        d = _read_json(p)
        if isinstance(d, dict) and str(d.get("format", "")).startswith("deploykit-manifest"):
            budget = (d.get("precision") or {}).get("budget")
            if isinstance(budget, dict):
                found.append({"file": (d.get("artifact") or {}).get("file", p.stem), "mode": d["precision"].get("mode"),
                              "model": (d.get("model") or {}).get("name"), "budget": budget})
    return found


def _budget_section(budgets: list[dict]) -> str:
    """What ``--accuracy-budget`` did: the value per search step, the layers moved to FP32 and their speed cost."""
    if not budgets:
        return ""
    out = ["<h2>Accuracy budgets (deploykit quantize)</h2>"]
    for b in budgets:
        bud = b["budget"]
        moved = bud.get("moved_to_fp32") or []
        lat = bud.get("latency_ms") or {}
        head = (f"{_e(b['file'])} ({_e(b.get('model'))}, {_e(b.get('mode'))}): budget {_e(bud.get('spec'))} — "
                f"{_e(bud.get('meaning'))}; result {_num(bud.get('value'), '.4g')} "
                f"(FP32 {_num(bud.get('fp32_value'), '.4g')}) {_verdict(bud.get('met'))}")
        out.append(f"<p>{head}</p>")
        steps = bud.get("evaluations") or []
        if steps:
            out.append(_table(["layers in FP32", "value"], [[_e(s.get("moved")), _num(s.get("value"), ".4g")]
                                                             for s in sorted(steps, key=lambda s: s.get("moved", 0))]))
        if moved:
            cost = (f"latency (ONNX Runtime, same process): all-INT8 {_num(lat.get('all_int8'), '.1f')} ms, with these "
                    f"layers in FP32 {_num(lat.get('with_fp32_layers'), '.1f')} ms ({lat.get('cost_percent', '?')}%)"
                    if lat else "")
            out.append(f"<p>{len(moved)} layer(s) moved back to FP32, most sensitive first. {_e(cost)}</p>")
            out.append(_table(["module", "node", "op", "local SQNR dB", "rel. error"],
                              [[_e(m.get("module")), _e(m.get("node")), _e(m.get("op")), _num(m.get("sqnr_db"), ".1f"),
                                _num(m.get("rel_error"), ".2e")] for m in moved], left=3))
        else:
            out.append('<p class="note">Met with every eligible layer in reduced precision.</p>')
    return "\n".join(out)


discover = _discover  # public name (write_report's ``discover`` flag shadows it there)


# -- formatting helpers --------------------------------------------------------


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _num(x: Any, fmt: str = ".3g") -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, (int, float)):
        if isinstance(x, float) and math.isinf(x):
            return "inf"
        return format(x, fmt)
    return _e(x)


def _verdict(ok: Any) -> str:
    if ok is None:
        return "–"
    return '<span class="pass">PASS</span>' if ok else '<span class="fail">FAIL</span>'


def _table(header: list[str], rows: list[list[str]], left: int = 1) -> str:
    th = "".join(f'<th class="{"l" if i < left else ""}">{_e(h)}</th>' for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td class="{"l" if i < left else ""}">{c}</td>' for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


# -- summary table -------------------------------------------------------------


def _summary_rows(summary: dict | None, benches: list[dict], parities: list[dict]) -> list[list[str]]:
    rows: list[list[str]] = []
    if summary:
        det = summary.get("detector")
        if isinstance(det, dict):
            p = det.get("parity") or {}
            lat = det.get("latency_ms") or {}
            rows.append([_e(det.get("model", "detector")), "detector parity (demo)", _verdict(p.get("ok")),
                         f"{p.get('matched', '–')} matched, min IoU {_num(p.get('min_iou'), '.6f')}, "
                         f"max |Δscore| {_num(p.get('max_score_diff'), '.2e')}",
                         (" / ".join(f"{_e(k)} {_num(v, '.1f')} ms" for k, v in lat.items())
                          + f" ({_e(det.get('latency_stat', 'best'))})")
                         if lat else "–",
                         f"{_num(det.get('speedup'), '.2f')}x" if det.get("speedup") is not None else "–"])
            fixed = p.get("fixed_canvas")
            if isinstance(fixed, dict):
                rows.append([_e(det.get("model", "detector")), "fixed-canvas graph parity (demo)",
                             _verdict(fixed.get("ok")),
                             f"{fixed.get('matched', '–')} matched, min IoU {_num(fixed.get('min_iou'), '.6f')}, "
                             f"max |Δscore| {_num(fixed.get('max_score_diff'), '.2e')}", "–", "–"])
        masked = summary.get("mask_detector")
        if isinstance(masked, dict):
            p = masked.get("parity") or {}
            rows.append([_e(masked.get("model", "mask detector")), "Mask R-CNN parity with masks (demo)",
                         _verdict(p.get("ok")),
                         f"{p.get('matched', '–')} matched, min IoU {_num(p.get('min_iou'), '.6f')}, "
                         f"{p.get('masks_compared', '–')} masks, min mask IoU {_num(p.get('min_mask_iou'), '.5f')}",
                         "–", f"{_num(masked.get('speedup'), '.2f')}x" if masked.get("speedup") is not None else "–"])
        prec = summary.get("precision")
        if isinstance(prec, dict) and prec.get("checks"):
            cs = [c for c in prec["checks"] if isinstance(c, dict)]
            rows.append(["fp16 / int8", "accuracy budgets (demo)", _verdict(prec.get("ok")),
                         f"{sum(1 for c in cs if c.get('ok'))} of {len(cs)} met (see Accuracy per precision)",
                         "–", "–"])
        gen = summary.get("generator")
        if isinstance(gen, dict):
            rows.append([_e(gen.get("model", "generator")), "generator parity (demo)", _verdict(gen.get("ok")),
                         f"{gen.get('images', '–')} images, max |Δ| {_num(gen.get('max_abs_diff'), '.2e')}, "
                         f"min PSNR {_num(gen.get('min_psnr_db'), '.1f')} dB", "–", "–"])
    for r in parities:
        v = r.get("verdict", {})
        if r.get("kind") == "detector":
            detail = (f"{v.get('matched', '–')} matched, min IoU {_num(v.get('min_iou'), '.6f')}, "
                      f"max |Δscore| {_num(v.get('max_score_diff'), '.2e')}")
        else:
            detail = (f"{v.get('images', '–')} images, max |Δ| {_num(v.get('max_abs'), '.2e')}, "
                      f"min PSNR {_num(v.get('min_psnr_db'), '.1f')} dB")
        rows.append([_e(r.get("model", "?")), f"parity ({_e(r.get('_file', r.get('artifact', '')))})",
                     _verdict(r.get("ok")), detail, "–", "–"])
    for b in benches:
        for row in b.get("results", []):
            meds = " / ".join(f"{_e(side.replace('_', '-'))} {_num(row[side].get('median_ms'), '.2f')} ms"
                              for side in ("model", "end_to_end", "torch") if isinstance(row.get(side), dict))
            sp = f"{_num(row['speedup'], '.2f')}x" if row.get("speedup") is not None else "–"
            rows.append([_e(b.get("model") or b.get("artifact", "?")),
                         f"bench {_e(b.get('backend', ''))} batch {_e(row.get('batch'))}", "–", "median latency",
                         meds or "–", sp])
    return rows


# -- latency chart -------------------------------------------------------------


def _latency_series(summary: dict | None, benches: list[dict]) -> list[dict]:
    """One entry per (backend/side, batch): label, per-iteration samples (ms) if known, percentile stats."""
    series = []
    det = (summary or {}).get("detector") if summary else None
    if isinstance(det, dict):
        samples = det.get("latency_samples_ms") or {}
        for k, v in (det.get("latency_ms") or {}).items():
            s = [float(x) for x in _as_list(samples.get(k)) if isinstance(x, (int, float))]
            series.append({"label": f"demo {k} b1", "samples": s, "stats": {"min_ms": v}})
    for b in benches:
        backend = b.get("backend", "onnxruntime")
        for row in b.get("results", []):
            for side in ("model", "end_to_end", "torch"):
                st = row.get(side)
                if not isinstance(st, dict):
                    continue
                name = "torch" if side == "torch" else f"{backend} {side.replace('_', '-')}"
                s = [float(x) for x in _as_list(st.get("samples_ms")) if isinstance(x, (int, float))]
                series.append({"label": f"{name} b{row.get('batch')}", "samples": s, "stats": st})
    return series


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    span = hi - lo if hi > lo else (abs(hi) or 1.0)
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    out, t = [], start
    while t <= hi + step * 1e-9:
        if t >= lo - step * 1e-9:
            out.append(round(t, 10))
        t += step
    return out


def latency_svg(series: list[dict], width: int = 1000) -> str:
    """Horizontal box + strip plot per series (samples), or percentile bars where only stats exist."""
    if not series:
        return ""
    row_h, left, right, top = 44, 210, 30, 20
    height = top + row_h * len(series) + 40
    values = []
    for s in series:
        values += s["samples"] or [v for k, v in s["stats"].items() if k.endswith("_ms") and isinstance(v, (int, float))]
    hi = max(values) * 1.05 if values else 1.0
    lo = 0.0
    plot_w = width - left - right
    x = lambda v: left + (v - lo) / (hi - lo or 1.0) * plot_w  # noqa: E731
    parts = [f'<svg width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="latency distribution">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>']
    for t in _ticks(lo, hi):
        parts.append(f'<line x1="{x(t):.1f}" y1="{top}" x2="{x(t):.1f}" y2="{height - 34}" stroke="#eee"/>')
        parts.append(f'<text x="{x(t):.1f}" y="{height - 20}" font-size="11" text-anchor="middle" '
                     f'fill="#555">{t:g}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.0f}" y="{height - 4}" font-size="12" text-anchor="middle" '
                 f'fill="#333">latency per run (ms)</text>')
    pct_keys = [("min_ms", "min"), ("median_ms", "median"), ("p90_ms", "p90"), ("p99_ms", "p99")]
    for i, s in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        cy = top + row_h * i + row_h / 2
        parts.append(f'<text x="{left - 8}" y="{cy + 4:.1f}" font-size="12" text-anchor="end" '
                     f'fill="#222">{_e(s["label"])}</text>')
        xs = s["samples"]
        if len(xs) >= 2:
            q1, med, q3 = _quantile(xs, .25), _quantile(xs, .5), _quantile(xs, .75)
            parts.append(f'<line x1="{x(min(xs)):.1f}" y1="{cy:.1f}" x2="{x(max(xs)):.1f}" y2="{cy:.1f}" '
                         f'stroke="{color}" stroke-width="1.5"/>')
            parts.append(f'<rect x="{x(q1):.1f}" y="{cy - 12:.1f}" width="{max(1.0, x(q3) - x(q1)):.1f}" '
                         f'height="24" fill="{color}" fill-opacity="0.25" stroke="{color}"/>')
            parts.append(f'<line x1="{x(med):.1f}" y1="{cy - 12:.1f}" x2="{x(med):.1f}" y2="{cy + 12:.1f}" '
                         f'stroke="{color}" stroke-width="3"/>')
            step = max(1, len(xs) // 400)
            for j, v in enumerate(xs[::step]):
                jitter = ((j * 7919) % 17 - 8) * 1.2
                parts.append(f'<circle cx="{x(v):.1f}" cy="{cy + jitter:.1f}" r="2" fill="{color}" '
                             f'fill-opacity="0.6"/>')
            lx, anchor = x(max(xs)) + 6, "start"
            if lx > width - 170:  # keep the label inside the chart
                lx, anchor = x(min(xs)) - 6, "end"
            parts.append(f'<text x="{lx:.1f}" y="{cy - 8:.1f}" font-size="10" text-anchor="{anchor}" '
                         f'fill="#555">median {med:.2f} ms, n={len(xs)}</text>')
        else:
            keys = [(k, n) for k, n in pct_keys if isinstance(s["stats"].get(k), (int, float))]
            if not keys and xs:
                keys, s = [("v", "value")], {**s, "stats": {"v": xs[0]}}
            bh = 30 / max(1, len(keys))
            for j, (k, n) in enumerate(keys):
                v = s["stats"][k]
                y = cy - 15 + j * bh
                parts.append(f'<rect x="{left}" y="{y:.1f}" width="{max(1.0, x(v) - left):.1f}" '
                             f'height="{bh - 1:.1f}" fill="{color}" fill-opacity="{0.35 + 0.6 * j / max(1, len(keys))}"/>')
                parts.append(f'<text x="{x(v) + 4:.1f}" y="{y + bh - 2:.1f}" font-size="9" fill="#444">'
                             f'{n} {v:.2f}</text>')
    parts.append(f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - 34}" stroke="#999"/>')
    parts.append("</svg>")
    return "".join(parts)


def _bench_tables(benches: list[dict]) -> str:
    """Per bench JSON: what was timed (artifact, backend, threads) and the percentiles per batch and side."""
    out = []
    for b in benches:
        rows = []
        for row in b.get("results", []):
            for side in ("model", "end_to_end", "torch"):
                st = row.get(side)
                if not isinstance(st, dict):
                    continue
                sp = row.get("speedup") if side == "torch" else None
                rows.append([_e(row.get("batch")), _e(side.replace("_", "-")), _e(st.get("iterations")),
                             *(_num(st.get(k), ".2f") for k in ("min_ms", "median_ms", "p90_ms", "p99_ms")),
                             _num(st.get("throughput_ips"), ".1f"), f"{_num(sp, '.2f')}x" if sp is not None else "–"])
        if not rows:
            continue
        extra = [f"backend {b.get('backend', 'onnxruntime')}", f"threads {b.get('threads') or 'default'}"]
        if b.get("cuda_graph"):
            extra.append("CUDA graphs")
        if b.get("interrupted"):
            extra.append("interrupted: partial")
        out.append(f"<p>{_e(b.get('artifact', '?'))} ({_e(b.get('kind', ''))}; {_e(', '.join(extra))})</p>"
                   + _table(["batch", "side", "runs", "min ms", "median ms", "p90 ms", "p99 ms", "images/s",
                             "speedup"], rows, left=2))
    return "".join(out)


# -- error histogram -----------------------------------------------------------


def _error_values(summary: dict | None, parities: list[dict]) -> list[tuple[str, list[float]]]:
    groups: list[tuple[str, list[float]]] = []
    det = (summary or {}).get("detector") if summary else None
    if isinstance(det, dict) and det.get("per_image"):
        groups.append(("demo detector: per-image max |Δscore|",
                       [float(p["max_score_diff"]) for p in det["per_image"] if p.get("max_score_diff") is not None]))
        groups.append(("demo detector: per-image 1 − min IoU",
                       [1.0 - float(p["min_iou"]) for p in det["per_image"] if p.get("min_iou") is not None]))
    for r in parities:
        per = r.get("per_image") or []
        key = "max_score_diff" if r.get("kind") == "detector" else "max_abs"
        vals = [float(p[key]) for p in per if isinstance(p.get(key), (int, float))]
        if vals:
            groups.append((f"{r.get('model', '?')}: per-image {'max |Δscore|' if key == 'max_score_diff' else 'max |Δ|'}",
                           vals))
    return [(n, v) for n, v in groups if v]


def histogram_svg(title: str, values: list[float], width: int = 480, height: int = 220, color: str = "#4c78a8") -> str:
    """Histogram of log10(value); exact zeros get their own bar on the left."""
    zeros = sum(1 for v in values if v <= 0)
    logs = [math.log10(v) for v in values if v > 0]
    lo = math.floor(min(logs)) if logs else -8
    hi = math.ceil(max(logs)) if logs else -7
    if hi <= lo:
        hi = lo + 1
    nbins = max(1, (hi - lo) * 2)
    counts = [0] * nbins
    for v in logs:
        counts[min(nbins - 1, int((v - lo) / (hi - lo) * nbins))] += 1
    bars = [("0", zeros)] + [(f"{lo + (hi - lo) * i / nbins:g}", c) for i, c in enumerate(counts)]
    left, bottom, top = 40, 40, 28
    pw, ph = width - left - 10, height - top - bottom
    bw = pw / len(bars)
    cmax = max(1, max(c for _, c in bars))
    parts = [f'<svg width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
             f'<text x="{width / 2:.0f}" y="16" font-size="12" text-anchor="middle" fill="#222">{_e(title)}</text>']
    for i, (lab, c) in enumerate(bars):
        h = ph * c / cmax
        bx = left + i * bw
        fill = "#999" if i == 0 else color
        parts.append(f'<rect x="{bx + 1:.1f}" y="{top + ph - h:.1f}" width="{max(1.0, bw - 2):.1f}" '
                     f'height="{h:.1f}" fill="{fill}"><title>{_e(lab)}: {c}</title></rect>')
        if c:
            parts.append(f'<text x="{bx + bw / 2:.1f}" y="{top + ph - h - 3:.1f}" font-size="10" '
                         f'text-anchor="middle" fill="#333">{c}</text>')
        if i == 0 or (i - 1) % 2 == 0:
            txt = "0" if i == 0 else f"1e{int(float(lab))}"
            parts.append(f'<text x="{bx + (bw / 2 if i == 0 else 0):.1f}" y="{top + ph + 14:.1f}" font-size="10" '
                         f'text-anchor="middle" fill="#555">{txt}</text>')
    parts.append(f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#999"/>')
    parts.append(f'<text x="{left + pw / 2:.0f}" y="{height - 6}" font-size="11" text-anchor="middle" '
                 f'fill="#333">error (log scale; grey bar: exactly 0), n={len(values)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _stats_tables(parities: list[dict]) -> str:
    out = []
    for r in parities:
        rows = []
        for name, s in (r.get("outputs") or {}).items():
            if not isinstance(s, dict):
                rows.append([_e(name), "0", "–", "–", "–", "–"])
                continue
            rows.append([_e(name), _num(s.get("elements"), "d") if isinstance(s.get("elements"), int) else "–",
                         *(_num(s.get(k)) for k in ("max_abs", "mean_abs", "p99_abs", "max_rel"))])
        out.append(f"<p>{_e(r.get('model', '?'))} ({_e(r.get('kind', ''))}) vs PyTorch on "
                   f"{_e(r.get('inputs', ''))}: {_verdict(r.get('ok'))}</p>"
                   + _table(["output", "elements", "max abs", "mean abs", "p99 abs", "max rel"], rows))
    return "".join(out)


# -- pictures ------------------------------------------------------------------


CAPTIONS = {"spade_demo_panels.png": "SPADE demo: ground truth | PyTorch | ONNX Runtime (one row per label map)",
            "spade_demo_precision_panels.png": "SPADE demo per precision: PyTorch FP32 | ONNX Runtime fp32 | fp16 | "
                                               "int8 (one row per held-out label map)"}


#: Picture name prefixes of per-precision detection pictures, and what they show.
DETECTION_PICTURES = {"detections_": "detections", "masks_": "detections and masks (Mask R-CNN)"}


def _detection_picture(stem: str) -> tuple[str, str] | None:
    """``(prefix, rest)`` of a per-precision detection picture's stem, or None."""
    return next(((p, stem[len(p):]) for p in DETECTION_PICTURES if stem.startswith(p)), None)


def _caption(name: str) -> str:
    if name in CAPTIONS:
        return CAPTIONS[name]
    stem = name.removesuffix(".png")
    found = _detection_picture(stem)
    if found:
        prefix, rest = found
        what = DETECTION_PICTURES[prefix]
        if rest.endswith("_torch"):
            return f"PyTorch reference {what}, image {rest[:-len('_torch')]}"
        for p in ("fp16", "int8"):
            if rest.endswith(f"_{p}"):
                return f"ONNX Runtime {p} {what}, image {rest[:-len(p) - 1]}"
        return f"ONNX Runtime {what}, image {rest}"
    return name


def _picture_order(p: Path) -> tuple:
    """Detections first (boxes, then masks), PyTorch reference next to the artifact's for the same image;
    panels last."""
    found = _detection_picture(p.stem)
    if found:
        prefix, rest = found
        idx, _, side = rest.partition("_")
        order = {"torch": 0, "": 1, "fp16": 2, "int8": 3}.get(side, 4)
        return (0, list(DETECTION_PICTURES).index(prefix), int(idx) if idx.isdigit() else 0, idx, order)
    return (2 if "panels" in p.stem else 1, 0, 0, p.name, 0)


def _picture(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    wide = "panels" in path.stem
    cap = _caption(path.name)
    return (f'<figure class="{"wide" if wide else ""}"><img alt="{_e(path.name)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{_e(cap)}</figcaption></figure>')


# -- accuracy per precision ----------------------------------------------------


def _pct(x: Any) -> str:
    return _num(100 * x, ".2f") if isinstance(x, (int, float)) else "–"


def _budget_cell(checks: dict, precision: str, model: Any, parity_ok: Any) -> str:
    if precision == "fp32":
        return "parity " + _verdict(parity_ok)
    cs = checks.get((precision, model))
    if not cs:
        return "–"
    c = cs[0]
    return (f"{'≤' if c.get('op') == '<=' else '≥'} {_num(c.get('limit'), 'g')}: "
            f"{_verdict(all(x.get('ok') for x in cs))}")


def _precision_pictures(pictures: list[Path]) -> tuple[list[list[Path | None]], Path | None]:
    """Rows of (PyTorch, fp32, fp16, int8) detection pictures per image, and the SPADE precision panel."""
    by_name = {p.name: p for p in pictures}
    rows = []
    for name in sorted(by_name):
        found = _detection_picture(name.removesuffix(".png"))
        if found and name.endswith("_torch.png"):
            prefix, idx = found[0], found[1][:-len("_torch")]
            others = [by_name.get(f"{prefix}{idx}{s}.png") for s in ("", "_fp16", "_int8")]
            if any(o is not None for o in others[1:]):
                rows.append([by_name[name], *others])
    rows.sort(key=lambda r: _picture_order(r[0]))
    return rows, by_name.get("spade_demo_precision_panels.png")


def _detector_precision_table(det: dict, checks: dict, parity_ok: Any) -> list[str]:
    """A detector's accuracy-per-precision table; Mask R-CNN rows add the masks' mAP and its drop."""
    ref = det.get("reference") or {}
    masks = "mask_map" in ref
    extra = lambda r: [_pct(r.get("mask_map")), _num((r.get("drop") or {}).get("mask_map"), ".2f")] if masks else []  # noqa: E731
    rows = [["PyTorch (reference)", _pct(ref.get("map")), _pct(ref.get("map50")), "–", "–",
             *([_pct(ref.get("mask_map")), "–"] if masks else []), _num(ref.get("latency_ms"), ".1f"), "1.00x", "–"]]
    for p, r in det["rows"].items():
        drop = r.get("drop") or {}
        rows.append([_e(p), _pct(r.get("map")), _pct(r.get("map50")), _num(drop.get("map"), ".2f"),
                     _num(drop.get("map50"), ".2f"), *extra(r), _num(r.get("latency_ms"), ".1f"),
                     f"{_num(r.get('speedup'), '.2f')}x", _budget_cell(checks, p, det.get("model"), parity_ok)])
    header = ["precision", "mAP@[.5:.95]", "mAP@.5", "drop mAP (pts)", "drop mAP@.5 (pts)",
              *(["mask mAP@[.5:.95]", "drop mask mAP (pts)"] if masks else []), "latency ms", "speedup vs PyTorch",
              "budget"]
    what = " (boxes; masks: segm mAP of the 0.5-thresholded masks)" if masks else ""
    return [f"<p>{_e(det.get('model', 'detector'))}: COCO mAP{what} on {_e(det.get('images', '?'))} images "
            f"({_e(det.get('data', ''))}); drop = PyTorch − artifact, in points; latency: "
            f"<code>Detector.predict</code> vs torchvision eager <code>model([img])</code>.</p>",
            _table(header, rows)]


def _precision_section(summary: dict | None, pictures: list[Path]) -> tuple[str, set[Path]]:
    """The "Accuracy per precision" section from ``summary['precision']`` (deploykit demo); pictures it shows."""
    prec = (summary or {}).get("precision")
    if not isinstance(prec, dict):
        return "", set()
    all_checks = [c for c in prec.get("checks") or [] if isinstance(c, dict)]
    checks: dict[tuple, list] = {}
    for c in all_checks:
        checks.setdefault((c.get("precision"), c.get("model")), []).append(c)
    out = ["<h2>Accuracy per precision</h2>"]
    cal = prec.get("calibration") or {}
    default = cal.get("default_samples")
    fewer = (f" (fewer than the default {default}, for time)" if isinstance(default, int)
             and isinstance(cal.get("samples"), int) and cal["samples"] < default else "")
    out.append(f'<p class="note">FP16: ModelOpt AutoCast casts; INT8: ModelOpt PTQ Q/DQ, {_e(cal.get("method", "?"))} '
               f'calibration on {_e(cal.get("samples", "?"))} samples{_e(fewer)} from {_e(cal.get("source", "?"))}, '
               f'seed {_e(cal.get("seed", "?"))}. Latency: median of {_e(prec.get("rounds", "?"))} interleaved '
               f'end-to-end runs per side, batch 1, {_e(prec.get("threads", "?"))} threads, same process; '
               f'speedup = PyTorch eager median / artifact median.</p>')
    for key in ("detector", "mask_detector"):
        det = prec.get(key)
        if isinstance(det, dict) and isinstance(det.get("rows"), dict):
            parity_ok = ((summary or {}).get(key) or {}).get("parity", {}).get("ok")
            out.extend(_detector_precision_table(det, checks, parity_ok))
    gen = prec.get("generator")
    if isinstance(gen, dict) and isinstance(gen.get("rows"), dict):
        ref = gen.get("reference") or {}
        parity_ok = ((summary or {}).get("generator") or {}).get("ok")
        rows = [["PyTorch FP32 (reference)", "–", "–", "–", _num(ref.get("latency_ms"), ".1f"), "1.00x", "–"]]
        for p, r in gen["rows"].items():
            rows.append([_e(p), _num(r.get("psnr_mean"), ".2f"), _num(r.get("psnr_min"), ".2f"),
                         _num(r.get("ssim_mean"), ".5f"), _num(r.get("latency_ms"), ".1f"),
                         f"{_num(r.get('speedup'), '.2f')}x", _budget_cell(checks, p, gen.get("model"), parity_ok)])
        out.append(f"<p>{_e(gen.get('model', 'generator'))}: PSNR (dB, peak 1, capped at 100) and SSIM against the "
                   f"FP32 PyTorch output on {_e(gen.get('images', '?'))} label maps ({_e(gen.get('data', ''))}); "
                   f"latency: <code>Generator.generate</code> vs the PyTorch generator.</p>")
        out.append(_table(["precision", "PSNR mean dB", "PSNR min dB", "SSIM mean", "latency ms",
                           "speedup vs PyTorch", "budget"], rows))
    if all_checks:
        rows = [[_e(c.get("precision")), _e(c.get("model")), _e(c.get("metric")), _num(c.get("value"), ".2f"),
                 f"{'≤' if c.get('op') == '<=' else '≥'} {_num(c.get('limit'), 'g')}", _verdict(c.get("ok"))]
                for c in all_checks]
        out.append("<p>Accuracy budgets (issue 4):</p>" + _table(["precision", "model", "metric", "value", "budget",
                                                                  "verdict"], rows, left=3))
    trt = prec.get("tensorrt") or {}
    if trt.get("skipped"):
        out.append(f'<p class="note">TensorRT engines: skipped ({_e(trt["skipped"])}).</p>')
    elif isinstance(trt.get("engines"), dict):
        out.append("<p>TensorRT engines (end to end, median):</p>" + _table(
            ["engine", "plan", "latency ms", "speedup vs PyTorch"],
            [[_e(k), _e(v.get("plan")), _num(v.get("latency_ms"), ".2f"), f"{_num(v.get('speedup'), '.2f')}x"]
             for k, v in trt["engines"].items()]))
    rows, panel = _precision_pictures(pictures)
    used: set[Path] = set()
    if rows:
        out.append("<p>Detections (score ≥ 0.3; Mask R-CNN with its masks) per precision: "
                   "PyTorch | fp32 | fp16 | int8.</p>")
        for row in rows:
            figs = []
            for label, pic in zip(("PyTorch", "fp32", "fp16", "int8"), row):
                if pic is None:
                    figs.append(f'<figure><figcaption>{label}: not found</figcaption></figure>')
                    continue
                used.add(pic)
                data = base64.b64encode(pic.read_bytes()).decode("ascii")
                figs.append(f'<figure><img alt="{_e(pic.name)}" src="data:image/png;base64,{data}">'
                            f"<figcaption>{_e(_caption(pic.name))}</figcaption></figure>")
            out.append('<div class="grid4">' + "".join(figs) + "</div>")
    if panel is not None:
        used.add(panel)
        out.append('<div class="pics">' + _picture(panel) + "</div>")
    return "\n".join(out), used


# -- page ----------------------------------------------------------------------


def render_html(run_dir: Path, summary: dict | None, benches: list[dict], parities: list[dict],
                pictures: Iterable[Path], budgets: list[dict] | None = None) -> str:
    pictures = list(pictures)
    body = [f"<h1>deploykit report</h1><p class=\"sub\">run directory: {_e(run_dir)}</p>"]
    rows = _summary_rows(summary, benches, parities)
    body.append("<h2>Summary</h2>")
    body.append(_table(["model", "check", "verdict", "detail", "latency", "speedup vs PyTorch"], rows, left=4)
                if rows else '<p class="note">No summary.json, parity or bench JSON found.</p>')

    section, shown_above = _precision_section(summary, pictures)
    if section:
        body.append(section)
        pictures = [p for p in pictures if p not in shown_above]
    if budgets:
        body.append(_budget_section(budgets))

    series = _latency_series(summary, benches)
    body.append("<h2>Latency distribution per backend and batch</h2>")
    if series:
        if not any(len(s["samples"]) >= 2 for s in series):
            body.append('<p class="note">No per-iteration samples recorded: bars show percentiles.</p>')
        else:
            body.append('<p class="note">Box: quartiles, thick line: median, whiskers: min–max, dots: runs.</p>')
        body.append(latency_svg(series))
        body.append(_bench_tables(benches))
    else:
        body.append('<p class="note">No latency measurements found.</p>')

    groups = _error_values(summary, parities)
    body.append("<h2>Errors against PyTorch</h2>")
    if groups:
        body.append('<div class="pics">' + "".join(
            f"<div>{histogram_svg(n, v, color=PALETTE[i % len(PALETTE)])}</div>" for i, (n, v) in enumerate(groups))
            + "</div>")
    if summary and isinstance(summary.get("detector"), dict) and summary["detector"].get("per_image"):
        per = summary["detector"]["per_image"]
        body.append("<details><summary>demo detector per image</summary>" + _table(
            ["image", "size", "matched", "min IoU", "max |Δscore|", "verdict"],
            [[_e(p.get("index")), _e("x".join(map(str, p.get("size") or []))), _e(p.get("matched")),
              _num(p.get("min_iou"), ".7f"), _num(p.get("max_score_diff"), ".2e"), _verdict(p.get("ok"))]
             for p in per]) + "</details>")
    body.append(_stats_tables(parities))
    if not groups and not parities:
        body.append('<p class="note">No parity results found.</p>')

    body.append("<h2>Pictures</h2>")
    if section and not pictures and shown_above:
        body.append('<p class="note">All pictures are shown above (accuracy per precision).</p>')
    elif pictures:
        shown = sorted(pictures, key=_picture_order)[:MAX_PICTURES]
        body.append('<div class="pics">' + "".join(_picture(p) for p in shown) + "</div>")
        if len(pictures) > len(shown):
            body.append(f'<p class="note">{len(pictures) - len(shown)} more pictures not shown.</p>')
    else:
        body.append('<p class="note">No pictures found.</p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>deploykit report</title>"
            f"<style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_report(run_dir: str | os.PathLike, out_path: str | os.PathLike | None = None, summary: dict | None = None,
                 bench: dict | list[dict] | None = None, parity: dict | list[dict] | None = None,
                 discover: bool = True) -> Path:
    """Write the HTML report for ``run_dir`` to ``out_path`` (default ``run_dir/report.html``) atomically.

    ``summary``, ``bench`` and ``parity`` override what is found in ``run_dir`` (bench and
    parity may be one dict or a list); with ``discover=False`` nothing is read from ``run_dir``
    (``deploykit bench --report page.html``). Raises BadInput when ``run_dir`` is not a directory.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BadInput(expected_got("RUN_DIR", "an existing run directory (e.g. runs/demo)", str(run_dir)))
    found_summary, found_bench, found_parity, pictures = (_discover(run_dir) if discover
                                                          else (None, [], [], []))
    summary = summary if summary is not None else found_summary
    benches = [b for b in _as_list(bench) if isinstance(b, dict)] if bench is not None else found_bench
    parities = [p for p in _as_list(parity) if isinstance(p, dict)] if parity is not None else found_parity
    out = Path(out_path) if out_path is not None else run_dir / "report.html"
    budgets = _budget_manifests(run_dir) if discover else []
    page = render_html(run_dir, summary, benches, parities, pictures, budgets=budgets)
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
        os.chmod(tmp, 0o644)
    return out
