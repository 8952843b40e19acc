"""One DuPL training iteration up to the loss (docs/method.md §4-§8); the trainer does backward/step.

Everything is batched over images; the only host sync is the one ANF may take. Work whose loss
weight is zero in the current phase (PAR labels, ANF, the strong view) is skipped. Every
parameter comes from one :class:`~dupl_cli.method.params.StepConfig`. With ``diff_aug`` (Table 6)
each student works on its own weak view and learns its partner's label warped into it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.method import losses as L
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


def partner(k: int, students: int) -> int:
    """Whose label student k learns: the other student (cross supervision), or its own when alone."""
    return (k + 1) % students


def class_thresholds(t: int, thresholds: ThresholdConfig, schedule: PhaseSchedule) -> torch.Tensor | float:
    """tau_h per class (tensor) or one value at iteration t (DTA after t_seg / the aux stage)."""
    t_start, t_end = dta_window(schedule)
    tau_end = thresholds.tau_end
    tau_end = torch.tensor(tau_end) if isinstance(tau_end, tuple | list) else tau_end
    return high_threshold(t, tau0=thresholds.tau_start, tau_end=tau_end, t_start=t_start, t_end=t_end)


def make_pseudo_labels(
    images01,
    cams,
    cams_aux,
    seg_logits,
    labels,
    img_box,
    t,
    phase: Phase,
    config: StepConfig,
    grid,
    *,
    slots=None,
) -> PseudoLabels:
    """Token labels (when PTC is on), PAR-refined labels and their noise-filtered version for both
    students. ``slots``: the batch's largest present-class count, known on the host
    (:func:`~dupl_cli.method.thresholds.refine_labels`). ``images01`` and ``img_box``: one tensor
    all students share, or one per student (diff_aug: each student's labels live in its own view)."""
    th = config.thresholds
    tau_image = image_thresholds(class_thresholds(t, th, config.schedule), labels)
    n = len(cams_aux)
    own = isinstance(img_box, list | tuple)
    boxes = list(img_box) if own else [img_box] * n
    token = None
    if phase.w_ptc > 0:
        token = [
            token_labels(
                a,
                labels,
                grid=grid,
                tau_high=tau_image,
                tau_low=th.tau_low,
                img_box=box,
                pixel_box=config.ptc_pixel_box,
            )
            for a, box in zip(cams_aux, boxes, strict=True)
        ]
    if not phase.seg_labels:
        return PseudoLabels(tau_image, token, None, None, None)
    sources, tau_seg = (cams_aux, th.aux_tau) if phase.aux_labels else (cams, tau_image)
    # Every student's label pass shares one PAR batch (the affinity is per image either way).
    b = labels.shape[0]
    refined = refine_labels(
        torch.cat(list(images01) if own else [images01] * n),
        torch.cat(sources),
        torch.cat([labels] * n),
        tau_high=torch.as_tensor(tau_seg, device=labels.device).reshape(-1).expand(b).repeat(n),
        tau_low=th.tau_low,
        img_box=torch.cat(boxes),
        par=config.par,
        slots=slots,
    )
    noise = None
    filtered = refined
    if phase.anf:
        own_loss = L.pixel_ce(torch.cat(seg_logits).detach(), refined)
        noise = noisy_pixels(own_loss, refined, config.noise)
        filtered = refined.masked_fill(noise, IGNORE_INDEX)
    return PseudoLabels(tau_image, token, list(refined.split(b)), list(filtered.split(b)), noise)


def training_step(
    model, batch: dict, t: int, config: StepConfig, *, generator: torch.Generator | None = None
) -> StepResult:
    phase = phase_at(t, config.schedule, config.weights)
    if len(model.students) != config.students:
        raise ValueError(
            f"the step is configured for {config.students} student(s), the model has {len(model.students)}"
        )
    students = list(model.students)
    views = batch_views(batch, config, backbone_stride(students[0]))
    images = views.images[0]
    labels = batch["labels"].to(images.device).float()
    size = tuple(images.shape[-2:])
    shared = views.affine is None

    # as the release: PAR sees the uint8-rounded image
    pixels = _per_view(views, lambda x: _pixels(x, config))
    images_u8, images01 = [p[0] for p in pixels], [p[1] for p in pixels]

    outs = [s(x) for s, x in zip(students, views.images, strict=True)]
    seg_weak = [o.seg for o in outs]
    grid = tuple(outs[0].features.shape[-2:])
    cams, cams_aux = _step_cams(model, images if shared else views.images, outs, phase, config)
    slots = batch.get("max_present")
    pseudo = make_pseudo_labels(
        images01[0] if shared else images01,
        cams,
        cams_aux,
        seg_weak,
        labels,
        views.img_box[0] if shared else views.img_box,
        t,
        phase,
        config,
        grid,
        slots=slots,
    )
    learned = None if pseudo.filtered is None else learned_labels(pseudo.filtered, views)

    zero = images.new_zeros((), dtype=torch.float32)
    terms: dict[str, torch.Tensor] = {}
    cls = [
        L.classification_loss(o.logits, labels) + L.classification_loss(o.aux_logits, labels) for o in outs
    ]
    terms["cls"] = sum(cls)
    total = phase.w_cls * terms["cls"]
    if phase.w_ptc > 0:
        ptc = [L.ptc_loss(o.features, tok) for o, tok in zip(outs, pseudo.token, strict=True)]
        terms.update(_per_student("ptc", ptc))
        total = total + phase.w_ptc * terms["ptc"]
    if phase.w_dis > 0:
        # with diff_aug the maps show different views; both forms still compare them position by position
        to_2, to_1 = L.discrepancy_terms(outs[0].features, outs[1].features, form=config.discrepancy)
        terms.update(dis=to_2 + to_1, dis_1=to_2, dis_2=to_1)
        total = total + phase.w_dis * terms["dis"]
    if phase.w_seg > 0:
        # cross supervision: student 1 learns student 2's label and vice versa (a lone one its own)
        seg = [L.seg_loss(logits, label) for logits, label in zip(seg_weak, learned, strict=True)]
        terms.update(_per_student("seg", seg))
        total = total + phase.w_seg * terms["seg"]
    if phase.w_reg > 0:
        d = 1 if shared else len(students)  # the distinct views
        reg = consistency_terms(
            students, images_u8[:d], seg_weak, learned, views.img_box[:d], size, config, generator
        )
        terms.update(_per_student("reg", reg))
        total = total + phase.w_reg * terms["reg"]
    for name in ("ptc", "dis", "seg", "reg"):
        terms.setdefault(name, zero)
    terms = {k: v.detach() for k, v in terms.items()}

    stats = {"tau_h": pseudo.tau_image.float().mean(), "noise_share": _noise_share(pseudo, zero)}
    tau_low = config.thresholds.tau_low
    visuals = _visuals(images_u8[0], cams[0], labels, seg_weak[0], pseudo, learned, size, tau_low)
    return StepResult(total, terms, stats, visuals)


def batch_views(batch: dict, config: StepConfig, stride: int) -> Views:
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
    a, box = views.affine, views.img_box
    return [warp_labels(filtered[j], a[j], box[j], a[k]) for k, j in ((k, partner(k, n)) for k in range(n))]


def _per_view(views: Views, fn) -> list:
    """``fn`` of each student's view, computed once when the students share it."""
    if views.affine is None:
        return [fn(views.images[0])] * len(views.images)
    return [fn(x) for x in views.images]


def _pixels(images: torch.Tensor, config: StepConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The view as uint8 (strong view, visuals) and as the uint8-rounded [0, 1] image PAR sees."""
    images_u8 = denormalize_u8(images, config.mean, config.std)
    return images_u8, images_u8.float() / 255.0


def _per_student(name: str, values: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The term summed over students, and each student's share as name_k."""
    return {name: sum(values), **{f"{name}_{k}": v for k, v in enumerate(values, 1)}}


def _step_cams(model, images, outs, phase: Phase, config: StepConfig):
    """The multi-scale CAMs this phase's labels use, per student: the final-map CAM for the refined
    labels (unless the aux stage feeds them) and the aux CAM for token labels; the other is None. The
    un-flipped scale-1.0 view is the training forward itself. A phase that needs no final CAM gets the
    training forward's single-view one, for the visuals only. ``images``: the shared batch, or a list
    of each student's own view (diff_aug)."""
    need_final = phase.seg_labels and not phase.aux_labels
    need_aux = phase.w_ptc > 0 or (phase.seg_labels and phase.aux_labels)
    cams, cams_aux = [None] * len(outs), [None] * len(outs)
    own = isinstance(images, list | tuple)  # diff_aug: each student's own view
    if need_final or need_aux:
        cams, cams_aux = dual_multiscale_cam(
            model, images, scales=config.cam.scales, flip=config.cam.flip, final=need_final, forwards=outs
        )
    if not need_final:
        size = tuple((images[0] if own else images).shape[-2:])
        with torch.no_grad():
            cams = [
                normalise_cam(merge_flip(s.raw_cams(o.features.detach(), None)[0], size, 1, False))
                for s, o in zip(model.students, outs, strict=True)
            ]
    return cams, cams_aux


def consistency_terms(
    students, images_u8, seg_weak, learned, img_box, size, config: StepConfig, generator
) -> list[torch.Tensor]:
    """L_reg,k: strong-view CE against student k's own confident weak argmax on the pixels the label
    it learns (``learned[k]``) discards. ``images_u8``, ``img_box``: the one view the students share,
    or each student's own (diff_aug: one strong batch of both views, each student segments its own)."""
    view, reg = config.strong, config.consistency
    own = len(images_u8) > 1
    source = torch.cat(images_u8) if own else images_u8[0]
    strong, _ = strong_view(source, view, mean=config.mean, std=config.std, generator=generator)
    strong = downscale(strong, view.scale, multiple=getattr(students[0].backbone, "stride", 1))
    strong = strong.split(images_u8[0].shape[0]) if own else [strong] * len(students)
    inside = None if reg.include_padding else [box_mask(box, size) for box in img_box]
    out = []
    for k, student in enumerate(students):
        discarded = learned[k] == IGNORE_INDEX
        if inside is not None:
            discarded = discarded & inside[k if own else 0]
        target, mask, _ = L.consistency_target(seg_weak[k], discarded, confidence=reg.confidence)
        strong_logits = undo_on_logits(student.segment(strong[k]), size, flip=view.flip)
        out.append(L.consistency_loss(strong_logits, target, mask))
    return out


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
    prediction = L.upsample(seg[:1].detach(), size).argmax(1)[0]
    return {
        "image": images_u8[0],
        "cam": first_cam,
        "pseudo_label": label.to(torch.uint8),
        "prediction": prediction.to(torch.uint8),
    }
