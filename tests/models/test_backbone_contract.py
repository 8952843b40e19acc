"""One contract over every backbone family: the smallest timm variant of each, random weights, at
non-square sizes that are not multiples of the stride.

Feature shapes, stride and channels; ViTs against timm's own dynamic-size forward; a training step;
multi-scale CAMs at the method's scales; ``dupl export --format onnx`` with dynamic height and width
(slow) against PyTorch.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from dupl_cli.config.method_params import step_config
from dupl_cli.config.sources import load_settings
from dupl_cli.method.cam import multiscale_cam
from dupl_cli.method.step import training_step
from dupl_cli.models.backbones import Backbone, build_backbone
from dupl_cli.models.backbones.vit import ViTBackbone
from dupl_cli.models.dual import build_dual_student
from dupl_cli.models.geometry import pad_to_multiple
from dupl_cli.predict.tta import padded_forward
from dupl_cli.runs.card import Card
from dupl_cli.runs.checkpoint import save_model

slow = pytest.mark.slow

# family: (model.backbone, smallest timm variant, stride)
VITS = {
    "deit-distilled": ("vit", "deit_tiny_distilled_patch16_224", 16),  # class + distillation token
    "vit": ("vit", "test_vit", 16),  # the class of in1k / in21k / augreg ViTs
    "vit-register": ("vit", "test_vit2", 16),  # a register token, no class token, norm after pooling
    "clip": ("vit", "vit_xsmall_patch16_clip_224", 16),  # pre-norm
    "dinov2": ("vit", "vit_small_patch14_dinov2", 14),
    "dinov2-registers": ("vit", "vit_small_patch14_reg4_dinov2", 14),  # 4 registers, no class position
    "eva02": ("vit", "eva02_tiny_patch14_224", 14),  # RoPE + absolute positions, norm after pooling
    "dinov3": ("vit", "vit_tiny_patch16_dinov3_qkvb", 16),  # RoPE only, class + 4 registers
}
CNNS = {
    "resnet": ("resnet", "test_resnet", 16),
    "convnext": ("timm", "test_convnext", 16),
    "efficientnet": ("timm", "test_efficientnet", 16),
    "regnet": ("timm", "regnetx_002", 16),
    "resnest": ("timm", "resnest14d", 16),
    "nfnet": ("timm", "test_nfnet", 16),
    "mobilenetv3": ("timm", "mobilenetv3_small_050", 32),  # timm cannot dilate it: native stride
    "mit": ("mit", "mit_b0", 16),
}
FAMILIES = {**VITS, **CNNS}
SIZES = [(70, 90), (100, 62)]  # neither square nor multiples of 14, 16 or 32
HEAVY = {"dinov2", "resnest", "regnet", "mit"}  # slow to build, and their structure is covered by others


def families(names, fast=None):
    """One parameter per family; those not in ``fast`` (default: all but HEAVY) are marked slow."""
    fast = set(names) - HEAVY if fast is None else set(fast)
    return [pytest.param(n, id=n, marks=() if n in fast else slow) for n in names]


def settings_for(family: str, *extra: str):
    backbone, arch, _ = FAMILIES[family]
    return load_settings(
        "tiny-cpu",
        assignments=[
            f'model.backbone="{backbone}"',
            f'model.arch="{arch}"',
            "model.head_channels=16",
            *extra,
        ],
        environ={},
    ).settings


@functools.cache
def _dual(family: str):
    torch.manual_seed(0)
    return build_dual_student(settings_for(family).model, num_classes=3, img_size=64)


def _backbone(family: str):
    return _dual(family).students[0].backbone.eval()


# Outside `-m slow`: one ViT of each structure (class token; register only; patch 14 + registers;
# RoPE) and the CNNs that build fast; the ViT oracle test below covers every ViT family.
FAST_MAPS = [
    "vit",
    "vit-register",
    "dinov2-registers",
    "eva02",
    "resnet",
    "convnext",
    "efficientnet",
    "nfnet",
    "mobilenetv3",
]


@pytest.mark.parametrize("family", families(FAMILIES, fast=FAST_MAPS))
def test_maps_stride_and_channels(family):
    net = _backbone(family)
    stride = FAMILIES[family][2]
    assert isinstance(net, Backbone) and net.stride == stride
    for h, w in SIZES:
        x = torch.randn(2, 3, h, w)
        with torch.no_grad():
            final, aux = net(x)
            padded = net(pad_to_multiple(x, stride))
        assert final.shape == (2, net.out_channels, math.ceil(h / stride), math.ceil(w / stride))
        assert aux.shape[:2] == (2, net.aux_channels)
        cover = (final.shape[-2] * stride, final.shape[-1] * stride)  # aux covers the same padded input
        assert cover[0] % aux.shape[-2] == cover[1] % aux.shape[-1] == 0
        assert cover[0] // aux.shape[-2] == cover[1] // aux.shape[-1]
        # The backbone pads bottom/right itself: the maps are those of the explicitly padded input.
        torch.testing.assert_close(final, padded.final)
        torch.testing.assert_close(aux, padded.aux)


def _no_antialias(monkeypatch):
    """timm's dynamic-size path resamples position embeddings with antialiasing; the oracle must not."""
    from timm.layers import resample_abs_pos_embed

    plain = functools.partial(resample_abs_pos_embed, antialias=False)
    for module in ("vision_transformer", "deit", "eva"):
        monkeypatch.setattr(f"timm.models.{module}.resample_abs_pos_embed", plain)


@pytest.mark.parametrize("family", families(VITS))
def test_vit_matches_timms_own_dynamic_size_forward(family, monkeypatch):
    """Prefix tokens, position embedding, RoPE for the actual grid and the final norm, each against
    timm's forward of the same weights (made size-dynamic, antialiasing off)."""
    _no_antialias(monkeypatch)
    _, arch, stride = VITS[family]
    net = _backbone(family)
    oracle = timm.create_model(arch, pretrained=False, num_classes=0, dynamic_img_size=True).eval()
    oracle.load_state_dict(net.vit.state_dict())
    h, w = 5 * stride - 3, 7 * stride - 9  # a 5x7 grid after padding
    x = torch.randn(1, 3, h, w)
    with torch.no_grad():
        final, aux = net(x)
        xp = pad_to_multiple(x, stride)
        tokens = oracle.forward_features(xp)
        if isinstance(oracle.norm, torch.nn.Identity):
            tokens = oracle.fc_norm(tokens)
        want_aux = oracle.forward_intermediates(
            xp, indices=[net.aux_index], norm=False, intermediates_only=True
        )[0]
    want = tokens[:, oracle.num_prefix_tokens :].transpose(1, 2).reshape(1, -1, 5, 7)
    torch.testing.assert_close(final, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(aux, want_aux, atol=1e-5, rtol=1e-5)
    # The position embedding is frozen; class, register and distillation tokens train.
    vit = net.vit
    assert getattr(vit, "pos_embed", None) is None or not vit.pos_embed.requires_grad
    prefix = [t for n in ("cls_token", "reg_token", "dist_token") if (t := getattr(vit, n, None)) is not None]
    assert sum(t.shape[1] for t in prefix) == net.num_prefix and all(t.requires_grad for t in prefix)


def _batch(h: int, w: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    box = torch.tensor([[0, h, 0, w], [0, h, 8, w - 8]])
    return {"image": torch.randn(2, 3, h, w, generator=g), "labels": labels, "img_box": box}


def _step(family: str, batch: dict):
    config = step_config(settings_for(family, "method.cam_scales=[1.0, 0.5, 1.5]"), num_classes=3)
    t = config.schedule.t_anf + 1  # every loss on
    return training_step(_dual(family).train(), batch, t, config, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("family", families(FAMILIES, fast=["vit-register", "convnext"]))
def test_training_step_at_a_size_that_is_not_a_stride_multiple(family):
    model = _dual(family)
    model.zero_grad(set_to_none=True)
    result = _step(family, _batch(70, 90))
    assert torch.isfinite(result.loss) and result.terms["seg"] > 0 and result.terms["ptc"] > 0
    result.loss.backward()
    for student in model.students:
        # every trainable backbone tensor is reached (DDP refuses unused parameters)
        unused = [n for n, p in student.backbone.named_parameters() if p.requires_grad and p.grad is None]
        assert not unused, unused[:3]
        assert any(p.grad.abs().sum() > 0 for p in student.backbone.parameters() if p.requires_grad)
        assert student.head.conv8.weight.grad.abs().sum() > 0
        assert student.aux_classifier.weight.grad.abs().sum() > 0


def test_a_crop_that_is_not_a_multiple_trains_as_the_same_crop_zero_padded():
    """The padding lies outside img_box (its labels ignored) and the maps cover it: same step."""
    batch = _batch(70, 90)
    padded = dict(batch, image=pad_to_multiple(batch["image"], 16))
    assert padded["image"].shape[-2:] == (80, 96)
    with torch.no_grad():
        result, again = _step("vit-register", batch), _step("vit-register", padded)
    for name, value in result.terms.items():
        assert torch.equal(value, again.terms[name]), name
    assert result.visuals["prediction"].shape == (80, 96)


@pytest.mark.parametrize("family", families(FAMILIES, fast=["vit-register", "dinov2-registers", "convnext"]))
def test_multiscale_cams_at_the_methods_scales(family):
    student = _dual(family).students[0].eval()
    scales = load_settings("voc-vitb", environ={}).settings.method.cam_scales
    x = torch.randn(2, 3, 70, 90)
    cam, cam_aux = multiscale_cam(student, x, scales=tuple(scales), flip=True)
    for c in (cam, cam_aux):
        assert c.shape == (2, 3, 70, 90) and torch.isfinite(c).all()
        assert c.amin() >= 0 and c.amax() <= 1


# --- dupl export --format onnx, per family (slow: one export takes 40-130 s on 2 busy CPUs) ----------

ONNX_FAMILIES = ["dinov2-registers", "eva02", "clip", "dinov3", "convnext"]
SHALLOW = 3  # ViT blocks kept for the export checks (the family's structure is in every block)


@pytest.fixture
def shallow_vits(monkeypatch):
    """timm ViTs built with 3 blocks: the same prefix tokens, positions and RoPE, a shorter graph."""
    create = timm.create_model

    def shallow(name, **kwargs):
        from timm.models import get_arch_name, is_model_in_modules

        if is_model_in_modules(get_arch_name(name), ("vision_transformer", "deit", "eva")):
            kwargs.setdefault("depth", SHALLOW)
        return create(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", shallow)


def _checkpoint(root: Path, family: str):
    settings = settings_for(family, "data.crop_size=64")
    torch.manual_seed(0)
    model = build_dual_student(settings.model, num_classes=3, img_size=64)
    palette = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    card = Card(["a", "b", "c"], palette, settings.model_dump(mode="json"), step=1)
    save_model(root / "run" / "best.safetensors", model, card)
    return root / "run", model.eval()


@slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("family", ONNX_FAMILIES)
def test_onnx_export_with_dynamic_height_and_width(family, shallow_vits, tmp_path):
    import onnxruntime as ort

    from dupl_cli.cli.app import app

    run, model = _checkpoint(tmp_path, family)
    out = tmp_path / "model.onnx"
    checks = "export.check_sizes=[[70, 90], [100, 62]]"
    result = CliRunner().invoke(app, ["export", str(run), "-f", "onnx", "-o", str(out), "--set", checks])
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    student = model.students[0]
    stride = student.backbone.stride
    for shape in [(2, 3, 61, 75), (1, 3, 3 * stride, 2 * stride)]:  # not the trace size, not the checks
        x = torch.randn(*shape)
        logits, mask = session.run(["logits", "mask"], {"image": x.numpy()})
        with torch.no_grad():  # what `dupl infer` computes at one scale (as tests/engine/test_export.py)
            want = padded_forward(student.segment, x, stride)
            want = F.interpolate(want, size=shape[2:], mode="bilinear", align_corners=False)
        assert logits.shape == (shape[0], 4, *shape[2:])
        assert np.abs(logits - want.numpy()).max() <= 1e-3 * max(1.0, want.abs().max().item())
        assert (mask == want.argmax(1).numpy()).mean() > 0.999


def test_the_shallow_fixture_keeps_the_family(shallow_vits):
    net = build_backbone(settings_for("eva02").model, img_size=64)
    assert isinstance(net, ViTBackbone) and len(net.vit.blocks) == SHALLOW and net.vit.rope is not None


def test_without_the_shallow_fixture_vits_are_full_depth():
    # a separate test: built inside the fixture, the cached model would be the shallow one
    assert len(_backbone("eva02").vit.blocks) == 12
