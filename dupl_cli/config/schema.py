"""Typed settings: every hyper-parameter of the method with the release default (docs/method.md).

Sections are frozen pydantic models with ``extra="forbid"`` so an unknown key is an error, not a
silent no-op, and loaded settings cannot drift (derive new ones with ``model_copy(update=...)``).
Every float is finite (``allow_inf_nan=False``): ``inf`` and ``nan`` are refused from any source.
``DuplSettings`` is the pydantic-settings root; its sources live in ``config.sources``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dupl_cli.config.context import active_sources
from dupl_cli.config.options import validate_options
from dupl_cli.method.params import STRONG_OPS  # the op list is the method's; torch-free

VOC_TAU_END_PER_CLASS = [
    0.70, 0.70, 0.70, 0.70, 0.55, 0.55, 0.55, 0.55, 0.70, 0.55,
    0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.55, 0.70, 0.55,
]  # fmt: skip
"""The release's per-class DTA targets: 0.70 for aeroplane, bicycle, bird, boat, chair, train."""


PATH_MAX, NAME_MAX = 4096, 255
"""Longest text or path setting, and longest file or folder name in a path (bytes, as Linux counts)."""


class Section(BaseModel):
    # allow_inf_nan=False: every float of every section (alone, in a tuple or a list) is finite; inf
    # passes ``gt=0`` and would reach the optimiser, the losses or the CRF kernels.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _usable_text(cls, v: Any) -> Any:
        """A text or path no file system takes is the setting's error, not the dataset plugin's or the
        backbone's that would try to open it."""
        if isinstance(v, str | Path):
            size = len(os.fsencode(str(v)))
            if size > PATH_MAX:
                raise ValueError(f"too long ({size:,} bytes; at most {PATH_MAX})")
            if isinstance(v, Path) and (name := max(v.parts, key=len, default="")) and len(name) > NAME_MAX:
                raise ValueError(
                    f"holds a name of {len(name):,} characters; a file or folder name has at most {NAME_MAX}"
                )
        return v


class ModelSettings(Section):
    backbone: str = Field(
        "vit",
        description="Backbone family: a `dupl.backbones` entry point (vit, timm, resnet, mit, ...); "
        "'family:arch' also sets arch",
    )
    arch: str = Field(
        "deit_base_patch16_224",
        description="Architecture inside the family: a timm name, optionally with its weights tag, for vit "
        "(any timm ViT) and timm (any timm CNN); mit_b0..mit_b5",
    )
    pretrained: str = Field(
        "timm",
        description="Backbone weights: 'none', 'timm' (timm's weights for the name, needs network), "
        "'hf-hub:org/name' (timm weights, or a dupl export's backbone), a local .safetensors/.pth file or "
        "a dupl hf export folder",
    )
    aux_layer: int = Field(
        -3,
        description="Block whose output (no norm) feeds the auxiliary classifier (ViT: -3 = block 10 of 12; "
        "CNNs use the level before the last)",
    )
    head_channels: int = Field(
        512,
        ge=1,
        description="Width of the segmentation head: LargeFOV's channels, DeepLab-V3+/SegFormer's decoder",
    )
    head_dilation: int = Field(5, ge=1, description="Dilation of the LargeFOV 3x3 convolutions")
    head: Literal["largefov", "deeplabv2", "deeplabv3plus", "segformer"] = Field(
        "largefov",
        description="Segmentation head: largefov (DuPL's); stage 2 (data.pseudo_labels) also deeplabv2 "
        "(ASPP 6/12/18/24), deeplabv3plus, segformer (all-MLP); head_channels sets their width",
    )
    head_rates: tuple[int, ...] | None = Field(
        None, description="ASPP dilation rates (unset: deeplabv2 6, 12, 18, 24; deeplabv3plus 6, 12, 18)"
    )
    output_stride: Literal[8, 16, 32] | None = Field(
        None, description="Backbone output stride (unset: the family's, 16; timm CNNs 8/16/32, MiT 16/32)"
    )

    @model_validator(mode="before")
    @classmethod
    def _split_family_arch(cls, data: Any) -> Any:
        backbone = data.get("backbone") if isinstance(data, dict) else None
        if isinstance(backbone, str) and ":" in backbone:
            family, arch = backbone.split(":", 1)
            data = {**data, "backbone": family, "arch": arch}
        return data


class DataSettings(Section):
    adapter: str = Field(
        "voc", description="Dataset adapter: a `dupl.datasets` entry point (voc, coco, folder, demo)"
    )
    root: Path = Field(
        Path("data/VOCdevkit"), description="Dataset root folder (see the adapter's documented layout)"
    )
    train_split: str = Field("train_aug", description="Split used for training")
    val_split: str = Field("val", description="Split used for validation and evaluation")
    train_list: Path | None = Field(
        None, description="Optional list file of training ids (overrides the split file)"
    )
    val_list: Path | None = Field(
        None, description="Optional list file of validation ids (overrides the split file)"
    )
    labels_file: Path | None = Field(
        None, description="Optional CSV of image-level labels (id, class names separated by spaces)"
    )
    crop_size: int = Field(448, ge=16, description="Training crop size in pixels")
    scale_range: tuple[float, float] = Field(
        (0.5, 2.0), description="Random rescale ratio range of the weak view"
    )
    hflip: bool = Field(True, description="Random horizontal flip (p=0.5) in the weak view")
    color_jitter: tuple[float, float, float, float] = Field(
        (0.4, 0.4, 0.2, 0.1), description="ColorJitter brightness, contrast, saturation, hue"
    )
    color_jitter_p: float = Field(0.8, ge=0, le=1, description="Probability of applying ColorJitter")
    grayscale_p: float = Field(0.2, ge=0, le=1, description="Probability of RandomGrayscale")
    blur_radius: tuple[float, float] = Field((0.1, 2.0), description="Gaussian blur radius range (uniform)")
    mean: tuple[float, float, float] = Field(
        (0.485, 0.456, 0.406), description="Normalisation mean (ImageNet)"
    )
    std: tuple[float, float, float] = Field((0.229, 0.224, 0.225), description="Normalisation std (ImageNet)")
    num_workers: int = Field(4, ge=0, description="DataLoader worker processes")
    on_error: Literal["fail", "skip"] = Field(
        "fail",
        description="Bad samples: stop listing every problem ('fail') or skip and report them ('skip')",
    )
    split_seed: int = Field(
        0, description="Seed of the deterministic split when a folder dataset has no split files"
    )
    val_fraction: float = Field(
        0.2, gt=0, lt=1, description="Share of images put in val by the deterministic split"
    )
    pseudo_labels: Path | None = Field(
        None,
        description="Stage 2: train a fully supervised segmenter on this folder of `dupl pseudo-label` "
        "masks (255 ignored) instead of DuPL; val_split's ground truth stays the validation target",
    )
    options: dict[str, Any] = Field(
        default_factory=dict,
        validate_default=True,  # so an adapter's option defaults are filled in (and shown) too
        description="The adapter's own options table, validated by the model it declares",
    )

    @field_validator("scale_range", "blur_radius")
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if v[0] > v[1] or v[0] < 0:
            raise ValueError("must be [low, high] with 0 <= low <= high")
        return v

    @field_validator("options")
    @classmethod
    def _adapter_options(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        adapter = info.data.get("adapter")
        return v if adapter is None else validate_options(adapter, v)


TrackerName = Literal[
    "tensorboard", "wandb", "mlflow", "aim", "comet_ml", "clearml", "dvclive", "trackio", "swanlab"
]
"""The trackers Accelerate supports (their packages: ``PACKAGES`` in ``dupl_cli/train/trackers.py``)."""


class TrainSettings(Section):
    max_iters: int = Field(20000, ge=1, description="Total iterations T")
    batch_size: int = Field(4, ge=1, description="Images per device per step")
    reference_batch: int = Field(
        4, ge=1, description="Total batch the preset's results were obtained with (VOC 4, COCO 8)"
    )
    grad_accum: int = Field(1, ge=1, description="Gradient accumulation steps")
    precision: Literal["auto", "bf16", "fp16", "no"] = Field(
        "auto", description="Mixed precision: auto = bf16 on CUDA when supported, else fp32"
    )
    lr: float = Field(6e-5, gt=0, description="Backbone learning rate")
    head_lr_mult: float = Field(
        10.0, gt=0, description="LR multiplier for classifiers and the segmentation head"
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (every group)")
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw", description="adamw (DuPL, SegFormer) or sgd with momentum (DeepLab); same LR groups"
    )
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (train.optimizer = sgd)")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon")
    warmup_iters: int = Field(1500, ge=0, description="Linear warm-up iterations")
    warmup_ratio: float = Field(1e-6, gt=0, le=1, description="Warm-up starts at warmup_ratio * lr")
    poly_power: float = Field(0.9, gt=0, description="Poly decay power: lr * (1 - t/T)^power")
    seed: int = Field(0, description="Global seed")
    deterministic: bool = Field(
        False, description="Deterministic algorithms (slower; for exact resume checks)"
    )
    runs_root: Path = Field(Path("runs"), description="Folder holding run directories")
    run_name: str | None = Field(
        None, description="Run directory name under runs_root (default: preset + timestamp)"
    )
    log_every: int = Field(20, ge=1, description="Steps between metrics.jsonl lines / progress updates")
    image_every: int = Field(500, ge=1, description="Steps between image grids sent to trackers")
    label_quality: bool = Field(
        False,
        description="Also log the labels' accuracy against the training split's ground-truth masks "
        "(refined and learned labels, the noise filter's precision and recall, the consistency targets); "
        "needs masks on that split, stage 1 only",
    )
    val_every: int = Field(2000, ge=1, description="Steps between validations")
    val_max_images: int = Field(0, ge=0, description="Cap on validation images (0 = whole split)")
    ckpt_every: int = Field(1000, ge=1, description="Steps between rotating checkpoints")
    keep_checkpoints: int = Field(3, ge=1, description="Rotating checkpoints kept")
    max_bad_steps: int = Field(
        10,
        ge=1,
        description="Consecutive non-finite-loss steps (skipped) before stopping; checked at log, "
        "validation and checkpoint steps",
    )
    tracker: Literal["none"] | TrackerName | list[TrackerName] = Field(
        "none",
        description="Experiment tracker(s) Accelerate logs to, one name or a list "
        '(e.g. ["tensorboard", "mlflow"]); each needs its extra: tb, wandb, mlflow, aim, comet, '
        "clearml, dvclive, trackio, swanlab",
    )
    trackers: dict[TrackerName, dict[str, Any]] = Field(
        default_factory=dict,
        description="Each tracker's own options, passed to accelerator.init_trackers as its init_kwargs "
        '(e.g. [train.trackers.wandb] mode = "offline")',
    )
    compile: bool = Field(False, description="torch.compile the students' backbones (once per input shape)")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode (inductor backend)"
    )
    compile_backend: str = Field(
        "inductor", description="torch.compile backend (aot_eager: trace only, for debugging)"
    )
    select: Literal["final", "best-val"] = Field(
        "final",
        description="Inference checkpoint: 'final' (last iteration, student 1: no pixel label chooses it) or "
        "'best-val' (also best.safetensors, best seg mIoU on data.val_split: that split's labels chose it)",
    )


class ParSettings(Section):
    dilations: tuple[int, ...] = Field((1, 2, 4, 8, 12, 24), description="PAR neighbourhood dilations")
    iters: int = Field(10, ge=1, description="PAR propagation iterations")
    downscale: int = Field(2, ge=1, description="PAR runs on the image and CAM downscaled by this factor")
    w_color: float = Field(0.3, gt=0, description="PAR colour temperature")
    w_pos: float = Field(0.01, ge=0, description="PAR positional affinity weight")


class AnfSettings(Section):
    gamma: float = Field(0.95, gt=0, lt=1, description="Noise posterior threshold gamma")
    eta: float = Field(1.0, ge=0, description="Minimum |mu0 - mu1| for a valid fit")
    min_pixels: int = Field(1000, ge=1, description="Fit only with more than this many foreground pixels")
    loss_floor: float = Field(0.1, ge=0, description="Fit only on pixels whose loss exceeds this")
    iters: int = Field(10, ge=1, description="EM iterations")
    tol: float = Field(1e-2, gt=0, description="EM tolerance on the mean log-likelihood")
    reg: float = Field(5e-4, ge=0, description="Variance floor added to each component")


class RegSettings(Section):
    confidence: float = Field(
        0.9, ge=0, le=1, description="Confidence above which discarded pixels get the consistency loss"
    )


class StrongSettings(Section):
    ops: tuple[str, ...] = Field(STRONG_OPS, description="Photometric RandAugment ops of the strong view")
    n: int = Field(5, ge=0, description="Ops drawn (with replacement) per image")
    magnitude: int = Field(10, ge=0, le=30, description="RandAugment magnitude (out of 30)")
    scale: float = Field(0.75, gt=0, le=1, description="Downscale of the strong view")
    flip: bool = Field(True, description="Always flip the strong view")

    @field_validator("ops")
    @classmethod
    def _known_ops(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [op for op in v if op not in STRONG_OPS]
        if unknown:
            raise ValueError(f"unknown op {unknown[0]!r}; allowed: {', '.join(STRONG_OPS)}")
        return v


class MethodSettings(Section):
    cam_scales: tuple[float, ...] = Field(
        (1.0, 0.5, 1.5), description="Scales of the training-time multi-scale CAM"
    )
    cam_flip: bool = Field(True, description="Add horizontal flips to the multi-scale CAM")
    tau_low: float = Field(0.25, ge=0, le=1, description="Low CAM threshold tau_l (background below)")
    tau_high_start: float = Field(
        0.70, ge=0, le=1, description="High CAM threshold tau_0 before and at the start of DTA"
    )
    tau_high_end: float | list[float] = Field(
        0.55, description="DTA target tau_end: one value or one per class"
    )
    t_seg: int = Field(2000, ge=0, description="Iteration the segmentation loss (and DTA, PAR labels) starts")
    t_anf: int = Field(8000, ge=0, description="Iteration noise filtering and consistency start")
    aux_seg_until: int = Field(
        0,
        ge=0,
        description="COCO release stage: train the head from aux-CAM labels with fixed tau until this "
        "iteration (0 = off)",
    )
    aux_seg_tau: float = Field(0.65, ge=0, le=1, description="Fixed tau_h of the aux-CAM stage")
    dta_start: int | None = Field(
        None,
        ge=0,
        description="Iteration DTA starts decaying tau_h (unset: t_seg, or aux_seg_until when later)",
    )
    ptc_start: int = Field(0, ge=0, description="First iteration the PTC loss is weighted (and computed)")
    dis_start: int = Field(
        0, ge=0, description="First iteration the discrepancy loss is weighted (and computed)"
    )
    seg_start: int | None = Field(
        None,
        ge=0,
        description="First iteration the seg loss is weighted, >= t_seg (unset: t_seg, "
        "+1 with compat.delayed_weights)",
    )
    reg_start: int | None = Field(
        None,
        ge=0,
        description="First iteration the consistency loss is weighted, >= t_seg (unset: t_anf, "
        "+1 with compat.delayed_weights)",
    )
    w_ptc: float = Field(0.2, ge=0, description="Weight of the patch token contrast loss")
    w_dis: float = Field(0.1, ge=0, description="Weight of the discrepancy loss")
    w_seg: float = Field(0.2, ge=0, description="Weight of the cross segmentation loss")
    w_reg: float = Field(0.05, ge=0, description="Weight of the consistency loss on discarded pixels")
    discrepancy: Literal["release", "paper"] = Field(
        "release", description="Discrepancy form: release (1 + cos) or paper (-log(1 - cos))"
    )
    students: int = Field(
        2,
        ge=1,
        le=2,
        description="2: DuPL's cross-supervised students; 1: the paper's baseline, one network learning from "
        "its own PAR-refined CAM labels (half the work per step)",
    )
    diff_aug: bool = Field(
        False,
        description="Paper Table 6 'Diff. Aug': each student trains on its own weak view of the image and "
        "learns its partner's label mapped into that view (needs 2 students)",
    )
    use_dis: bool = Field(
        True, description="Ablation switch +L_dis: the discrepancy loss (off: not computed; needs 2 students)"
    )
    use_dta: bool = Field(
        True, description="Ablation switch +DTA: the dynamic threshold (off: tau_h stays tau_high_start)"
    )
    use_anf: bool = Field(
        True, description="Ablation switch +ANF: adaptive noise filtering of the seg labels (off: no EM)"
    )
    use_reg: bool = Field(
        True, description="Ablation switch +L_reg: the consistency loss (off: no strong view)"
    )
    stage2_weights: Literal["none", "confidence"] = Field(
        "none",
        description="Stage 2 loss: 'none' = plain CE over the certain pixels (255 ignored); 'confidence' = "
        "each pixel weighted by the confidence PNG `dupl pseudo-label --confidence` wrote",
    )
    stage2_anf: bool = Field(
        False, description="Stage 2: the adaptive noise filter (method.anf) drops noisy labels online"
    )
    stage2_anf_start: int = Field(0, ge=0, description="Stage 2: first iteration of method.stage2_anf")
    par: ParSettings = Field(
        default_factory=ParSettings, description="Pixel-adaptive refinement of CAM labels"
    )
    anf: AnfSettings = Field(
        default_factory=AnfSettings, description="Adaptive noise filter (two-component GMM)"
    )
    reg: RegSettings = Field(default_factory=RegSettings, description="Consistency loss on discarded pixels")
    strong: StrongSettings = Field(
        default_factory=StrongSettings, description="Strong view of the consistency loss"
    )


class EvalSettings(Section):
    checkpoint: Path | None = Field(
        None,
        description="Checkpoint (.safetensors) or run directory used by evaluate/pseudo-label when none is "
        "given",
    )
    split: str = Field("val", description="Split evaluated")
    scales: tuple[float, ...] = Field((1.0, 1.25, 1.5), description="Multi-scale TTA scales")
    flip: bool = Field(True, description="Horizontal-flip TTA")
    flip_merge: Literal["sum", "max"] = Field("sum", description="How an image and its flip are merged")
    scale_merge: Literal["max", "sum"] = Field("max", description="How scales are merged")
    resize: int = Field(
        0,
        ge=0,
        description="Resize to this square size before TTA (0 = native resolution; COCO release: 448)",
    )
    student: Literal["best", "1", "2", "ensemble"] = Field("best", description="Student used for predictions")
    cam_threshold: float = Field(
        0.5, ge=0, le=1, description="Background threshold of CAM pseudo-label evaluation"
    )
    batch_size: int = Field(
        8, ge=1, description="Images of one size per forward at inference (windows of a big image too)"
    )
    max_images: int = Field(0, ge=0, description="Cap on evaluated images (0 = all)")
    max_pixels: int = Field(
        50_000_000,
        ge=1,
        description="infer refuses (reports and skips) images with more pixels than this: "
        "time and memory grow with the image",
    )
    mode: Literal["whole", "slide", "auto"] = Field(
        "auto",
        description="Segmentation of the whole image, or of overlapping windows with their logits averaged "
        "(slide); auto slides above eval.slide_above pixels. CAMs always take the whole image",
    )
    slide_crop: int = Field(
        0, ge=0, description="Window side of slide mode (0 = data.crop_size, the training crop)"
    )
    slide_stride: int = Field(0, ge=0, description="Step between windows (0 = two thirds of the window side)")
    slide_above: int = Field(
        4_000_000, ge=1, description="Images with more pixels than this slide in auto mode (whole below)"
    )


class CamCrfSettings(Section):
    gauss_sxy: float = Field(3.0, gt=0, description="Gaussian spatial std for CAM pseudo-labels")
    gauss_compat: float = Field(3.0, ge=0, description="Gaussian compatibility for CAM pseudo-labels")
    bilateral_sxy: float = Field(36.0, gt=0, description="Bilateral spatial std for CAM pseudo-labels")
    bilateral_srgb: float = Field(3.0, gt=0, description="Bilateral colour std for CAM pseudo-labels")
    bilateral_compat: float = Field(4.0, ge=0, description="Bilateral compatibility for CAM pseudo-labels")
    tau_high: float = Field(0.70, ge=0, le=1, description="High background score of the CAM CRF pass")
    tau_low: float = Field(0.25, ge=0, le=1, description="Low background score of the CAM CRF pass")


class CrfSettings(Section):
    iters: int = Field(10, ge=1, description="Mean-field iterations")
    gauss_sxy: float = Field(1.0, gt=0, description="Gaussian kernel spatial std")
    gauss_compat: float = Field(1.0, ge=0, description="Gaussian kernel compatibility")
    bilateral_sxy: float = Field(121.0, gt=0, description="Bilateral kernel spatial std")
    bilateral_srgb: float = Field(5.0, gt=0, description="Bilateral kernel colour std")
    bilateral_compat: float = Field(4.0, ge=0, description="Bilateral kernel compatibility")
    workers: int = Field(0, ge=0, description="CRF worker processes (0 = available cores)")
    cam: CamCrfSettings = Field(
        default_factory=CamCrfSettings, description="The CRF pass that turns CAMs into pseudo-labels"
    )
    backend: Literal["auto", "torch", "pydensecrf"] = Field(
        "auto",
        description="Dense CRF: torch (on the model's device), pydensecrf (CPU pool), auto (torch on CUDA)",
    )


class ExportSettings(Section):
    format: Literal["safetensors", "onnx", "torchscript", "hf"] = Field(
        "safetensors", description="Export format (hf: a folder for the Hugging Face Hub)"
    )
    student: Literal["best", "1", "2"] = Field("best", description="Student exported")
    full: bool = Field(False, description="Keep the classifiers (for CAMs) in the export")
    opset: int = Field(
        18, ge=17, description="ONNX opset (>= 17; 18 is what the torch exporter writes natively)"
    )
    atol: float = Field(1e-3, gt=0, description="Max abs logit difference allowed when checking an export")
    check_sizes: tuple[tuple[int, int], ...] = Field(
        ((224, 224), (160, 288)), description="Input sizes (H, W) the export is checked at"
    )


class CompatSettings(Section):
    ptc_pixel_box: bool = Field(
        False, description="Release quirk: slice the token label with the pixel img_box"
    )
    reg_include_padding: bool = Field(
        False, description="Release quirk: consistency mask includes zero-padded pixels"
    )
    anf_two_sided: bool = Field(False, description="Release quirk: flag noise below the clean mean too")
    eval_gt_student: bool = Field(
        False, description="Release quirk: pick the student with the evaluated split's ground truth"
    )
    delayed_weights: bool = Field(
        False, description="Release quirk: switch each loss weight on one iteration late"
    )


SECTIONS: dict[str, type[Section]] = {
    "model": ModelSettings,
    "data": DataSettings,
    "train": TrainSettings,
    "method": MethodSettings,
    "eval": EvalSettings,
    "crf": CrfSettings,
    "export": ExportSettings,
    "compat": CompatSettings,
}


class DuplSettings(BaseSettings):
    """All settings. Build through ``config.sources.load_settings`` to get the documented sources."""

    model_config = SettingsConfigDict(
        env_prefix="DUPL_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    model: ModelSettings = Field(default_factory=ModelSettings)
    data: DataSettings = Field(default_factory=DataSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    method: MethodSettings = Field(default_factory=MethodSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    crf: CrfSettings = Field(default_factory=CrfSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    compat: CompatSettings = Field(default_factory=CompatSettings)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        # The sources of the load under way (config.sources.load_settings); none outside one, so a
        # bare DuplSettings() is the defaults plus its arguments, whatever the environment holds.
        return (init_settings, *active_sources(settings_cls))

    @model_validator(mode="after")
    def _schedule_order(self) -> DuplSettings:
        m = self.method
        if m.t_anf < m.t_seg:
            raise ValueError(f"method.t_anf ({m.t_anf}) must be >= method.t_seg ({m.t_seg})")
        for name in ("seg_start", "reg_start"):
            value = getattr(m, name)
            if value is not None and value < m.t_seg:
                raise ValueError(
                    f"method.{name} ({value}) must be >= method.t_seg ({m.t_seg}): its labels start there"
                )
        if m.students == 1 and m.use_dis:
            raise ValueError(
                "method.use_dis needs two students; set method.use_dis = false with method.students = 1"
            )
        if m.students == 1 and m.diff_aug:
            raise ValueError(
                "method.diff_aug needs two students; set method.diff_aug = false with method.students = 1"
            )
        return self
