"""Third-party plugins through real entry points: dataset found by `data verify`, broken, clashing."""

from __future__ import annotations

import json
import warnings

import pytest
from typer.testing import CliRunner

from dupl_cli.cli.app import app
from dupl_cli.core.errors import UserError
from dupl_cli.plugins import BACKBONES, DATASETS, discover, load

runner = CliRunner()

TOY_DATASET = '''
import numpy as np
from pathlib import Path
from dupl_cli.data.base import Sample

class ToyShapes:
    """Squares of one of two colours on black: the label is the colour."""

    classes = ["red", "blue"]
    palette = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]
    has_masks = True

    def __init__(self, root, split, n):
        self.root, self.split = Path(root), split
        self.ids = [f"{split}_{i:03d}" for i in range(n)]

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        k = i % 2
        image = np.zeros((40, 56, 3), np.uint8)
        image[8:24, 8 + i : 24 + i, 0 if k == 0 else 2] = 255
        mask = np.zeros((40, 56), np.uint8)
        mask[8:24, 8 + i : 24 + i] = k + 1
        labels = np.zeros(2, np.float32)
        labels[k] = 1
        return Sample(image=image, labels=labels, mask=mask, id=self.ids[i])

    def path_of(self, i):
        return self.root / f"{self.ids[i]}.png"

def build(data_settings, split):
    return ToyShapes(data_settings.root, split, n=5 if split.startswith("train") else 3)
'''


def toy_dataset(fake_distribution):
    fake_distribution(
        "dupl-toy-shapes",
        "2.3.4",
        {"dupl.datasets": {"toyshapes": "dupl_toy_shapes:build"}},
        {"dupl_toy_shapes": TOY_DATASET},
    )


def test_dataset_plugin_from_a_distribution_is_found_and_verified(fake_distribution, tmp_path):
    toy_dataset(fake_distribution)
    assert discover(DATASETS)["toyshapes"].version == "2.3.4"

    listed = runner.invoke(app, ["plugins", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    row = next(r for r in json.loads(listed.stdout) if r["name"] == "toyshapes")
    assert (row["group"], row["dist"], row["version"], row["status"]) == (
        "dupl.datasets",
        "dupl-toy-shapes",
        "2.3.4",
        "ok",
    )

    result = runner.invoke(
        app,
        [
            "data",
            "verify",
            "--preset",
            "tiny-cpu",
            "--set",
            "data.adapter=toyshapes",
            "--set",
            f"data.root={tmp_path}",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["ok"] and report["adapter"] == "toyshapes"
    train = next(s for s in report["splits"] if s["split"] == "train_aug")
    assert train["count"] == 5 and train["has_masks"]
    assert train["class_counts"] == {"red": 3, "blue": 2}
    assert train["sizes"]["height"]["max"] == 40 and train["sizes"]["width"]["min"] == 56


def test_dataset_plugin_problems_reach_data_verify(fake_distribution, tmp_path):
    # A third-party adapter reports an unreadable sample with DataError naming the file.
    broken = TOY_DATASET.replace(
        "    def __getitem__(self, i):\n",
        "    def __getitem__(self, i):\n"
        "        if i == 2:\n"
        "            from dupl_cli.core.errors import DataError\n"
        "            raise DataError(f'{self.path_of(i)}: cannot decode image')\n",
    )
    assert broken != TOY_DATASET
    fake_distribution(
        "dupl-toy-bad", "0.1", {"dupl.datasets": {"toybad": "dupl_toy_bad:build"}}, {"dupl_toy_bad": broken}
    )
    result = runner.invoke(
        app,
        [
            "data",
            "verify",
            "--preset",
            "tiny-cpu",
            "--set",
            "data.adapter=toybad",
            "--set",
            f"data.root={tmp_path}",
            "--json",
        ],
    )
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    problems = [p for split in report["splits"] for p in split["problems"]]
    assert not report["ok"] and f"{tmp_path}/train_aug_002.png: cannot decode image" in problems


BROKEN = "raise RuntimeError('this plugin is broken on purpose')\n"


def test_broken_plugin_is_listed_as_failed_and_nothing_else_breaks(fake_distribution):
    fake_distribution(
        "dupl-broken",
        "0.0.1",
        {"dupl.backbones": {"brokennet": "dupl_broken_plugin:build"}},
        {"dupl_broken_plugin": BROKEN},
    )
    listed = runner.invoke(app, ["plugins", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = {r["name"]: r for r in json.loads(listed.stdout)}
    assert rows["brokennet"]["status"] == "failed"
    assert "RuntimeError" in rows["brokennet"]["error"] and "broken on purpose" in rows["brokennet"]["error"]
    assert rows["vit"]["status"] == "ok" and rows["mit"]["status"] == "ok"

    table = runner.invoke(app, ["plugins", "list"])
    assert table.exit_code == 0 and "brokennet" in table.output and "failed" in table.output
    for args in (["presets", "list"], ["config", "show", "--preset", "tiny-cpu"]):
        assert runner.invoke(app, args).exit_code == 0

    with pytest.raises(UserError) as err:
        load(BACKBONES, "brokennet")
    assert "dupl-broken" in str(err.value) and "\n" not in str(err.value)
    assert callable(load(BACKBONES, "vit"))


def test_name_clash_warns_and_keeps_the_builtin(fake_distribution):
    fake_distribution(
        "dupl-impostor",
        "9.9",
        {"dupl.backbones": {"vit": "dupl_impostor:build"}},
        {"dupl_impostor": "def build(*a, **k):\n    raise AssertionError\n"},
    )
    with pytest.warns(UserWarning, match="'vit'.*dupl-impostor"):
        chosen = discover(BACKBONES)["vit"]
    assert chosen.value == "dupl_cli.models.backbones.vit:build"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from dupl_cli.models.backbones import vit

        assert load(BACKBONES, "vit").fn is vit.build
