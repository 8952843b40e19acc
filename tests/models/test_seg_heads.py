"""Stage-2 segmenters (issue 25): every head on every kind of backbone, the feature pyramid and the
output stride (the ONNX export of each head: tests/tasks/test_export_stage2.py)."""

from __future__ import annotations

import pytest
import torch

from dupl_cli.config.schema import ModelSettings
from dupl_cli.core.errors import UserError
from dupl_cli.models.backbones import build_backbone
from dupl_cli.models.seg_heads import HEADS, backbone_pyramid, pyramid_channels
from dupl_cli.models.segmenter import SegmenterModel, build_segmenter, build_segmenter_model

BACKBONES = {"resnet": "test_resnet", "vit": "test_vit", "mit": "mit_b0"}


def _settings(family: str, head: str, **extra) -> ModelSettings:
    return ModelSettings(
        backbone=family, arch=BACKBONES[family], pretrained="none", head=head, head_channels=16, **extra
    )


@pytest.mark.parametrize("family", list(BACKBONES))
@pytest.mark.parametrize("head", HEADS)
def test_every_head_on_every_backbone_gives_class_logits_on_any_size(family, head):
    torch.manual_seed(0)
    segmenter = build_segmenter(_settings(family, head), num_classes=4, img_size=64).eval()
    stride = segmenter.backbone.stride
    x = torch.randn(2, 3, 3 * stride, 5 * stride)  # non-square
    with torch.no_grad():
        logits = segmenter.segment(x)
    finest = backbone_pyramid(segmenter.backbone, x)[0].shape[-2:]
    decodes_fine = head in ("deeplabv3plus", "segformer")
    assert logits.shape == (2, 5, *(finest if decodes_fine else (3, 5)))
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("family", ["resnet", "mit"])
def test_the_pyramid_is_finest_first_and_ends_with_the_final_map(family):
    torch.manual_seed(0)
    backbone = build_backbone(_settings(family, "segformer"), 64).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        maps = backbone_pyramid(backbone, x)
        final = backbone(x).final
    assert [m.shape[1] for m in maps] == list(pyramid_channels(backbone))
    assert maps[0].shape[-2:] == (16, 24)  # stride 4
    assert all(a.shape[-1] >= b.shape[-1] for a, b in zip(maps, maps[1:], strict=False))
    assert torch.equal(maps[-1], final)


def test_a_backbone_without_a_pyramid_hands_the_heads_aux_and_final():
    backbone = build_backbone(_settings("vit", "segformer"), 64)
    assert pyramid_channels(backbone) == (backbone.aux_channels, backbone.out_channels)


def test_output_stride_dilates_cnns_and_is_refused_where_the_stride_is_fixed():
    backbone = build_backbone(_settings("resnet", "deeplabv2", output_stride=8), 64)
    assert backbone.stride == 8
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 64, 64)).final.shape[-2:] == (8, 8)
    with pytest.raises(UserError, match="model.output_stride = 8.*stride 16"):
        build_backbone(_settings("vit", "deeplabv2", output_stride=8), 64)


def test_deeplabv2_sums_one_branch_per_rate():
    head = build_segmenter(_settings("resnet", "deeplabv2"), num_classes=4, img_size=64).head
    assert [conv.dilation[0] for conv in head.branches] == [6, 12, 18, 24]
    custom = build_segmenter(_settings("resnet", "deeplabv2", head_rates=(2, 3)), 4, 64).head
    assert [conv.dilation[0] for conv in custom.branches] == [2, 3]


def test_the_model_is_a_one_member_students_list_with_no_classifier():
    model = build_segmenter_model(_settings("resnet", "deeplabv3plus"), num_classes=4, img_size=64)
    assert isinstance(model, SegmenterModel) and len(model.students) == 1
    assert not hasattr(model.students[0], "classifier")
    backbone, head = model.param_groups()
    names = {id(p) for p in model.parameters()}
    assert {id(p) for p in backbone + head} == names
    assert all(k.startswith(("students.0.backbone.", "students.0.head.")) for k in model.state_dict())
