"""Class lists and colour palettes (VOC colour map, standard COCO 80-class order)."""

from __future__ import annotations

import numpy as np

from dupl_cli.core.labels import IGNORE_INDEX

VOC_CLASSES = [
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]

# COCO 2014 "things" in ascending category-id order (ids 1..90 with gaps -> 1..80).
COCO_CLASSES = [
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
]


def voc_colormap(n: int = 256) -> np.ndarray:
    """The VOC bit-interleaved colour map, n×3 uint8 (entry 255 is the boundary colour)."""
    ids = np.arange(n)
    cmap = np.zeros((n, 3), dtype=np.int64)
    for shift in range(8):  # 8 bit planes, vectorised over ids
        for ch in range(3):
            bit = (ids >> (3 * shift + ch)) & 1  # bits of the id spread over r, g, b
            cmap[:, ch] |= bit << (7 - shift)
    return cmap.astype(np.uint8)


def palette_for(num_classes: int) -> list[tuple[int, int, int]]:
    """C+1 colours, background first, from the VOC colour map."""
    cmap = voc_colormap(256)
    return [tuple(int(v) for v in cmap[i]) for i in range(num_classes + 1)]


def flat_palette() -> list[int]:
    """768 values for PIL ``Image.putpalette``."""
    return voc_colormap(256).reshape(-1).tolist()


def colors_to_ids(rgb: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Map a colour-coded H×W×3 mask to ids through the VOC palette.

    Returns (ids uint8 H×W, unknown bool H×W) — unknown marks colours that are neither a class
    colour (0..C) nor the boundary colour.
    """
    cmap = voc_colormap(256).astype(np.int64)
    known = list(range(num_classes + 1)) + [IGNORE_INDEX]
    codes = (cmap[known, 0] << 16) | (cmap[known, 1] << 8) | cmap[known, 2]
    pix = rgb.astype(np.int64)
    pix_codes = (pix[..., 0] << 16) | (pix[..., 1] << 8) | pix[..., 2]
    order = np.argsort(codes)
    pos = np.searchsorted(codes[order], pix_codes).clip(0, len(codes) - 1)
    found = codes[order][pos] == pix_codes
    ids = np.asarray(known, dtype=np.int64)[order][pos]
    return np.where(found, ids, IGNORE_INDEX).astype(np.uint8), ~found
