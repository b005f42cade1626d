"""HTML pieces shared by the report and the single-video page: Jinja2 templates (autoescaped), inline SVG
charts, and the per-video card (score strip, face crops, Grad-CAM overlays). Everything is inlined: a page
fetches nothing when it is opened."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dfbatch.io.images import data_uri

TEMPLATES = Path(__file__).with_name("templates")
TRACK_COLOURS = ("#ff3b30", "#007aff", "#ffcc00", "#34c759", "#af52de", "#ff9500")


def environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True, trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["prob"] = lambda p: "–" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{p:.3f}"
    env.globals["colour"] = score_colour
    return env


def render(template: str, **context) -> str:
    return environment().get_template(template).render(**context)


def score_colour(p: float | None) -> str:
    """green (0) .. red (1); grey for no score."""
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "#9e9e9e"
    return f"hsl({120 * (1 - min(max(p, 0.0), 1.0)):.0f},70%,42%)"


def _clean(values: Sequence | None) -> list[float | None]:
    out = []
    for v in values if values is not None else []:
        out.append(None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v))
    return out


def score_strip(frame_indices: Sequence[int], scores: Sequence[float | None], threshold: float):
    """An SVG bar per sampled frame (height = P(fake), colour by score, grey tick where no face), with the
    threshold as a dashed line; each bar's tooltip names the frame."""
    from markupsafe import Markup, escape

    scores = _clean(scores)
    n = max(1, len(scores))
    w, h = 12, 60
    parts = [f'<svg class="strip" viewBox="0 0 {n * w} {h + 2}" preserveAspectRatio="none" role="img" aria-label="per-frame P(fake)">']
    for i, (f, p) in enumerate(zip(frame_indices, scores)):
        if p is None:
            parts.append(f'<rect class="noface" x="{i * w + 1}" y="{h - 2}" width="{w - 2}" height="2" fill="#bdbdbd"><title>frame {int(f)}: no face</title></rect>')
        else:
            bh = max(1.0, p * h)
            parts.append(f'<rect class="bar" data-frame="{int(f)}" data-p="{p:.6f}" x="{i * w + 1}" y="{h - bh:.1f}" width="{w - 2}" height="{bh:.1f}" fill="{score_colour(p)}"><title>frame {int(f)}: P(fake) {p:.3f}</title></rect>')
    ty = h - threshold * h
    parts.append(f'<line x1="0" x2="{n * w}" y1="{ty:.1f}" y2="{ty:.1f}" stroke="#333" stroke-dasharray="4 3" stroke-width="1"><title>threshold {escape(f"{threshold:.3f}")}</title></line>')
    parts.append("</svg>")
    return Markup("".join(parts))


def histogram(probs: Sequence[float], threshold: float, bins: int = 20):
    """SVG histogram of P(fake) over [0, 1] with the threshold marked."""
    from markupsafe import Markup

    probs = np.asarray([p for p in _clean(probs) if p is not None], dtype=float)
    counts, edges = np.histogram(probs, bins=bins, range=(0.0, 1.0))
    top = max(1, int(counts.max()) if len(counts) else 1)
    W, H, pad = 600, 180, 24
    bw = (W - 2 * pad) / bins
    parts = [f'<svg id="histogram-svg" class="hist" viewBox="0 0 {W} {H + 30}" role="img" aria-label="histogram of P(fake)">']
    for i, c in enumerate(counts):
        bh = (H - pad) * c / top
        lo, hi = edges[i], edges[i + 1]
        parts.append(f'<rect class="bin" data-count="{int(c)}" x="{pad + i * bw + 1:.1f}" y="{H - bh:.1f}" width="{bw - 2:.1f}" height="{bh:.1f}" fill="{score_colour((lo + hi) / 2)}"><title>{lo:.2f}–{hi:.2f}: {int(c)} videos</title></rect>')
        if c:
            parts.append(f'<text x="{pad + (i + 0.5) * bw:.1f}" y="{H - bh - 3:.1f}" font-size="10" text-anchor="middle">{int(c)}</text>')
    parts.append(f'<line x1="{pad}" x2="{W - pad}" y1="{H}" y2="{H}" stroke="#333"/>')
    for x in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<text x="{pad + x * (W - 2 * pad):.1f}" y="{H + 14}" font-size="11" text-anchor="middle">{x:g}</text>')
    tx = pad + threshold * (W - 2 * pad)
    parts.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="4" y2="{H}" stroke="#333" stroke-dasharray="5 3"/><text x="{tx + 4:.1f}" y="14" font-size="11">threshold {threshold:.2f}</text>')
    parts.append(f'<text x="{W / 2}" y="{H + 28}" font-size="11" text-anchor="middle">P(fake)</text></svg>')
    return Markup("".join(parts))


def pick_positions(n: int, k: int, scores: Sequence[float | None] | None = None) -> list[int]:
    """Up to k positions of n, evenly spaced, always including the highest-scoring one."""
    if n <= k:
        return list(range(n))
    picked = {int(round(x)) for x in np.linspace(0, n - 1, k)}
    vals = _clean(scores)
    if vals and any(v is not None for v in vals):
        best = max((v, i) for i, v in enumerate(vals) if v is not None)[1]
        if best not in picked:
            picked.discard(min(picked, key=lambda i: abs(i - best)))
            picked.add(best)
    return sorted(picked)


def track_view(track_id: int, crops: np.ndarray | None, heatmaps: np.ndarray | None, frame_indices: Sequence[int], frame_scores: Sequence[float | None] | None, fake_probability: float | None, *, max_frames: int = 8, note: str | None = None) -> dict:
    """One track for the templates: up to `max_frames` frames, each with its crop and Grad-CAM overlay inlined."""
    from dfbatch.views.explain import overlay

    scores = _clean(frame_scores)
    frames = []
    if crops is not None and len(crops):
        over = overlay(crops, heatmaps) if heatmaps is not None else None
        for pos in pick_positions(len(crops), max_frames, scores):
            frames.append({
                "index": int(frame_indices[pos]) if pos < len(frame_indices) else pos,
                "score": scores[pos] if pos < len(scores) else None,
                "crop": data_uri(crops[pos]),
                "cam": data_uri(over[pos]) if over is not None else None,
            })
    return {"id": track_id, "p": fake_probability, "n_frames": len(frame_indices), "frames": frames, "note": note, "colour": TRACK_COLOURS[track_id % len(TRACK_COLOURS)]}


def frames_view(frames: np.ndarray, frame_scale: float, frame_indices: Sequence[int], tracks: list[dict], *, max_side: int = 320) -> list[dict]:
    """Sampled frames as small inlined JPEGs with each track's box (in the frame's own pixel units)."""
    import cv2

    out = []
    h, w = frames.shape[1:3]
    f = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * f)), max(1, round(h * f)))
    to_thumb = frame_scale * f  # displayed full-resolution pixels -> thumbnail pixels
    for pos, frame in enumerate(frames):
        idx = int(frame_indices[pos])
        boxes = []
        for t, track in enumerate(tracks):
            if idx in track["frame_indices"]:
                k = track["frame_indices"].index(idx)
                x1, y1, x2, y2 = (v * to_thumb for v in track["boxes"][k])
                score = (track.get("frame_scores") or [None] * len(track["frame_indices"]))[k]
                boxes.append({"track": t, "x": x1, "y": y1, "w": x2 - x1, "h": y2 - y1, "colour": TRACK_COLOURS[t % len(TRACK_COLOURS)], "score": score, "detected": track["probs"][k] is not None})
        thumb = cv2.resize(frame, size, interpolation=cv2.INTER_AREA) if f < 1.0 else frame
        out.append({"index": idx, "image": data_uri(thumb, 80), "width": size[0], "height": size[1], "boxes": boxes})
    return out
