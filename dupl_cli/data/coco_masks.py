"""Build VOC-style PNG masks from a COCO instances JSON (needs pycocotools: the `coco` extra)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from dupl_cli.core.errors import DataError, UserError
from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.data.palette import COCO_CLASSES, flat_palette

INSTALL_HINT = (
    "pycocotools is needed for `dupl data coco-masks`: pip install 'dupl[coco]' (or pip install pycocotools)"
)


def _mask_api():
    try:
        from pycocotools import mask as mask_api
    except ImportError:
        raise UserError(INSTALL_HINT) from None
    return mask_api


def build_masks(instances_json: Path, out_dir: Path, *, list_file: Path | None = None) -> tuple[int, int]:
    """Write <out_dir>/<file stem>.png for every image; returns (images written, images without objects).

    Class ids follow the categories sorted by COCO id (the standard 80-class order); crowd regions
    become 255; larger objects are painted first so smaller ones stay visible.
    """
    mask_api = _mask_api()
    try:
        data = json.loads(Path(instances_json).read_text(encoding="utf-8"))
        images, annotations, categories = data["images"], data.get("annotations", []), data["categories"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{instances_json}: not a COCO instances JSON ({exc})") from None
    cats = sorted(categories, key=lambda c: c["id"])
    names = [c["name"] for c in cats]
    if names != COCO_CLASSES[: len(names)] or len(names) != len(COCO_CLASSES):
        raise DataError(f"{instances_json}: categories differ from the standard 80 COCO classes")
    cat_to_id = {c["id"]: k + 1 for k, c in enumerate(cats)}
    by_image: dict[int, list[dict]] = {}
    for ann in annotations:
        by_image.setdefault(ann["image_id"], []).append(ann)
    out_dir.mkdir(parents=True, exist_ok=True)
    palette, written, empty, listed = flat_palette(), 0, 0, []
    for info in images:
        h, w = int(info["height"]), int(info["width"])
        mask = np.zeros((h, w), dtype=np.uint8)
        anns = sorted(by_image.get(info["id"], []), key=lambda a: -float(a.get("area", 0)))
        for ann in anns:
            seg = ann["segmentation"]
            if isinstance(seg, list):
                rle = mask_api.merge(mask_api.frPyObjects(seg, h, w))
            elif isinstance(seg.get("counts"), list):
                rle = mask_api.frPyObjects(seg, h, w)
            else:
                rle = seg
            pixels = mask_api.decode(rle).astype(bool)
            mask[pixels] = IGNORE_INDEX if ann.get("iscrowd", 0) else cat_to_id[ann["category_id"]]
        stem = Path(info["file_name"]).stem
        img = Image.fromarray(mask, mode="L").convert("P")
        img.putpalette(palette)
        img.save(out_dir / f"{stem}.png")
        written += 1
        if not ((mask > 0) & (mask != IGNORE_INDEX)).any():
            empty += 1
        else:
            listed.append(stem)
    if list_file is not None:
        list_file.parent.mkdir(parents=True, exist_ok=True)
        list_file.write_text("".join(f"{s}\n" for s in listed))  # images with at least one labelled object
    return written, empty
