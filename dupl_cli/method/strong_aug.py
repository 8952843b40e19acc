"""The strong view of the consistency loss, batched on the device (docs/method.md §7.5).

Photometric RandAugment as the release runs it (verified against the fixture's strong batch):
``n`` ops drawn with replacement per image, each applied in order with a fixed magnitude
(enhancement factor 0.1 + 1.8·m/30 = 0.70 at m = 10; posterize to 2 bits). The ops reproduce
Pillow's integer arithmetic on uint8 images so that the batch matches a per-image PIL run.
Images choose ops independently: every op runs on the whole batch and ``torch.where`` keeps the
chosen result, so there is no Python loop over images and no host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dupl_cli.method.params import StrongViewConfig

POSTERIZE_BITS = 2


def enhance_factor(magnitude: int) -> float:
    """Pillow enhancement factor of the release's RandAugment at ``magnitude`` (out of 30)."""
    return 0.1 + 1.8 * magnitude / 30.0


def denormalize_u8(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised float images -> uint8, as the release: ``x·(255·std) + 255·mean`` then a truncating cast."""
    mean_t = torch.tensor([255.0 * m for m in mean], dtype=torch.float32, device=images.device).view(
        1, -1, 1, 1
    )
    std_t = torch.tensor([255.0 * s for s in std], dtype=torch.float32, device=images.device).view(
        1, -1, 1, 1
    )
    return (images.float() * std_t + mean_t).clamp(0, 255).to(torch.uint8)


def normalize(images_u8: torch.Tensor, mean, std) -> torch.Tensor:
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=images_u8.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=images_u8.device).view(1, -1, 1, 1)
    return (images_u8.float() / 255.0 - mean_t) / std_t


# --- Pillow-exact uint8 ops on B×3×H×W tensors -------------------------------------------------


def _blend(degenerate: torch.Tensor, image: torch.Tensor, factor: float) -> torch.Tensor:
    """Pillow ``Image.blend``: float32 ``d + f·(i − d)`` clipped and truncated."""
    d, i = degenerate.float(), image.float()
    return (d + factor * (i - d)).clamp(0, 255).to(torch.uint8)


def _luma(image: torch.Tensor) -> torch.Tensor:
    """Pillow's RGB -> L conversion (fixed-point ITU-R 601), B×1×H×W int32."""
    x = image.to(torch.int32)
    return (x[:, 0:1] * 19595 + x[:, 1:2] * 38470 + x[:, 2:3] * 7471 + 0x8000) >> 16


def autocontrast(image: torch.Tensor) -> torch.Tensor:
    """Per-channel stretch of [min, max] to [0, 255] via Pillow's truncated LUT."""
    flat = image.flatten(2)
    lo = flat.amin(-1).double()
    hi = flat.amax(-1).double()
    span = (hi - lo).clamp_min(1)
    scale = torch.full_like(span, 255.0) / span  # true division; `255.0 / t` multiplies by 1/t
    levels = torch.arange(256, device=image.device, dtype=torch.float64)
    lut = (levels * scale[..., None] - lo[..., None] * scale[..., None]).trunc().clamp(0, 255)
    lut = torch.where((hi > lo)[..., None], lut, levels)  # flat channel: identity
    out = torch.gather(lut, -1, flat.long())
    return out.to(torch.uint8).view_as(image)


def equalize(image: torch.Tensor) -> torch.Tensor:
    """Pillow's histogram equalisation per channel (step = (n − last bin) // 255, as Pillow ≥ 10)."""
    flat = image.flatten(2).long()
    hist = torch.zeros(*flat.shape[:2], 256, dtype=torch.int64, device=image.device)
    hist.scatter_add_(-1, flat, torch.ones_like(flat))
    levels = torch.arange(256, device=image.device)
    last = torch.where(hist > 0, levels, torch.full_like(levels, -1)).amax(-1, keepdim=True)
    last_count = torch.gather(hist, -1, last.clamp_min(0))
    step = (hist.sum(-1, keepdim=True) - last_count) // 255
    cum_before = hist.cumsum(-1) - hist
    lut = ((step // 2 + cum_before) // step.clamp_min(1)).clamp(max=255)
    identity = (step == 0) | ((hist > 0).sum(-1, keepdim=True) <= 1)
    lut = torch.where(identity, levels.expand_as(lut), lut)
    return torch.gather(lut, -1, flat).to(torch.uint8).view_as(image)


def posterize(image: torch.Tensor, bits: int = POSTERIZE_BITS) -> torch.Tensor:
    mask = (0xFF << (8 - bits)) & 0xFF
    return image & mask


def color(image: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(_luma(image).expand_as(image), image, factor)


def contrast(image: torch.Tensor, factor: float) -> torch.Tensor:
    luma = _luma(image)
    mean = luma.sum((1, 2, 3), keepdim=True, dtype=torch.int64).double() / luma[0].numel()
    degenerate = (mean + 0.5).floor()
    return _blend(degenerate.expand_as(image), image, factor)


def brightness(image: torch.Tensor, factor: float) -> torch.Tensor:
    return _blend(torch.zeros_like(image), image, factor)


def sharpness(image: torch.Tensor, factor: float) -> torch.Tensor:
    """Blend with Pillow's SMOOTH filter (3×3, centre 5, /13, rounded); the 1-pixel border is kept."""
    x = image.float()
    box = (F.avg_pool2d(x, 3, stride=1) * 9.0).round()  # exact 3×3 integer sums
    smooth = ((box + 4.0 * x[..., 1:-1, 1:-1]) / 13.0 + 0.5).floor().clamp(0, 255)
    degenerate = image.float().clone()
    degenerate[..., 1:-1, 1:-1] = smooth
    return _blend(degenerate, image, factor)


def apply_op(name: str, image: torch.Tensor, magnitude: int) -> torch.Tensor:
    factor = enhance_factor(magnitude)
    if name == "autocontrast":
        return autocontrast(image)
    if name == "equalize":
        return equalize(image)
    if name == "posterize":
        return posterize(image)
    fn = {"color": color, "contrast": contrast, "brightness": brightness, "sharpness": sharpness}[name]
    return fn(image, factor)


def draw_ops(batch: int, *, n: int, num_ops: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """B×n op indices drawn uniformly with replacement (on the CPU generator; tiny)."""
    return torch.randint(0, num_ops, (batch, n), generator=generator)


def apply_ops(
    images_u8: torch.Tensor, op_ids: torch.Tensor, ops: tuple[str, ...], *, magnitude: int
) -> torch.Tensor:
    """Apply op ``op_ids[b, k]`` (index into ``ops``) to image b for k = 0..n−1, in order."""
    op_ids = op_ids.to(images_u8.device, non_blocking=True)
    out = images_u8
    for k in range(op_ids.shape[1]):
        chosen = op_ids[:, k].view(-1, 1, 1, 1)
        result = out
        for index, name in enumerate(ops):
            result = torch.where(chosen == index, apply_op(name, out, magnitude), result)
        out = result
    return out


def strong_view(
    images_u8: torch.Tensor, view: StrongViewConfig, *, mean, std, generator: torch.Generator | None = None
):
    """(strong batch at full size, normalised and flipped; op indices B×n).

    The ``view.scale`` downscale is separate (:func:`downscale`), applied on the model side as the
    release does.
    """
    op_ids = draw_ops(images_u8.shape[0], n=view.n, num_ops=len(view.ops), generator=generator)
    augmented = apply_ops(images_u8, op_ids, view.ops, magnitude=view.magnitude)
    strong = normalize(augmented, mean, std)
    if view.flip:
        strong = strong.flip(-1)
    return strong, op_ids


def downscale(images: torch.Tensor, scale: float, *, multiple: int = 1) -> torch.Tensor:
    """Bilinear resize by ``scale``, then drop the bottom/right remainder to a multiple of ``multiple``.

    The drop is what a stride-16 patch embedding does anyway (the release's 168-px strong view at
    crop 224 gives 10 tokens); doing it here lets strict patch embeddings accept the input.
    """
    if scale != 1.0:
        size = (int(images.shape[-2] * scale), int(images.shape[-1] * scale))
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    h, w = images.shape[-2:]
    return images[..., : h - h % multiple, : w - w % multiple]


def undo_on_logits(logits: torch.Tensor, size: tuple[int, int], *, flip: bool) -> torch.Tensor:
    """Strong-view logits back to the weak frame: flip back, upsample (float32) to ``size``."""
    if flip:
        logits = logits.flip(-1)
    return F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)
