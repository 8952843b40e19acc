"""The Table 4 ablation presets (issue 12 item 1): each switch removes its component's work.

Each preset runs a few training steps at tiny-cpu size (test_vit, 64 px), one per stage, and the
test checks which loss terms are non-zero and which work (second student, discrepancy, DTA, EM,
strong view) ran. Table 5's sweep values are checked to build valid step configurations, and
Table 6's "Diff. Aug" preset is checked to give each student its own view.
"""

from __future__ import annotations

import pytest
import torch

from dupl_cli.config import presets
from dupl_cli.config.method_params import step_config
from dupl_cli.config.sources import load_settings
from dupl_cli.core.errors import UserError
from dupl_cli.method import losses
from dupl_cli.method import step as step_module
from dupl_cli.models.dual import build_dual_student

TINY = [
    "model.arch=test_vit", "model.pretrained=none", "model.head_channels=16", "data.crop_size=64",
    "method.cam_scales=[1.0, 0.5]", "method.t_seg=2", "method.t_anf=4", "train.max_iters=10",
    "method.par.iters=2", "method.anf.min_pixels=10", "method.anf.loss_floor=0.0", "method.anf.eta=0.0",
]  # fmt: skip
CLASSES = 20  # voc-vitb's per-class DTA targets
STEPS = (0, 2, 5)  # one iteration in each stage: A, B, C

# preset: (students, terms non-zero in stage C, DTA decays, EM runs, strong view runs)
ROWS = {
    "ablation-baseline": (1, {"cls", "ptc", "seg"}, False, False, False),
    "ablation-ds": (2, {"cls", "ptc", "seg"}, False, False, False),
    "ablation-dis": (2, {"cls", "ptc", "dis", "seg"}, False, False, False),
    "ablation-dta": (2, {"cls", "ptc", "dis", "seg"}, True, False, False),
    "ablation-anf": (2, {"cls", "ptc", "dis", "seg"}, True, True, False),
    "ablation-reg": (2, {"cls", "ptc", "dis", "seg", "reg"}, True, True, True),
}
TERMS = ("cls", "ptc", "dis", "seg", "reg")


def _batch(b=2, views=1):
    g = torch.Generator().manual_seed(0)
    labels = torch.zeros(b, CLASSES)
    labels[torch.arange(b), torch.arange(b) + 4] = 1  # classes with a 0.55 DTA target
    batch = {
        "image": torch.randn(b, 3, 64, 64, generator=g),
        "labels": labels,
        "img_box": torch.tensor([[0, 64, 0, 64]] * b),
    }
    if views == 2:  # the second view: the image 8 px to the right, zero-padded; its affine says so
        image2 = torch.zeros_like(batch["image"])
        image2[..., 8:] = batch["image"][..., :-8]
        batch.update(image2=image2, img_box2=torch.tensor([[0, 64, 8, 64]] * b))
        batch.update(affine=torch.tensor([[1.0, 0, 1, 0]] * b), affine2=torch.tensor([[1.0, 0, 1, 8]] * b))
    return batch


class Work:
    """Counts of the work a step does, by spying on the functions that do it."""

    def __init__(self, monkeypatch):
        self.calls: dict[str, int] = {"dis": 0, "em": 0, "strong": 0}
        self.images = 0  # images through the students' backbones
        for name, module, attr in (
            ("dis", losses, "discrepancy_terms"),
            ("em", step_module, "noisy_pixels"),
            ("strong", step_module, "strong_view"),
        ):
            monkeypatch.setattr(module, attr, self._counting(name, getattr(module, attr)))

    def _counting(self, name, fn):
        def wrapped(*args, **kwargs):
            self.calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    def watch(self, model, monkeypatch):
        self.inputs = [[] for _ in model.students]  # per student, what its backbone saw
        for k, student in enumerate(model.students):
            f = student.backbone.forward
            monkeypatch.setattr(student.backbone, "forward", lambda x, f=f, k=k: self._seen(x, k) or f(x))

    def _seen(self, x, k):
        self.images += x.shape[0]
        self.inputs[k].append(x)


def _run(preset, monkeypatch, views=1):
    settings = load_settings(preset, assignments=TINY, environ={}).settings
    config = step_config(settings, num_classes=CLASSES)
    torch.manual_seed(0)
    model = build_dual_student(settings.model, CLASSES, img_size=64, students=settings.method.students)
    with torch.no_grad():  # confident heads, so the consistency mask is not empty
        for student in model.students:
            student.head.conv8.weight.mul_(1000.0)
    work = Work(monkeypatch)
    work.watch(model, monkeypatch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # a real step; lr 0 keeps the weights
    results = {}
    for t in STEPS:
        result = step_module.training_step(
            model, _batch(views=views), t, config, generator=torch.Generator().manual_seed(t)
        )
        result.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        results[t] = result
    return settings, model, results, work


@pytest.mark.parametrize("preset", sorted(ROWS))
def test_ablation_preset_runs_its_components_only(preset, monkeypatch):
    students, nonzero, dta, em, strong = ROWS[preset]
    settings, model, results, work = _run(preset, monkeypatch)
    assert presets.description(preset).startswith("Table 4 row")
    assert len(model.students) == students
    last = results[STEPS[-1]]
    assert {name for name in TERMS if float(last.terms[name]) > 0} == nonzero
    assert all(f"{name}_2" not in last.terms for name in TERMS) == (students == 1)
    assert work.calls["dis"] == (len(STEPS) if "dis" in nonzero else 0)
    assert (work.calls["em"] > 0) == em
    assert (work.calls["strong"] > 0) == strong
    tau = float(last.stats["tau_h"])
    assert (
        tau < settings.method.tau_high_start if dta else tau == pytest.approx(settings.method.tau_high_start)
    )


def test_diff_aug_preset_gives_each_student_its_own_view(monkeypatch):
    settings, model, results, work = _run("ablation-diff-aug", monkeypatch, views=2)
    assert presets.description("ablation-diff-aug").startswith('Table 6 row "Diff. Aug"')
    assert settings.method.diff_aug and step_config(settings, CLASSES).diff_aug
    last = results[STEPS[-1]]
    assert {name for name in TERMS if float(last.terms[name]) > 0} == set(TERMS)  # full DuPL otherwise
    assert work.calls["dis"] == len(STEPS) and work.calls["em"] > 0 and work.calls["strong"] > 0
    assert float(last.stats["tau_h"]) < settings.method.tau_high_start
    batch = _batch(views=2)  # every step's first forward: student 1 on view 1, student 2 on view 2
    for k, key in enumerate(("image", "image2")):
        firsts = [x for x in work.inputs[k] if x.shape == batch[key].shape and torch.equal(x, batch[key])]
        assert len(firsts) >= len(STEPS), key
    # and a student never runs on its partner's view
    assert not any(torch.equal(x, batch["image2"]) for x in work.inputs[0] if x.shape == batch["image"].shape)
    with pytest.raises(ValueError, match="batch lacks image2"):
        step_module.training_step(model, _batch(), 0, step_config(settings, CLASSES))


def test_one_student_does_half_the_work_of_two(monkeypatch):
    images = {}
    for preset in ("ablation-baseline", "ablation-ds"):
        with monkeypatch.context() as m:
            images[preset] = _run(preset, m)[3].images
    assert images["ablation-ds"] == 2 * images["ablation-baseline"] > 0


def test_the_baseline_learns_its_own_labels(monkeypatch):
    seen = []
    original = losses.seg_loss
    monkeypatch.setattr(
        losses, "seg_loss", lambda logits, label: seen.append(label) or original(logits, label)
    )
    spy = {}
    make = step_module.make_pseudo_labels
    monkeypatch.setattr(step_module, "make_pseudo_labels", lambda *a, **k: spy.setdefault("p", make(*a, **k)))
    settings = load_settings("ablation-baseline", assignments=TINY, environ={}).settings
    model = build_dual_student(settings.model, CLASSES, img_size=64, students=1)
    step_module.training_step(model, _batch(), 2, step_config(settings, CLASSES), generator=torch.Generator())
    assert len(seen) == 1 and seen[0] is spy["p"].filtered[0]


def test_switch_mismatches_are_one_line_errors():
    with pytest.raises(UserError, match="method.use_dis needs two students"):
        load_settings("voc-vitb", assignments=["method.students=1"], environ={})
    with pytest.raises(UserError, match="method.diff_aug needs two students"):
        load_settings("ablation-baseline", assignments=["method.diff_aug=true"], environ={})
    settings = load_settings("ablation-baseline", assignments=TINY, environ={}).settings
    two = build_dual_student(settings.model, CLASSES, img_size=64, students=2)
    with pytest.raises(ValueError, match="configured for 1 student"):
        step_module.training_step(two, _batch(), 0, step_config(settings, CLASSES))


@pytest.mark.parametrize("assignment", [
    *(f"method.tau_high_end={v}" for v in (0.65, 0.60, 0.55, 0.50)),
    *(f"method.t_anf={v}" for v in (6000, 8000, 10000, 12000)),
])  # fmt: skip
def test_table5_sweep_values_build(assignment):
    config = step_config(load_settings("voc-vitb", assignments=[assignment], environ={}).settings, CLASSES)
    key, value = assignment.split("=")
    if key == "method.t_anf":
        assert config.schedule.t_anf == int(value)
    else:
        assert config.thresholds.tau_end == float(value)
