"""Class lists are compared by name: another order is remapped and said, other names are refused (17.11)."""

import json
import shutil

import numpy as np
from PIL import Image


def _folder_copy(src, dst, classes):
    """The demo data as a folder dataset whose classes.txt lists ``classes`` (masks renumbered to match)."""
    shutil.copytree(src, dst)
    old = [line.strip() for line in (src / "classes.txt").read_text().splitlines() if line.strip()]
    lut = np.arange(256, dtype=np.uint8)
    for i, name in enumerate(old):
        if name in classes:
            lut[i + 1] = classes.index(name) + 1
    for mask in (dst / "masks").glob("*.png"):
        with Image.open(mask) as img:
            ids = np.array(img)
        Image.fromarray(lut[ids], mode="L").save(mask)
    (dst / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    return old


def _evaluate(cli, root, out):
    return cli("evaluate", cli.run_dir, "--set", "data.adapter=folder", "--set", f"data.root={root}",
               "--out", out, "--max-images", "3")  # fmt: skip


def test_classes_in_another_order_are_remapped_by_name(cli, tmp_path):
    src = cli.data_root
    names = [line.strip() for line in (src / "classes.txt").read_text().splitlines() if line.strip()]
    _folder_copy(src, tmp_path / "same", names)
    _folder_copy(src, tmp_path / "reversed", names[::-1])
    r = _evaluate(cli, tmp_path / "same", tmp_path / "e1")
    assert r.exit_code == 0, r.output
    r = _evaluate(cli, tmp_path / "reversed", tmp_path / "e2")
    assert r.exit_code == 0, r.output
    assert "ground truth remapped by name" in " ".join(r.output.split())
    same = json.loads((tmp_path / "e1" / "metrics.json").read_text())
    rev = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert "remapped by name" in rev["protocol"]["classes"] and "classes" not in same["protocol"]
    assert rev["confusion_matrix"] == same["confusion_matrix"] and rev["per_class"] == same["per_class"]
    assert rev["miou"] == same["miou"]


def test_other_class_names_are_an_error_naming_both(cli, tmp_path):
    src = cli.data_root
    names = [line.strip() for line in (src / "classes.txt").read_text().splitlines() if line.strip()]
    renamed = [("bush" if n == "tree" else n) for n in names]
    _folder_copy(src, tmp_path / "renamed", renamed)
    (tmp_path / "renamed" / "labels.csv").write_text((src / "labels.csv").read_text().replace("tree", "bush"))
    r = _evaluate(cli, tmp_path / "renamed", tmp_path / "e3")
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.output
    assert str(cli.run_dir / "best.safetensors") in lines[0] and str(tmp_path / "renamed") in lines[0]
    assert "only in the checkpoint: tree; only in the dataset: bush" in lines[0]
    assert not (tmp_path / "e3").exists()
