"""`dupl import release`: release checkpoints (DuPL two-branch, ToCo one-network) as dupl run directories.

The parity test writes a release-format file from the release fixtures' ``state0`` and compares the
imported students' CAMs and head logits with the release's recorded ones; the other tests build
release-format files from random tiny models, so they run on any machine.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tomllib
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))

import release_fixture as rf  # noqa: E402
from dataset_builders import make_voc  # noqa: E402

from dupl_cli.cli.app import app  # noqa: E402
from dupl_cli.method.cam import multiscale_cam, raw_cams_at_scales  # noqa: E402
from dupl_cli.runs.checkpoint import load_model  # noqa: E402

runner = CliRunner()
TINY = ["--preset", "voc-vitb", "--set", "model.arch=test_vit", "--set", "data.crop_size=64"]


def release_names(state: dict[str, torch.Tensor], *, two: bool = True) -> dict[str, torch.Tensor]:
    """dupl DualStudent names -> the release's (``branchK.encoder``, ``decoder``); ToCo: no ``branchK.``."""
    out = {}
    for key, value in state.items():
        _, index, rest = key.split(".", 2)
        rest = rest.replace("backbone.vit.", "encoder.", 1).replace("head.", "decoder.", 1)
        if two:
            out[f"branch{int(index) + 1}.{rest}"] = value
        elif index == "0":
            out[rest] = value
    return out


def tiny_state(students: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    from dupl_cli.config.sources import load_settings
    from dupl_cli.models.dual import build_dual_student

    settings = load_settings(
        "voc-vitb", assignments=["model.arch=test_vit", "model.pretrained=none"], environ={}
    )
    torch.manual_seed(seed)
    model = build_dual_student(settings.settings.model, 20, img_size=64, students=students)
    return {k: v.clone() for k, v in model.state_dict().items()}


def imported(args: list[str]):
    result = runner.invoke(app, ["import", "release", *args])
    return result.exit_code, result.output


def test_release_checkpoint_reproduces_the_release_cams(tmp_path, release_set):
    file = tmp_path / "checkpoint.pth"
    torch.save({f"module.{k}": v for k, v in rf.state0().items()}, file)  # as DDP saves it
    run = tmp_path / "run"
    code, output = imported(
        [
            str(file),
            "--preset",
            "voc-vitb",
            "--out",
            str(run),
            "--set",
            f"model.arch={rf.backbone_name()}",
            "--set",
            f"data.crop_size={rf.crop()}",
        ]
    )
    assert code == 0, output
    model, card = load_model(run / "final.safetensors")
    assert card.students == 2 and card.imported.module_prefix is True
    assert sorted(card.imported.dropped) == [
        f"branch{k}.encoder.head.{p}" for k in (1, 2) for p in ("bias", "weight")
    ]
    common, scales = rf.tensors("common"), [float(s) for s in rf.hyper()["cam_scales"]]
    x = common["input.weak"]
    with torch.no_grad():
        for k, student in enumerate(model.students, start=1):
            cam, cam_aux = multiscale_cam(student, x, scales=scales, flip=True)
            for b in range(rf.batch_size()):
                present = rf.present(b)
                torch.testing.assert_close(cam[b, present], common[f"cam.s{k}.b{b}"], atol=1e-4, rtol=0)
                torch.testing.assert_close(
                    cam_aux[b, present], common[f"cam_aux.s{k}.b{b}"], atol=1e-4, rtol=0
                )
            for (raw, raw_aux), s in zip(
                raw_cams_at_scales(student, x, scales, flip=True), scales, strict=True
            ):
                ref = common[f"cam.raw.s{k}.x{s}"]
                torch.testing.assert_close(raw, ref, atol=1e-4 * float(ref.abs().max()), rtol=0)
                ref = common[f"cam_aux.raw.s{k}.x{s}"]
                torch.testing.assert_close(raw_aux, ref, atol=1e-4 * float(ref.abs().max()), rtol=0)
            # The decoder maps onto the head: the weak view's segmentation logits match too.
            seg, ref = student.segment(x), common[f"fwd.seg.s{k}"]
            torch.testing.assert_close(seg, ref, atol=1e-5 * float(ref.abs().max()), rtol=0)


def test_import_maps_every_tensor_and_writes_a_run(tmp_path):
    state = tiny_state()
    release = {f"module.{k}": v for k, v in release_names(state).items()}
    release["module.branch1.encoder.head.weight"] = torch.zeros(1000, 64)  # timm's unused ImageNet head
    file = tmp_path / "dupl_voc.pth"
    torch.save(release, file)
    run = tmp_path / "runs" / "release"
    code, output = imported([str(file), "--out", str(run), "--student", "2", *TINY])
    assert code == 0, output
    assert "DuPL release (two students" in output and f"dupl evaluate {run} --multiscale --crf" in output
    model, card = load_model(run / "final.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert card.student == 2 and "named at import" in card.student_rule
    assert card.imported.tensors == len(state)
    assert list(card.imported.dropped) == ["branch1.encoder.head.weight"]
    config = tomllib.loads((run / "config.toml").read_text())
    assert config["model"]["arch"] == "test_vit" and config["data"]["adapter"] == "voc"
    assert sorted(p.name for p in run.parent.iterdir()) == ["release"]  # no staging folder left
    # Never over an existing run.
    code, output = imported([str(file), "--out", str(run), *TINY])
    assert code == 2 and "already exists" in output
    assert json.loads((run / "final.json").read_text())["student"] == 2


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            lambda s: s.update({"branch1.mlp_layer.0.weight": torch.zeros(64, 64, 1, 1)}),
            "unmapped keys 1: branch1.mlp_layer.0.weight",
        ),
        (lambda s: s.pop("branch2.decoder.conv7.weight"), "missing weights 1: branch2.decoder.conv7.weight"),
        (
            lambda s: s.update({"branch1.encoder.blocks.3.mlp.fc1.weight": torch.zeros(7, 64)}),
            "wrong shapes 1: branch1.encoder.blocks.3.mlp.fc1.weight (file [7, 64], model [192, 64])",
        ),
        (
            lambda s: s.update({"branch1.encoder.blocks.9.mlp.fc1.weight": torch.zeros(7, 64)}),
            "unmapped keys 1: branch1.encoder.blocks.9.mlp.fc1.weight",
        ),
        (
            lambda s: s.update({"branch3.classifier.weight": torch.zeros(20, 64, 1, 1)}),
            "unmapped keys 1: branch3.classifier.weight",
        ),
        (
            lambda s: s.update({"classifier.weight": torch.zeros(20, 64, 1, 1)}),
            "unmapped keys 1: classifier.weight",
        ),
    ],
)
def test_every_key_must_map(tmp_path, edit, expected):
    release = release_names(tiny_state())
    edit(release)
    file = tmp_path / "edited.pth"
    torch.save(release, file)
    code, output = imported([str(file), "--out", str(tmp_path / "run"), *TINY])
    assert code == 2, output
    assert output.startswith(f"error: {file}: does not fit the preset's model") and expected in output
    assert len(output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_bad_files_are_refused_in_one_line(tmp_path):
    marker = tmp_path / "executed"

    class Hostile:
        def __reduce__(self):
            return (Path.touch, (marker,))

    hostile = tmp_path / "hostile.pth"
    torch.save({"state_dict": release_names(tiny_state()), "extra": Hostile()}, hostile)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    nested = tmp_path / "nested.pth"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, nested)
    coco = tmp_path / "coco.pth"
    state = release_names(tiny_state())
    for k in (1, 2):
        state[f"branch{k}.classifier.weight"] = torch.zeros(80, 64, 1, 1)
    torch.save(state, coco)
    cases = [
        (hostile, "refused: the file holds pickled Python objects"),
        (garbage, "not a readable torch.save file"),
        (nested, "no state dict of tensors found (top-level keys: epoch, optimizer)"),
        (coco, "the classifier has 80 classes, the preset's voc data 20"),
        (tmp_path / "absent.pth", "checkpoint file does not exist"),
    ]
    for file, expected in cases:
        code, output = imported([str(file), "--out", str(tmp_path / "run"), *TINY])
        assert code == 2 and output.startswith(f"error: {file}: ") and expected in output, output
        assert len(output.strip().splitlines()) == 1
    assert not marker.exists() and not (tmp_path / "run").exists()
    code, output = imported([str(coco), "--out", str(tmp_path / "run")])
    assert code == 2 and "needs --preset" in output


def test_nested_state_dict_is_found(tmp_path):
    state = tiny_state()
    file = tmp_path / "wrapped.pth"
    torch.save({"model": {f"module.{k}": v for k, v in release_names(state).items()}, "iter": 20000}, file)
    code, output = imported([str(file), "--out", str(tmp_path / "run"), *TINY])
    assert code == 0, output


@pytest.fixture(scope="module")
def toco_run(tmp_path_factory):
    """A ToCo-layout one-network checkpoint (with its projection heads) imported, and a tiny VOC set."""
    tmp = tmp_path_factory.mktemp("toco")
    state = tiny_state(students=1, seed=3)
    release = release_names(state, two=False)
    release["proj_head.mlp.0.weight"] = torch.zeros(8, 64)
    release["proj_head_t.last_layer.weight_g"] = torch.ones(1024, 1)
    release["encoder.head.weight"], release["encoder.head.bias"] = torch.zeros(1000, 64), torch.zeros(1000)
    file = tmp / "toco.pth"
    torch.save({f"module.{k}": v for k, v in release.items()}, file)
    run = tmp / "run"
    code, output = imported([str(file), "--out", str(run), *TINY])
    assert code == 0, output
    voc = make_voc(tmp / "data", n_val=3)
    return run, voc, state


def test_one_network_import_is_a_one_student_run(toco_run):
    run, _, state = toco_run
    model, card = load_model(run / "final.safetensors")
    assert card.students == 1 and len(model.students) == 1 and card.imported.layout.startswith("one network")
    assert sorted(card.imported.dropped) == [
        "encoder.head.bias",
        "encoder.head.weight",
        "proj_head.mlp.0.weight",
        "proj_head_t.last_layer.weight_g",
    ]
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_one_student_run_evaluates_infers_and_exports(toco_run, tmp_path, monkeypatch):
    from dupl_cli.evaluation.visualize import load_mask

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    run, voc, _ = toco_run
    data = ["--set", f"data.root={voc}"]
    result = runner.invoke(app, ["evaluate", str(run), "--out", str(tmp_path / "ev"), *data])
    assert result.exit_code == 0, result.output
    payload = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert payload["protocol"]["student"].startswith("student 1 (named at import")
    gt_student = runner.invoke(
        app,
        ["evaluate", str(run), "--out", str(tmp_path / "gt"), *data, "--set", "compat.eval_gt_student=true"],
    )
    assert gt_student.exit_code == 0, gt_student.output
    for choice in ("2", "ensemble"):
        bad = runner.invoke(app, ["evaluate", str(run), "--student", choice, *data])
        assert bad.exit_code == 2 and f"holds one student; --student {choice} needs two" in bad.output
    images = voc / "JPEGImages"
    result = runner.invoke(app, ["infer", str(run), str(images), "--out", str(tmp_path / "masks")])
    assert result.exit_code == 0, result.output
    mask = load_mask(tmp_path / "masks" / "2008_000000.png")
    assert mask.shape == (40, 56) and mask.max() <= 20
    out = tmp_path / "student.safetensors"
    result = runner.invoke(app, ["export", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "student.safetensors.json").read_text())["student"] == 1
    result = runner.invoke(
        app, ["export", str(run), "--student", "2", "--out", str(tmp_path / "s2.safetensors")]
    )
    assert result.exit_code == 2 and "holds one student" in result.output
    assert np.isfinite(payload["miou"])
