"""Every discovered dataset adapter, built-in or installed, keeps the adapter and Sample contract.

The samples are checked by the trainer's own pre-flight (``data.verify.check_split``) and by a full
decode of every sample (``verify(full=True)``), so this test holds adapters to what training needs.
Built-ins get tiny datasets in their layouts from ``tests/data/dataset_builders.py``; a third-party
factory may carry ``example(root) -> {data setting: value}`` that writes a tiny dataset of its layout
under ``root`` (without it only the missing-root contract applies to it).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dupl_cli.config.sources import load_settings
from dupl_cli.core.errors import DataError, UserError
from dupl_cli.data.base import Sample
from dupl_cli.data.verify import check_split, verify
from dupl_cli.plugins import DATASETS, check_dataset, discover, load


def _builders():
    path = Path(__file__).resolve().parents[1] / "data" / "dataset_builders.py"
    spec = importlib.util.spec_from_file_location("contract_dataset_builders", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


builders = _builders()


def voc_example(root: Path) -> dict:
    builders.make_voc(root)
    return {"root": str(root / "VOCdevkit"), "train_split": "train", "val_split": "val"}


def coco_example(root: Path) -> dict:
    for part, n in (("train2014", 3), ("val2014", 2)):
        (root / part).mkdir(parents=True)
        (root / "SegmentationClass" / part).mkdir(parents=True)
        for i in range(n):
            image, mask = builders.scene(i, classes=(i + 1, 80))
            Image.fromarray(image).save(root / part / f"COCO_{part}_{i:012d}.jpg")
            Image.fromarray(mask).save(root / "SegmentationClass" / part / f"COCO_{part}_{i:012d}.png")
    return {"train_split": "train", "val_split": "val"}


def folder_example(root: Path) -> dict:
    builders.make_folder(root)
    return {"train_split": "train", "val_split": "val"}


BUILTIN_EXAMPLES = {
    "voc": voc_example,
    "coco": coco_example,
    "folder": folder_example,
    "demo": lambda root: {"options": {"generate": True}},
}


def example_for(name: str):
    plugin = discover(DATASETS)[name]
    if plugin.builtin:
        return BUILTIN_EXAMPLES[name]  # a new built-in adapter needs its example here
    return getattr(load(DATASETS, name).fn, "example", None)


def settings_for(name: str, root: Path, overrides: dict):
    sets = [f'data.adapter="{name}"', f"data.root={json.dumps(str(root))}"]
    for key, value in overrides.items():
        if isinstance(value, dict):  # a table: one assignment per key
            sets += [f"data.{key}.{k}={json.dumps(v)}" for k, v in value.items()]
        else:
            sets.append(f"data.{key}={json.dumps(value)}")
    return load_settings("tiny-cpu", assignments=sets, environ={}).settings


def assert_keeps_the_contract(name: str, tmp_path: Path) -> None:
    example = example_for(name)
    if example is None:
        pytest.skip(f"dataset plugin {name!r} ({discover(DATASETS)[name].source}) has no example(root) hook")
    root = tmp_path / "data"
    settings = settings_for(name, root, example(root))
    factory = load(DATASETS, name)
    for split in dict.fromkeys([settings.data.train_split, settings.data.val_split]):
        adapter = factory(settings.data, split)  # the registry's attribute check runs here
        good, problems = check_split(adapter)  # the trainer's pre-flight; raises DataError on any problem
        assert good == list(range(len(adapter))) and problems == [] and len(adapter) > 0
        report = verify(adapter, full=True)  # every sample decoded and held to the Sample contract
        assert report.ok, report.problems
        sample = adapter[len(adapter) - 1]
        assert isinstance(sample, Sample) and sample.id == adapter.ids[-1]
        assert adapter.has_masks == (sample.mask is not None)


@pytest.mark.parametrize("name", sorted(discover(DATASETS)))
def test_adapter_keeps_the_sample_contract(name, tmp_path):
    assert_keeps_the_contract(name, tmp_path)


@pytest.mark.parametrize("name", sorted(discover(DATASETS)))
def test_missing_root_is_one_line_naming_it(name, tmp_path):
    root = tmp_path / "nowhere"
    settings = settings_for(name, root, {})
    try:
        adapter = load(DATASETS, name)(settings.data, settings.data.train_split)
    except UserError as exc:
        assert str(root) in str(exc) and "\n" not in str(exc)
    else:  # an adapter may create its data (the demo does): then it is a usable split
        check_split(adapter)


TOY = """
import numpy as np
from pathlib import Path
from PIL import Image
from dupl_cli.data.base import Sample

FAULT = {fault!r}


class Toy:
    classes = ["red", "blue"]
    palette = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    has_masks = True

    def __init__(self, root, split):
        self.root, self.split = Path(root), split
        self.ids = sorted(p.stem for p in (self.root / split).glob("*.png"))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        image = np.asarray(Image.open(self.root / self.split / (self.ids[i] + ".png")).convert("RGB"))
        mask = (image[..., 0] > 0).astype(np.uint8) + 2 * (image[..., 2] > 0).astype(np.uint8)
        labels = np.array([(mask == 1).any(), (mask == 2).any()], np.float32)
        if FAULT == "labels float64":
            labels = labels.astype(np.float64)
        elif FAULT == "labels list":
            labels = labels.tolist()
        elif FAULT == "soft labels":
            labels = labels * 0.5
        elif FAULT == "mask int64":
            mask = mask.astype(np.int64)
        elif FAULT == "mask out of range":
            mask[0, 0] = 7
        elif FAULT == "image float":
            image = image / 255.0
        elif FAULT == "wrong id":
            return Sample(image=image, labels=labels, mask=mask, id="other")
        elif FAULT == "raises" and i == 1:
            raise ValueError("toy decoder failed")
        return Sample(image=image, labels=labels, mask=mask, id=self.ids[i])

    def path_of(self, i):
        return self.root / self.split / (self.ids[i] + ".png")


def build(data_settings, split):
    return Toy(data_settings.root, split)


def example(root):
    for split, n in (("train", 4), ("val", 2)):
        (root / split).mkdir(parents=True)
        for i in range(n):
            image = np.zeros((24, 40, 3), np.uint8)
            image[4:12, 4 + i : 12 + i, 0 if i % 2 else 2] = 255
            Image.fromarray(image).save(root / split / f"{{split}}{{i}}.png")
    return {{"train_split": "train", "val_split": "val"}}


build.example = example
"""


def test_an_installed_adapter_with_an_example_is_held_to_the_contract(fake_distribution, tmp_path):
    fake_distribution(
        "dupl-toy-data",
        "1.0",
        {DATASETS: {"toydata": "dupl_toy_data:build"}},
        {"dupl_toy_data": TOY.format(fault="")},
    )
    assert "toydata" in discover(DATASETS)
    assert_keeps_the_contract("toydata", tmp_path)


SAMPLE_FAULTS = {
    "labels float64": "labels must have 2 entries (one per class) in a float32 array, got float64 (2,)",
    "labels list": "labels must have 2 entries (one per class) in a float32 array, got list",
    "soft labels": "labels must be multi-hot (0 or 1), got values [0.0, 0.5]",
    "mask int64": "mask must be uint8 H×W (a numpy array), got int64 (24, 40)",
    "mask out of range": "mask values [7] out of range",
    "image float": "image must be uint8 H×W×3 (a numpy array), got float64 (24, 40, 3)",
    "wrong id": "sample id 'other' differs from the adapter's id 'train0'",
    "raises": "train1.png: the adapter raised ValueError: toy decoder failed",
}


def toy_module(fault: str) -> dict:
    namespace: dict = {}
    exec(TOY.format(fault=fault), namespace)  # the toy adapter's source, written above
    return namespace


@pytest.mark.parametrize("fault", SAMPLE_FAULTS)
def test_the_contract_catches_a_broken_sample(registered, tmp_path, fault):
    registered(DATASETS, "toyfault", toy_module(fault)["build"], dist="dupl-toy-fault", version="0.1")
    with pytest.raises(DataError) as err:
        assert_keeps_the_contract("toyfault", tmp_path)
    assert SAMPLE_FAULTS[fault] in str(err.value) and str(tmp_path / "data" / "train") in str(err.value)


ATTRIBUTE_FAULTS = {
    "no classes": ("classes", [], "classes must be a non-empty list of unique names"),
    "repeated class": ("classes", ["a", "a"], "classes must be a non-empty list of unique names"),
    "short palette": (
        "palette",
        [(0, 0, 0), (1, 2, 3)],
        "palette must be a list of at least 3 (r, g, b) tuples",
    ),
    "numpy palette": ("palette", np.zeros((3, 3), np.uint8), "palette must be a list of at least 3"),
    "int has_masks": ("has_masks", 1, "has_masks must be a bool, got int"),
    "int id": ("ids", ["a", 2], "ids must be a sequence of str"),
    "one str id": ("ids", "abcdef", "ids must be a sequence of str"),
    "numpy classes": (
        "classes",
        np.array(["red", "red"]),
        "classes must be a non-empty list of unique names",
    ),
    "no split": ("split", None, "split must be a str, got NoneType"),
}


@pytest.mark.parametrize("fault", ATTRIBUTE_FAULTS)
def test_the_registry_refuses_an_adapter_without_the_attributes(registered, tmp_path, fault):
    attr, value, expected = ATTRIBUTE_FAULTS[fault]
    namespace = toy_module("")
    namespace["example"](tmp_path)

    def build(data_settings, split):
        adapter = namespace["build"](data_settings, split)
        setattr(adapter, attr, value)
        return adapter

    registered(DATASETS, "toyattr", build, dist="dupl-toy-attr", version="0.1")
    settings = settings_for("toyattr", tmp_path, {})
    with pytest.raises(UserError) as err:
        load(DATASETS, "toyattr")(settings.data, "train")
    message = str(err.value)
    assert message.startswith("dataset plugin 'toyattr' (dupl-toy-attr 0.1) breaks the dataset protocol: ")
    assert expected in message and "\n" not in message
    check_dataset(namespace["build"](settings.data, "train"), plugin="toy")  # the unbroken one passes
