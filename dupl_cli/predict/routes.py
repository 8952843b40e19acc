"""Routes of the prediction loop: how one image becomes an output and then a label.

``SegRoute``: segmentation logits through TTA, then argmax or the dense CRF.
``CamRoute``: the multi-scale CAM restricted to the image's labels, then the CAM rule
(``method.thresholds.cam_to_label``, two-way or three-way) or the two-pass CAM CRF.
(Not to be confused with ``models.heads``, the network's segmentation head.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dupl_cli.config.method_params import cam_config
from dupl_cli.crf.params import CrfParams
from dupl_cli.method.cam import multiscale_cam
from dupl_cli.method.params import CamConfig
from dupl_cli.method.thresholds import cam_to_label
from dupl_cli.models.geometry import pad_to_multiple
from dupl_cli.predict.tta import TTAConfig, ensemble, stride_of, tta_logits

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def seg_fn(model, indices: Sequence[int]) -> LogitsFn:
    """Segmentation logits of one student, or the mean over several."""
    fns = [model.students[i].segment for i in indices]
    return fns[0] if len(fns) == 1 else ensemble(fns)


def cam_multiple(stride: int, scales) -> int:
    """Smallest multiple of ``stride`` whose scaled sides stay multiples of ``stride``."""
    for k in range(1, 65):
        m = stride * k
        if all(int(s * m) % stride == 0 for s in scales):
            return m
    return stride


def cam_fn(model, indices: Sequence[int], cam: CamConfig) -> LogitsFn:
    """Multi-scale CAM in [0, 1] at the input size (final-map CAM; mean over students for an ensemble)."""
    scales, flip = cam.scales, cam.flip
    multiple = cam_multiple(stride_of(model), scales)

    def run(x: torch.Tensor) -> torch.Tensor:
        # Pad so every scaled view has sides divisible by the stride; crop the CAM back.
        h, w = x.shape[-2:]
        padded = pad_to_multiple(x, multiple)
        cams = [
            multiscale_cam(model.students[i], padded, scales=scales, flip=flip)[0].float() for i in indices
        ]
        return torch.stack(cams).mean(0)[..., :h, :w]

    return run


def resized_cam(fn: LogitsFn, x: torch.Tensor, size: int) -> torch.Tensor:
    """CAM of ``x`` resized to ``size``×``size``, upsampled back to the input size."""
    small = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return F.interpolate(fn(small), size=x.shape[-2:], mode="bilinear", align_corners=False)


@dataclass(frozen=True)
class SegRoute:
    logits_fn: LogitsFn
    tta: TTAConfig
    multiple: int  # side multiple the backbone needs
    params: CrfParams

    @classmethod
    def of(cls, model, indices: Sequence[int], settings, tta: TTAConfig) -> SegRoute:
        """The segmentation head of ``model``'s students ``indices`` (mean for several), CRF from settings."""
        return cls(seg_fn(model, indices), tta, stride_of(model), CrfParams.for_segmentation(settings.crf))

    def forward(self, x: torch.Tensor, item) -> torch.Tensor:
        """Merged float32 logits K×H×W."""
        return tta_logits(self.logits_fn, x, self.tta, multiple=self.multiple)[0]

    def route(self, router, key, item, logits: torch.Tensor) -> None:
        router.segmentation(key, item.image, logits, self.params)


@dataclass(frozen=True)
class CamRoute:
    """Without CRF the label is ``cam_to_label(tau_high, tau_low)`` (``tau_low`` None: two-way);
    with CRF, the two-pass CAM CRF with background scores ``crf_tau`` (high, low)."""

    cam_fn: LogitsFn
    params: CrfParams
    crf_tau: tuple[float, float]
    tau_high: float
    tau_low: float | None = None
    resize: int = 0  # square side the image is resized to first; 0 = native

    @classmethod
    def of(
        cls, model, indices: Sequence[int], settings, tau_high: float, tau_low: float | None, resize: int = 0
    ) -> CamRoute:
        """The multi-scale CAM of ``model``'s students ``indices``; CAM CRF and scales from settings."""
        crf = settings.crf
        fn = cam_fn(model, indices, cam_config(settings))
        crf_tau = (crf.cam.tau_high, crf.cam.tau_low)
        return cls(fn, CrfParams.for_cams(crf), crf_tau, tau_high, tau_low, resize=resize)

    def forward(self, x: torch.Tensor, item) -> torch.Tensor:
        """CAM C×H×W for all classes."""
        cam = self.cam_fn(x) if not self.resize else resized_cam(self.cam_fn, x, self.resize)
        return cam[0]

    def route(self, router, key, item, cam: torch.Tensor) -> None:
        def without_crf() -> torch.Tensor:
            labels = torch.from_numpy(item.labels)[None]
            return cam_to_label(cam[None], labels, tau_high=self.tau_high, tau_low=self.tau_low)[0]

        router.cams(key, item.image, cam, item.labels, self.params, *self.crf_tau, without_crf=without_crf)
