"""`dupl export`: safetensors, ONNX and TorchScript round trips at sizes other than the trace size."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from typer.testing import CliRunner

from dupl_cli.cli.app import app
from dupl_cli.config.sources import load_settings
from dupl_cli.models.dual import build_dual_student
from dupl_cli.predict.tta import padded_forward
from dupl_cli.runs.card import Card, export_card_path
from dupl_cli.runs.checkpoint import save_model
from dupl_cli.tasks.export import load_exported_student

runner = CliRunner()
CLASSES = ["cat", "dog", "bird"]
SMALL_CHECKS = ["--set", "export.check_sizes=[[64, 96], [80, 48]]"]


def make_checkpoint(root, crop_size=64, best=2, arch="test_vit", backbone="vit"):
    """A tiny two-student checkpoint whose students differ (independent heads)."""
    settings = load_settings(
        "tiny-cpu",
        assignments=[f"data.crop_size={crop_size}", f'model.arch="{arch}"', f'model.backbone="{backbone}"'],
        environ={},
    ).settings
    torch.manual_seed(0)
    model = build_dual_student(settings.model, num_classes=len(CLASSES), img_size=crop_size)
    palette = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    card = Card(CLASSES, palette, settings.model_dump(mode="json"), best, step=6, metrics={"miou": 0.1})
    run = root / "run"
    save_model(run / "best.safetensors", model, card)
    return run, model.eval()


def reference(student, x):
    """What `dupl infer` computes at one scale without flip (its own padding code), and the argmax."""
    with torch.no_grad():
        logits = padded_forward(student.segment, x, student.backbone.stride)
        logits = F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return logits, logits.argmax(1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # Traced at 160 px, test_vit's own position grid: a graph that skipped resampling there
    # (the eager shortcut) would be wrong at every other size.
    return make_checkpoint(tmp_path_factory.mktemp("export"), crop_size=160)


def invoke(*args):
    return runner.invoke(app, ["export", *map(str, args)])


def test_safetensors_keeps_the_inference_path_and_round_trips(checkpoint, tmp_path):
    run, model = checkpoint
    out = tmp_path / "student1.safetensors"
    result = invoke(run, "--format", "safetensors", "--student", "1", "--out", out, *SMALL_CHECKS)
    assert result.exit_code == 0, result.output
    keys = set(load_file(str(out)))
    assert keys and all(k.startswith(("backbone.", "head.")) for k in keys)
    assert {k for k in model.students[0].state_dict() if k.startswith(("backbone.", "head."))} == keys

    card = json.loads(export_card_path(out).read_text())
    assert card["format"] == "dupl-export/1" and card["student"] == 1 and card["classes"] == CLASSES
    assert [c["size"] for c in card["export"]["check"]["results"]] == [[2, 64, 96], [1, 80, 48]]

    student, _ = load_exported_student(out)
    for size in [(64, 64), (48, 112)]:
        x = torch.randn(1, 3, *size)
        torch.testing.assert_close(
            reference(student, x)[0], reference(model.students[0], x)[0], rtol=0, atol=0
        )

    full = tmp_path / "full.safetensors"
    assert (
        invoke(run, "-f", "safetensors", "--student", "2", "--full", "-o", full, *SMALL_CHECKS).exit_code == 0
    )
    full_keys = set(load_file(str(full)))
    assert {"classifier.weight", "aux_classifier.weight"} <= full_keys
    student2, _ = load_exported_student(full)
    torch.testing.assert_close(student2.classifier.weight, model.students[1].classifier.weight)


@pytest.mark.slow
def test_onnx_runs_in_onnxruntime_at_new_sizes(checkpoint, tmp_path):
    import onnx
    import onnxruntime as ort

    run, model = checkpoint
    out = tmp_path / "model.onnx"
    # Run dir + --student best: the card's choice (student 2).
    result = invoke(run, "--format", "onnx", "--out", out)
    assert result.exit_code == 0, result.output
    assert "max abs logit difference" in result.output

    graph = onnx.load(str(out))
    assert max(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")) >= 17
    dims = [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]

    card = json.loads(export_card_path(out).read_text())
    assert card["student"] == 2
    assert [i["name"] for i in card["export"]["inputs"]] == ["image"]
    assert [o["name"] for o in card["export"]["outputs"]] == ["logits", "mask"]
    assert card["export"]["mean"] == [0.485, 0.456, 0.406]
    assert all(r["max_abs_diff"] <= 1e-3 for r in card["export"]["check"]["results"])

    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits", "mask"]
    for shape in [(3, 3, 96, 64), (1, 3, 70, 90)]:  # neither the trace size (160) nor the check sizes
        x = torch.randn(*shape)
        logits, mask = session.run(None, {"image": x.numpy()})
        want_logits, want_mask = reference(model.students[1], x)
        assert logits.shape == (shape[0], len(CLASSES) + 1, *shape[2:])
        assert np.abs(logits - want_logits.numpy()).max() <= 1e-3
        assert (mask == want_mask.numpy()).mean() > 0.999
        other, _ = reference(model.students[0], x)
        assert np.abs(logits - other.numpy()).max() > 1e-2  # really student 2


@pytest.mark.slow
def test_torchscript_traced_and_checked(checkpoint, tmp_path):
    run, model = checkpoint
    out = tmp_path / "model.pt"
    result = invoke(run, "--format", "torchscript", "--student", "1", "--full", "--out", out, *SMALL_CHECKS)
    assert result.exit_code == 0, result.output
    card = json.loads(export_card_path(out).read_text())
    assert [o["name"] for o in card["export"]["outputs"]] == [
        "logits",
        "mask",
        "class_logits",
        "cam",
        "cam_aux",
    ]
    traced = torch.jit.load(str(out))
    student = model.students[0]
    for shape in [(2, 3, 48, 80), (1, 3, 96, 96)]:
        x = torch.randn(*shape)
        with torch.no_grad():
            logits, mask, class_logits, cam, cam_aux = traced(x)
            out_ref = student(x)
            cam_ref, cam_aux_ref = student.cams(x)
        want_logits, want_mask = reference(student, x)
        torch.testing.assert_close(logits, want_logits, atol=1e-4, rtol=0)
        assert torch.equal(mask, want_mask)
        torch.testing.assert_close(class_logits, out_ref.logits, atol=1e-4, rtol=0)
        torch.testing.assert_close(cam, cam_ref, atol=1e-4, rtol=0)
        torch.testing.assert_close(cam_aux, cam_aux_ref, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_a_failed_check_fails_the_command_and_leaves_nothing(checkpoint, tmp_path):
    run, _ = checkpoint
    out = tmp_path / "strict.onnx"
    result = invoke(run, "-f", "onnx", "-o", out, "--set", "export.atol=1e-30", *SMALL_CHECKS)
    assert result.exit_code == 2
    assert "ONNX check failed" in result.output and "export.atol" in result.output
    assert not out.exists() and not export_card_path(out).exists()


def test_missing_onnx_extra_is_one_clear_line(checkpoint, tmp_path, monkeypatch):
    run, _ = checkpoint
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    result = invoke(run, "-f", "onnx", "-o", tmp_path / "x.onnx")
    assert result.exit_code == 2
    assert "onnxscript" in result.output and "pip install 'dupl[onnx]'" in result.output
    assert "Traceback" not in result.output


def test_bad_arguments_are_user_errors(checkpoint, tmp_path):
    run, _ = checkpoint
    assert invoke(run, "-f", "tflite").exit_code == 2
    assert invoke(run, "-f", "onnx", "--student", "3").exit_code == 2
    missing = invoke(tmp_path / "nothing", "-f", "safetensors")
    assert missing.exit_code == 2 and "does not exist" in missing.output


@pytest.mark.slow
def test_mit_exports_to_onnx_at_sizes_not_divisible_by_the_stride(tmp_path):
    import onnxruntime as ort

    run, model = make_checkpoint(tmp_path, crop_size=64, best=1, arch="mit_b0", backbone="mit")
    out = tmp_path / "mit.onnx"
    result = invoke(run, "-f", "onnx", "-o", out, "--set", "export.check_sizes=[[100, 72], [64, 96]]")
    assert result.exit_code == 0, result.output
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = torch.randn(1, 3, 90, 50)
    logits = session.run(["logits"], {"image": x.numpy()})[0]
    assert np.abs(logits - reference(model.students[0], x)[0].numpy()).max() <= 1e-3


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_each_export_has_its_own_card_and_the_onnx_log_goes_to_a_file(checkpoint, tmp_path):
    import shutil
    import subprocess

    run, _ = checkpoint
    local = tmp_path / "run"
    shutil.copytree(run, local)
    # A subprocess: the console logging is the installed CLI's, not pytest's capture.
    onnx = subprocess.run(
        [
            sys.executable,
            "-m",
            "dupl_cli",
            "export",
            str(local),
            "-f",
            "onnx",
            "--student",
            "1",
            *SMALL_CHECKS,
        ],
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert onnx.returncode == 0, onnx.stderr
    lines = (onnx.stdout + onnx.stderr).strip().splitlines()
    assert len(lines) <= 5, lines
    log = local / "best.student1.onnx.log"
    assert f"exporter log: {log}" in onnx.stdout and "unused" in log.read_text()
    assert invoke(local, "-f", "torchscript", "--student", "1", *SMALL_CHECKS).exit_code == 0
    cards = {ext: json.loads((local / f"best.student1.{ext}.json").read_text()) for ext in ("onnx", "pt")}
    assert cards["onnx"]["export"]["format"] == "onnx" and "opset" in cards["onnx"]["export"]
    assert cards["pt"]["export"]["format"] == "torchscript"
