"""Every bad input gives a one-line error naming the file and the problem; verify exits non-zero."""

from __future__ import annotations

import json

import numpy as np
import pytest
from dataset_builders import make_folder, make_voc, settings_for
from PIL import Image
from typer.testing import CliRunner

from dupl_cli.cli.app import app
from dupl_cli.core.errors import DataError
from dupl_cli.data import folder
from dupl_cli.data.images import read_image, read_mask
from dupl_cli.data.verify import check_split

runner = CliRunner()


def test_image_modes_become_rgb(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (8, 10, 3), dtype=np.uint8)
    Image.fromarray(rgb).convert("RGBA").save(tmp_path / "a.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "p.png")
    Image.fromarray(rgb).convert("L").save(tmp_path / "l.png")
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg")
    Image.fromarray((np.arange(80).reshape(8, 10) * 800).astype(np.uint16)).save(tmp_path / "g16.png")
    for name in ("a.png", "p.png", "l.png", "c.jpg", "g16.png"):
        out = read_image(tmp_path / name)
        assert out.dtype == np.uint8 and out.shape == (8, 10, 3), name
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)
    g16 = read_image(tmp_path / "g16.png")[..., 0]
    assert g16[0, 0] == 0 and g16.max() == round(79 * 800 / 65535 * 255)


def test_exif_rotation_applied(tmp_path):
    img = Image.fromarray(np.zeros((10, 20, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    img.save(tmp_path / "r.jpg", exif=exif)
    assert read_image(tmp_path / "r.jpg").shape == (20, 10, 3)


def test_truncated_and_corrupt_files(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        tmp_path / "t.jpg"
    )
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"t\.jpg: corrupt image \(file is truncated\)"):
        read_image(tmp_path / "t.jpg")
    (tmp_path / "x.png").write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=r"x\.png: cannot decode image"):
        read_image(tmp_path / "x.png")
    with pytest.raises(DataError, match=r"missing\.png: missing image"):
        read_image(tmp_path / "missing.png")


def test_mask_out_of_range_and_unknown_colour(tmp_path):
    m = np.zeros((5, 5), np.uint8)
    m[0, 0] = 30
    Image.fromarray(m).save(tmp_path / "m.png")
    with pytest.raises(DataError, match=r"m\.png: mask values \[30\] out of range \(valid: 0\.\.20"):
        read_mask(tmp_path / "m.png", 20)
    rgb = np.zeros((5, 5, 3), np.uint8)
    rgb[1, 1] = (1, 2, 3)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    with pytest.raises(DataError, match=r"c\.png: colour-coded mask has 1 pixels with colours outside"):
        read_mask(tmp_path / "c.png", 20)


def _problems(root, split="train", **kw):
    ad = folder.build(settings_for(root, "folder").data, split)
    return ad, check_split(ad, on_error="skip", workers=2)


def test_check_split_lists_every_problem(tmp_path):
    root = make_folder(tmp_path / "f", n=8)
    (root / "splits" / "train.txt").write_text("img0\nimg1\nimg2\nimg3\nimg0\n../etc\nsub/img5\nimg6\nimg7\n")
    (root / "masks" / "img1.png").unlink()  # fine for training: its labels come from labels.csv
    data = (root / "images" / "img2.png").read_bytes()
    (root / "images" / "img2.png").write_bytes(data[:60])  # truncated
    Image.fromarray(np.full((40, 56), 9, np.uint8)).save(root / "masks" / "img3.png")  # out of range
    (root / "labels.csv").write_text((root / "labels.csv").read_text().replace("img6,cat", "img6,unicorn"))
    (root / "labels.csv").write_text((root / "labels.csv").read_text().replace("img7,dog\n", ""))
    ad, (good, problems) = _problems(root)
    text = "\n".join(p.message for p in problems)
    assert good == [0, 1]
    for expected in (
        "img2.png: corrupt image",
        "img3.png: mask values [9] out of range",
        "duplicate id 'img0'",
        "invalid id '../etc'",
        "invalid id 'sub/img5'",
        "unknown class name 'unicorn'",
        "no labels entry for id 'img7'",
    ):
        assert expected in text, expected
    assert all("\n" not in p.message for p in problems)
    with pytest.raises(DataError) as err:
        check_split(ad, on_error="fail", workers=2)
    assert "7 problem(s)" in str(err.value) and "img3.png" in str(err.value)


def test_labels_disagreeing_with_mask_and_empty_list(tmp_path):
    root = make_folder(tmp_path / "f")
    (root / "labels.csv").write_text((root / "labels.csv").read_text().replace("img0,cat", "img0,dog"))
    _, (good, problems) = _problems(root)
    assert len(problems) == 1 and "disagree with the mask" in problems[0].message and 0 not in good
    (root / "splits" / "val.txt").write_text("\n")
    with pytest.raises(DataError, match=r"val\.txt: split list is empty"):
        folder.build(settings_for(root, "folder").data, "val")


def test_verify_cli_exits_nonzero_with_json(tmp_path):
    root = make_folder(tmp_path / "f")
    (root / "masks" / "img4.png").unlink()
    res = runner.invoke(
        app, ["data", "verify", "--set", 'data.adapter="folder"', "--set", f'data.root="{root}"', "--json"]
    )
    assert res.exit_code == 1, res.output
    report = json.loads(res.stdout)
    assert not report["ok"] and any(
        "img4.png: missing mask" in p for s in report["splits"] for p in s["problems"]
    )


def test_verify_cli_missing_root(tmp_path):
    res = runner.invoke(app, ["data", "verify", "--set", f'data.root="{tmp_path / "none"}"'])
    assert res.exit_code == 1
    assert "error:" in res.stderr and "DUPL_DATA__ROOT" in res.stderr and "JPEGImages" in res.stderr
    assert "Traceback" not in res.output


def test_done_when_demo_then_verify_passes(tmp_path):
    out = tmp_path / "d"
    res = runner.invoke(
        app, ["data", "demo", "--out", str(out), "--size", "48", "--n-train", "6", "--n-val", "3"]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["data", "verify", "--preset", "demo", "--set", f'data.root="{out}"'])
    assert res.exit_code == 0, res.output
    assert "ok" in res.stdout and "boat" in res.stdout
    res = runner.invoke(app, ["data", "demo", "--out", str(out)])
    assert res.exit_code == 2 and "not empty" in res.stderr


def test_done_when_voc_made_by_someone_else_verifies_and_labels(tmp_path):
    make_voc(tmp_path)  # colour-coded palette PNGs in SegmentationClass, XML, ImageSets/Segmentation
    sets = [
        "--set",
        f'data.root="{tmp_path / "VOCdevkit"}"',
        "--set",
        'data.train_split="train"',
        "--set",
        "data.crop_size=32",
    ]
    res = runner.invoke(app, ["data", "verify", *sets])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["data", "labels", "--out", str(tmp_path / "l.csv"), *sets])
    assert res.exit_code == 0, res.output
    rows = (tmp_path / "l.csv").read_text().splitlines()
    assert rows[0] == "id,labels" and "2007_000001,bicycle car" in rows and len(rows) == 6


@pytest.mark.parametrize(
    "record, said",
    [(b"\xff\xfe{", "not UTF-8"), (b"{not json", "unreadable"), (b"[1, 2]", "not a JSON object")],
)
def test_a_bad_demo_record_is_named_and_the_data_still_loads(tmp_path, caplog, record, said):
    from dupl_cli.config.sources import load_settings
    from dupl_cli.data.demo import ensure_demo, write_demo

    root = write_demo(tmp_path / "d", size=32, n_train=2, n_val=1)
    settings = load_settings("demo", assignments=[f'data.root="{root}"', "data.options.size=32"], environ={})
    (root / "demo.json").write_bytes(record)
    with caplog.at_level("WARNING"):
        assert ensure_demo(settings.settings.data) == root
    assert str(root / "demo.json") in caplog.text and said in caplog.text

    caplog.clear()
    (root / "demo.json").write_text(json.dumps({"seed": 0, "size": 48, "n_train": 2, "n_val": 1}))
    with caplog.at_level("WARNING"):
        ensure_demo(settings.settings.data)
    assert "generated with other settings" in caplog.text and "'size': (48, 32)" in caplog.text
