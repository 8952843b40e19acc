"""Student / DualStudent: shapes, frozen pos-embed, shared backbone start, independent heads."""

from __future__ import annotations

import pytest
import torch

from dupl_cli.config.schema import ModelSettings
from dupl_cli.models.dual import DualStudent, build_dual_student
from dupl_cli.models.student import StudentOutput


def _dual(arch: str, num_classes: int = 5) -> DualStudent:
    torch.manual_seed(0)
    settings = ModelSettings(
        backbone="vit" if "vit" in arch else "resnet", arch=arch, pretrained="none", head_channels=16
    )
    return build_dual_student(settings, num_classes, img_size=64)


@pytest.mark.parametrize("arch", ["test_vit", "test_resnet"])
def test_forward_shapes(arch):
    model = _dual(arch).eval()
    x = torch.randn(2, 3, 64, 64)
    student = model.students[0]
    out = student(x)
    assert isinstance(out, StudentOutput)
    stride = student.backbone.stride
    h = 64 // stride
    assert out.logits.shape == (2, 5) and out.aux_logits.shape == (2, 5)
    assert out.seg.shape[:2] == (2, 6) and out.seg.shape[-1] == out.features.shape[-1]
    assert out.features.shape[:2] == (2, student.backbone.out_channels)
    if arch == "test_vit":
        assert out.seg.shape[-2:] == (h, h)
    cam, cam_aux = student.cams(x)
    assert cam.shape == (2, 5, *out.features.shape[-2:])
    assert cam_aux.shape[:2] == (2, 5)
    # Image logits are the classifier applied to the max-pooled map = max over the raw CAM
    # only when pooling commutes; check the defining formula directly instead.
    pooled = out.features.amax(dim=(2, 3))
    torch.testing.assert_close(
        out.logits, pooled @ student.classifier.weight.flatten(1).T, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(student.segment(x), out.seg)


def test_cam_is_classifier_as_conv():
    student = _dual("test_vit").students[1].eval()
    x = torch.randn(1, 3, 64, 64)
    cam, _ = student.cams(x)
    feats = student(x).features
    expected = torch.einsum("cd,bdhw->bchw", student.classifier.weight.flatten(1), feats)
    torch.testing.assert_close(cam, expected, atol=1e-5, rtol=1e-5)


def test_vit_pos_embed_frozen_and_param_groups():
    model = _dual("test_vit")
    backbone, heads = model.param_groups()
    for student in model.students:
        assert not student.backbone.vit.pos_embed.requires_grad
    ids_backbone = {id(p) for p in backbone}
    ids_heads = {id(p) for p in heads}
    assert not ids_backbone & ids_heads
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == ids_backbone | ids_heads
    for student in model.students:
        assert id(student.classifier.weight) in ids_heads and id(student.head.conv8.weight) in ids_heads
        assert student.classifier.bias is None and student.head.conv6.bias is None


@pytest.mark.parametrize("arch", ["test_vit", "test_resnet"])
def test_identical_backbones_different_heads(arch):
    model = _dual(arch)
    s1, s2 = model.students
    b1, b2 = s1.backbone.state_dict(), s2.backbone.state_dict()
    assert b1.keys() == b2.keys()
    for key in b1:
        assert torch.equal(b1[key], b2[key]), key
        # Independent copies: no storage shared between the students.
        assert b1[key].data_ptr() != b2[key].data_ptr() or b1[key].numel() == 0
    assert not torch.equal(s1.classifier.weight, s2.classifier.weight)
    assert not torch.equal(s1.aux_classifier.weight, s2.aux_classifier.weight)
    assert not torch.equal(s1.head.conv6.weight, s2.head.conv6.weight)
    keys = model.state_dict().keys()
    assert all(k.startswith(("students.0.", "students.1.")) for k in keys)
