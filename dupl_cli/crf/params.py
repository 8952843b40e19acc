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
        s = crf_settings
        return cls(
            s.iters, s.gauss_sxy, s.gauss_compat, s.bilateral_sxy, s.bilateral_srgb, s.bilateral_compat
        )

    @classmethod
    def for_cams(cls, crf_settings) -> CrfParams:
        s = crf_settings
        return cls(
            s.iters,
            s.cam.gauss_sxy,
            s.cam.gauss_compat,
            s.cam.bilateral_sxy,
            s.cam.bilateral_srgb,
            s.cam.bilateral_compat,
        )
