"""Backbones: map shapes at several sizes, aux vs final, frozen pos-embed, local weights."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from dupl_cli.config.schema import ModelSettings
from dupl_cli.core.errors import UserError
from dupl_cli.models.backbones import build_backbone
from dupl_cli.models.backbones.vit import resample_patch_pos_embed


def vit(pretrained: str = "none"):
    return build_backbone(ModelSettings(backbone="vit", arch="test_vit", pretrained=pretrained), img_size=64)


@pytest.mark.parametrize("size", [(64, 64), (96, 96), (64, 112)])
def test_vit_maps_follow_the_token_grid(size):
    net = vit().eval()
    feats = net(torch.randn(2, 3, *size))
    grid = (size[0] // 16, size[1] // 16)
    assert feats.final.shape == (2, net.out_channels, *grid)
    assert feats.aux.shape == (2, net.aux_channels, *grid)


def test_vit_final_is_normed_and_aux_is_block_minus_3():
    net = vit().eval()
    x = torch.randn(1, 3, 64, 64)
    feats = net(x)
    # Recompute with timm's own modules: aux is the output of block depth-3 without norm.
    inner = net.vit
    tokens = inner.patch_embed(x).reshape(1, 16, -1)
    pos = inner.pos_embed
    tokens = torch.cat(
        [inner.cls_token + pos[:, :1], tokens + resample_patch_pos_embed(pos[:, 1:], (4, 4))], 1
    )
    outs = []
    for block in inner.blocks:
        tokens = block(tokens)
        outs.append(tokens)
    expect_aux = outs[len(inner.blocks) - 3][:, 1:].transpose(1, 2).reshape(1, -1, 4, 4)
    expect_final = inner.norm(outs[-1])[:, 1:].transpose(1, 2).reshape(1, -1, 4, 4)
    torch.testing.assert_close(feats.aux, expect_aux)
    torch.testing.assert_close(feats.final, expect_final)


def test_pos_embed_is_frozen_and_resampled_without_antialias():
    net = vit()
    assert not net.vit.pos_embed.requires_grad
    assert all(p.requires_grad for n, p in net.named_parameters() if "pos_embed" not in n)
    pos = torch.randn(1, 100, 8)
    down = resample_patch_pos_embed(pos, (5, 5))
    square = pos.reshape(1, 10, 10, 8).permute(0, 3, 1, 2)
    plain = torch.nn.functional.interpolate(square, size=(5, 5), mode="bicubic", align_corners=False)
    torch.testing.assert_close(down, plain.permute(0, 2, 3, 1).reshape(1, 25, 8))
    smooth = torch.nn.functional.interpolate(
        square, size=(5, 5), mode="bicubic", align_corners=False, antialias=True
    )
    assert not torch.allclose(plain, smooth)


def test_vit_loss_reaches_every_trainable_parameter():
    net = vit()
    feats = net(torch.randn(1, 3, 64, 64))
    (feats.final.sum() + feats.aux.sum()).backward()
    blocks = len(net.vit.blocks)
    for name, p in net.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, name
    assert blocks == 6


@pytest.mark.parametrize("size", [(64, 64), (96, 80)])
def test_resnet_final_and_aux_share_stride_16(size):
    net = build_backbone(
        ModelSettings(backbone="resnet", arch="test_resnet", pretrained="none"), img_size=64
    ).eval()
    feats = net(torch.randn(2, 3, *size))
    grid = (size[0] // 16, size[1] // 16)
    assert feats.final.shape == (2, net.out_channels, *grid)
    assert feats.aux.shape == (2, net.aux_channels, *grid)
    assert net.stride == 16


def test_local_safetensors_weights_load(tmp_path):
    source = vit()
    state = {f"{k}": v.clone() for k, v in source.vit.state_dict().items()}
    path = tmp_path / "w.safetensors"
    save_file(state, str(path))
    loaded = vit(pretrained=str(path))
    for k, v in loaded.vit.state_dict().items():
        torch.testing.assert_close(v, state[k])
    # A PyTorch checkpoint nested under "model" loads with weights_only.
    pth = tmp_path / "w.pth"
    torch.save({"model": state, "epoch": 3}, pth)
    vit(pretrained=str(pth))


def test_bad_weights_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        vit(pretrained=str(tmp_path / "missing.safetensors"))
    state = vit().vit.state_dict()
    state.pop("norm.weight")
    state["blocks.0.norm1.bias"] = torch.zeros(3)
    path = tmp_path / "partial.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.raises(UserError) as info:
        vit(pretrained=str(path))
    message = str(info.value)
    assert "missing keys norm.weight" in message and "wrong shapes blocks.0.norm1.bias" in message
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a file")
    with pytest.raises(UserError, match="cannot read weights"):
        vit(pretrained=str(junk))


def test_unknown_family_and_arch():
    with pytest.raises(UserError, match="unknown backbone 'vitt'.*did you mean 'vit'"):
        build_backbone(ModelSettings(backbone="vitt", arch="test_vit", pretrained="none"), 64)
    with pytest.raises(UserError, match="not a timm vision transformer"):
        build_backbone(ModelSettings(backbone="vit", arch="resnet50", pretrained="none"), 64)
    with pytest.raises(UserError, match="timm has no model"):
        build_backbone(ModelSettings(backbone="vit", arch="vit_nonexistent", pretrained="none"), 64)


def test_timm_hub_weights_offline_is_one_line(monkeypatch, tmp_path):
    import socket

    import huggingface_hub.constants as hub

    def refuse(*_a, **_k):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)  # read at import: the env alone is too late
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    with pytest.raises(UserError, match="cannot download timm weights for test_vit.*offline"):
        build_backbone(ModelSettings(backbone="vit", arch="test_vit", pretrained="timm"), 64)
