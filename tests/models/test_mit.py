"""MiT (SegFormer Mix Transformer) backbone: shapes, stride-16 dilation, SegFormer weight files."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from dupl_cli.core.errors import UserError
from dupl_cli.models.backbones import mit

B0_DIMS, B0_DEPTHS = (32, 64, 160, 256), (2, 2, 2, 2)


def _grid(size: int, stride: int) -> int:
    # Overlapping embeddings pad by kernel//2: every stride-s stage gives ceil(n / s).
    n = -(-size // 4)
    for _ in range({16: 2, 32: 3}[stride]):
        n = -(-n // 2)
    return n


@pytest.fixture(scope="module")
def b0() -> mit.MixVisionTransformer:
    torch.manual_seed(0)
    return mit.build("mit_b0", pretrained="none").eval()


@pytest.mark.parametrize("size", [(64, 64), (96, 96), (64, 96), (100, 72)])
def test_b0_shapes(b0, size):
    with torch.no_grad():
        feats = b0(torch.randn(2, 3, *size))
    grid = (_grid(size[0], 16), _grid(size[1], 16))
    assert feats.final.shape == (2, 256, *grid)
    assert feats.aux.shape == (2, 160, *grid)
    assert (b0.out_channels, b0.aux_channels, b0.stride) == (256, 160, 16)
    assert torch.isfinite(feats.final).all() and feats.final.std() > 0


def test_stock_stride_32():
    model = mit.build("mit_b0", pretrained="none", output_stride=32).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 64, 96))
    assert feats.final.shape == (1, 256, 2, 3)
    assert feats.aux.shape == (1, 160, 4, 6)
    assert model.stride == 32


def test_dilated_last_stage_sees_the_stock_neighbours():
    """On the even positions, stride-16 stage 4's convolutions equal the stock stride-32 ones."""
    torch.manual_seed(1)
    stock = mit.build("mit_b0", output_stride=32).eval()
    dilated = mit.build("mit_b0", output_stride=16).eval()
    dilated.load_state_dict(stock.state_dict())  # same names and shapes: weights are interchangeable
    x = torch.randn(1, 160, 8, 10)
    with torch.no_grad():
        want = stock.stages[3].embed.proj(x)
        got = dilated.stages[3].embed.proj(x)[..., ::2, ::2]
        torch.testing.assert_close(got, want)
        hidden = torch.randn(1, 1024, 8, 10)
        want = stock.stages[3].blocks[0].ffn.dwconv(hidden[..., ::2, ::2])
        got = dilated.stages[3].blocks[0].ffn.dwconv(hidden)[..., ::2, ::2]
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(("arch", "millions"), [("mit_b1", 13.1), ("mit_b2", 24.2)])
def test_parameter_count_matches_the_paper(arch, millions):
    # SegFormer paper, Table 1 (encoder parameters).
    count = sum(p.numel() for p in mit.build(arch).parameters()) / 1e6
    assert abs(count - millions) < 0.06


def segformer_state_dict(dims, depths, prefix="") -> dict[str, torch.Tensor]:
    """A random state dict spelled like the SegFormer release, built from the paper's shapes."""
    g = torch.Generator().manual_seed(3)
    state: dict[str, torch.Tensor] = {}

    def put(name, *shape):
        state[prefix + name] = torch.randn(*shape, generator=g)

    in_ch = 3
    for k, (dim, depth) in enumerate(zip(dims, depths, strict=True), start=1):
        kernel = 7 if k == 1 else 3
        put(f"patch_embed{k}.proj.weight", dim, in_ch, kernel, kernel)
        put(f"patch_embed{k}.proj.bias", dim)
        put(f"patch_embed{k}.norm.weight", dim)
        put(f"patch_embed{k}.norm.bias", dim)
        ratio = (8, 4, 2, 1)[k - 1]
        for j in range(depth):
            b = f"block{k}.{j}."
            for norm in ("norm1", "norm2"):
                put(b + f"{norm}.weight", dim)
                put(b + f"{norm}.bias", dim)
            put(b + "attn.q.weight", dim, dim)
            put(b + "attn.q.bias", dim)
            put(b + "attn.kv.weight", 2 * dim, dim)
            put(b + "attn.kv.bias", 2 * dim)
            put(b + "attn.proj.weight", dim, dim)
            put(b + "attn.proj.bias", dim)
            if ratio > 1:
                put(b + "attn.sr.weight", dim, dim, ratio, ratio)
                put(b + "attn.sr.bias", dim)
                put(b + "attn.norm.weight", dim)
                put(b + "attn.norm.bias", dim)
            put(b + "mlp.fc1.weight", 4 * dim, dim)
            put(b + "mlp.fc1.bias", 4 * dim)
            put(b + "mlp.dwconv.dwconv.weight", 4 * dim, 1, 3, 3)
            put(b + "mlp.dwconv.dwconv.bias", 4 * dim)
            put(b + "mlp.fc2.weight", dim, 4 * dim)
            put(b + "mlp.fc2.bias", dim)
        put(f"norm{k}.weight", dim)
        put(f"norm{k}.bias", dim)
        in_ch = dim
    return state


@pytest.mark.parametrize("prefix", ["", "backbone."])
def test_loads_segformer_named_weights(tmp_path, prefix):
    state = segformer_state_dict(B0_DIMS, B0_DEPTHS, prefix)
    # ImageNet files carry a classifier, mmseg files a decode head: both are skipped.
    state["head.weight"] = torch.randn(1000, 256)
    state[prefix + "decode_head.conv_seg.weight"] = torch.randn(21, 256, 1, 1)
    path = tmp_path / "mit_b0.safetensors"
    save_file(state, str(path))

    model = mit.build("mit_b0", pretrained=str(path))
    own = model.state_dict()
    assert len(own) == sum(1 for k in state if "head" not in k)
    checks = {
        "patch_embed1.proj.weight": model.stages[0].embed.proj.weight,
        "patch_embed4.norm.bias": model.stages[3].embed.norm.bias,
        "block1.1.attn.sr.weight": model.stages[0].blocks[1].attn.reduce.weight,
        "block2.0.attn.norm.weight": model.stages[1].blocks[0].attn.reduce_norm.weight,
        "block3.1.attn.kv.bias": model.stages[2].blocks[1].attn.kv.bias,
        "block4.0.attn.q.weight": model.stages[3].blocks[0].attn.q.weight,
        "block4.1.mlp.dwconv.dwconv.weight": model.stages[3].blocks[1].ffn.dwconv.weight,
        "block2.1.mlp.fc2.weight": model.stages[1].blocks[1].ffn.fc2.weight,
        "block3.0.norm2.bias": model.stages[2].blocks[0].norm2.bias,
        "norm3.weight": model.stages[2].norm.weight,
    }
    for name, param in checks.items():
        assert torch.equal(param, state[prefix + name]), name

    # Round trip: the same file twice gives the same network, different from a random init.
    again = mit.build("mit_b0", pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x).final, again(x).final)
        assert not torch.allclose(again(x).final, mit.build("mit_b0").eval()(x).final)


def test_missing_or_misshaped_weights_are_one_line(tmp_path):
    state = segformer_state_dict(B0_DIMS, B0_DEPTHS)
    del state["block2.1.attn.kv.weight"]
    state["norm4.weight"] = torch.randn(255)
    path = tmp_path / "broken.safetensors"
    save_file(state, str(path))
    with pytest.raises(UserError) as err:
        mit.build("mit_b0", pretrained=str(path))
    message = str(err.value)
    assert "\n" not in message
    assert "stages.1.blocks.1.attn.kv.weight" in message and "stages.3.norm.weight" in message
    with pytest.raises(UserError, match="does not exist"):
        mit.build("mit_b0", pretrained=str(tmp_path / "absent.safetensors"))


def test_wrong_variant_file_and_timm_are_clear(tmp_path):
    path = tmp_path / "b0.safetensors"
    save_file(segformer_state_dict(B0_DIMS, B0_DEPTHS), str(path))
    with pytest.raises(UserError, match="wrong shapes"):
        mit.build("mit_b1", pretrained=str(path))
    with pytest.raises(UserError, match="not on the timm hub"):
        mit.build("mit_b1", pretrained="timm")
    with pytest.raises(UserError, match="mit_b0"):
        mit.build("mit_b9")


def test_registered_as_builtin_backbone():
    from dupl_cli.config.schema import ModelSettings
    from dupl_cli.models.backbones import build_backbone

    settings = ModelSettings(backbone="mit", arch="mit_b0", pretrained="none")
    backbone = build_backbone(settings, img_size=64)
    assert isinstance(backbone, mit.MixVisionTransformer)
    assert backbone(torch.randn(1, 3, 64, 64)).final.shape == (1, 256, 4, 4)
