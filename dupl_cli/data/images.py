"""Robust image and mask decoding: every failure is a DataError naming the file and the problem."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dupl_cli.core.errors import DataError
from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.data.palette import colors_to_ids

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
"""Extensions read as images (lower case; adapters also try the upper-case form)."""


def _open(path: Path, what: str) -> Image.Image:
    if not path.is_file():
        if path.is_dir():
            raise DataError(f"{path}: is a directory, not an {what} file")
        if path.is_symlink():
            raise DataError(f"{path}: dangling symbolic link (its target {os.readlink(path)} does not exist)")
        raise DataError(f"{path}: missing {what} (file not found)")
    try:
        img = Image.open(path)
        return img
    except UnidentifiedImageError:
        raise DataError(f"{path}: cannot decode {what} (not a recognised image format)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: cannot read {what} ({exc})") from None


def _load(img: Image.Image, path: Path, what: str) -> None:
    try:
        img.load()
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        msg = str(exc) or type(exc).__name__
        if "truncated" in msg:
            msg = "file is truncated"
        raise DataError(f"{path}: corrupt {what} ({msg})") from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit greyscale: scale the full range down to 8 bits instead of clipping at 255.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        if mode == "F":
            top = 1.0 if arr.max() <= 1.0 else 255.0
        grey = np.clip(np.rint(arr / top * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA").convert("RGB")  # alpha dropped: colours kept as stored
    elif mode != "RGB":
        img = img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV
    return np.asarray(img, dtype=np.uint8).copy()


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image to RGB uint8 H×W×3 with its EXIF orientation applied."""
    path = Path(path)
    img = _open(path, "image")
    with img:
        _load(img, path, "image")
        try:
            img = ImageOps.exif_transpose(img)
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"{path}: bad EXIF orientation ({exc})") from None
        arr = _to_rgb(img)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{path}: image has unusable shape {arr.shape}")
    return arr


def probe_image(path: str | Path) -> tuple[int, int]:
    """Fully parse an image cheaply (JPEGs decoded at 1/8 scale); returns its (height, width) after EXIF."""
    path = Path(path)
    img = _open(path, "image")
    with img:
        width, height = img.size
        if img.format == "JPEG":
            img.draft("RGB", (max(1, width // 8), max(1, height // 8)))
        _load(img, path, "image")
        orientation = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return height, width


def read_mask(path: str | Path, num_classes: int) -> np.ndarray:
    """Decode a label mask to uint8 H×W ids (0 background, 1..C, 255 ignore).

    Single-channel and palette PNGs hold the ids directly (VOC ships palette PNGs whose index is the
    class id); an RGB mask is colour-coded and mapped through the VOC palette.
    """
    path = Path(path)
    img = _open(path, "mask")
    with img:
        _load(img, path, "mask")
        if img.mode in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
            ids = np.asarray(img).astype(np.int64)
        elif img.mode in ("RGB", "RGBA"):
            rgb = np.asarray(img.convert("RGB"))
            if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all():
                ids = rgb[..., 0].astype(np.int64)  # a grey-scale mask saved as RGB
            else:
                mapped, unknown = colors_to_ids(rgb, num_classes)
                if unknown.any():
                    ys, xs = np.nonzero(unknown)
                    colour = tuple(int(v) for v in rgb[ys[0], xs[0]])
                    raise DataError(
                        f"{path}: colour-coded mask has {int(unknown.sum())} pixels with colours outside the "
                        f"palette of {num_classes} classes, e.g. {colour} at (y={ys[0]}, x={xs[0]})"
                    )
                return mapped
        else:
            raise DataError(
                f"{path}: unsupported mask mode {img.mode!r} (expected single-channel ids or a palette PNG)"
            )
    bad = (ids > num_classes) & (ids != IGNORE_INDEX) | (ids < 0)
    if bad.any():
        values = np.unique(ids[bad])[:5].tolist()
        raise DataError(
            f"{path}: mask values {values} out of range (valid: 0..{num_classes} and {IGNORE_INDEX} ignore)"
        )
    return ids.astype(np.uint8)


def labels_from_mask(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Multi-hot float32 C-vector of the classes present in a mask."""
    counts = np.bincount(mask.reshape(-1), minlength=256)
    return (counts[1 : num_classes + 1] > 0).astype(np.float32)
