"""Messages that say what is really wrong (17.13): folders and dangling links named as such, a missing
class list named, URLs refused as URLs, torch's advice to unpickle never repeated."""

import pickle
import shutil


def _folder(tiny_data, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    return root


def _verify(run_cli, root):
    return run_cli("data", "verify", "--set", "data.adapter=folder", "--set", f"data.root={root}")


def test_directory_and_dangling_link_named_as_image(run_cli, tiny_data, tmp_path):
    root = _folder(tiny_data, tmp_path)
    (root / "images" / "train_00001.png").unlink()
    (root / "images" / "train_00001.png").mkdir()
    (root / "images" / "train_00002.png").unlink()
    (root / "images" / "train_00002.png").symlink_to(tmp_path / "gone.png")
    r = _verify(run_cli, root)
    assert r.exit_code == 1
    text = "".join(r.output.split())  # rich wraps long paths mid-word
    assert (
        "".join(f"{root / 'images' / 'train_00001.png'}: is a directory, not an image file".split()) in text
    )
    assert "".join(f"{root / 'images' / 'train_00002.png'}: dangling symbolic link".split()) in text
    assert "train_00001.jpg" not in text and "train_00002.jpg" not in text


def test_missing_class_list_is_named(run_cli, tiny_data, tmp_path):
    root = _folder(tiny_data, tmp_path)
    (root / "classes.txt").unlink()
    r = _verify(run_cli, root)
    assert r.exit_code == 1
    assert f"error: {root / 'classes.txt'}: class list not found" in r.output


def test_config_directory_and_urls(run_cli, tmp_path):
    r = run_cli("config", "show", "--config", tmp_path)
    assert r.exit_code == 2 and f"error: {tmp_path}: is a directory, not a config file" in r.output
    r = run_cli("config", "show", "--config", "https://example.com/x.toml")
    assert r.exit_code == 2
    assert "error: https://example.com/x.toml: URLs are not supported" in r.output
    r = run_cli("infer", "https://example.com/m.safetensors", "a.png", "--out", tmp_path / "o")
    assert r.exit_code == 2
    assert "error: https://example.com/m.safetensors: URLs are not supported" in r.output


class Hostile:
    def __reduce__(self):
        return (print, ("unpickled",))


def test_weights_only_refusal_never_advises_unpickling(run_cli, tiny_data, tmp_path):
    bad = tmp_path / "backbone.pth"
    bad.write_bytes(pickle.dumps({"w": Hostile()}))
    r = run_cli("train", "--preset", "tiny-cpu", "--set", f"data.root={tiny_data}", "--dry-run",
                "--set", f'model.pretrained="{bad}"')  # fmt: skip
    assert r.exit_code == 2, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("error:"))
    assert f"{bad}: cannot read weights (holds pickled objects that are not plain tensors" in line
    assert "weights_only=False" not in r.output and "unpickled" not in r.output.replace("unpickles", "")
