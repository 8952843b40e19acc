"""The dense CRF's parameters and constants, shared by both backends and the router.

Kept free of torch and of the backends: pydensecrf pool workers unpickle ``CrfParams`` from here.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_LABELS = 255  # label maps are uint8 (255 = uncertain in CAM pseudo-labels)
CAM_CRF_GT_PROB = 0.7  # ToCo's confidence of the CAM label in the CAM CRF unary


@dataclass(frozen=True)
class CrfParams:
    iters: int = 10
    gauss_sxy: float = 1.0
    gauss_compat: float = 1.0
    bilateral_sxy: float = 121.0
    bilateral_srgb: float = 5.0
    bilateral_compat: float = 4.0

    @classmethod
    def for_segmentation(cls, crf_settings) -> CrfParams:
        kernels = crf_settings
        return cls(
            kernels.iters, kernels.gauss_sxy, kernels.gauss_compat,
            kernels.bilateral_sxy, kernels.bilateral_srgb, kernels.bilateral_compat,
        )  # fmt: skip

    @classmethod
    def for_cams(cls, crf_settings) -> CrfParams:
        kernels = crf_settings.cam
        return cls(
            crf_settings.iters, kernels.gauss_sxy, kernels.gauss_compat,
            kernels.bilateral_sxy, kernels.bilateral_srgb, kernels.bilateral_compat,
        )  # fmt: skip
