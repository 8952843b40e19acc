"""The settings -> StepConfig adapter: equal defaults on both sides, and every method setting is read."""

from __future__ import annotations

import typing

import pytest
from pydantic import BaseModel

from dupl_cli.config.method_params import cam_config, stage2_config, step_config
from dupl_cli.config.schema import DuplSettings
from dupl_cli.core.errors import UserError
from dupl_cli.method.params import StepConfig
from dupl_cli.method.stage2 import Stage2Config

# Settings the method's step does not read (the engine does), by dotted path.
NOT_METHOD = {"compat.eval_gt_student"}
# Settings of the second stage (docs/method.md §12): read into Stage2Config, not the DuPL step.
STAGE2 = {"method.stage2_weights", "method.stage2_anf", "method.stage2_anf_start"}


def test_default_settings_give_the_default_step_config():
    # The dataclasses hold the method's defaults; the settings must not drift from them.
    assert step_config(DuplSettings()) == StepConfig()
    assert stage2_config(DuplSettings()) == Stage2Config()
    assert cam_config(DuplSettings()) == StepConfig().cam


def _leaves(model: BaseModel, prefix: str):
    """(dotted path, value, annotation) of every field, descending into nested sections."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            yield from _leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value, info.annotation


def _other_value(value, annotation):
    """A valid value different from ``value`` (halved, incremented, flipped, shortened, other choice)."""
    if value is None:  # an unset start iteration: a set one past every stage
        return 10**6
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.5
    if isinstance(value, tuple | list):
        return list(value[:-1])
    if isinstance(value, str):
        choices = [a for a in typing.get_args(annotation) if isinstance(a, str) and a != value]
        return choices[0]
    raise AssertionError(f"no perturbation for {value!r}")


def _with(settings: DuplSettings, path: str, value) -> DuplSettings:
    data = settings.model_dump()
    node = data
    *parents, last = path.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return DuplSettings.model_validate(data)


def _method_paths():
    s = DuplSettings()
    paths = [(p, v, a) for p, v, a in _leaves(s.method, "method.")]
    paths += [(p, v, a) for p, v, a in _leaves(s.compat, "compat.") if p not in NOT_METHOD]
    paths += [("train.max_iters", s.train.max_iters, int), ("data.mean", s.data.mean, None)]
    paths += [("data.std", s.data.std, None)]
    return [pytest.param(*p, id=p[0]) for p in paths]


@pytest.mark.parametrize(("path", "value", "annotation"), _method_paths())
def test_every_method_setting_reaches_the_step_config(path, value, annotation):
    base = DuplSettings()
    if path == "method.students":  # one student needs the discrepancy off
        base = _with(base, "method.use_dis", False)
        changed = _with(base, path, 1)
    elif path in ("data.mean", "data.std"):
        changed = _with(base, path, [0.5, 0.5, 0.5])
    else:
        changed = _with(base, path, _other_value(value, annotation))
    adapter = stage2_config if path in STAGE2 else step_config
    assert adapter(changed) != adapter(base), f"{path} is not read by the adapter"


@pytest.mark.parametrize("path", ["method.anf.gamma", "method.anf.min_pixels", "compat.anf_two_sided"])
def test_the_noise_filter_settings_reach_stage_two_too(path):
    base = DuplSettings()
    value = {"method.anf.gamma": 0.5, "method.anf.min_pixels": 7, "compat.anf_two_sided": True}[path]
    assert stage2_config(_with(base, path, value)) != stage2_config(base)


def test_per_class_targets_become_a_tuple_and_must_match_the_classes():
    s = _with(DuplSettings(), "method.tau_high_end", [0.7, 0.55, 0.6])
    config = step_config(s, num_classes=3)
    assert config.thresholds.tau_end == (0.7, 0.55, 0.6)
    hash(config)  # frozen and hashable all the way down
    with pytest.raises(UserError, match="3 per-class values but the dataset has 5 classes"):
        step_config(s, num_classes=5)
