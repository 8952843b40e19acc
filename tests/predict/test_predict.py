"""The prediction loop: every route's label reaches the sinks (argmax, CAM rule and CRF pool), the one
student parser, sharding across processes, the Typer choices."""

import typing
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dupl_cli.core.errors import UserError
from dupl_cli.core.labels import IGNORE_INDEX
from dupl_cli.crf.params import CrfParams
from dupl_cli.crf.pydensecrf_backend import crf_segmentation
from dupl_cli.method.thresholds import cam_to_label
from dupl_cli.predict.choices import ExportFormat, ExportStudent, LabelSource, StudentChoice, choose_students
from dupl_cli.predict.loop import Item, PredictOptions, ProgressBar, Runtime, Sink, predict
from dupl_cli.predict.routes import CamRoute, SegRoute
from dupl_cli.predict.tta import TTAConfig

CPU = Runtime(torch.device("cpu"))
OPTIONS = PredictOptions(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


class Recorder(Sink):
    def __init__(self):
        self.events, self.outputs, self.labels = [], {}, {}

    def begin(self, item):
        self.events.append(("begin", item.key))

    def output(self, item, route, output):
        self.events.append(("output", item.key, route))
        self.outputs[item.key, route] = output.clone()

    def label(self, item, route, label):
        self.events.append(("label", item.key, route))
        assert (item.key, route) not in self.labels, "a label delivered twice"
        self.labels[item.key, route] = np.asarray(label.cpu() if torch.is_tensor(label) else label)


def _items(n, h=20, w=27):
    rng = np.random.default_rng(0)
    for i in range(n):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image[:, : w // 2] //= 3  # an edge for the CRF to follow
        yield Item(i, f"img{i}", image, labels=np.array([1.0, 0.0, 1.0], np.float32))


def _seg_routes():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    params = CrfParams(iters=3)
    return [SegRoute(conv, TTAConfig(), 1, params), SegRoute(lambda x: -2 * conv(x), TTAConfig(), 1, params)]


def _run(routes, crf, n=5):
    sink = Recorder()
    options = PredictOptions(OPTIONS.mean, OPTIONS.std, crf=crf, crf_workers=2)
    with torch.no_grad(), ProgressBar("test", n, enabled=False) as bar:
        predict(_items(n), routes, [sink], CPU, options, bar)
    return sink


def test_argmax_labels_come_at_once_per_item_and_route():
    sink = _run(_seg_routes(), crf=False)
    first = [("begin", 0), ("output", 0, 0), ("label", 0, 0), ("output", 0, 1), ("label", 0, 1)]
    assert sink.events[:6] == [*first, ("begin", 1)]
    assert len(sink.labels) == 10
    for (key, route), label in sink.labels.items():
        assert label.dtype == np.uint8
        np.testing.assert_array_equal(label, sink.outputs[key, route].argmax(0).numpy())
    assert not np.array_equal(sink.labels[0, 0], sink.labels[0, 1])  # two routes, two answers


def test_crf_labels_reach_the_right_item_and_route():
    sink = _run(_seg_routes(), crf=True)
    assert len(sink.labels) == 10 and sink.events.count(("begin", 4)) == 1
    params = CrfParams(iters=3)
    items = list(_items(5))
    for (key, route), label in sink.labels.items():
        expected = crf_segmentation(items[key].image, sink.outputs[key, route].numpy(), params)
        np.testing.assert_array_equal(label, expected)
    assert any(
        not np.array_equal(label, sink.outputs[k].argmax(0).numpy()) for k, label in sink.labels.items()
    )


@pytest.mark.parametrize("tau_low", [None, 0.3])
def test_cam_route_applies_the_cam_rule(tau_low):
    cam = torch.rand(1, 3, 20, 27, generator=torch.Generator().manual_seed(1))
    route = CamRoute(lambda x: cam, CrfParams(), (0.7, 0.25), tau_high=0.6, tau_low=tau_low)
    sink = _run([route], crf=False, n=2)
    labels = torch.tensor([[1.0, 0.0, 1.0]])
    expected = cam_to_label(cam, labels, tau_high=0.6, tau_low=tau_low)[0].numpy()
    np.testing.assert_array_equal(sink.labels[1, 0], expected)
    assert (IGNORE_INDEX in expected) == (tau_low is not None)
    assert set(np.unique(expected)) <= {0, 1, 3, IGNORE_INDEX}


def test_one_student_parser():
    assert choose_students("ensemble", 2).indices == (0, 1)
    one = choose_students(StudentChoice.one, 2)
    assert one.indices == (0,) and one.text == "student 1 (chosen with --student)"
    best = choose_students("best", 2)
    assert best.indices == (1,) and best.text.startswith("student 2 (best by validation")
    with pytest.raises(UserError, match=r"--student must be 1, 2, best or ensemble, not '3'"):
        choose_students("3", 1)
    with pytest.raises(UserError, match=r"--student must be 1, 2 or best, not 'ensemble'"):
        choose_students("ensemble", 1, ExportStudent)


def test_choices_match_the_settings_and_the_exporter():
    from dupl_cli.config.schema import EvalSettings, ExportSettings
    from dupl_cli.tasks.export import SUFFIXES

    def literal(model, name):
        return set(typing.get_args(model.model_fields[name].annotation))

    assert literal(EvalSettings, "student") == {s.value for s in StudentChoice}
    assert literal(ExportSettings, "student") == {s.value for s in ExportStudent}
    assert literal(ExportSettings, "format") == {f.value for f in ExportFormat} == set(SUFFIXES)


def _plain(output):
    return " ".join(output.replace("│", " ").split())


def test_help_lists_choices_and_typer_rejects_others(run_cli, tmp_path):
    for command in ("evaluate", "infer", "pseudo-label"):
        assert "<1|2|best|ensemble>" in run_cli(command, "--help").output
    assert f"<{'|'.join(s.value for s in LabelSource)}>" in run_cli("pseudo-label", "--help").output
    export_help = run_cli("export", "--help").output
    assert "<1|2|best>" in export_help and "<safetensors|onnx|" in export_help
    bad = run_cli("pseudo-label", "--out", tmp_path / "o", "--source", "sam")
    assert bad.exit_code == 2 and "Invalid value for '--source'" in _plain(bad.output)
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def loaded(tiny_run):
    from dupl_cli.predict.loop import load_for_inference

    run_dir, _, settings = tiny_run
    return load_for_inference(run_dir / "best.safetensors", "given", torch.device("cpu")), settings


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_two_process_shards_write_what_one_process_writes(loaded, tmp_path):
    from dupl_cli.plugins import DATASETS, load
    from dupl_cli.tasks.infer import run_infer
    from dupl_cli.tasks.pseudo_label import PseudoLabelRequest, run_pseudo_label

    model, settings = loaded
    images = [str(p) for p in sorted((Path(settings.data.root) / "images").iterdir())[:5]]
    adapter = load(DATASETS, "demo")(settings.data, "train")
    layouts = {"one": [CPU], "two": [Runtime(CPU.device, 0, 2), Runtime(CPU.device, 1, 2)]}
    counts = {}
    for name, runtimes in layouts.items():
        for rt in runtimes:
            kw = {"tta": TTAConfig(), "probs": True, "show_progress": False, "log": lambda m: None}
            result = run_infer(model, images, tmp_path / name / "infer", settings, rt, **kw)
            req = PseudoLabelRequest(tmp_path / name / "pl", split="train", source="seg", max_images=5)
            labelled = run_pseudo_label(model, adapter, settings, rt, req, show_progress=False, log=print)
            counts.setdefault(name, []).append((len(result.written), labelled.written))
    assert counts["one"] == [(5, 5)] and counts["two"] == [(3, 3), (2, 2)]
    for kind in ("infer", "pl"):
        one, two = _files(tmp_path / "one" / kind), _files(tmp_path / "two" / kind)
        # infer: 5 masks, 5 probs, index.csv; pseudo-label: 5 masks, index.csv, pseudo_labels.json
        assert one == two and len(one) == (11 if kind == "infer" else 7)


def test_selection_comes_from_the_card_or_the_file_name(loaded, tmp_path):
    from dupl_cli.predict.loop import LoadedModel

    model = loaded[0]  # a best.safetensors whose card predates train.select
    assert model.selection == "best-val"
    on_val, on_train = model.selection_record("val"), model.selection_record("train")
    assert on_val["chosen_on_this_split"] and "optimistic on 'val'" in on_val["text"]
    assert not on_train["chosen_on_this_split"] and "optimistic" not in on_train["text"]
    final = LoadedModel(
        model.model, replace(model.card, selection="final"), tmp_path / "best.safetensors", "given"
    )
    assert final.selection_record("val") == {
        "checkpoint": "final",
        "text": "final checkpoint (step 6)",
        "chosen_on_this_split": False,
        "student_rule": "best by validation during training",
    }
