"""Issue 28 item 2: training curves and the confusion matrix are matplotlib charts, read back as figures
(axes, labels, lines, phase lines, colour bar) rather than pixels; without matplotlib, one line names
the extra and training only skips its curves."""

from __future__ import annotations

import base64
import io
import json
import re
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from dupl_cli.core.errors import UserError
from dupl_cli.evaluation import curves
from dupl_cli.evaluation.curves import curve_figures, write_curves
from dupl_cli.evaluation.metrics import confusion_matrix, metrics_from_confusion
from dupl_cli.evaluation.plots import confusion_figure
from dupl_cli.evaluation.visualize import HtmlReport, confusion_png

T_SEG, T_ANF = 4, 12


def _run(tmp_path, t_anf=T_ANF):
    """A run directory as training leaves it: config.toml and metrics.jsonl (steps 1..10)."""
    run = tmp_path / "run"
    run.mkdir(parents=True)
    (run / "config.toml").write_text(
        f"[train]\nmax_iters = 20\n\n[method]\nt_seg = {T_SEG}\nt_anf = {t_anf}\n"
    )
    records = [
        {"step": s, "loss/cls": 1.0 / s, "loss/seg": 0.5 * (s >= T_SEG), "loss/cls_1": 0.4,
         "lr": 1e-3 * 0.8**s, "tau_h": 0.9 - 0.01 * s, "noise_share": 0.02 * s, "phase": "cls"}
        for s in range(1, 11)
    ]  # fmt: skip
    records[-1]["lr"] = 0.0  # a poly schedule ends at 0: not on a log axis
    for step in (5, 10):
        records.append({"step": step, "validation": {"seg_s1": step, "seg_s2": 2.0 * step, "cam_s1": 30.0},
                        "best_student": 2})  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 11, "lo')
    return run


def _lines(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_curves_are_one_labelled_figure_per_concern(tmp_path):
    figures = curve_figures(_run(tmp_path))
    assert list(figures) == ["loss", "lr", "val_miou", "tau_h", "noise_share"]
    ylabels = {}
    for stem, figure in figures.items():
        (ax,) = figure.axes
        assert ax.get_xlabel() == "step" and ax.get_title()
        ylabels[stem] = ax.get_ylabel()
        assert any(g.get_visible() for g in ax.get_xgridlines()), stem
        assert len(ax.get_xticks()) >= 3 and len(ax.get_yticks()) >= (2 if stem == "lr" else 3), stem
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert legend == list(_lines(ax)), stem
    assert ylabels["val_miou"] == "mIoU (%)" and ylabels["noise_share"] == "filtered pixels (%)"
    assert set(_lines(figures["loss"].axes[0])) >= {"cls", "seg"}  # per-student terms left out
    assert "cls_1" not in _lines(figures["loss"].axes[0])
    lr = figures["lr"].axes[0]
    assert lr.get_yscale() == "log"
    assert list(_lines(lr)["lr"].get_xdata()) == list(range(1, 10))  # step 10's lr of 0 is left out
    noise = _lines(figures["noise_share"].axes[0])["noise_share"]
    np.testing.assert_allclose(noise.get_ydata(), [2.0 * s for s in range(1, 11)])  # in percent


def test_label_quality_is_one_chart_in_percent(tmp_path):
    run = _run(tmp_path)
    with open(run / "metrics.jsonl", "a") as log:  # after the cut line: training went on
        log.write("\n" + "".join(
            json.dumps({"step": s, "quality/label_acc": 0.9, "quality/reg_share": 0.01 * s}) + "\n"
            for s in (T_ANF, T_ANF + 1)
        ))  # fmt: skip
    figures = curve_figures(run)
    assert list(figures)[-1] == "quality"
    lines = _lines(figures["quality"].axes[0])
    assert (
        list(lines["label_acc"].get_ydata()) == [90.0, 90.0]
        and figures["quality"].axes[0].get_ylabel() == "pixels (%)"
    )
    np.testing.assert_allclose(lines["reg_share"].get_ydata(), [T_ANF, T_ANF + 1])


def test_validation_points_are_marked_per_student(tmp_path):
    ax = curve_figures(_run(tmp_path))["val_miou"].axes[0]
    lines = _lines(ax)
    for name, ys in (("seg_s1", [5, 10]), ("seg_s2", [10, 20]), ("cam_s1", [30, 30])):
        assert lines[name].get_marker() == "o"
        assert list(lines[name].get_xdata()) == [5, 10] and list(lines[name].get_ydata()) == ys
    assert lines["seg_s1"].get_color() == lines["cam_s1"].get_color() != lines["seg_s2"].get_color()
    assert lines["seg_s1"].get_linestyle() != lines["cam_s1"].get_linestyle()


def test_phase_boundaries_are_vertical_lines_where_the_run_reached_them(tmp_path):
    figures = curve_figures(_run(tmp_path))  # t_anf = 12: beyond the last step (10)
    for stem, figure in figures.items():
        phases = {k: v for k, v in _lines(figure.axes[0]).items() if k.startswith("t_")}
        assert list(phases) == [f"t_seg = {T_SEG} (segmentation loss, PAR labels)"], stem
        (line,) = phases.values()
        assert list(line.get_xdata()) == [T_SEG, T_SEG]
        assert list(line.get_ydata()) == [0, 1]  # axes fraction: the full height whatever the data
    reached = curve_figures(_run(tmp_path / "b", t_anf=8))["loss"].axes[0]
    xs = {k.split(" ")[0]: line.get_xdata()[0] for k, line in _lines(reached).items() if k.startswith("t_")}
    assert xs == {"t_seg": T_SEG, "t_anf": 8}


def test_curve_pngs_are_matplotlib_figures_of_a_readable_size(tmp_path):
    run = _run(tmp_path)
    written = write_curves(run)
    assert [p.name for p in written] == ["loss.png", "lr.png", "val_miou.png", "tau_h.png", "noise_share.png"]
    for path in written:
        with Image.open(path) as img:
            assert img.info.get("Software", "").startswith("Matplotlib"), path
            assert img.size == (800, 420)
    assert not list((run / "curves").glob(".*tmp"))


def test_without_matplotlib_curves_are_skipped_with_one_warning(tmp_path, monkeypatch):
    run = _run(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    monkeypatch.setattr(curves, "_warned", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert write_curves(run) == [] and write_curves(run) == []
    assert len(caught) == 1
    assert 'pip install "dupl[plots]"' in str(caught[0].message) and "\n" not in str(caught[0].message)
    assert not (run / "curves").exists()
    with pytest.raises(
        UserError, match=r'^the confusion-matrix picture needs matplotlib .*pip install "dupl\[plots\]"$'
    ):
        confusion_png(np.eye(2), ["background", "a"])


def test_confusion_matrix_has_a_colour_bar_cell_values_and_axis_titles():
    names = ["background", "cat", "dog"]
    cm = np.array([[90, 5, 0, 5], [10, 30, 0, 0], [0, 0, 0, 0]])  # dog never in the ground truth
    figure = confusion_figure(cm, names)
    ax, bar = figure.axes
    assert ax.images[0].colorbar is not None and ax.images[0].colorbar.ax is bar
    assert bar.get_ylabel() == "% of the row's pixels"
    assert ax.images[0].get_clim() == (0, 100)
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("prediction", "ground truth")
    assert [t.get_text() for t in ax.get_xticklabels()] == [*names, "uncertain"]
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    assert cells == {(0, 0): "90", (0, 1): "5", (0, 3): "5", (1, 0): "25", (1, 1): "75"}
    np.testing.assert_allclose(ax.images[0].get_array()[1], [25, 75, 0, 0])


def test_report_embeds_the_curve_files_and_the_confusion_chart(tmp_path):
    run = _run(tmp_path)
    written = write_curves(run)
    names = ["background", "a"]
    report = HtmlReport("r", names, [(0, 0, 0), (128, 0, 0)])
    metrics = metrics_from_confusion(
        confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 2), names
    )
    chart = confusion_png(np.asarray(metrics.matrix), names)
    report.add_metrics(metrics, chart)
    report.add_curves(run / "curves")
    text = report.write(tmp_path / "r.html").read_text()
    embedded = dict(re.findall(r"alt='([^']+)' src='data:image/png;base64,([^']+)'", text))
    for path in written:
        assert base64.b64decode(embedded[path.stem]) == path.read_bytes()  # the very file
    with Image.open(io.BytesIO(base64.b64decode(embedded["confusion matrix"]))) as img:
        assert img.size == chart.size and np.array_equal(np.asarray(img), np.asarray(chart))


def test_evaluate_without_matplotlib_stops_before_predicting(tiny_run, run_cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = run_cli("evaluate", tiny_run[0], "--out", tmp_path / "eval", "--max-images", "1")
    assert result.exit_code == 2, result.output
    last = result.output.strip().splitlines()[-1]
    assert last.endswith(
        'dupl evaluate (its confusion.png) needs matplotlib (the plots extra): pip install "dupl[plots]"'
    )
    assert not (tmp_path / "eval" / "metrics.json").exists()
