"""The registry holds what every backbone factory returns to the protocol (``plugins.check_backbone``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from dupl_cli.cli.app import app
from dupl_cli.core.errors import UserError
from dupl_cli.plugins import BACKBONES, check_backbone, load
from dupl_cli.plugins.backbone import BackboneFeatures

runner = CliRunner()


class Toy(nn.Module):
    """Stride 4: aux = conv at 1/2, final = conv + BatchNorm at 1/4. ``fault`` breaks one thing."""

    out_channels, aux_channels, stride = 6, 4, 4

    def __init__(self, fault: str = "") -> None:
        super().__init__()
        self.fault = fault
        self.aux_conv = nn.Conv2d(3, 4, 2, stride=2)
        self.final_conv = nn.Conv2d(4, 6, 2, stride=2)
        self.norm = nn.BatchNorm2d(6)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        if self.fault == "raises":
            raise IndexError("list index out of range")
        aux = self.aux_conv(x)
        final = self.drop(self.norm(self.final_conv(aux)))
        if self.fault == "transposed":
            final = final.transpose(2, 3)
        elif self.fault == "one image":
            final = final[:1]
        elif self.fault == "nan":
            final = final * float("nan")
        elif self.fault == "int":
            final = final.long()
        elif self.fault == "flat aux":
            aux = aux.flatten(2)
        elif self.fault == "tuple":
            return final, aux
        return BackboneFeatures(final=final, aux=aux)


def faulty(fault: str, **attrs):
    def build(arch, **kwargs):
        net = Toy(fault)
        for k, v in attrs.items():
            setattr(net, k, v)
        return net

    return build


def test_a_conforming_backbone_passes_and_nothing_it_holds_changes():
    torch.manual_seed(0)
    net = Toy().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    check_backbone(net, plugin="toy")
    assert net.training and all(m.training for m in net.modules())
    assert torch.equal(torch.get_rng_state(), rng)  # the check input does not draw from the global RNG
    after = net.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm statistics untouched
    net.eval()
    check_backbone(net, plugin="toy")
    assert not net.training


@pytest.mark.parametrize(
    "fault, attrs, expected",
    [
        ("", {"stride": 0}, "stride must be a positive int attribute, got 0"),
        ("", {"aux_channels": True}, "aux_channels must be a positive int attribute, got True"),
        ("", {"out_channels": 6.0}, "out_channels must be a positive int attribute, got 6.0"),
        ("", {"out_channels": 7}, "final is 2×6×2×3 for a 2×3×8×12 input; expected 2×7×2×3"),
        ("", {"aux_channels": 5}, "aux is 2×4×4×6 for a 2×3×8×12 input; expected 2×5×h×w"),
        ("transposed", {}, "final is 2×6×3×2 for a 2×3×8×12 input; expected 2×6×2×3"),
        ("one image", {}, "final is 1×6×2×3"),
        ("flat aux", {}, "aux is 2×4×24 for"),
        ("tuple", {}, "forward must return BackboneFeatures(final, aux), got tuple"),
        ("raises", {}, "forward on a 2×3×8×12 input raised IndexError: list index out of range"),
        ("nan", {}, "final holds NaN or inf for a 2×3×8×12 input"),
        ("int", {}, "final must be floating-point, got torch.int64"),
    ],
)
def test_a_broken_backbone_is_one_line_naming_plugin_and_distribution(registered, fault, attrs, expected):
    registered(BACKBONES, "toy", faulty(fault, **attrs), dist="dupl-toy", version="0.2")
    with pytest.raises(UserError) as err:
        load(BACKBONES, "toy")("any-arch", pretrained="none", img_size=64, aux_layer=-3)
    message = str(err.value)
    assert message.startswith("backbone plugin 'toy' (dupl-toy 0.2) breaks the backbone protocol: ")
    assert expected in message and "\n" not in message


def test_a_factory_returning_no_module_is_refused(registered):
    registered(BACKBONES, "toy", lambda arch, **kw: {"final": None}, dist="dupl-toy", version="0.2")
    with pytest.raises(UserError, match="the factory returned dict, not a torch.nn.Module"):
        load(BACKBONES, "toy")("x")


def test_check_size_can_be_chosen():
    with pytest.raises(
        UserError, match=r"toy breaks .* final is 2×6×2×3 for a 2×3×12×8 input; expected 2×6×3×2"
    ):
        check_backbone(Toy("transposed"), plugin="toy", size=(12, 8))


def test_train_with_an_off_protocol_backbone_stops_with_one_line(registered, tiny_data, tmp_path):
    registered(BACKBONES, "toy", faulty("transposed"), dist="dupl-toy", version="0.2")
    args = [
        "train",
        "--preset",
        "tiny-cpu",
        "--set",
        f"data.root={tiny_data}",
        "--set",
        "model.backbone=toy",
        "--run-dir",
        str(tmp_path / "run"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: backbone plugin 'toy' (dupl-toy 0.2) breaks the backbone"
    )


@pytest.mark.parametrize("name, arch", [("vit", "test_vit"), ("resnet", "test_resnet")])
def test_builtin_backbones_keep_the_protocol_at_other_sizes(name, arch):
    net = load(BACKBONES, name)(arch, pretrained="none", img_size=64, aux_layer=-3)
    for size in ((48, 80), (80, 48)):
        check_backbone(net, plugin=name, size=size)
