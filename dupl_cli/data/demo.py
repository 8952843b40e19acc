"""Built-in demo data: textured objects on cluttered backgrounds, written in the folder layout.

Five classes with distinct colour + texture signatures (so image-level labels are learnable by a
tiny ViT from scratch), 1-3 objects per image, and context that co-occurs with one class: boats
always float on a water band (which also appears, rarely, without boats), so CAMs of "boat" spill
onto water as they do on VOC. Generation is vectorised numpy, deterministic per (seed, image).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from dupl_cli.core.errors import UserError, clip
from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.core.textfile import read_text
from dupl_cli.data import folder
from dupl_cli.data.palette import flat_palette

log = logging.getLogger(__name__)

# name, hue (degrees), texture, shape
CLASSES = [
    ("boat", 2.0, "hstripes", "hull"),
    ("balloon", 52.0, "dots", "ellipse"),
    ("tree", 118.0, "mottled", "blob"),
    ("sign", 225.0, "checker", "rect"),
    ("flower", 300.0, "radial", "petals"),
]
WATER_HUE = 185.0
WATER_WITHOUT_BOAT_P = 0.1
FORMAT = "dupl-demo/1"

Hsv = tuple[np.ndarray, np.ndarray, np.ndarray]  # hue (degrees), saturation, value: each S×S float


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV (h in degrees, s and v in [0, 1]) -> float RGB in [0, 1], shape (...,3)."""
    h = np.mod(h, 360.0) / 60.0
    c = v * s
    x = c * (1 - np.abs(np.mod(h, 2) - 1))
    sector = np.floor(h).astype(np.int64) % 6
    zero = np.zeros_like(c)
    r = np.choose(sector, [c, x, zero, zero, x, c])
    g = np.choose(sector, [x, c, c, x, zero, zero])
    b = np.choose(sector, [zero, zero, x, c, c, x])
    m = v - c
    return np.stack([r + m, g + m, b + m], axis=-1)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse random grid upsampled bilinearly."""
    grid = rng.uniform(-1, 1, (cells + 1, cells + 1))
    t = np.linspace(0, cells, size)
    i0 = np.minimum(t.astype(int), cells - 1)
    f = t - i0
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def _shape_mask(shape: str, yy, xx, cy, cx, ry, rx, angle, rng) -> np.ndarray:
    """Boolean S×S mask of a shape; computed only inside its bounding square (speed)."""
    size = yy.shape[0]
    reach = 1.5 * max(rx, ry)
    y0, y1 = int(max(0, cy - reach)), int(min(size, cy + reach + 1))
    x0, x1 = int(max(0, cx - reach)), int(min(size, cx + reach + 1))
    out = np.zeros(yy.shape, dtype=bool)
    if y1 > y0 and x1 > x0:
        out[y0:y1, x0:x1] = _shape_local(
            shape, yy[y0:y1, x0:x1], xx[y0:y1, x0:x1], cy, cx, ry, rx, angle, rng
        )
    return out


def _shape_local(shape: str, yy, xx, cy, cx, ry, rx, angle, rng) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    ca, sa = np.cos(angle), np.sin(angle)
    u, w = (dx * ca + dy * sa) / rx, (-dx * sa + dy * ca) / ry
    if shape == "ellipse":
        return u**2 + w**2 <= 1
    if shape in ("rect", "hull"):
        inside = (np.abs(u) <= 1) & (np.abs(w) <= 1)
        if shape == "hull":  # narrower at the keel: a boat-like trapezoid
            inside &= np.abs(u) <= 1 - 0.35 * (w + 1) / 2
        return inside
    theta = np.arctan2(w, u)
    radius = np.sqrt(u**2 + w**2)
    if shape == "petals":
        k = rng.integers(5, 8)
        return radius <= 0.75 + 0.25 * np.cos(k * theta + rng.uniform(0, np.pi))
    harmonics = sum(
        rng.uniform(0.05, 0.15) * np.cos(k * theta + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)
    )
    return radius <= 0.85 + harmonics  # blob


def _texture(kind: str, yy, xx, cy, cx, rng, size: int) -> np.ndarray:
    """A value modulation in [-1, 1] that identifies the class besides its hue."""
    period = rng.uniform(5.0, 8.0) * size / 128
    if kind == "hstripes":
        return np.sign(np.sin(2 * np.pi * yy / period + rng.uniform(0, 6.3)))
    if kind == "dots":
        p = period * 1.2
        d = np.hypot(np.mod(yy, p) - p / 2, np.mod(xx, p) - p / 2)
        return np.where(d < p * 0.28, -1.0, 0.6)
    if kind == "checker":
        p = period * 1.3
        return np.where((np.floor(yy / p) + np.floor(xx / p)) % 2 == 0, 1.0, -1.0)
    if kind == "radial":
        return np.sign(np.sin(8 * np.arctan2(yy - cy, xx - cx)))
    return _smooth_noise(rng, size, max(4, size // 10))  # mottled


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> Hsv:
    """A cluttered, low-saturation background: smooth noise, faint blobs and lines."""
    hue = np.full((size, size), rng.uniform(0, 360)) + 25 * _smooth_noise(rng, size, 3)
    sat = np.clip(rng.uniform(0.05, 0.2) + 0.08 * _smooth_noise(rng, size, 4), 0, 0.3)
    val = rng.uniform(0.38, 0.62) + 0.1 * _smooth_noise(rng, size, 6)
    for _ in range(rng.integers(3, 7)):
        blob = _shape_mask(
            "blob",
            yy,
            xx,
            *rng.uniform(0, size, 2),
            *rng.uniform(0.05, 0.2, 2) * size,
            rng.uniform(0, np.pi),
            rng,
        )
        val = np.where(blob, val + rng.uniform(-0.1, 0.1), val)
        hue = np.where(blob, hue + rng.uniform(-40, 40), hue)
    for _ in range(rng.integers(1, 4)):
        a, off = rng.uniform(0, np.pi), rng.uniform(0, size)
        line = np.abs(xx * np.cos(a) + yy * np.sin(a) - off) < rng.uniform(0.5, 1.5) * size / 128
        val = np.where(line, val + rng.uniform(-0.12, 0.12), val)
    return hue, sat, val


def _add_water(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int, classes: np.ndarray, hsv: Hsv
) -> tuple[float, Hsv]:
    """(water line y, hsv): a water band painted under boats (and occasionally on its own)."""
    hue, sat, val = hsv
    water_top = rng.uniform(0.55, 0.72) * size
    if (classes == 0).any() or rng.random() < WATER_WITHOUT_BOAT_P:
        water = yy >= water_top + 2 * np.sin(xx / 7 + rng.uniform(0, 6.3))
        waves = np.sin(xx / 3.0 + 2 * np.sin(yy / 4.0)) * 0.07
        hue = np.where(water, WATER_HUE + rng.uniform(-8, 8), hue)
        sat = np.where(water, rng.uniform(0.35, 0.5), sat)
        val = np.where(water, rng.uniform(0.45, 0.6) + waves, val)
    return water_top, (hue, sat, val)


def _place(
    rng: np.random.Generator,
    shape: str,
    yy: np.ndarray,
    xx: np.ndarray,
    size: int,
    water_top: float,
    mask: np.ndarray,
) -> tuple[np.ndarray, float, float]:
    """(inside S×S bool, cy, cx) of one object: of up to eight random placements, the one that hides
    least of the objects already in ``mask`` (a hull sits on the water line)."""
    ry, rx = rng.uniform(0.13, 0.26, 2) * size
    angle = rng.uniform(0, np.pi)
    if shape == "hull":
        rx, ry, angle = max(rx, ry) * 1.2, min(rx, ry) * 0.6, rng.uniform(-0.1, 0.1)
    best = None
    for _ in range(8):
        cy, cx = rng.uniform(0.22, 0.78, 2) * size
        if shape == "hull":
            cy = water_top - ry * 0.3
        inside = _shape_mask(shape, yy, xx, cy, cx, ry, rx, angle, rng)
        overlap = int((inside & (mask > 0)).sum())
        if best is None or overlap < best[0]:
            best = (overlap, inside, cy, cx)
        if overlap == 0:
            break
    return best[1:]


def _add_objects(
    rng: np.random.Generator,
    yy: np.ndarray,
    xx: np.ndarray,
    size: int,
    classes: np.ndarray,
    water_top: float,
    hsv: Hsv,
) -> tuple[np.ndarray, Hsv]:
    """(mask S×S uint8 with class index + 1 per object, hsv with the objects painted in)."""
    hue, sat, val = hsv
    mask = np.zeros((size, size), dtype=np.uint8)
    for c in classes:
        _, c_hue, texture, shape = CLASSES[c]
        inside, cy, cx = _place(rng, shape, yy, xx, size, water_top, mask)
        tex = _texture(texture, yy, xx, cy, cx, rng, size)
        hue = np.where(inside, c_hue + rng.uniform(-8, 8) + 4 * tex, hue)
        sat = np.where(inside, rng.uniform(0.65, 0.95) - 0.05 * tex, sat)
        val = np.where(inside, rng.uniform(0.65, 0.9) + 0.14 * tex, val)
        mask[inside] = c + 1
    return mask, (hue, sat, val)


def _ignore_edges(mask: np.ndarray) -> np.ndarray:
    """``mask`` with a thin ignore band on label boundaries, as VOC has."""
    edge = np.zeros_like(mask, dtype=bool)
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    mask[edge] = IGNORE_INDEX
    return mask


def generate_image(seed: int, part: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One (image uint8 S×S×3, mask uint8 S×S) pair; deterministic in (seed, part, index)."""
    rng = np.random.default_rng([seed, part, index])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    n_obj = int(rng.choice([1, 2, 3], p=[0.4, 0.4, 0.2]))
    classes = rng.integers(0, len(CLASSES), n_obj)
    hsv = _background(rng, yy, xx, size)
    water_top, hsv = _add_water(rng, yy, xx, size, classes, hsv)
    mask, (hue, sat, val) = _add_objects(rng, yy, xx, size, classes, water_top, hsv)
    rgb = hsv_to_rgb(hue, np.clip(sat, 0, 1), np.clip(val, 0, 1))
    rgb += rng.normal(0, 0.015, rgb.shape)
    image = np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8)
    return image, _ignore_edges(mask)


def write_demo(out: Path, *, seed: int = 0, size: int = 128, n_train: int = 300, n_val: int = 60) -> Path:
    """Write the dataset into ``out`` atomically (a sibling temp folder renamed at the end)."""
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "masks").mkdir()
        (tmp / "splits").mkdir()
        (tmp / "classes.txt").write_text("".join(f"{c[0]}\n" for c in CLASSES))
        rows, palette = [], flat_palette()
        for part, (split, count) in enumerate((("train", n_train), ("val", n_val))):
            ids = [f"{split}_{i:05d}" for i in range(count)]
            for i, sample_id in enumerate(ids):
                image, mask = generate_image(seed, part, i, size)
                Image.fromarray(image).save(tmp / "images" / f"{sample_id}.png", compress_level=1)
                m = Image.new("P", (size, size))
                m.frombytes(mask.tobytes())
                m.putpalette(palette)
                m.save(tmp / "masks" / f"{sample_id}.png", compress_level=1)
                present = [CLASSES[k - 1][0] for k in np.unique(mask) if 0 < k <= len(CLASSES)]
                rows.append(f"{sample_id},{' '.join(present)}\n")
            (tmp / "splits" / f"{split}.txt").write_text("".join(f"{s}\n" for s in ids))
        (tmp / "labels.csv").write_text("id,labels\n" + "".join(rows))
        meta = {"format": FORMAT, "seed": seed, "size": size, "n_train": n_train, "n_val": n_val}
        (tmp / "demo.json").write_text(json.dumps(meta, indent=1) + "\n")
        if out.exists() and not any(out.iterdir()):
            out.rmdir()
        os.replace(tmp, out)  # fails if out exists and is not empty: never overwrite someone's folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


class DemoOptions(BaseModel):
    """``[data.options]`` of the demo adapter: what the generator writes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = Field(0, description="Seed of the generated demo dataset")
    size: int = Field(128, ge=32, description="Side of the generated demo images")
    n_train: int = Field(300, ge=1, description="Number of generated demo training images")
    n_val: int = Field(60, ge=1, description="Number of generated demo validation images")
    generate: bool = Field(
        False,
        description=(
            "Generate the demo data at data.root when it is missing (else a missing root is an error)"
        ),
    )


def ensure_demo(data_settings) -> Path:
    """The demo data at data.root; generated only with data.options.generate (a mistyped root must not
    silently become a new dataset). An existing one is kept (another process may race us)."""
    root = Path(data_settings.root).expanduser()
    wanted = DemoOptions.model_validate(data_settings.options).model_dump()
    generate = wanted.pop("generate")
    if not (root / "classes.txt").is_file():
        if not generate:
            raise UserError(
                f"{root}: no demo data there (no classes.txt); generate it with `dupl data demo --out "
                f"{root}` or --set data.options.generate=true, or fix data.root"
            )
        try:
            write_demo(root, **wanted)
        except OSError:
            if not (root / "classes.txt").is_file():
                raise
    _warn_if_generated_otherwise(root, wanted)
    return root


def _warn_if_generated_otherwise(root: Path, wanted: dict) -> None:
    """demo.json records the generator's options; it only informs, so a bad one is named, not fatal."""
    meta_file = root / "demo.json"
    if not meta_file.is_file():
        return
    try:
        meta = json.loads(read_text(meta_file, "demo data record"))
        if not isinstance(meta, dict):
            raise ValueError("not a JSON object")
    except (UserError, ValueError, RecursionError) as exc:
        why = clip(str(exc)) if not isinstance(exc, RecursionError) else "nested too deeply"
        log.warning("%s: unreadable (%s); its generation settings are not checked", meta_file, why)
        return
    differs = {k: (meta.get(k), v) for k, v in wanted.items() if meta.get(k) != v}
    if differs:
        log.warning(
            "demo data in %s was generated with other settings %s; delete it to regenerate", root, differs
        )


def build(data_settings, split: str):
    ensure_demo(data_settings)
    return folder.build(data_settings, split)


build.options_model = DemoOptions
