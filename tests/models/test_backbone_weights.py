"""Backbone weights: timm tags, hf-hub repositories and local files; strict loading; offline errors.

No test reaches the network: sockets refuse to connect, the hub is offline and its cache is empty.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from dupl_cli.config.schema import ModelSettings
from dupl_cli.core.errors import UserError
from dupl_cli.models.backbones import build_backbone


def backbone(arch: str, pretrained: str, family: str = "vit"):
    return build_backbone(ModelSettings(backbone=family, arch=arch, pretrained=pretrained), img_size=64)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub

    def refuse(*_a, **_k):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))


def save(state: dict, path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


def test_timm_tag_offline_names_the_file_and_where_to_put_it(offline):
    with pytest.raises(UserError) as info:
        backbone("test_vit.r160_in1k", "timm")
    message = str(info.value)
    assert "cannot download timm weights for test_vit.r160_in1k" in message
    assert "https://huggingface.co/timm/test_vit.r160_in1k/resolve/main/model.safetensors" in message
    assert "to weights/test_vit.r160_in1k.safetensors" in message
    assert "model.pretrained=weights/test_vit.r160_in1k.safetensors" in message and "\n" not in message


def test_hf_hub_offline_names_the_file(offline):
    with pytest.raises(UserError) as info:
        backbone("test_vit", "hf-hub:someone/test-vit-weights")
    message = str(info.value)
    assert "https://huggingface.co/someone/test-vit-weights/resolve/main/model.safetensors" in message
    assert "model.pretrained=weights/someone--test-vit-weights.safetensors" in message
    with pytest.raises(UserError, match="not a hub repository"):
        backbone("test_vit", "hf-hub:no repo")


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """hf_hub_download served from a dict {repo: {filename: local file}}, the way the hub answers."""
    import huggingface_hub
    from huggingface_hub.errors import EntryNotFoundError

    class Hub(dict):
        asked: list[tuple[str, str]] = []

    repos = Hub()
    asked = repos.asked = []

    def download(repo_id, filename, revision=None, **_):
        asked.append((repo_id, filename))
        if filename not in repos.get(repo_id, {}):
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(repos[repo_id][filename])

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return repos


def test_hf_hub_repository_loads_strictly(fake_hub, tmp_path):
    torch.manual_seed(1)
    source = timm.create_model("test_vit", num_classes=10)
    fake_hub["org/vit"] = {"pytorch_model.bin": tmp_path / "w.pth"}
    torch.save(source.state_dict(), fake_hub["org/vit"]["pytorch_model.bin"])
    net = backbone("test_vit", "hf-hub:org/vit")
    for key, value in net.vit.state_dict().items():
        torch.testing.assert_close(value, source.state_dict()[key])
    # safetensors is asked for first, as timm does
    assert fake_hub.asked[:2] == [("org/vit", "model.safetensors"), ("org/vit", "pytorch_model.bin")]
    state = source.state_dict()
    state.pop("blocks.0.attn.qkv.weight")
    fake_hub["org/broken"] = {"model.safetensors": save(state, tmp_path / "broken.safetensors")}
    with pytest.raises(
        UserError, match=r"hf-hub:org/broken \(test_vit\): weights do not fit.*blocks.0.attn.qkv"
    ):
        backbone("test_vit", "hf-hub:org/broken")
    fake_hub["org/empty"] = {}
    with pytest.raises(UserError, match="holds none of model.safetensors"):
        backbone("test_vit", "hf-hub:org/empty")


def test_original_dinov2_checkpoint_is_converted_by_timm(tmp_path):
    """Facebook's release names the registers ``register_tokens``, keeps a ``mask_token`` and gives the
    class token a position (timm folds it into the class token)."""
    torch.manual_seed(2)
    arch = "vit_small_patch14_reg4_dinov2"
    source = timm.create_model(arch, num_classes=0)
    state = source.state_dict()
    class_position = torch.randn(1, 1, source.embed_dim)
    state["register_tokens"] = state.pop("reg_token")
    state["cls_token"] = state["cls_token"] - class_position
    state["pos_embed"] = torch.cat([class_position, state["pos_embed"]], 1)
    state["mask_token"] = torch.zeros(1, source.embed_dim)
    net = backbone(arch, str(save(state, tmp_path / "dinov2_vits14_reg4_pretrain.safetensors")))
    torch.testing.assert_close(net.vit.reg_token, source.reg_token)
    torch.testing.assert_close(net.vit.cls_token, source.cls_token)
    torch.testing.assert_close(net.vit.pos_embed, source.pos_embed)
    torch.testing.assert_close(net.vit.blocks[3].ls1.gamma, source.blocks[3].ls1.gamma)


def test_local_timm_cnn_checkpoint_reproduces_timms_features(tmp_path):
    torch.manual_seed(3)
    reference = timm.create_model("test_efficientnet", output_stride=16).eval()  # with its classifier
    path = save(reference.state_dict(), tmp_path / "effnet.safetensors")
    net = backbone("test_efficientnet", str(path), family="timm").eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        want = reference.forward_intermediates(x, indices=[3, 4], intermediates_only=True)
        got = net(x)
    torch.testing.assert_close(got.aux, want[0])
    torch.testing.assert_close(got.final, want[1])
    with pytest.raises(
        UserError, match=r"effnet\.safetensors: weights do not fit the backbone: missing keys"
    ):
        state = reference.state_dict()
        state.pop("conv_stem.weight")
        backbone("test_efficientnet", str(save(state, path)), family="timm")


def test_cnn_names_and_sizes_the_family_cannot_take():
    with pytest.raises(UserError, match="vision transformer: set model.backbone=vit"):
        backbone("test_vit", "none", family="timm")
    with pytest.raises(UserError, match="does not run at other input sizes"):
        backbone("test_maxvit", "none", family="timm")
    with pytest.raises(UserError, match="timm has no model named 'convnext_nonexistent'"):
        backbone("convnext_nonexistent", "none", family="timm")
    with pytest.raises(UserError, match="not a timm ResNet name"):
        backbone("convnext_atto", "none", family="resnet")
    with pytest.raises(UserError, match="is not a timm vision transformer"):
        backbone("resnet18", "none", family="vit")


def test_a_normalisation_other_than_the_weights_expect_is_named(tmp_path):
    from dupl_cli.models.backbones.base import normalisation_mismatch

    path = save(timm.create_model("test_vit", num_classes=0).state_dict(), tmp_path / "test_vit.safetensors")
    net = backbone("test_vit", str(path))
    assert net.input_normalisation == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # timm's config for test_vit
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    message = normalisation_mismatch(net, "test_vit", str(path), *imagenet)
    assert "test_vit weights expect inputs normalised with mean [0.5, 0.5, 0.5]" in message
    assert "data.mean=[0.485, 0.456, 0.406]" in message
    assert normalisation_mismatch(net, "test_vit", str(path), (0.5,) * 3, (0.5,) * 3) is None
    assert normalisation_mismatch(net, "test_vit", "none", *imagenet) is None  # random weights expect nothing
