"""`dupl infer` never loses an input or an output, and says which checkpoint it uses (issues 16.1, 17.1,
17.2)."""

import csv

import numpy as np
from PIL import Image


def _photo(path, seed=0, size=(24, 32)):
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path.read_bytes()


def _one_error_line(r):
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    return lines[0]


def test_output_folder_that_is_the_input_folder_is_refused(cli, tmp_path):
    """17.1: `infer RUN DIR --out DIR` with DIR/x.png would overwrite the photo with its mask."""
    src = tmp_path / "photos"
    before = {"x.png": _photo(src / "x.png"), "y.jpg": _photo(src / "y.jpg", 1)}
    r = cli("infer", cli.run_dir, src, "--out", src)
    assert r.exit_code == 2
    assert f"--out {src}: is an input folder" in _one_error_line(r)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    # An explicit file whose mask would land on another input file is refused too.
    other = tmp_path / "other"
    _photo(other / "a.jpg", 2)
    before_a = _photo(other / "a.png", 3)
    r = cli("infer", cli.run_dir, other / "a.jpg", other / "a.png", "--out", other)
    assert r.exit_code == 2 and "is an input" in _one_error_line(r)
    assert (other / "a.png").read_bytes() == before_a
    # A sub-folder of the input folder works, and a rerun does not segment its own masks.
    for _ in range(2):
        r = cli("infer", cli.run_dir, src, "--out", src / "masks")
        assert r.exit_code == 0, r.output
        assert "wrote 2 masks" in r.output
    assert {p.name: p.read_bytes() for p in src.iterdir() if p.is_file()} == before


def test_clashing_stems_get_unique_names_and_an_index(cli, tmp_path):
    """17.2: x.jpg, x.png, x_1.png (and a case twin) give four masks; index.csv says which is which."""
    src = tmp_path / "in"
    for i, name in enumerate(("x.jpg", "x.png", "x_1.png", "sub/X.png")):
        _photo(src / name, i, size=(20 + i, 30))
    out = tmp_path / "out"
    r = cli("infer", cli.run_dir, src, "--out", out)
    assert r.exit_code == 0, r.output
    assert "wrote 4 masks" in r.output
    rows = list(csv.DictReader((out / "index.csv").open()))
    assert len(rows) == 4 and {row["status"] for row in rows} == {"ok"}
    names = [row["mask"] for row in rows]
    assert len({n.casefold() for n in names}) == 4
    for row in rows:  # every mask has its own input's size
        height = Image.open(row["input"]).size[1]
        assert Image.open(out / row["mask"]).size[1] == height
    assert sorted(p.name for p in out.glob("*.png")) == sorted(names)


def test_infer_takes_the_checkpoint_first_and_names_it(cli, tmp_path):
    """16.1: the run comes first; a run directory as input is refused; the checkpoint line names step and
    classes."""
    src = tmp_path / "in"
    _photo(src / "p.png")
    run = tmp_path / "run"
    run.mkdir()
    for f in cli.run_dir.iterdir():
        (run / f.name).symlink_to(f)
    (run / "config.toml").write_text("")
    _photo(run / "eval" / "confusion.png", 4)
    out = tmp_path / "out"
    r = cli("infer", run, src, "--out", out)
    assert r.exit_code == 0, r.output
    line = next(x for x in r.output.splitlines() if x.startswith("checkpoint:"))
    assert str(run / "best.safetensors") in line and "step 6" in line
    assert "5 classes: boat, balloon, tree, sign, flower" in line
    # The run directory as an input (alone or after another run) is refused, nothing is written.
    for args in ((run, run), (run, run / "eval")):
        r = cli("infer", *args, "--out", tmp_path / "o2")
        assert r.exit_code == 2 and "is a training run directory" in _one_error_line(r)
    assert not (tmp_path / "o2").exists()
    # The old order (images first) says what the first argument must be.
    r = cli("infer", src / "p.png", run, "--out", tmp_path / "o3")
    assert r.exit_code == 2
    assert "p.png: not a checkpoint (.safetensors) or run directory" in _one_error_line(r)
    r = cli("infer", src, src / "p.png", "--out", tmp_path / "o3")
    assert r.exit_code == 2 and "in: not a run directory" in _one_error_line(r)


def test_images_above_the_size_policy_are_refused_and_named(cli, tmp_path):
    """17.12: a huge image is reported and skipped before it is decoded; the others are segmented."""
    src = tmp_path / "in"
    _photo(src / "small.png", size=(20, 30))
    _photo(src / "huge.png", size=(50, 60))
    out = tmp_path / "out"
    r = cli("infer", cli.run_dir, src, "--out", out, "--set", "eval.max_pixels=1000")
    assert r.exit_code == 1 and "Traceback" not in r.output
    text = " ".join(r.output.split())
    assert (
        "huge.png: 60x50 = 3,000 pixels is above eval.max_pixels = 1,000" in text
        and "raise eval.max_pixels" in text
    )
    assert sorted(p.name for p in out.glob("*.png")) == ["small.png"]
    rows = {row["mask"] or row["input"]: row["status"] for row in csv.DictReader((out / "index.csv").open())}
    assert rows["small.png"] == "ok" and "above eval.max_pixels" in rows[str(src / "huge.png")]
