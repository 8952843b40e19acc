"""A harder generated dataset than the demo, in the folder layout the ``folder`` adapter reads.

Twelve classes (the demo has five) whose colours overlap in pairs, so texture and shape have to
separate them; objects of 6-14 % of the side (the demo: 13-26 %), one to four per image; four
context regions that each co-occur with some classes (water under boats, sky above planes, birds
and kites, road under cars and signs, grass under cows, sheep, flowers and trees) and also appear
alone, so CAMs spill onto context as on VOC; untextured unlabelled distractor shapes. Masks have a
255 band on object boundaries. Deterministic in (seed, split, index); vectorised numpy.

Writes ``classes.txt``, ``images/``, ``masks/``, ``labels.csv``, ``splits/{train,val}.txt``.
Train with ``--set data.adapter=folder --set data.root=DIR --set data.train_split=train`` (or
``bench_ablation.py --data DIR``). About 10 s for 300 + 60 images of 128 px.

    python benchmarks/make_hard_data.py --out /tmp/hard [--size 128] [--n-train 300] [--n-val 60]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

IGNORE = 255
# name, hue (degrees), saturation, texture, shape, context
CLASSES = [
    ("boat", 15, 0.8, "hstripes", "hull", "water"),
    ("plane", 210, 0.25, "vstripes", "cross", "sky"),
    ("car", 30, 0.8, "checker", "rect", "road"),
    ("cow", 95, 0.6, "mottled", "blob", "grass"),
    ("bird", 50, 0.7, "dots", "triangle", "sky"),
    ("sheep", 55, 0.3, "mottled", "ellipse", "grass"),
    ("balloon", 200, 0.8, "radial", "ellipse", None),
    ("sign", 225, 0.8, "checker", "rect", "road"),
    ("flower", 300, 0.8, "radial", "petals", "grass"),
    ("tree", 115, 0.7, "mottled", "blob", "grass"),
    ("kite", 330, 0.8, "hstripes", "triangle", "sky"),
    ("bottle", 160, 0.7, "vstripes", "bottle", None),
]
# name, hue, saturation, value, where (top band or bottom band)
CONTEXTS = {
    "water": (185, 0.45, 0.5, "bottom"),
    "sky": (205, 0.35, 0.8, "top"),
    "road": (0, 0.02, 0.35, "bottom"),
    "grass": (100, 0.55, 0.45, "bottom"),
}
CONTEXT_ALONE_P = 0.15


def hsv_to_rgb(h, s, v) -> np.ndarray:
    """Vectorised HSV (h in degrees, s and v in [0, 1]) -> float RGB (..., 3)."""
    h = np.mod(h, 360.0) / 60.0
    c = v * s
    x = c * (1 - np.abs(np.mod(h, 2) - 1))
    sector = np.floor(h).astype(np.int64) % 6
    z = np.zeros_like(c)
    r = np.choose(sector, [c, x, z, z, x, c])
    g = np.choose(sector, [x, c, c, x, z, z])
    b = np.choose(sector, [z, z, x, c, c, x])
    return np.stack([r, g, b], -1) + (v - c)[..., None]


def smooth_noise(rng, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1]: a coarse grid upsampled bilinearly."""
    grid = rng.uniform(-1, 1, (cells + 1, cells + 1))
    t = np.linspace(0, cells, size)
    i0 = np.minimum(t.astype(int), cells - 1)
    f = t - i0
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]
    return rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]


def shape_mask(shape: str, yy, xx, cy, cx, r, angle, rng) -> np.ndarray:
    dy, dx = yy - cy, xx - cx
    ca, sa = np.cos(angle), np.sin(angle)
    u, w = (dx * ca + dy * sa) / r, (-dx * sa + dy * ca) / r
    if shape == "ellipse":
        return (u / 1.2) ** 2 + (w / 0.8) ** 2 <= 1
    if shape == "rect":
        return (np.abs(u) <= 1) & (np.abs(w) <= 0.7)
    if shape == "bottle":
        return (np.abs(u) <= 0.35) & (np.abs(w) <= 1.1) | ((np.abs(u) <= 0.15) & (w < -1.1) & (w > -1.5))
    if shape == "hull":
        return (np.abs(w) <= 0.5) & (np.abs(u) <= 1.3 - 0.5 * (w + 0.5))
    if shape == "cross":
        return ((np.abs(u) <= 1.3) & (np.abs(w) <= 0.25)) | ((np.abs(u) <= 0.25) & (np.abs(w) <= 1.0))
    if shape == "triangle":
        return (w <= 0.7) & (w >= -0.9) & (np.abs(u) <= (0.7 - w) * 0.6)
    theta, radius = np.arctan2(w, u), np.hypot(u, w)
    if shape == "petals":
        return radius <= 0.75 + 0.25 * np.cos(rng.integers(5, 8) * theta)
    wobble = sum(rng.uniform(0.05, 0.15) * np.cos(k * theta + rng.uniform(0, 6.3)) for k in (2, 3, 5))
    return radius <= 0.85 + wobble  # blob


def texture(kind: str, yy, xx, cy, cx, rng, size: int) -> np.ndarray:
    period = rng.uniform(3.0, 5.0) * size / 128
    phase = rng.uniform(0, 6.3)
    if kind == "hstripes":
        return np.sign(np.sin(2 * np.pi * yy / period + phase))
    if kind == "vstripes":
        return np.sign(np.sin(2 * np.pi * xx / period + phase))
    if kind == "dots":
        d = np.hypot(np.mod(yy, period * 1.3) - period * 0.65, np.mod(xx, period * 1.3) - period * 0.65)
        return np.where(d < period * 0.35, -1.0, 0.6)
    if kind == "checker":
        return np.where((np.floor(yy / period) + np.floor(xx / period)) % 2 == 0, 1.0, -1.0)
    if kind == "radial":
        return np.sign(np.sin(6 * np.arctan2(yy - cy, xx - cx)))
    return smooth_noise(rng, size, max(6, size // 6))  # mottled


def background(rng, yy, xx, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluttered low-saturation HSV background with faint blobs and lines."""
    hue = rng.uniform(0, 360) + 30 * smooth_noise(rng, size, 3)
    sat = np.clip(rng.uniform(0.05, 0.2) + 0.08 * smooth_noise(rng, size, 4), 0, 0.3)
    val = rng.uniform(0.38, 0.62) + 0.1 * smooth_noise(rng, size, 6)
    for _ in range(rng.integers(3, 7)):
        blob = shape_mask("blob", yy, xx, *rng.uniform(0, size, 2), rng.uniform(0.05, 0.2) * size, 0.0, rng)
        val = np.where(blob, val + rng.uniform(-0.1, 0.1), val)
        hue = np.where(blob, hue + rng.uniform(-40, 40), hue)
    return hue, sat, val


def add_context(rng, name: str, yy, xx, hsv, size: int) -> np.ndarray:
    """Paint a context band (in place on the hsv arrays); returns its mask."""
    hue0, sat0, val0, where = CONTEXTS[name]
    edge = rng.uniform(0.5, 0.68) * size + 2 * np.sin(xx / 6 + rng.uniform(0, 6.3))
    band = yy >= edge if where == "bottom" else yy <= size - edge
    ripple = 0.06 * np.sin(xx / 3.0 + 2 * np.sin(yy / 4.0)) + 0.05 * smooth_noise(rng, size, 8)
    for arr, value in zip(hsv, (hue0 + rng.uniform(-8, 8), sat0, val0 + ripple), strict=True):
        arr[...] = np.where(band, value, arr)
    return band


def place(rng, shape, yy, xx, r, band, taken, size: int):
    """The best of 8 placements (least overlap with earlier objects), on the context band if any,
    with the centre away from the image border."""
    central = (np.abs(yy - size / 2) < 0.35 * size) & (np.abs(xx - size / 2) < 0.35 * size)
    spots = np.nonzero(central & band) if band is not None else None
    best = None
    for _ in range(8):
        cy, cx = rng.uniform(0.15, 0.85, 2) * size
        if spots is not None and len(spots[0]):
            k = rng.integers(len(spots[0]))
            cy, cx = spots[0][k], spots[1][k]
        inside = shape_mask(shape, yy, xx, cy, cx, r, rng.uniform(-0.4, 0.4), rng)
        overlap = int((inside & taken).sum())
        if best is None or overlap < best[0]:
            best = (overlap, inside, cy, cx)
        if overlap == 0:
            break
    return best[1:]


def generate(seed: int, part: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, part, index])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    hue, sat, val = background(rng, yy, xx, size)
    n_cls = int(rng.choice([1, 2, 3], p=[0.45, 0.4, 0.15]))
    chosen = rng.choice(len(CLASSES), n_cls, replace=False)
    objects = [c for c in chosen for _ in range(int(rng.choice([1, 2], p=[0.7, 0.3])))]
    bands = {}
    wanted = {CLASSES[c][5] for c in objects if CLASSES[c][5] and rng.random() < 0.9}
    wanted |= {name for name in CONTEXTS if rng.random() < CONTEXT_ALONE_P}
    for name in sorted(wanted)[:2]:  # at most two bands: one top, one bottom in practice
        bands[name] = add_context(rng, name, yy, xx, (hue, sat, val), size)
    for _ in range(rng.integers(1, 4)):  # unlabelled, untextured distractors
        d = shape_mask(str(rng.choice(["ellipse", "rect", "blob"])), yy, xx, *rng.uniform(0, size, 2),
                       rng.uniform(0.04, 0.1) * size, rng.uniform(0, 3.1), rng)  # fmt: skip
        hue, sat = np.where(d, rng.uniform(0, 360), hue), np.where(d, rng.uniform(0.4, 0.8), sat)
        val = np.where(d, rng.uniform(0.5, 0.8), val)
    mask = np.zeros((size, size), np.uint8)
    for c in objects:
        _, c_hue, c_sat, tex_kind, shape, context = CLASSES[c]
        r = rng.uniform(0.06, 0.14) * size
        inside, cy, cx = place(rng, shape, yy, xx, r, bands.get(context), mask > 0, size)
        tex = texture(tex_kind, yy, xx, cy, cx, rng, size)
        hue = np.where(inside, c_hue + rng.uniform(-10, 10) + 5 * tex, hue)
        sat = np.where(inside, c_sat + rng.uniform(-0.08, 0.08) - 0.06 * tex, sat)
        val = np.where(inside, rng.uniform(0.6, 0.85) + 0.15 * tex, val)
        mask[inside] = c + 1
    rgb = hsv_to_rgb(hue, np.clip(sat, 0, 1), np.clip(val, 0, 1)) + rng.normal(0, 0.02, (size, size, 3))
    edge = np.zeros((size, size), bool)
    edge[:, :-1] |= mask[:, :-1] != mask[:, 1:]
    edge[:-1, :] |= mask[:-1, :] != mask[1:, :]
    mask[edge] = IGNORE
    return np.clip(np.rint(rgb * 255), 0, 255).astype(np.uint8), mask


def write(out: Path, seed: int, size: int, n_train: int, n_val: int) -> None:
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out}: exists and is not empty")
    for sub in ("images", "masks", "splits"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    (out / "classes.txt").write_text("".join(f"{c[0]}\n" for c in CLASSES))
    rows = ["id,labels\n"]
    for part, (split, count) in enumerate((("train", n_train), ("val", n_val))):
        ids = [f"{split}_{i:05d}" for i in range(count)]
        for i, sample_id in enumerate(ids):
            image, mask = generate(seed, part, i, size)
            Image.fromarray(image).save(out / "images" / f"{sample_id}.png", compress_level=1)
            Image.fromarray(mask).save(out / "masks" / f"{sample_id}.png", compress_level=1)
            present = [CLASSES[k - 1][0] for k in np.unique(mask) if 0 < k <= len(CLASSES)]
            rows.append(f"{sample_id},{' '.join(present)}\n")
        (out / "splits" / f"{split}.txt").write_text("".join(f"{s}\n" for s in ids))
    (out / "labels.csv").write_text("".join(rows))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--n-train", type=int, default=300)
    p.add_argument("--n-val", type=int, default=60)
    args = p.parse_args(argv)
    write(args.out, args.seed, args.size, args.n_train, args.n_val)
    print(f"wrote {args.n_train} train + {args.n_val} val images ({args.size} px) to {args.out}")


if __name__ == "__main__":
    main()
