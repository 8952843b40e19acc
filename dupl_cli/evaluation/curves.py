"""Training curves as PNG files in ``<run>/curves/`` (PIL only: no plotting library needed), redrawn
from ``metrics.jsonl`` at each validation: loss terms, learning rate, τ_h, noise share and
validation mIoU per student. TensorBoard (train.tracker) stays optional."""

from __future__ import annotations

import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

from dupl_cli.core.atomic import atomic_write

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127)]  # fmt: skip
CURVES = {  # file stem: (title, record keys, scale)
    "loss": ("loss terms (sum over both students)", None, 1.0),
    "lr": ("learning rate (backbone)", ["lr"], 1.0),
    "tau_h": ("tau_h (dynamic foreground threshold)", ["tau_h"], 1.0),
    "noise_share": ("noise share (% of pixels filtered by ANF)", ["noise_share"], 100.0),
    "val_miou": ("validation mIoU (%) per student", None, 1.0),
}


def _records(run_dir: Path) -> tuple[list[dict], list[dict]]:
    train, val = [], []
    path = Path(run_dir) / "metrics.jsonl"
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        (val if "validation" in record else train).append(record)
    return train, val


def _series(records: list[dict], keys: list[str], scale: float, field: str | None = None) -> dict:
    out = {}
    for key in keys:
        points = [
            (r["step"], scale * float(v))
            for r in records
            if isinstance(v := (r[field] if field else r).get(key), int | float) and math.isfinite(v)
        ]
        if points:
            out[key] = points
    return out


def line_chart(series: dict[str, list[tuple[float, float]]], title: str, size=(640, 360)) -> Image.Image:
    """Lines with a frame, min/max ticks on both axes, step on x, and a legend."""
    w, h = size
    left, right, top, bottom = 70, 150, 24, 30
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 6), title, fill="black")
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if y1 - y0 < 1e-12:
        y0, y1 = y0 - 0.5 * (abs(y0) or 1), y1 + 0.5 * (abs(y1) or 1)
    x1 = x1 if x1 > x0 else x0 + 1
    px = lambda x: left + (x - x0) / (x1 - x0) * (w - left - right)  # noqa: E731
    py = lambda y: h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)  # noqa: E731
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for y in (y0, (y0 + y1) / 2, y1):
        draw.text((4, py(y) - 5), f"{y:.3g}", fill="black")
        draw.line([left - 3, py(y), left, py(y)], fill="black")
    for x in (x0, (x0 + x1) / 2, x1):
        draw.text((px(x) - 10, h - bottom + 4), f"{x:.0f}", fill="black")
    draw.text(((left + w - right) // 2 - 10, h - 12), "step", fill="black")
    for k, (name, pts) in enumerate(series.items()):
        colour = COLOURS[k % len(COLOURS)]
        coords = [(px(x), py(y)) for x, y in pts]
        if len(coords) > 1:
            draw.line(coords, fill=colour, width=2)
        for cx, cy in coords[-1:] if len(coords) > 1 else coords:
            draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=colour)
        ly = top + 4 + 14 * k
        draw.line([w - right + 8, ly + 5, w - right + 24, ly + 5], fill=colour, width=3)
        draw.text((w - right + 28, ly), name, fill="black")
    return img


def write_curves(run_dir: Path) -> list[Path]:
    """Redraw every curve with data into ``<run>/curves/<name>.png``; returns the files written."""
    train, val = _records(run_dir)
    out = Path(run_dir) / "curves"
    loss_keys = sorted(
        {k for r in train for k in r if k.startswith("loss/") and not k.endswith(("_1", "_2"))}
    )
    val_keys = sorted({k for r in val for k in r["validation"]})
    written = []
    for stem, (title, keys, scale) in CURVES.items():
        if stem == "loss":
            series = {k[5:]: v for k, v in _series(train, loss_keys, scale).items()}
        elif stem == "val_miou":
            series = _series(val, val_keys, scale, field="validation")
        else:
            series = _series(train, keys, scale)
        if not series:
            continue
        out.mkdir(parents=True, exist_ok=True)
        img = line_chart(series, title)
        path = out / f"{stem}.png"
        atomic_write(path, lambda tmp, img=img: img.save(tmp, format="PNG"))
        written.append(path)
    return written
