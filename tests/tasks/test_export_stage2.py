"""`dupl export` of a stage-2 segmenter (issue 25): every head to ONNX with dynamic batch, height and
width, checked against PyTorch; TorchScript; a safetensors export rebuilds the segmenter; no --full."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from dupl_cli.cli.app import app
from dupl_cli.config.sources import load_settings
from dupl_cli.models.seg_heads import HEADS
from dupl_cli.models.segmenter import Segmenter
from dupl_cli.predict.tta import padded_forward
from dupl_cli.runs.card import Card, Stage2Record
from dupl_cli.runs.checkpoint import build_network, load_model, save_model
from dupl_cli.tasks.export import load_exported_student

runner = CliRunner()
CLASSES = ["cat", "dog", "bird"]
CHECKS = ["--set", "export.check_sizes=[[64, 96], [80, 48]]"]


def stage2_checkpoint(root, head: str):
    """A tiny stage-2 checkpoint with ``head`` (MiT-B0 for segformer, test_resnet otherwise)."""
    backbone = "mit:mit_b0" if head == "segformer" else "resnet:test_resnet"
    sets = [f'model.backbone="{backbone}"', f'model.head="{head}"', "model.head_channels=16"]
    sets += ["data.crop_size=64", f'data.pseudo_labels="{root / "P"}"']
    settings = load_settings("tiny-cpu", assignments=sets, environ={}).settings
    torch.manual_seed(0)
    model = build_network(settings, len(CLASSES)).eval()
    record = Stage2Record(str(root / "P"), "stage1/final.safetensors", "train", "cam", True, 0.5, head)
    palette = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    card = Card(CLASSES, palette, settings.model_dump(mode="json"), 1, 1, step=6, stage2=record)
    path = save_model(root / "run" / "final.safetensors", model, card)
    return path, model


def test_a_stage2_checkpoint_loads_as_the_segmenter_it_saved(tmp_path):
    path, model = stage2_checkpoint(tmp_path, "deeplabv3plus")
    loaded, card = load_model(path)
    assert (
        isinstance(loaded.students[0], Segmenter)
        and card.students == 1
        and card.stage2.head == "deeplabv3plus"
    )
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        assert torch.equal(loaded.students[0].segment(x), model.students[0].segment(x))


def test_safetensors_export_rebuilds_the_segmenter_and_full_is_refused(tmp_path):
    path, model = stage2_checkpoint(tmp_path, "deeplabv2")
    out = tmp_path / "seg.safetensors"
    result = runner.invoke(app, ["export", str(path), "--format", "safetensors", "--out", str(out), *CHECKS])
    assert result.exit_code == 0, result.output
    segmenter, card = load_exported_student(out)
    assert isinstance(segmenter, Segmenter) and "segmenter.Segmenter" in card.export.weights
    full = runner.invoke(app, ["export", str(path), "--full", "--out", str(tmp_path / "f.safetensors")])
    assert full.exit_code != 0 and "a stage-2 segmenter has none" in " ".join(full.output.split())


@pytest.mark.slow
@pytest.mark.parametrize("head", HEADS)
def test_each_head_exports_to_onnx_with_dynamic_height_and_width(head, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort

    path, model = stage2_checkpoint(tmp_path, head)
    out = tmp_path / f"{head}.onnx"
    result = runner.invoke(app, ["export", str(path), "--format", "onnx", "--out", str(out), *CHECKS])
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / f"{head}.onnx.json").read_text())
    assert [r["size"] for r in card["export"]["check"]["results"]] == [[2, 64, 96], [1, 80, 48]]
    assert all(r["max_abs_diff"] <= 1e-3 for r in card["export"]["check"]["results"])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    segmenter = model.students[0]
    x = torch.randn(1, 3, 72, 56)  # a size the export check did not use
    logits, mask = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        want = padded_forward(segmenter.segment, x, segmenter.backbone.stride)
    assert logits.shape == (1, len(CLASSES) + 1, 72, 56)
    assert abs(torch.from_numpy(logits) - want).max() < 1e-3 and mask.shape == (1, 72, 56)
