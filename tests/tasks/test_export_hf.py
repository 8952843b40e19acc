"""Issue 28 item 3: `dupl export --format hf` writes a folder huggingface_hub can publish as is, and dupl
reads it back (the folder, or hf-hub:org/name from the hub cache) for infer and model.pretrained.
Everything offline: the hub cache is filled by the test and the network is closed."""

from __future__ import annotations

import socket
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from dupl_cli.config.sources import load_settings
from dupl_cli.models.backbones import build_backbone
from dupl_cli.models.dual import build_dual_student
from dupl_cli.runs.card import EXPORT_FORMAT, Card
from dupl_cli.runs.checkpoint import save_model
from dupl_cli.tasks.hf_card import card_data

CLASSES = ["cat", "dog", "bird"]
CHECKS = ["--set", "export.check_sizes=[[64, 96], [80, 48]]"]
METRICS = {"seg_s1": 30.0, "seg_s2": 41.25, "cam_s1": 33.0, "cam_s2": 38.5, "aux_cam_s2": 35.0}
REPO, COMMIT = "dupl-test/tiny-student", "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: nothing may talk to the Hub."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A two-student checkpoint whose students differ, trained (card) from timm's test_vit weights."""
    root = tmp_path_factory.mktemp("hf")
    settings = load_settings(
        "tiny-cpu", assignments=[f'data.root="{root / "data"}"', "train.val_max_images=3"], environ={}
    ).settings
    torch.manual_seed(0)
    model = build_dual_student(settings.model, num_classes=len(CLASSES), img_size=settings.data.crop_size)
    recorded = settings.model_dump(mode="json")
    recorded["model"]["pretrained"] = "timm"  # as trained; building it here would need the network
    palette = [(0, 0, 0), (128, 0, 0), (0, 128, 0), (128, 128, 0)]
    card = Card(CLASSES, palette, recorded, student=2, step=6, selection="best-val",
                student_rule="best seg mIoU on 'val' at step 6", metrics=METRICS)  # fmt: skip
    save_model(root / "run" / "best.safetensors", model, card)
    return root / "run", model.eval()


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    from typer.testing import CliRunner

    from dupl_cli.cli.app import app

    out = tmp_path_factory.mktemp("export") / "tiny-student"
    result = CliRunner().invoke(app, ["export", str(run[0]), "--format", "hf", "--out", str(out), *CHECKS])
    assert result.exit_code == 0, result.output
    assert "upload_folder" in result.output
    return out


def _strings(value):
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def _images(folder):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a", (50, 70)), ("b", (64, 33))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{name}.png")
    return folder


def _masks(folder):
    return {p.name: np.asarray(Image.open(p)) for p in sorted(folder.glob("*.png"))}


def _hub_cache(tmp_path, monkeypatch, folder):
    """A hub cache holding ``folder`` as REPO at COMMIT (the layout huggingface_hub writes), and the
    hub library offline and pointed at it."""
    import huggingface_hub.constants as constants

    cache = tmp_path / "hub"
    repo = cache / f"models--{REPO.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        (repo / "blobs").mkdir(exist_ok=True)
        blob = repo / "blobs" / path.name
        blob.write_bytes(path.read_bytes())
        (snapshot / path.name).symlink_to(blob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return snapshot


def test_the_folder_holds_one_student_its_card_and_a_model_card(run, exported):
    from huggingface_hub import ModelCard

    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    state = load_file(str(exported / "model.safetensors"))
    want = run[1].students[1].state_dict()  # student 2: the card's choice
    assert set(state) == set(want)
    for key, tensor in state.items():
        torch.testing.assert_close(tensor, want[key], rtol=0, atol=0)

    card = Card.read(exported / "config.json", EXPORT_FORMAT)
    assert (card.export.format, card.export.student, card.export.full) == ("hf", 2, True)
    assert card.classes == CLASSES and card.metrics == METRICS and card.selection == "best-val"
    assert card.settings["data"]["root"] == "data" and card.export.source == "run/best.safetensors"
    assert not [v for v in _strings(card.settings) if v.startswith("/")]  # no folder of this machine
    assert str(run[0].parent) not in (exported / "config.json").read_text()

    loaded = ModelCard.load(exported / "README.md")  # the library's own reader, from the local file
    assert loaded.data.to_dict() == card_data(card, "tiny-student").to_dict()
    meta = loaded.data
    assert (meta.library_name, meta.pipeline_tag) == ("dupl", "image-segmentation")
    assert meta.base_model == "timm/test_vit.r160_in1k" and meta.datasets == ["demo"]
    assert {"dupl", "semantic-segmentation"} <= set(meta.tags)
    results = {r.metric_name: r for r in meta.eval_results}
    assert {name: r.metric_value for name, r in results.items()} == {
        "segmentation mIoU (%)": 41.25, "CAM mIoU (%)": 38.5, "auxiliary CAM mIoU (%)": 35.0
    }  # fmt: skip
    seg = results["segmentation mIoU (%)"]
    assert (seg.task_type, seg.dataset_split, seg.metric_type) == ("image-segmentation", "val", "mean_iou")
    assert seg.metric_args["step"] == 6 and seg.metric_args["images"] == 3
    assert seg.metric_args["input"] == "resized to 64x64, one scale, no flip, no CRF"
    assert "dupl infer hf-hub:" in loaded.text and "| segmentation | 41." in loaded.text


def test_infer_from_the_folder_and_from_the_hub_cache_gives_the_runs_masks(
    run, exported, run_cli, tmp_path, monkeypatch, no_network
):
    images = _images(tmp_path / "images")
    assert run_cli("infer", run[0], images, "--out", tmp_path / "from_run").exit_code == 0
    result = run_cli("infer", exported, images, "--out", tmp_path / "from_folder")
    assert result.exit_code == 0, result.output
    snapshot = _hub_cache(tmp_path, monkeypatch, exported)
    result = run_cli("infer", f"hf-hub:{REPO}", images, "--out", tmp_path / "from_hub")
    assert result.exit_code == 0, result.output
    assert str(snapshot / "model.safetensors") in result.output.replace("\n", "")
    want = _masks(tmp_path / "from_run")
    assert list(want) == ["a.png", "b.png"] and len({m.tobytes() for m in want.values()}) == 2
    for source in ("from_folder", "from_hub"):
        got = _masks(tmp_path / source)
        assert list(got) == list(want), source
        for name in want:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{source}/{name}")


def test_model_pretrained_starts_from_the_exported_backbone(run, exported, tmp_path, monkeypatch, no_network):
    want = {k: v for k, v in run[1].students[1].backbone.state_dict().items()}
    _hub_cache(tmp_path, monkeypatch, exported)
    for pretrained in (str(exported), f"hf-hub:{REPO}", f"hf-hub:{REPO}@{COMMIT}"):
        settings = load_settings(
            "tiny-cpu", assignments=[f'model.pretrained="{pretrained}"'], environ={}
        ).settings
        got = build_backbone(settings.model, settings.data.crop_size).state_dict()
        assert set(got) == set(want), pretrained
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)


def test_a_backbone_the_export_does_not_fit_is_one_line(exported):
    from dupl_cli.core.errors import UserError

    other = ["model.backbone=resnet", "model.arch=resnet18", f'model.pretrained="{exported}"']
    settings = load_settings("tiny-cpu", assignments=other, environ={}).settings
    with pytest.raises(UserError, match=r"dupl export.*weights do not fit the backbone: missing keys") as err:
        build_backbone(settings.model, settings.data.crop_size)
    assert "\n" not in str(err.value)


def test_a_hub_name_not_in_the_cache_offline_is_one_line(run_cli, tmp_path, monkeypatch, no_network):
    _hub_cache(tmp_path, monkeypatch, _images(tmp_path / "other"))  # the cache holds another repo only
    images = _images(tmp_path / "images")
    result = run_cli("infer", "hf-hub:dupl-test/absent", images, "--out", tmp_path / "o")
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "hf-hub:dupl-test/absent: not in the hub cache and cannot be downloaded" in line


def test_missing_hub_extra_and_unusable_folders_are_one_line(run, exported, run_cli, tmp_path, monkeypatch):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    result = run_cli("export", run[0], "--format", "hf", "--out", busy, *CHECKS)
    assert result.exit_code == 2 and "holds other files (notes.txt)" in result.output
    result = run_cli("export", run[0], "--format", "hf", "--seg-only", "--out", tmp_path / "x", *CHECKS)
    assert result.exit_code == 2 and "--seg-only does not apply to --format hf" in result.output
    assert not (tmp_path / "x").exists()

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import huggingface_hub now fails
    export = ("export", run[0], "--format", "hf", "--out", tmp_path / "y", *CHECKS)
    infer = ("infer", f"hf-hub:{REPO}", _images(tmp_path / "images"), "--out", tmp_path / "o")
    for args in (export, infer):
        result = run_cli(*args)
        assert result.exit_code == 2, result.output
        (line,) = result.output.strip().splitlines()
        assert line.endswith('needs huggingface_hub (the hub extra): pip install "dupl[hub]"'), line
    assert not (tmp_path / "y").exists()
