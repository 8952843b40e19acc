"""`dupl submit`: VOC test-server archive on a tiny VOC-layout dataset whose test split has no masks."""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))

from dataset_builders import make_voc, scene  # noqa: E402

from dupl_cli.cli.app import app  # noqa: E402
from dupl_cli.config.sources import load_settings  # noqa: E402
from dupl_cli.data.palette import VOC_CLASSES, palette_for  # noqa: E402
from dupl_cli.models.dual import build_dual_student  # noqa: E402
from dupl_cli.runs.card import Card  # noqa: E402
from dupl_cli.runs.checkpoint import save_model  # noqa: E402

runner = CliRunner()
TEST_IDS = ["2009_000001", "2009_000002", "2009_000003"]
SIZES = [(40, 56), (33, 47), (61, 29)]  # (h, w): odd sizes come back unchanged


def voc_model(path: Path, classes=VOC_CLASSES) -> Path:
    settings = load_settings(
        "voc-vitb",
        assignments=["model.arch=test_vit", "model.pretrained=none", "data.crop_size=64"],
        environ={},
    ).settings
    torch.manual_seed(0)
    model = build_dual_student(settings.model, len(classes), img_size=64)
    card = Card(list(classes), palette_for(len(classes)), settings.model_dump(mode="json"), step=1)
    return save_model(path / "final", model, card)


@pytest.fixture
def voc(tmp_path):
    root = make_voc(tmp_path / "data")
    for k, (sample_id, (h, w)) in enumerate(zip(TEST_IDS, SIZES, strict=True)):
        image, _ = scene(100 + k, h=h, w=w)
        Image.fromarray(image).save(root / "JPEGImages" / f"{sample_id}.jpg", quality=95)
    (root / "ImageSets/Segmentation/test.txt").write_text("".join(f"{i}\n" for i in TEST_IDS))
    return root


def submit(*args: str):
    result = runner.invoke(app, ["submit", *args])
    return result.exit_code, result.output


def test_submission_archive_holds_every_test_id(voc, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    weights = voc_model(tmp_path / "run")
    out = tmp_path / "sub"
    code, output = submit(str(weights), "--out", str(out), "--multiscale", "--set", f"data.root={voc}")
    assert code == 0, output
    prefix = "results/VOC2012/Segmentation/comp6_test_cls"
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
        assert names[:4] == ["results", "results/VOC2012", "results/VOC2012/Segmentation", prefix]
        assert sorted(names[4:]) == [f"{prefix}/{i}.png" for i in TEST_IDS]
        for sample_id, (h, w) in zip(TEST_IDS, SIZES, strict=True):
            with Image.open(tar.extractfile(f"{prefix}/{sample_id}.png")) as png:
                assert png.mode == "P" and png.size == (w, h)
                assert np.asarray(png).max() <= 20
                assert png.getpalette()[3:6] == [128, 0, 0]  # VOC colour of class 1 (aeroplane)
    code, output = submit(str(weights), "--out", str(out), "--set", f"data.root={voc}")
    assert code == 2 and "already holds a submission" in output


def test_submission_refuses_other_models_and_missing_images(voc, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    other = voc_model(tmp_path / "other", classes=["cat", "dog"])
    code, output = submit(str(other), "--out", str(tmp_path / "a"), "--set", f"data.root={voc}")
    assert code == 2 and "not a PASCAL VOC model" in output
    (voc / "JPEGImages" / f"{TEST_IDS[1]}.jpg").unlink()
    weights = voc_model(tmp_path / "run")
    code, output = submit(str(weights), "--out", str(tmp_path / "b"), "--set", f"data.root={voc}")
    assert code == 2 and f"{TEST_IDS[1]}.jpg: test image of id '{TEST_IDS[1]}' does not exist" in output
    assert not (tmp_path / "b").exists()
