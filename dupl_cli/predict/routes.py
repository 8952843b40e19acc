"""Routes of the prediction loop: how a batch of same-size images becomes outputs and then labels.

``SegRoute``: segmentation logits through TTA (of the whole image, or of windows over a big one:
``predict.slide``), then argmax or the dense CRF.
``CamRoute``: the multi-scale CAM restricted to the image's labels, then the CAM rule
(``method.thresholds.cam_to_label``, two-way or three-way) or the two-pass CAM CRF.
(Not to be confused with ``models.heads``, the network's segmentation head.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dupl_cli.config.method_params import cam_config
from dupl_cli.core.errors import UserError
from dupl_cli.crf.params import CrfParams
from dupl_cli.method.cam import multiscale_cam
from dupl_cli.method.params import CamConfig
from dupl_cli.method.thresholds import cam_to_label
from dupl_cli.models.geometry import pad_to_multiple
from dupl_cli.predict.loop import Batch, Prediction, labels_of, to_batch
from dupl_cli.predict.slide import SlideConfig, slide_predict, window_count
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


def _detail(bar, description: str, total: int):
    """The progress bar's line for one long image (nothing without a bar)."""
    return nullcontext(None) if bar is None else bar.detail(description, total)


@dataclass(frozen=True)
class SegRoute:
    """Segmentation logits through TTA, of the whole image or window by window (``slide``); labels by
    argmax (one copy to the host per batch) or the dense CRF."""

    logits_fn: LogitsFn
    tta: TTAConfig
    multiple: int  # side multiple the backbone needs
    params: CrfParams
    slide: SlideConfig = SlideConfig()  # whole images unless told otherwise

    @classmethod
    def of(cls, model, indices: Sequence[int], settings, tta: TTAConfig) -> SegRoute:
        """The segmentation head of ``model``'s students ``indices`` (mean for several), CRF and
        whole / sliding inference from settings."""
        slide = SlideConfig.from_settings(settings.eval, settings.data.crop_size)
        if tta.resize and slide.mode == "slide":
            raise UserError(
                f"eval.mode = slide with eval.resize = {tta.resize}: a resized image is not slid over; "
                "set eval.resize = 0 or eval.mode = whole"
            )
        params = CrfParams.for_segmentation(settings.crf)
        return cls(seg_fn(model, indices), tta, stride_of(model), params, slide)

    def slides(self, size: tuple[int, int]) -> bool:
        """Whether an image of ``size`` goes window by window (never when TTA resizes it first)."""
        return not self.tta.resize and self.slide.applies(size)

    def forward(self, batch: Batch) -> Prediction:
        """Merged float32 logits B×K×H×W (windows: the labels, and the logits when kept)."""
        if self.slides(batch.size):
            return self._slide(batch)
        return Prediction(tta_logits(self.logits_fn, batch.tensor(), self.tta, multiple=self.multiple))

    def _slide(self, batch: Batch) -> Prediction:
        (item,) = batch.items  # the loop sends an image it slides over alone
        options = batch.options

        def normalise(windows: torch.Tensor) -> torch.Tensor:
            return to_batch(windows, options.mean, options.std, batch.device)

        n = window_count(item.size, self.slide)
        description = f"{item.name} {item.size[1]}x{item.size[0]}: {n} windows"
        with _detail(batch.bar, description, n) as advance:
            result = slide_predict(
                self.logits_fn, item.image, self.tta, self.slide, normalise, multiple=self.multiple,
                batch_size=options.batch_size, keep_logits=batch.keep_scores, advance=advance,
            )  # fmt: skip
        return Prediction(None if result.logits is None else result.logits[None], result.labels[None])

    def route(self, router, keys, items, prediction: Prediction) -> None:
        if router.pool is None:
            labels = prediction.labels if prediction.labels is not None else labels_of(prediction.scores)
            for key, label in zip(keys, labels.cpu().numpy(), strict=True):
                router.finish(key, label)
            return
        for key, item, logits in zip(keys, items, prediction.scores, strict=True):
            router.segmentation(key, item.image, logits, self.params)


@dataclass(frozen=True)
class CamRoute:
    """Without CRF the label is ``cam_to_label(tau_high, tau_low)`` (``tau_low`` None: two-way);
    with CRF, the two-pass CAM CRF with background scores ``crf_tau`` (high, low). Always the whole
    image: a CAM is normalised by its maximum over the image, which a window does not see."""

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

    def slides(self, size: tuple[int, int]) -> bool:
        return False

    def forward(self, batch: Batch) -> Prediction:
        """CAMs B×C×H×W for all classes."""
        x = batch.tensor()
        return Prediction(self.cam_fn(x) if not self.resize else resized_cam(self.cam_fn, x, self.resize))

    def _labels(self, cams: torch.Tensor, items) -> torch.Tensor:
        labels = torch.from_numpy(np.stack([item.labels for item in items]))
        return cam_to_label(cams, labels, tau_high=self.tau_high, tau_low=self.tau_low).to(torch.uint8)

    def route(self, router, keys, items, prediction: Prediction) -> None:
        cams = prediction.scores
        if router.pool is None:
            for key, label in zip(keys, self._labels(cams, items).cpu().numpy(), strict=True):
                router.finish(key, label)
            return
        for key, item, cam in zip(keys, items, cams, strict=True):

            def without_crf(cam=cam, item=item) -> torch.Tensor:
                return self._labels(cam[None], [item])[0]

            router.cams(
                key, item.image, cam, item.labels, self.params, *self.crf_tau, without_crf=without_crf
            )
