"""The example plugin: ConvNeXt features, weight loading, and discovery through dupl's registry."""

from __future__ import annotations

from importlib.metadata import version

import dupl_example_backbone
import pytest
import timm
import torch
from dupl_example_backbone.convnext import ConvNeXtBackbone, build
from safetensors.torch import save_file

from dupl_cli.core.errors import UserError
from dupl_cli.plugins import BACKBONES, list_plugins, load


@pytest.mark.parametrize("size", [(64, 64), (96, 96), (64, 96)])
def test_final_and_aux_share_the_stride_16_grid(size):
    backbone = build("test_convnext", pretrained="none").eval()
    with torch.no_grad():
        final, aux = backbone(torch.randn(2, 3, *size))
    grid = (size[0] // 16, size[1] // 16)
    assert final.shape == (2, backbone.out_channels, *grid)
    assert aux.shape == (2, backbone.aux_channels, *grid)
    assert backbone.stride == 16
    assert backbone.out_channels != backbone.aux_channels  # last stage vs the stage before


def test_local_timm_checkpoint_loads_and_matches_timm(tmp_path):
    torch.manual_seed(0)
    reference = timm.create_model("test_convnext", output_stride=16).eval()
    path = tmp_path / "convnext.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))

    backbone = build("test_convnext", pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        want_aux, want_final = reference.forward_intermediates(x, indices=(2, 3), intermediates_only=True)
        got = backbone(x)
    torch.testing.assert_close(got.final, want_final)
    torch.testing.assert_close(got.aux, want_aux)


def test_wrong_weights_and_names_are_one_line(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(path))
    with pytest.raises(UserError, match="do not fit"):
        build("test_convnext", pretrained=str(path))
    with pytest.raises(UserError, match="ConvNeXt"):
        build("resnet50")


def test_registered_in_dupl_backbones_with_its_version():
    assert load(BACKBONES, "convnext").fn is build
    row = next(p for p in list_plugins() if p.name == "convnext")
    assert (row.dist, row.status) == ("dupl-example-backbone", "ok")
    assert row.version == version("dupl-example-backbone") == dupl_example_backbone.__version__


def test_a_dual_student_trains_on_it():
    from dupl_cli.config.schema import ModelSettings
    from dupl_cli.models.dual import build_dual_student

    torch.manual_seed(0)
    settings = ModelSettings(backbone="convnext", arch="test_convnext", pretrained="none")
    model = build_dual_student(settings, num_classes=3, img_size=64)
    assert isinstance(model.students[0].backbone, ConvNeXtBackbone)
    x, labels = torch.randn(2, 3, 64, 64), torch.tensor([[1.0, 0, 1], [0, 1, 0]])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(3):
        out = model.students[0](x)
        loss = torch.nn.functional.multilabel_soft_margin_loss(out.logits, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert out.seg.shape == (2, 4, 4, 4)
    assert losses[-1] < losses[0]
