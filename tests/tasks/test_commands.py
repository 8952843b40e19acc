"""End-to-end evaluate / infer / pseudo-label through the CLI on a tiny checkpoint."""

import json
import re

import numpy as np
import pytest
from PIL import Image

from dupl_cli.evaluation.visualize import load_mask


def _refs(html_text):
    return re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", html_text)


def _plain(output):
    """Typer's boxed message as one line of words."""
    return " ".join(output.replace("│", " ").split())


def _labelled(cli, split):
    from dupl_cli.plugins import DATASETS, load

    adapter = load(DATASETS, "demo")(cli.settings.data, split)
    return sum(int((adapter[i].mask != 255).sum()) for i in range(len(adapter)))


def test_evaluate_writes_metrics_table_and_report(cli, tmp_path):
    out = tmp_path / "ev"
    report = tmp_path / "report.html"
    r = cli("evaluate", str(cli.run_dir), "--multiscale", "--crf", "--out", str(out), "--report", str(report),
            "--max-images", "3")  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "mIoU" in r.output and "student 2 (best by validation" in r.output
    assert _plain(r.output).count("checkpoint:") == 1  # printed once, before the evaluation
    assert "scales (1, 1.5)" in r.output and "dense CRF" in r.output
    payload = json.loads((out / "metrics.json").read_text())
    assert payload["protocol"]["split"].startswith("val (3 images")
    assert 0 <= payload["miou"] <= 1 and "over_activation" in payload["per_class"]["background"]
    cm = np.array(payload["confusion_matrix"])
    csv_rows = (out / "confusion.csv").read_text().strip().splitlines()
    assert len(csv_rows) == cm.shape[0] + 1 and csv_rows[0].endswith("uncertain")
    assert cm.sum() == payload["labelled_pixels"] > 0
    Image.open(out / "confusion.png").verify()
    text = report.read_text()
    assert text.count("<div class=row>") == 3
    for ref in _refs(text):
        assert ref.startswith("data:image/png;base64,") or (report.parent / ref).is_file()


def test_evaluate_cams_and_student_choice(cli, tmp_path):
    r = cli(
        "evaluate", str(cli.run_dir / "best.safetensors"), "--cams", "--student", "1", "--out", str(tmp_path)
    )
    assert r.exit_code == 0, r.output
    payload = json.loads((tmp_path / "metrics.json").read_text())
    assert "CAM pseudo-labels" in payload["protocol"]["source"]
    assert payload["protocol"]["student"].startswith("student 1 (chosen with --student)")
    assert payload["labelled_pixels"] == _labelled(cli, "val")  # the whole val split
    r = cli("evaluate", str(cli.run_dir), "--student", "3")
    assert r.exit_code == 2 and "Invalid value for '--student'" in _plain(r.output)
    assert "'3' is not one of '1', '2', 'best', 'ensemble'" in _plain(r.output)


def test_evaluate_without_checkpoint_uses_newest_run(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "r1").symlink_to(cli.run_dir, target_is_directory=True)
    r = cli("evaluate", "--max-images", "1", "--out", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    assert "(newest run)" in r.output


def test_infer_odd_sizes_modes_and_bad_files(cli, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (37, 53), dtype=np.uint8), mode="L").save(src / "grey.png")
    Image.fromarray(rng.integers(0, 255, (61, 29, 4), dtype=np.uint8), mode="RGBA").save(
        src / "sub" / "rgba.png"
    )
    rotated = Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = 6  # rotate 90°: the decoded image is 40 high, 24 wide
    rotated.save(src / "exif.jpg", exif=exif)
    (src / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "out"
    r = cli(
        "infer",
        str(cli.run_dir),
        str(src),
        str(tmp_path / "nothing*.png"),
        "--out",
        str(out),
        "--overlay",
        "--probs",
    )
    assert r.exit_code == 1, r.output
    assert "broken.jpg" in r.output and "nothing*.png" in r.output
    sizes = {p.stem: Image.open(p).size for p in out.glob("*.png")}
    assert sizes == {"grey": (53, 37), "rgba": (29, 61), "exif": (24, 40)}
    for stem in sizes:
        with Image.open(out / f"{stem}.png") as img:
            assert img.mode == "P"
        assert Image.open(out / f"{stem}_overlay.jpg").size == sizes[stem]
        probs = np.load(out / f"{stem}_probs.npz")
        assert probs["probs"].shape[0] == 6 and np.allclose(
            probs["probs"].astype(np.float32).sum(0), 1, atol=1e-2
        )
    r = cli("infer", str(cli.run_dir), str(src / "grey.png"), "--out", str(tmp_path / "ok"))
    assert r.exit_code == 0, r.output


def test_pseudo_label_resumes_without_rewriting(cli, tmp_path, monkeypatch):
    import dupl_cli.evaluation.visualize as vis

    out = tmp_path / "pl"
    real_save = vis.save_mask
    calls = []

    def interrupted_save(*a, **k):
        if len(calls) == 3:
            raise RuntimeError("simulated kill")
        calls.append(a[0])
        return real_save(*a, **k)

    monkeypatch.setattr(vis, "save_mask", interrupted_save)
    with pytest.raises(RuntimeError, match="simulated kill"):
        cli("pseudo-label", str(cli.run_dir), "--out", str(out), "--split", "train")
    monkeypatch.setattr(vis, "save_mask", real_save)
    finished = sorted(out.glob("*.png"))
    assert len(finished) == 3
    mtimes = {p.name: p.stat().st_mtime_ns for p in finished}
    (out / finished[0].name).write_bytes(finished[0].read_bytes()[:-8])  # truncated: must be redone
    del mtimes[finished[0].name]

    r = cli("pseudo-label", str(cli.run_dir), "--out", str(out), "--split", "train", "--evaluate",
            "--report", str(tmp_path / "pl.html"))  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "resuming: 2 of 8" in r.output
    files = sorted(out.glob("*.png"))
    assert len(files) == 8 and not list(out.glob(".*"))
    for name, mtime in mtimes.items():
        assert (out / name).stat().st_mtime_ns == mtime
    labels = load_mask(files[0])
    assert labels.shape == (64, 64) and set(np.unique(labels)) <= {0, 1, 2, 3, 4, 5, 255}
    payload = json.loads((tmp_path / "pl_metrics" / "metrics.json").read_text())
    assert payload["labelled_pixels"] == _labelled(cli, "train")  # resumed files scored too
    for ref in _refs((tmp_path / "pl.html").read_text()):
        assert ref.startswith("data:image/png;base64,")


def test_pseudo_label_seg_crf(cli, tmp_path):
    r = cli(
        "pseudo-label",
        str(cli.run_dir),
        "--out",
        str(tmp_path / "s"),
        "--split",
        "val",
        "--source",
        "seg",
        "--crf",
        "--multiscale",
    )
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "s").glob("*.png"))) == 4
