"""Palette PNG round trip, overlays, confusion PNG, self-contained report."""

import base64
import re

import numpy as np
import torch
from PIL import Image

from dupl_cli.evaluation.metrics import confusion_matrix, metrics_from_confusion
from dupl_cli.evaluation.visualize import (
    HtmlReport,
    confusion_png,
    load_mask,
    overlay,
    sample_panels,
    save_mask,
)

PALETTE = [(0, 0, 0), (128, 0, 0), (0, 128, 0)]


def test_palette_png_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    mask = rng.choice([0, 1, 2, 255], size=(13, 29)).astype(np.uint8)
    path = save_mask(tmp_path / "m.png", mask, PALETTE)
    with Image.open(path) as img:
        assert img.mode == "P"
        pal = img.getpalette()
        assert tuple(pal[3:6]) == (128, 0, 0) and tuple(pal[255 * 3 : 256 * 3]) == (224, 224, 192)
    np.testing.assert_array_equal(load_mask(path), mask)
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


def test_overlay_keeps_background_and_blends_classes():
    image = np.full((4, 4, 3), 100, np.uint8)
    mask = np.array([[0, 1, 2, 255]] * 4, np.uint8)
    out = overlay(image, mask, PALETTE, alpha=0.5)
    assert (out[:, 0] == 100).all() and (out[:, 3] == 100).all()
    assert tuple(out[0, 1]) == (114, 50, 50)


def _changed(a, b) -> np.ndarray:
    return (np.asarray(a, dtype=np.int16) != np.asarray(b, dtype=np.int16)).any(-1)


def test_confusion_png_has_a_cell_per_entry():
    names = ["background", "a", "b"]
    cm = np.array([[5, 1, 0, 2], [0, 3, 1, 0], [1, 0, 4, 0]])
    img = confusion_png(cm, names)
    # Rows are normalised: scaling a ground-truth row changes nothing.
    assert not _changed(img, confusion_png(cm * np.array([[7], [1], [1]]), names)).any()
    # Swapping two entries of one row repaints exactly those two cells, in that row only.
    swapped_1, swapped_2 = cm.copy(), cm.copy()
    swapped_1[1, [1, 3]] = cm[1, [3, 1]]
    swapped_2[2, [0, 2]] = cm[2, [2, 0]]
    d1, d2 = _changed(img, confusion_png(swapped_1, names)), _changed(img, confusion_png(swapped_2, names))
    ys1, xs1 = np.nonzero(d1)
    ys2, xs2 = np.nonzero(d2)
    assert len(ys1) and len(ys2)
    assert ys1.max() < ys2.min()  # row 1 is drawn above row 2
    columns = np.unique(xs1)
    assert (np.diff(columns) > 1).any()  # two separate cells: the cell between them is untouched
    assert xs2.min() < xs1.min()  # column 0 is left of column 1
    # A different matrix (its transpose) gives a different picture.
    square = cm[:, :3]
    assert _changed(confusion_png(square, names), confusion_png(square.T, names)).any()


def _referenced(html_text):
    return re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", html_text)


def test_report_references_only_embedded_or_existing_files(tmp_path):
    gt = torch.tensor([[0, 1], [2, 255]])
    pred = torch.tensor([[0, 1], [1, 0]])
    metrics = metrics_from_confusion(confusion_matrix(pred, gt, 3), ["background", "cat", "dog"])
    report = HtmlReport("eval <test>", ["background", "cat", "dog"], PALETTE)
    report.add_protocol({"split": "val", "scales": "1.0"})
    report.add_metrics(metrics, confusion_png(np.array(metrics.matrix), metrics.class_names))
    image = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    cams = np.random.default_rng(1).random((1, 20, 30))
    m = np.zeros((20, 30), np.uint8)
    report.add_sample(
        "img1",
        sample_panels(
            image,
            PALETTE,
            ["background", "cat", "dog"],
            cams=cams,
            cam_classes=[1],
            pseudo=m,
            prediction=m,
            ground_truth=m,
        ),
    )
    path = report.write(tmp_path / "report.html")
    text = path.read_text()
    refs = _referenced(text)
    assert len(refs) == 6  # confusion matrix + image, CAM, pseudo-label, prediction, ground truth
    for ref in refs:
        if ref.startswith("data:image/png;base64,"):
            Image.open(__import__("io").BytesIO(base64.b64decode(ref.split(",", 1)[1]))).verify()
        else:
            assert (path.parent / ref).is_file(), ref
    assert "eval &lt;test&gt;" in text and "CAM cat" in text and "mIoU" in text
