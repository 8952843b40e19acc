"""One DuPL training iteration up to the loss (docs/method.md §4-§8); the trainer does backward/step.

Everything is batched over images; the only host sync is the one ANF may take. Work whose loss
weight is zero in the current phase (PAR labels, ANF, the strong view) is skipped. Every
parameter comes from one :class:`~dupl_cli.method.params.StepConfig`. With ``diff_aug`` (Table 6)
each student works on its own weak view and learns its partner's label warped into it. Whatever
is per student (views, boxes, CAMs, labels) is a list with one entry per student, the same tensor
repeated when the students share the view.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.method import label_quality, losses
from dupl_cli.method.cam import backbone_stride, dual_multiscale_cam, merge_flip, normalise_cam
from dupl_cli.method.noise_filter import noisy_pixels
from dupl_cli.method.params import PhaseSchedule, StepConfig, ThresholdConfig
from dupl_cli.method.schedule import Phase, dta_window, phase_at
from dupl_cli.method.strong_aug import denormalize_u8, downscale, strong_view, undo_on_logits
from dupl_cli.method.thresholds import (
    box_mask,
    cam_to_label,
    high_threshold,
    image_thresholds,
    refine_labels,
    token_labels,
)
from dupl_cli.method.view_warp import warp_labels
from dupl_cli.models.geometry import pad_to_multiple


class StepResult(NamedTuple):
    loss: torch.Tensor  # scalar, float32, with graph
    terms: dict[str, torch.Tensor]  # detached scalars: cls, ptc, dis, seg, reg (+ per student)
    stats: dict[str, torch.Tensor]  # detached scalars: tau_h, noise_share
    visuals: dict[str, torch.Tensor]  # first image: image (3×H×W uint8), cam, pseudo_label, prediction (H×W)
    # label quality: (hits, pixels) pairs by name (method.label_quality)
    counts: dict[str, torch.Tensor] | None = None


class Views(NamedTuple):
    """The weak views of the batch, one entry per student (the same tensors unless diff_aug)."""

    images: list[torch.Tensor]  # B×3×H×W, normalised, padded to the backbone stride
    img_box: list[torch.Tensor]  # B×4
    affine: list[torch.Tensor] | None  # B×4 original -> view (diff_aug); None: one shared view


class PseudoLabels(NamedTuple):
    tau_image: torch.Tensor  # B, per-image tau_h of this iteration
    token: list[torch.Tensor] | None  # per student, B×h×w PTC token labels (None when PTC is off)
    refined: list[torch.Tensor] | None  # per student, B×H×W PAR labels (before ANF)
    filtered: list[torch.Tensor] | None  # per student, after ANF (the label its partner learns)
    noise: torch.Tensor | None  # (students·B)×H×W noise mask (student 1 images first)


class Term(NamedTuple):
    """One loss term: its sum over the students and each student's share (scalars, with graph)."""

    total: torch.Tensor
    shares: list[torch.Tensor]  # logged as <name>_1, <name>_2


class LossTerms(NamedTuple):
    """The step's loss terms; None where this phase weights a term 0 (it is then not computed)."""

    cls: Term
    ptc: Term | None
    dis: Term | None
    seg: Term | None
    reg: Term | None
    reg_pixels: list[label_quality.ConsistencyPixels] | None = None  # per student, with reg


WEIGHTED = ("ptc", "dis", "seg", "reg")
"""The terms after L_cls, in the order they are added to the loss and logged."""


def partner(k: int, students: int) -> int:
    """Whose label student k learns: the other student (cross supervision), or its own when alone."""
    return (k + 1) % students


def class_thresholds(
    iteration: int, thresholds: ThresholdConfig, schedule: PhaseSchedule
) -> torch.Tensor | float:
    """tau_h per class (tensor) or one value at ``iteration`` (DTA after t_seg / the aux stage)."""
    t_start, t_end = dta_window(schedule)
    tau_end = thresholds.tau_end
    tau_end = torch.tensor(tau_end) if isinstance(tau_end, tuple | list) else tau_end
    return high_threshold(iteration, tau0=thresholds.tau_start, tau_end=tau_end, t_start=t_start, t_end=t_end)


def make_pseudo_labels(
    images01: list[torch.Tensor],
    cams: list[torch.Tensor | None],
    cams_aux: list[torch.Tensor | None],
    seg_logits: list[torch.Tensor],
    labels: torch.Tensor,
    img_box: list[torch.Tensor],
    iteration: int,
    phase: Phase,
    config: StepConfig,
    grid: tuple[int, int],
    *,
    slots: int | None = None,
) -> PseudoLabels:
    """Token labels (when PTC is on), PAR-refined labels and their noise-filtered version for every
    student, each from the student's own view.

    Per student: ``images01`` B×3×H×W in [0, 1], ``cams``/``cams_aux`` B×C×H×W (the one this phase
    needs), ``seg_logits`` B×(C+1)×h×w, ``img_box`` B×4. ``labels`` B×C, ``grid`` the token grid
    (h, w). ``slots``: the batch's largest present-class count, known on the host
    (:func:`~dupl_cli.method.thresholds.refine_labels`).
    """
    tau_image = image_thresholds(class_thresholds(iteration, config.thresholds, config.schedule), labels)
    token = _token_labels(cams_aux, labels, img_box, tau_image, grid, config) if phase.w_ptc > 0 else None
    if not phase.seg_labels:
        return PseudoLabels(tau_image, token, None, None, None)
    sources, tau_seg = (cams_aux, config.thresholds.aux_tau) if phase.aux_labels else (cams, tau_image)
    # Every student's label pass shares one PAR batch (the affinity is per image either way).
    batch, students = labels.shape[0], len(cams_aux)
    refined = refine_labels(
        torch.cat(images01),
        torch.cat(sources),
        torch.cat([labels] * students),
        tau_high=torch.as_tensor(tau_seg, device=labels.device).reshape(-1).expand(batch).repeat(students),
        tau_low=config.thresholds.tau_low,
        img_box=torch.cat(img_box),
        par=config.par,
        slots=slots,
    )
    noise = None
    filtered = refined
    if phase.anf:
        own_loss = losses.pixel_ce(torch.cat(seg_logits).detach(), refined)
        noise = noisy_pixels(own_loss, refined, config.noise)
        filtered = refined.masked_fill(noise, IGNORE_INDEX)
    return PseudoLabels(tau_image, token, list(refined.split(batch)), list(filtered.split(batch)), noise)


def _token_labels(
    cams_aux: list[torch.Tensor],
    labels: torch.Tensor,
    img_box: list[torch.Tensor],
    tau_image: torch.Tensor,
    grid: tuple[int, int],
    config: StepConfig,
) -> list[torch.Tensor]:
    """Each student's B×h×w PTC token labels from its aux CAM (B×C×H×W) and box (B×4)."""
    return [
        token_labels(
            cam_aux,
            labels,
            grid=grid,
            tau_high=tau_image,
            tau_low=config.thresholds.tau_low,
            img_box=box,
            pixel_box=config.ptc_pixel_box,
        )
        for cam_aux, box in zip(cams_aux, img_box, strict=True)
    ]


def training_step(
    model,
    batch: dict[str, Any],
    iteration: int,
    config: StepConfig,
    *,
    generator: torch.Generator | None = None,
) -> StepResult:
    """The loss of one iteration, with its logged terms, statistics and first-image visuals.

    ``batch``: ``image`` B×3×H×W (normalised), ``labels`` B×C (multi-hot), ``img_box`` B×4 and
    optionally ``max_present`` (int) and ``gt_mask`` (B×H×W ground truth of the view, for the label
    quality counts only); with ``diff_aug`` also ``image2``, ``img_box2``, ``affine`` and ``affine2``
    (B×4) (and ``gt_mask2``). ``generator`` draws the strong view's ops (L_reg).
    """
    phase = phase_at(iteration, config.schedule, config.weights)
    if len(model.students) != config.students:
        raise ValueError(
            f"the step is configured for {config.students} student(s), the model has {len(model.students)}"
        )
    students = list(model.students)
    views = batch_views(batch, config, backbone_stride(students[0]))
    labels = batch["labels"].to(views.images[0].device).float()
    # as the release: PAR sees the uint8-rounded image
    pixels = _per_view(views, lambda images: _pixels(images, config))
    images_u8, images01 = [p[0] for p in pixels], [p[1] for p in pixels]

    outs = [student(images) for student, images in zip(students, views.images, strict=True)]
    seg_weak = [out.seg for out in outs]
    grid = tuple(outs[0].features.shape[-2:])
    cams, cams_aux = _step_cams(model, views.images, outs, phase, config)
    pseudo = make_pseudo_labels(
        images01, cams, cams_aux, seg_weak, labels, views.img_box, iteration, phase, config, grid,
        slots=batch.get("max_present"),
    )  # fmt: skip
    learned = None if pseudo.filtered is None else learned_labels(pseudo.filtered, views)
    terms = loss_terms(students, outs, labels, pseudo, learned, views, images_u8, phase, config, generator)

    zero = views.images[0].new_zeros((), dtype=torch.float32)
    stats = {"tau_h": pseudo.tau_image.float().mean(), "noise_share": _noise_share(pseudo, zero)}
    size = tuple(views.images[0].shape[-2:])
    tau_low = config.thresholds.tau_low
    visuals = _visuals(images_u8[0], cams[0], labels, seg_weak[0], pseudo, learned, size, tau_low)
    loss = weighted_loss(terms, phase)
    if phase.seg_zero_grad:
        loss = loss + release_zero_weight_seg(seg_weak)
    counts = quality_counts(view_truth(batch, views), pseudo, learned, terms.reg_pixels)
    return StepResult(loss, logged_terms(terms, zero), stats, visuals, counts)


def loss_terms(
    students: list,
    outs: list,
    labels: torch.Tensor,
    pseudo: PseudoLabels,
    learned: list[torch.Tensor] | None,
    views: Views,
    images_u8: list[torch.Tensor],
    phase: Phase,
    config: StepConfig,
    generator: torch.Generator | None,
) -> LossTerms:
    """Every term this phase weights, from each student's training forward ``outs`` on its view.

    ``labels`` B×C; ``learned``: per student, the B×H×W label it learns (None before the seg stage);
    ``images_u8``: per student, its view as B×3×H×W uint8 (the strong view's source).
    """
    cls = classification_term(outs, labels)
    ptc = ptc_term(outs, pseudo.token) if phase.w_ptc > 0 else None
    dis = discrepancy_term(outs, config.discrepancy) if phase.w_dis > 0 else None
    seg_weak = [out.seg for out in outs]
    seg = segmentation_term(seg_weak, learned) if phase.w_seg > 0 else None
    reg, reg_pixels = None, None
    if phase.w_reg > 0:
        reg, reg_pixels = consistency_term(students, images_u8, seg_weak, learned, views, config, generator)
    return LossTerms(cls, ptc, dis, seg, reg, reg_pixels)


def weighted_loss(terms: LossTerms, phase: Phase) -> torch.Tensor:
    """The scalar loss: L_cls + each computed term times its weight in this phase, added in order."""
    total = phase.w_cls * terms.cls.total
    for name in WEIGHTED:
        term = getattr(terms, name)
        if term is not None:
            total = total + getattr(phase, f"w_{name}") * term.total
    return total


def release_zero_weight_seg(seg_weak: list[torch.Tensor]) -> torch.Tensor:
    """0 with the seg path's graph: the release adds its seg loss times a weight of 0 from t_seg until
    the weight applies, so the heads get zero gradients and AdamW decays them and counts a step.
    Zero times the logits gives the same gradients without computing the labels (0·inf is NaN there
    too)."""
    return 0.0 * sum(logits.float().sum() for logits in seg_weak)


def logged_terms(terms: LossTerms, zero: torch.Tensor) -> dict[str, torch.Tensor]:
    """Detached scalars by name: cls, each computed term with its shares (name_k), then 0 for the
    terms this phase skips."""
    logged = {"cls": terms.cls.total}
    for name in WEIGHTED:
        term = getattr(terms, name)
        if term is not None:
            logged[name] = term.total
            logged.update({f"{name}_{k}": share for k, share in enumerate(term.shares, 1)})
    for name in WEIGHTED:
        logged.setdefault(name, zero)
    return {name: value.detach() for name, value in logged.items()}


def classification_term(outs: list, labels: torch.Tensor) -> Term:
    """L_cls: each student's final and auxiliary classifier against the B×C image labels."""
    shares = [
        losses.classification_loss(out.logits, labels) + losses.classification_loss(out.aux_logits, labels)
        for out in outs
    ]
    return Term(sum(shares), shares)


def ptc_term(outs: list, token: list[torch.Tensor]) -> Term:
    """L_ptc: each student's B×D×h×w feature map against its B×h×w token labels."""
    shares = [losses.ptc_loss(out.features, labels) for out, labels in zip(outs, token, strict=True)]
    return Term(sum(shares), shares)


def discrepancy_term(outs: list, form: str) -> Term:
    """L_dis between the two students' feature maps (B×D×h×w). Its shares are logged in the
    release's order: dis_1 is the term whose gradient trains student 2, dis_2 student 1's."""
    # with diff_aug the maps show different views; both forms still compare them position by position
    to_2, to_1 = losses.discrepancy_terms(outs[0].features, outs[1].features, form=form)
    return Term(to_2 + to_1, [to_2, to_1])


def segmentation_term(seg_weak: list[torch.Tensor], learned: list[torch.Tensor]) -> Term:
    """L_seg: cross supervision, student 1 learns student 2's label and vice versa (a lone one its own).
    Per student: ``seg_weak`` B×(C+1)×h×w logits, ``learned`` B×H×W labels."""
    shares = [losses.seg_loss(logits, label) for logits, label in zip(seg_weak, learned, strict=True)]
    return Term(sum(shares), shares)


def consistency_term(
    students: list,
    images_u8: list[torch.Tensor],
    seg_weak: list[torch.Tensor],
    learned: list[torch.Tensor],
    views: Views,
    config: StepConfig,
    generator: torch.Generator | None,
) -> tuple[Term, list[label_quality.ConsistencyPixels]]:
    """L_reg,k: strong-view CE against student k's own confident weak argmax on the pixels the label
    it learns (``learned[k]``, B×H×W) discards. Per student: ``images_u8`` its view B×3×H×W uint8,
    ``seg_weak`` its B×(C+1)×h×w logits. One strong batch: of the shared view, or with diff_aug of
    both views (each student segments its own). Also each student's pixels, for the counts."""
    view, reg = config.strong, config.consistency
    own = views.affine is not None
    size = tuple(views.images[0].shape[-2:])
    source = torch.cat(images_u8) if own else images_u8[0]
    strong, _ = strong_view(source, view, mean=config.mean, std=config.std, generator=generator)
    strong = downscale(strong, view.scale, multiple=getattr(students[0].backbone, "stride", 1))
    strong = strong.split(images_u8[0].shape[0]) if own else [strong] * len(students)
    shares, pixels = [], []
    for k, student in enumerate(students):
        if reg.include_padding:
            region = torch.ones_like(learned[k], dtype=torch.bool)
        else:
            region = box_mask(views.img_box[k], size)
        discarded = (learned[k] == IGNORE_INDEX) & region
        target, mask, _ = losses.consistency_target(seg_weak[k], discarded, confidence=reg.confidence)
        strong_logits = undo_on_logits(student.segment(strong[k]), size, flip=view.flip)
        shares.append(losses.consistency_loss(strong_logits, target, mask))
        strong_labels = strong_logits.detach().max(1).indices
        pixels.append(label_quality.ConsistencyPixels(target, mask, strong_labels, region))
    return Term(sum(shares), shares), pixels


def view_truth(batch: dict[str, Any], views: Views) -> list[torch.Tensor] | None:
    """Each student's ground truth in its view (``gt_mask``, with diff_aug ``gt_mask2``), padded
    like the view with 255; None when the batch carries none."""
    if "gt_mask" not in batch:
        return None
    keys = ["gt_mask"] * len(views.images) if views.affine is None else ["gt_mask", "gt_mask2"]
    size = views.images[0].shape[-2:]
    out = []
    for key in keys:
        truth = batch[key].to(views.images[0].device).long()
        pad = (0, size[1] - truth.shape[-1], 0, size[0] - truth.shape[-2])
        out.append(torch.nn.functional.pad(truth, pad, value=IGNORE_INDEX) if any(pad) else truth)
    return out


def quality_counts(
    truth: list[torch.Tensor] | None,
    pseudo: PseudoLabels,
    learned: list[torch.Tensor] | None,
    reg_pixels: list[label_quality.ConsistencyPixels] | None,
) -> dict[str, torch.Tensor]:
    """The step's label-quality counts (:mod:`~dupl_cli.method.label_quality`): the consistency
    mask's whenever L_reg ran; with ``truth`` (per student, B×H×W) also the labels'."""
    counts = {} if reg_pixels is None else label_quality.consistency_counts(reg_pixels)
    if truth is None:
        return counts
    if pseudo.refined is not None:
        refined, taught, gt = torch.cat(pseudo.refined), torch.cat(learned), torch.cat(truth)
        counts |= label_quality.label_counts(refined, taught, pseudo.noise, gt)
    if reg_pixels is not None:
        counts |= label_quality.reg_target_counts(reg_pixels, truth)
    return counts


def batch_views(batch: dict[str, Any], config: StepConfig, stride: int) -> Views:
    """Each student's weak view of the batch: the shared ``image``, or with ``diff_aug`` student 1's
    ``image`` and student 2's ``image2`` with their boxes and affines (``data.loader``, views=2)."""
    n = config.students
    if not config.diff_aug:
        images = pad_to_multiple(batch["image"], stride)
        return Views([images] * n, [batch["img_box"].to(images.device)] * n, None)
    missing = [k for k in ("image2", "img_box2", "affine", "affine2") if k not in batch]
    if missing:
        raise ValueError(f"diff_aug needs each student's own weak view; the batch lacks {', '.join(missing)}")
    images = [pad_to_multiple(batch[k], stride) for k in ("image", "image2")]
    device = images[0].device
    boxes = [batch[k].to(device) for k in ("img_box", "img_box2")]
    return Views(images, boxes, [batch[k].to(device) for k in ("affine", "affine2")])


def learned_labels(filtered: list[torch.Tensor], views: Views) -> list[torch.Tensor]:
    """The label each student learns: its partner's filtered label, carried into the student's own view
    with diff_aug (pixels of its view the partner's view does not show are ignored)."""
    n = len(filtered)
    if views.affine is None:
        return [filtered[partner(k, n)] for k in range(n)]
    affine, box = views.affine, views.img_box
    return [
        warp_labels(filtered[j], affine[j], box[j], affine[k])
        for k, j in ((k, partner(k, n)) for k in range(n))
    ]


def _per_view(views: Views, fn: Callable[[torch.Tensor], Any]) -> list:
    """``fn`` of each student's view, computed once when the students share it."""
    if views.affine is None:
        return [fn(views.images[0])] * len(views.images)
    return [fn(images) for images in views.images]


def _pixels(images: torch.Tensor, config: StepConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The view as uint8 (strong view, visuals) and as the uint8-rounded [0, 1] image PAR sees."""
    images_u8 = denormalize_u8(images, config.mean, config.std)
    return images_u8, images_u8.float() / 255.0


def _step_cams(model, images: list[torch.Tensor], outs: list, phase: Phase, config: StepConfig):
    """The multi-scale CAMs this phase's labels use, per student: the final-map CAM for the refined
    labels (unless the aux stage feeds them) and the aux CAM for token labels; the other is None. The
    un-flipped scale-1.0 view is the training forward itself. A phase that needs no final CAM gets the
    training forward's single-view one, for the visuals only. ``images``: each student's view
    (B×3×H×W), the same tensor when they share it."""
    need_final = phase.seg_labels and not phase.aux_labels
    need_aux = phase.w_ptc > 0 or (phase.seg_labels and phase.aux_labels)
    cams, cams_aux = [None] * len(outs), [None] * len(outs)
    if need_final or need_aux:
        cams, cams_aux = dual_multiscale_cam(
            model, images, scales=config.cam.scales, flip=config.cam.flip, final=need_final, forwards=outs
        )
    if not need_final:
        size = tuple(images[0].shape[-2:])
        with torch.no_grad():
            cams = [
                normalise_cam(merge_flip(student.raw_cams(out.features.detach(), None)[0], size, 1, False))
                for student, out in zip(model.students, outs, strict=True)
            ]
    return cams, cams_aux


def _noise_share(pseudo: PseudoLabels, zero: torch.Tensor) -> torch.Tensor:
    if pseudo.noise is None:
        return zero
    refined = torch.cat(pseudo.refined)
    foreground = (refined != 0) & (refined != IGNORE_INDEX)
    return (pseudo.noise & foreground).sum().float() / foreground.sum().clamp_min(1).float()


@torch.no_grad()
def _visuals(
    images_u8, cam, labels, seg, pseudo: PseudoLabels, learned, size, tau_low
) -> dict[str, torch.Tensor]:
    first_cam = (cam[:1].float() * labels[:1, :, None, None]).amax(1)[0]
    if learned is not None:
        label = learned[0][0]  # what student 1 learns, in its view
    else:
        label = cam_to_label(cam[:1], labels[:1], tau_high=pseudo.tau_image[:1], tau_low=tau_low)[0]
    prediction = losses.upsample(seg[:1].detach(), size).argmax(1)[0]
    return {
        "image": images_u8[0],
        "cam": first_cam,
        "pseudo_label": label.to(torch.uint8),
        "prediction": prediction.to(torch.uint8),
    }
