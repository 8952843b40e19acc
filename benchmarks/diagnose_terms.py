"""What DuPL's label terms do on training images of a finished run, measured against ground truth.

For each run directory (its ``config.toml`` and checkpoints) this rebuilds the students and runs the
method's own functions (``method/cam.py``, ``thresholds.py``, ``par.py``, ``noise_filter.py``,
``strong_aug.py``, ``losses.py``) on weak views of training images drawn as the trainer draws them
(``data.transforms.WeakView``), at the run's settings, at two points of its schedule:

    B  the checkpoint saved at t_anf (weights at the end of phase B), labels at t = t_anf - 1
    C  the final checkpoint, labels at t = T - 1

The ground-truth mask is carried into each view with the view's affine (nearest pixel centre) and
every figure counts only pixels inside the crop box whose ground truth is not 255. It does not touch
the trainer, and it computes every term whether or not the run used it (column ``terms`` says which
the run had on at that t), so all runs are measured on the same footing. Printed (in %), per row:

    labels      CAM: three-way CAM label mIoU (255 = miss, §4.2); refined: PAR label (§4.5) mIoU,
                coverage (share not 255) and accuracy on its labelled pixels; learned: the label a
                student learns (partner's, after ANF when the run filters) likewise
    ANF (§6)    flip: share of refined foreground pixels set to 255; prec: share of flipped pixels
                whose refined label was wrong; err: share of refined foreground pixels that are wrong
                (prec > err means the filter beats chance); rec: share of wrong ones it flipped
    L_reg (§7.5) U: consistency mask coverage; tgt: weak argmax = GT on U (wrong targets are taught);
                str: strong-view argmax = target on U; geo 0.75 / 1.0: weak vs strong argmax agreement
                with the photometric ops off (flip + x0.75 resize, flip alone): what the resize
                geometry costs; grid h/h': pixel accuracy an ideal token-resolution prediction could
                reach (GT one-hot averaged to the weak / strong token grid, upsampled, argmax)

Both students are pooled. About 10 s per 64 images and row on 2 CPU cores (demo runs).

    python benchmarks/diagnose_terms.py RUN_DIR [RUN_DIR ...] [--images 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dupl_cli.config.method_params import step_config
from dupl_cli.config.sources import load_settings
from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.data.transforms import WeakView
from dupl_cli.method import losses as L
from dupl_cli.method.cam import backbone_stride, dual_multiscale_cam
from dupl_cli.method.noise_filter import noisy_pixels
from dupl_cli.method.schedule import dta_window, phase_at
from dupl_cli.method.strong_aug import denormalize_u8, downscale, normalize, strong_view, undo_on_logits
from dupl_cli.method.thresholds import box_mask, cam_to_label, high_threshold, image_thresholds, refine_labels
from dupl_cli.models.dual import build_dual_student
from dupl_cli.plugins import DATASETS, load


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories (config.toml, checkpoints/)")
    p.add_argument("--images", type=int, default=64, help="training images (the first N of the split)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0, help="seed of the weak views and strong ops")
    p.add_argument("--json", type=Path, help="also write every figure here")
    return p.parse_args(argv)


# ------------------------------------------------------------------ run, model, data
def load_run(run: Path):
    """(settings, adapter of the training split, model builder) of a run directory."""
    settings = load_settings(config_file=run / "config.toml", environ={}).settings
    adapter = load(DATASETS, settings.data.adapter)(settings.data, settings.data.train_split)
    return settings, adapter


def load_students(settings, classes: int, weights: Path):
    from safetensors.torch import load_file

    model_settings = settings.model.model_copy(update={"pretrained": "none"})
    model = build_dual_student(model_settings, classes, settings.data.crop_size, settings.method.students)
    # an Accelerate step checkpoint holds the trainer's wrapper: keys under "dual."
    state = {k.removeprefix("dual."): v for k, v in load_file(str(weights)).items()}
    model.load_state_dict(state, strict=True)
    return model.eval()


def checkpoints(run: Path, settings) -> list[tuple[str, Path, int]]:
    """(name, weights, t of the labels): end of phase B and end of phase C."""
    t_anf, T = settings.method.t_anf, settings.train.max_iters
    out = []
    mid = run / "checkpoints" / f"step_{t_anf}" / "model.safetensors"
    if mid.is_file():
        out.append(("B", mid, t_anf - 1))
    out.append(("C", run / "final.safetensors", T - 1))
    return out


def gt_in_view(mask: np.ndarray, affine: torch.Tensor, box: torch.Tensor, size: int) -> torch.Tensor:
    """The original mask carried into the crop (nearest at pixel centres); 255 outside the box."""
    sy, oy, sx, ox = affine.tolist()
    centre = torch.arange(size, dtype=torch.float64) + 0.5
    iy = torch.floor((centre - oy) / sy).long()
    ix = torch.floor((centre - ox) / sx).long()
    h, w = mask.shape
    ok_y, ok_x = (iy >= 0) & (iy < h), (ix >= 0) & (ix < w)
    out = torch.from_numpy(mask.astype(np.int64))[iy.clamp(0, h - 1)][:, ix.clamp(0, w - 1)]
    out[~(ok_y[:, None] & ok_x[None, :])] = IGNORE_INDEX
    return out.masked_fill(~box_mask(box[None], (size, size))[0], IGNORE_INDEX)


def batches(adapter, settings, n: int, batch: int, seed: int):
    """Weak views of the first n training images with their labels, boxes and GT in the view."""
    view, size = WeakView(settings.data), settings.data.crop_size
    items = []
    for i in range(min(n, len(adapter))):
        sample = adapter[i]
        v = view.sample(sample.image, torch.Generator().manual_seed(seed * 100003 + i))
        gt = gt_in_view(sample.mask, v.affine, v.img_box, size)
        items.append((v.image, torch.from_numpy(sample.labels), v.img_box, gt))
        if len(items) == batch:
            yield [torch.stack(x) for x in zip(*items, strict=True)]
            items = []
    if items:
        yield [torch.stack(x) for x in zip(*items, strict=True)]


# ------------------------------------------------------------------ counting
class Counts:
    """Sums of named pixel counts and confusion matrices over the batches."""

    def __init__(self, classes: int):
        self.k = classes + 1
        self.sums: dict[str, float] = {}
        self.conf: dict[str, np.ndarray] = {}

    def add(self, name: str, value) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + float(value)

    def confusion(self, name: str, pred: torch.Tensor, gt: torch.Tensor) -> None:
        """GT rows 0..C, prediction columns 0..C and C+1 for 255 (a miss, never a false positive)."""
        keep = gt != IGNORE_INDEX
        p = pred[keep].clamp(max=self.k)  # 255 -> column k
        idx = (gt[keep] * (self.k + 1) + p).numpy()
        m = np.bincount(idx, minlength=self.k * (self.k + 1)).reshape(self.k, self.k + 1)
        self.conf[name] = self.conf.get(name, 0) + m

    def miou(self, name: str) -> float:
        m = self.conf[name]
        tp = np.diag(m[:, : self.k])
        iou = tp / np.maximum(m.sum(1) + m[:, : self.k].sum(0) - tp, 1)
        return 100.0 * float(iou[m.sum(1) > 0].mean())

    def ratio(self, num: str, den: str) -> float:
        d = self.sums.get(den, 0.0)
        return 100.0 * self.sums.get(num, 0.0) / d if d else float("nan")


def label_stats(c: Counts, name: str, label: torch.Tensor, gt: torch.Tensor) -> None:
    valid = gt != IGNORE_INDEX
    labelled = valid & (label != IGNORE_INDEX)
    c.confusion(name, label, gt)
    c.add(f"{name}_n", valid.sum())
    c.add(f"{name}_lab", labelled.sum())
    c.add(f"{name}_ok", (labelled & (label == gt)).sum())


# ------------------------------------------------------------------ the terms
def thresholds_at(t: int, config, labels: torch.Tensor) -> torch.Tensor:
    """Per-image tau_h at t (the trainer's rule: DTA window, per-class max over present classes)."""
    th = config.thresholds
    start, end = dta_window(config.schedule)
    tau_end = torch.tensor(th.tau_end) if isinstance(th.tau_end, tuple | list) else th.tau_end
    tau = high_threshold(t, tau0=th.tau_start, tau_end=tau_end, t_start=start, t_end=end)
    return image_thresholds(tau, labels)


@torch.no_grad()
def labels_of_batch(model, config, t: int, images, labels, box, gt, c: Counts):
    """CAM, refined, filtered and learned labels of both students; returns what L_reg needs."""
    n, b = len(model.students), images.shape[0]
    outs = [s(images) for s in model.students]
    cams, _ = dual_multiscale_cam(model, images, scales=config.cam.scales, flip=config.cam.flip)
    tau = thresholds_at(t, config, labels)
    c.add("tau", tau.sum() * n)
    c.add("tau_n", b * n)
    images01 = denormalize_u8(images, config.mean, config.std).float() / 255.0
    refined = refine_labels(
        images01.repeat(n, 1, 1, 1), torch.cat(cams), labels.repeat(n, 1), tau_high=tau.repeat(n),
        tau_low=config.thresholds.tau_low, img_box=box.repeat(n, 1), par=config.par,
    )  # fmt: skip
    gts = gt.repeat(n, 1, 1)
    for cam in cams:
        label_stats(
            c,
            "cam",
            cam_to_label(cam, labels, tau_high=tau, tau_low=config.thresholds.tau_low, img_box=box),
            gt,
        )
    label_stats(c, "refined", refined, gts)
    seg = torch.cat([o.seg for o in outs])
    noise = noisy_pixels(L.pixel_ce(seg, refined), refined, config.noise)
    anf_stats(c, refined, noise, gts)
    phase = phase_at(t, config.schedule, config.weights)
    filtered = refined.masked_fill(noise, IGNORE_INDEX) if phase.anf else refined
    parts = list(filtered.split(b))
    learned = [parts[(k + 1) % n] for k in range(n)]  # the partner's label (its own when alone)
    label_stats(c, "learned", torch.cat(learned), gts)
    return outs, learned


def anf_stats(c: Counts, refined, noise, gt) -> None:
    fg = (refined != 0) & (refined != IGNORE_INDEX) & (gt != IGNORE_INDEX)
    wrong = fg & (refined != gt)
    c.add("fg", fg.sum())
    c.add("fg_wrong", wrong.sum())
    c.add("flipped", (noise & fg).sum())
    c.add("flipped_wrong", (noise & wrong).sum())


@torch.no_grad()
def consistency_stats(model, config, outs, learned, images, box, gt, gen, c: Counts) -> None:
    """The L_reg mask and targets (§7.5) and how well the strong view lines up with them."""
    size, stride = tuple(images.shape[-2:]), backbone_stride(model.students[0])
    view, u8 = config.strong, denormalize_u8(images, config.mean, config.std)
    strong, _ = strong_view(u8, view, mean=config.mean, std=config.std, generator=gen)
    strong = downscale(strong, view.scale, multiple=stride)
    plain = normalize(u8, config.mean, config.std).flip(-1)  # geometry only: no photometric op
    inside = box_mask(box, size) & (gt != IGNORE_INDEX)
    for k, student in enumerate(model.students):
        discarded = learned[k] == IGNORE_INDEX
        if not config.consistency.include_padding:
            discarded &= box_mask(box, size)
        target, mask, _ = L.consistency_target(
            outs[k].seg, discarded, confidence=config.consistency.confidence
        )
        scored = mask & (gt != IGNORE_INDEX)
        strong_pred = undo_on_logits(student.segment(strong), size, flip=view.flip).argmax(1)
        c.add("inside", inside.sum())
        c.add("U", scored.sum())
        c.add("U_tgt_ok", (scored & (target == gt)).sum())
        c.add("U_str_agree", (scored & (strong_pred == target)).sum())
        for name, scale in (("geo75", view.scale), ("geo100", 1.0)):
            geo = undo_on_logits(student.segment(downscale(plain, scale, multiple=stride)), size, flip=True)
            c.add(name, (inside & (geo.argmax(1) == L.upsample(outs[k].seg, size).argmax(1))).sum())
        grid = tuple(outs[k].seg.shape[-2:])
        strong_grid = tuple(s // stride for s in strong.shape[-2:])
        for name, g in (("grid_w", grid), ("grid_s", strong_grid)):
            c.add(name, (inside & (grid_prediction(gt, g, c.k) == gt)).sum())


def grid_prediction(gt: torch.Tensor, grid, k: int) -> torch.Tensor:
    """The best a prediction at token resolution can do: GT one-hot averaged onto the grid, upsampled."""
    onehot = F.one_hot(gt.clamp(max=k), k + 1).permute(0, 3, 1, 2).float()[:, :k]
    coarse = F.adaptive_avg_pool2d(onehot, grid)
    return L.upsample(coarse, tuple(gt.shape[-2:])).argmax(1)


# ------------------------------------------------------------------ driver
def active_terms(config, t: int) -> str:
    phase = phase_at(t, config.schedule, config.weights)
    names = [n for n, on in (("seg", phase.w_seg > 0), ("anf", phase.anf), ("reg", phase.w_reg > 0)) if on]
    return "+".join(names) or "-"


def measure(run: Path, args) -> list[dict]:
    settings, adapter = load_run(run)
    config = step_config(settings, len(adapter.classes))
    rows = []
    for name, weights, t in checkpoints(run, settings):
        model = load_students(settings, len(adapter.classes), weights)
        c, gen = Counts(len(adapter.classes)), torch.Generator().manual_seed(args.seed)
        for images, labels, box, gt in batches(adapter, settings, args.images, args.batch, args.seed):
            outs, learned = labels_of_batch(model, config, t, images, labels.float(), box, gt, c)
            consistency_stats(model, config, outs, learned, images, box, gt, gen, c)
        rows.append(summarise(run.name, name, t, active_terms(config, t), c))
    return rows


def summarise(run: str, phase: str, t: int, terms: str, c: Counts) -> dict:
    r = c.ratio
    return {
        "run": run, "phase": phase, "t": t, "terms": terms, "tau_h": c.sums["tau"] / c.sums["tau_n"],
        "cam_miou": c.miou("cam"), "refined_miou": c.miou("refined"),
        "refined_cov": r("refined_lab", "refined_n"), "refined_acc": r("refined_ok", "refined_lab"),
        "learned_miou": c.miou("learned"), "learned_cov": r("learned_lab", "learned_n"),
        "learned_acc": r("learned_ok", "learned_lab"),
        "anf_flip": r("flipped", "fg"), "anf_prec": r("flipped_wrong", "flipped"),
        "anf_err": r("fg_wrong", "fg"), "anf_rec": r("flipped_wrong", "fg_wrong"),
        "reg_cov": r("U", "inside"), "reg_tgt_acc": r("U_tgt_ok", "U"),
        "reg_str_agree": r("U_str_agree", "U"),
        "geo_075": r("geo75", "inside"), "geo_100": r("geo100", "inside"),
        "grid_weak": r("grid_w", "inside"), "grid_strong": r("grid_s", "inside"),
    }  # fmt: skip


TABLES = {
    "labels and ANF": [
        ("tau_h", "tau_h", "{:.3f}"), ("CAM", "cam_miou", None), ("refined mIoU", "refined_miou", None),
        ("cov", "refined_cov", None), ("acc", "refined_acc", None), ("ANF flip", "anf_flip", None),
        ("prec", "anf_prec", None), ("err", "anf_err", None), ("rec", "anf_rec", None),
        ("learned mIoU", "learned_miou", None), ("cov", "learned_cov", None), ("acc", "learned_acc", None),
    ],
    "consistency (L_reg) and the strong view": [
        ("U", "reg_cov", None), ("tgt", "reg_tgt_acc", None), ("str", "reg_str_agree", None),
        ("geo 0.75", "geo_075", None), ("geo 1.0", "geo_100", None),
        ("grid weak", "grid_weak", None), ("grid strong", "grid_strong", None),
    ],
}  # fmt: skip


def markdown(rows: list[dict]) -> str:
    out = []
    for title, cols in TABLES.items():
        out += [
            f"\n{title} (%)",
            "",
            "| run | phase | t | terms | " + " | ".join(h for h, _, _ in cols) + " |",
        ]
        out.append("|---|---|---|---|" + "---|" * len(cols))
        for row in rows:
            cells = [(fmt or "{:.1f}").format(row[key]) for _, key, fmt in cols]
            out.append(
                f"| {row['run']} | {row['phase']} | {row['t']} | {row['terms']} | " + " | ".join(cells) + " |"
            )
    return "\n".join(out)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    rows = [row for run in args.runs for row in measure(run, args)]
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
