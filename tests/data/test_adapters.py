"""Every adapter reads data generated in tmp_path; labels and masks agree with what was written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from dataset_builders import make_folder, make_voc, scene, settings_for
from PIL import Image

from dupl_cli.core.errors import DataError
from dupl_cli.data import coco, demo, folder, voc
from dupl_cli.data.base import DatasetAdapter
from dupl_cli.data.palette import COCO_CLASSES, VOC_CLASSES, voc_colormap


@pytest.mark.parametrize("form", ["devkit", "voc2012", "renamed"])
def test_voc_three_root_forms(tmp_path, form):
    voc_dir = make_voc(tmp_path)
    if form == "devkit":
        root = tmp_path / "VOCdevkit"
    elif form == "voc2012":
        root = voc_dir
    else:
        root = tmp_path / "myvoc"
        shutil.move(voc_dir, root)
    ad = voc.build(settings_for(root, "voc").data, "train")
    assert isinstance(ad, DatasetAdapter)
    assert ad.classes == VOC_CLASSES and len(ad.palette) == 21 and ad.palette[0] == (0, 0, 0)
    assert len(ad) == 3 and ad.has_masks
    s = ad[1]
    assert s.image.dtype == np.uint8 and s.image.shape == (40, 56, 3)
    assert s.mask.shape == (40, 56) and set(np.unique(s.mask)) <= {0, 2, 7, 255}
    # labels from the mask match the classes written (image 1 holds classes 2 and 7)
    assert np.flatnonzero(s.labels).tolist() == [1, 6]
    assert ad.path_of(1).name == "2007_000001.jpg"


def test_voc_prefers_aug_and_reads_xml_without_masks(tmp_path):
    voc_dir = make_voc(tmp_path, aug=True)
    ad = voc.build(settings_for(tmp_path / "VOCdevkit", "voc").data, "val")
    assert ad.mask_path("2008_000000").parent.name == "SegmentationClassAug"
    shutil.rmtree(voc_dir / "SegmentationClassAug")
    shutil.rmtree(voc_dir / "SegmentationClass")
    ad = voc.build(settings_for(tmp_path / "VOCdevkit", "voc").data, "val")
    assert not ad.has_masks
    s = ad[1]
    assert s.mask is None and np.flatnonzero(s.labels).tolist() == [1, 6]


def test_voc_colour_coded_rgb_mask_is_converted(tmp_path):
    voc_dir = make_voc(tmp_path)
    path = voc_dir / "SegmentationClass" / "2007_000001.png"
    ids = np.asarray(Image.open(path))
    Image.fromarray(voc_colormap()[ids]).save(path)  # RGB colour-coded
    ad = voc.build(settings_for(voc_dir, "voc").data, "train")
    np.testing.assert_array_equal(ad[1].mask, ids)


def test_voc_labels_csv_and_list_override(tmp_path):
    voc_dir = make_voc(tmp_path)
    (tmp_path / "l.csv").write_text("2007_000000,cat dog\n")
    (tmp_path / "list.txt").write_text("2007_000000\n")
    s = settings_for(
        voc_dir,
        "voc",
        f'data.labels_file="{tmp_path / "l.csv"}"',
        f'data.train_list="{tmp_path / "list.txt"}"',
        'data.train_split="train"',
    )
    ad = voc.build(s.data, "train")
    assert ad.ids == ["2007_000000"]
    assert [ad.classes[k] for k in np.flatnonzero(ad[0].labels)] == ["cat", "dog"]


def _coco_root(tmp_path):
    root = tmp_path / "coco"
    for d in ("train2014", "val2014", "SegmentationClass/train2014", "SegmentationClass/val2014"):
        (root / d).mkdir(parents=True)
    for part, n in (("train2014", 3), ("val2014", 2)):
        for i in range(n):
            sid = f"COCO_{part}_{i:012d}"
            image, mask = scene(i, classes=(i + 1, 80))
            img = (
                Image.fromarray(image).convert("L") if i == 0 else Image.fromarray(image)
            )  # greyscale COCO image
            img.save(root / part / f"{sid}.jpg")
            Image.fromarray(mask).save(root / "SegmentationClass" / part / f"{sid}.png")
    return root


def test_coco_adapter_lists_masks_and_reads_greyscale(tmp_path):
    root = _coco_root(tmp_path)
    s = settings_for(root, "coco", 'data.train_split="train"', 'data.val_split="val"')
    train, val = coco.build(s.data, "train"), coco.build(s.data, "val")
    assert len(train) == 3 and len(val) == 2 and train.classes == COCO_CLASSES
    sample = train[0]
    assert sample.image.shape == (40, 56, 3)
    assert (sample.image[..., 0] == sample.image[..., 1]).all()
    assert np.flatnonzero(sample.labels).tolist() == [0, 79]
    (root / "ImageSets").mkdir()
    (root / "ImageSets" / "val_part.txt").write_text("COCO_val2014_000000000001\n")
    assert coco.build(s.data, "val_part").ids == ["COCO_val2014_000000000001"]


def test_coco_masks_from_instances_json(tmp_path):
    pytest.importorskip("pycocotools")
    from dupl_cli.data.coco_masks import build_masks

    cats = [
        {"id": cid, "name": n}
        for cid, n in zip(
            [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)],
            COCO_CLASSES,
            strict=True,
        )
    ]
    data = {
        "images": [
            {"id": 7, "file_name": "COCO_val2014_000000000007.jpg", "height": 20, "width": 30},
            {"id": 8, "file_name": "COCO_val2014_000000000008.jpg", "height": 10, "width": 10},
        ],
        "categories": cats,
        "annotations": [
            {
                "id": 1,
                "image_id": 7,
                "category_id": 90,
                "iscrowd": 0,
                "area": 50,  # toothbrush = 80
                "segmentation": [[2, 2, 12, 2, 12, 8, 2, 8]],
            },
            {
                "id": 2,
                "image_id": 7,
                "category_id": 1,
                "iscrowd": 0,
                "area": 400,
                "segmentation": [[0, 10, 30, 10, 30, 20, 0, 20]],
            },
        ],
    }
    (tmp_path / "inst.json").write_text(json.dumps(data))
    out = tmp_path / "SegmentationClass" / "val2014"
    written, empty = build_masks(tmp_path / "inst.json", out, list_file=tmp_path / "ImageSets" / "val.txt")
    assert (written, empty) == (2, 1)
    m = np.asarray(Image.open(out / "COCO_val2014_000000000007.png"))
    assert m.shape == (20, 30) and m[5, 6] == 80 and m[15, 15] == 1 and m[0, 29] == 0
    assert (tmp_path / "ImageSets" / "val.txt").read_text().split() == ["COCO_val2014_000000000007"]


def test_folder_with_splits(tmp_path):
    root = make_folder(tmp_path / "f")
    s = settings_for(root, "folder")  # train_split default "train_aug" maps onto splits/train.txt
    tr, va = folder.build(s.data, s.data.train_split), folder.build(s.data, "val")
    assert tr.ids == ["img0", "img1", "img2", "img3"] and va.ids == ["img4", "img5"]
    assert tr.classes == ["cat", "dog", "boat"] and va[1].labels.tolist() == [0, 0, 1]


def test_folder_without_splits_is_deterministic_and_disjoint(tmp_path):
    root = make_folder(tmp_path / "f", n=10, splits=False, masks=False)
    s = settings_for(root, "folder", "data.split_seed=3", "data.val_fraction=0.3")
    tr, va = folder.build(s.data, "train"), folder.build(s.data, "val")
    assert len(va) == 3 and len(tr) == 7 and not set(tr.ids) & set(va.ids)
    assert folder.build(s.data, "val").ids == va.ids
    other = folder.build(
        settings_for(root, "folder", "data.split_seed=4", "data.val_fraction=0.3").data, "val"
    )
    assert other.ids != va.ids or len(va) == 0
    assert not tr.has_masks and tr[0].mask is None


def test_folder_labels_json(tmp_path):
    root = make_folder(tmp_path / "f", masks=False)
    (root / "labels.csv").unlink()
    (root / "labels.json").write_text(json.dumps({f"img{i}": ["dog"] for i in range(6)}))
    ad = folder.build(settings_for(root, "folder").data, "train")
    assert ad[0].labels.tolist() == [0, 1, 0]


def test_demo_deterministic_by_seed(tmp_path):
    a = demo.write_demo(tmp_path / "a", seed=1, size=64, n_train=4, n_val=2)
    b = demo.write_demo(tmp_path / "b", seed=1, size=64, n_train=4, n_val=2)
    c = demo.write_demo(tmp_path / "c", seed=2, size=64, n_train=4, n_val=2)
    read = lambda r, n: np.asarray(Image.open(r / "images" / n))  # noqa: E731
    assert (read(a, "train_00002.png") == read(b, "train_00002.png")).all()
    assert not (read(a, "train_00002.png") == read(c, "train_00002.png")).all()
    assert (a / "labels.csv").read_text() == (b / "labels.csv").read_text()
    assert not list(tmp_path.glob(".*tmp-*"))  # atomic: no leftovers


def test_demo_adapter_generates_when_asked(tmp_path):
    s = settings_for(
        tmp_path / "demo",
        "demo",
        "data.options.size=48",
        "data.options.n_train=5",
        "data.options.n_val=3",
        "data.options.generate=true",
    )
    tr = demo.build(s.data, s.data.train_split)
    va = demo.build(s.data, s.data.val_split)
    assert len(tr) == 5 and len(va) == 3 and tr.classes == [c[0] for c in demo.CLASSES]
    x = va[0]
    assert x.image.shape == (48, 48, 3) and x.mask.shape == (48, 48) and x.labels.any()
    present = set(np.unique(x.mask).tolist()) - {0, 255}
    assert {k - 1 for k in present} == set(np.flatnonzero(x.labels).tolist())


def test_demo_image_statistics():
    # objects take a good share of the image, 1-3 per image, boats always float on water
    shares, counts = [], []
    for i in range(40):
        image, mask = demo.generate_image(0, 0, i, 128)
        fg = (mask > 0) & (mask < 255)
        shares.append(fg.mean())
        counts.append(len(set(np.unique(mask).tolist()) - {0, 255}))
        if 1 in mask:  # boat: teal water band below it
            bottom = image[-4:].reshape(-1, 3).astype(int)
            assert (bottom[:, 2] > bottom[:, 0]).mean() > 0.8
    assert 0.1 < np.mean(shares) < 0.5 and min(counts) >= 1 and max(counts) <= 3


def test_missing_root_message(tmp_path):
    for name, build in (("voc", voc.build), ("coco", coco.build), ("folder", folder.build)):
        with pytest.raises(DataError, match="DUPL_DATA__ROOT") as err:
            build(settings_for(tmp_path / "nope", name).data, "train")
        assert str(tmp_path / "nope") in str(err.value) and "expected" in str(err.value)
