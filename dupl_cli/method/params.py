"""The method's typed parameters: frozen dataclasses holding every default (docs/method.md).

This is the only place the method's defaults live; the settings layer keeps equal defaults
(a test holds them together) and ``config.method_params`` builds these objects from settings.
No torch here, so that the settings (and a torch-free ``dupl --help``) can import the op list.
Release-compat switches (docs/method.md §10) sit in the part of the method they change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

STRONG_OPS = ("autocontrast", "equalize", "posterize", "color", "contrast", "brightness", "sharpness")
"""The photometric RandAugment ops of the strong view, in the release's order (docs/method.md §7.5)."""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class CamConfig:
    """Training-time multi-scale CAM (docs/method.md §4.1)."""

    scales: tuple[float, ...] = (1.0, 0.5, 1.5)
    flip: bool = True


@dataclass(frozen=True)
class ThresholdConfig:
    """Three-way CAM thresholds and the dynamic threshold's targets (docs/method.md §4.2-4.3)."""

    tau_low: float = 0.25
    tau_start: float = 0.70
    tau_end: float | tuple[float, ...] = 0.55  # one target, or one per class
    aux_tau: float = 0.65  # fixed tau_h of the COCO release's aux-CAM stage


@dataclass(frozen=True)
class PhaseSchedule:
    """When each stage and each loss term starts (docs/method.md §8); ``max_iters`` also ends the DTA.

    ``t_seg`` starts the refined labels (and DTA), ``t_anf`` the noise filter. Each weighted term has
    its own first iteration; ``None`` is the stage's start (t_seg for seg, t_anf for reg), one later
    with ``delayed_weights``. ``noise_filter`` False removes ANF (ablation).
    """

    t_seg: int = 2000
    t_anf: int = 8000
    max_iters: int = 20000
    aux_seg_until: int = 0  # COCO release stage: head trained from aux-CAM labels while t < this (0 = off)
    delayed_weights: bool = False  # release: a new term is weighted one iteration after it is computed
    ptc_start: int = 0
    dis_start: int = 0
    seg_start: int | None = None
    reg_start: int | None = None
    dta_start: int | None = None  # None: max(t_seg, aux_seg_until)
    noise_filter: bool = True

    def __post_init__(self) -> None:
        for name in ("seg_start", "reg_start"):
            value = getattr(self, name)
            if value is not None and value < self.t_seg:
                raise ValueError(f"{name} ({value}) is before t_seg ({self.t_seg}): its labels start there")


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (docs/method.md §7.6); the classification term has weight 1."""

    ptc: float = 0.2
    dis: float = 0.1
    seg: float = 0.2
    reg: float = 0.05


@dataclass(frozen=True)
class ParConfig:
    """Pixel-adaptive refinement (docs/method.md §5)."""

    dilations: tuple[int, ...] = (1, 2, 4, 8, 12, 24)
    iters: int = 10
    downscale: int = 2  # refined labels: PAR runs at 1/downscale of the crop (docs/method.md §4.5)
    w_color: float = 0.3
    w_pos: float = 0.01


@dataclass(frozen=True)
class NoiseFilterConfig:
    """Adaptive noise filtering (docs/method.md §6)."""

    gamma: float = 0.95
    eta: float = 1.0
    min_pixels: int = 1000
    loss_floor: float = 0.1
    iters: int = 10
    tol: float = 1e-2
    reg: float = 5e-4
    one_sided: bool = True  # False reproduces the release (noise below the clean mean too)


@dataclass(frozen=True)
class StrongViewConfig:
    """The strong view of the consistency loss (docs/method.md §7.5)."""

    ops: tuple[str, ...] = STRONG_OPS
    n: int = 5
    magnitude: int = 10
    scale: float = 0.75
    flip: bool = True


@dataclass(frozen=True)
class ConsistencyConfig:
    """Which discarded pixels the consistency loss uses (docs/method.md §7.5)."""

    confidence: float = 0.9
    include_padding: bool = False  # release: zero-padded pixels outside the crop box count too


@dataclass(frozen=True)
class StepConfig:
    """Everything one training step needs besides the model, the batch and the iteration."""

    cam: CamConfig = field(default_factory=CamConfig)
    thresholds: ThresholdConfig = field(default_factory=ThresholdConfig)
    schedule: PhaseSchedule = field(default_factory=PhaseSchedule)
    weights: LossWeights = field(default_factory=LossWeights)
    par: ParConfig = field(default_factory=ParConfig)
    noise: NoiseFilterConfig = field(default_factory=NoiseFilterConfig)
    strong: StrongViewConfig = field(default_factory=StrongViewConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    discrepancy: Literal["release", "paper"] = "release"
    students: int = 2  # 1: the paper's baseline (one network, its own labels); the model must match
    diff_aug: bool = False  # Table 6: each student its own weak view (the batch's image2), labels warped
    ptc_pixel_box: bool = False  # release: token labels sliced with the pixel crop box
    mean: tuple[float, float, float] = IMAGENET_MEAN  # normalisation of the batch's images
    std: tuple[float, float, float] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.students not in (1, 2):
            raise ValueError(f"students must be 1 or 2, not {self.students}")
        if self.students == 1 and self.weights.dis > 0:
            raise ValueError("the discrepancy loss needs two students (weights.dis must be 0 with one)")
        if self.students == 1 and self.diff_aug:
            raise ValueError("diff_aug gives each of two students its own view: it needs two students")
