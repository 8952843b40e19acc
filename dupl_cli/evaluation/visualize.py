"""Pictures: palette PNG masks (mode P), overlays, CAM heat maps, confusion-matrix PNG, HTML report.

Masks, overlays and heat maps are plain arrays (PIL and numpy); the confusion matrix is a matplotlib
chart (``plots.py``, the ``plots`` extra). The report embeds its images as base64, so the page is one
self-contained file.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from dupl_cli.core.atomic import atomic_write, atomic_write_text
from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.evaluation.plots import confusion_figure, figure_png, require_matplotlib

IGNORE_COLOUR = (224, 224, 192)  # the VOC boundary colour


def flat_palette(palette: Sequence[Sequence[int]]) -> list[int]:
    """768 palette values: the classes' colours, black for unused ids, the ignore colour at 255."""
    table = np.zeros((256, 3), dtype=np.uint8)
    table[: len(palette)] = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    table[IGNORE_INDEX] = IGNORE_COLOUR
    return table.reshape(-1).tolist()


def mask_image(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    img = Image.fromarray(np.ascontiguousarray(mask, dtype=np.uint8), mode="P")
    img.putpalette(flat_palette(palette))
    return img


def save_mask(path: Path, mask: np.ndarray, palette: Sequence[Sequence[int]]) -> Path:
    """Palette PNG (mode P: pixel value = class id, 255 = uncertain), written atomically."""
    path = Path(path)
    img = mask_image(mask, palette)
    atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))
    return path


def load_mask(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        if img.mode not in ("P", "L"):
            raise ValueError(f"{path}: expected a palette or greyscale PNG, got mode {img.mode}")
        return np.asarray(img, dtype=np.uint8).copy()


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    return np.asarray(flat_palette(palette), dtype=np.uint8).reshape(256, 3)[mask]


def overlay(
    image: np.ndarray, mask: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5
) -> np.ndarray:
    """Image blended with the class colours; background and uncertain pixels keep the image."""
    colours = colorize(mask, palette).astype(np.float32)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * colours
    keep = ((mask == 0) | (mask == IGNORE_INDEX))[..., None]
    return np.where(keep, image, blend).round().clip(0, 255).astype(np.uint8)


def with_legend(
    picture: np.ndarray,
    mask: np.ndarray,
    palette: Sequence[Sequence[int]],
    class_names: Sequence[str] | None = None,
) -> Image.Image:
    """``picture`` with a legend of the classes present in ``mask`` on a light band along its bottom
    edge (drawn inside, so the overlay keeps the image's size and stays aligned with the mask)."""
    ids = [int(k) for k in np.unique(mask) if 0 < k < len(palette)]
    entries = [(class_names[k] if class_names is not None and k < len(class_names) else f"class {k}",
                tuple(int(c) for c in palette[k])) for k in ids]  # fmt: skip
    if (mask == IGNORE_INDEX).any():
        entries.append(("uncertain", IGNORE_COLOUR))
    img = Image.fromarray(picture).convert("RGB")
    if not entries:
        return img
    w, h = img.size
    rows, x = [[]], 2
    for name, colour in entries:  # wrap the entries over as many lines as the width needs
        width = 18 + 6 * len(name)
        if rows[-1] and x + width > w:
            rows.append([])
            x = 2
        rows[-1].append((name, colour, x))
        x += width
    top = max(0, h - 15 * len(rows) - 2)
    band = Image.new("RGB", (w, h - top), "white")
    img.paste(Image.blend(img.crop((0, top, w, h)), band, 0.75), (0, top))
    draw = ImageDraw.Draw(img)
    for r, row in enumerate(rows):
        y = top + 2 + 15 * r
        for name, colour, x in row:
            draw.rectangle([x, y, x + 10, y + 10], fill=colour, outline="black")
            draw.text((x + 14, y), name, fill="black")
    return img


def heatmap(values: np.ndarray) -> np.ndarray:
    """[0, 1] H×W → H×W×3 uint8 with a blue-cyan-yellow-red ramp (no matplotlib needed)."""
    v = np.clip(values, 0, 1)[..., None]
    stops = np.array([[0, 0, 128], [0, 160, 255], [255, 230, 0], [220, 0, 0]], dtype=np.float32)
    pos = v * (len(stops) - 1)
    lo = np.floor(pos).clip(0, len(stops) - 2).astype(int)[..., 0]
    frac = pos[..., 0] - lo
    return (stops[lo] * (1 - frac[..., None]) + stops[lo + 1] * frac[..., None]).astype(np.uint8)


def cam_overlay(image: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return ((1 - alpha) * image.astype(np.float32) + alpha * heatmap(cam).astype(np.float32)).astype(np.uint8)


def confusion_png(matrix: np.ndarray, class_names: Sequence[str]) -> Image.Image:
    """The confusion-matrix chart (``plots.confusion_figure``: row-normalised, cell values in percent,
    a colour bar) as an image; one line naming the ``plots`` extra when matplotlib is missing."""
    require_matplotlib("the confusion-matrix picture")
    img = Image.open(io.BytesIO(figure_png(confusion_figure(matrix, class_names))))
    img.load()
    return img


def png_data_uri(array_or_image) -> str:
    img = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _file_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def thumbnail(array: np.ndarray, side: int = 160, nearest: bool = False) -> Image.Image:
    img = Image.fromarray(array)
    img.thumbnail((side, side), Image.NEAREST if nearest else Image.BILINEAR)
    return img


_CSS = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f2f2f2}td.l,th.l{text-align:left}
.sw{display:inline-block;width:12px;height:12px;border:1px solid #555;margin-right:4px;vertical-align:middle}
figure{display:inline-block;margin:2px 4px;text-align:center;font-size:11px}
figure img,img.zoom{display:block;width:256px;image-rendering:pixelated;cursor:zoom-in}
img.zoom{width:auto;max-width:100%}figure.chart img{width:480px}
img.big{width:auto!important;max-width:none;cursor:zoom-out}
.row{border-top:1px solid #ddd;padding:6px 0}"""
_ZOOM = "onclick=\"this.classList.toggle('big')\""  # click an image to see it at full size


def _fmt(x) -> str:
    return "–" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{100 * x:.1f}"


class HtmlReport:
    """A self-contained HTML page: protocol, metrics table, legend, and sample rows."""

    def __init__(self, title: str, class_names: Sequence[str], palette: Sequence[Sequence[int]]) -> None:
        self.title, self.class_names, self.palette = title, list(class_names), palette
        self.sections: list[str] = []

    def add_protocol(self, protocol: dict) -> None:
        items = "".join(
            f"<tr><th class=l>{html.escape(str(k))}</th><td class=l>{html.escape(str(v))}</td></tr>"
            for k, v in protocol.items()
        )
        self.sections.append(f"<h2>Protocol</h2><table>{items}</table>")

    def add_metrics(self, metrics, confusion: Image.Image | None = None) -> None:
        rows = []
        for i, name in enumerate(metrics.class_names):
            colour = "rgb({},{},{})".format(*self.palette[i]) if i < len(self.palette) else "#fff"
            rows.append(
                f"<tr><td class=l><span class=sw style='background:{colour}'></span>{html.escape(name)}"
                f"{'' if metrics.present[i] else ' (absent)'}</td><td>{_fmt(metrics.iou[i])}</td>"
                f"<td>{_fmt(metrics.precision[i])}</td><td>{_fmt(metrics.recall[i])}</td>"
                f"<td>{_fmt(metrics.over_activation[i])}</td></tr>"
            )
        summary = (
            f"<p><b>mIoU {_fmt(metrics.miou)}</b> (over {sum(metrics.present)} classes present in the ground "
            f"truth) · pixel accuracy {_fmt(metrics.pixel_accuracy)} · uncertain pixels "
            f"{_fmt(metrics.uncertain_share)}%</p>"
        )
        table = (
            "<table><tr><th "
            "class=l>class</th><th>IoU</th><th>precision</th><th>recall</th><th>over-activation</th></tr>"
            + "".join(rows)
            + "</table>"
        )
        cm = (
            f"<h3>Confusion matrix (row-normalised)</h3>"
            f"<img class=zoom {_ZOOM} alt='confusion matrix' src='{png_data_uri(confusion)}'>"
            if confusion
            else ""
        )
        self.sections.append(f"<h2>Metrics</h2>{summary}{table}{cm}")

    def add_curves(self, folder: Path) -> None:
        """The run's training curves (``<run>/curves/*.png``), when it has any: the files' own bytes."""
        files = sorted(Path(folder).glob("*.png"))
        if not files:
            return
        figs = "".join(
            f"<figure class=chart><img class=zoom {_ZOOM} alt='{html.escape(p.stem)}' "
            f"src='{_file_data_uri(p)}'>"
            f"<figcaption>{html.escape(p.name)}</figcaption></figure>"
            for p in files
        )
        self.sections.append(f"<h2>Training curves</h2><p>from {html.escape(str(folder))}</p>{figs}")

    def add_heading(self, text: str) -> None:
        self.sections.append(f"<h2>{html.escape(text)}</h2>")

    def add_sample(
        self, sample_id: str, panels: list[tuple[str, np.ndarray | Image.Image]], note: str | None = None
    ) -> None:
        figs = "".join(
            f"<figure><img {_ZOOM} alt='{html.escape(cap)}' src='{png_data_uri(img)}'>"
            f"<figcaption>{html.escape(cap)}</figcaption></figure>"
            for cap, img in panels
        )
        extra = f" · {html.escape(note)}" if note else ""
        self.sections.append(f"<div class=row><b>{html.escape(sample_id)}</b>{extra}<br>{figs}</div>")

    def legend(self) -> str:
        items = "".join(
            "<span style='margin-right:10px'><span class=sw "
            f"style='background:rgb({r},{g},{b})'></span>{html.escape(n)}</span>"
            for n, (r, g, b) in zip(self.class_names, self.palette, strict=False)
        )
        r, g, b = IGNORE_COLOUR
        return (
            f"<p>{items}<span><span class=sw style='background:rgb({r},{g},{b})'></span>uncertain / "
            "ignored</span></p>"
        )

    def render(self) -> str:
        body = "".join(self.sections)
        return (
            f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(self.title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(self.title)}</h1>{self.legend()}{body}</body></html>"
        )

    def write(self, path: Path) -> Path:
        atomic_write_text(Path(path), self.render())
        return Path(path)


def sample_panels(
    image: np.ndarray,
    palette: Sequence[Sequence[int]],
    class_names: Sequence[str],
    *,
    cams: np.ndarray | None = None,
    cam_classes: Sequence[int] = (),
    pseudo: np.ndarray | None = None,
    prediction: np.ndarray | None = None,
    ground_truth: np.ndarray | None = None,
    side: int = 512,
) -> list[tuple[str, Image.Image]]:
    """The report row: image, CAM per present class, pseudo-label, prediction, ground truth."""
    panels = [("image", thumbnail(image, side))]
    if cams is not None:
        for cam, cls in zip(cams, cam_classes, strict=True):
            panels.append((f"CAM {class_names[cls]}", thumbnail(cam_overlay(image, cam), side)))
    for caption, mask in (
        ("pseudo-label", pseudo),
        ("prediction", prediction),
        ("ground truth", ground_truth),
    ):
        if mask is not None:
            panels.append((caption, thumbnail(colorize(mask, palette), side, nearest=True)))
    return panels
