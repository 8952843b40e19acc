"""`dupl train --preset tiny-cpu --set model.arch=NAME` for one model of each backbone family, and the
presets that switch the encoder (voc-dinov2b, voc-clipb)."""

from __future__ import annotations

import json
from importlib.resources import files

import pytest
import timm
from typer.testing import CliRunner

from dupl_cli.cli.app import app
from dupl_cli.config.sources import load_settings
from dupl_cli.runs.checkpoint import load_model

# family: (model.backbone, timm name, stride); tiny-cpu trains 64-px crops, not a multiple of 14
TRAINED = {
    "deit": ("vit", "deit_tiny_patch16_224", 16),
    "vit": ("vit", "test_vit", 16),
    "clip": ("vit", "vit_xsmall_patch16_clip_224", 16),
    "dinov2-registers": ("vit", "vit_small_patch14_reg4_dinov2", 14),
    "eva02": ("vit", "eva02_tiny_patch14_224", 14),
    "timm-cnn": ("timm", "test_convnext", 16),
}


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    from dupl_cli.plugins import DATASETS, load

    root = tmp_path_factory.mktemp("families") / "data"
    settings = load_settings(
        "tiny-cpu", assignments=[f"data.root={root}", "data.options.generate=true"], environ={}
    ).settings
    load(DATASETS, "demo")(settings.data, settings.data.train_split)
    return root


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("family", list(TRAINED))
def test_tiny_cpu_trains_every_family(family, demo_data, tmp_path):
    backbone, arch, stride = TRAINED[family]
    run = tmp_path / "run"
    args = ["train", "--preset", "tiny-cpu", "--run-dir", str(run), "--set", f"data.root={demo_data}"]
    args += ["--set", f"model.arch={arch}", "--set", f"model.backbone={backbone}"]
    # three steps: phase A at step 0, then B and C (the log names the phase after each step),
    # validated and checkpointed at the end
    for setting in (
        "train.max_iters=3",
        "method.t_seg=1",
        "method.t_anf=2",
        "train.val_every=3",
        "train.ckpt_every=3",
    ):
        args += ["--set", setting]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"B", "C"} <= {r["phase"] for r in records if "phase" in r}
    assert any("validation" in r for r in records)
    model, card = load_model(run / "final.safetensors")
    assert card.settings["model"]["arch"] == arch
    assert model.students[0].backbone.stride == stride


@pytest.mark.parametrize(
    "preset, arch",
    [
        ("voc-dinov2b", "vit_base_patch14_reg4_dinov2.lvd142m"),
        ("voc-clipb", "vit_base_patch16_clip_224.openai"),
    ],
)
def test_encoder_presets(preset, arch):
    text = files("dupl_cli.presets").joinpath(f"{preset}.toml").read_text(encoding="utf-8")
    assert text.startswith("# ") and "NOT in the paper" in text.splitlines()[0]
    s = load_settings(preset, environ={}).settings
    assert s.model.arch == arch
    cfg = timm.models.get_pretrained_cfg(arch)
    # The encoder's own normalisation, from timm's pretrained config for the tag.
    assert tuple(s.data.mean) == pytest.approx(cfg.mean) and tuple(s.data.std) == pytest.approx(cfg.std)
    assert (s.model.backbone, s.model.pretrained) == ("vit", "timm")
    patch = 14 if "patch14" in arch else 16
    # Every CAM scale and the strong view stay whole patches.
    for scale in (*s.method.cam_scales, 0.75):
        assert int(scale * s.data.crop_size) % patch == 0, scale
