"""bf16 autocast against fp32: CAMs, PAR-refined pseudo-labels and the training forward, on real photos.

The multi-scale CAM pass (preset voc-vitb: scales 1, 1.25, 1.5 + flip) and the segmentation forward of a
student run in fp32 and under ``torch.autocast(bfloat16)`` (CUDA when present, else CPU); printed: the
CAM's max / mean |difference|, the share of PAR-refined label pixels (refine_labels, fp32 as in the
step) that change, and the share of segmentation argmax pixels that change. Images: CamVid val photos
(--camvid, $DUPL_CAMVID or shared/data/camvid, labels from the masks), else demo scenes.
Random weights (timm test_vit / --arch): a trained model's CAMs are smoother, so treat these as bounds.
Also: the LargeFOV head and PAR with channels_last vs contiguous inputs (time and max |difference|).
Usage: python benchmarks/bench_precision.py [--arch test_vit] [--size 224] [--images 8] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from bench_loader import CAMVID_CLASSES, camvid_dir


def photos(n: int, size: int, given: str | None):
    """B×3×S×S normalised images, [0, 1] images and B×C labels."""
    from PIL import Image

    from dupl_cli.data.transforms import normalize

    folder = camvid_dir(given)
    if folder is None:
        from dupl_cli.data.demo import generate_image

        arrays = [generate_image(0, 1, i, size) for i in range(n)]
        imgs = [a[0] for a in arrays]
        present = [np.unique(a[1]) for a in arrays]
        source, classes = "demo scenes", 5
    else:
        files = sorted((folder / "val").glob("*.png"))[:: max(1, 101 // n)][:n]
        imgs = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f in files]
        present = [np.unique(np.asarray(Image.open(folder / "valannot" / f.name))) + 1 for f in files]
        source, classes = f"CamVid val ({len(files)} photos)", len(CAMVID_CLASSES)
    x01 = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
    labels = torch.zeros(len(imgs), classes)
    for b, ids in enumerate(present):
        ids = [int(i) - 1 for i in ids if 1 <= i <= classes]
        labels[b, ids] = 1
    return source, normalize(x01, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), x01, labels


def compare(student, images, x01, labels, config, device) -> dict[str, float]:
    from dupl_cli.method.cam import multiscale_cam
    from dupl_cli.method.thresholds import refine_labels

    out = {}
    runs = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            cam, cam_aux = multiscale_cam(student, images, scales=config.cam.scales, flip=True)
            seg = student.segment(images)
        th = config.thresholds
        refined = refine_labels(x01, cam.float(), labels, tau_high=th.tau_start, tau_low=th.tau_low,
                                par=config.par)  # fmt: skip
        runs[name] = (cam.float(), cam_aux.float(), seg.float(), refined)
    (c32, a32, s32, r32), (c16, a16, s16, r16) = runs["fp32"], runs["bf16"]
    present = labels.bool()[:, :, None, None].expand_as(c32).to(device)
    out["cam max |d|"] = (c32 - c16)[present].abs().max().item()
    out["cam mean |d|"] = (c32 - c16)[present].abs().mean().item()
    out["aux cam max |d|"] = (a32 - a16)[present].abs().max().item()
    out["PAR label pixels changed %"] = 100 * (r32 != r16).float().mean().item()
    out["seg logits max |d|"] = (s32 - s16).abs().max().item()
    out["seg argmax changed %"] = 100 * (s32.argmax(1) != s16.argmax(1)).float().mean().item()
    return out


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def _contiguous_head(head, x: torch.Tensor) -> torch.Tensor:
    """The LargeFOV head's convolutions in the default layout (what it ran before channels-last)."""
    d = head.conv6.dilation
    y = F.relu(F.conv2d(x, head.conv6.weight, padding=d, dilation=d))
    y = F.relu(F.conv2d(y, head.conv7.weight, padding=d, dilation=d))
    return F.conv2d(y, head.conv8.weight)


def layouts(model_settings, x01, config, repeats: int) -> list[str]:
    """LargeFOV head at ViT-B/448 sizes and PAR on images: channels_last vs contiguous, on the CPU."""
    from dupl_cli.method.par import pixel_affinity, propagate
    from dupl_cli.models.heads import LargeFOV

    torch.manual_seed(0)
    head = LargeFOV(768, 21, model_settings.head_channels, model_settings.head_dilation)
    feats = torch.randn(4, 768, 28, 28)
    with torch.no_grad():
        ref = _contiguous_head(head, feats)
        diff = ((head(feats) - ref).abs().max() / ref.abs().max()).item()
        t_c = _median_ms(lambda: _contiguous_head(head, feats), repeats)
        t_l = _median_ms(lambda: head(feats), repeats)
    lines = [f"LargeFOV head 4x768x28x28 -> 21: contiguous {t_c:.1f} ms, channels_last (used) {t_l:.1f} ms, "
             f"max |d| / max {diff:.1e}"]  # fmt: skip
    small = F.interpolate(x01, scale_factor=0.5, mode="bilinear", align_corners=False)
    probs = torch.rand(len(x01), 6, *small.shape[-2:]).softmax(1)
    ref = propagate(pixel_affinity(small, config.par), probs, config.par)
    cl_img = small.to(memory_format=torch.channels_last)
    cl_probs = probs.to(memory_format=torch.channels_last)
    cl = propagate(pixel_affinity(cl_img, config.par), cl_probs, config.par)
    t_c = _median_ms(lambda: propagate(pixel_affinity(small, config.par), probs, config.par), repeats)
    t_l = _median_ms(lambda: propagate(pixel_affinity(cl_img, config.par), cl_probs, config.par), repeats)
    lines.append(f"PAR {tuple(small.shape)} x 6 channels: contiguous (used) {t_c:.1f} ms, "
                 f"channels_last {t_l:.1f} ms, max |d| {(ref - cl).abs().max().item():.2e}")  # fmt: skip
    return lines


def precision_report(arch: str, size: int, n: int, device, *, camvid=None, repeats: int = 3) -> list[str]:
    """The printed lines: bf16 vs fp32 per student, then the layout comparison (on the CPU)."""
    from dupl_cli.config.method_params import step_config
    from dupl_cli.config.sources import load_settings
    from dupl_cli.models.dual import build_dual_student

    settings = load_settings("voc-vitb", assignments=[f"model.arch={arch}", "model.pretrained=none"],
                             environ={}).settings  # fmt: skip
    config = step_config(settings)
    source, images, x01, labels = photos(n, size, camvid)
    torch.manual_seed(0)
    model = build_dual_student(settings.model, labels.shape[1], img_size=size).to(device).eval()
    lines = [f"{device}, {arch} at {size} px, {source}, bf16 autocast vs fp32"]
    figures = [compare(s, images.to(device), x01.to(device), labels.to(device), config, device)
               for s in model.students]  # fmt: skip
    for key in figures[0]:
        per_student = "  ".join(f"student {k + 1}: {f[key]:.4g}" for k, f in enumerate(figures))
        lines.append(f"  {key:28s} {per_student}")
    return lines + layouts(settings.model, x01.cpu(), config, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="test_vit")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--camvid", default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    print(f"torch {torch.__version__}")
    lines = precision_report(args.arch, args.size, args.images, torch.device(args.device),
                             camvid=args.camvid, repeats=args.repeats)  # fmt: skip
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
