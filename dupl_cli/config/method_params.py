"""Settings -> the method's typed parameters. The one place that reads method settings.

The method (``dupl_cli.method``) never sees the settings object: the trainer, the benchmarks and
the tests build a :class:`StepConfig` here and hand that down.
"""

from __future__ import annotations

from dupl_cli.core.errors import UserError
from dupl_cli.method.params import (
    CamConfig,
    ConsistencyConfig,
    LossWeights,
    NoiseFilterConfig,
    ParConfig,
    PhaseSchedule,
    StepConfig,
    StrongViewConfig,
    ThresholdConfig,
)
from dupl_cli.method.stage2 import Stage2Config


def cam_config(settings) -> CamConfig:
    """The multi-scale CAM of training, also used by CAM evaluation and CAM pseudo-labels."""
    return CamConfig(scales=tuple(settings.method.cam_scales), flip=settings.method.cam_flip)


def schedule_config(settings) -> PhaseSchedule:
    """Stage starts, each loss term's first iteration, and the noise-filter switch."""
    m = settings.method
    return PhaseSchedule(
        t_seg=m.t_seg,
        t_anf=m.t_anf,
        max_iters=settings.train.max_iters,
        aux_seg_until=m.aux_seg_until,
        delayed_weights=settings.compat.delayed_weights,
        ptc_start=m.ptc_start,
        dis_start=m.dis_start,
        seg_start=m.seg_start,
        reg_start=m.reg_start,
        dta_start=m.dta_start,
        noise_filter=m.use_anf,
    )


def noise_config(settings) -> NoiseFilterConfig:
    """The adaptive noise filter's parameters (stage 1's ANF, and stage 2's with method.stage2_anf)."""
    m, c = settings.method, settings.compat
    return NoiseFilterConfig(
        gamma=m.anf.gamma,
        eta=m.anf.eta,
        min_pixels=m.anf.min_pixels,
        loss_floor=m.anf.loss_floor,
        iters=m.anf.iters,
        tol=m.anf.tol,
        reg=m.anf.reg,
        one_sided=not c.anf_two_sided,
    )


def stage2_config(settings) -> Stage2Config:
    """The second stage's step parameters (docs/method.md §12)."""
    m = settings.method
    return Stage2Config(
        weights=m.stage2_weights,
        anf=m.stage2_anf,
        anf_start=m.stage2_anf_start,
        noise=noise_config(settings),
        mean=tuple(settings.data.mean),
        std=tuple(settings.data.std),
    )


def step_config(settings, num_classes: int | None = None) -> StepConfig:
    """The StepConfig of ``settings``; with ``num_classes``, per-class thresholds must match it."""
    m, c = settings.method, settings.compat
    tau_end = tuple(m.tau_high_end) if isinstance(m.tau_high_end, list | tuple) else m.tau_high_end
    if num_classes is not None and isinstance(tau_end, tuple) and len(tau_end) != num_classes:
        raise UserError(
            f"method.tau_high_end has {len(tau_end)} per-class values "
            f"but the dataset has {num_classes} classes"
        )
    return StepConfig(
        cam=cam_config(settings),
        thresholds=ThresholdConfig(  # without DTA the threshold "decays" to where it starts
            tau_low=m.tau_low,
            tau_start=m.tau_high_start,
            tau_end=tau_end if m.use_dta else m.tau_high_start,
            aux_tau=m.aux_seg_tau,
        ),
        schedule=schedule_config(settings),
        # An ablation switch that is off zeroes its weight: a zero-weight term is never computed.
        weights=LossWeights(
            ptc=m.w_ptc, dis=m.w_dis if m.use_dis else 0.0, seg=m.w_seg, reg=m.w_reg if m.use_reg else 0.0
        ),
        par=ParConfig(
            dilations=tuple(m.par.dilations),
            iters=m.par.iters,
            downscale=m.par.downscale,
            w_color=m.par.w_color,
            w_pos=m.par.w_pos,
        ),
        noise=noise_config(settings),
        strong=StrongViewConfig(
            ops=tuple(m.strong.ops),
            n=m.strong.n,
            magnitude=m.strong.magnitude,
            scale=m.strong.scale,
            flip=m.strong.flip,
        ),
        consistency=ConsistencyConfig(confidence=m.reg.confidence, include_padding=c.reg_include_padding),
        discrepancy=m.discrepancy,
        students=m.students,
        diff_aug=m.diff_aug,
        ptc_pixel_box=c.ptc_pixel_box,
        mean=tuple(settings.data.mean),
        std=tuple(settings.data.std),
    )
