"""Issue 16 item 10: reports show the worst images first with their IoU, say what they evaluate, and
the confusion matrix carries numbers, axis titles and a scale."""

from __future__ import annotations

import re
import shutil

import numpy as np

from dupl_cli.evaluation.visualize import confusion_png
from dupl_cli.predict.loop import Item
from dupl_cli.predict.sinks import ReportSamples, image_iou


def test_image_iou_counts_classes_in_truth_or_prediction_and_ignores_255():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 255]], np.uint8)
    pred = np.array([[0, 0, 1, 2], [0, 1, 1, 2]], np.uint8)
    # background 3/4, class 1: 2/(2+... ) = inter 2, union 3 (gt) + 3 (pred) - 2 = 4;
    # class 2 only predicted: 0
    assert np.isclose(image_iou(pred, gt, 3), np.mean([3 / 4, 2 / 4, 0.0]))
    assert image_iou(gt.copy(), gt, 3) == 1.0


def test_report_samples_keep_the_worst_images_worst_first():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 3, (8, 8)).astype(np.uint8)
    samples = ReportSamples(3, num_classes=3)
    shares = [0.9, 0.1, 0.5, 0.3, 0.7, 0.0]  # share of pixels predicted wrong
    for k, share in enumerate(shares):
        pred = gt.copy()
        wrong = rng.random(gt.shape) < share
        pred[wrong] = (gt[wrong] + 1) % 3
        item = Item(key=k, name=f"im{k}", image=np.zeros((8, 8, 3), np.uint8), mask=gt)
        samples.begin(item)
        samples.label(item, 0, pred)
    rows = list(samples.rows.values())
    assert [r["id"] for r in rows] == ["im0", "im4", "im2"]  # the three most wrong, worst first
    assert rows[0]["iou"] <= rows[1]["iou"] <= rows[2]["iou"]


def test_confusion_png_is_legible_at_81_classes():
    names = ["background", *(f"class{i:02d}" for i in range(80))]
    m = np.eye(81, 82, dtype=np.int64) * 90 + 1
    img = confusion_png(m, names)
    assert img.width > 82 * 20 and img.height > 81 * 20  # cells large enough for two-digit numbers
    small = confusion_png(np.array([[9, 1], [0, 10]]), ["background", "a"])
    grid = np.asarray(small)
    assert (grid.min(-1) < 80).sum() > 200  # numbers, names, axis titles and scale drawn in black


def test_evaluation_reports_name_their_source_and_rank_images(tiny_run, run_cli, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    for extra, title in (((), "segmentation on val"), (("--cams",), "CAM pseudo-labels on val")):
        report = tmp_path / f"report{len(extra)}.html"
        result = run_cli("evaluate", run, *extra, "--report", report, "--out", tmp_path / f"o{len(extra)}")
        assert result.exit_code == 0, result.output
        text = report.read_text()
        assert f"<title>dupl evaluate: {title}</title>" in text
        ious = [float(x) for x in re.findall(r"image IoU ([0-9.]+)", text)]
        assert len(ious) == 4 and ious == sorted(ious)
        assert "lowest image IoU first" in text and "classList.toggle('big')" in text


def test_reports_embed_the_runs_training_curves(tiny_run, run_cli, tmp_path):
    import json

    from PIL import Image

    from dupl_cli.evaluation.curves import write_curves

    run = tmp_path / "run"
    shutil.copytree(tiny_run[0], run)
    records = [
        {"step": s, "loss/cls": 1.0 / s, "loss/seg": 0.5, "lr": 1e-4 * s, "tau_h": 0.7, "noise_share": 0.1}
        for s in (1, 2, 3)
    ]
    records.append({"step": 3, "validation": {"seg_s1": 10.0, "seg_s2": 12.0}, "best_student": 2})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    written = write_curves(run)
    assert [p.name for p in written] == ["loss.png", "lr.png", "val_miou.png", "tau_h.png", "noise_share.png"]
    with Image.open(written[0]) as img:
        assert img.size == (800, 420)
    report = tmp_path / "r.html"
    assert run_cli("evaluate", run, "--report", report, "--max-images", "1").exit_code == 0
    text = report.read_text()
    assert "<h2>Training curves</h2>" in text and text.count("alt='val_miou'") == 1


def test_overlays_carry_a_legend_of_the_classes_present(tmp_path):
    from PIL import Image

    from dupl_cli.predict.sinks import OverlaySink

    palette = [(0, 0, 0), (200, 0, 0), (0, 200, 0), (0, 0, 200)]
    mask = np.zeros((60, 160), np.uint8)
    mask[5:20, 5:30] = 2
    mask[20:30, :] = 255
    item = Item(key=0, name="x", image=np.full((60, 160, 3), 128, np.uint8))
    OverlaySink(tmp_path, palette, ["background", "cat", "dog", "bird"]).label(item, 0, mask)
    with Image.open(tmp_path / "x_overlay.jpg") as img:
        picture = np.asarray(img.convert("RGB")).astype(int)
    assert picture.shape[:2] == (60, 160)  # still aligned with the image and its mask
    band = picture[45:]  # the legend along the bottom edge, where the mask is background
    assert (np.abs(band - [0, 200, 0]).sum(-1) < 60).sum() > 20  # the swatch of "dog", present
    assert not (np.abs(band - [200, 0, 0]).sum(-1) < 60).any()  # no swatch of "cat", absent
    assert (band.min(-1) < 60).sum() > 20  # the names, in black
